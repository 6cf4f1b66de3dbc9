#!/usr/bin/env bash
# Builds bench_thread_pool in Release, runs it with repetitions and prints a table of
# medians plus the Foundation issue's target ratios (see docs/benchmarks.md).
#   bench/run_thread_pool_bench.sh [extra Google Benchmark flags, e.g. --benchmark_filter=map]
# Environment: BUILD_DIR (default /tmp/procpool-bench), REPS (default 5),
#              QUIET_WAIT (seconds to wait for idle CPUs before measuring, default 0).
set -euo pipefail

# Percentage of CPU time busy over the next 2 seconds, from /proc/stat.
cpu_busy_percent() {
    local a b
    read -r _ u1 n1 s1 i1 w1 q1 o1 _ </proc/stat
    sleep 2
    read -r _ u2 n2 s2 i2 w2 q2 o2 _ </proc/stat
    a=$(((u2 + n2 + s2 + i2 + w2 + q2 + o2) - (u1 + n1 + s1 + i1 + w1 + q1 + o1)))
    b=$(((i2 + w2) - (i1 + w1)))
    echo $((100 - 100 * b / (a > 0 ? a : 1)))
}

src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-bench}
reps=${REPS:-5}
out=$build/bench_thread_pool.json

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_thread_pool -j "$(nproc)" >/dev/null

# On a machine shared with compiles, numbers are only worth keeping from idle moments.
waited=0
busy=$(cpu_busy_percent)
while [ "$waited" -lt "${QUIET_WAIT:-0}" ] && [ "$busy" -ge 15 ]; do
    waited=$((waited + 2))
    busy=$(cpu_busy_percent)
done
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$(nproc);" \
  "$(lscpu | sed -n 's/^Model name: *//p'); CPUs ${busy}% busy just before the run;" \
  "tree $(git -C "$src" log -1 --format=%h 2>/dev/null || echo '?')"
"$build/bench/bench_thread_pool" --benchmark_repetitions="$reps" \
  --benchmark_display_aggregates_only=true --benchmark_out="$out" \
  --benchmark_out_format=json "$@"
echo
python3 "$src/bench/bench_table.py" "$out" \
  --ratio submit_get/procpool_thread_pool submit_get/asio_thread_pool_promise \
          "(a) procpool / Boost.Asio+promise throughput (target >= 1.5)" \
  --ratio submit_get/procpool_thread_pool submit_get/tbb_task_group \
          "(a) procpool / oneTBB task_group throughput (target >= 0.5)" \
  --ratio heavy_calc/procpool_map heavy_calc/serial \
          "(c) procpool map speedup over serial (target >= 1.95)" \
  --ratio heavy_calc/procpool_submit_longest_first heavy_calc/serial \
          "(c) procpool longest-first speedup over serial" \
  --ratio heavy_calc/two_std_threads_ceiling heavy_calc/serial \
          "(c) two plain threads, the machine's ceiling"
