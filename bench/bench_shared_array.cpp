// Handing a big array of doubles to a worker process that sums it: procpool::shared_array
// (first pass and repeated passes), the automatic std::vector path, and the references
// they are judged against (the same sum in the parent, a memcpy of the same size).
// The Python peers (ProcessPoolExecutor with a pickled numpy array, SharedMemory) are in
// bench/peers/shared_array_peers.py; bench/run_shared_array_bench.sh runs both and prints
// one table (docs/benchmarks.md, "shared_array").
//
//   bench_shared_array [--sizes 1,256,2048] [--reps 7] [--json FILE]
//
// Sizes are in MiB. Every pool has one worker, so that "first pass" is well defined: each
// repetition starts a fresh pool, warms it with no-op round trips, then times its first
// submit→get() of the array (the worker maps the memfd and faults its page tables in)
// and then repeated passes (the worker's cached mapping). All times are wall-clock
// (steady_clock) in milliseconds; the table shows medians and min..max over every pass.
// Each task also returns when it started and ended (CLOCK_MONOTONIC, the same clock in
// every process), so that a pass splits exactly into its time in the task (the sum) and
// the handoff around it (total - in task), without subtracting two noisy medians.
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <tuple>
#include <vector>

#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
    return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// The sum every variant runs, in the worker or in the parent: eight independent partial
// sums, so that it runs at memory bandwidth rather than at one add's latency per element
// (numpy's sum is similarly unrolled). Same code, same order: bit-identical results.
[[gnu::noinline]] double sum_kernel(const double* p, std::size_t n) {
    double a[8] = {};
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int k = 0; k < 8; ++k) a[k] += p[i + k];
    }
    double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; ++i) s += p[i];
    return s;
}

// ---- tasks (free functions: they run in the worker) --------------------------------------

// {sum, task start, task end}: the times in ns of steady_clock (CLOCK_MONOTONIC).
using timed_sum = std::array<double, 3>;

double now_ns() {
    return static_cast<double>(clock_type::now().time_since_epoch().count());
}

void noop() {}
timed_sum sum_shared(procpool::shared_span<const double> xs) {
    const double t0 = now_ns();
    const double s = sum_kernel(xs.data(), xs.size());
    return {s, t0, now_ns()};
}
// No data: busy for `ms` milliseconds, as long as a sum. Its handoff is what a task of that
// length costs to hand off whatever its argument (the parent sleeps in get() meanwhile).
timed_sum spin_for(double ms) {
    const double t0 = now_ns();
    double t = t0;
    while (t - t0 < ms * 1e6) t = now_ns();
    return {0, t0, t};
}
// The vector has been copied out of its shared block before the task starts.
timed_sum sum_vector(std::vector<double> v) {
    const double t0 = now_ns();
    const double s = sum_kernel(v.data(), v.size());
    return {s, t0, now_ns()};
}

// A big vector as a result: a copy of the array made in the task, and the time (ns) the
// task ended, so that the parent can time the way back alone.
std::tuple<std::vector<double>, double> vector_result(procpool::shared_span<const double> xs) {
    std::vector<double> v(xs.begin(), xs.end());
    return {std::move(v), now_ns()};
}

// ---- results -----------------------------------------------------------------------------

struct series {
    std::string label;
    std::string ref;  // the sum-only series this one's overhead is computed against
    std::vector<double> ms;
    std::vector<double> task_ms;  // per pass: the worker's time inside the task
    std::vector<double> in_ms;    // per pass: submit() to the task's start
};

struct results {
    // size in MiB (0: size-independent) -> method id -> samples
    std::map<int, std::map<std::string, series>> by_size;
    void add(int mib, const std::string& id, const std::string& label, const std::string& ref,
             double ms) {
        series& s = by_size[mib][id];
        s.label = label;
        s.ref = ref;
        s.ms.push_back(ms);
    }
    // One submit→get() pass of a task returning timed_sum, started at t0.
    void add_pass(int mib, const std::string& id, const std::string& label, const std::string& ref,
                  clock_type::time_point t0, const timed_sum& r) {
        const double total = ms_since(t0);
        add(mib, id, label, ref, total);
        series& s = by_size[mib][id];
        s.task_ms.push_back((r[2] - r[1]) / 1e6);
        s.in_ms.push_back((r[1] - static_cast<double>(t0.time_since_epoch().count())) / 1e6);
    }
};

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void check(double got, double want, const char* what) {
    if (got != want) {
        std::fprintf(stderr, "bench_shared_array: %s returned %.17g, expected %.17g\n", what, got,
                     want);
        std::exit(1);
    }
}

long mem_available_mib() {
    std::FILE* f = std::fopen("/proc/meminfo", "r");
    if (f == nullptr) return -1;
    char line[256];
    long kb = -1;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::sscanf(line, "MemAvailable: %ld kB", &kb) == 1) break;
    }
    std::fclose(f);
    return kb < 0 ? -1 : kb / 1024;
}

// Repeated passes per repetition: enough samples for small sizes, few for big ones.
int passes_for(int mib) {
    return mib <= 4 ? 40 : mib <= 64 ? 10 : 3;
}

// The floor of handing `vec` to another process by copying: a bare child process (no pool)
// spins on a shared word and copies each 128 KiB piece out of a shared block as the parent
// copies it in, as a pool's worker does (both cores copying at once). One pass: from the
// parent's first byte to the child's last; the child's buffer is touched beforehand.
void floor_two_processes(int mib, int passes, const std::vector<double>& vec, results& out) {
    const std::size_t bytes = vec.size() * sizeof(double);
    constexpr std::size_t piece = 128 * 1024;
    const int fd = memfd_create("floor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes + 4096)) != 0) return;
    void* m = mmap(nullptr, bytes + 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return;
    auto* blk = static_cast<char*>(m);
    std::memset(blk, 0, bytes + 4096);
    // [0]: pass to run (-1: exit), [8]: bytes written, [16]: last pass the child finished.
    auto* ctl = reinterpret_cast<std::atomic<long>*>(blk + bytes);
    const pid_t pid = fork();
    if (pid < 0) {
        munmap(m, bytes + 4096);
        return;
    }
    if (pid == 0) {
        std::vector<char> dst(bytes, 1);
        for (long pass = 1;; ++pass) {
            long go;
            while ((go = ctl[0].load(std::memory_order_acquire)) < pass) {
                if (go < 0) _exit(0);
            }
            std::size_t done = 0;
            while (done < bytes) {
                const auto ready = static_cast<std::size_t>(ctl[8].load(std::memory_order_acquire));
                if (ready > done) {
                    std::memcpy(dst.data() + done, blk + done, ready - done);
                    done = ready;
                }
            }
            ctl[16].store(pass, std::memory_order_release);
        }
    }
    const auto* src = reinterpret_cast<const char*>(vec.data());
    for (long pass = 1; pass <= passes; ++pass) {
        ctl[8].store(0, std::memory_order_relaxed);
        const auto t0 = clock_type::now();
        ctl[0].store(pass, std::memory_order_release);
        for (std::size_t off = 0; off < bytes; off += piece) {
            const std::size_t n = std::min(piece, bytes - off);
            std::memcpy(blk + off, src + off, n);
            ctl[8].store(static_cast<long>(off + n), std::memory_order_release);
        }
        while (ctl[16].load(std::memory_order_acquire) < pass) {
        }
        out.add(mib, "floor_two_processes",
                "floor: a bare child copies out as the parent copies in (reference)", "",
                ms_since(t0));
    }
    ctl[0].store(-1, std::memory_order_release);
    waitpid(pid, nullptr, 0);
    munmap(m, bytes + 4096);
}

void bench_size(int mib, int reps, results& out) {
    const std::size_t bytes = static_cast<std::size_t>(mib) << 20;
    const std::size_t n = bytes / sizeof(double);
    const int passes = passes_for(mib);
    std::fprintf(stderr,
                 "# %d MiB: %d repetitions, %d repeated passes each (MemAvailable %ld MiB)\n", mib,
                 reps, passes, mem_available_mib());

    // Allocated and filled once in the parent.
    procpool::shared_array<double> sa(n);
    for (std::size_t i = 0; i < n; ++i) sa[i] = static_cast<double>(i % 1000) * 0.001;
    const std::vector<double> vec(sa.begin(), sa.end());
    const double want = sum_kernel(sa.data(), n);

    for (int rep = 0; rep < reps; ++rep) {
        {
            procpool::process_pool pool({.workers = 1});
            for (int i = 0; i < 20; ++i) pool.submit(noop).get();
            for (int i = 0; i < 20; ++i) {
                auto t0 = clock_type::now();
                pool.submit(noop).get();
                out.add(0, "noop", "procpool no-op round trip (reference)", "", ms_since(t0));
            }

            auto t0 = clock_type::now();
            timed_sum r = pool.submit(sum_shared, sa).get();
            out.add_pass(mib, "shared_first", "procpool shared_array, first pass",
                         "sum_parent_shared", t0, r);
            check(r[0], want, "sum_shared (first pass)");
            for (int i = 0; i < passes; ++i) {
                t0 = clock_type::now();
                r = pool.submit(sum_shared, sa).get();
                out.add_pass(mib, "shared_repeat", "procpool shared_array, repeated",
                             "sum_parent_shared", t0, r);
                check(r[0], want, "sum_shared");
            }

            // Control: a task without data, as long as the repeated sums.
            const double sum_ms = median(out.by_size[mib]["shared_repeat"].task_ms);
            for (int i = 0; i < passes; ++i) {
                t0 = clock_type::now();
                r = pool.submit(spin_for, sum_ms).get();
                out.add_pass(mib, "spin_control", "procpool no-data task as long as the sum", "",
                             t0, r);
            }

            // The automatic path: submit(f, vec) encodes the lvalue where it is (no copy in
            // the caller's process); the vector travels through its own shared block. The
            // lvalue passes run before the moved-in ones: at a new size the first pass pays
            // for the block it makes.
            for (int i = 0; i < std::max(1, passes / 2); ++i) {
                t0 = clock_type::now();
                r = pool.submit(sum_vector, vec).get();
                out.add_pass(mib, "vector_lvalue", "procpool std::vector, passed as lvalue",
                             "sum_parent_vector", t0, r);
                check(r[0], want, "sum_vector");
            }
            for (int i = 0; i < std::max(1, passes / 2); ++i) {
                std::vector<double> tmp(vec);  // not timed: the caller's own copy
                t0 = clock_type::now();
                r = pool.submit(sum_vector, std::move(tmp)).get();
                out.add_pass(mib, "vector_moved", "procpool std::vector, std::move'd in",
                             "sum_parent_vector", t0, r);
                check(r[0], want, "sum_vector (moved)");
            }
            // The way back: from the task's end to get() returning the vector here.
            for (int i = 0; i < std::max(1, passes / 2); ++i) {
                auto [v, end_ns] = pool.submit(vector_result, sa).get();
                out.add(mib, "vector_result", "procpool std::vector result, task end to get()",
                        "", (now_ns() - end_ns) / 1e6);
                check(sum_kernel(v.data(), v.size()), want, "vector_result");
            }
        }

        // References in the parent, on the same data (each array summed `passes` times
        // in a row, as the worker does, so that a 1 MiB array is as cache-hot here).
        for (int i = 0; i < passes; ++i) {
            auto t0 = clock_type::now();
            const double r = sum_kernel(sa.data(), n);
            out.add(mib, "sum_parent_shared", "C++ sum in the parent (shared_array memory)", "",
                    ms_since(t0));
            check(r, want, "sum in the parent");
        }
        for (int i = 0; i < passes; ++i) {
            auto t0 = clock_type::now();
            const double r = sum_kernel(vec.data(), n);
            out.add(mib, "sum_parent_vector", "C++ sum in the parent (std::vector memory)", "",
                    ms_since(t0));
            check(r, want, "sum in the parent");
        }
        {
            // memcpy into memory already touched (page tables populated): the copy alone.
            auto* dst = static_cast<double*>(std::malloc(bytes));
            if (dst == nullptr) {
                std::fprintf(stderr, "bench_shared_array: out of memory\n");
                std::exit(1);
            }
            std::memset(dst, 1, bytes);
            for (int i = 0; i < passes; ++i) {
                auto t0 = clock_type::now();
                std::memcpy(dst, vec.data(), bytes);
                out.add(mib, "memcpy_touched", "memcpy into touched memory (reference)", "",
                        ms_since(t0));
            }
            check(sum_kernel(dst, n), want, "memcpy");
            std::free(dst);
        }
        floor_two_processes(mib, passes, vec, out);
        for (int i = 0; i < std::max(1, passes / 2); ++i) {
            // A copy into new memory: allocation, page faults and memcpy, what a copy
            // costs when its destination is fresh (as both copies of the vector path are).
            auto t0 = clock_type::now();
            std::vector<double> c(vec);
            out.add(mib, "copy_new", "std::vector copy into new memory (reference)", "",
                    ms_since(t0));
            check(sum_kernel(c.data(), n), want, "vector copy");
        }
    }
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        o += c;
    }
    return o;
}

void write_list(std::ofstream& f, const std::vector<double>& v) {
    for (std::size_t i = 0; i < v.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.6f", v[i]);
        f << (i ? ", " : "") << buf;
    }
}

void write_json(const results& res, const std::string& path) {
    std::ofstream f(path);
    f << "{\"results\": [\n";
    bool first = true;
    for (const auto& [mib, methods] : res.by_size) {
        for (const auto& [id, s] : methods) {
            if (!first) f << ",\n";
            first = false;
            f << "  {\"size_mib\": " << mib << ", \"id\": \"cpp_" << id << "\", \"label\": \""
              << json_escape(s.label) << "\", \"ref\": \"" << (s.ref.empty() ? "" : "cpp_" + s.ref)
              << "\", \"ms\": [";
            write_list(f, s.ms);
            f << "]";
            if (!s.task_ms.empty()) {
                f << ", \"task_ms\": [";
                write_list(f, s.task_ms);
                f << "], \"in_ms\": [";
                write_list(f, s.in_ms);
                f << "]";
            }
            f << "}";
        }
    }
    f << "\n]}\n";
}

// Median over passes of total - in task.
double median_handoff(const series& s) {
    std::vector<double> d;
    for (std::size_t i = 0; i < s.task_ms.size(); ++i) d.push_back(s.ms[i] - s.task_ms[i]);
    return median(d);
}

void print_table(const results& res) {
    std::printf(
        "| size | method | total ms (median) | min..max | n | sum-only ms | overhead ms | "
        "in task ms | handoff ms |\n");
    std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const auto& [mib, methods] : res.by_size) {
        const std::string size = mib ? std::to_string(mib) + " MiB" : "-";
        for (const auto& [id, s] : methods) {
            auto [lo, hi] = std::minmax_element(s.ms.begin(), s.ms.end());
            const double med = median(s.ms);
            std::printf("| %s | %s | %.3f | %.3f..%.3f | %zu |", size.c_str(), s.label.c_str(), med,
                        *lo, *hi, s.ms.size());
            auto ref = methods.find(s.ref);
            if (ref != methods.end()) {
                const double sum = median(ref->second.ms);
                std::printf(" %.3f | %.3f |", sum, med - sum);
            } else {
                std::printf(" | |");
            }
            if (!s.task_ms.empty()) {
                std::printf(" %.3f | %.3f |\n", median(s.task_ms), median_handoff(s));
            } else {
                std::printf(" | |\n");
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first thing: starts the fork server while single-threaded

    std::vector<int> sizes = {1, 256, 2048};
    int reps = 7;
    std::string json;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "--sizes" && has_value) {
            sizes.clear();
            std::string list = argv[++i];
            for (std::size_t p = 0; p <= list.size();) {
                std::size_t q = list.find(',', p);
                if (q == std::string::npos) q = list.size();
                sizes.push_back(std::stoi(list.substr(p, q - p)));
                p = q + 1;
            }
        } else if (a == "--reps" && has_value) {
            reps = std::stoi(argv[++i]);
        } else if (a == "--json" && has_value) {
            json = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--sizes MiB,MiB,...] [--reps N] [--json FILE]\n",
                         argv[0]);
            return 2;
        }
    }

    results res;
    for (int mib : sizes) bench_size(mib, reps, res);
    if (!json.empty()) write_json(res, json);
    print_table(res);
    return 0;
}
