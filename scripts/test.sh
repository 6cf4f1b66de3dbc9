#!/usr/bin/env bash
# The full check, as CI runs it (.ci/run) and the README documents it:
#   1. release  g++ Release, -Werror, with benchmarks and examples
#   2. asan     g++ ASan + UBSan
#   3. tsan     g++ TSan
#   4. clang    clang++ Release, -Werror, with the wire decoder's fuzzer (60 s under ctest)
# Each configuration is configured, built and tested with ctest under build/<name>/.
# Every configuration runs even if an earlier one failed; the summary at the end says
# which failed, and the exit status is non-zero if any did.
#
# Environment: PROCPOOL_JOBS (parallel jobs, default: number of CPUs),
#              PROCPOOL_TEST_TIMEOUT (seconds per test, default 300),
#              PROCPOOL_CONFIGS (space-separated subset, e.g. "release tsan").
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

if ! bash scripts/install-deps.sh; then
    echo "test.sh: installing the build dependencies failed (see above)" >&2
    exit 1
fi

jobs=${PROCPOOL_JOBS:-$(nproc)}
test_timeout=${PROCPOOL_TEST_TIMEOUT:-300}
configs=${PROCPOOL_CONFIGS:-"release asan tsan clang"}

# gcc 12's TSan runtime maps its shadow memory at fixed addresses and aborts with
# "unexpected memory mapping" when ASLR (vm.mmap_rnd_bits > 28, common on kernels >= 6.6)
# puts a library there. Running without address randomization avoids it; setarch's
# personality is inherited by everything ctest starts. Where a sandbox forbids changing
# the personality, run as is and let the check below report the real cause.
tsan_prefix=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
    tsan_prefix=(setarch "$(uname -m)" -R)
fi

# Sanitizer reports carry stacks. TSan checks only code built with it: libraries built
# without it (libvips, zlib, libpng in the demo and examples) synchronise their threads in
# ways TSan cannot see, so their own memory accesses would show up as races and, reported
# by the hundred, slow those tests past their timeouts.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# tests/tsan.supp: reports that come from libstdc++'s uninstrumented atomics (see there).
export TSAN_OPTIONS=${TSAN_OPTIONS:-ignore_noninstrumented_modules=1:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp}

declare -a summary=()
declare -a failed_logs=()
failures=0

# show_failures DIR: the names of DIR's failed tests and the end of each one's output, so
# that the last lines of a long log say what failed and why.
show_failures() {
    local dir=$1 name
    echo
    echo "==== failed in $dir"
    sed -n '/^The following tests FAILED:/,$p' "$dir/ctest.log" | grep -E '^[[:space:]]+[0-9]+ - ' || true
    local log=$dir/Testing/Temporary/LastTest.log
    [ -f "$log" ] || return 0
    sed -n '/^The following tests FAILED:/,$p' "$dir/ctest.log" |
        sed -nE 's/^[[:space:]]+[0-9]+ - ([^ ]+) .*/\1/p' | while read -r name; do
        local out
        out=$(awk -v t="$name" '
            /^[0-9]+\/[0-9]+ Testing: / { on = ($3 == t) }
            on { print }' "$log")
        echo "---- $name: its failure lines"
        grep -E 'Failure|FAILED|ERROR|Expected|Which is|Value of|Actual|Timeout|SUMMARY|    #[0-5] ' <<<"$out" | head -40
        echo "---- $name: the end of its output"
        tail -25 <<<"$out"
    done
}

# run_config NAME CXX [cmake args...]: configure, build and test one configuration.
run_config() {
    local name=$1 cxx=$2
    shift 2
    local dir=build/$name t0=$SECONDS prefix=()
    [ "$name" = tsan ] && prefix=("${tsan_prefix[@]}")
    echo
    echo "==== $name: configure ($cxx $*)"
    local result
    # Tests and examples named explicitly: a build directory configured by a benchmark
    # script (which turns them off) must not leave the suite empty.
    if ! cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" \
        -DPROCPOOL_BUILD_TESTS=ON -DPROCPOOL_BUILD_EXAMPLES=ON \
        -DPROCPOOL_TEST_TIMEOUT="$test_timeout" "$@"; then
        result="FAILED (configure)"
    else
        echo "==== $name: build"
        # The build runs test binaries too (gtest test discovery), so TSan needs the prefix here.
        if ! "${prefix[@]}" cmake --build "$dir" -j "$jobs"; then
            result="FAILED (build)"
        else
            echo "==== $name: test"
            "${prefix[@]}" ctest --test-dir "$dir" --output-on-failure --no-tests=error \
                --timeout "$test_timeout" -j "$jobs" 2>&1 | tee "$dir/ctest.log"
            local rc=${PIPESTATUS[0]}
            local counts
            counts=$(grep -E '^[0-9]+% tests passed' "$dir/ctest.log" | tail -1)
            if [ "$rc" -eq 0 ]; then
                result="ok      ${counts:-}"
            else
                result="FAILED  ${counts:-ctest exit status $rc}"
                if grep -q 'unexpected memory mapping' "$dir/ctest.log"; then
                    result+=" (TSan could not map its shadow memory: run 'sysctl vm.mmap_rnd_bits=28' or allow setarch -R)"
                fi
                failed_logs+=("$dir")
            fi
        fi
    fi
    [[ $result == ok* ]] || failures=$((failures + 1))
    summary+=("$(printf '%-8s %-4ss  %s' "$name" "$((SECONDS - t0))" "$result")")
}

for config in $configs; do
    case $config in
        release) run_config release g++ -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_WERROR=ON ;;
        asan) run_config asan g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROCPOOL_SANITIZE=address \
                  -DPROCPOOL_BUILD_BENCH=OFF ;;
        tsan) run_config tsan g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPROCPOOL_SANITIZE=thread \
                  -DPROCPOOL_BUILD_BENCH=OFF ;;
        clang) run_config clang clang++ -DCMAKE_BUILD_TYPE=Release -DPROCPOOL_WERROR=ON \
                   -DPROCPOOL_FUZZ=ON ;;
        *)
            echo "test.sh: unknown configuration '$config' (known: release asan tsan clang)" >&2
            exit 2
            ;;
    esac
done

for dir in "${failed_logs[@]}"; do show_failures "$dir"; done

echo
echo "==== summary ($(nproc) CPUs, $((SECONDS - started)) s in all)"
for line in "${summary[@]}"; do echo "  $line"; done
if [ "$failures" -ne 0 ]; then
    echo "test.sh: $failures configuration(s) failed" >&2
    exit 1
fi
echo "test.sh: all configurations passed"
