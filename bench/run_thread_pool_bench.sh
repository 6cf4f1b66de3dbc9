#!/usr/bin/env bash
# Builds bench_thread_pool in Release, runs it with repetitions and prints a table of
# medians plus the Foundation issue's target ratios (see docs/benchmarks.md).
#   bench/run_thread_pool_bench.sh [extra Google Benchmark flags, e.g. --benchmark_filter=map]
# Environment: BUILD_DIR (default /tmp/procpool-bench), REPS (default 5).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-bench}
reps=${REPS:-5}
out=$build/bench_thread_pool.json

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_thread_pool -j "$(nproc)" >/dev/null

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$(nproc);" \
  "$(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
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
