#!/usr/bin/env bash
# Counts what one task costs the kernel: system calls (all, and the three kinds a
# waiting party makes: sched_yield, futex, epoll_wait), context switches and page faults
# per task, over the whole process tree (program, fork server, workers), for the three
# shapes of bench/bench_dispatch_counts.cpp. Each figure is (count for N tasks - count for
# none) / N, the median over REPS runs of each. Needs `perf` (Debian: linux-perf) and a
# kernel that lets this user count tracepoints (root, or perf_event_paranoid <= -1).
#   bench/run_dispatch_counts.sh
# Environment: BUILD_DIR (default /tmp/procpool-pp-bench), REPS (default 5), N (tasks per
# run for seq and batch, default 100000; map runs 10 * N ints).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-pp-bench}
reps=${REPS:-5}
n=${N:-100000}
if ! command -v perf >/dev/null; then
  echo "run_dispatch_counts.sh: perf not found; install it (apt-get install linux-perf)" >&2
  exit 2
fi
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_dispatch_counts -j "$(nproc)" >/dev/null
prog=$build/bench/bench_dispatch_counts
events=raw_syscalls:sys_enter,syscalls:sys_enter_sched_yield,syscalls:sys_enter_futex
events=$events,syscalls:sys_enter_epoll_wait,context-switches,page-faults

# shellcheck source=bench/run_header.sh
. "$src/bench/run_header.sh"
print_run_header "$src" "; N=$n, REPS=$reps"

# Prints the six counts of one run of the program, in the order of $events.
count() {
  perf stat -x, -e "$events" -- "$prog" "$1" "$2" 2>&1 >/dev/null |
    awk -F, '$3 ~ /raw_syscalls/ {s=$1} $3 ~ /sched_yield/ {y=$1} $3 ~ /futex/ {x=$1}
             $3 ~ /epoll_wait/ {e=$1} $3 ~ /context-switches/ {c=$1} $3 ~ /page-faults/ {f=$1}
             END {print s, y, x, e, c, f}'
}

echo "per task: (count for N tasks - count for none) / N, medians over $reps runs"
printf '%-6s %10s %10s %10s %10s %10s %10s\n' shape syscalls sched_yield futex epoll_wait \
  switches faults
for shape in seq batch map; do
  tasks=$n
  [ "$shape" = map ] && tasks=$((10 * n))
  rows=()
  for _ in $(seq "$reps"); do
    read -r -a zero < <(count "$shape" 0)
    read -r -a some < <(count "$shape" "$tasks")
    row=""
    for k in 0 1 2 3 4 5; do
      row+="$(awk -v a="${some[$k]}" -v b="${zero[$k]}" -v n="$tasks" 'BEGIN {printf "%.4f ", (a-b)/n}')"
    done
    rows+=("$row")
  done
  # Median of column $1 over the runs.
  med() { printf '%s\n' "${rows[@]}" | awk -v k="$1" '{print $k}' | sort -g |
    awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
  printf '%-6s %10s %10s %10s %10s %10s %10s\n' "$shape" "$(med 1)" "$(med 2)" "$(med 3)" \
    "$(med 4)" "$(med 5)" "$(med 6)"
done
