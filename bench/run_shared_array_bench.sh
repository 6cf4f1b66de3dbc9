#!/usr/bin/env bash
# Builds bench_shared_array in Release, runs it and its Python peers
# (bench/peers/shared_array_peers.py under Debian's /usr/bin/python3 with python3-numpy)
# and prints one table of medians with the shared_array targets (docs/benchmarks.md).
#   bench/run_shared_array_bench.sh
# Environment: BUILD_DIR (default /tmp/procpool-sa-bench), SIZES (MiB, default
# 1,256,2048), REPS (repetitions, each on a fresh one-worker pool, default 7), PY_REPS
# (Python repetitions, default REPS), PICKLE_REPS_BIG (repetitions of the pickled numpy
# array at >= 1 GiB, default PY_REPS), WAIT_IDLE (seconds to wait for an idle machine
# before each part, default 120; 0 disables).
# Memory: at 2 GiB the C++ part holds up to ~8 GiB at once, the pickled Python case ~12 GiB
# (it skips itself when MemAvailable is short); the two never run at the same time.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-sa-bench}
sizes=${SIZES:-1,256,2048}
reps=${REPS:-7}
py_reps=${PY_REPS:-$reps}
pickle_reps_big=${PICKLE_REPS_BIG:-$py_reps}
wait_idle=${WAIT_IDLE:-120}
python=/usr/bin/python3  # Debian's, with python3-numpy; not PATH's
cpp_json=$build/bench_shared_array.json
py_json=$build/shared_array_peers.json

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

"$python" -c 'import numpy' 2>/dev/null || {
  echo "run_shared_array_bench.sh: $python has no numpy (apt-get install python3-numpy)" >&2
  exit 1
}

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_shared_array -j "$(nproc)" >/dev/null

commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "unknown")
if [ -n "$(git -C "$src" status --porcelain -- src include bench/bench_shared_array.cpp \
    bench/peers/shared_array_peers.py 2>/dev/null)" ]; then
  commit="$commit + uncommitted changes in src/, include/ or this benchmark"
fi
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$(nproc);" \
  "$(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg);" \
  "commit $commit; sizes $sizes MiB; $reps repetitions (Python $py_reps," \
  "pickled >= 1 GiB $pickle_reps_big)"

wait_for_idle
"$build/bench/bench_shared_array" --sizes "$sizes" --reps "$reps" --json "$cpp_json" >/dev/null

wait_for_idle
"$python" "$src/bench/peers/shared_array_peers.py" --sizes "$sizes" --reps "$py_reps" \
  --pickle-reps-big "$pickle_reps_big" --json "$py_json"

echo
"$python" "$src/bench/peers/shared_array_peers.py" --table "$cpp_json" "$py_json"
