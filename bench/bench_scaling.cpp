// Scaling of process_pool and thread_pool with the worker count, on whatever cores the
// machine has: CPU-bound tasks (the seed's heavy_calc), no-op submit throughput, and map
// over tiny items. Prints one table; run by bench/run_scaling_bench.sh.
#include <procpool/procpool.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}
int noop(int x) { return x; }
int twice(int x) { return 2 * x; }

using clock_type = std::chrono::steady_clock;

template <class F>
double median_seconds(int reps, F&& f) {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
        const auto a = clock_type::now();
        f();
        t.push_back(std::chrono::duration<double>(clock_type::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// One row of the table: 64 heavy_calc tasks, `n_noop` no-op submits, map over `items`.
template <class Pool>
void report(Pool& pool, const char* name, int workers, int reps, double serial, int n_noop,
            const std::vector<int>& items) {
    const int n_tasks = 64;
    const double calc = median_seconds(reps, [&] {
        std::vector<procpool::future<double>> fs;
        for (int i = 0; i < n_tasks; ++i) fs.push_back(pool.submit(heavy_calc, 3'000'000L));
        for (auto& f : fs) f.get();
    });
    const double sub = median_seconds(reps, [&] {
        std::vector<procpool::future<int>> fs;
        fs.reserve(static_cast<std::size_t>(n_noop));
        for (int i = 0; i < n_noop; ++i) fs.push_back(pool.submit(noop, i));
        for (auto& f : fs) f.get();
    });
    const double mp = median_seconds(reps, [&] {
        auto out = pool.map(twice, items);
        if (out.back() != 2 * items.back()) std::abort();
    });
    std::printf("%-8d %-14s %12.3f %8.2fx %16.0f %16.0f\n", workers, name, calc, serial / calc,
                n_noop / sub, static_cast<double>(items.size()) / mp);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    const int reps = argc > 1 ? std::atoi(argv[1]) : 3;
    const unsigned cores = std::thread::hardware_concurrency();
    const long n_calc = 3'000'000;
    std::vector<int> worker_counts;
    for (int w : {1, 2, 4, 8, 16, 32}) {
        if (w <= static_cast<int>(cores)) worker_counts.push_back(w);
    }

    // Serial baseline for the CPU-bound case: 64 tasks of heavy_calc(3e6).
    const int n_tasks = 64;
    const double serial = median_seconds(reps, [&] {
        volatile double sink = 0;
        for (int i = 0; i < n_tasks; ++i) sink = sink + heavy_calc(n_calc);
    });
    std::printf("machine: %u hardware threads; serial 64 x heavy_calc(3e6): %.3f s\n", cores,
                serial);
    std::printf("%-8s %-14s %12s %9s %16s %16s\n", "workers", "pool", "heavy_calc s", "speedup",
                "submit tasks/s", "map items/s");

    std::vector<int> items(4'000'000);
    for (std::size_t i = 0; i < items.size(); ++i) items[i] = static_cast<int>(i);

    for (int w : worker_counts) {
        {
            procpool::process_pool pool({.workers = w});
            pool.submit(noop, 0).get();  // workers up
            report(pool, "process_pool", w, reps, serial, 200'000, items);
        }
        procpool::thread_pool pool({.workers = w});
        report(pool, "thread_pool", w, reps, serial, 1'000'000, items);
    }
    return 0;
}
