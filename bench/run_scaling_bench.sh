#!/usr/bin/env bash
# Builds bench_scaling as one static binary (so it can be copied to a bigger machine
# that lacks the build dependencies) and runs it: process_pool and thread_pool with
# 1..N workers, N = the machine's hardware threads. Usage: bench/run_scaling_bench.sh [reps]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build-device
g++ -std=c++20 -O2 -DNDEBUG -static -pthread -Iinclude -Isrc \
    bench/bench_scaling.cpp src/*/*.cpp -o build-device/bench_scaling
./build-device/bench_scaling "${1:-5}"
