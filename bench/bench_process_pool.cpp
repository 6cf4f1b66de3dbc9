// process_pool next to its C++ peers (Boost.Asio thread_pool + std::promise, procpool's own
// thread_pool, plain threads, a serial loop), in one binary and one run. The Python peers
// (ProcessPoolExecutor, pebble, joblib/loky) are in bench/peers/python_peers.py and the
// raw pipe ping-pong in bench/bench_pipe_pingpong.cpp; bench/run_process_pool_bench.sh
// runs all three and prints one table (docs/benchmarks.md, "process_pool").
//
// A process-pool program must call procpool::init first thing in main, so this file has
// its own main: init, then Google Benchmark.
//
// Benchmarks that report a distribution (latency, start-up, crash recovery) run one
// iteration that loops itself and report p50/p99 as counters (microseconds); the others
// are timed by Google Benchmark and report a rate (items/s).
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <procpool/process_pool.hpp>
#include <procpool/trace.hpp>
#include <procpool/thread_pool.hpp>

namespace {

using clk = std::chrono::steady_clock;

constexpr int kWorkers = 2;
constexpr int kLatencyRounds = 20'000;
constexpr int kLatencyWarmup = 1'000;
constexpr std::int64_t kSubmitTasks = 100'000;
constexpr std::size_t kMapItems = 1'000'000;
constexpr int kStartupRounds = 50;
constexpr int kCrashRounds = 30;
const std::vector<long> kHeavySizes = {5'000'000, 6'000'000, 7'000'000, 8'000'000};
// Each of the two long tasks of the "busy" case: ~0.15 s of sqrt on this machine.
constexpr long kLongTask = 100'000'000;

// ---- tasks: free functions, they run in worker processes ------------------------------

void noop() {}
int twice(int x) { return x * 2; }
int whoami() { return static_cast<int>(getpid()); }
int kill_myself(int) {
    raise(SIGKILL);
    return 0;
}
// The seed's task; not inlined into the serial loop below.
[[gnu::noinline]] double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

// ---- helpers -----------------------------------------------------------------------

double us_since(clk::time_point t0) {
    return std::chrono::duration<double, std::micro>(clk::now() - t0).count();
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

void report_distribution(benchmark::State& st, const std::string& prefix,
                         const std::vector<double>& us) {
    st.counters[prefix + "p50_us"] = percentile(us, 0.50);
    st.counters[prefix + "p99_us"] = percentile(us, 0.99);
}

void set_rate(benchmark::State& st, std::int64_t per_iteration) {
    st.SetItemsProcessed(st.iterations() * per_iteration);
}

procpool::process_pool_options pool_opts(
    procpool::start_method m = procpool::start_method::automatic) {
    procpool::process_pool_options o;
    o.workers = kWorkers;
    o.start = m;
    return o;
}

void warm_up(procpool::process_pool& pool) {
    std::vector<procpool::future<void>> fs;
    for (int i = 0; i < 200; ++i) fs.push_back(pool.submit(noop));
    for (auto& f : fs) f.get();
}

// ---------------------------------------------------------------------------------------
// 1. One no-op round trip, sequential: submit -> get, per-iteration latency.

void latency_procpool(benchmark::State& st) {
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    std::vector<double> us(kLatencyRounds);
    for (auto _ : st) {
        for (int i = 0; i < kLatencyWarmup; ++i) pool.submit(noop).get();
        for (int i = 0; i < kLatencyRounds; ++i) {
            const auto t0 = clk::now();
            pool.submit(noop).get();
            us[static_cast<std::size_t>(i)] = us_since(t0);
        }
    }
    report_distribution(st, "", us);
}

// ---------------------------------------------------------------------------------------
// 2. Submit 100k no-op tasks, a future each, then get each.

// `trace`: a recorder to attach (emptied between iterations, with the timer paused).
void submit_get(benchmark::State& st, const std::shared_ptr<procpool::trace_recorder>& trace) {
    procpool::process_pool_options o = pool_opts();
    o.trace = trace;
    procpool::process_pool pool(std::move(o));
    warm_up(pool);
    std::vector<procpool::future<void>> fs;
    fs.reserve(kSubmitTasks);
    for (auto _ : st) {
        for (std::int64_t i = 0; i < kSubmitTasks; ++i) fs.push_back(pool.submit(noop));
        for (auto& f : fs) f.get();
        fs.clear();
        if (trace) {
            st.PauseTiming();
            trace->clear();
            st.ResumeTiming();
        }
    }
    set_rate(st, kSubmitTasks);
}

void submit_get_procpool(benchmark::State& st) { submit_get(st, nullptr); }

// 2b. The same with a trace recorder attached: what recording every task costs.
void submit_get_procpool_traced(benchmark::State& st) {
    submit_get(st, std::make_shared<procpool::trace_recorder>());
}

void submit_get_asio_promise(benchmark::State& st) {
    boost::asio::thread_pool pool(kWorkers);
    std::vector<std::future<void>> fs;
    fs.reserve(kSubmitTasks);
    for (auto _ : st) {
        for (std::int64_t i = 0; i < kSubmitTasks; ++i) {
            std::promise<void> p;
            fs.push_back(p.get_future());
            boost::asio::post(pool, [p = std::move(p)]() mutable {
                noop();
                p.set_value();
            });
        }
        for (auto& f : fs) f.get();
        fs.clear();
    }
    pool.join();
    set_rate(st, kSubmitTasks);
}

// ---------------------------------------------------------------------------------------
// 3. map x*2 over 1M ints (automatic chunk size in both procpool pools).

std::vector<int> map_input() {
    std::vector<int> v(kMapItems);
    std::iota(v.begin(), v.end(), 0);
    return v;
}

void map_procpool_process(benchmark::State& st) {
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    const auto in = map_input();
    for (auto _ : st) {
        auto out = pool.map(twice, in);
        benchmark::DoNotOptimize(out.data());
        if (out.size() != in.size() || out.back() != 2 * in.back()) st.SkipWithError("bad map");
    }
    set_rate(st, kMapItems);
}

// 3b. The first map of a new pool: each iteration builds a pool and waits for one no-op
//     round trip (its workers are up), then times its first map only.
void map_procpool_process_first_call(benchmark::State& st) {
    const auto in = map_input();
    for (auto _ : st) {
        st.PauseTiming();
        auto pool = std::make_unique<procpool::process_pool>(pool_opts());
        pool->submit(noop).get();
        st.ResumeTiming();
        auto out = pool->map(twice, in);
        benchmark::DoNotOptimize(out.data());
        st.PauseTiming();
        if (out.size() != in.size() || out.back() != 2 * in.back()) st.SkipWithError("bad map");
        pool.reset();
        st.ResumeTiming();
    }
    set_rate(st, kMapItems);
}

void map_procpool_thread(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    const auto in = map_input();
    for (auto _ : st) {
        auto out = pool.map(twice, in);
        benchmark::DoNotOptimize(out.data());
    }
    set_rate(st, kMapItems);
}

// ---------------------------------------------------------------------------------------
// 4. Pool construction to first result (2 workers); shutdown timed separately.

// `gap`: a pause between pools. Back to back (0), every pool's workers are forked as it asks
// for them; with a pause the fork server has spares ready (it makes them after 20 ms
// without requests), as for a program that makes a pool now and then.
void startup(benchmark::State& st, procpool::start_method m,
             std::chrono::milliseconds gap = std::chrono::milliseconds(0)) {
    std::vector<double> first(kStartupRounds), down(kStartupRounds);
    for (auto _ : st) {
        for (int i = 0; i < kStartupRounds; ++i) {
            if (gap.count() != 0) std::this_thread::sleep_for(gap);
            const auto t0 = clk::now();
            auto pool = std::make_unique<procpool::process_pool>(pool_opts(m));
            pool->submit(noop).get();
            first[static_cast<std::size_t>(i)] = us_since(t0);
            const auto t1 = clk::now();
            pool.reset();
            down[static_cast<std::size_t>(i)] = us_since(t1);
        }
    }
    report_distribution(st, "", first);
    report_distribution(st, "shutdown_", down);
}
void startup_forkserver(benchmark::State& st) { startup(st, procpool::start_method::forkserver); }
void startup_fork(benchmark::State& st) { startup(st, procpool::start_method::fork); }
void startup_forkserver_spaced(benchmark::State& st) {
    startup(st, procpool::start_method::forkserver, std::chrono::milliseconds(30));
}

// ---------------------------------------------------------------------------------------
// 5. A task kills its own worker (SIGKILL): time until its future is resolved
//    (worker_died), and until a task's result comes back from the replacement worker
//    (a pid the pool did not have before the crash).

// `settle`: the pause after each round, for both workers to settle (and, from 20 ms, for the
// fork server to have a spare ready for the next replacement).
void crash(benchmark::State& st, std::chrono::milliseconds settle) {
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    std::vector<double> resolved, served;
    int not_worker_died = 0, old_pid_answers = 0;
    for (auto _ : st) {
        for (int i = 0; i < kCrashRounds; ++i) {
            const auto before = pool.worker_pids();
            const std::set<int> old(before.begin(), before.end());
            const auto t0 = clk::now();
            auto f = pool.submit(kill_myself, 0);
            f.wait();
            resolved.push_back(us_since(t0));
            try {
                f.get();
                ++not_worker_died;
            } catch (const procpool::worker_died&) {
            } catch (...) {
                ++not_worker_died;
            }
            // Results from surviving workers do not count: wait for the replacement.
            for (;;) {
                const int pid = pool.submit(whoami).get();
                if (old.count(pid) == 0) break;
                ++old_pid_answers;
            }
            served.push_back(us_since(t0));
            std::this_thread::sleep_for(settle);
        }
    }
    if (not_worker_died != 0) st.SkipWithError("a killed task's future did not hold worker_died");
    report_distribution(st, "resolved_", resolved);
    report_distribution(st, "replacement_result_", served);
    st.counters["answers_from_survivors"] = old_pid_answers;
}
void crash_procpool(benchmark::State& st) { crash(st, std::chrono::milliseconds(5)); }
void crash_procpool_spaced(benchmark::State& st) { crash(st, std::chrono::milliseconds(30)); }

// ---------------------------------------------------------------------------------------
// 6. The seed's heavy_calc over {5e6, 6e6, 7e6, 8e6}, 2 workers.

void heavy_serial(benchmark::State& st) {
    for (auto _ : st) {
        double total = 0;
        for (long n : kHeavySizes) total += heavy_calc(n);
        benchmark::DoNotOptimize(total);
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// pool.map in the seed's order. The pool hands all four tasks out at once, alternating
// between the workers from the one used last, so the split is {5, 8} / {6, 7} million (a
// perfect split) or {5, 7} / {6, 8} (bound 26/14 = 1.86x) depending on that worker; in a
// warm pool it settles on the former (see docs/benchmarks.md).
void heavy_procpool_map(benchmark::State& st) {
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    for (auto _ : st) {
        auto r = pool.map(heavy_calc, kHeavySizes);
        benchmark::DoNotOptimize(r.data());
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// The machine's ceiling: two plain threads given {8, 5} and {7, 6} million up front.
double heavy_on_two_threads() {
    double a = 0;
    double b = 0;
    std::thread t([&a] { a = heavy_calc(8'000'000) + heavy_calc(5'000'000); });
    b = heavy_calc(7'000'000) + heavy_calc(6'000'000);
    t.join();
    return a + b;
}

void heavy_two_threads(benchmark::State& st) {
    for (auto _ : st) benchmark::DoNotOptimize(heavy_on_two_threads());
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// The same two, alternating within one benchmark: each repetition times a pool.map and
// then the two plain threads, so a drift of the VM's speed between benchmarks (a minute
// apart) does not decide the ratio. Counter: two threads' time / the pool's, per pair.
void heavy_alternating(benchmark::State& st) {
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    (void)pool.map(heavy_calc, kHeavySizes);  // settles the split (see heavy_procpool_map)
    std::vector<double> pool_ms;
    std::vector<double> threads_ms;
    std::vector<double> ratio;
    for (auto _ : st) {
        const auto a = clk::now();
        auto r = pool.map(heavy_calc, kHeavySizes);
        const auto b = clk::now();
        benchmark::DoNotOptimize(heavy_on_two_threads());
        const auto c = clk::now();
        benchmark::DoNotOptimize(r.data());
        pool_ms.push_back(std::chrono::duration<double, std::milli>(b - a).count());
        threads_ms.push_back(std::chrono::duration<double, std::milli>(c - b).count());
        ratio.push_back(threads_ms.back() / pool_ms.back());
    }
    st.counters["pool_ms"] = percentile(pool_ms, 0.5);
    st.counters["threads_ms"] = percentile(threads_ms, 0.5);
    st.counters["threads_over_pool"] = percentile(ratio, 0.5);
}

// ---------------------------------------------------------------------------------------
// 7. Idle and busy costs, from /proc (nanosecond schedstat of every thread).

// CPU time (ns) of every thread of process `pid`, except thread `skip_tid`.
std::uint64_t process_cpu_ns(int pid, int skip_tid = 0) {
    std::uint64_t total = 0;
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return 0;
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] == '.' || std::atoi(e->d_name) == skip_tid) continue;
        std::uint64_t on_cpu = 0;
        if (std::ifstream(dir + "/" + e->d_name + "/schedstat") >> on_cpu) total += on_cpu;
    }
    closedir(d);
    return total;
}

// Every process descended from this one (the fork server and the workers it forks).
std::vector<int> descendants() {
    std::map<int, std::vector<int>> kids;
    DIR* d = opendir("/proc");
    if (d == nullptr) return {};
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
        std::string line;
        if (!std::getline(f, line)) continue;
        const auto close = line.rfind(')');
        if (close == std::string::npos) continue;
        char state = 0;
        int ppid = 0;
        if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2) {
            kids[ppid].push_back(std::atoi(e->d_name));
        }
    }
    closedir(d);
    std::vector<int> out, todo = {static_cast<int>(getpid())};
    while (!todo.empty()) {
        const int p = todo.back();
        todo.pop_back();
        for (int c : kids[p]) {
            out.push_back(c);
            todo.push_back(c);
        }
    }
    return out;
}

// A fresh pool does 10 ms of submit/get, then sits idle for 1 s (and another). Counted: the parent's
// threads other than the calling one (the pool's supervisor), and every descendant
// process (fork server, workers). The calling thread is reported apart: it only sleeps,
// and its CPU time is this measurement's own cost (reading /proc, waking up), 0.05-0.5 ms
// on this VM with no pool at all.
// CPU time (ns) over one idle second: of the parent's threads but the caller (`me`), of
// the caller, and of every process descended from this one (listed at the start).
struct idle_second {
    std::uint64_t pool_ns = 0;
    std::uint64_t caller_ns = 0;
    std::uint64_t children_ns = 0;
    std::size_t children = 0;
};

idle_second measure_idle_second(int me) {
    const std::vector<int> kids = descendants();
    auto children_ns = [&] {
        std::uint64_t s = 0;
        for (int p : kids) s += process_cpu_ns(p);
        return s;
    };
    const std::uint64_t kids0 = children_ns();
    const std::uint64_t pool0 = process_cpu_ns(getpid(), me);
    const std::uint64_t caller0 = process_cpu_ns(getpid()) - pool0;
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::uint64_t pool1 = process_cpu_ns(getpid(), me);
    const std::uint64_t caller1 = process_cpu_ns(getpid()) - pool1;
    const std::uint64_t kids1 = children_ns();
    return {pool1 - pool0, caller1 - caller0, kids1 - kids0, kids.size()};
}

void idle_procpool(benchmark::State& st) {
    const int me = static_cast<int>(gettid());
    for (auto _ : st) {
        procpool::process_pool pool(pool_opts());
        const auto until = clk::now() + std::chrono::milliseconds(10);
        while (clk::now() < until) pool.submit(noop).get();
        const idle_second first = measure_idle_second(me);
        st.counters["idle_pool_cpu_us"] =
            static_cast<double>(first.pool_ns + first.children_ns) / 1e3;
        st.counters["idle_supervisor_cpu_us"] = static_cast<double>(first.pool_ns) / 1e3;
        st.counters["idle_children_cpu_us"] = static_cast<double>(first.children_ns) / 1e3;
        st.counters["idle_caller_cpu_us"] = static_cast<double>(first.caller_ns) / 1e3;
        st.counters["children"] = static_cast<double>(first.children);
        // A second idle second: what the first one spent once (the fork server making its
        // spares after 20 ms without requests) does not come again.
        const idle_second second = measure_idle_second(me);
        st.counters["idle_second_pool_cpu_us"] =
            static_cast<double>(second.pool_ns + second.children_ns) / 1e3;
    }
}

// Two long tasks on the pool's two workers while the parent waits in get(), against the
// same two calls on two plain threads. The two alternate within each round, so that a
// neighbour's load on this shared VM hits both alike; the counters are medians over the
// rounds, and `parent_cpu_us` is the parent's CPU time (all threads) per pool pair: a
// spinning parent would steal a core from the workers.
void busy_procpool_vs_threads(benchmark::State& st) {
    constexpr int kRounds = 5;
    procpool::process_pool pool(pool_opts());
    warm_up(pool);
    std::vector<double> pool_ms, threads_ms, ratio, parent_us;
    for (auto _ : st) {
        for (int r = 0; r < kRounds; ++r) {
            const std::uint64_t c0 = process_cpu_ns(getpid());
            auto t0 = clk::now();
            auto a = pool.submit(heavy_calc, kLongTask);
            auto b = pool.submit(heavy_calc, kLongTask);
            benchmark::DoNotOptimize(a.get() + b.get());
            pool_ms.push_back(us_since(t0) / 1e3);
            parent_us.push_back(static_cast<double>(process_cpu_ns(getpid()) - c0) / 1e3);

            t0 = clk::now();
            double x = 0;
            double y = 0;
            std::thread t1([&x] { x = heavy_calc(kLongTask); });
            std::thread t2([&y] { y = heavy_calc(kLongTask); });
            t1.join();
            t2.join();
            benchmark::DoNotOptimize(x + y);
            threads_ms.push_back(us_since(t0) / 1e3);
            ratio.push_back(threads_ms.back() / pool_ms.back());
        }
    }
    st.counters["pool_ms"] = percentile(pool_ms, 0.5);
    st.counters["threads_ms"] = percentile(threads_ms, 0.5);
    st.counters["threads_over_pool"] = percentile(ratio, 0.5);
    st.counters["parent_cpu_us"] = percentile(parent_us, 0.5);
}

// ---------------------------------------------------------------------------------------
// 8. The machine's own floors, measured in the same run so that results from different
//    VMs compare as ratios (kernel and wake-up costs differ several-fold between VMs of
//    one kind). The pinned pipe ping-pong is bench_pipe_pingpong (a separate binary).

// A round trip through shared memory with no system call: the parent bumps a counter in
// a MAP_SHARED page, a forked child spinning on it echoes it in a second counter on
// another cache line. The least any process pool's round trip can cost on this machine.
void floor_shm_spin_handoff(benchmark::State& st) {
    struct alignas(64) line {
        std::atomic<std::uint64_t> v{0};
    };
    void* mem = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        st.SkipWithError("mmap");
        return;
    }
    auto* ping = ::new (mem) line();
    auto* pong = ::new (static_cast<char*>(mem) + 64) line();
    constexpr std::uint64_t stop = ~std::uint64_t{0};
    // Spins, yielding now and then (two spinners and the benchmark's own threads share
    // two cores on the VMs this runs on).
    auto wait_for = [](const std::atomic<std::uint64_t>& a, std::uint64_t want) {
        for (unsigned i = 1;; ++i) {
            const std::uint64_t x = a.load(std::memory_order_acquire);
            if (x == want || x == stop) return x;
            if ((i & 255) == 0) sched_yield();
        }
    };
    const pid_t pid = fork();
    if (pid == 0) {
        for (std::uint64_t k = 1;; ++k) {
            if (wait_for(ping->v, k) == stop) _exit(0);
            pong->v.store(k, std::memory_order_release);
        }
    }
    std::vector<double> us;
    us.reserve(kLatencyRounds);
    for (auto _ : st) {
        for (int i = 1; i <= kLatencyWarmup + kLatencyRounds; ++i) {
            const auto t0 = clk::now();
            ping->v.store(static_cast<std::uint64_t>(i), std::memory_order_release);
            wait_for(pong->v, static_cast<std::uint64_t>(i));
            if (i > kLatencyWarmup) us.push_back(us_since(t0));
        }
    }
    ping->v.store(stop, std::memory_order_release);
    waitpid(pid, nullptr, 0);
    munmap(mem, 4096);
    report_distribution(st, "", us);
}

// fork, the child _exits, the parent reaps it: what starting any worker process costs
// here at least (the fork server is a copy of this program as it was at init). Its cost
// grows with the memory this program has mapped (the kernel copies the page tables and
// the child's exit tears them down): `rss_mib` says how much that was. Run first, and
// again right before the start-up rows, where a pool with start_method::fork forks this
// program as the earlier rows left it.
void floor_fork_exit_wait(benchmark::State& st) {
    std::vector<double> us;
    for (auto _ : st) {
        for (int i = 0; i < kStartupRounds; ++i) {
            const auto t0 = clk::now();
            const pid_t pid = fork();
            if (pid == 0) _exit(0);
            waitpid(pid, nullptr, 0);
            us.push_back(us_since(t0));
        }
    }
    report_distribution(st, "", us);
    long pages = 0;
    long resident = 0;
    if (std::ifstream("/proc/self/statm") >> pages >> resident) {
        st.counters["rss_mib"] = static_cast<double>(resident) * 4096.0 / (1 << 20);
    }
}

// memcpy of 1 MiB into memory already touched: the unit the large-vector path is
// measured in (bench_shared_array has the other sizes).
void floor_memcpy_1mib(benchmark::State& st) {
    std::vector<char> a(1 << 20, 'a');
    std::vector<char> b(1 << 20, 'b');
    for (auto _ : st) {
        std::memcpy(b.data(), a.data(), a.size());
        benchmark::DoNotOptimize(b.data());
        benchmark::ClobberMemory();
    }
    st.SetBytesProcessed(st.iterations() * static_cast<std::int64_t>(a.size()));
}

// The copies the parent makes in a `map` of kMapItems ints, with nothing else: the input
// into a 512 KiB ring in 64 KiB pieces, each piece of results out of another 512 KiB ring
// into a new vector (as a chunk's result is decoded), and that vector into the output
// (docs/architecture.md, "What one map element costs"). The worker's two copies run on
// the other core at the same time, so this is the bound the parent's side puts on `map`.
void floor_map_parent_copies(benchmark::State& st) {
    const auto in = map_input();
    constexpr std::size_t ring_bytes = 512 * 1024;
    constexpr std::size_t piece = 64 * 1024 / sizeof(int);
    std::vector<std::byte> ring_out(ring_bytes);
    std::vector<std::byte> ring_back(ring_bytes);
    std::memset(ring_back.data(), 1, ring_bytes);
    std::vector<int> out;
    out.reserve(in.size());
    for (auto _ : st) {
        out.clear();
        std::size_t at = 0;
        for (std::size_t lo = 0; lo < in.size(); lo += piece) {
            const std::size_t n = std::min(piece, in.size() - lo);
            if (at + n * sizeof(int) > ring_bytes) at = 0;
            std::memcpy(ring_out.data() + at, in.data() + lo, n * sizeof(int));
            benchmark::DoNotOptimize(ring_out.data());
            const int* back = reinterpret_cast<const int*>(ring_back.data() + at);
            std::vector<int> part(back, back + n);
            out.insert(out.end(), part.begin(), part.end());
            at += n * sizeof(int);
        }
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    set_rate(st, kMapItems);
}

// Registers `fn` as "group/variant", timed by the wall clock. Runs go in this order.
benchmark::internal::Benchmark* add(const char* name, void (*fn)(benchmark::State&)) {
    return benchmark::RegisterBenchmark(name, fn)->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first thing: starts the fork server while single-threaded
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    add("floor/shm_spin_handoff", floor_shm_spin_handoff)->Iterations(1);
    add("floor/fork_exit_wait", floor_fork_exit_wait)->Iterations(1);
    add("floor/memcpy_1mib", floor_memcpy_1mib)->Unit(benchmark::kMicrosecond);

    add("latency/procpool_process_pool", latency_procpool)->Iterations(1);

    add("submit_get/procpool_process_pool", submit_get_procpool);
    add("submit_get/procpool_process_pool_traced", submit_get_procpool_traced);
    add("submit_get/asio_thread_pool_promise", submit_get_asio_promise);

    add("map/procpool_process_pool", map_procpool_process);
    add("map/procpool_process_pool_first_call", map_procpool_process_first_call);
    add("map/procpool_thread_pool", map_procpool_thread);
    add("floor/map_parent_copies", floor_map_parent_copies);

    add("floor/fork_exit_wait_before_startup", floor_fork_exit_wait)->Iterations(1);
    add("startup/procpool_forkserver", startup_forkserver)->Iterations(1);
    add("startup/procpool_fork", startup_fork)->Iterations(1);
    add("startup/procpool_forkserver_spaced", startup_forkserver_spaced)->Iterations(1);

    add("crash/procpool_process_pool", crash_procpool)->Iterations(1);
    add("crash/procpool_process_pool_spaced", crash_procpool_spaced)->Iterations(1);

    add("heavy_calc/procpool_map", heavy_procpool_map);
    add("heavy_calc/two_std_threads_ceiling", heavy_two_threads);
    add("heavy_calc/serial", heavy_serial);
    add("heavy_calc/procpool_map_vs_two_threads_alternating", heavy_alternating)->Iterations(15);

    add("idle/procpool_process_pool", idle_procpool)->Iterations(1);
    add("busy/procpool_vs_two_std_threads", busy_procpool_vs_threads)->Iterations(1);

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
