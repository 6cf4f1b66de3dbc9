// A new pool's first moments: construction, construction to first result, its first three
// maps of 1M ints (the first on fresh rings and a fresh task-time estimate, the later ones
// warm), and shutdown. Prints the medians over many pools, in microseconds, on one line:
//
//   bench_first_use [--pools N]        (default 25)
//
// The library is whatever it links: to compare two commits in one sitting, build this file
// against each commit's libprocpool.a and run the two binaries in alternation (the command
// is in docs/benchmarks.md, "Performance: first use").
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include <procpool/process_pool.hpp>

namespace {

using clk = std::chrono::steady_clock;

int twice(int x) { return x * 2; }
void noop() {}

double us_since(clk::time_point t0) {
    return std::chrono::duration<double, std::micro>(clk::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first thing: starts the fork server while single-threaded
    int pools = 25;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--pools") == 0 && i + 1 < argc) {
            pools = std::max(1, std::atoi(argv[++i]));
        } else {
            std::fprintf(stderr, "usage: %s [--pools N]\n", argv[0]);
            return 2;
        }
    }
    std::vector<int> in(1'000'000);
    std::iota(in.begin(), in.end(), 0);
    // This process's own heap warmed first: what is measured is the pool's first use.
    {
        procpool::process_pool pool({.workers = 2});
        for (int k = 0; k < 3; ++k) pool.map(twice, in);
    }
    std::vector<double> ctor, first, map0, map1, map2, down;
    for (int p = 0; p < pools; ++p) {
        auto t0 = clk::now();
        auto pool = std::make_unique<procpool::process_pool>(
            procpool::process_pool_options{.workers = 2});
        ctor.push_back(us_since(t0));
        pool->submit(noop).get();
        first.push_back(us_since(t0));
        for (auto* v : {&map0, &map1, &map2}) {
            t0 = clk::now();
            auto out = pool->map(twice, in);
            v->push_back(us_since(t0));
            if (out.size() != in.size() || out.back() != 2 * in.back()) {
                std::fprintf(stderr, "bench_first_use: wrong map result\n");
                return 1;
            }
        }
        t0 = clk::now();
        pool.reset();
        down.push_back(us_since(t0));
    }
    std::printf(
        "{\"pools\": %d, \"ctor_us\": %.0f, \"first_result_us\": %.0f, \"map_first_us\": %.0f, "
        "\"map_second_us\": %.0f, \"map_third_us\": %.0f, \"shutdown_us\": %.0f}\n",
        pools, median(ctor), median(first), median(map0), median(map1), median(map2),
        median(down));
    return 0;
}
