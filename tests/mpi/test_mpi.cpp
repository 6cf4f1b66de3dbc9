// mpi_pool under mpirun: rank 0 runs these tests, every other rank serves them. Run as
// `mpirun -np 3 test_mpi` (tests/CMakeLists.txt registers it with shared memory and with
// TCP); started alone it tests the single-rank fallback instead.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <iterator>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../process_support.hpp"
#include "procpool/mpi_pool.hpp"
#include "procpool/procpool.hpp"
#include "procpool/shared_array.hpp"

using namespace std::chrono_literals;
using procpool::mpi_pool;
using procpool_test::file_gate;

namespace {

int square(int x) { return x * x; }

/// Writes a[i] = 3i + 1 over [from, to); returns how many.
std::size_t fill_slice(procpool::shared_array<int> a, std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) a[i] = static_cast<int>(i) * 3 + 1;
    return to - from;
}

long sum_span(procpool::shared_span<const int> s) { return std::accumulate(s.begin(), s.end(), 0L); }

/// Marks a[1] = 1, then returns a[0] once it differs from `initial`, or after `patience_ms`.
int wait_for_change(procpool::shared_array<int> a, int initial, int patience_ms) {
    a[1] = 1;
    for (int i = 0; i < patience_ms && a[0] == initial; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return a[0];
}

/// The names of the launcher's variables (OMPI_*, PMIX_*, ...) this worker sees, and the
/// value of `name`.
std::string launcher_env_and(std::string name) {
    std::string seen;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string entry(*e);
        for (const char* p : {"OMPI_", "PMIX_", "PMI_", "OPAL_"}) {
            if (entry.rfind(p, 0) == 0) seen += entry.substr(0, entry.find('=')) + " ";
        }
    }
    const char* v = std::getenv(name.c_str());
    return seen + "| " + (v != nullptr ? v : "(unset)");
}
int add(int a, int b) { return a + b; }
int throws_domain_error(int) { throw std::domain_error("bad input"); }
int segfaults(int) {
    raise(SIGSEGV);
    return 0;
}
int exits(int code) { std::_Exit(code); }
int sleeps_an_hour(int) {
    std::this_thread::sleep_for(1h);
    return 0;
}
std::vector<double> big_vector(int n) {
    std::vector<double> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0.0);
    return v;
}
double sum(std::vector<double> v) { return std::accumulate(v.begin(), v.end(), 0.0); }
std::vector<int> filled(int n, int value) {
    return std::vector<int>(static_cast<std::size_t>(n), value);
}

/// 5 % of the soak's tasks fail, in three ways.
int soak_task(int i) {
    switch (i % 60) {
        case 7: throw std::runtime_error("soak " + std::to_string(i));
        case 27: raise(SIGABRT); break;
        case 47: std::_Exit(5); break;
        default: break;
    }
    return 2 * i;
}

bool multi_rank() { return procpool::mpi_size() > 1; }

/// 0, 1, 2, ... without end: an input of unknown length, as a generator gives.
struct naturals {
    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int operator*() const { return i; }
        iterator& operator++() {
            ++i;
            return *this;
        }
        void operator++(int) { ++i; }
    };
    iterator begin() const { return {}; }
    std::unreachable_sentinel_t end() const { return {}; }
};

void init_throws(int) { throw std::runtime_error("init failed on purpose"); }
void init_exits(int code) { std::_Exit(code); }

/// The serving rank a worker belongs to: its parent is the rank's fork server, whose
/// parent is the rank.
long my_rank_pid() {
    std::ifstream stat("/proc/" + std::to_string(getppid()) + "/stat");
    std::string pid, comm, state;
    long rank_pid = 0;
    stat >> pid >> comm >> state >> rank_pid;
    return rank_pid;
}

/// Freezes the serving rank it runs on (SIGSTOP), after writing the rank's pid to
/// `dir`/rank-pid so that the test can let it go on.
int stop_my_rank(std::string dir) {
    const long rank_pid = my_rank_pid();
    std::ofstream(dir + "/rank-pid.tmp") << rank_pid;
    std::filesystem::rename(dir + "/rank-pid.tmp", dir + "/rank-pid");
    kill(static_cast<pid_t>(rank_pid), SIGSTOP);
    return 1;
}

/// Kills the worker's parent, its rank's fork server, as an outside kill -9 would.
int kill_fork_server(int) {
    kill(getppid(), SIGKILL);
    pause();
    return 0;
}

/// Marks its own start in `dir` (started-<value>), then waits for the gate to open.
int mark_then_wait(std::string dir, int value) {
    std::ofstream(dir + "/started-" + std::to_string(value)) << 1;
    return file_gate::wait_then_return(std::move(dir), value);
}

TEST(MpiPool, RanksAndWorkers) {
    mpi_pool pool;
    if (multi_rank()) {
        ASSERT_EQ(static_cast<int>(pool.ranks().size()), procpool::mpi_size() - 1);
        for (const auto& r : pool.ranks()) {
            EXPECT_GT(r.rank, 0);
            EXPECT_FALSE(r.host.empty());
            EXPECT_GE(r.workers, 1);
        }
    } else {
        ASSERT_EQ(pool.ranks().size(), 1u);
    }
    EXPECT_GE(pool.workers(), 1);
    EXPECT_EQ(pool.submit(add, 2, 3).get(), 5);
}

TEST(MpiPool, MapResultsInInputOrder) {
    mpi_pool pool;
    std::vector<int> in(20'000);
    std::iota(in.begin(), in.end(), 0);
    auto out = pool.map(square, in);
    ASSERT_EQ(out.size(), in.size());
    for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], in[i] * in[i]);
    // Chunks of one: every task goes separately, spread over the ranks.
    auto small = pool.map(square, std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, 1);
    EXPECT_EQ(small, (std::vector<int>{1, 4, 9, 16, 25, 36, 49, 64}));
}

TEST(MpiPool, VectorsTravelByValue) {
    mpi_pool pool;
    auto v = pool.submit(big_vector, 300'000).get();  // 2.4 MB result
    ASSERT_EQ(v.size(), 300'000u);
    EXPECT_EQ(v[299'999], 299'999.0);
    EXPECT_EQ(pool.submit(sum, v).get(), std::accumulate(v.begin(), v.end(), 0.0));
}

// Results of a few hundred KiB that finish together on a rank leave in several reply
// messages (batches stop at 1 MiB); each must come back whole, to its own future.
TEST(MpiPool, ManyLargeResultsAtOnce) {
    mpi_pool pool;
    std::vector<procpool::future<std::vector<int>>> fs;
    for (int i = 0; i < 64; ++i) fs.push_back(pool.submit(filled, 100'000 + 1000 * i, i));
    for (int i = 0; i < 64; ++i) {
        const auto v = fs[static_cast<std::size_t>(i)].get();
        ASSERT_EQ(v.size(), static_cast<std::size_t>(100'000 + 1000 * i));
        EXPECT_EQ(v.front(), i);
        EXPECT_EQ(v.back(), i);
    }
}

TEST(MpiPool, RemoteExceptionKeepsTypeAndMessage) {
    mpi_pool pool;
    auto f = pool.submit(throws_domain_error, 1);
    try {
        f.get();
        FAIL() << "no exception";
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.type_name(), "std::domain_error");
        EXPECT_EQ(e.message(), "bad input");
    }
}

TEST(MpiPool, CrashFailsOnlyItsTask_NamesHostAndRank_RankKeepsServing) {
    mpi_pool pool;
    auto f = pool.submit(segfaults, 0);
    try {
        f.get();
        FAIL() << "no exception";
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.signal(), SIGSEGV);
        if (multi_rank()) {
            const std::string what = e.what();
            EXPECT_NE(what.find("MPI rank"), std::string::npos) << what;
            EXPECT_NE(what.find("on host"), std::string::npos) << what;
        }
    }
    auto g = pool.submit(exits, 3);
    try {
        g.get();
        FAIL() << "no exception";
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.signal(), 0);
        EXPECT_EQ(e.exit_code(), 3);
    }
    std::vector<int> in(100, 7);
    for (int v : pool.map(square, in, 1)) ASSERT_EQ(v, 49);
}

TEST(MpiPool, RemoteTimeoutKillsTheTask) {
    mpi_pool pool;
    auto f = pool.submit(procpool::task_options{.timeout = 100ms}, sleeps_an_hour, 0);
    EXPECT_THROW(f.get(), procpool::task_timeout);
    EXPECT_EQ(pool.submit(square, 5).get(), 25);
}

TEST(MpiPool, PoolTimeoutOption) {
    mpi_pool pool({.task_timeout = 100ms});
    EXPECT_THROW(pool.submit(sleeps_an_hour, 0).get(), procpool::task_timeout);
    EXPECT_EQ(pool.submit(square, 6).get(), 36);
}

TEST(MpiPool, CancelRunningTaskKillsItsWorker) {
    mpi_pool pool;
    file_gate gate;
    auto f = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    gate.wait_started();  // the ranks run on this machine in the test: files are shared
    EXPECT_TRUE(f.cancel());
    EXPECT_TRUE(f.cancelled());
    EXPECT_THROW(f.get(), procpool::task_cancelled);
    EXPECT_EQ(pool.submit(square, 4).get(), 16);
}

// workers × in_flight_per_worker beyond an int: every task still goes out and resolves.
TEST(MpiPool, HugeInFlightPerWorker) {
    mpi_pool pool({.workers_per_rank = 2, .in_flight_per_worker = INT_MAX});
    EXPECT_EQ(pool.submit(square, 3).get(), 9);
}

TEST(MpiPool, CancelQueuedTask) {
    mpi_pool pool({.in_flight_per_worker = 1});
    file_gate gate;
    std::vector<procpool::future<int>> blockers;
    for (int i = 0; i < pool.workers(); ++i) {
        blockers.push_back(pool.submit(file_gate::wait_then_return, gate.path(), i));
    }
    auto queued = pool.submit(square, 9);  // every window is full: it waits on rank 0
    EXPECT_TRUE(queued.cancel());
    EXPECT_THROW(queued.get(), procpool::task_cancelled);
    gate.open();
    for (int i = 0; i < pool.workers(); ++i) EXPECT_EQ(blockers[static_cast<std::size_t>(i)].get(), i);
}

// Many queued tasks cancelled in reverse order (the engine takes them out of its queue in
// one pass per batch): the cancelled ones stay cancelled, the others run.
TEST(MpiPool, CancelManyQueuedTasksInReverse_TheRestRun) {
    file_gate gate;
    mpi_pool pool({.in_flight_per_worker = 1});
    std::vector<procpool::future<int>> blockers;
    for (int i = 0; i < pool.workers(); ++i) {
        blockers.push_back(pool.submit(file_gate::wait_then_return, gate.path(), i));
    }
    constexpr int n = 5000;
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < n; ++i) fs.push_back(pool.submit(square, i));
    for (int i = n - 1; i >= 0; i -= 2) {
        EXPECT_TRUE(fs[static_cast<std::size_t>(i)].cancel()) << i;
    }
    gate.open();
    for (int i = 0; i < n; ++i) {
        const auto& f = fs[static_cast<std::size_t>(i)];
        if (i % 2 == 1) {
            EXPECT_TRUE(f.cancelled()) << i;
        } else {
            EXPECT_EQ(f.get(), i * i);
        }
    }
    for (auto& b : blockers) b.wait();
}

TEST(MpiPool, ShutdownWithPendingWork_EveryFutureResolves) {
    std::vector<procpool::future<int>> fs;
    file_gate gate;
    {
        mpi_pool pool({.in_flight_per_worker = 1});
        for (int i = 0; i < 50; ++i) fs.push_back(pool.submit(file_gate::wait_then_return, gate.path(), i));
        pool.shutdown({.wait = false, .cancel_pending = true});
        EXPECT_THROW(static_cast<void>(pool.submit(square, 1)), procpool::pool_shut_down);
        gate.open();
    }  // the destructor waits for what was running
    int values = 0, cancelled = 0;
    for (std::size_t i = 0; i < fs.size(); ++i) {
        ASSERT_TRUE(fs[i].ready());
        if (fs[i].cancelled()) {
            ++cancelled;
            EXPECT_THROW(fs[i].get(), procpool::task_cancelled);
        } else {
            EXPECT_EQ(fs[i].get(), static_cast<int>(i));
            ++values;
        }
    }
    EXPECT_EQ(values + cancelled, 50);
    EXPECT_GT(cancelled, 0);
}

// shutdown(cancel_pending) resolves every task that has not started as cancelled: also
// those already sent ahead to a rank (its window), not only those still on rank 0.
TEST(MpiPool, ShutdownCancelPending_CancelsTasksQueuedOnTheRanks) {
    constexpr int n = 40;
    file_gate gate;  // outlives the pool: tasks that start late still find its directory
    std::vector<procpool::future<int>> fs;
    std::vector<bool> started_before(n);
    {
        mpi_pool pool({.workers_per_rank = 1, .in_flight_per_worker = 4});
        const int workers = pool.workers();
        for (int i = 0; i < n; ++i) fs.push_back(pool.submit(mark_then_wait, gate.path(), i));
        auto started = [&](int i) {
            return std::filesystem::exists(gate.path() + "/started-" + std::to_string(i));
        };
        // Every worker holds a gated task: nothing else can start until the gate opens.
        const auto until = std::chrono::steady_clock::now() + 2min;
        for (;;) {
            int k = 0;
            for (int i = 0; i < n; ++i) k += started(i) ? 1 : 0;
            if (k == workers) break;
            ASSERT_LT(std::chrono::steady_clock::now(), until) << k << " of " << workers;
            std::this_thread::sleep_for(1ms);
        }
        pool.shutdown({.wait = false, .cancel_pending = true});
        for (int i = 0; i < n; ++i) started_before[static_cast<std::size_t>(i)] = started(i);
        gate.open();
    }  // waits for every task
    for (int i = 0; i < n; ++i) {
        const auto& f = fs[static_cast<std::size_t>(i)];
        ASSERT_TRUE(f.ready());
        if (started_before[static_cast<std::size_t>(i)]) {
            EXPECT_EQ(f.get(), i);
        } else {
            EXPECT_TRUE(f.cancelled()) << "task " << i << " had not started at shutdown, yet ran";
        }
    }
}

// "On the first failure, cancel the rest" from a done-callback: it runs on rank 0's MPI
// thread, where shutdown(cancel_pending) must not wait for that thread's own work.
TEST(MpiPool, ShutdownCancelPendingFromADoneCallback) {
    file_gate gate;
    mpi_pool pool({.in_flight_per_worker = 1});
    auto first = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    std::vector<procpool::future<int>> rest;
    for (int i = 0; i < 20; ++i) rest.push_back(pool.submit(square, i));
    auto called = std::make_shared<procpool::promise<void>>();
    auto done = called->get_future();
    first.on_done([&pool, called] {
        pool.shutdown({.wait = false, .cancel_pending = true});
        called->set_value();
    });
    gate.open();
    done.get();
    EXPECT_EQ(first.get(), 1);
    for (auto& f : rest) EXPECT_TRUE(f.wait_for(2min));  // a watchdog only
}

// True when the serving ranks were told to take shared arrays by value
// (PROCPOOL_MPI_COPY_SHARED_ARRAYS=1: how a rank on another node gets them).
bool arrays_copied() {
    const char* v = std::getenv("PROCPOOL_MPI_COPY_SHARED_ARRAYS");
    return multi_rank() && v != nullptr && std::string(v) != "0" && *v != '\0';
}

// Tasks fill disjoint slices of one shared array: rank 0 sees every write once the
// futures resolve, whether the ranks share rank 0's memory (same node) or got a copy and
// sent back what they changed (another node), even where two slices share a page.
TEST(MpiPool, SharedArray_TasksFillDisjointSlices_RankZeroSeesEveryWrite) {
    mpi_pool pool;
    constexpr std::size_t n = 100'003;
    constexpr std::size_t slice = 1'000;  // not a multiple of a page: slices share pages
    procpool::shared_array<int> a(n);
    std::vector<procpool::future<std::size_t>> fs;
    for (std::size_t from = 0; from < n; from += slice) {
        fs.push_back(pool.submit(fill_slice, a, from, std::min(n, from + slice)));
    }
    std::size_t written = 0;
    for (auto& f : fs) written += f.get();
    EXPECT_EQ(written, n);
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) wrong += a[i] == static_cast<int>(i) * 3 + 1 ? 0 : 1;
    EXPECT_EQ(wrong, 0u);
    // A read-only parameter gets the array without the right to write it.
    EXPECT_EQ(pool.submit(sum_span, a).get(), std::accumulate(a.begin(), a.end(), 0L));
    procpool::shared_array<int> empty;
    EXPECT_EQ(pool.submit(sum_span, empty).get(), 0L);
}

// Same node: the task works on rank 0's memory itself (no copy): it sees a write rank 0
// makes while it runs. By value (another node): it sees the array as it was sent.
TEST(MpiPool, SharedArray_SameNodeWithoutCopying_ByValueOtherwise) {
    mpi_pool pool({.workers_per_rank = 1});
    procpool::shared_array<int> a(1024);
    a[0] = 7;
    if (arrays_copied()) {
        EXPECT_EQ(pool.submit(wait_for_change, a, 7, 0).get(), 7);
        EXPECT_EQ(a[1], 1) << "the task's write came back";
        return;
    }
    auto f = pool.submit(wait_for_change, a, 7, 120'000);
    for (int i = 0; i < 120'000 && a[1] == 0; ++i) {  // a watchdog only
        std::this_thread::sleep_for(1ms);
    }
    ASSERT_EQ(a[1], 1) << "the task's write is not visible while it runs";
    a[0] = 42;
    EXPECT_EQ(f.get(), 42);
}

TEST(MpiPool, Soak_10000Tasks_5PercentFaults_EveryFutureResolvesWithItsKind) {
    mpi_pool pool;
    constexpr int n = 10'000;
    std::vector<procpool::future<int>> fs;
    fs.reserve(n);
    for (int i = 0; i < n; ++i) fs.push_back(pool.submit(soak_task, i));
    int ok = 0, thrown = 0, aborted = 0, exited = 0;
    std::set<std::string> ranks_with_deaths;
    for (int i = 0; i < n; ++i) {
        auto& f = fs[static_cast<std::size_t>(i)];
        try {
            ASSERT_EQ(f.get(), 2 * i);
            ++ok;
        } catch (const procpool::remote_exception& e) {
            EXPECT_EQ(i % 60, 7) << i;
            EXPECT_EQ(e.message(), "soak " + std::to_string(i));
            ++thrown;
        } catch (const procpool::worker_died& e) {
            const std::string what = e.what();
            const auto at = what.find("MPI rank ");
            if (at != std::string::npos) ranks_with_deaths.insert(what.substr(at, 10));
            if (e.signal() == SIGABRT) {
                EXPECT_EQ(i % 60, 27) << i;
                ++aborted;
            } else {
                EXPECT_EQ(i % 60, 47) << i << " " << what;
                EXPECT_EQ(e.exit_code(), 5);
                ++exited;
            }
        }
    }
    const int per_kind = n / 60 + (n % 60 > 7 ? 1 : 0);
    EXPECT_EQ(thrown, per_kind);
    EXPECT_EQ(aborted, n / 60 + (n % 60 > 27 ? 1 : 0));
    EXPECT_EQ(exited, n / 60 + (n % 60 > 47 ? 1 : 0));
    EXPECT_EQ(ok + thrown + aborted + exited, n);
    if (procpool::mpi_size() > 2) {
        EXPECT_GE(ranks_with_deaths.size(), 2u) << "faults should be spread over the ranks";
    }
}

// The thread that resolves a pool's last task (rank 0's engine) must not touch the pool
// once the destructor can see it idle. A stress test only: the window is a few
// instructions wide and no sanitizer runs under MPI here.
TEST(MpiPool, PoolDestroyedAsItsLastTaskResolves_Stress) {
    for (int i = 0; i < 40; ++i) {
        mpi_pool pool({.workers_per_rank = 1});
        static_cast<void>(pool.submit(square, i));  // the future is dropped at once
    }
}

// Several threads submit tasks that throw, abort or exit, and cancel some of them (some
// twice, some after they resolved): every future resolves.
TEST(MpiPool, ConcurrentSubmittersFaultsAndCancels_EveryFutureResolves) {
    mpi_pool pool;
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&pool, t] {
            std::vector<procpool::future<int>> fs;
            for (int i = 0; i < 600; ++i) {
                fs.push_back(pool.submit(soak_task, 600 * t + i));
                if (i % 7 == 0) fs.back().cancel();
                if (i % 11 == 0) fs[static_cast<std::size_t>(i / 2)].cancel();
            }
            for (std::size_t i = 0; i < fs.size(); ++i) {
                fs[i].wait();
                if (i % 5 == 0) fs[i].cancel();  // resolved already: nothing happens
                if (!fs[i].cancelled() && fs[i].exception() == nullptr) {
                    EXPECT_EQ(fs[i].get(), 2 * (600 * t + static_cast<int>(i)));
                }
            }
        });
    }
    for (auto& th : threads) th.join();
}

// Pools opened and closed in a loop and from several threads at once: ids, CLOSE after
// the last reply, the ranks' local pools.
TEST(MpiPool, PoolsOpenedAndClosedFromSeveralThreads) {
    for (int i = 0; i < 10; ++i) {
        mpi_pool p({.workers_per_rank = 1});
        auto f = p.submit(square, i);
        if (i % 2 == 0) p.shutdown({.wait = false});
        EXPECT_EQ(f.get(), i * i);
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([t] {
            for (int k = 0; k < 4; ++k) {
                mpi_pool p({.workers_per_rank = 1});
                auto out = p.map(square, std::vector<int>(500, t + k), 7);
                EXPECT_EQ(out.back(), (t + k) * (t + k));
            }
        });
    }
    for (auto& th : threads) th.join();
}

// A pool destroyed while other threads wait on its futures and cancel them.
TEST(MpiPool, DestroyedWhileOtherThreadsWaitAndCancel) {
    file_gate gate;
    auto pool = std::make_unique<mpi_pool>();
    for (int i = 0; i < 200; ++i) static_cast<void>(pool->submit(square, i));  // dropped
    auto gated = pool->submit(file_gate::wait_then_return, gate.path(), 1);
    auto plain = pool->submit(square, 3);
    std::thread waiter([plain] { EXPECT_EQ(plain.get(), 9); });
    std::thread canceller([gated] {
        gated.cancel();
        gated.cancel();
    });
    canceller.join();
    gate.open();   // whether or not the cancel reached it first
    pool.reset();  // waits for every task
    waiter.join();
    EXPECT_TRUE(gated.ready());
    EXPECT_FALSE(gated.cancel());
}

// An initializer that throws or exits on the serving ranks fails the pool's tasks with
// the reason and the rank; nothing hangs, the pool closes.
TEST(MpiPool, InitializerThatThrowsOrExits_FailsTasksNamingTheRank) {
    {
        mpi_pool pool({.initializer = procpool::worker_initializer(init_throws, 1)});
        try {
            static_cast<void>(pool.submit(square, 2).get());
            FAIL() << "no exception";
        } catch (const procpool::error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("init failed on purpose"), std::string::npos) << what;
            if (multi_rank()) {
                EXPECT_NE(what.find("MPI rank"), std::string::npos) << what;
            }
        }
    }
    mpi_pool pool({.initializer = procpool::worker_initializer(init_exits, 9)});
    try {
        static_cast<void>(pool.submit(square, 2).get());
        FAIL() << "no exception";
    } catch (const procpool::error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("exit code 9"), std::string::npos) << what;
        if (multi_rank()) {
            EXPECT_NE(what.find("MPI rank"), std::string::npos) << what;
        }
    }
}

// A serving rank's fork server killed from outside: the task on it fails, the rank
// starts another and goes on serving, new pools included.
TEST(MpiPool, ForkServerKilled_RankKeepsServing) {
    mpi_pool pool({.workers_per_rank = 1});
    EXPECT_THROW(static_cast<void>(pool.submit(kill_fork_server, 0).get()), procpool::worker_died);
    auto out = pool.map(square, std::vector<int>(50, 4), 1);
    EXPECT_EQ(out.back(), 16);
    mpi_pool another({.workers_per_rank = 1});
    EXPECT_EQ(another.submit(square, 5).get(), 25);
}

// A serving rank that stops running (SIGSTOP here; a stalled node or a hung file system in
// real life) cannot enforce its tasks' timeouts: rank 0 pings it, and once it has not
// answered for a while past a task's timeout its tasks fail (task_timeout, naming the rank)
// and it gets no new ones. Continued, it answers again and the pool goes on.
TEST(MpiPool, SilentRank_TimedTaskStillResolves_ThenTheRankServesAgain) {
    if (!multi_rank()) GTEST_SKIP() << "the task would stop this program itself";
    procpool_test::temp_dir dir;
    mpi_pool pool({.workers_per_rank = 1, .task_timeout = 1s});
    auto f = pool.submit(stop_my_rank, dir.path());
    const bool resolved = f.wait_for(2min);  // a watchdog, not a timing assertion
    while (!std::filesystem::exists(dir.path() + "/rank-pid")) std::this_thread::sleep_for(1ms);
    long rank_pid = 0;
    std::ifstream(dir.path() + "/rank-pid") >> rank_pid;
    kill(static_cast<pid_t>(rank_pid), SIGCONT);
    ASSERT_TRUE(resolved) << "a task with a 1 s timeout on a frozen rank never resolved";
    try {
        static_cast<void>(f.get());
        FAIL() << "no exception";
    } catch (const procpool::task_timeout& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("stopped answering"), std::string::npos) << what;
        EXPECT_NE(what.find("MPI rank"), std::string::npos) << what;
    }
    // Continued, the rank answers again; every task resolves with its value whichever
    // rank runs it.
    const auto out = pool.map(square, std::vector<int>(200, 3), 1);
    EXPECT_EQ(out, std::vector<int>(200, 9));
    mpi_pool another({.workers_per_rank = 1});
    EXPECT_EQ(another.submit(square, 6).get(), 36);
}

// Workers are no MPI ranks: the launcher's variables (which would make an MPI program a
// task starts take itself for this rank) are not in their environment; the pool's own
// variables are.
TEST(MpiPool, WorkersDoNotSeeTheLaunchersVariables) {
    mpi_pool pool({.workers_per_rank = 1, .env = {{"PROCPOOL_TEST_VAR", "kept"}}});
    for (int i = 0; i < 8; ++i) {
        EXPECT_EQ(pool.submit(launcher_env_and, std::string("PROCPOOL_TEST_VAR")).get(), "| kept");
    }
}

TEST(MpiPool, BadOptionsAreClearErrors) {
    EXPECT_THROW(mpi_pool({.workers_per_rank = -1}), procpool::invalid_argument);
    EXPECT_THROW(mpi_pool({.in_flight_per_worker = -1}), procpool::invalid_argument);
    EXPECT_THROW(mpi_pool({.task_timeout = 0ms}), procpool::invalid_argument);
}

TEST(MpiPool, ImapOverAnEndlessInput_StopsEarly_AndThePoolGoesOn) {
    mpi_pool pool;
    std::vector<int> got;
    {
        auto s = pool.imap(square, naturals{}, {.chunksize = 10, .max_in_flight = 4});
        for (int v : s) {
            got.push_back(v);
            if (got.size() == 1000) break;
        }
    }  // closing cancels the chunks that have not started and waits for the others
    ASSERT_EQ(got.size(), 1000u);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(got[static_cast<std::size_t>(i)], i * i);
    std::vector<int> unordered;
    for (int v : pool.imap_unordered(square, std::vector<int>{1, 2, 3, 4, 5}, {.chunksize = 1})) {
        unordered.push_back(v);
    }
    std::sort(unordered.begin(), unordered.end());
    EXPECT_EQ(unordered, (std::vector<int>{1, 4, 9, 16, 25}));
    EXPECT_EQ(pool.submit(square, 3).get(), 9);
}

TEST(MpiPool, CancelPending_NeverStopsARunningTask) {
    mpi_pool pool({.in_flight_per_worker = 1});
    file_gate gate;
    std::vector<procpool::future<int>> running;
    for (int i = 0; i < pool.workers(); ++i) {
        running.push_back(pool.submit(file_gate::wait_then_return, gate.path(), i));
    }
    gate.wait_started();  // at least one runs now
    auto queued = pool.submit(square, 7);
    // Requests only: each resolves as cancelled (not started) or with its value.
    static_cast<void>(queued.cancel_pending());
    std::size_t refused = 0;
    for (auto& r : running) refused += r.cancel_pending() ? 0 : 1;
    EXPECT_GE(refused, 1u) << "a task that started was cancelled";
    gate.open();
    int values = 0;
    for (int i = 0; i < pool.workers(); ++i) {
        auto& r = running[static_cast<std::size_t>(i)];
        r.wait();
        if (r.cancelled()) continue;
        EXPECT_EQ(r.get(), i);
        ++values;
    }
    EXPECT_GE(values, 1);  // the started one ran to its end
    queued.wait();
    if (!queued.cancelled()) {
        EXPECT_EQ(queued.get(), 49);
    }
    EXPECT_EQ(pool.submit(square, 2).get(), 4);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::mpi_init(argc, argv);  // ranks other than 0 serve and never return
    testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
