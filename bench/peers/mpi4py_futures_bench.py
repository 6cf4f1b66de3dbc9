"""mpi4py.futures on the same job shape as bench_mpi_pool: round trip p50, submit
throughput with a future per task, map of 1M ints. Run as
    mpirun -np 3 python3 -m mpi4py.futures bench/peers/mpi4py_futures_bench.py
Prints one JSON object."""
import json
import statistics
import time

from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor


def add(a, b):
    return a + b


def inc(x):
    return x + 1


def main():
    with MPIPoolExecutor() as ex:
        for i in range(200):
            ex.submit(add, i, 1).result()
        rts = []
        for i in range(2000):
            t0 = time.perf_counter()
            ex.submit(add, i, 1).result()
            rts.append((time.perf_counter() - t0) * 1e6)
        n = 20000
        t0 = time.perf_counter()
        fs = [ex.submit(add, i, 1) for i in range(n)]
        for f in fs:
            f.result()
        submit = n / (time.perf_counter() - t0)
        items = list(range(1_000_000))
        workers = MPI.COMM_WORLD.Get_size() - 1  # run with -m mpi4py.futures: the others serve
        chunk = max(1, len(items) // (workers * 4))
        list(ex.map(inc, items[:10000], chunksize=chunk))
        t0 = time.perf_counter()
        out = list(ex.map(inc, items, chunksize=chunk))
        map_rate = len(items) / (time.perf_counter() - t0)
        assert out[-1] == items[-1] + 1
    print(json.dumps({"mpi4py_rt_p50_us": statistics.median(rts),
                      "mpi4py_submit_per_s": submit,
                      "mpi4py_map_items_per_s": map_rate,
                      "mpi4py_workers": workers}))


if __name__ == "__main__":
    main()
