// Pool statistics and trace recording: every task's outcome counted and recorded by the
// time its future is ready, on thread pools, process pools and run_in_*.
#include <procpool/procpool.hpp>
#include <procpool/trace.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <sstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "process_support.hpp"

namespace {

using namespace std::chrono_literals;
using procpool::task_status;

int twice(int x) { return 2 * x; }

int throw_if_odd(int x) {
    if (x % 2 != 0) throw std::runtime_error("odd " + std::to_string(x));
    return x;
}

int crash_on(int x, int bad) {
    if (x == bad) std::abort();
    return x;
}

int sleep_forever(int x) {
    for (;;) std::this_thread::sleep_for(1h);
    return x;
}

std::map<task_status, int> count_by_status(const std::vector<procpool::task_trace>& ts) {
    std::map<task_status, int> m;
    for (const auto& t : ts) ++m[t.status];
    return m;
}

TEST(Stats, ThreadPoolCountsEveryOutcome) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 40; ++i) fs.push_back(pool.submit(throw_if_odd, i));
    for (auto& f : fs) f.wait();
    // Counted by the time the futures are ready: no shutdown needed.
    const auto st = pool.stats();
    EXPECT_EQ(st.submitted, 40u);
    EXPECT_EQ(st.completed, 20u);
    EXPECT_EQ(st.exceptions, 20u);
    EXPECT_EQ(st.failed(), 20u);
    EXPECT_EQ(st.worker_restarts, 0u);
    ASSERT_EQ(st.busy_fraction.size(), 2u);
    for (double b : st.busy_fraction) {
        EXPECT_GE(b, 0.0);
        EXPECT_LE(b, 1.0);
    }
    EXPECT_EQ(st.run_time.count, 40u);
    EXPECT_EQ(st.queue_wait.count, 40u);
    EXPECT_LE(st.run_time.p50, st.run_time.p99);
    EXPECT_LE(st.run_time.p99, st.run_time.max);
}

TEST(Stats, ThreadPoolCountsCancelledWhileQueued) {
    procpool::thread_pool pool({.workers = 1});
    std::atomic<bool> release{false};
    auto blocker = pool.submit([&] {
        while (!release.load()) std::this_thread::sleep_for(1ms);
    });
    auto queued = pool.submit([] { return 1; });
    EXPECT_TRUE(queued.cancel());
    release = true;
    blocker.get();
    pool.shutdown({.wait = true});
    const auto st = pool.stats();
    EXPECT_EQ(st.submitted, 2u);
    EXPECT_EQ(st.completed, 1u);
    EXPECT_EQ(st.cancelled, 1u);
    EXPECT_EQ(st.run_time.count, 1u);
}

TEST(Stats, ThreadPoolShutdownCancelsCount) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::thread_pool pool({.workers = 1, .trace = trace});
    std::atomic<bool> release{false};
    std::atomic<bool> started{false};
    auto blocker = pool.submit([&] {
        started = true;
        while (!release.load()) std::this_thread::sleep_for(1ms);
    });
    std::vector<procpool::future<int>> queued;
    for (int i = 0; i < 5; ++i) queued.push_back(pool.submit([] { return 1; }));
    while (!started.load()) std::this_thread::sleep_for(1ms);
    std::thread opener([&] {
        // The pool's shutdown cancels the queue first, then waits for the blocker.
        for (auto& f : queued) f.wait();
        release = true;
    });
    pool.shutdown({.wait = true, .cancel_pending = true});
    opener.join();
    const auto st = pool.stats();
    EXPECT_EQ(st.cancelled, 5u);
    EXPECT_EQ(st.completed, 1u);
    const auto ts = trace->tasks();
    ASSERT_EQ(ts.size(), 6u);
    auto by = count_by_status(ts);
    EXPECT_EQ(by[task_status::cancelled], 5);
    for (const auto& t : ts) {
        if (t.status == task_status::cancelled) {
            EXPECT_EQ(t.start_ns, 0);
            EXPECT_EQ(t.worker, -1);
        }
    }
}

TEST(Trace, ThreadPoolRecordsEachTaskBeforeItsFutureIsReady) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::thread_pool pool({.workers = 2, .name = "tp", .trace = trace});
    for (int round = 0; round < 50; ++round) {
        auto f = pool.submit(throw_if_odd, round);
        f.wait();
        // The record is made on the worker before it publishes the result.
        ASSERT_EQ(trace->size(), static_cast<std::size_t>(round + 1));
    }
    const auto ts = trace->tasks();
    auto by = count_by_status(ts);
    EXPECT_EQ(by[task_status::ok], 25);
    EXPECT_EQ(by[task_status::exception], 25);
    std::vector<std::uint64_t> ids;
    for (const auto& t : ts) {
        ids.push_back(t.id);
        EXPECT_GE(t.worker, 0);
        EXPECT_LT(t.worker, 2);
        EXPECT_EQ(t.pid, static_cast<int>(::getpid()));
        EXPECT_LE(t.submit_ns, t.start_ns);
        EXPECT_LE(t.start_ns, t.end_ns);
        EXPECT_EQ(t.attempt, 1u);
        if (t.status == task_status::exception) {
            EXPECT_NE(t.error.find("odd"), std::string::npos) << t.error;
        } else {
            EXPECT_TRUE(t.error.empty());
        }
    }
    std::sort(ids.begin(), ids.end());
    for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], i + 1);
    const auto pools = trace->pools();
    ASSERT_EQ(pools.size(), 1u);
    EXPECT_EQ(pools[0].name, "tp");
    EXPECT_EQ(pools[0].workers, 2);
}

TEST(Stats, ProcessPoolCountsValuesExceptionsCrashesAndTimeouts) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pool({.workers = 2, .trace = trace});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 10; ++i) fs.push_back(pool.submit(throw_if_odd, i));
    auto crashed = pool.submit(crash_on, 3, 3);
    auto timed = pool.submit(procpool::task_options{.timeout = 50ms}, sleep_forever, 1);
    for (auto& f : fs) f.wait();
    crashed.wait();
    timed.wait();
    const auto st = pool.stats();
    EXPECT_EQ(st.submitted, 12u);
    EXPECT_EQ(st.completed, 5u);
    EXPECT_EQ(st.exceptions, 5u);
    EXPECT_EQ(st.worker_died, 1u);
    EXPECT_EQ(st.timeouts, 1u);
    EXPECT_EQ(st.resolved(), 12u);
    EXPECT_EQ(st.run_time.count, 12u);
    ASSERT_EQ(st.busy_fraction.size(), 2u);

    const auto ts = trace->tasks();
    ASSERT_EQ(ts.size(), 12u);
    auto by = count_by_status(ts);
    EXPECT_EQ(by[task_status::ok], 5);
    EXPECT_EQ(by[task_status::exception], 5);
    EXPECT_EQ(by[task_status::worker_died], 1);
    EXPECT_EQ(by[task_status::timeout], 1);
    const auto pids = pool.worker_pids();
    for (const auto& t : ts) {
        EXPECT_GE(t.worker, 0);
        EXPECT_NE(t.pid, 0);
        EXPECT_NE(t.pid, static_cast<int>(::getpid()));
        EXPECT_LE(t.submit_ns, t.start_ns);
        EXPECT_LE(t.start_ns, t.end_ns);
        EXPECT_GT(t.bytes_in, 0u);
        if (t.status == task_status::ok || t.status == task_status::exception) {
            EXPECT_GT(t.bytes_out, 0u);
        }
        if (t.status == task_status::worker_died) {
            EXPECT_NE(t.error.find("SIGABRT"), std::string::npos) << t.error;
        }
    }
    pool.shutdown({.wait = true});
    // Two replacements (the crash and the timeout), each marked by an exit and a start.
    const auto after = pool.stats();
    EXPECT_EQ(after.worker_restarts, 2u);
    int exits = 0;
    int abrt = 0;
    int timeout_kills = 0;
    int starts = 0;
    for (const auto& w : trace->worker_events()) {
        if (w.what == procpool::worker_trace::kind::started) {
            ++starts;
            continue;
        }
        ++exits;
        if (w.reason.find("SIGABRT") != std::string::npos) ++abrt;
        if (w.reason.find("timed out") != std::string::npos) ++timeout_kills;
    }
    EXPECT_EQ(starts, 4);  // two at start-up, two replacements
    EXPECT_EQ(exits, 4);   // every worker has exited after shutdown
    EXPECT_EQ(abrt, 1);
    EXPECT_EQ(timeout_kills, 1);
}

TEST(Stats, ProcessPoolCountsCancelledTasks) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pool({.workers = 1, .trace = trace});
    procpool_test::file_gate gate;
    auto running = pool.submit(procpool_test::file_gate::wait_then_return, gate.path(), 7);
    gate.wait_started();
    auto queued = pool.submit(twice, 1);
    EXPECT_TRUE(queued.cancel());
    EXPECT_TRUE(running.cancel());  // kills its worker
    EXPECT_THROW(running.get(), procpool::task_cancelled);
    const auto st = pool.stats();
    EXPECT_EQ(st.cancelled, 2u);
    const auto ts = trace->tasks();
    ASSERT_EQ(ts.size(), 2u);
    int started = 0;
    for (const auto& t : ts) {
        EXPECT_EQ(t.status, task_status::cancelled);
        if (t.start_ns != 0) ++started;
    }
    EXPECT_EQ(started, 1);  // the running one has a bar, the queued one does not
}

TEST(Trace, RunInProcessesNamesTasksByIndexAndCountsAttempts) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    std::vector<int> xs{0, 1, 2, 3, 4, 5};
    auto out = procpool::run_in_processes(
        [](int x) {
            if (x == 4) std::abort();
            return x * 3;
        },
        xs, {.workers = 2, .retries = 1, .trace = trace});
    ASSERT_EQ(out.size(), 6u);
    EXPECT_FALSE(out[4]);
    const auto ts = trace->tasks();
    ASSERT_EQ(ts.size(), 7u);  // task 4 ran twice
    ASSERT_EQ(trace->pools().size(), 1u);
    EXPECT_EQ(trace->pools()[0].name, "run_in_processes");
    std::map<std::uint64_t, std::vector<std::uint32_t>> attempts;
    for (const auto& t : ts) attempts[t.id].push_back(t.attempt);
    ASSERT_EQ(attempts.size(), 6u);
    for (std::uint64_t i = 0; i < 6; ++i) {
        auto a = attempts[i];
        std::sort(a.begin(), a.end());
        if (i == 4) {
            EXPECT_EQ(a, (std::vector<std::uint32_t>{1, 2}));
        } else {
            EXPECT_EQ(a, (std::vector<std::uint32_t>{1}));
        }
    }
}

TEST(Trace, RunInThreadsUsesTheTrace) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    std::vector<int> xs(20);
    for (int i = 0; i < 20; ++i) xs[static_cast<std::size_t>(i)] = i;
    auto out = procpool::run_in_threads(throw_if_odd, xs, {.workers = 2, .trace = trace});
    const auto ts = trace->tasks();
    ASSERT_EQ(ts.size(), 20u);
    for (const auto& t : ts) {
        ASSERT_LT(t.id, 20u);
        EXPECT_EQ(t.status, t.id % 2 == 0 ? task_status::ok : task_status::exception);
    }
    ASSERT_EQ(trace->pools().size(), 1u);
    EXPECT_EQ(trace->pools()[0].name, "run_in_threads");
}

TEST(Stats, HistogramPercentilesAreClose) {
    procpool::thread_pool pool({.workers = 1});
    // Run times are whatever they are; the check is that the summary is ordered and
    // within the recorded range, whatever the machine's speed.
    std::vector<procpool::future<void>> fs;
    for (int i = 0; i < 200; ++i) fs.push_back(pool.submit([] {}));
    for (auto& f : fs) f.get();
    const auto st = pool.stats();
    EXPECT_EQ(st.run_time.count, 200u);
    EXPECT_GE(st.run_time.p50.count(), 0);
    EXPECT_LE(st.run_time.p50, st.run_time.p99);
    EXPECT_LE(st.run_time.p99, st.run_time.max);
    EXPECT_LE(st.queue_wait.p50, st.queue_wait.p99);
    EXPECT_LE(st.queue_wait.p99, st.queue_wait.max);
}

int square(int x) { return x * x; }

TEST(MapProgress, ProcessPoolMapCountsElementsNotChunks) {
    procpool::process_pool pool({.workers = 2});
    std::vector<int> xs(1000);
    for (int i = 0; i < 1000; ++i) xs[static_cast<std::size_t>(i)] = i;
    std::ostringstream log;
    auto out = pool.map(square, xs,
                        procpool::map_options{
                            .chunksize = 250,
                            .show_progress = true,
                            .progress = {.label = "squares", .out = &log, .terminal = false}});
    ASSERT_EQ(out.size(), 1000u);
    EXPECT_EQ(out[999], 999 * 999);
    const std::string text = log.str();
    EXPECT_NE(text.find("starting squares"), std::string::npos) << text;
    EXPECT_NE(text.find("1000 tasks, 1000 ok, 0 failed"), std::string::npos) << text;
}

TEST(MapProgress, ThreadPoolMapDrawsTheBarInItems) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<int> xs(600, 3);
    std::ostringstream bar;
    auto out = pool.map([](int x) { return x + 1; }, xs,
                        procpool::map_options{
                            .chunksize = 100,
                            .show_progress = true,
                            .progress = {.label = "plus", .out = &bar, .terminal = true, .columns = 100}});
    ASSERT_EQ(out.size(), 600u);
    EXPECT_NE(bar.str().find("600/600"), std::string::npos) << bar.str();
}

TEST(MapProgress, TasksFinishedCountsManyAtOnce) {
    std::ostringstream sink;
    procpool::progress_reporter p(1000, 2, {.label = "m", .out = &sink, .terminal = true, .columns = 120});
    p.start();
    p.tasks_finished(250);
    EXPECT_NE(p.bar_line().find("250/1000"), std::string::npos) << p.bar_line();
    p.tasks_finished(250, 250);
    EXPECT_NE(p.bar_line().find("500/1000"), std::string::npos) << p.bar_line();
    EXPECT_NE(p.bar_line().find("250 failed"), std::string::npos) << p.bar_line();
}

TEST(Trace, StatusOfClassifiesErrors) {
    EXPECT_EQ(procpool::status_of(nullptr), task_status::ok);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(std::runtime_error("x"))),
              task_status::exception);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(procpool::worker_died(9, -1, "x"))),
              task_status::worker_died);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(procpool::task_timeout("x"))),
              task_status::timeout);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(procpool::task_cancelled("x"))),
              task_status::cancelled);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(procpool::serialization_error("x"))),
              task_status::failed);
    EXPECT_EQ(procpool::status_of(std::make_exception_ptr(42)), task_status::exception);
    EXPECT_STREQ(procpool::to_string(task_status::worker_died), "worker_died");
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
