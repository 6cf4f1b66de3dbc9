#!/usr/bin/python3
"""Python peers of bench/bench_shared_array.cpp: a worker process sums an array of doubles.

Run with Debian's interpreter and numpy (/usr/bin/python3, python3-numpy):

    /usr/bin/python3 bench/peers/shared_array_peers.py [--sizes 1,256,2048] [--reps 7]
        [--pickle-reps-big N] [--json FILE]
    /usr/bin/python3 bench/peers/shared_array_peers.py --table CPP.json PY.json

The first form measures and writes {"python": ..., "results": [...]} (the C++ program's
format: one entry per size in MiB and method, with every pass's wall-clock time in ms).
The second prints the merged markdown table of both runs and the shared_array targets.

Every pool is a ProcessPoolExecutor with one worker (the default start method, fork), so
that "first pass" is well defined: each repetition starts a fresh pool, warms it with
no-op round trips, then times submit(...).result():
  - pickle: the numpy array as the argument (pickled by the pool's feeder thread, sent
    through its pipe, unpickled into a new array in the worker);
  - SharedMemory, attached per call: the worker opens the block by name, maps it, sums a
    numpy view of it and closes it, on every call (the usual pattern);
  - SharedMemory, cached: the worker keeps the first attachment in a dict by name, like
    procpool's workers keep shared_array mappings (first pass, then repeated passes).
The sum-only reference is numpy's sum of the same array in the parent. Each task also
returns when it started and ended (time.monotonic_ns, CLOCK_MONOTONIC, the same clock in
every process and in the C++ program), so that a pass splits into its time in the task
and the handoff around it.
"""
import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

try:
    import numpy as np
except ImportError:  # --table does not need it
    np = None


def now():
    return time.monotonic_ns()


def passes_for(mib):
    # The same counts as the C++ program.
    return 40 if mib <= 4 else 10 if mib <= 64 else 3


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return -1


# ---- worker side: module-level functions -------------------------------------------------

def untrack():
    # Python 3.11 registers even an *attached* SharedMemory with the resource tracker,
    # which would unlink the parent's block when the worker exits (bpo-39959, fixed by
    # track=False in 3.13). Workers leave the block to its creator.
    resource_tracker.register = lambda *a, **k: None
    resource_tracker.unregister = lambda *a, **k: None


def noop():
    return None


def sum_array(a):
    # The array was unpickled before the task started.
    t0 = now()
    return float(a.sum()), t0, now()


def sum_attach(name, n):
    t0 = now()
    shm = SharedMemory(name=name)
    try:
        a = np.ndarray((n,), dtype=np.float64, buffer=shm.buf)
        s = float(a.sum())
        del a
    finally:
        shm.close()
    return s, t0, now()


_attached = {}


def sum_cached(name, n):
    t0 = now()
    if name not in _attached:
        shm = SharedMemory(name=name)
        _attached[name] = (shm, np.ndarray((n,), dtype=np.float64, buffer=shm.buf))
    return float(_attached[name][1].sum()), t0, now()


# ---- parent side -------------------------------------------------------------------------

class Results:
    def __init__(self):
        self.entries = {}

    def add(self, mib, ident, label, ref, ms):
        e = self.entries.setdefault((mib, ident), {
            "size_mib": mib, "id": "py_" + ident, "label": label,
            "ref": ("py_" + ref) if ref else "", "ms": []})
        e["ms"].append(ms)
        return e

    def add_pass(self, mib, ident, label, ref, t0, r):
        """One submit -> result() pass started at t0 (ns) of a task returning
        (sum, start_ns, end_ns); returns the sum."""
        e = self.add(mib, ident, label, ref, (now() - t0) / 1e6)
        e.setdefault("task_ms", []).append((r[2] - r[1]) / 1e6)
        e.setdefault("in_ms", []).append((r[1] - t0) / 1e6)
        return r[0]


def fill(a):
    # (i % 1000) * 0.001, in chunks that start at multiples of 1000, so that no temporary
    # is as big as the array.
    step = 1000 * 1024
    pattern = (np.arange(step, dtype=np.int64) % 1000) * 0.001
    for lo in range(0, a.size, step):
        hi = min(a.size, lo + step)
        a[lo:hi] = pattern[:hi - lo]


def check(got, want, what):
    if abs(got - want) > 1e-9 * abs(want):
        sys.exit("shared_array_peers: %s returned %r, expected %r" % (what, got, want))


def timed(fn):
    t0 = now()
    r = fn()
    return (now() - t0) / 1e6, r


def pool():
    return ProcessPoolExecutor(1, initializer=untrack)


def warm(ex, res):
    for _ in range(20):
        ex.submit(noop).result()
    for _ in range(20):
        ms, _ = timed(lambda: ex.submit(noop).result())
        res.add(0, "noop", "Python no-op round trip (reference)", "", ms)


def parent_sums(a, mib, ident, label, passes, res, want):
    for _ in range(passes):
        ms, r = timed(lambda: float(a.sum()))
        res.add(mib, ident, label, "", ms)
        check(r, want, "sum in the parent")


def bench_size(mib, reps, pickle_reps, res):
    nbytes = mib << 20
    n = nbytes // 8
    passes = passes_for(mib)
    print("# %d MiB: %d repetitions (%d pickled), %d repeated passes each (MemAvailable %d MiB)"
          % (mib, reps, pickle_reps, passes, mem_available_mib()), file=sys.stderr)

    # SharedMemory: allocated and filled once in the parent.
    shm = SharedMemory(create=True, size=nbytes)
    try:
        a = np.ndarray((n,), dtype=np.float64, buffer=shm.buf)
        fill(a)
        want = float(a.sum())
        for _ in range(reps):
            with pool() as ex:
                warm(ex, res)
                t0 = now()
                r = ex.submit(sum_cached, shm.name, n).result()
                check(res.add_pass(mib, "shm_cached_first",
                                   "Python SharedMemory, cached, first pass",
                                   "sum_parent_shm", t0, r), want, "sum_cached")
                for _ in range(passes):
                    t0 = now()
                    r = ex.submit(sum_cached, shm.name, n).result()
                    check(res.add_pass(mib, "shm_cached_repeat",
                                       "Python SharedMemory, cached, repeated",
                                       "sum_parent_shm", t0, r), want, "sum_cached")
                for _ in range(passes):
                    t0 = now()
                    r = ex.submit(sum_attach, shm.name, n).result()
                    check(res.add_pass(mib, "shm_attach", "Python SharedMemory, attached per call",
                                       "sum_parent_shm", t0, r), want, "sum_attach")
            parent_sums(a, mib, "sum_parent_shm", "numpy sum in the parent (SharedMemory)",
                        passes, res, want)
        del a
    finally:
        shm.close()
        shm.unlink()

    # Pickled argument: a plain numpy array (pickled again on every call).
    if pickle_reps <= 0:
        return
    need = 6 * mib + 2048  # parent: array, tobytes, pickle buffer; worker: read, bytes, array
    if mem_available_mib() < need:
        print("# %d MiB pickled: skipped, MemAvailable %d MiB < %d MiB"
              % (mib, mem_available_mib(), need), file=sys.stderr)
        return
    a = np.empty(n, dtype=np.float64)
    fill(a)
    for _ in range(pickle_reps):
        with pool() as ex:
            warm(ex, res)
            for _ in range(max(1, passes // 2)):
                t0 = now()
                r = ex.submit(sum_array, a).result()
                check(res.add_pass(mib, "pickle", "Python numpy array pickled as the argument",
                                   "sum_parent_array", t0, r), want, "sum_array")
        parent_sums(a, mib, "sum_parent_array", "numpy sum in the parent (numpy array)",
                    passes, res, want)
    del a


def measure(args):
    if np is None:
        sys.exit("shared_array_peers: numpy is needed (Debian: apt-get install python3-numpy)")
    res = Results()
    for mib in args.sizes:
        pr = args.pickle_reps_big if (mib >= 1024 and args.pickle_reps_big is not None) \
            else args.reps
        bench_size(mib, args.reps, pr, res)
    out = {"python": sys.version.split()[0], "numpy": np.__version__,
           "results": list(res.entries.values())}
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


# ---- the merged table --------------------------------------------------------------------

ORDER = ["cpp_shared_repeat", "cpp_shared_first", "cpp_spin_control", "cpp_vector_moved", "cpp_vector_lvalue",
         "cpp_sum_parent_shared", "cpp_sum_parent_vector", "cpp_memcpy_touched", "cpp_copy_new",
         "py_shm_cached_repeat", "py_shm_cached_first", "py_shm_attach", "py_pickle",
         "py_sum_parent_shm", "py_sum_parent_array"]


def fmt(ms):
    return "%.3f" % ms


def handoff(e):
    """Median over passes of total - time in the task."""
    return statistics.median(t - k for t, k in zip(e["ms"], e["task_ms"]))


def table(paths):
    entries = []
    for p in paths:
        with open(p) as f:
            entries += json.load(f)["results"]
    by = {(e["size_mib"], e["id"]): e for e in entries}
    med = {k: statistics.median(e["ms"]) for k, e in by.items()}
    sizes = sorted({e["size_mib"] for e in entries if e["size_mib"] > 0})

    print("| size | method | total ms (median) | min..max | n | sum-only ms | overhead ms "
          "| in task ms | handoff ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted((k for k in by if k[0] == 0), key=lambda k: k[1]):
        e = by[key]
        print("| - | %s | %s | %s..%s | %d | | | | |" % (
            e["label"], fmt(med[key]), fmt(min(e["ms"])), fmt(max(e["ms"])), len(e["ms"])))
    for mib in sizes:
        ids = [i for i in ORDER if (mib, i) in by] + sorted(
            i for (m, i) in by if m == mib and i not in ORDER)
        for i in ids:
            e = by[(mib, i)]
            ref = (mib, e["ref"])
            tail = "| |"
            if e["ref"] and ref in med:
                tail = "%s | %s |" % (fmt(med[ref]), fmt(med[(mib, i)] - med[ref]))
            if "task_ms" in e:
                tail += " %s | %s |" % (fmt(statistics.median(e["task_ms"])),
                                        fmt(handoff(e)))
            else:
                tail += " | |"
            size = "%d MiB" % mib if mib < 1024 else "%g GiB" % (mib / 1024)
            print("| %s | %s | %s | %s..%s | %d | %s" % (
                size, e["label"], fmt(med[(mib, i)]), fmt(min(e["ms"])), fmt(max(e["ms"])),
                len(e["ms"]), tail))

    def overhead(mib, i):
        """(total - sum-only of medians, total - in task per pass), or None."""
        e = by.get((mib, i))
        if e is None or (mib, e["ref"]) not in med:
            return None
        return med[(mib, i)] - med[(mib, e["ref"])], handoff(e)

    def both(v):
        return "%s / %s ms" % (fmt(v[0]), fmt(v[1]))

    print()
    print("Targets (overhead as total - sum-only / total - in task):")
    rep = {m: overhead(m, "cpp_shared_repeat") for m in sizes}
    rep = {m: v for m, v in rep.items() if v is not None}
    if rep:
        direct = [v[1] for v in rep.values()]
        print("- shared_array handoff (repeated passes) <= 1 ms at every size: %s -> %s"
              % (", ".join("%s MiB %s" % (m, both(v)) for m, v in rep.items()),
                 "met" if max(direct) <= 1.0 else "NOT met"))
        print("- ... flat from the smallest to the largest size: total - in task spans "
              "%s..%s ms" % (fmt(min(direct)), fmt(max(direct))))
        ctl = {m: handoff(by[(m, "cpp_spin_control")]) for m in sizes
               if (m, "cpp_spin_control") in by}
        if ctl:
            print("  (a task without data that runs as long as the sum: %s)"
                  % ", ".join("%s MiB %s ms" % (m, fmt(v)) for m, v in ctl.items()))
        first = {m: overhead(m, "cpp_shared_first") for m in sizes}
        print("- (no target) shared_array first pass: %s"
              % ", ".join("%s MiB %s" % (m, both(v)) for m, v in first.items() if v is not None))
    for variant in ("cpp_vector_moved", "cpp_vector_lvalue"):
        parts = []
        ok = True
        for m in sizes:
            v = overhead(m, variant)
            if v is None or (m, "cpp_memcpy_touched") not in med:
                continue
            mc = med[(m, "cpp_memcpy_touched")]
            cn = med.get((m, "cpp_copy_new"))
            ok = ok and v[1] <= mc
            parts.append("%s MiB: %s = %.1fx memcpy (%s ms)%s" % (
                m, both(v), v[1] / mc if mc > 0 else float("inf"), fmt(mc),
                "" if cn is None else ", %.1fx a copy into new memory (%s ms)"
                % (v[1] / cn, fmt(cn))))
        if parts:
            print("- std::vector automatic path (%s) <= one memcpy: %s -> %s"
                  % (variant[4:], "; ".join(parts), "met" if ok else "NOT met"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,256,2048",
                    type=lambda s: [int(x) for x in s.split(",") if x])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--pickle-reps-big", type=int, default=None,
                    help="repetitions of the pickled case for sizes >= 1 GiB (default --reps)")
    ap.add_argument("--json", default="")
    ap.add_argument("--table", nargs="+", metavar="JSON")
    args = ap.parse_args()
    if args.table:
        table(args.table)
    else:
        measure(args)


if __name__ == "__main__":
    main()
