// I/O-bound work belongs in threads: reading files, calling services, waiting. Threads
// share memory, start cheaply, and run any callable, capturing lambdas included.
//
//   Python:  results = run_in_threads(read_and_count, paths, max_workers=8)
#include <procpool/run.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;

// Counts the lines of a file; a slow disk or network share would make this wait.
long count_lines(const fs::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path.string());
    long lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    return lines;
}

int main() {
    const fs::path dir =
        fs::temp_directory_path() / ("procpool-io-example-" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::vector<fs::path> paths;
    for (int i = 0; i < 8; ++i) {
        paths.push_back(dir / ("log_" + std::to_string(i) + ".txt"));
        std::ofstream(paths.back()) << std::string(static_cast<std::size_t>(100 * (i + 1)), '\n');
    }
    paths.push_back(dir / "missing.txt");  // fails, and only this task fails

    auto counts = procpool::run_in_threads(count_lines, paths, {.workers = 8});
    for (const auto& c : counts) {
        if (c) {
            std::printf("%s: %ld lines\n", paths[c.index()].filename().c_str(), *c);
        } else {
            std::printf("%s\n", c.error().what());
        }
    }

    // Waiting is what threads do best: 16 simulated requests of 100 ms each, 8 at a time,
    // take about 0.2 s instead of 1.6 s. A capturing lambda is fine in threads. A request
    // that hangs would be given up after a minute: a generous timeout, so that a slow or
    // busy machine never fails a request that is merely late.
    const auto latency = std::chrono::milliseconds(100);
    const auto t0 = std::chrono::steady_clock::now();
    auto replies = procpool::run_in_threads(
        [latency](int id) {
            std::this_thread::sleep_for(latency);  // stands in for a network round trip
            return "reply " + std::to_string(id);
        },
        std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {.workers = 8, .timeout = std::chrono::minutes(1)});
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
    std::printf("%zu replies in %.2f s (%s ... %s)\n", replies.size(), took.count(),
                replies.front()->c_str(), replies.back()->c_str());

    fs::remove_all(dir);
    return counts.back() ? 1 : 0;  // the missing file must have failed
}
