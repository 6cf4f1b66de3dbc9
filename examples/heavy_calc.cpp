// The seed's first example: a CPU-bound function over a list of sizes, in a process pool.
//
//   Python:  with ProcessPoolExecutor(max_workers=4) as executor:
//                results = list(executor.map(cpu_task, numbers))
#include <procpool/process_pool.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

// A plain function: workers run the same binary, so it needs no registration.
double cpu_task(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // the seed's `if __name__ == "__main__":`, first thing in main

    const std::vector<long> numbers = {1'000'000, 2'000'000, 3'000'000, 4'000'000};

    const auto t0 = std::chrono::steady_clock::now();
    std::vector<double> serial;
    for (long n : numbers) serial.push_back(cpu_task(n));
    const auto t1 = std::chrono::steady_clock::now();

    std::vector<double> results;
    {
        procpool::process_pool_options opts;
        opts.workers = 4;
        procpool::process_pool pool(std::move(opts));
        results = pool.map(cpu_task, numbers);  // input order, like executor.map
    }  // like leaving the `with` block: waits for the workers and stops them
    const auto t2 = std::chrono::steady_clock::now();

    for (std::size_t i = 0; i < numbers.size(); ++i) {
        std::printf("cpu_task(%ld) = %.1f\n", numbers[i], results[i]);
    }
    const std::chrono::duration<double> ts = t1 - t0, tp = t2 - t1;
    std::printf("serial %.3f s, process pool %.3f s (pool start included)\n", ts.count(),
                tp.count());
    return results == serial ? 0 : 1;
}
