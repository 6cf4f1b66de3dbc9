// Thread pool basics: submit, map, as_completed.
#include <procpool/procpool.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

int main() {
    procpool::thread_pool pool({.workers = 4});

    auto f = pool.submit(heavy_calc, 1'000'000L);
    std::printf("heavy_calc(1e6) = %.1f\n", f.get());

    std::vector<long> sizes = {100'000, 200'000, 300'000, 400'000};
    auto results = pool.map(heavy_calc, sizes);
    for (std::size_t i = 0; i < sizes.size(); ++i) {
        std::printf("heavy_calc(%ld) = %.1f\n", sizes[i], results[i]);
    }

    std::vector<procpool::future<int>> futures;
    for (int ms : {30, 10, 20}) {
        futures.push_back(pool.submit([ms] {
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            return ms;
        }));
    }
    for (auto& done : procpool::as_completed(futures)) std::printf("slept %d ms\n", done.get());
    return 0;
}
