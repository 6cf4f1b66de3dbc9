#!/usr/bin/python3
"""Merges the process_pool benchmark's three sources into one Markdown table.

    process_pool_table.py CPP_JSON PINGPONG_JSONL PYTHON_JSON

CPP_JSON: bench_process_pool's Google Benchmark output (--benchmark_out, every
repetition kept); PINGPONG_JSONL: one bench_pipe_pingpong JSON object per line;
PYTHON_JSON: python_peers.py's output. Every value shown is the median over the
repetitions, with the spread (min..max) of the row's main metric, followed by the
targets of the process_pool issue with their ratios and whether each is met.
"""
import json
import statistics
import sys

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
GB_SKIP = {"name", "run_name", "run_type", "repetitions", "repetition_index", "threads",
           "iterations", "real_time", "cpu_time", "time_unit", "family_index",
           "per_family_instance_index", "aggregate_name", "aggregate_unit", "label",
           "error_occurred", "error_message", "bytes_per_second"}


def short_name(run_name):
    return "/".join(p for p in run_name.split("/") if p != "real_time" and ":" not in p)


def load_cpp(path, rows):
    with open(path) as f:
        data = json.load(f)
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        r = rows.setdefault(short_name(b["run_name"]), {})
        r.setdefault("time_ms", []).append(b["real_time"] * TO_MS[b["time_unit"]])
        for k, v in b.items():
            if k not in GB_SKIP and isinstance(v, (int, float)):
                r.setdefault(k, []).append(v)


def load_pingpong(path, rows):
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            name = "latency/pipe_pingpong_" + ("pinned_cpu0" if d["pinned"] else "unpinned")
            r = rows.setdefault(name, {})
            for k in ("p50_us", "p99_us"):
                r.setdefault(k, []).append(d[k])


def load_python(path, rows):
    with open(path) as f:
        data = json.load(f)
    for name, metrics in data["results"].items():
        r = rows.setdefault(name, {})
        for k, v in metrics.items():
            if k != "check":
                r.setdefault(k, []).extend(v)
    return data.get("python", "?")


def human(x):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def fmt(metric, v):
    if metric.endswith("_us"):
        return f"{v / 1e3:.2f} ms" if v >= 1e4 else f"{v:.2f} µs"
    if metric == "items_per_second":
        return human(v) + "/s"
    if metric.endswith("_ms"):
        return f"{v:.2f} ms"
    return human(v)


# The metric that leads each group's rows (and whose spread is shown).
MAIN = {"floor": "p50_us", "latency": "p50_us", "submit_get": "items_per_second", "map": "items_per_second",
        "startup": "p50_us", "crash": "resolved_p50_us", "heavy_calc": "time_ms",
        "idle": "idle_pool_cpu_us", "busy": "threads_over_pool"}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rows = {}
    load_cpp(sys.argv[1], rows)
    load_pingpong(sys.argv[2], rows)
    py = load_python(sys.argv[3], rows)
    med = {n: {k: statistics.median(v) for k, v in m.items()} for n, m in rows.items()}

    order = list(MAIN)
    names = sorted(rows, key=lambda n: (order.index(n.split("/")[0])
                                        if n.split("/")[0] in order else 99))
    print(f"Python peers: /usr/bin/python3 {py}. Medians over repetitions.\n")
    print("| case | variant | main metric (median) | min..max | other metrics (median) |")
    print("|---|---|---:|---:|---|")
    for n in names:
        group, variant = n.split("/", 1)
        main_k = MAIN.get(group, "time_ms")
        if main_k not in rows[n]:
            main_k = next(iter(rows[n]))
        vals = rows[n][main_k]
        others = ", ".join(f"{k}={fmt(k, v)}" for k, v in sorted(med[n].items())
                           if k != main_k and not (k == "time_ms" and main_k != "time_ms"
                                                   and group in ("latency", "startup",
                                                                 "crash", "idle", "busy")))
        print(f"| {group} | {variant} | {main_k}={fmt(main_k, med[n][main_k])} "
              f"| {fmt(main_k, min(vals))}..{fmt(main_k, max(vals))} | {others} |")

    def g(name, metric):
        return med.get(name, {}).get(metric)

    targets = []

    def ratio(label, a, b, goal, unit="x", higher=True):
        if a is None or b is None or b == 0:
            targets.append((label, "missing", "", "?"))
            return
        r = a / b
        if goal is None:  # context for the row above, no target of its own
            targets.append((label, f"{r:.3g}{unit}", "", ""))
            return
        met = r >= goal if higher else r <= goal
        targets.append((label, f"{r:.3g}{unit}", f"goal {'≥' if higher else '≤'} {goal:g}{unit}",
                        "met" if met else "not met"))

    pp = "latency/procpool_process_pool"
    ratio("1. procpool p50 / pinned pipe ping-pong p50 (below 1)",
          g(pp, "p50_us"), g("latency/pipe_pingpong_pinned_cpu0", "p50_us"), 1.0, "", False)
    ratio("1. Python PPE p50 / procpool p50", g("latency/python_ppe", "p50_us"),
          g(pp, "p50_us"), 50)
    sg = "submit_get/procpool_process_pool"
    ratio("2. procpool / Python PPE.submit tasks/s", g(sg, "items_per_second"),
          g("submit_get/python_ppe_20k", "items_per_second"), 150)
    ratio("2. procpool / Asio thread_pool + std::promise tasks/s", g(sg, "items_per_second"),
          g("submit_get/asio_thread_pool_promise", "items_per_second"), 1.5)
    ratio("trace: traced / untraced submit tasks/s (recording every task)",
          g("submit_get/procpool_process_pool_traced", "items_per_second"),
          g(sg, "items_per_second"), 0.95)
    mp = "map/procpool_process_pool"
    ratio("3. procpool map / Python PPE.map(chunksize=1000) items/s",
          g(mp, "items_per_second"), g("map/python_ppe_chunksize1000", "items_per_second"), 50)
    ratio("3. procpool process_pool.map / thread_pool.map items/s",
          g(mp, "items_per_second"), g("map/procpool_thread_pool", "items_per_second"), 0.30)
    for v in ("forkserver", "fork"):
        p50 = g(f"startup/procpool_{v}", "p50_us")
        ratio(f"4. construction to first result, {v} (p50, ms)",
              None if p50 is None else p50 / 1e3, 1.0, 2.0, " ms", False)
    c = g("crash/procpool_process_pool", "replacement_result_p50_us")
    ratio("5. killed worker: future resolved and replacement's result (p50, ms)",
          None if c is None else c / 1e3, 1.0, 5.0, " ms", False)
    ratio("6. heavy_calc pool.map speedup over serial",
          g("heavy_calc/serial", "time_ms"), g("heavy_calc/procpool_map", "time_ms"), 1.95)
    ratio("6. (context, no target) two plain threads' speedup over serial: the machine's ceiling",
          g("heavy_calc/serial", "time_ms"), g("heavy_calc/two_std_threads_ceiling", "time_ms"),
          None)
    ratio("6. (context, no target) Python: PPE.map speedup over Python serial (the seed's measure)",
          g("heavy_calc/python_serial", "time_ms"), g("heavy_calc/python_ppe_map", "time_ms"),
          None)
    idle = g("idle/procpool_process_pool", "idle_pool_cpu_us")
    ratio("7. idle pool: supervisor + fork server + workers CPU over 1 s (ms)",
          None if idle is None else idle / 1e3, 1.0, 0.1, " ms", False)
    idle2 = g("idle/procpool_process_pool", "idle_second_pool_cpu_us")
    ratio("7. (context) the next idle second (the first includes the fork server making its "
          "two spares once)", None if idle2 is None else idle2 / 1e3, 1.0, 0.1, " ms", False)
    ratio("7. busy: 2 long tasks, two plain threads' time / pool's time (alternating)",
          g("busy/procpool_vs_two_std_threads", "threads_over_pool"), 1.0, 0.97)

    # The performance issue's targets, with the machine's own floors beside them.
    fl = g("floor/shm_spin_handoff", "p50_us")
    fk = g("floor/fork_exit_wait", "p50_us")
    pin = g("latency/pipe_pingpong_pinned_cpu0", "p50_us")
    ratio("P. round trip p50 / pinned pipe ping-pong p50", g(pp, "p50_us"), pin, 0.25, "", False)
    ratio("P. (context) round trip p50 / shared-memory spin handoff p50 (the floor)",
          g(pp, "p50_us"), fl, None)
    ratio("P. submit+get tasks/s / Python PPE", g(sg, "items_per_second"),
          g("submit_get/python_ppe_20k", "items_per_second"), 150)
    ratio("P. submit+get tasks/s / Asio thread_pool + promise", g(sg, "items_per_second"),
          g("submit_get/asio_thread_pool_promise", "items_per_second"), 1.5)
    w = g(mp, "items_per_second")
    ratio("P. map 1M ints, warm (M items/s)", None if w is None else w / 1e6, 1.0, 500, "M/s")
    ratio("P. (context) map warm / the parent's own copies alone (floor/map_parent_copies)",
          w, g("floor/map_parent_copies", "items_per_second"), None)
    ratio("P. map 1M ints: first call on a new pool / warm",
          g("map/procpool_process_pool_first_call", "items_per_second"), w, 0.5)
    fs = g("startup/procpool_forkserver", "p50_us")
    ratio("P. start-up to first result, forkserver, pools back to back (p50, ms)",
          None if fs is None else fs / 1e3, 1.0, 1.0, " ms", False)
    fss = g("startup/procpool_forkserver_spaced", "p50_us")
    ratio("P. start-up to first result, forkserver, 30 ms between pools (p50, ms)",
          None if fss is None else fss / 1e3, 1.0, 1.0, " ms", False)
    ratio("P. (context) start-up / fork+exit+wait of this program", fs, fk, None)
    ff = g("startup/procpool_fork", "p50_us")
    ratio("P. start-up to first result, start_method::fork (p50, ms)",
          None if ff is None else ff / 1e3, 1.0, 2.0, " ms", False)
    fkl = g("floor/fork_exit_wait_before_startup", "p50_us")
    ratio("P. (context) fork+exit+wait of this program as it is then (p50, ms)",
          None if fkl is None else fkl / 1e3, 1.0, None, " ms")
    ratio("P. (context) fork start-up / that fork+exit+wait", ff, fkl, None)
    sd = g("startup/procpool_forkserver", "shutdown_p50_us")
    ratio("P. shutdown (p50, ms)", None if sd is None else sd / 1e3, 1.0, 1.0, " ms", False)
    ratio("P. killed worker to the replacement's result (p50, ms)",
          None if c is None else c / 1e3, 1.0, 1.5, " ms", False)
    cs = g("crash/procpool_process_pool_spaced", "replacement_result_p50_us")
    ratio("P. the same, 30 ms between crashes (p50, ms)",
          None if cs is None else cs / 1e3, 1.0, 1.5, " ms", False)
    ratio("P. (context) replacement / fork+exit+wait of this program", c, fk, None)
    ratio("P. heavy_calc map speedup / two plain threads' speedup (alternating, pair by pair)",
          g("heavy_calc/procpool_map_vs_two_threads_alternating", "threads_over_pool"), 1.0, 1.0)
    ratio("P. (context) the same from the separate benchmarks (a minute apart)",
          g("heavy_calc/two_std_threads_ceiling", "time_ms"), g("heavy_calc/procpool_map", "time_ms"),
          None)

    print("\n| target | measured | goal | met? |")
    print("|---|---:|---|---|")
    for t in targets:
        print("| " + " | ".join(t) + " |")


if __name__ == "__main__":
    main()
