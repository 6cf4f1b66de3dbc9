// Streams in bounded memory: imap over 1M, 10M and 100M small inputs (int -> int) from a
// generator of unknown length, next to map over the same input, which materialises it.
// Prints, per case, the peak RSS (getrusage ru_maxrss) of the process before and after
// the run, the workers' peak RSS (VmHWM), the wall time and the rate.
//
//   bench_stream [--sizes 1000000,10000000,100000000] [--map-sizes 10000000]
//                [--thread-sizes 100000000] [--chunksize 10000] [--workers 2]
//
// Every case runs in a fresh process (this program started again with --case), because
// ru_maxrss is the peak of a process's whole life: in one process the first large case
// would hide every later one.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "procpool/process_pool.hpp"
#include "procpool/thread_pool.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

/// The task: as cheap as it gets, so that what is measured is the stream's own cost.
int next_value(int x) {
    return 2 * x + 1;
}

/// 0, 1, ..., n-1 as a generator would give them: an iterator and a sentinel, no size,
/// so neither imap nor map can know the length in advance.
class count_to {
public:
    class iterator {
    public:
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        explicit iterator(int i) : i_(i) {}
        int operator*() const { return i_; }
        iterator& operator++() {
            ++i_;
            return *this;
        }
        void operator++(int) { ++i_; }

    private:
        int i_ = 0;
    };
    struct sentinel {
        int n = 0;
        friend bool operator==(const iterator& it, const sentinel& s) { return *it == s.n; }
    };
    explicit count_to(int n) : n_(n) {}
    iterator begin() const { return iterator(0); }
    sentinel end() const { return sentinel{n_}; }

private:
    int n_;
};

long peak_rss_kb() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;  // kilobytes on Linux
}

/// The largest peak RSS (VmHWM) among the pool's workers, in kB.
long workers_peak_kb(const std::vector<int>& pids) {
    long most = 0;
    for (int pid : pids) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/status");
        std::string key;
        while (in >> key) {
            if (key == "VmHWM:") {
                long kb = 0;
                in >> kb;
                most = std::max(most, kb);
                break;
            }
            std::getline(in, key);
        }
    }
    return most;
}

/// One case, in this process: prints one line: kind, items, chunksize, seconds, peak RSS
/// with the pool made and before the run (kB), peak RSS at the end (kB), the workers'
/// peak RSS (kB; 0 for threads), the sum of the results.
int run_case(const std::string& kind, int n, std::size_t chunksize, int workers) {
    long long sum = 0;
    long before = 0;
    long worker_kb = 0;
    clock_type::time_point t0;
    double seconds = 0;  // the run alone, not the pool's start or shutdown
    if (kind == "imap-thread") {
        procpool::thread_pool pool({.workers = workers});
        before = peak_rss_kb();
        t0 = clock_type::now();
        for (int r : pool.imap([](int x) { return next_value(x); }, count_to(n),
                               {.chunksize = chunksize})) {
            sum += r;
        }
        seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    } else {
        procpool::process_pool pool({.workers = workers});
        before = peak_rss_kb();
        t0 = clock_type::now();
        if (kind == "imap-process") {
            for (int r : pool.imap(next_value, count_to(n), {.chunksize = chunksize})) sum += r;
        } else if (kind == "map-process") {
            for (int r : pool.map(next_value, count_to(n), chunksize)) sum += r;
        } else {
            std::fprintf(stderr, "unknown case %s\n", kind.c_str());
            return 2;
        }
        seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
        worker_kb = workers_peak_kb(pool.worker_pids());
    }
    std::printf("%s %d %zu %.3f %ld %ld %ld %lld\n", kind.c_str(), n, chunksize, seconds, before,
                peak_rss_kb(), worker_kb, sum);
    return 0;
}

std::vector<int> parse_list(const std::string& list) {
    std::vector<int> out;
    for (std::size_t p = 0; p < list.size();) {
        std::size_t q = list.find(',', p);
        if (q == std::string::npos) q = list.size();
        if (q > p) out.push_back(std::stoi(list.substr(p, q - p)));
        p = q + 1;
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first thing: starts the fork server while single-threaded

    std::vector<int> sizes = {1'000'000, 10'000'000, 100'000'000};
    std::vector<int> map_sizes = {10'000'000};
    std::vector<int> thread_sizes = {100'000'000};
    std::size_t chunksize = 10'000;
    int workers = 2;
    std::string one_case;
    int case_n = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "--sizes" && has_value) {
            sizes = parse_list(argv[++i]);
        } else if (a == "--map-sizes" && has_value) {
            map_sizes = parse_list(argv[++i]);
        } else if (a == "--thread-sizes" && has_value) {
            thread_sizes = parse_list(argv[++i]);
        } else if (a == "--chunksize" && has_value) {
            chunksize = std::stoul(argv[++i]);
        } else if (a == "--workers" && has_value) {
            workers = std::stoi(argv[++i]);
        } else if (a == "--case" && i + 2 < argc) {
            one_case = argv[++i];
            case_n = std::stoi(argv[++i]);
        } else {
            std::fprintf(stderr,
                         "usage: %s [--sizes N,N,...] [--map-sizes N,...] [--thread-sizes N,...]"
                         " [--chunksize K] [--workers W]\n",
                         argv[0]);
            return 2;
        }
    }
    if (!one_case.empty()) return run_case(one_case, case_n, chunksize, workers);

    struct job {
        const char* kind;
        int n;
    };
    std::vector<job> jobs;
    for (int n : sizes) jobs.push_back({"imap-process", n});
    for (int n : map_sizes) jobs.push_back({"map-process", n});
    for (int n : thread_sizes) jobs.push_back({"imap-thread", n});

    std::printf("| case | items | chunksize | wall time | items/s | peak RSS before | peak RSS after"
                " | workers' peak RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    std::fflush(stdout);
    int failures = 0;
    for (const job& j : jobs) {
        const std::string cmd = "/proc/" + std::to_string(getpid()) + "/exe --case " + j.kind +
                                " " + std::to_string(j.n) + " --chunksize " +
                                std::to_string(chunksize) + " --workers " + std::to_string(workers);
        FILE* p = popen(cmd.c_str(), "r");
        char kind[32] = {};
        int n = 0;
        std::size_t chunk = 0;
        double seconds = 0;
        long before = 0, after = 0, worker_kb = 0;
        long long sum = 0;
        const int got = p == nullptr ? 0
                                     : std::fscanf(p, "%31s %d %zu %lf %ld %ld %ld %lld", kind, &n,
                                                   &chunk, &seconds, &before, &after, &worker_kb,
                                                   &sum);
        const int status = p == nullptr ? -1 : pclose(p);
        // sum of 2i+1 for i < n is n²: a check that every result arrived once.
        const bool ok = got == 8 && status == 0 && sum == static_cast<long long>(n) * n;
        if (!ok) {
            ++failures;
            std::printf("| %s | %d | failed (status %d, %d fields, sum %lld) |\n", j.kind, j.n,
                        status, got, sum);
            continue;
        }
        std::printf("| %s | %d | %zu | %.2f s | %.1fM/s | %.1f MB | %.1f MB | %s |\n", kind, n,
                    chunk, seconds, n / seconds / 1e6, before / 1024.0, after / 1024.0,
                    worker_kb == 0 ? "(threads)"
                                   : (std::to_string(worker_kb / 1024) + " MB").c_str());
        std::fflush(stdout);
    }
    return failures == 0 ? 0 : 1;
}
