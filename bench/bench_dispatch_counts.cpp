// What the dispatch path costs the kernel per task, counted: the program runs N no-op
// tasks on a warm 2-worker process_pool in one of three shapes and does nothing else, so
// that a counter wrapped around it (bench/run_dispatch_counts.sh runs `perf stat` over the
// whole process tree for N tasks and for none, and divides the difference by N) says what
// the tasks cost:
//
//   bench_dispatch_counts seq   N    N times submit(noop).get(): sequential round trips
//   bench_dispatch_counts batch N    N submits, then N gets: workers busy, rings deep
//   bench_dispatch_counts map   N    map(twice, N ints): chunks instead of tasks
//
// Before the N tasks a warm-up of the same shape runs (see warm_up), and the same warm-up
// runs for N = 0, so it cancels out of the difference.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string_view>
#include <vector>

#include <procpool/process_pool.hpp>

namespace {

void noop() {}
int twice(int x) { return 2 * x; }

// Puts in use what the shape's measured part needs (rings, task records as deep as a burst
// of 100k, heap), so that the difference of two runs counts the tasks, not first touches.
void warm_up(procpool::process_pool& pool, std::string_view shape) {
    if (shape == "batch") {
        std::vector<procpool::future<void>> fs;
        fs.reserve(100'000);
        for (int i = 0; i < 100'000; ++i) fs.push_back(pool.submit(noop));
        for (auto& f : fs) f.get();
    } else if (shape == "seq") {
        for (int i = 0; i < 2000; ++i) pool.submit(noop).get();
    } else {
        std::vector<int> in(1'000'000, 1);
        for (int i = 0; i < 3; ++i) static_cast<void>(pool.map(twice, in));
    }
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first thing: starts the fork server while single-threaded
    if (argc != 3 || (std::strcmp(argv[1], "seq") != 0 && std::strcmp(argv[1], "batch") != 0 &&
                      std::strcmp(argv[1], "map") != 0)) {
        std::fprintf(stderr, "usage: %s seq|batch|map N\n", argv[0]);
        return 2;
    }
    const long n = std::strtol(argv[2], nullptr, 10);
    if (n < 0) {
        std::fprintf(stderr, "%s: N must be 0 or more\n", argv[0]);
        return 2;
    }
    procpool::process_pool pool({.workers = 2});
    warm_up(pool, argv[1]);
    long sum = 0;
    if (std::strcmp(argv[1], "seq") == 0) {
        for (long i = 0; i < n; ++i) pool.submit(noop).get();
    } else if (std::strcmp(argv[1], "batch") == 0) {
        std::vector<procpool::future<void>> fs;
        fs.reserve(static_cast<std::size_t>(n));
        for (long i = 0; i < n; ++i) fs.push_back(pool.submit(noop));
        for (auto& f : fs) f.get();
    } else {
        std::vector<int> in(static_cast<std::size_t>(n));
        std::iota(in.begin(), in.end(), 0);
        for (int r : pool.map(twice, in)) sum += r;
    }
    std::printf("%s %ld done (%ld)\n", argv[1], n, sum);
    return 0;
}
