#!/usr/bin/python3
"""Python peers of bench/bench_process_pool.cpp: ProcessPoolExecutor, pebble, joblib/loky.

Run with Debian's interpreter (/usr/bin/python3, with python3-joblib and python3-pebble):

    /usr/bin/python3 bench/peers/python_peers.py [--reps N] [--only GROUP,...] [--quick]

Prints one JSON object, {"python": version, "results": {name: {metric: [one value per
repetition]}}}, with names "group/variant" matching the C++ benchmark's groups, which
bench/peers/process_pool_table.py merges into one table. Every pool has 2 workers.
Times are wall-clock (time.perf_counter); latencies in microseconds.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

WORKERS = 2
HEAVY_SIZES = [5_000_000, 6_000_000, 7_000_000, 8_000_000]


# ---- tasks: module-level, so that spawn/forkserver children can import them ------------

def noop():
    return None


def twice(x):
    return x * 2


def whoami():
    return os.getpid()


def kill_myself():
    os.kill(os.getpid(), signal.SIGKILL)


def heavy_calc(n):
    # The seed's function, verbatim.
    return sum(math.sqrt(i) for i in range(n))


# ---- helpers ------------------------------------------------------------------------

def now():
    return time.perf_counter()


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def warm(ex):
    for f in [ex.submit(noop) for _ in range(50)]:
        f.result()


# ---- 1. one no-op round trip ------------------------------------------------------------

def latency_ppe(rounds):
    with ProcessPoolExecutor(WORKERS) as ex:
        warm(ex)
        for _ in range(rounds // 20):
            ex.submit(noop).result()
        us = []
        for _ in range(rounds):
            t0 = now()
            ex.submit(noop).result()
            us.append((now() - t0) * 1e6)
    return {"p50_us": pct(us, 0.5), "p99_us": pct(us, 0.99)}


# ---- 2. submit all, then get all ----------------------------------------------------------

def submit_get_ppe(tasks):
    with ProcessPoolExecutor(WORKERS) as ex:
        warm(ex)
        t0 = now()
        fs = [ex.submit(noop) for _ in range(tasks)]
        for f in fs:
            f.result()
        dt = now() - t0
    return {"items_per_second": tasks / dt, "time_ms": dt * 1e3}


# ---- 3. map x*2 ---------------------------------------------------------------------------

def map_ppe(items):
    data = list(range(items))
    with ProcessPoolExecutor(WORKERS) as ex:
        warm(ex)
        t0 = now()
        out = list(ex.map(twice, data, chunksize=1000))
        dt = now() - t0
    assert out[-1] == 2 * data[-1]
    return {"items_per_second": items / dt, "time_ms": dt * 1e3}


# ---- 4. construction to first result --------------------------------------------------------

def startup_ppe(method, rounds):
    ctx = mp.get_context(method)
    first, down = [], []
    if method == "forkserver":
        # The fork server starts once per program and is then reused by every pool;
        # start it outside the timed rounds (procpool's is started by init()).
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
            ex.submit(noop).result()
    for _ in range(rounds):
        t0 = now()
        ex = ProcessPoolExecutor(WORKERS, mp_context=ctx)
        ex.submit(noop).result()
        first.append((now() - t0) * 1e6)
        t1 = now()
        ex.shutdown(wait=True)
        down.append((now() - t1) * 1e6)
    return {"p50_us": pct(first, 0.5), "p99_us": pct(first, 0.99),
            "shutdown_p50_us": pct(down, 0.5)}


def startup_forkserver_cold():
    """Python's forkserver including the server's own start: run in a fresh interpreter."""
    import subprocess
    code = ("import time,sys; sys.path.insert(0, %r); import python_peers as p; "
            "import multiprocessing as mp; from concurrent.futures import ProcessPoolExecutor; "
            "t0=time.perf_counter(); ex=ProcessPoolExecutor(2, mp_context=mp.get_context('forkserver')); "
            "ex.submit(p.noop).result(); print((time.perf_counter()-t0)*1e6); ex.shutdown()"
            % os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {"p50_us": float(out.stdout.split()[-1])}


def startup_loky(rounds):
    from joblib.externals.loky import get_reusable_executor
    first = []
    for _ in range(rounds):
        t0 = now()
        ex = get_reusable_executor(max_workers=WORKERS, reuse=False)
        ex.submit(noop).result()
        first.append((now() - t0) * 1e6)
        ex.shutdown(wait=True)
    return {"p50_us": pct(first, 0.5), "p99_us": pct(first, 0.99)}


def startup_joblib_parallel(rounds):
    """joblib.Parallel(n_jobs=2) on a fresh loky backend: the reusable executor is shut
    down before each round, so Parallel has to start its workers again."""
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor
    first = []
    for _ in range(rounds):
        get_reusable_executor(max_workers=WORKERS).shutdown(wait=True)
        t0 = now()
        Parallel(n_jobs=WORKERS, backend="loky")(delayed(noop)() for _ in range(1))
        first.append((now() - t0) * 1e6)
    get_reusable_executor(max_workers=WORKERS).shutdown(wait=True)
    return {"p50_us": pct(first, 0.5), "p99_us": pct(first, 0.99)}


# ---- 5. a worker killed ---------------------------------------------------------------------

def crash_ppe(rounds):
    """PPE breaks: time to BrokenProcessPool, then whether it takes more work."""
    resolved, refused = [], 0
    for _ in range(rounds):
        ex = ProcessPoolExecutor(WORKERS)
        warm(ex)
        t0 = now()
        f = ex.submit(kill_myself)
        try:
            f.result()
        except BrokenProcessPool:
            resolved.append((now() - t0) * 1e6)
        try:
            ex.submit(noop).result()
        except BrokenProcessPool:
            refused += 1
        ex.shutdown(wait=True)
    return {"resolved_p50_us": pct(resolved, 0.5), "resolved_p99_us": pct(resolved, 0.99),
            "refuses_further_work": refused / rounds}


def crash_pebble(rounds):
    """pebble's ProcessPool replaces the worker: time to ProcessExpired, then to a result
    from the replacement (a pid the pool did not have before)."""
    import pebble
    resolved, served, survivors = [], [], 0
    with pebble.ProcessPool(max_workers=WORKERS) as pool:
        for f in [pool.schedule(noop) for _ in range(50)]:
            f.result()
        for _ in range(rounds):
            old = {pool.schedule(whoami).result() for _ in range(20)}
            t0 = now()
            f = pool.schedule(kill_myself)
            try:
                f.result()
            except pebble.ProcessExpired:
                pass
            resolved.append((now() - t0) * 1e6)
            while True:
                pid = pool.schedule(whoami).result()
                if pid not in old:
                    break
                survivors += 1
            served.append((now() - t0) * 1e6)
            time.sleep(0.005)
    return {"resolved_p50_us": pct(resolved, 0.5), "resolved_p99_us": pct(resolved, 0.99),
            "replacement_result_p50_us": pct(served, 0.5),
            "replacement_result_p99_us": pct(served, 0.99),
            "answers_from_survivors": survivors}


# ---- 6. the seed's heavy_calc --------------------------------------------------------------

def heavy_serial():
    t0 = now()
    r = [heavy_calc(n) for n in HEAVY_SIZES]
    dt = now() - t0
    return {"time_ms": dt * 1e3, "check": sum(r)}


def heavy_ppe():
    with ProcessPoolExecutor(WORKERS) as ex:
        warm(ex)
        t0 = now()
        r = list(ex.map(heavy_calc, HEAVY_SIZES))
        dt = now() - t0
    return {"time_ms": dt * 1e3, "check": sum(r)}


# ---------------------------------------------------------------------------------------

def cases(quick):
    s = 10 if quick else 1
    return {
        "latency": [("latency/python_ppe", lambda: latency_ppe(20_000 // s))],
        "submit_get": [("submit_get/python_ppe_20k", lambda: submit_get_ppe(20_000 // s))],
        "map": [("map/python_ppe_chunksize1000", lambda: map_ppe(1_000_000 // s))],
        "startup": [
            ("startup/python_ppe_fork", lambda: startup_ppe("fork", 20 // s or 2)),
            ("startup/python_ppe_forkserver", lambda: startup_ppe("forkserver", 20 // s or 2)),
            ("startup/python_ppe_forkserver_cold", startup_forkserver_cold),
            ("startup/python_ppe_spawn", lambda: startup_ppe("spawn", 10 // s or 2)),
            ("startup/joblib_loky_executor", lambda: startup_loky(5 // s or 2)),
            ("startup/joblib_parallel", lambda: startup_joblib_parallel(5 // s or 2)),
        ],
        "crash": [
            ("crash/python_ppe", lambda: crash_ppe(20 // s or 2)),
            ("crash/pebble_process_pool", lambda: crash_pebble(20 // s or 2)),
        ],
        "heavy_calc": [
            ("heavy_calc/python_serial", heavy_serial),
            ("heavy_calc/python_ppe_map", heavy_ppe),
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated groups (default: all)")
    ap.add_argument("--quick", action="store_true", help="a tenth of the work, for testing")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    results = {}
    for group, variants in cases(args.quick).items():
        if only and group not in only:
            continue
        for name, fn in variants:
            for _ in range(args.reps):
                for k, v in fn().items():
                    results.setdefault(name, {}).setdefault(k, []).append(v)
            med = {k: statistics.median(v) for k, v in results[name].items()}
            print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in med.items()),
                  file=sys.stderr)
    json.dump({"python": sys.version.split()[0], "results": results}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
