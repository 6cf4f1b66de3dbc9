// The seed's helper: run a function over a task list in worker processes and get every
// task's outcome back in input order. One failing task never costs the others.
//
//   Python:  tasks = [(50_00000,), (60_00000,), (70_00000,), (80_00000,)]
//            results = run_in_processes(heavy_calc, tasks, max_workers=4)
#include <procpool/run.hpp>

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <tuple>
#include <vector>

double heavy_calc(long n) {
    if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

int main(int argc, char** argv) {
    procpool::init(argc, argv);

    // Each task is a tuple of arguments (here one), unpacked into heavy_calc like *args.
    // The last one fails on purpose, to show what a failure looks like.
    std::vector<std::tuple<long>> tasks = {
        {5'000'000}, {6'000'000}, {7'000'000}, {8'000'000}, {-1}};

    auto results =
        procpool::run_in_processes(heavy_calc, tasks, {.workers = 4, .show_progress = true});

    int failed = 0;
    for (const auto& r : results) {
        if (r) {
            std::printf("task %zu: %.1f\n", r.index(), *r);
        } else {
            // e.g. "task 4 failed: std::invalid_argument: n must be >= 0, got -1"
            std::printf("%s\n", r.error().what());
            ++failed;
        }
    }
    return failed == 1 ? 0 : 1;
}
