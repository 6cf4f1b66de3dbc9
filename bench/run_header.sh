# Sourced by the bench/run_*.sh scripts. print_run_header SRC [EXTRA] prints the line that
# opens a run: UTC date, CPUs, CPU model, load, and the commit measured (with a warning if
# src/, include/ or bench/ have uncommitted changes), then EXTRA. A source tree exported
# with `git archive` has no .git: say its commit in $COMMIT.
print_run_header() {
  local src=$1 extra=${2:-} commit
  commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "${COMMIT:-unknown}")
  if [ -n "$(git -C "$src" status --porcelain -- src include bench 2>/dev/null)" ]; then
    commit="$commit + uncommitted changes in src/, include/ or bench/"
  fi
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); nproc=$(nproc);" \
    "$(lscpu | sed -n 's/^Model name: *//p'); load: $(cut -d' ' -f1-3 /proc/loadavg);" \
    "commit $commit$extra"
}
