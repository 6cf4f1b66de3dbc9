// run_in, run_in_threads: input order, argument unpacking, one outcome per task whatever
// happens to it, retries, fail_fast, on_result, progress lines.
#include "procpool/run.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <forward_list>
#include <list>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "run_support.hpp"
#include "support.hpp"

namespace {

using procpool_test::numbers;
using namespace std::chrono_literals;
using procpool::failure_kind;
using procpool::outcome;
using procpool::run_in;
using procpool::run_in_threads;

using procpool_test::gate;

int add(int a, int b) {
    return a + b;
}

// ---- results -------------------------------------------------------------------------

TEST(RunInThreads, Results_AreInInputOrder_WhateverOrderTasksFinishIn) {
    std::vector<int> delays_us(64);
    std::mt19937 rng(7);
    for (auto& d : delays_us) d = static_cast<int>(rng() % 3000);

    auto out = run_in_threads(
        [](int us) {
            std::this_thread::sleep_for(std::chrono::microseconds(us));
            return us * 2;
        },
        delays_us, {.workers = 4});

    ASSERT_EQ(out.size(), delays_us.size());
    for (std::size_t i = 0; i < out.size(); ++i) {
        ASSERT_TRUE(out[i]) << out[i].error().what();
        EXPECT_EQ(out[i].index(), i);
        EXPECT_EQ(out[i].value(), delays_us[i] * 2);
    }
}

TEST(RunInThreads, TupleAndPairElements_AreUnpackedIntoArguments) {
    std::vector<std::tuple<int, int>> tuples = {{1, 2}, {3, 4}};
    std::vector<std::pair<int, int>> pairs = {{5, 6}, {7, 8}};

    auto a = run_in_threads(add, tuples);
    auto b = run_in_threads(add, pairs);

    EXPECT_EQ(a[0].value(), 3);
    EXPECT_EQ(a[1].value(), 7);
    EXPECT_EQ(b[0].value(), 11);
    EXPECT_EQ(b[1].value(), 15);
}

TEST(RunInThreads, OneElementTuples_AreTheSeedsTaskList) {
    // The seed writes tasks = [(50_00000,), (60_00000,)] and calls func(*args).
    std::vector<std::tuple<long>> tasks = {{5}, {6}};
    auto out = run_in_threads([](long n) { return n * n; }, tasks);
    EXPECT_EQ(out[0].value(), 25);
    EXPECT_EQ(out[1].value(), 36);
}

TEST(RunInThreads, TupleElement_IsPassedWhole_WhenTheFunctionTakesATuple) {
    std::vector<std::tuple<int, int>> tasks = {{1, 2}};
    auto out =
        run_in_threads([](const std::tuple<int, int>& t) { return std::get<0>(t) * 10; }, tasks);
    EXPECT_EQ(out[0].value(), 10);
}

TEST(RunInThreads, AnyInputRange_IsAccepted_SizedOrNot) {
    std::list<std::string> words = {"a", "bb", "ccc"};
    auto lengths = run_in_threads([](const std::string& s) { return s.size(); }, words);
    auto evens = run_in_threads([](int i) { return i; }, std::forward_list<int>{0, 2, 4, 6, 8});

    ASSERT_EQ(lengths.size(), 3u);
    EXPECT_EQ(lengths[2].value(), 3u);
    ASSERT_EQ(evens.size(), 5u);
    EXPECT_EQ(evens[4].value(), 8);
}

TEST(RunInThreads, NoTasks_GivesNoOutcomes) {
    auto out = run_in_threads([](int i) { return i; }, std::vector<int>{});
    EXPECT_TRUE(out.empty());
}

TEST(RunInThreads, VoidTasks_ReportSuccessWithoutAValue) {
    std::atomic<int> sum{0};
    auto out = run_in_threads([&](int i) { sum += i; }, std::vector{1, 2, 3});
    ASSERT_EQ(out.size(), 3u);
    for (auto& o : out) {
        EXPECT_TRUE(o.has_value());
        EXPECT_NO_THROW(o.value());
    }
    EXPECT_EQ(sum.load(), 6);
}

// ---- errors: one outcome per task, never an exception ---------------------------------

TEST(RunInThreads, TaskThatThrows_FailsOnlyItself_WithItsOwnExceptionType) {
    auto out = run_in_threads(
        [](int i) {
            if (i == 3) throw std::out_of_range("index 3 is out of range");
            return i;
        },
        numbers(6));

    for (int i = 0; i < 6; ++i) {
        if (i == 3) continue;
        EXPECT_EQ(out[static_cast<std::size_t>(i)].value(), i);
    }
    const auto& o = out[3];
    ASSERT_FALSE(o);
    EXPECT_EQ(o.error().kind(), failure_kind::exception);
    EXPECT_STREQ(o.error().what(), "task 3 failed: std::out_of_range: index 3 is out of range");
    EXPECT_EQ(o.error().cause_message(), "std::out_of_range: index 3 is out of range");
    EXPECT_EQ(o.error().index(), 3u);
    EXPECT_EQ(o.error().attempts(), 1);
    ASSERT_NE(o.error().cause_as<std::out_of_range>(), nullptr);
    EXPECT_EQ(o.error().cause_as<std::invalid_argument>(), nullptr);
    EXPECT_THROW(o.error().rethrow_cause(), std::out_of_range);
}

TEST(RunInThreads, ValueOfAFailedOutcome_ThrowsItsTaskError_AndErrorOfASuccessIsALogicError) {
    auto out = run_in_threads(
        [](int i) {
            if (i == 1) throw std::runtime_error("boom");
            return i;
        },
        std::vector{0, 1});

    EXPECT_EQ(out[1].value_or(-1), -1);
    try {
        (void)out[1].value();
        FAIL() << "value() of a failed outcome returned";
    } catch (const procpool::task_error& e) {
        EXPECT_STREQ(e.what(), "task 1 failed: std::runtime_error: boom");
    }
    EXPECT_THROW((void)out[0].error(), std::logic_error);
}

TEST(RunInThreads, TaskError_IsAProcpoolError) {
    auto out = run_in_threads([](int) -> int { throw std::runtime_error("x"); }, std::vector{0});
    const procpool::error& e = out[0].error();
    EXPECT_NE(std::string(e.what()).find("task 0 failed"), std::string::npos);
}

TEST(RunInThreads, NonStandardException_IsNamedByItsType) {
    auto out = run_in_threads([](int) -> int { throw 42; }, std::vector{0});
    EXPECT_STREQ(out[0].error().what(), "task 0 failed: int");
    EXPECT_EQ(out[0].error().kind(), failure_kind::exception);
}

TEST(RunIn, PoolThatShutDown_GivesEveryTaskAShutDownOutcome) {
    procpool::thread_pool pool({.workers = 1});
    pool.shutdown();

    auto out = run_in(
        pool, [](int i) { return i; }, std::vector{1, 2});

    ASSERT_EQ(out.size(), 2u);
    for (auto& o : out) {
        ASSERT_FALSE(o);
        EXPECT_EQ(o.error().kind(), failure_kind::shut_down);
        EXPECT_TRUE(o.error().cause_as<procpool::pool_shut_down>() != nullptr);
    }
}

TEST(RunInThreads, TasksPastTheirTimeout_ReportTimeout_WithoutTheCallWaitingForThem) {
    // Both tasks hang until the test opens the gate, after the call: only their timeout
    // can end it. They share the gate's ownership, as they may still run after the test.
    auto release = std::make_shared<gate>();
    auto returned = std::make_shared<std::atomic<int>>(0);
    auto out = run_in_threads(
        [release, returned](int i) {
            release->wait();
            ++*returned;
            return i;
        },
        std::vector{0, 1}, {.workers = 2, .timeout = 50ms});
    EXPECT_EQ(returned->load(), 0) << "the call waited for the tasks it had given up on";
    release->open();

    for (std::size_t i = 0; i < 2; ++i) {
        ASSERT_FALSE(out[i]);
        EXPECT_EQ(out[i].error().kind(), failure_kind::timeout);
        EXPECT_TRUE(out[i].error().cause_as<procpool::task_timeout>() != nullptr);
        EXPECT_EQ(
            std::string(out[i].error().what()).rfind("task " + std::to_string(i) + " failed: ", 0),
            0u)
            << out[i].error().what();
    }
}

// The next tests need tasks that succeed although the run has a short timeout (it is one
// for all its tasks), on a machine that may be slow. Thread tasks' deadlines are checked
// by the calling thread, between its calls to the pool's `submit` and to `on_result`; a
// task that runs from start to finish while that thread is inside such a call is done
// before its clock can be read, so it succeeds however long it took. These tests run
// their should-succeed tasks only there.

TEST(RunIn, TaskPastItsTimeout_FailsOnlyItself_TheOthersRunAfterItAndSucceed) {
    // Task 0 hangs until the test ends and times out, keeping its worker. Tasks 1..3 wait
    // behind `busy` on the other worker until on_result for task 0 lets them run, and
    // on_result returns once a task queued after them has run (FIFO, one free worker).
    gate release;
    procpool::thread_pool pool({.workers = 2});
    procpool_test::blocker busy(pool);
    auto let_the_rest_run = [&](std::size_t i, const outcome<int>&) {
        if (i != 0) return;
        busy.open();
        pool.submit([] {}).wait();  // tasks 1..3 have finished
    };
    auto out = run_in(pool,
                      [&release](int i) {
                          if (i == 0) release.wait();
                          return i;
                      },
                      numbers(4), {.timeout = 50ms, .on_result = let_the_rest_run});
    release.open();

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().kind(), failure_kind::timeout);
    EXPECT_TRUE(out[0].error().cause_as<procpool::task_timeout>() != nullptr);
    EXPECT_EQ(std::string(out[0].error().what()).rfind("task 0 failed: ", 0), 0u)
        << out[0].error().what();
    for (std::size_t i = 1; i < 4; ++i) {
        ASSERT_TRUE(out[i]) << out[i].error().what();
        EXPECT_EQ(out[i].value(), static_cast<int>(i));
    }
}

TEST(RunIn, Timeout_CountsFromWhenTheTaskStarts_NotWhileItWaitsInTheQueue) {
    // The pool's one worker is held by `busy` for at least ten timeouts while the tasks
    // wait in the queue: long enough for a wrong clock to time them out (nothing here
    // depends on how much longer it takes). Then task 0 fails, and tasks 1..3 run while
    // on_result for it waits for a task queued after them. None of them may time out.
    procpool::thread_pool pool({.workers = 1});
    procpool_test::blocker busy(pool);
    std::atomic<bool> worker_freed{false};
    std::thread opener([&] {
        std::this_thread::sleep_for(500ms);
        worker_freed = true;
        busy.open();
    });
    // Before the worker is freed, task 0 can only have timed out in the queue: then the
    // others are left to time out too.
    auto let_the_rest_run = [&](std::size_t i, const outcome<int>&) {
        if (i == 0 && worker_freed) pool.submit([] {}).wait();
    };
    auto out = run_in(pool,
                      [](int i) {
                          if (i == 0) throw std::runtime_error("task 0 fails");
                          return i;
                      },
                      numbers(4), {.timeout = 50ms, .on_result = let_the_rest_run});
    opener.join();

    EXPECT_FALSE(out[0]);  // by its exception (or by its timeout, on a machine that stalled it)
    for (std::size_t i = 1; i < 4; ++i) {
        ASSERT_TRUE(out[i]) << out[i].error().what();
        EXPECT_EQ(out[i].value(), static_cast<int>(i));
    }
}

TEST(RunInThreads, BadOptions_ThrowInvalidArgument) {
    auto f = [](int i) { return i; };
    EXPECT_THROW((void)run_in_threads(f, std::vector{1}, {.retries = -1}),
                 procpool::invalid_argument);
    EXPECT_THROW((void)run_in_threads(f, std::vector{1}, {.timeout = 0ms}),
                 procpool::invalid_argument);
}

// ---- retries ---------------------------------------------------------------------------

/// A thread pool for `run_in` whose `submit` returns at once the first time and, from the
/// second call on, only once the task it submitted has finished: such a task succeeds
/// whatever the run's timeout (see above).
class pool_finishing_later_submits {
public:
    explicit pool_finishing_later_submits(int workers) : pool_({.workers = workers}) {}

    template <class F, class... A>
        requires std::invocable<std::decay_t<F>, std::decay_t<A>...>
    auto submit(F&& f, A&&... args) {
        auto done = pool_.submit(std::forward<F>(f), std::forward<A>(args)...);
        if (++submits_ > 1) done.wait();
        return done;
    }
    int workers() const noexcept { return pool_.workers(); }
    int submits() const noexcept { return submits_; }

private:
    procpool::thread_pool pool_;
    int submits_ = 0;
};

TEST(RunIn, TimedOutTask_IsRetried_AndSucceedsOnItsSecondAttempt) {
    // A timed-out thread stays busy, so the retry needs a second worker. The first attempt
    // hangs until the test ends; the second one finishes inside `submit`.
    auto release = std::make_shared<gate>();
    auto attempts = std::make_shared<std::atomic<int>>(0);
    pool_finishing_later_submits pool(2);
    auto out = run_in(pool,
                      [release, attempts](int) {
                          if (attempts->fetch_add(1) == 0) release->wait();
                          return 7;
                      },
                      std::vector{0}, {.timeout = 50ms, .retries = 1});
    release->open();

    ASSERT_TRUE(out[0]) << out[0].error().what();
    EXPECT_EQ(out[0].value(), 7);
    EXPECT_EQ(attempts->load(), 2);
    EXPECT_EQ(pool.submits(), 2);
    EXPECT_EQ(out[0].index(), 0u);
}

TEST(RunIn, RetriesRunOut_TheErrorCountsTheAttempts) {
    auto release = std::make_shared<gate>();
    procpool::thread_pool pool({.workers = 3});
    auto out = run_in(pool,
                      [release](int) {
                          release->wait();
                          return 0;
                      },
                      std::vector{0}, {.timeout = 20ms, .retries = 2});
    release->open();

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().attempts(), 3);
    EXPECT_EQ(out[0].error().kind(), failure_kind::timeout);
    EXPECT_NE(std::string(out[0].error().what()).find("task 0 failed after 3 attempts: "),
              std::string::npos)
        << out[0].error().what();
}

TEST(RunInThreads, TaskThatThrows_IsNotRetried) {
    std::atomic<int> calls{0};
    auto out = run_in_threads(
        [&](int) -> int {
            ++calls;
            throw std::runtime_error("deterministic");
        },
        std::vector{0}, {.retries = 3});
    EXPECT_FALSE(out[0]);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(out[0].error().attempts(), 1);
}

// ---- fail_fast -------------------------------------------------------------------------

TEST(RunIn, FailFast_CancelsTheTasksNotStarted_AndNamesTheFirstFailure) {
    // One worker. Task 0 fails; the worker then picks task 1, which holds it until the
    // test has seen a cancelled outcome, so tasks 2..9 are still queued when fail_fast
    // cancels them. Task 0's outcome is reported (on_result) before fail_fast cancels
    // anything, and that report waits until task 1 has started: otherwise the worker,
    // free after task 0, could skip a cancelled task 1 and start task k while the
    // cancelling was still short of k (a busy machine once ran task 8 so).
    gate seen_cancelled;
    gate task1_started;
    procpool::thread_pool pool({.workers = 1});
    auto out = run_in(pool,
                      [&](int i) {
                          if (i == 0) throw std::runtime_error("first failure");
                          if (i == 1) task1_started.open();
                          seen_cancelled.wait();
                          return i;
                      },
                      numbers(10),
                      {.fail_fast = true, .on_result = [&](std::size_t i, const outcome<int>& o) {
                           if (i == 0) task1_started.wait();
                           if (!o && o.error().kind() == failure_kind::cancelled)
                               seen_cancelled.open();
                       }});
    seen_cancelled.open();

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().kind(), failure_kind::exception);
    // Task 1 had started when fail_fast fired: it ran to the end.
    ASSERT_TRUE(out[1]);
    EXPECT_EQ(out[1].value(), 1);
    for (std::size_t i = 2; i < 10; ++i) {
        ASSERT_FALSE(out[i]) << "task " << i << " ran after fail_fast fired";
        EXPECT_EQ(out[i].error().kind(), failure_kind::cancelled);
        EXPECT_EQ(
            std::string(out[i].error().what()),
            "task " + std::to_string(i) + " cancelled: cancelled by fail_fast after task 0 failed");
    }
}

TEST(RunInThreads, WithoutFailFast_EveryTaskRuns) {
    std::atomic<int> ran{0};
    auto out = run_in_threads(
        [&](int i) {
            ++ran;
            if (i == 0) throw std::runtime_error("x");
            return i;
        },
        numbers(10), {.workers = 1});
    EXPECT_EQ(ran.load(), 10);
    for (std::size_t i = 1; i < 10; ++i) EXPECT_TRUE(out[i]);
}

// ---- on_result -------------------------------------------------------------------------

TEST(RunInThreads, OnResult_IsCalledOncePerTask_OnTheCallingThread) {
    const auto caller = std::this_thread::get_id();
    std::vector<int> calls(20, 0);
    bool all_on_caller = true;
    auto out = run_in_threads(
        [](int i) {
            if (i % 7 == 0) throw std::runtime_error("x");
            return i;
        },
        numbers(20), {.workers = 3, .on_result = [&](std::size_t i, const outcome<int>& o) {
                          ++calls[i];
                          all_on_caller = all_on_caller && std::this_thread::get_id() == caller;
                          EXPECT_EQ(o.index(), i);
                          EXPECT_EQ(static_cast<bool>(o), i % 7 != 0);
                      }});
    for (int c : calls) EXPECT_EQ(c, 1);
    EXPECT_TRUE(all_on_caller);
}

TEST(RunIn, OnResultThatThrows_Propagates_AndThePoolStaysUsable) {
    procpool::thread_pool pool({.workers = 2});
    EXPECT_THROW((void)run_in(pool, [](int i) { return i; }, numbers(50),
                              {.on_result =
                                   [](std::size_t, const outcome<int>&) {
                                       throw std::logic_error("callback bug");
                                   }}),
                 std::logic_error);
    EXPECT_EQ(pool.submit([] { return 5; }).get(), 5);
}

TEST(RunInThreads, OnResultThatThrows_AfterATimeout_DoesNotWaitForTheAbandonedTask) {
    auto release = std::make_shared<gate>();
    auto task_ended = std::make_shared<gate>();
    auto call_returned = std::make_shared<std::atomic<bool>>(false);
    auto returned_before_task_ended = std::make_shared<std::atomic<bool>>(false);

    EXPECT_THROW((void)run_in_threads(
                     [=](int) {
                         release->wait();
                         returned_before_task_ended->store(call_returned->load());
                         task_ended->open();
                         return 0;
                     },
                     std::vector{0},
                     {.timeout = 50ms,
                      .on_result = [](std::size_t,
                                      const outcome<int>&) { throw std::runtime_error("stop"); }}),
                 std::runtime_error);
    call_returned->store(true);
    release->open();

    ASSERT_TRUE(task_ended->wait());
    EXPECT_TRUE(returned_before_task_ended->load());
}

// ---- run_in on the caller's pool --------------------------------------------------------

TEST(RunIn, UsesTheCallersPool_WhichStaysUsable) {
    procpool::thread_pool pool({.workers = 2});
    auto out = run_in(pool, add, std::vector<std::pair<int, int>>{{1, 1}, {2, 2}});
    EXPECT_EQ(out[1].value(), 4);
    EXPECT_EQ(pool.submit(add, 3, 3).get(), 6);
}

// ---- progress ----------------------------------------------------------------------------

TEST(RunInThreads, ShowProgress_NotATerminal_WritesAStartAndASummaryLine) {
    testing::internal::CaptureStderr();  // a file: not a terminal
    auto out = run_in_threads(
        [](int i) {
            if (i == 4) throw std::runtime_error("x");
            return i;
        },
        numbers(5), {.workers = 2, .show_progress = true});
    const std::string err = testing::internal::GetCapturedStderr();

    // Everything is exact but the wall time's digits. (No std::regex: GCC 12's <regex>
    // trips -Wmaybe-uninitialized in the sanitizer builds.)
    const std::string start = "procpool: starting run_in_threads: workers = 2, tasks = 5\n";
    const std::string summary =
        "procpool: run_in_threads done: 5 of 5 tasks, 4 ok, 1 failed, wall time ";
    ASSERT_EQ(err.rfind(start + summary, 0), 0u) << err;
    const std::string wall = err.substr(start.size() + summary.size());
    ASSERT_GE(wall.size(), 7u) << err;  // "0.00 s\n"
    EXPECT_EQ(wall.substr(wall.size() - 3), " s\n") << err;
    EXPECT_EQ(wall.find_first_not_of("0123456789."), wall.size() - 3) << err;
    EXPECT_EQ(wall[wall.size() - 6], '.') << err;
}

TEST(RunInThreads, ShowProgressOff_WritesNothing) {
    testing::internal::CaptureStderr();
    auto out = run_in_threads([](int i) { return i; }, std::vector{1, 2});
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

}  // namespace
