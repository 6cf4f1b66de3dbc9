// run_in_processes and run_in on a process_pool: real crashes, real kills, real timeouts,
// each costing only its own task; retries on a fresh worker; fail_fast killing running
// tasks.
#include "procpool/run.hpp"

#include <gtest/gtest.h>

#include <sys/resource.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "process_support.hpp"
#include "run_support.hpp"

namespace {

using procpool_test::numbers;
using namespace std::chrono_literals;
using procpool::failure_kind;
using procpool::run_in_processes;

/// Dies of `sig`, without leaving a core file behind.
[[noreturn]] void die_of(int sig) {
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    std::raise(sig);
    std::_Exit(99);  // not reached for fatal signals
}

int nap_then_square(int i, int sleep_us) {
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    return i * i;
}

int segfault_on_two(int i) {
    if (i == 2) die_of(SIGSEGV);
    return i;
}

int exit_on_one(int i) {
    if (i == 1) std::exit(3);
    return i;
}

int throw_on_one(int i) {
    if (i == 1) throw std::out_of_range("no element 1");
    return i;
}

/// Sleeps for an hour: only a kill (a timeout, fail_fast) ends it in a test's time, and a
/// kill that never comes hangs the test until ctest's timeout fails it.
int sleep_for_an_hour(int i) {
    std::this_thread::sleep_for(1h);
    return i;
}

/// Crashes on its first attempt only: the first run leaves a marker file behind.
int crash_once(std::string marker) {
    if (!std::filesystem::exists(marker)) {
        std::ofstream(marker) << "attempt 1 crashed here\n";
        die_of(SIGKILL);
    }
    return 42;
}

int always_crash(int) {
    die_of(SIGSEGV);
}

int crash_zero_sleep_rest(int i) {
    if (i == 0) die_of(SIGSEGV);
    return sleep_for_an_hour(i);
}

/// An argument that refuses to be serialized: it cannot reach a worker.
struct refuses_to_travel {
    int x = 0;
    template <class Archive>
    void serialize(Archive&) {
        throw std::runtime_error("refuses_to_travel cannot be serialized");
    }
};

int take_it(refuses_to_travel r) {
    return r.x;
}

TEST(RunInProcesses, Results_AreInInputOrder_WhateverOrderTasksFinishIn) {
    std::mt19937 rng(11);
    std::vector<std::tuple<int, int>> tasks;
    for (int i = 0; i < 40; ++i) tasks.emplace_back(i, static_cast<int>(rng() % 3000));

    auto out = run_in_processes(nap_then_square, tasks, {.workers = 3});

    ASSERT_EQ(out.size(), 40u);
    for (int i = 0; i < 40; ++i) {
        const auto& o = out[static_cast<std::size_t>(i)];
        ASSERT_TRUE(o) << o.error().what();
        EXPECT_EQ(o.index(), static_cast<std::size_t>(i));
        EXPECT_EQ(*o, i * i);
    }
}

TEST(RunInProcesses, Segfault_FailsOnlyItsTask_AsWorkerDied) {
    auto out = run_in_processes(segfault_on_two, numbers(6), {.workers = 2});

    for (std::size_t i = 0; i < 6; ++i) {
        if (i == 2) continue;
        EXPECT_EQ(out[i].value(), static_cast<int>(i));
    }
    ASSERT_FALSE(out[2]);
    const auto& e = out[2].error();
    EXPECT_EQ(e.kind(), failure_kind::worker_died);
    EXPECT_EQ(std::string(e.what()).rfind("task 2 failed: worker died (SIGSEGV)", 0), 0u)
        << e.what();
    ASSERT_NE(e.cause_as<procpool::worker_died>(), nullptr);
    EXPECT_EQ(e.cause_as<procpool::worker_died>()->signal(), SIGSEGV);
}

TEST(RunInProcesses, TaskThatExits_FailsOnlyItsTask_WithTheExitCode) {
    auto out = run_in_processes(exit_on_one, std::vector{0, 1, 2}, {.workers = 2});

    EXPECT_TRUE(out[0]);
    EXPECT_TRUE(out[2]);
    ASSERT_FALSE(out[1]);
    EXPECT_EQ(out[1].error().kind(), failure_kind::worker_died);
    ASSERT_NE(out[1].error().cause_as<procpool::worker_died>(), nullptr);
    EXPECT_EQ(out[1].error().cause_as<procpool::worker_died>()->exit_code(), 3);
}

TEST(RunInProcesses, TaskThatThrows_ArrivesAsRemoteException_WithTypeAndMessage) {
    auto out = run_in_processes(throw_on_one, std::vector{0, 1, 2});

    ASSERT_FALSE(out[1]);
    const auto& e = out[1].error();
    EXPECT_EQ(e.kind(), failure_kind::exception);
    EXPECT_STREQ(e.what(), "task 1 failed: std::out_of_range: no element 1");
    ASSERT_NE(e.cause_as<procpool::remote_exception>(), nullptr);
    EXPECT_EQ(e.cause_as<procpool::remote_exception>()->type_name(), "std::out_of_range");
    EXPECT_TRUE(out[0]);
    EXPECT_TRUE(out[2]);
}

TEST(RunInProcesses, ArgumentThatCannotBeSerialized_FailsItsTask_AsSerialization) {
    auto out = run_in_processes(take_it, std::vector<refuses_to_travel>(2), {.workers = 1});

    ASSERT_EQ(out.size(), 2u);
    for (const auto& o : out) {
        ASSERT_FALSE(o);
        EXPECT_EQ(o.error().kind(), failure_kind::serialization);
        EXPECT_NE(o.error().cause_as<procpool::serialization_error>(), nullptr);
        EXPECT_NE(std::string(o.error().what()).find("refuses_to_travel cannot be serialized"),
                  std::string::npos)
            << o.error().what();
    }
}

// A run's timeout applies to all its tasks, and a task that should succeed must not race
// a short one on a slow machine: timed runs here hold only tasks that never finish.

TEST(RunInProcesses, TasksPastTheirTimeout_AreKilled_AndReportTimeout) {
    // One worker: task 1 waits while task 0 runs and, when that worker is killed, must
    // not be lost with it but run on a fresh one, and be timed out there in turn.
    auto out =
        run_in_processes(sleep_for_an_hour, std::vector{0, 1}, {.workers = 1, .timeout = 200ms});

    for (std::size_t i = 0; i < 2; ++i) {
        ASSERT_FALSE(out[i]);
        EXPECT_EQ(out[i].error().kind(), failure_kind::timeout) << out[i].error().what();
        EXPECT_NE(out[i].error().cause_as<procpool::task_timeout>(), nullptr);
        EXPECT_EQ(out[i].error().attempts(), 1);
    }
}

TEST(RunInProcesses, TaskThatCrashesOnItsFirstAttemptOnly_SucceedsOnRetry) {
    procpool_test::temp_dir dir;
    const std::string marker = dir.path() + "/crashed-once";

    auto out = run_in_processes(crash_once, std::vector{marker}, {.workers = 1, .retries = 1});

    ASSERT_TRUE(out[0]) << out[0].error().what();
    EXPECT_EQ(*out[0], 42);
    EXPECT_TRUE(std::filesystem::exists(marker));  // the first attempt did run, and crash
}

TEST(RunInProcesses, WithoutRetries_TheFirstCrashIsTheOutcome) {
    procpool_test::temp_dir dir;
    const std::string marker = dir.path() + "/crashed-once";

    auto out = run_in_processes(crash_once, std::vector{marker}, {.workers = 1});

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().kind(), failure_kind::worker_died);
    EXPECT_EQ(out[0].error().attempts(), 1);
}

TEST(RunInProcesses, TaskThatAlwaysCrashes_FailsAfterEveryRetry_AndSaysHowManyAttempts) {
    auto out = run_in_processes(always_crash, std::vector{0}, {.workers = 1, .retries = 2});

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().attempts(), 3);
    EXPECT_EQ(std::string(out[0].error().what())
                  .rfind("task 0 failed after 3 attempts: worker died (SIGSEGV)", 0),
              0u)
        << out[0].error().what();
}

TEST(RunInProcesses, FailFast_KillsRunningTasks_AndCancelsQueuedOnes) {
    // Task 0 crashes at once; the others would sleep for a minute. fail_fast must not wait
    // for them: the running one is killed, the queued ones never start.
    auto out =
        run_in_processes(crash_zero_sleep_rest, numbers(6), {.workers = 2, .fail_fast = true});

    ASSERT_FALSE(out[0]);
    EXPECT_EQ(out[0].error().kind(), failure_kind::worker_died);
    for (std::size_t i = 1; i < 6; ++i) {
        ASSERT_FALSE(out[i]);
        EXPECT_EQ(out[i].error().kind(), failure_kind::cancelled) << out[i].error().what();
        EXPECT_EQ(
            std::string(out[i].error().what()),
            "task " + std::to_string(i) + " cancelled: cancelled by fail_fast after task 0 failed");
    }
}

TEST(RunIn, ProcessPool_KillsTasksPastTheRunsTimeout_AndStaysUsable) {
    procpool::process_pool_options opts;
    opts.workers = 2;
    procpool::process_pool pool(std::move(opts));

    auto timed = procpool::run_in(pool, sleep_for_an_hour, std::vector{0, 1}, {.timeout = 200ms});
    auto untimed = procpool::run_in(pool, throw_on_one, std::vector{0, 2});

    for (const auto& o : timed) {
        ASSERT_FALSE(o);
        EXPECT_EQ(o.error().kind(), failure_kind::timeout) << o.error().what();
    }
    EXPECT_EQ(untimed[0].value(), 0);
    EXPECT_EQ(untimed[1].value(), 2);
    EXPECT_EQ(pool.submit(throw_on_one, 5).get(), 5);
}

TEST(RunIn, ProcessPoolThatShutDown_GivesEveryTaskAShutDownOutcome) {
    procpool::process_pool_options opts;
    opts.workers = 1;
    procpool::process_pool pool(std::move(opts));
    pool.shutdown();

    auto out = procpool::run_in(pool, throw_on_one, std::vector{0, 2});

    for (const auto& o : out) {
        ASSERT_FALSE(o);
        EXPECT_EQ(o.error().kind(), failure_kind::shut_down);
    }
}

}  // namespace

// As the library asks of every program with process pools: init first thing in main, so
// workers come from the fork server (a clean copy of the program at this point) rather
// than from a pool's thread. A worker forked from a pool's thread has no copy of the
// other threads, so LeakSanitizer takes the memory only they referred to for leaks, and
// a task that calls exit() then exits with LSan's status instead of its own.
int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
