#!/usr/bin/env bash
# The main job: installs the dependencies, builds procpool (Release) and runs procpool-demo.
# Arguments go to the demo (try --help). Falls back to the thread_pool example when the
# demo is not part of this checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh

# Same directory and options as scripts/test.sh's release configuration, so running one
# after the other rebuilds nothing.
build=build/release
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release \
    -DPROCPOOL_WERROR=ON -DPROCPOOL_BUILD_TESTS=ON -DPROCPOOL_BUILD_EXAMPLES=ON >/dev/null

if ninja -C "$build" -t query procpool-demo >/dev/null 2>&1; then
    target=procpool-demo
    exe_name=procpool-demo
else
    echo "demo.sh: no procpool-demo target in this checkout; running the thread_pool example" >&2
    target=example_thread_pool_basics
    exe_name=thread_pool_basics
    set --  # the example takes no arguments
fi
cmake --build "$build" -j "$(nproc)" --target "$target"
exe=$(find "$build" -type f -perm -u+x -name "$exe_name" -print -quit)
exec "$exe" "$@"
