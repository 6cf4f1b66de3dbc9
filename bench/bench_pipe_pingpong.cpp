// The floor for a process round trip through the kernel: a parent writes one byte into a
// pipe, a forked child reads it and echoes it back through a second pipe; the parent
// times each round trip. A process pool's submit -> get of a no-op is compared with it
// (bench/run_process_pool_bench.sh, docs/benchmarks.md "process_pool").
//
//   bench_pipe_pingpong [--pinned] [--rounds N]
//
// --pinned puts both processes on CPU 0 (sched_setaffinity before the fork, inherited by
// the child): every round trip is then two context switches on one core, with no
// cross-core wake-up. Without it the scheduler places them freely. Prints one JSON object
// with the median and 99th percentile in microseconds.
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
    bool pinned = false;
    int rounds = 20'000;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--pinned") == 0) {
            pinned = true;
        } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--pinned] [--rounds N]\n", argv[0]);
            return 2;
        }
    }
    if (pinned) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) {
            std::perror("sched_setaffinity");
            return 1;
        }
    }
    int to_child[2], to_parent[2];
    if (pipe(to_child) != 0 || pipe(to_parent) != 0) {
        std::perror("pipe");
        return 1;
    }
    const pid_t pid = fork();
    if (pid < 0) {
        std::perror("fork");
        return 1;
    }
    if (pid == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        char b = 0;
        while (read(to_child[0], &b, 1) == 1) {
            if (write(to_parent[1], &b, 1) != 1) _exit(1);
        }
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    const int warmup = rounds / 20;
    std::vector<double> us;
    us.reserve(static_cast<std::size_t>(rounds));
    for (int i = 0; i < warmup + rounds; ++i) {
        char b = 'x';
        const auto t0 = std::chrono::steady_clock::now();
        if (write(to_child[1], &b, 1) != 1 || read(to_parent[0], &b, 1) != 1) {
            std::perror("ping-pong");
            return 1;
        }
        const auto t1 = std::chrono::steady_clock::now();
        if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    close(to_child[1]);
    waitpid(pid, nullptr, 0);
    std::printf("{\"pinned\": %s, \"rounds\": %d, \"p50_us\": %.3f, \"p99_us\": %.3f}\n",
                pinned ? "true" : "false", rounds, percentile(us, 0.5), percentile(us, 0.99));
    return 0;
}
