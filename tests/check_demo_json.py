#!/usr/bin/env python3
"""Smoke test of procpool-demo: a small --json run whose report and files are checked,
bad options, which must exit with status 2 and say what is wrong, and --help.

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
    if "\x1b" in proc.stderr or "\r" in proc.stderr:
        fail("control characters in stderr, which is not a terminal", proc)
    if "procpool: starting run_in_processes: workers = 2, tasks = 3" not in proc.stderr:
        fail("no progress start line on stderr", proc)


def check_bad_options(demo):
    for bad in (["--workers", "0"], ["--images", "abc"], ["--no-such-option"],
                ["--images", "2", "--crash", "5"]):
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
    proc = run([demo, "--json", "--workers", "2", "--tasks", "2", "--out", out_dir] + image_args)
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
    if report["as_intended"] is not True:
        fail("as_intended is not true", proc)
    check_bad_options(demo)
    print("procpool-demo: JSON report, output files, bad options and --help all check out")


if __name__ == "__main__":
    main()
