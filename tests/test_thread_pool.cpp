// thread_pool: submitting, many tasks, many submitters, shutdown, destruction, map.
#include "procpool/thread_pool.hpp"

#include <grp.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <forward_list>
#include <latch>
#include <limits>
#include <list>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using procpool::future;
using procpool::thread_pool;
using procpool_test::blocker;

// ---- construction -------------------------------------------------------------------

TEST(ThreadPool, ZeroWorkers_ThrowsInvalidArgumentNamingTheValue) {
    try {
        thread_pool pool({.workers = 0});
        FAIL() << "a pool with zero workers was created";
    } catch (const procpool::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("workers = 0"), std::string::npos) << what;
        EXPECT_NE(what.find("at least one"), std::string::npos) << what;
    }
}

TEST(ThreadPool, NegativeWorkers_ThrowsInvalidArgument) {
    EXPECT_THROW(thread_pool({.workers = -3}), procpool::invalid_argument);
}

TEST(ThreadPool, InvalidArgument_IsCatchableAsProcpoolError) {
    EXPECT_THROW(thread_pool({.workers = 0}), procpool::error);
}

TEST(ThreadPool, AbsurdWorkerCount_ThrowsInvalidArgumentNamingTheLimit) {
    for (int n : {thread_pool::max_workers + 1, std::numeric_limits<int>::max()}) {
        try {
            thread_pool pool({.workers = n});
            FAIL() << "a pool with " << n << " workers was accepted";
        } catch (const procpool::invalid_argument& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("workers = " + std::to_string(n)), std::string::npos) << what;
            EXPECT_NE(what.find("at most 4096"), std::string::npos) << what;
        }
    }
}

// Exit codes of the child in ThreadsRefusedByTheSystem_*.
enum thread_limit_outcome : int {
    got_clear_error = 0,
    no_error = 10,
    other_exception = 11,
    message_unclear = 12,
    cannot_drop_root = 13,
};

// Runs in a forked child: allows this process only a few threads, then asks for 64.
int start_pool_under_a_thread_limit() {
    if (geteuid() == 0) {
        // Root is exempt from RLIMIT_NPROC: become a user id no other process has, so
        // the limit counts this process's threads only.
        const auto fresh =
            static_cast<uid_t>(0x7ff00000u + (static_cast<unsigned>(getpid()) & 0xfffffu));
        if (setgroups(0, nullptr) != 0 || setgid(fresh) != 0 || setuid(fresh) != 0) {
            return cannot_drop_root;
        }
    }
    // A few threads start (sanitizer runtimes take one or two of them), the rest are
    // refused. A user id that already runs more processes (tests run as an ordinary user)
    // gets no thread at all: the same failure, without joins to do.
    const rlimit few{8, 8};
    if (setrlimit(RLIMIT_NPROC, &few) != 0) return cannot_drop_root;
    try {
        thread_pool pool({.workers = 64});
        return no_error;
    } catch (const procpool::invalid_argument&) {
        return other_exception;
    } catch (const procpool::error& e) {
        const std::string what = e.what();
        std::fprintf(stderr, "child got: %s\n", what.c_str());
        const bool clear = what.find("could start only ") != std::string::npos &&
                           what.find(" of the 64 worker threads") != std::string::npos &&
                           what.find("fewer workers") != std::string::npos &&
                           what.find("ulimit -u") != std::string::npos;
        return clear ? got_clear_error : message_unclear;
    } catch (...) {
        return other_exception;
    }
}

TEST(ThreadPool, ThreadsRefusedByTheSystem_ThrowsProcpoolErrorAfterJoiningTheStartedOnes) {
    // A real fault: RLIMIT_NPROC makes pthread_create fail with EAGAIN part way through
    // the constructor. Before the fix the started threads were still joinable when the
    // exception left, and the child died in std::terminate (SIGABRT).
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(start_pool_under_a_thread_limit());
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status)) << "the child died by signal " << WTERMSIG(status);
    if (WEXITSTATUS(status) == cannot_drop_root) {
        GTEST_SKIP() << "cannot move the child to an unused user id to apply RLIMIT_NPROC";
    }
    EXPECT_EQ(WEXITSTATUS(status), got_clear_error)
        << "10: no error, 11: another exception type, 12: the message lacks what to do";
}

TEST(ThreadPool, Workers_ReportsTheRequestedCount) {
    thread_pool pool({.workers = 3});
    EXPECT_EQ(pool.workers(), 3);
}

TEST(ThreadPool, DefaultOptions_OneWorkerPerHardwareThread) {
    thread_pool pool;
    EXPECT_EQ(pool.workers(), procpool::default_worker_count());
    EXPECT_GE(pool.workers(), 1);
}

// ---- submit -------------------------------------------------------------------------

TEST(ThreadPool, Submit_PassesArgumentsAndReturnsTheResult) {
    thread_pool pool({.workers = 2});
    auto f = pool.submit([](int a, const std::string& b) { return b + std::to_string(a); }, 4,
                         std::string("n="));
    EXPECT_EQ(f.get(), "n=4");
}

TEST(ThreadPool, Submit_MoveOnlyArgument_IsMovedIntoTheTask) {
    thread_pool pool({.workers = 1});
    auto p = std::make_unique<int>(21);
    auto f = pool.submit([](std::unique_ptr<int> q) { return *q * 2; }, std::move(p));
    EXPECT_EQ(f.get(), 42);
}

TEST(ThreadPool, Submit_CopiesArguments_SoTheCallerMayChangeThemAfterwards) {
    thread_pool pool({.workers = 1});
    blocker busy(pool);
    std::string s = "before";
    auto f = pool.submit([](const std::string& v) { return v; }, s);
    s = "after";
    busy.open();
    EXPECT_EQ(f.get(), "before");
}

TEST(ThreadPool, Submit_MemberFunctionPointer_IsInvokedOnTheObject) {
    struct counter {
        int add(int x) const { return base + x; }
        int base;
    };
    thread_pool pool({.workers = 1});
    auto f = pool.submit(&counter::add, counter{10}, 5);
    EXPECT_EQ(f.get(), 15);
}

TEST(ThreadPool, Submit_ReferenceResult_IsStoredByValue) {
    static std::string global = "kept";
    thread_pool pool({.workers = 1});
    future<std::string> f = pool.submit([]() -> std::string& { return global; });
    EXPECT_EQ(f.get(), "kept");
}

TEST(ThreadPool, OneWorker_RunsQueuedTasksInSubmissionOrder) {
    thread_pool pool({.workers = 1});
    std::vector<int> order;  // only the single worker writes it
    {
        blocker busy(pool);
        for (int i = 0; i < 100; ++i) (void)pool.submit([&order, i] { order.push_back(i); });
    }
    pool.shutdown();
    std::vector<int> expected(100);
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(order, expected);
}

TEST(ThreadPool, HundredThousandTasks_AllResolveWithTheirOwnValue) {
    thread_pool pool({.workers = 2});
    constexpr int n = 100'000;
    std::vector<future<int>> fs;
    fs.reserve(n);
    for (int i = 0; i < n; ++i) fs.push_back(pool.submit([i] { return i; }));
    long long sum = 0;
    for (int i = 0; i < n; ++i) {
        const int v = fs[static_cast<std::size_t>(i)].get();
        ASSERT_EQ(v, i);
        sum += v;
    }
    EXPECT_EQ(sum, static_cast<long long>(n) * (n - 1) / 2);
}

TEST(ThreadPool, SubmitFromEightThreadsAtOnce_EveryTaskRunsOnce) {
    thread_pool pool({.workers = 2});
    constexpr int threads = 8;
    static constexpr int per_thread = 2000;
    std::atomic<int> runs{0};
    std::latch start{threads};
    std::vector<std::vector<future<int>>> fs(threads);
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t) {
        submitters.emplace_back([&, t] {
            start.arrive_and_wait();
            for (int i = 0; i < per_thread; ++i) {
                fs[static_cast<std::size_t>(t)].push_back(pool.submit([&runs, t, i] {
                    runs.fetch_add(1, std::memory_order_relaxed);
                    return t * per_thread + i;
                }));
            }
        });
    }
    for (auto& s : submitters) s.join();
    for (int t = 0; t < threads; ++t) {
        for (int i = 0; i < per_thread; ++i) {
            ASSERT_EQ(fs[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)].get(),
                      t * per_thread + i);
        }
    }
    EXPECT_EQ(runs.load(), threads * per_thread);
}

TEST(ThreadPool, SimultaneousSubmitsToAnIdleWorker_NeverLoseATask) {
    // In each round every submitter pushes one task at the same moment while the worker
    // drains the queue, then waits for it with no later push to rescue a lost one. A task
    // stuck in the queue would show as a future that never resolves.
    thread_pool pool({.workers = 1});
    constexpr int threads = 3;
    constexpr int rounds = 2000;
    std::barrier sync(threads);
    std::atomic<int> completed{0};
    std::atomic<int> stuck{0};
    std::vector<std::thread> submitters;
    for (int t = 0; t < threads; ++t) {
        submitters.emplace_back([&] {
            for (int i = 0; i < rounds && stuck.load() == 0; ++i) {
                sync.arrive_and_wait();
                auto f = pool.submit([i] { return i; });
                // A hang detector, not a timing assertion: a healthy task resolves at once.
                if (!f.wait_for(std::chrono::minutes(5))) {
                    stuck.fetch_add(1);
                } else if (f.get() == i) {
                    completed.fetch_add(1);
                }
                sync.arrive_and_wait();
            }
        });
    }
    for (auto& s : submitters) s.join();
    EXPECT_EQ(stuck.load(), 0) << "a submitted task was never run";
    EXPECT_EQ(completed.load(), threads * rounds);
}

TEST(ThreadPool, TaskMaySubmitMoreTasksToItsOwnPool) {
    thread_pool pool({.workers = 2});
    auto outer = pool.submit([&pool] { return pool.submit([] { return 3; }); });
    EXPECT_EQ(outer.get().get(), 3);
}

// ---- shutdown -----------------------------------------------------------------------

TEST(ThreadPool, Shutdown_WithPendingTasks_StillRunsThemAll) {
    thread_pool pool({.workers = 1});
    std::vector<future<int>> pending;
    {
        blocker busy(pool);
        for (int i = 0; i < 20; ++i) pending.push_back(pool.submit([i] { return i; }));
        pool.shutdown({.wait = false});
        for (auto& f : pending) EXPECT_FALSE(f.ready());
    }
    pool.shutdown();
    for (int i = 0; i < 20; ++i) {
        EXPECT_FALSE(pending[static_cast<std::size_t>(i)].cancelled());
        EXPECT_EQ(pending[static_cast<std::size_t>(i)].get(), i);
    }
}

TEST(ThreadPool, Shutdown_CancelPending_ResolvesQueuedTasksAsCancelled_RunningOneFinishes) {
    thread_pool pool({.workers = 1});
    std::atomic<int> ran{0};
    std::vector<future<void>> pending;
    blocker busy(pool);
    for (int i = 0; i < 20; ++i) pending.push_back(pool.submit([&ran] { ++ran; }));
    pool.shutdown({.wait = false, .cancel_pending = true});
    for (auto& f : pending) {
        ASSERT_TRUE(f.ready()) << "cancel_pending must resolve queued tasks at once";
        EXPECT_TRUE(f.cancelled());
        EXPECT_THROW(f.get(), procpool::task_cancelled);
    }
    busy.open();
    EXPECT_EQ(busy.task().get(), 42) << "the running task is not cancelled";
    pool.shutdown();
    EXPECT_EQ(ran.load(), 0);
}

TEST(ThreadPool, Shutdown_WaitTrue_ReturnsAfterEveryQueuedTaskRan) {
    thread_pool pool({.workers = 2});
    std::atomic<int> ran{0};
    for (int i = 0; i < 500; ++i) (void)pool.submit([&ran] { ++ran; });
    pool.shutdown();
    EXPECT_EQ(ran.load(), 500);
}

TEST(ThreadPool, Shutdown_CalledTwice_IsHarmless) {
    thread_pool pool({.workers = 2});
    auto f = pool.submit([] { return 1; });
    pool.shutdown();
    pool.shutdown();
    pool.shutdown({.wait = false, .cancel_pending = true});
    EXPECT_EQ(f.get(), 1);
}

TEST(ThreadPool, SubmitAfterShutdown_ThrowsPoolShutDown) {
    thread_pool pool({.workers = 1});
    pool.shutdown();
    EXPECT_THROW((void)pool.submit([] { return 1; }), procpool::pool_shut_down);
    EXPECT_THROW((void)pool.submit([] {}), procpool::pool_shut_down);
}

TEST(ThreadPool, SubmitAfterShutdownWithoutWait_ThrowsPoolShutDown) {
    thread_pool pool({.workers = 1});
    blocker busy(pool);
    pool.shutdown({.wait = false});
    EXPECT_THROW((void)pool.submit([] { return 1; }), procpool::pool_shut_down);
}

TEST(ThreadPool, SubmitAfterShutdown_DoesNotRunOrLeakTheTask) {
    thread_pool pool({.workers = 1});
    pool.shutdown();
    auto token = std::make_shared<int>(0);
    std::weak_ptr<int> watch = token;
    bool ran = false;
    EXPECT_THROW((void)pool.submit([token, &ran] { ran = true; }), procpool::pool_shut_down);
    token.reset();
    EXPECT_TRUE(watch.expired()) << "the rejected task's callable was not destroyed";
    EXPECT_FALSE(ran);
}

TEST(ThreadPool, ShutdownWithWait_FromItsOwnTask_ThrowsInvalidArgument) {
    thread_pool pool({.workers = 1});
    auto f = pool.submit([&pool] { pool.shutdown(); });
    EXPECT_THROW(f.get(), procpool::invalid_argument);
}

TEST(ThreadPool, ShutdownWithoutWait_FromItsOwnTask_StopsAcceptingWork) {
    thread_pool pool({.workers = 1});
    auto f = pool.submit([&pool] { pool.shutdown({.wait = false}); });
    f.get();
    EXPECT_THROW((void)pool.submit([] {}), procpool::pool_shut_down);
}

TEST(ThreadPool, Destructor_WithTasksInFlight_RunsEveryQueuedTask) {
    std::atomic<int> ran{0};
    std::vector<future<int>> fs;
    {
        thread_pool pool({.workers = 2});
        for (int i = 0; i < 1000; ++i) {
            fs.push_back(pool.submit([&ran, i] {
                ++ran;
                return i;
            }));
        }
    }
    EXPECT_EQ(ran.load(), 1000);
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(fs[static_cast<std::size_t>(i)].ready());
        EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i);
    }
}

TEST(ThreadPool, Destructor_AfterShutdownWithoutWait_WaitsForTheRunningTask) {
    std::atomic<bool> finished{false};
    std::latch started{1};
    std::latch gate{1};
    std::thread opener;
    {
        thread_pool pool({.workers = 1});
        (void)pool.submit([&] {
            started.count_down();
            gate.wait();
            finished = true;
        });
        started.wait();
        pool.shutdown({.wait = false});
        opener = std::thread([&] { gate.count_down(); });
    }
    EXPECT_TRUE(finished.load());
    opener.join();
}

TEST(ThreadPool, FuturesOutliveThePool) {
    future<std::string> f;
    {
        thread_pool pool({.workers = 1});
        f = pool.submit([] { return std::string(1000, 'z'); });
    }
    EXPECT_EQ(f.get().size(), 1000u);
}

// ---- map ----------------------------------------------------------------------------

TEST(ThreadPoolMap, ReturnsResultsInInputOrder_EvenWhenTheyFinishOutOfOrder) {
    thread_pool pool({.workers = 2});
    std::latch second_done{1};
    std::vector<int> items = {0, 1};
    // Element 0 cannot finish before element 1 has: completion order is reversed.
    auto out = pool.map(
        [&](int i) {
            if (i == 0) second_done.wait();
            if (i == 1) second_done.count_down();
            return i * 10;
        },
        items, 1);
    EXPECT_EQ(out, (std::vector<int>{0, 10}));
}

TEST(ThreadPoolMap, ManyItems_DefaultChunking_InputOrder) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(10'000);
    std::iota(items.begin(), items.end(), 0);
    auto out = pool.map([](int x) { return static_cast<long>(x) * x; }, items);
    ASSERT_EQ(out.size(), items.size());
    for (std::size_t i = 0; i < items.size(); ++i) ASSERT_EQ(out[i], static_cast<long>(i * i));
}

TEST(ThreadPoolMap, WithChunksize_CallsTheFunctionOncePerElement) {
    thread_pool pool({.workers = 2});
    for (std::size_t chunk : {1u, 3u, 7u, 100u, 1000u}) {
        std::vector<std::atomic<int>> calls(100);
        std::vector<int> items(100);
        std::iota(items.begin(), items.end(), 0);
        auto out = pool.map(
            [&calls](int i) {
                calls[static_cast<std::size_t>(i)].fetch_add(1);
                return i + 1;
            },
            items, chunk);
        for (std::size_t i = 0; i < 100; ++i) {
            ASSERT_EQ(calls[i].load(), 1) << "chunksize " << chunk << " element " << i;
            ASSERT_EQ(out[i], static_cast<int>(i) + 1) << "chunksize " << chunk;
        }
    }
}

TEST(ThreadPoolMap, EmptyInput_ReturnsEmpty) {
    thread_pool pool({.workers = 1});
    std::vector<int> none;
    EXPECT_TRUE(pool.map([](int x) { return x; }, none).empty());
}

TEST(ThreadPoolMap, FailingElements_RethrowsTheFirstFailureInInputOrder) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(100);
    std::iota(items.begin(), items.end(), 0);
    std::latch later_failed{1};
    // Element 70 fails first in time; element 30's failure is still the one reported.
    auto f = [&](int i) {
        if (i == 30) {
            later_failed.wait();
            throw std::out_of_range("element 30");
        }
        if (i == 70) {
            later_failed.count_down();
            throw std::invalid_argument("element 70");
        }
        return i;
    };
    try {
        (void)pool.map(f, items, 1);
        FAIL() << "map returned although elements failed";
    } catch (const std::out_of_range& e) {
        EXPECT_STREQ(e.what(), "element 30");
    }
}

TEST(ThreadPoolMap, FailingElement_OtherChunksFinishBeforeMapThrows) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(200);
    std::iota(items.begin(), items.end(), 0);
    std::atomic<int> finished{0};
    EXPECT_THROW((void)pool.map(
                     [&](int i) {
                         if (i == 0) throw std::runtime_error("first element");
                         ++finished;
                         return i;
                     },
                     items, 1),
                 std::runtime_error);
    EXPECT_EQ(finished.load(), 199) << "map threw while other chunks were still running";
}

TEST(ThreadPoolMap, FailingElement_WithLargeChunks_RethrowsItsOwnType) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(1000);
    std::iota(items.begin(), items.end(), 0);
    EXPECT_THROW((void)pool.map(
                     [](int i) {
                         if (i == 500) throw std::out_of_range("500");
                         return i;
                     },
                     items, 64),
                 std::out_of_range);
}

TEST(ThreadPoolMap, ListInput_IsMappedInInputOrder) {
    thread_pool pool({.workers = 2});
    std::list<std::string> words = {"a", "bb", "ccc", "dddd", "eeeee"};
    auto sizes = pool.map([](const std::string& w) { return w.size(); }, words, 2);
    EXPECT_EQ(sizes, (std::vector<std::size_t>{1, 2, 3, 4, 5}));
}

TEST(ThreadPoolMap, UnsizedForwardOnlyInput_IsMappedInInputOrder) {
    thread_pool pool({.workers = 2});
    std::forward_list<int> evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18};
    auto out = pool.map([](int x) { return x / 2; }, evens, 3);
    std::vector<int> expected(10);
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(out, expected);
}

TEST(ThreadPoolMap, BoolResults_AreCorrectForEveryElement) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(1000);
    std::iota(items.begin(), items.end(), 0);
    std::vector<bool> out = pool.map([](int x) { return x % 3 == 0; }, items, 1);
    ASSERT_EQ(out.size(), items.size());
    for (std::size_t i = 0; i < out.size(); ++i) ASSERT_EQ(out[i], i % 3 == 0) << i;
}

TEST(ThreadPoolMap, NonDefaultConstructibleResults) {
    struct wrapped {
        explicit wrapped(int v) : v(v) {}
        int v;
    };
    thread_pool pool({.workers = 2});
    std::vector<int> items = {5, 6, 7};
    auto out = pool.map([](int x) { return wrapped(x); }, items, 1);
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].v, 5);
    EXPECT_EQ(out[2].v, 7);
}

TEST(ThreadPoolMap, VoidFunction_VisitsEveryElement) {
    thread_pool pool({.workers = 2});
    std::vector<int> items(300, 1);
    std::atomic<int> sum{0};
    pool.map([&sum](int x) { sum += x; }, items, 7);
    EXPECT_EQ(sum.load(), 300);
}

TEST(ThreadPoolMap, AfterShutdown_ThrowsPoolShutDown) {
    thread_pool pool({.workers = 1});
    pool.shutdown();
    std::vector<int> items = {1, 2, 3};
    EXPECT_THROW((void)pool.map([](int x) { return x; }, items), procpool::pool_shut_down);
}

}  // namespace
