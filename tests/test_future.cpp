// future<T>: results, errors with their original types, waiting, cancellation and
// done-callbacks; as_completed and wait over many futures.
#include "procpool/future.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "procpool/thread_pool.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using procpool::future;
using procpool::promise;
using procpool::return_when;
using procpool_test::blocker;

struct parse_error : std::runtime_error {
    parse_error(const std::string& what, int line) : std::runtime_error(what), line(line) {}
    int line;
};

struct user_error {
    int code;
    std::string reason;
};

// ---- results and errors -------------------------------------------------------------

TEST(Future, Get_ReturnsTheTaskValue) {
    procpool::thread_pool pool({.workers = 2});
    auto f = pool.submit([] { return std::string("hello"); });
    EXPECT_EQ(f.get(), "hello");
}

TEST(Future, Get_CalledTwiceOnLvalue_ReturnsTheSameValue) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([] { return 7; });
    EXPECT_EQ(f.get(), 7);
    EXPECT_EQ(f.get(), 7);
}

TEST(Future, GetOnRvalue_MovesAMoveOnlyValueOut) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([] { return std::make_unique<int>(5); });
    std::unique_ptr<int> p = std::move(f).get();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(*p, 5);
}

TEST(Future, Get_RethrowsRuntimeErrorSubclass_WithOriginalTypeAndFields) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> int { throw parse_error("bad token", 12); });
    try {
        f.get();
        FAIL() << "get() returned instead of throwing";
    } catch (const parse_error& e) {
        EXPECT_STREQ(e.what(), "bad token");
        EXPECT_EQ(e.line, 12);
    }
}

TEST(Future, Get_RethrowsOutOfRange_AsOutOfRange) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([] { return std::vector<int>{1, 2}.at(5); });
    EXPECT_THROW(f.get(), std::out_of_range);
}

TEST(Future, Get_RethrowsAThrownInt) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> double { throw 17; });
    try {
        f.get();
        FAIL() << "get() returned instead of throwing";
    } catch (int v) {
        EXPECT_EQ(v, 17);
    }
}

TEST(Future, Get_RethrowsAUserStructNotDerivedFromStdException) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> int { throw user_error{3, "disk full"}; });
    try {
        f.get();
        FAIL() << "get() returned instead of throwing";
    } catch (const user_error& e) {
        EXPECT_EQ(e.code, 3);
        EXPECT_EQ(e.reason, "disk full");
    }
}

TEST(Future, Get_CalledTwice_RethrowsTheSameErrorBothTimes) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> int { throw std::out_of_range("idx"); });
    EXPECT_THROW(f.get(), std::out_of_range);
    EXPECT_THROW(f.get(), std::out_of_range);
}

TEST(Future, VoidFuture_GetReturnsAfterTheTaskRan) {
    procpool::thread_pool pool({.workers = 1});
    std::atomic<bool> ran{false};
    future<void> f = pool.submit([&] { ran = true; });
    f.get();
    EXPECT_TRUE(ran.load());
    EXPECT_TRUE(f.ready());
    EXPECT_EQ(f.exception(), nullptr);
}

TEST(Future, VoidFuture_GetRethrowsTheTaskError) {
    procpool::thread_pool pool({.workers = 1});
    future<void> f = pool.submit([] { throw std::logic_error("nope"); });
    EXPECT_THROW(f.get(), std::logic_error);
}

TEST(Future, Exception_IsNullForAValue) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([] { return 1; });
    EXPECT_EQ(f.exception(), nullptr);
}

TEST(Future, Exception_ReturnsTheTaskErrorWithoutThrowing) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> int { throw std::out_of_range("far"); });
    std::exception_ptr e = f.exception();
    ASSERT_NE(e, nullptr);
    EXPECT_THROW(std::rethrow_exception(e), std::out_of_range);
}

TEST(Future, DefaultConstructed_IsNotValid) {
    future<int> f;
    EXPECT_FALSE(f.valid());
}

TEST(Future, Copies_ReferToTheSameTask) {
    promise<int> p;
    future<int> a = p.get_future();
    future<int> b = a;
    EXPECT_TRUE(a == b);
    EXPECT_EQ(a.id(), b.id());
    p.set_value(3);
    EXPECT_TRUE(b.ready());
    EXPECT_EQ(b.get(), 3);
}

TEST(Future, DifferentTasks_CompareUnequal) {
    promise<int> p;
    promise<int> q;
    EXPECT_FALSE(p.get_future() == q.get_future());
}

// ---- waiting ------------------------------------------------------------------------

TEST(Future, Ready_FalseUntilResolved_ThenTrue) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_FALSE(f.ready());
    p.set_value(1);
    EXPECT_TRUE(f.ready());
}

TEST(Future, Wait_ReturnsOnceAnotherThreadResolves) {
    promise<int> p;
    auto f = p.get_future();
    std::thread t([&] { p.set_value(9); });
    f.wait();
    EXPECT_TRUE(f.ready());
    EXPECT_EQ(f.get(), 9);
    t.join();
}

TEST(Future, WaitFor_Unresolved_ReturnsFalseAndLeavesItPending) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_FALSE(f.wait_for(10ms));
    EXPECT_FALSE(f.ready());
}

TEST(Future, WaitFor_Resolved_ReturnsTrue) {
    promise<int> p;
    auto f = p.get_future();
    p.set_value(1);
    EXPECT_TRUE(f.wait_for(0s));
}

TEST(Future, WaitFor_ResolvedDuringTheWait_ReturnsTrue) {
    promise<int> p;
    auto f = p.get_future();
    std::thread t([&] { p.set_value(1); });
    EXPECT_TRUE(f.wait_for(60s));
    t.join();
}

TEST(Future, WaitUntil_PastDeadline_ReturnsFalse) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_FALSE(f.wait_until(std::chrono::steady_clock::now() - 1s));
}

TEST(Future, WaitUntil_AcceptsSystemClock) {
    promise<int> p;
    auto f = p.get_future();
    EXPECT_FALSE(f.wait_until(std::chrono::system_clock::now() + 5ms));
    p.set_value(2);
    EXPECT_TRUE(f.wait_until(std::chrono::system_clock::now() + 60s));
}

// ---- cancellation -------------------------------------------------------------------

TEST(Future, Cancel_BeforeStart_ResolvesAsTaskCancelled) {
    procpool::thread_pool pool({.workers = 1});
    blocker busy(pool);
    std::atomic<bool> ran{false};
    auto f = pool.submit([&] {
        ran = true;
        return 1;
    });
    EXPECT_TRUE(f.cancel());
    EXPECT_TRUE(f.ready());
    EXPECT_TRUE(f.cancelled());
    EXPECT_THROW(f.get(), procpool::task_cancelled);
    busy.open();
    pool.shutdown();
    EXPECT_FALSE(ran.load()) << "a cancelled task must never run";
}

TEST(Future, Cancel_Twice_SecondCallReturnsFalse) {
    procpool::thread_pool pool({.workers = 1});
    blocker busy(pool);
    auto f = pool.submit([] { return 1; });
    EXPECT_TRUE(f.cancel());
    EXPECT_FALSE(f.cancel());
    EXPECT_TRUE(f.cancelled());
}

TEST(Future, Cancel_RunningTask_ReturnsFalseAndTheTaskCompletes) {
    procpool::thread_pool pool({.workers = 1});
    blocker running(pool);
    EXPECT_FALSE(running.task().cancel());
    EXPECT_FALSE(running.task().ready());
    running.open();
    EXPECT_EQ(running.task().get(), 42);
    EXPECT_FALSE(running.task().cancelled());
}

TEST(Future, Cancel_FinishedTask_ReturnsFalseAndKeepsTheValue) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([] { return 5; });
    f.wait();
    EXPECT_FALSE(f.cancel());
    EXPECT_FALSE(f.cancelled());
    EXPECT_EQ(f.get(), 5);
}

TEST(Future, Cancelled_IsFalseForAFailedTask) {
    procpool::thread_pool pool({.workers = 1});
    auto f = pool.submit([]() -> int { throw std::runtime_error("x"); });
    f.wait();
    EXPECT_FALSE(f.cancelled());
}

// ---- done-callbacks -----------------------------------------------------------------

TEST(Future, OnDone_AddedBeforeCompletion_RunsExactlyOnce) {
    promise<int> p;
    auto f = p.get_future();
    int calls = 0;
    f.on_done([&] { ++calls; });
    EXPECT_EQ(calls, 0);
    p.set_value(1);
    EXPECT_EQ(calls, 1);
    f.wait();
    (void)f.get();
    EXPECT_EQ(calls, 1);
}

TEST(Future, OnDone_AddedAfterCompletion_RunsAtOnceOnTheCallingThread) {
    promise<int> p;
    auto f = p.get_future();
    p.set_value(1);
    int calls = 0;
    std::thread::id ran_on;
    f.on_done([&] {
        ++calls;
        ran_on = std::this_thread::get_id();
    });
    EXPECT_EQ(calls, 1);
    EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(Future, OnDone_AddedBeforeCompletion_RunsOnTheCompletingThread) {
    promise<int> p;
    auto f = p.get_future();
    std::thread::id ran_on;
    f.on_done([&] { ran_on = std::this_thread::get_id(); });
    std::thread::id completer;
    std::thread t([&] {
        completer = std::this_thread::get_id();
        p.set_value(1);
    });
    t.join();
    EXPECT_EQ(ran_on, completer);
}

TEST(Future, OnDone_CallbackTakingTheFuture_SeesTheResult) {
    promise<std::string> p;
    auto f = p.get_future();
    std::string seen_before;
    std::string seen_after;
    f.on_done([&](const future<std::string>& g) { seen_before = g.get(); });
    p.set_value("done");
    f.on_done([&](const future<std::string>& g) { seen_after = g.get(); });
    EXPECT_EQ(seen_before, "done");
    EXPECT_EQ(seen_after, "done");
}

TEST(Future, OnDone_CallbackTakingTheFutureByValue_CanKeepIt) {
    promise<int> p;
    future<int> kept;
    p.get_future().on_done([&](future<int> g) { kept = g; });
    p.set_value(8);
    ASSERT_TRUE(kept.valid());
    EXPECT_EQ(kept.get(), 8);
}

TEST(Future, OnDone_RunsForAFailedTask_AndSeesTheError) {
    promise<int> p;
    auto f = p.get_future();
    bool saw_error = false;
    f.on_done([&](const future<int>& g) { saw_error = g.exception() != nullptr; });
    p.set_exception(std::make_exception_ptr(std::out_of_range("o")));
    EXPECT_TRUE(saw_error);
}

TEST(Future, OnDone_RunsWhenTheTaskIsCancelled) {
    procpool::thread_pool pool({.workers = 1});
    blocker busy(pool);
    auto f = pool.submit([] { return 1; });
    bool cancelled_seen = false;
    f.on_done([&](const future<int>& g) { cancelled_seen = g.cancelled(); });
    ASSERT_TRUE(f.cancel());
    EXPECT_TRUE(cancelled_seen);
}

TEST(Future, OnDone_ThrowingCallback_IsDroppedAndLaterCallbacksStillRun) {
    promise<int> p;
    auto f = p.get_future();
    int later = 0;
    f.on_done([] { throw std::runtime_error("callback failure (expected in this test)"); });
    f.on_done([&] { ++later; });
    p.set_value(1);
    EXPECT_EQ(later, 1);
    EXPECT_EQ(f.get(), 1);
    f.on_done([] { throw 5; });  // already done: runs inline, must not propagate either
}

TEST(Future, OnDone_ManyCallbacks_EachRunsExactlyOnce) {
    promise<int> p;
    auto f = p.get_future();
    std::vector<int> calls(10, 0);
    for (int i = 0; i < 5; ++i) f.on_done([&calls, i] { ++calls[static_cast<std::size_t>(i)]; });
    p.set_value(0);
    for (int i = 5; i < 10; ++i) f.on_done([&calls, i] { ++calls[static_cast<std::size_t>(i)]; });
    EXPECT_EQ(calls, std::vector<int>(10, 1));
}

TEST(Future, OnDone_RacingWithCompletion_RunsExactlyOnce) {
    procpool::thread_pool pool({.workers = 2});
    constexpr int n = 2000;
    std::vector<std::atomic<int>> calls(n);
    std::vector<future<int>> fs;
    fs.reserve(n);
    for (int i = 0; i < n; ++i) {
        fs.push_back(pool.submit([i] { return i; }));
        fs.back().on_done([&calls, i] { calls[static_cast<std::size_t>(i)].fetch_add(1); });
    }
    pool.shutdown();
    for (int i = 0; i < n; ++i) ASSERT_EQ(calls[static_cast<std::size_t>(i)].load(), 1) << i;
}

// ---- as_completed -------------------------------------------------------------------

TEST(AsCompleted, YieldsFuturesInCompletionOrder) {
    std::vector<promise<int>> ps(4);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    const std::vector<int> order = {2, 0, 3, 1};
    ps[2].set_value(2);
    std::vector<int> seen;
    for (auto& f : procpool::as_completed(fs)) {
        seen.push_back(f.get());
        // Resolve the next one only now, so exactly one is ever ready to be yielded.
        if (seen.size() < order.size()) {
            const int next = order[seen.size()];
            ps[static_cast<std::size_t>(next)].set_value(next);
        }
    }
    EXPECT_EQ(seen, order);
}

TEST(AsCompleted, PoolTasks_AreYieldedAsTheyFinish) {
    procpool::thread_pool pool({.workers = 3});
    std::latch gate_a{1};
    std::latch gate_b{1};
    std::vector<future<char>> fs;
    fs.push_back(pool.submit([&] {
        gate_a.wait();
        return 'a';
    }));
    fs.push_back(pool.submit([&] {
        gate_b.wait();
        return 'b';
    }));
    fs.push_back(pool.submit([] { return 'c'; }));
    std::string seen;
    for (auto& f : procpool::as_completed(fs)) {
        seen += f.get();
        if (seen == "c") gate_b.count_down();
        if (seen == "cb") gate_a.count_down();
    }
    EXPECT_EQ(seen, "cba");
}

TEST(AsCompleted, AlreadyDoneFutures_ComeFirst_InInputOrder) {
    std::vector<promise<int>> ps(4);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    ps[3].set_value(3);
    ps[1].set_value(1);
    std::vector<int> seen;
    for (auto& f : procpool::as_completed(fs)) {
        seen.push_back(f.get());
        if (seen.size() == 2) {
            ps[2].set_value(2);
            ps[0].set_value(0);
        }
    }
    EXPECT_EQ(seen, (std::vector<int>{1, 3, 2, 0}));
}

TEST(AsCompleted, Timeout_YieldsWhatIsDoneThenThrowsTimeoutError) {
    promise<int> pending;
    promise<int> done;
    done.set_value(1);
    std::vector<future<int>> fs{pending.get_future(), done.get_future()};
    std::vector<int> seen;
    try {
        for (auto& f : procpool::as_completed(fs, 20ms)) seen.push_back(f.get());
        FAIL() << "as_completed finished although a future never completed";
    } catch (const procpool::timeout_error& e) {
        EXPECT_NE(std::string(e.what()).find("1 of 2"), std::string::npos) << e.what();
    }
    EXPECT_EQ(seen, std::vector<int>{1});
    EXPECT_FALSE(fs[0].ready()) << "a timeout must not affect the futures";
}

TEST(AsCompleted, TimeoutBeforeAnyCompletion_ThrowsFromBegin) {
    promise<int> pending;
    std::vector<future<int>> fs{pending.get_future()};
    auto range = procpool::as_completed(fs, 1ms);
    EXPECT_THROW((void)range.begin(), procpool::timeout_error);
}

TEST(AsCompleted, TimeoutIsAProcpoolError) {
    promise<int> pending;
    std::vector<future<int>> fs{pending.get_future()};
    EXPECT_THROW(
        {
            for (auto& f : procpool::as_completed(fs, 1ms)) (void)f;
        },
        procpool::error);
}

TEST(AsCompleted, EmptyInput_YieldsNothing) {
    std::vector<future<int>> fs;
    int n = 0;
    for (auto& f : procpool::as_completed(fs)) {
        (void)f;
        ++n;
    }
    EXPECT_EQ(n, 0);
}

TEST(AsCompleted, FailedFutures_AreYieldedToo) {
    std::vector<promise<int>> ps(2);
    std::vector<future<int>> fs{ps[0].get_future(), ps[1].get_future()};
    ps[0].set_exception(std::make_exception_ptr(std::out_of_range("o")));
    ps[1].set_value(1);
    int failed = 0;
    int ok = 0;
    for (auto& f : procpool::as_completed(fs)) (f.exception() ? failed : ok)++;
    EXPECT_EQ(failed, 1);
    EXPECT_EQ(ok, 1);
}

TEST(AsCompleted, LoopLeftEarly_LaterCompletionsAreHarmless) {
    std::vector<promise<int>> ps(3);
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    ps[0].set_value(0);
    {
        for (auto& f : procpool::as_completed(fs)) {
            EXPECT_EQ(f.get(), 0);
            break;
        }
    }
    ps[1].set_value(1);
    ps[2].set_value(2);
    EXPECT_EQ(fs[2].get(), 2);
}

// ---- wait ---------------------------------------------------------------------------

std::vector<future<int>> futures_of(std::vector<promise<int>>& ps) {
    std::vector<future<int>> fs;
    for (auto& p : ps) fs.push_back(p.get_future());
    return fs;
}

TEST(Wait, AllCompleted_ReturnsOnceEveryFutureIsDone) {
    std::vector<promise<int>> ps(3);
    auto fs = futures_of(ps);
    std::thread t([&] {
        for (int i = 0; i < 3; ++i) ps[static_cast<std::size_t>(i)].set_value(i);
    });
    auto r = procpool::wait(fs);
    t.join();
    EXPECT_EQ(r.done.size(), 3u);
    EXPECT_TRUE(r.not_done.empty());
    for (auto& f : fs) EXPECT_TRUE(f.ready());
}

TEST(Wait, FirstCompleted_ReturnsWhenOneIsDone_AndSplitsTheRest) {
    std::vector<promise<int>> ps(3);
    auto fs = futures_of(ps);
    std::thread t([&] { ps[1].set_value(1); });
    auto r = procpool::wait(fs, return_when::first_completed);
    t.join();
    ASSERT_EQ(r.done.size(), 1u);
    EXPECT_TRUE(r.done[0] == fs[1]);
    ASSERT_EQ(r.not_done.size(), 2u);
    EXPECT_TRUE(r.not_done[0] == fs[0]);
    EXPECT_TRUE(r.not_done[1] == fs[2]);
}

TEST(Wait, FirstCompleted_WithOneAlreadyDone_ReturnsAtOnce) {
    std::vector<promise<int>> ps(2);
    auto fs = futures_of(ps);
    ps[0].set_value(0);
    auto r = procpool::wait(fs, return_when::first_completed);
    EXPECT_EQ(r.done.size(), 1u);
    EXPECT_EQ(r.not_done.size(), 1u);
}

TEST(Wait, FirstException_ReturnsOnTheFirstFailure) {
    std::vector<promise<int>> ps(3);
    auto fs = futures_of(ps);
    ps[0].set_value(0);
    std::thread t([&] { ps[2].set_exception(std::make_exception_ptr(std::runtime_error("x"))); });
    auto r = procpool::wait(fs, return_when::first_exception);
    t.join();
    ASSERT_EQ(r.done.size(), 2u);
    EXPECT_TRUE(r.done[0] == fs[0]);
    EXPECT_TRUE(r.done[1] == fs[2]);
    ASSERT_EQ(r.not_done.size(), 1u);
    EXPECT_TRUE(r.not_done[0] == fs[1]);
}

TEST(Wait, FirstException_WithoutFailures_WaitsForAll) {
    std::vector<promise<int>> ps(3);
    auto fs = futures_of(ps);
    std::thread t([&] {
        for (int i = 0; i < 3; ++i) ps[static_cast<std::size_t>(i)].set_value(i);
    });
    auto r = procpool::wait(fs, return_when::first_exception);
    t.join();
    EXPECT_EQ(r.done.size(), 3u);
    EXPECT_TRUE(r.not_done.empty());
}

TEST(Wait, Timeout_ReturnsThePartitionWithoutThrowing) {
    std::vector<promise<int>> ps(3);
    auto fs = futures_of(ps);
    ps[1].set_value(1);
    for (auto when : {return_when::all_completed, return_when::first_exception}) {
        auto r = procpool::wait(fs, when, 10ms);
        ASSERT_EQ(r.done.size(), 1u);
        EXPECT_TRUE(r.done[0] == fs[1]);
        ASSERT_EQ(r.not_done.size(), 2u);
        EXPECT_TRUE(r.not_done[0] == fs[0]);
        EXPECT_TRUE(r.not_done[1] == fs[2]);
    }
    EXPECT_FALSE(fs[0].ready());
}

TEST(Wait, FirstCompleted_TimeoutWithNothingDone_ReturnsAllNotDone) {
    std::vector<promise<int>> ps(2);
    auto fs = futures_of(ps);
    auto r = procpool::wait(fs, return_when::first_completed, 5ms);
    EXPECT_TRUE(r.done.empty());
    EXPECT_EQ(r.not_done.size(), 2u);
}

TEST(Wait, EmptyInput_ReturnsAtOnce) {
    std::vector<future<int>> fs;
    for (auto when :
         {return_when::first_completed, return_when::first_exception, return_when::all_completed}) {
        auto r = procpool::wait(fs, when);
        EXPECT_TRUE(r.done.empty());
        EXPECT_TRUE(r.not_done.empty());
    }
}

TEST(Wait, PoolFutures_AllCompleted) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<future<int>> fs;
    for (int i = 0; i < 50; ++i) fs.push_back(pool.submit([i] { return i * i; }));
    auto r = procpool::wait(fs);
    ASSERT_EQ(r.done.size(), 50u);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(r.done[static_cast<std::size_t>(i)].get(), i * i);
}

}  // namespace

TEST(FutureWaitFor, DurationMax_MeansNoDeadline) {
    procpool::promise<int> p;
    auto f = p.get_future();
    p.set_value(3);
    EXPECT_TRUE(f.wait_for(std::chrono::nanoseconds::max()));
    EXPECT_TRUE(f.wait_for(std::chrono::hours::max()));
    EXPECT_EQ(f.get(), 3);
}
