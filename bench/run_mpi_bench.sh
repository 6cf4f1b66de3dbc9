#!/usr/bin/env bash
# mpi_pool vs mpi4py.futures vs a raw MPI ping-pong, each as one 3-rank job on this
# machine, REPS times; prints the medians and the mpi_pool issue's targets.
#   bench/run_mpi_bench.sh
# Environment: BUILD_DIR (default /tmp/procpool-mpi-bench), REPS (default 5),
#              BTL (Open MPI transports, default "vader,self"; "tcp,self" for the network path).
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-/tmp/procpool-mpi-bench}
reps=${REPS:-5}
btl=${BTL:-vader,self}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe -np 3 --mca btl "$btl")

cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
  -DPROCPOOL_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bench_mpi_pool bench_mpi_pingpong >/dev/null
out=$build/mpi_bench.jsonl
: >"$out"
for ((i = 0; i < reps; i++)); do
  "${mpirun[@]}" "$build/bench/bench_mpi_pingpong" | grep '^{' >>"$out"
  "${mpirun[@]}" "$build/bench/bench_mpi_pool" | grep '^{' >>"$out"
  "${mpirun[@]}" -x PROCPOOL_MPI_COPY_SHARED_ARRAYS=1 "$build/bench/bench_mpi_pool" \
    | grep '^{' | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(json.dumps({k: r[k] for k in r if "array64" in k}))' >>"$out"
  "${mpirun[@]}" /usr/bin/python3 -m mpi4py.futures "$src/bench/peers/mpi4py_futures_bench.py" \
    | grep '^{' >>"$out"
done
commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "${COMMIT:-unknown}")
/usr/bin/python3 - "$out" "$commit" "$btl" <<'PY'
import json, statistics, sys, platform, os, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(k):
    v = [r[k] for r in rows if k in r]
    return statistics.median(v) if v else float("nan")
raw = med("raw_mpi_rt_p50_us"); rt = med("mpi_pool_rt_p50_us"); prt = med("process_pool_rt_p50_us")
sub = med("mpi_pool_submit_per_s"); psub = med("process_pool_submit_per_s")
mp = med("mpi_pool_map_items_per_s"); pmp = med("process_pool_map_items_per_s")
prt_py = med("mpi4py_rt_p50_us"); sub_py = med("mpi4py_submit_per_s"); mp_py = med("mpi4py_map_items_per_s")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"# {datetime.date.today()} commit {sys.argv[2]}, {os.cpu_count()} CPUs ({cpu}), 3 ranks, btl {sys.argv[3]}, medians of {len(rows)//4} runs")
print("| metric | mpi_pool | mpi4py.futures | raw MPI ping-pong | process_pool (same workers) |")
print("|---|---|---|---|---|")
print(f"| round trip p50 | {rt:.1f} µs | {prt_py:.1f} µs | {raw:.1f} µs | {prt:.1f} µs |")
print(f"| submit, future per task | {sub/1e3:.1f} k/s | {sub_py/1e3:.2f} k/s | | {psub/1e3:.1f} k/s |")
print(f"| map of 1M ints | {mp/1e6:.1f} M/s | {mp_py/1e6:.2f} M/s | | {pmp/1e6:.1f} M/s |")
ref = med("mpi_pool_array64_by_reference_ms"); val = med("mpi_pool_array64_by_value_ms"); mc = med("memcpy_64mib_ms")
print(f"| one task given a 64 MiB shared_array (writes 1 int in 4096) | by reference {ref:.2f} ms; by value {val:.1f} ms | | memcpy of 64 MiB {mc:.1f} ms | |")
print()
print("| target | value | met |")
print("|---|---|---|")
ratio = (1e6 / sub_py) / (1e6 / sub)
print(f"| per-task cost ≥ 20× lower than mpi4py.futures | {ratio:.1f}× | {'yes' if ratio >= 20 else 'no'} |")
bound = raw + prt + 2
print(f"| round trip ≤ raw ping-pong + process_pool RT + 2 µs = {bound:.1f} µs | {rt:.1f} µs | {'yes' if rt <= bound else 'no'} |")
print(f"| map ≥ 50 % of process_pool's | {100*mp/pmp:.0f} % | {'yes' if mp >= 0.5*pmp else 'no'} |")
PY
