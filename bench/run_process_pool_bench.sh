#!/usr/bin/env bash
# Builds bench_process_pool and bench_pipe_pingpong in Release, runs them and the Python
# peers (bench/peers/python_peers.py under Debian's /usr/bin/python3) and prints one table
# of medians with the process_pool issue's targets (see docs/benchmarks.md).
#   bench/run_process_pool_bench.sh [extra Google Benchmark flags, e.g. --benchmark_filter=crash]
# Environment: BUILD_DIR (default /tmp/procpool-pp-bench), REPS (C++ and ping-pong
# repetitions, default 5), PY_REPS (Python repetitions, default 3), PY_ONLY (Python
# groups, e.g. "latency,crash"; default all), WAIT_IDLE (seconds to wait for an idle
# machine before each part, default 120; 0 disables), COMMIT (the commit to print when
# the source tree is not a git checkout).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-pp-bench}
reps=${REPS:-5}
py_reps=${PY_REPS:-3}
wait_idle=${WAIT_IDLE:-120}
python=/usr/bin/python3  # Debian's, with python3-joblib and python3-pebble; not PATH's
cpp_json=$build/bench_process_pool.json
pingpong_jsonl=$build/pipe_pingpong.jsonl
py_json=$build/python_peers.json

# Waits (at most $wait_idle s) until the CPUs have been under 15 % busy for 2 s.
wait_for_idle() {
  [ "$wait_idle" -gt 0 ] || return 0
  local deadline=$((SECONDS + wait_idle)) a b busy
  while [ $SECONDS -lt $deadline ]; do
    read -r _ a1 a2 a3 a4 a5 a6 a7 _ </proc/stat
    sleep 2
    read -r _ b1 b2 b3 b4 b5 b6 b7 _ </proc/stat
    a=$((a1 + a2 + a3 + a5 + a6 + a7)); b=$((b1 + b2 + b3 + b5 + b6 + b7))
    busy=$(( 100 * (b - a) / ((b - a) + (b4 - a4) + 1) ))
    [ "$busy" -lt 15 ] && return 0
  done
  echo "# warning: machine still busy ($busy %) after ${wait_idle}s; measuring anyway" >&2
}

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_process_pool bench_pipe_pingpong bench_page_touch -j "$(nproc)" >/dev/null

# shellcheck source=bench/run_header.sh
. "$src/bench/run_header.sh"
print_run_header "$src"

wait_for_idle
"$build/bench/bench_process_pool" --benchmark_repetitions="$reps" \
  --benchmark_display_aggregates_only=true --benchmark_out="$cpp_json" \
  --benchmark_out_format=json "$@"

wait_for_idle
: >"$pingpong_jsonl"
for _ in $(seq "$reps"); do
  "$build/bench/bench_pipe_pingpong" --pinned >>"$pingpong_jsonl"
  "$build/bench/bench_pipe_pingpong" >>"$pingpong_jsonl"
done

wait_for_idle
"$python" "$src/bench/peers/python_peers.py" --reps "$py_reps" --only "${PY_ONLY:-}" >"$py_json"

echo
"$python" "$src/bench/peers/process_pool_table.py" "$cpp_json" "$pingpong_jsonl" "$py_json"

# The floor under a new pool's first use: a shared page's first touch (per 4 KiB page, us).
wait_for_idle
echo
echo "floor: first touch of a shared page (bench_page_touch, medians of 9, us per page):"
"$build/bench/bench_page_touch" --reps 9
