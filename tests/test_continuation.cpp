// Continuations (then, when_all, when_any) and coroutines over procpool::future.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "procpool/procpool.hpp"
#include "process_support.hpp"

using procpool::future;
using procpool::process_pool;
using procpool::promise;
using procpool::thread_pool;
using procpool_test::file_gate;
using procpool_test::thread_count;

namespace {

// ---- tasks for process pools (free functions) ------------------------------------------

int square(int x) { return x * x; }
int add(int a, int b) { return a + b; }

struct custom_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- then ------------------------------------------------------------------------------

TEST(Then, RunsOnTheExecutorWithTheValue) {
    thread_pool tp({.workers = 2});
    promise<int> src;
    std::atomic<std::thread::id> ran_on{};
    auto out = procpool::then(src.get_future(), tp, [&ran_on](int v) {
        ran_on = std::this_thread::get_id();
        return std::to_string(v * 2);
    });
    EXPECT_FALSE(out.ready());  // nothing runs before the source completes
    src.set_value(21);
    EXPECT_EQ(out.get(), "42");
    EXPECT_NE(ran_on.load(), std::this_thread::get_id());  // a worker ran it, not the setter
}

TEST(Then, ErrorPropagatesWithoutCallingFn) {
    thread_pool tp({.workers = 1});
    std::atomic<bool> called{false};
    auto src = tp.submit([]() -> int { throw custom_error("boom"); });
    auto out = procpool::then(src, tp, [&called](int v) {
        called = true;
        return v;
    });
    EXPECT_THROW(out.get(), custom_error);
    EXPECT_FALSE(called.load());
}

TEST(Then, FnTakingTheFutureIsAlwaysCalled) {
    thread_pool tp({.workers = 1});
    auto src = tp.submit([]() -> int { throw custom_error("boom"); });
    auto out = procpool::then(src, tp, [](future<int> f) {
        EXPECT_TRUE(f.ready());
        try {
            f.get();
        } catch (const custom_error& e) {
            return std::string("caught ") + e.what();
        }
        return std::string("no error");
    });
    EXPECT_EQ(out.get(), "caught boom");
}

TEST(Then, VoidSourceAndVoidContinuation) {
    thread_pool tp({.workers = 2});
    std::atomic<int> steps{0};
    auto a = tp.submit([&steps] { steps += 1; });
    auto b = procpool::then(a, tp, [&steps] { return steps.load() + 10; });
    EXPECT_EQ(b.get(), 11);
    auto c = procpool::then(b, tp, [&steps](int v) { steps += v; });
    static_assert(std::is_same_v<decltype(c), future<void>>);
    c.get();
    EXPECT_EQ(steps.load(), 12);
}

TEST(Then, CancelledSourceGivesTaskCancelled) {
    thread_pool tp({.workers = 1});
    promise<void> gate;
    auto blocker = tp.submit([g = gate.get_future()] { g.wait(); });
    auto queued = tp.submit([] { return 1; });
    ASSERT_TRUE(queued.cancel());  // still queued behind the blocker
    std::atomic<bool> called{false};
    auto out = procpool::then(queued, tp, [&called](int v) {
        called = true;
        return v;
    });
    EXPECT_THROW(out.get(), procpool::task_cancelled);
    EXPECT_FALSE(called.load());
    gate.set_value();
    blocker.get();
}

TEST(Then, ChainsSeveralSteps) {
    thread_pool tp({.workers = 2});
    auto f = procpool::then(procpool::then(tp.submit([] { return 2; }), tp,
                                           [](int v) { return v + 1; }),
                            tp, [](int v) { return v * 10; });
    EXPECT_EQ(f.get(), 30);
}

TEST(Then, ProcessComputeThenThreadWrite) {
    process_pool proc({.workers = 2});
    thread_pool io({.workers = 2});
    std::vector<future<std::string>> written;
    for (int i = 0; i < 20; ++i) {
        written.push_back(procpool::then(proc.submit(square, i), io, [i](int v) {
            return std::to_string(i) + "^2=" + std::to_string(v);
        }));
    }
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(written[static_cast<std::size_t>(i)].get(),
                  std::to_string(i) + "^2=" + std::to_string(i * i));
    }
}

TEST(Then, ThreadResultContinuedInAProcess) {
    thread_pool tp({.workers = 1});
    process_pool proc({.workers = 1});
    auto f = procpool::then(tp.submit([] { return 9; }), proc, square);
    EXPECT_EQ(f.get(), 81);
}

TEST(Then, ProcessResultContinuedInTheSamePool) {
    // The continuation is submitted from the thread that completes the source (the
    // pool's own supervisor, or this thread while it waits): that must not deadlock.
    process_pool proc({.workers = 2});
    std::vector<future<int>> fs;
    for (int i = 0; i < 50; ++i) {
        fs.push_back(procpool::then(proc.submit(square, i), proc, square));
    }
    for (int i = 0; i < 50; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i * i * i * i);
}

TEST(Then, ShutDownExecutorFailsTheResult) {
    thread_pool gone({.workers = 1});
    gone.shutdown();
    promise<int> src;
    auto out = procpool::then(src.get_future(), gone, [](int v) { return v; });
    src.set_value(1);
    EXPECT_THROW(out.get(), procpool::pool_shut_down);
}

// ---- when_all / when_any ----------------------------------------------------------------

TEST(WhenAll, ValuesInInputOrderOnceAllComplete) {
    std::vector<promise<int>> ps(3);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    auto all = procpool::when_all(fs);
    ps[2].set_value(30);
    ps[0].set_value(10);
    EXPECT_FALSE(all.ready());
    ps[1].set_value(20);
    ASSERT_TRUE(all.ready());
    EXPECT_EQ(all.get(), (std::vector<int>{10, 20, 30}));
}

TEST(WhenAll, WaitsForAllThenFailsWithFirstFailureInInputOrder) {
    std::vector<promise<int>> ps(3);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    auto all = procpool::when_all(fs);
    ps[1].set_exception(std::make_exception_ptr(custom_error("second")));
    EXPECT_FALSE(all.ready());  // does not resolve while others still run
    ps[2].set_value(3);
    ps[0].set_exception(std::make_exception_ptr(std::logic_error("first")));
    ASSERT_TRUE(all.ready());
    EXPECT_THROW(all.get(), std::logic_error);
}

TEST(WhenAll, EmptyAndVoidAndVariadic) {
    EXPECT_TRUE(procpool::when_all(std::vector<future<int>>{}).get().empty());

    std::vector<promise<void>> ps(2);
    auto all_void = procpool::when_all(std::vector<future<void>>{ps[0].get_future(),
                                                                 ps[1].get_future()});
    ps[0].set_value();
    EXPECT_FALSE(all_void.ready());
    ps[1].set_exception(std::make_exception_ptr(custom_error("v")));
    EXPECT_THROW(all_void.get(), custom_error);

    promise<int> a;
    promise<std::string> b;
    auto both = procpool::when_all(a.get_future(), b.get_future());
    b.set_value("x");
    EXPECT_FALSE(both.ready());
    a.set_value(5);
    EXPECT_EQ(both.get(), std::make_tuple(5, std::string("x")));
}

TEST(WhenAll, OverProcessPoolFutures) {
    process_pool proc({.workers = 2});
    std::vector<future<int>> fs;
    for (int i = 0; i < 10; ++i) fs.push_back(proc.submit(add, i, 100));
    auto v = procpool::when_all(fs).get();
    ASSERT_EQ(v.size(), 10u);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(v[static_cast<std::size_t>(i)], i + 100);
}

TEST(WhenAny, IndexOfFirstToComplete) {
    std::vector<promise<int>> ps(3);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    auto any = procpool::when_any(fs);
    EXPECT_FALSE(any.ready());
    ps[2].set_value(1);
    ps[0].set_value(2);
    EXPECT_EQ(any.get(), 2u);
}

TEST(WhenAny, AFailureCountsAsCompletion) {
    std::vector<promise<int>> ps(2);
    auto any = procpool::when_any(std::vector<future<int>>{ps[0].get_future(),
                                                           ps[1].get_future()});
    ps[1].set_exception(std::make_exception_ptr(custom_error("x")));
    EXPECT_EQ(any.get(), 1u);
}

TEST(WhenAny, AlreadyDoneLowestIndexWinsAndEmptyFails) {
    std::vector<promise<int>> ps(4);
    ps[3].set_value(3);
    ps[1].set_value(1);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    EXPECT_EQ(procpool::when_any(fs).get(), 1u);
    EXPECT_THROW(procpool::when_any(std::vector<future<int>>{}).get(),
                 procpool::invalid_argument);
}

// ---- coroutines -------------------------------------------------------------------------

future<int> plus_one(future<int> f) { co_return co_await f + 1; }

future<std::thread::id> resumed_on(future<int> f) {
    co_await f;
    co_return std::this_thread::get_id();
}

future<std::thread::id> resumed_on_pool(thread_pool& tp, future<int> f) {
    co_await procpool::resume_on(tp, f);
    co_return std::this_thread::get_id();
}

future<std::string> catches(future<int> f) {
    try {
        co_await f;
    } catch (const custom_error& e) {
        co_return std::string("caught ") + e.what();
    }
    co_return "no error";
}

future<void> escapes(future<void> f) { co_await f; }

TEST(Coroutine, AwaitsThreadPoolFuture) {
    thread_pool tp({.workers = 1});
    promise<void> gate;
    auto f = tp.submit([g = gate.get_future()] {
        g.wait();
        return 41;
    });
    auto r = plus_one(f);
    EXPECT_FALSE(r.ready());  // suspended, not blocked: we got here
    gate.set_value();
    EXPECT_EQ(r.get(), 42);
}

TEST(Coroutine, AlreadyDoneFutureContinuesAtOnce) {
    promise<int> p;
    p.set_value(1);
    auto r = resumed_on(p.get_future());
    ASSERT_TRUE(r.ready());
    EXPECT_EQ(r.get(), std::this_thread::get_id());
}

TEST(Coroutine, ResumesOnCompletingThreadByDefault) {
    std::thread::id completer;
    promise<int> p;
    auto r = resumed_on(p.get_future());
    EXPECT_FALSE(r.ready());
    std::thread t([&] {
        completer = std::this_thread::get_id();
        p.set_value(1);
    });
    t.join();
    EXPECT_EQ(r.get(), completer);
}

TEST(Coroutine, ResumeOnExecutor) {
    thread_pool tp({.workers = 1});
    auto worker_id = tp.submit([] { return std::this_thread::get_id(); }).get();
    promise<int> p;
    auto r = resumed_on_pool(tp, p.get_future());
    p.set_value(1);  // completes on this thread; the coroutine must resume on the worker
    EXPECT_EQ(r.get(), worker_id);
    EXPECT_NE(worker_id, std::this_thread::get_id());
}

TEST(Coroutine, ErrorsRethrowAndEscape) {
    promise<int> p;
    auto r = catches(p.get_future());
    p.set_exception(std::make_exception_ptr(custom_error("boom")));
    EXPECT_EQ(r.get(), "caught boom");

    promise<void> q;
    auto e = escapes(q.get_future());
    q.set_exception(std::make_exception_ptr(custom_error("out")));
    EXPECT_THROW(e.get(), custom_error);
}

TEST(Coroutine, AwaitsProcessPoolFuture) {
    process_pool proc({.workers = 1});
    EXPECT_EQ(plus_one(proc.submit(square, 6)).get(), 37);
}

TEST(Coroutine, TenThousandAwaitersOfProcessPoolFuturesAddNoThreads) {
    constexpr int n = 10'000;
    process_pool proc({.workers = 2});
    file_gate gate;
    EXPECT_EQ(proc.submit(square, 2).get(), 4);  // the pool's own threads are up
    const int before = thread_count();
    ASSERT_GT(before, 0);
    std::vector<future<int>> results;
    results.reserve(n);
    for (int i = 0; i < n; ++i) {
        results.push_back(plus_one(proc.submit(file_gate::wait_then_return, gate.path(), i)));
    }
    // Every coroutine is suspended on a gated task: none can have finished.
    for (const auto& r : results) EXPECT_FALSE(r.ready());
    const int during = thread_count();
    EXPECT_LE(during, before + 2) << "threads grew with the number of suspended coroutines";
    gate.open();
    auto all = procpool::when_all(results).get();
    for (int i = 0; i < n; ++i) EXPECT_EQ(all[static_cast<std::size_t>(i)], i + 1);
}

}  // namespace
