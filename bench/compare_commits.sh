#!/usr/bin/env bash
# Before/after in one run: builds bench_process_pool from two commits and runs them in
# alternation (old, new, old, new, ...) on the same machine, so that both see the same
# load and the same kernel costs, then prints the medians of the dispatch metrics and the
# ratio new/old:
#   round trip p50 (latency/procpool_process_pool), submit-per-task throughput
#   (submit_get/procpool_process_pool), map throughput (map/procpool_process_pool).
#   bench/compare_commits.sh OLD [NEW]      NEW defaults to the working tree
# Environment: ROUNDS (alternations, default 5), WORK (build area, default
# /tmp/procpool-compare).
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
old=${1:?usage: compare_commits.sh OLD_COMMIT [NEW_COMMIT]}
new=${2:-}
rounds=${ROUNDS:-5}
work=${WORK:-/tmp/procpool-compare}
filter='latency/procpool_process_pool/|submit_get/procpool_process_pool/|map/procpool_process_pool/'
mkdir -p "$work"

# Exports commit $1 into $2 (a plain tree: no worktree bookkeeping left behind).
export_commit() {
  rm -rf "$2"
  mkdir -p "$2"
  git -C "$src" archive "$1" | tar -x -C "$2"
}

build() {  # source dir, build dir
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_BUILD_TESTS=OFF \
    -DPROCPOOL_BUILD_EXAMPLES=OFF -DPROCPOOL_BUILD_BENCH=ON >/dev/null
  cmake --build "$2" --target bench_process_pool >/dev/null
}

export_commit "$old" "$work/old-src"
build "$work/old-src" "$work/old-build"
if [ -n "$new" ]; then
  export_commit "$new" "$work/new-src"
  new_src=$work/new-src
else
  new_src=$src
  new="working tree at $(git -C "$src" rev-parse --short HEAD)"
fi
build "$new_src" "$work/new-build"

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$(nproc);" \
  "$(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# old: $(git -C "$src" rev-parse --short "$old"); new: $new; rounds: $rounds"
rm -f "$work"/run-*.json
for i in $(seq "$rounds"); do
  for side in old new; do
    "$work/$side-build/bench/bench_process_pool" --benchmark_filter="$filter" \
      --benchmark_format=json >"$work/run-$side-$i.json" 2>/dev/null
  done
done

/usr/bin/python3 - "$work" "$rounds" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def metrics(path):
    out = {}
    for b in json.load(open(path))["benchmarks"]:
        n = b["name"].split("/real_time")[0]
        if n.startswith("latency/"):
            out["round trip p50 (us, lower is better)"] = b["p50_us"]
        elif n.startswith("submit_get/"):
            out["submit+get (tasks/s)"] = b["items_per_second"]
        elif n.startswith("map/"):
            out["map 1M ints (items/s)"] = b["items_per_second"]
    return out
runs = {s: [metrics(f"{work}/run-{s}-{i}.json") for i in range(1, rounds + 1)] for s in ("old", "new")}
print(f"| metric | old (median of {rounds}) | new (median of {rounds}) | new/old |")
print("|---|---|---|---|")
for k in runs["old"][0]:
    o = statistics.median(r[k] for r in runs["old"])
    n = statistics.median(r[k] for r in runs["new"])
    fmt = (lambda v: f"{v:.2f}") if "us" in k else (lambda v: f"{v/1e6:.3f} M")
    print(f"| {k} | {fmt(o)} | {fmt(n)} | {n/o:.3f} |")
PY
