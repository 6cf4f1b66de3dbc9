// thread_pool next to its peers (oneTBB, Boost.Asio, std::async, OpenMP), in one binary
// and one run, so that every number in docs/benchmarks.md shares a machine and a moment.
// bench/run_thread_pool_bench.sh builds this in Release, repeats it and prints medians.
//
// Every pool runs kWorkers threads. TBB runs in an arena of kWorkers slots (the calling
// thread takes one and works in wait()), OpenMP loops use num_threads(kWorkers).
#include <dirent.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <future>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <procpool/thread_pool.hpp>

namespace {

constexpr int kWorkers = 2;
constexpr std::int64_t kTasks = 1'000'000;
// std::async starts a thread per task: fewer tasks keep a run short. Rates are per task,
// so they compare directly with the 1M-task runs.
constexpr std::int64_t kAsyncTasks = 20'000;
constexpr std::size_t kMapItems = 1'000'000;
const std::vector<long> kHeavySizes = {5'000'000, 6'000'000, 7'000'000, 8'000'000};

void set_rate(benchmark::State& st, std::int64_t per_iteration) {
    st.SetItemsProcessed(st.iterations() * per_iteration);
}

// ---------------------------------------------------------------------------------------
// (a) submit + get of no-op tasks, a future each (TBB and OpenMP: no futures, lower bounds)

void submit_get_procpool(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    std::vector<procpool::future<void>> fs;
    fs.reserve(kTasks);
    for (auto _ : st) {
        for (std::int64_t i = 0; i < kTasks; ++i) fs.push_back(pool.submit([] {}));
        for (auto& f : fs) f.get();
        fs.clear();
    }
    set_rate(st, kTasks);
}

void submit_get_tbb_task_group(benchmark::State& st) {
    tbb::task_arena arena(kWorkers);
    for (auto _ : st) {
        arena.execute([] {
            tbb::task_group g;
            for (std::int64_t i = 0; i < kTasks; ++i) g.run([] {});
            g.wait();
        });
    }
    set_rate(st, kTasks);
}

void submit_get_asio_promise(benchmark::State& st) {
    boost::asio::thread_pool pool(kWorkers);
    std::vector<std::future<void>> fs;
    fs.reserve(kTasks);
    for (auto _ : st) {
        for (std::int64_t i = 0; i < kTasks; ++i) {
            std::promise<void> p;
            fs.push_back(p.get_future());
            boost::asio::post(pool, [p = std::move(p)]() mutable { p.set_value(); });
        }
        for (auto& f : fs) f.get();
        fs.clear();
    }
    pool.join();
    set_rate(st, kTasks);
}

void submit_get_std_async(benchmark::State& st) {
    std::vector<std::future<void>> fs;
    fs.reserve(kAsyncTasks);
    for (auto _ : st) {
        for (std::int64_t i = 0; i < kAsyncTasks; ++i) {
            fs.push_back(std::async(std::launch::async, [] {}));
        }
        for (auto& f : fs) f.get();
        fs.clear();
    }
    set_rate(st, kAsyncTasks);
}

void submit_get_openmp_for(benchmark::State& st) {
    for (auto _ : st) {
#pragma omp parallel for num_threads(kWorkers) schedule(static)
        for (std::int64_t i = 0; i < kTasks; ++i) benchmark::DoNotOptimize(i);
    }
    set_rate(st, kTasks);
}

// ---------------------------------------------------------------------------------------
// (b) map a small hash over 1M ints into a new vector

// The finaliser of a 32-bit integer hash (Chris Wellons, "Prospecting for Hash Functions").
constexpr auto mix = [](std::uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
};

std::vector<std::uint32_t> map_input() {
    std::vector<std::uint32_t> v(kMapItems);
    std::iota(v.begin(), v.end(), 0U);
    return v;
}

void map_procpool(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    const auto in = map_input();
    for (auto _ : st) {
        auto out = pool.map(mix, in);
        benchmark::DoNotOptimize(out.data());
    }
    set_rate(st, kMapItems);
}

// map's own work split, written out: one task per chunk of 16384 items (the chunk size
// map picks for 1M items and 2 workers), recording which worker ran each chunk. The
// counter one_worker_pct is the share of calls in which a single worker ran every chunk.
void map_procpool_chunk_tasks(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    const auto in = map_input();
    constexpr std::size_t chunk = 16384;
    const std::size_t nchunks = (in.size() + chunk - 1) / chunk;
    std::vector<std::thread::id> ran_on(nchunks);
    std::vector<procpool::future<void>> fs;
    fs.reserve(nchunks);
    std::int64_t one_worker = 0;
    for (auto _ : st) {
        std::vector<std::uint32_t> out(in.size());
        for (std::size_t c = 0; c < nchunks; ++c) {
            fs.push_back(pool.submit([&in, &out, &ran_on, c] {
                ran_on[c] = std::this_thread::get_id();
                const std::size_t hi = std::min(in.size(), (c + 1) * chunk);
                for (std::size_t i = c * chunk; i < hi; ++i) out[i] = mix(in[i]);
            }));
        }
        for (auto& f : fs) f.get();
        fs.clear();
        one_worker += std::count(ran_on.begin(), ran_on.end(), ran_on[0]) ==
                      static_cast<std::ptrdiff_t>(nchunks);
        benchmark::DoNotOptimize(out.data());
    }
    st.counters["one_worker_pct"] =
        100.0 * static_cast<double>(one_worker) / static_cast<double>(st.iterations());
    set_rate(st, kMapItems);
}

void map_tbb_parallel_for(benchmark::State& st) {
    tbb::task_arena arena(kWorkers);
    const auto in = map_input();
    for (auto _ : st) {
        std::vector<std::uint32_t> out(in.size());
        arena.execute([&] {
            tbb::parallel_for(tbb::blocked_range<std::size_t>(0, in.size()), [&](const auto& r) {
                for (std::size_t i = r.begin(); i < r.end(); ++i) out[i] = mix(in[i]);
            });
        });
        benchmark::DoNotOptimize(out.data());
    }
    set_rate(st, kMapItems);
}

void map_openmp_for(benchmark::State& st) {
    const auto in = map_input();
    for (auto _ : st) {
        std::vector<std::uint32_t> out(in.size());
        const auto n = static_cast<std::int64_t>(in.size());
#pragma omp parallel for num_threads(kWorkers) schedule(static)
        for (std::int64_t i = 0; i < n; ++i) {
            out[static_cast<std::size_t>(i)] = mix(in[static_cast<std::size_t>(i)]);
        }
        benchmark::DoNotOptimize(out.data());
    }
    set_rate(st, kMapItems);
}

void map_serial(benchmark::State& st) {
    const auto in = map_input();
    for (auto _ : st) {
        std::vector<std::uint32_t> out(in.size());
        for (std::size_t i = 0; i < in.size(); ++i) out[i] = mix(in[i]);
        benchmark::DoNotOptimize(out.data());
    }
    set_rate(st, kMapItems);
}

// ---------------------------------------------------------------------------------------
// (c) the seed's heavy_calc over four sizes

// The seed's task: a plain function, deliberately not inlined into the loops below.
[[gnu::noinline]] double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

void heavy_serial(benchmark::State& st) {
    for (auto _ : st) {
        double total = 0;
        for (long n : kHeavySizes) total += heavy_calc(n);
        benchmark::DoNotOptimize(total);
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// pool.map in the seed's order. With two workers and FIFO dispatch the schedule is
// {5, 7} and {6, 8} million, so the best possible speedup is 26 / 14 = 1.86.
void heavy_procpool_map(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    for (auto _ : st) {
        auto r = pool.map(heavy_calc, kHeavySizes);
        benchmark::DoNotOptimize(r.data());
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// Longest task first (LPT): {8, 5} and {7, 6} million, a perfect split (bound 2.0).
void heavy_procpool_submit_longest_first(benchmark::State& st) {
    procpool::thread_pool pool({.workers = kWorkers});
    std::vector<long> sizes = kHeavySizes;
    std::sort(sizes.begin(), sizes.end(), std::greater<>());
    std::vector<procpool::future<double>> fs;
    for (auto _ : st) {
        for (long n : sizes) fs.push_back(pool.submit(heavy_calc, n));
        double total = 0;
        for (auto& f : fs) total += f.get();
        benchmark::DoNotOptimize(total);
        fs.clear();
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// The machine's ceiling: two plain threads, each given half of the work ({8, 5} and
// {7, 6} million) up front, no pool and no futures.
void heavy_std_thread_ceiling(benchmark::State& st) {
    for (auto _ : st) {
        double a = 0;
        double b = 0;
        std::thread t([&a] { a = heavy_calc(8'000'000) + heavy_calc(5'000'000); });
        b = heavy_calc(7'000'000) + heavy_calc(6'000'000);
        t.join();
        benchmark::DoNotOptimize(a + b);
    }
    set_rate(st, static_cast<std::int64_t>(kHeavySizes.size()));
}

// ---------------------------------------------------------------------------------------
// Idle cost: CPU time and wake-ups of a pool's workers over 1 s of idleness right after
// 10 ms of work. Read per thread from /proc/self/task/*/schedstat (nanoseconds on CPU,
// times scheduled), picking the workers out by their thread name.

struct thread_usage {
    std::uint64_t cpu_ns = 0;
    std::uint64_t runs = 0;
};

thread_usage usage_of_threads_named(const std::string& prefix) {
    thread_usage total;
    DIR* dir = opendir("/proc/self/task");
    if (dir == nullptr) return total;
    while (dirent* e = readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        const std::string task = std::string("/proc/self/task/") + e->d_name;
        std::string comm;
        std::getline(std::ifstream(task + "/comm") >> std::ws, comm);
        if (comm.rfind(prefix, 0) != 0) continue;
        std::uint64_t on_cpu = 0, waited = 0, runs = 0;
        if (std::ifstream(task + "/schedstat") >> on_cpu >> waited >> runs) {
            total.cpu_ns += on_cpu;
            total.runs += runs;
        }
    }
    closedir(dir);
    return total;
}

double process_cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
    return sec(ru.ru_utime) + sec(ru.ru_stime);
}

void idle_cpu_procpool(benchmark::State& st) {
    for (auto _ : st) {
        procpool::thread_pool pool({.workers = kWorkers, .name = "idlebench"});
        const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(10);
        while (std::chrono::steady_clock::now() < until) pool.submit([] {}).get();
        const thread_usage before = usage_of_threads_named("idlebench");
        const double process_before = process_cpu_seconds();
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const double process_after = process_cpu_seconds();
        const thread_usage after = usage_of_threads_named("idlebench");
        st.counters["idle_worker_cpu_us"] = static_cast<double>(after.cpu_ns - before.cpu_ns) / 1e3;
        st.counters["idle_worker_wakeups"] = static_cast<double>(after.runs - before.runs);
        st.counters["idle_process_cpu_us"] = (process_after - process_before) * 1e6;
    }
}

// Registers `fn` as "group/variant", timed by the wall clock. Runs go in this order.
benchmark::internal::Benchmark* add(const char* name, void (*fn)(benchmark::State&)) {
    return benchmark::RegisterBenchmark(name, fn)->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    add("idle/procpool_thread_pool", idle_cpu_procpool)->Iterations(1);

    add("submit_get/procpool_thread_pool", submit_get_procpool);
    add("submit_get/tbb_task_group", submit_get_tbb_task_group);
    add("submit_get/asio_thread_pool_promise", submit_get_asio_promise);
    add("submit_get/std_async_20k", submit_get_std_async);
    add("submit_get/openmp_for", submit_get_openmp_for);

    add("map/procpool_thread_pool", map_procpool);
    add("map/procpool_chunk_tasks", map_procpool_chunk_tasks);
    add("map/tbb_parallel_for", map_tbb_parallel_for);
    add("map/openmp_for", map_openmp_for);
    add("map/serial", map_serial);

    add("heavy_calc/procpool_map", heavy_procpool_map);
    add("heavy_calc/procpool_submit_longest_first", heavy_procpool_submit_longest_first);
    add("heavy_calc/two_std_threads_ceiling", heavy_std_thread_ceiling);
    add("heavy_calc/serial", heavy_serial);

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
