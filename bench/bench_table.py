#!/usr/bin/env python3
"""Prints a Markdown table of medians from a Google Benchmark JSON file.

Run the benchmark with --benchmark_repetitions=N --benchmark_out=FILE
--benchmark_out_format=json (every repetition is kept in FILE), then:

    bench_table.py FILE [--ratio A B LABEL ...]

Benchmarks are named "group/variant". Each row shows the median wall time over the
repetitions, its spread (min..max), the median rate (items/s) and user counters; where a
group has a variant named "serial", a speedup column shows serial time / this time.
--ratio prints how many times faster A is than B: median rate(A) / rate(B), or
median time(B) / time(A) where they have no rate (rates compare runs of unequal sizes).
"""
import argparse
import json
import statistics
import sys

SKIP = {"name", "run_name", "run_type", "repetitions", "repetition_index", "threads",
        "iterations", "real_time", "cpu_time", "time_unit", "family_index",
        "per_family_instance_index", "aggregate_name", "aggregate_unit", "items_per_second",
        "bytes_per_second", "label", "error_occurred", "error_message"}
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def human(x):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def short_name(run_name):
    # "group/variant/iterations:1/real_time" -> "group/variant"
    parts = [p for p in run_name.split("/") if p != "real_time" and ":" not in p]
    return "/".join(parts)


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        r = runs.setdefault(short_name(b["run_name"]), {"ms": [], "rate": [], "counters": {}})
        r["ms"].append(b["real_time"] * TO_MS[b["time_unit"]])
        if "items_per_second" in b:
            r["rate"].append(b["items_per_second"])
        for k, v in b.items():
            if k not in SKIP and isinstance(v, (int, float)):
                r["counters"].setdefault(k, []).append(v)
    return data.get("context", {}), runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--ratio", nargs=3, action="append", default=[],
                    metavar=("A", "B", "LABEL"))
    args = ap.parse_args()
    context, runs = load(args.json)
    med = {name: statistics.median(r["ms"]) for name, r in runs.items()}
    rate = {name: statistics.median(r["rate"]) for name, r in runs.items() if r["rate"]}

    print(f"{context.get('date', '')}, {context.get('num_cpus', '?')} CPUs, "
          f"{len(next(iter(runs.values()))['ms']) if runs else 0} repetitions\n")
    print("| benchmark | median time | min..max | median rate (items/s) | speedup vs serial "
          "| counters (median) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in runs.items():
        group = name.split("/")[0]
        serial = med.get(group + "/serial")
        speedup = f"{serial / med[name]:.2f}x" if serial and not name.endswith("/serial") else ""
        shown = human(rate[name]) + "/s" if name in rate else ""
        counters = ", ".join(f"{k}={human(statistics.median(v))}"
                             for k, v in sorted(r["counters"].items()))
        print(f"| {name} | {med[name]:.3f} ms | {min(r['ms']):.3f}..{max(r['ms']):.3f} "
              f"| {shown} | {speedup} | {counters} |")
    for a, b, label in args.ratio:
        if a in rate and b in rate:
            print(f"\n{label}: {rate[a] / rate[b]:.2f}x  ({a} vs {b}, ratio of median rates)")
        elif a in med and b in med:
            print(f"\n{label}: {med[b] / med[a]:.2f}x  ({a} vs {b}, ratio of median times)")
        else:
            print(f"\n{label}: missing {a if a not in med else b}", file=sys.stderr)


if __name__ == "__main__":
    main()
