#!/usr/bin/env python3
"""Smoke test of procpool-demo: a small (--quick) --json run whose report and files are
checked, bad options, which must exit with status 2 and say what is wrong, and --help.

Usage: check_demo_json.py PATH/TO/procpool-demo SCRATCH_DIR [--no-images]

--no-images runs the demo without its image part (for ThreadSanitizer builds, where
libvips' own threads drown the run in false reports).
"""
import json
import os
import shutil
import subprocess
import sys


def fail(msg, proc=None):
    print("FAIL:", msg, file=sys.stderr)
    if proc is not None:
        print("--- stdout ---\n" + proc.stdout + "\n--- stderr ---\n" + proc.stderr, file=sys.stderr)
    sys.exit(1)


def run(args):
    return subprocess.run(args, capture_output=True, text=True, timeout=100)


def check_heavy_calc(report, proc):
    if report["workers"] != 2:
        fail(f"workers = {report['workers']}", proc)
    heavy = report["heavy_calc"]
    # --quick runs the seed's own sizes.
    if heavy["scale"] != 1 or heavy["seed_sizes"] != [5000000, 6000000, 7000000, 8000000]:
        fail(f"scale = {heavy['scale']}, seed_sizes = {heavy['seed_sizes']}", proc)
    if heavy["sizes"] != [5000000, 6000000]:
        fail(f"sizes = {heavy['sizes']}", proc)
    modes = [m["mode"] for m in heavy["modes"]]
    if modes != ["serial", "thread_pool", "process_pool", "run_in_processes"]:
        fail(f"modes = {modes}", proc)
    for m in heavy["modes"]:
        if not (m["seconds"] > 0 and m["speedup"] > 0 and m["matches_serial"] and m["error"] is None):
            fail(f"mode {m}", proc)


def check_images(report, proc):
    images = report["images"]
    if images["count"] != 3 or images["crash_index"] != 1 or len(images["results"]) != 3:
        fail(f"images = {images}", proc)
    for r in images["results"]:
        if r["index"] == 1:
            if r["ok"] or r["kind"] != "worker_died" or not r["error"].startswith(
                    "task 1 failed: worker died (SIGSEGV)"):
                fail(f"the crashed image reports {r}", proc)
            if os.path.exists(r["output"]):
                fail(f"the crashed image has an output file {r['output']}", proc)
        else:
            if not r["ok"] or (r["width"], r["height"]) != (1280, 960):
                fail(f"image {r['index']} reports {r}", proc)
            if os.path.getsize(r["output"]) == 0:
                fail(f"empty output {r['output']}", proc)
    # The batch's timeline and Chrome trace: one task event per image, the crash among them.
    import xml.etree.ElementTree as ET
    svg = ET.parse(images["timeline_svg"]).getroot()
    titles = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    if not any("worker_died" in t for t in titles):
        fail(f"the timeline shows no crashed task: {titles}", proc)
    with open(images["trace_json"]) as f:
        trace = json.load(f)
    tasks = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    if len(tasks) != 3 or sorted(e["args"]["id"] for e in tasks) != [0, 1, 2]:
        fail(f"trace.json has task events {tasks}", proc)
    if [e["args"]["status"] for e in tasks if e["args"]["id"] == 1] != ["worker_died"]:
        fail(f"trace.json does not show image 1's crash: {tasks}", proc)
    if "\x1b" in proc.stderr or "\r" in proc.stderr:
        fail("control characters in stderr, which is not a terminal", proc)
    if "procpool: starting run_in_processes: workers = 2, tasks = 3" not in proc.stderr:
        fail("no progress start line on stderr", proc)


def check_wind_farm(report, proc):
    w = report["wind_farm"]
    # --quick: 30-degree steps, so 12 directions of 23 speeds (3..25 m/s), each writing a
    # per-turbine file and a flow-field file.
    if (w["turbines"], w["directions"], w["speeds"]) != (16, 12, 23):
        fail(f"wind farm size {w}", proc)
    if w["error"] is not None or w["same_files"] is not True or w["files"] != 24:
        fail(f"wind farm run {w}", proc)
    if not (w["pipelined_seconds"] > 0 and w["compute_then_write_seconds"] > 0):
        fail(f"wind farm times {w}", proc)
    if not (0 < w["aep_gwh"] < w["wake_free_aep_gwh"]) or not (0 < w["wake_loss"] < 0.5):
        fail(f"wind farm energy {w}", proc)
    if not 0.05 < w["capacity_factor"] < 0.7:
        fail(f"capacity factor {w['capacity_factor']}", proc)
    losses = w["turbine_wake_loss"]
    if len(losses) != 16 or min(losses) < 0 or max(losses) >= 0.5 or min(losses) == max(losses):
        fail(f"per-turbine wake losses {losses}", proc)
    cases = os.path.join(w["out"], "cases")
    names = sorted(os.listdir(cases))
    expected = sorted([f"turbines_{d:03d}.csv" for d in range(0, 360, 30)] +
                      [f"flow_{d:03d}.csv" for d in range(0, 360, 30)])
    if names != expected:
        fail(f"case files {names}", proc)
    with open(os.path.join(cases, "turbines_270.csv")) as f:
        rows = f.read().splitlines()
    if rows[0] != "turbine,x_m,y_m,free_stream_ms,speed_ms,power_kw,thrust_coefficient" or \
            len(rows) != 1 + 16 * 23:
        fail(f"turbines_270.csv starts {rows[:2]}, {len(rows)} lines", proc)
    if os.path.exists(os.path.join(w["out"], "compare")):
        fail("the compute-then-write run's folder was left behind", proc)
    with open(w["power_rose_svg"]) as f:
        svg = f.read()
    if not svg.startswith("<svg") or svg.count("<polygon") != 2:
        fail("power_rose.svg is not the expected SVG", proc)


def check_bad_options(demo):
    for bad in (["--workers", "0"], ["--images", "abc"], ["--no-such-option"],
                ["--images", "2", "--crash", "5"], ["--wind-step", "7"]):
        proc = run([demo] + bad)
        if proc.returncode != 2:
            fail(f"{bad}: exit status {proc.returncode}, expected 2", proc)
        if "procpool-demo: " not in proc.stderr or "--help" not in proc.stderr:
            fail(f"{bad}: no clear message", proc)
        if proc.stdout:
            fail(f"{bad}: wrote to stdout", proc)
    proc = run([demo, "--help"])
    if proc.returncode != 0 or "--workers" not in proc.stdout or "--json" not in proc.stdout:
        fail("--help", proc)


def main():
    demo, scratch = sys.argv[1], sys.argv[2]
    with_images = "--no-images" not in sys.argv[3:]
    shutil.rmtree(scratch, ignore_errors=True)
    out_dir = os.path.join(scratch, "images")

    image_args = ["--images", "3", "--crash", "1"] if with_images else ["--images", "0"]
    proc = run([demo, "--json", "--quick", "--workers", "2", "--tasks", "2", "--out", out_dir] +
               image_args)
    if proc.returncode != 0:
        fail(f"exit status {proc.returncode}, expected 0", proc)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        fail(f"stdout is not JSON: {e}", proc)

    check_heavy_calc(report, proc)
    if with_images:
        check_images(report, proc)
    elif report["images"]["results"]:
        fail("--images 0 still reported images", proc)
    check_wind_farm(report, proc)
    if report["as_intended"] is not True:
        fail("as_intended is not true", proc)
    check_bad_options(demo)
    print("procpool-demo: JSON report, output files, wind farm, bad options and --help all check out")


if __name__ == "__main__":
    main()
