// Adversarial tests of the statistics/trace recording (every task counted exactly once, by
// the time its future is ready, whatever happens) and of the run journal (torn, garbled or
// forged files, write failures, concurrent runs, SIGKILL at arbitrary moments). No timing
// assertions: waits are watchdogs of minutes, and a run's outcome is checked by counts.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ipc/ring.hpp"
#include "process/protocol.hpp"
#include "process/region.hpp"
#include "process_support.hpp"
#include "procpool/continuation.hpp"
#include "procpool/journal.hpp"
#include "procpool/procpool.hpp"
#include "procpool/trace.hpp"
#include "run_support.hpp"
#include "worker_internals.hpp"

// ---- a hook in operator new -------------------------------------------------------------
// Lets a test stop a thread at its next allocation, e.g. inside future::cancel() between
// claiming a task and publishing its cancellation (task_cancelled's message allocates).
namespace {
thread_local void (*tl_on_next_new)() = nullptr;
}  // namespace

// Or a given thread at its next allocation of exactly `g_stall_size` bytes (one shot),
// e.g. a pool's supervisor as the trace recorder's vector grows inside the recording of
// a task, which happens after the task left its worker's queue and before it is resolved.
std::atomic<std::size_t> g_stall_size{0};
std::atomic<pid_t> g_stall_tid{0};
void (*g_stall_hook)() = nullptr;

// Or fails this thread's next allocation of at least this many bytes (one shot).
thread_local std::size_t tl_fail_new_from = 0;

// Not inlined: g++ would then see free() meet operator new's pointer and warn.
[[gnu::noinline]] void* operator new(std::size_t n) {
    if (auto* hook = tl_on_next_new) {
        tl_on_next_new = nullptr;
        hook();
    }
    if (tl_fail_new_from != 0 && n >= tl_fail_new_from) {
        tl_fail_new_from = 0;
        throw std::bad_alloc();
    }
    if (n != 0 && g_stall_size.load(std::memory_order_relaxed) == n &&
        gettid() == g_stall_tid.load() && g_stall_size.exchange(0) == n) {
        g_stall_hook();
    }
    for (;;) {
        if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
        if (std::new_handler h = std::get_new_handler()) {
            h();
        } else {
            throw std::bad_alloc();
        }
    }
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
    std::free(p);
}
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using procpool::task_status;
using procpool_test::numbers;
using procpool_test::temp_dir;

/// Waits for `cond` with a watchdog of minutes: false if it never came.
template <class Cond>
bool eventually(Cond cond, std::chrono::steady_clock::duration limit = 2min) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

/// Every resolved task counted once: submitted == resolved, and no duration negative.
void expect_balanced(const procpool::pool_stats& st, const char* what) {
    EXPECT_EQ(st.submitted, st.resolved())
        << what << ": completed " << st.completed << " exceptions " << st.exceptions << " died "
        << st.worker_died << " timeouts " << st.timeouts << " cancelled " << st.cancelled
        << " other " << st.other_failures;
    for (const auto* d : {&st.queue_wait, &st.run_time}) {
        EXPECT_GE(d->p50.count(), 0) << what;
        EXPECT_GE(d->p99.count(), 0) << what;
        EXPECT_GE(d->max.count(), 0) << what;
        EXPECT_LE(d->p50, d->p99) << what;
        EXPECT_LE(d->p99, d->max) << what;
    }
    for (double b : st.busy_fraction) {
        EXPECT_GE(b, 0.0) << what;
        EXPECT_LE(b, 1.0) << what;
    }
    EXPECT_GE(st.uptime.count(), 0) << what;
}

std::map<task_status, int> by_status(const std::vector<procpool::task_trace>& ts) {
    std::map<task_status, int> m;
    for (const auto& t : ts) ++m[t.status];
    return m;
}

// ==== thread pools: cancellation ===========================================================

// A task cancelled while it waits in the queue resolves at once; its count must be there
// at once too, not only when a worker later pops it (the documented "recorded before the
// future is ready").
TEST(ObserveThreadPool, CancelledWhileQueued_CountedWhenItsFutureIsReady) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::thread_pool pool({.workers = 1, .trace = trace});
    procpool_test::gate release;
    std::atomic<bool> started{false};
    auto blocker = pool.submit([&] {
        started = true;
        return release.wait();
    });
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    auto queued = pool.submit([] { return 1; });
    ASSERT_TRUE(queued.cancel());
    ASSERT_TRUE(queued.ready());
    const auto st = pool.stats();  // the worker is still busy with the blocker
    EXPECT_EQ(st.cancelled, 1u);
    EXPECT_EQ(st.submitted, 2u);
    EXPECT_EQ(trace->size(), 1u);
    release.open();
    EXPECT_TRUE(blocker.get());
    pool.shutdown({.wait = true});
    const auto after = pool.stats();
    expect_balanced(after, "after shutdown");
    EXPECT_EQ(after.cancelled, 1u);
    EXPECT_EQ(trace->size(), 2u);
}

// The canceller claims the task, then publishes its cancellation; a worker that pops the
// task in between must neither miss it nor count it twice. The canceller is stopped at the
// allocation of task_cancelled's message (between claim and publish) until the worker has
// run the task queued behind (or, if the pool rightly waits for the cancellation to
// publish, for a while).
std::atomic<bool>* g_release_blocker = nullptr;
std::atomic<bool>* g_next_ran = nullptr;
std::atomic<bool> g_hook_ran{false};
void hold_the_canceller() {
    g_hook_ran = true;
    g_release_blocker->store(true);
    const auto until = std::chrono::steady_clock::now() + 300ms;
    while (!g_next_ran->load() && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
    }
}

TEST(ObserveThreadPool, CancelRacingTheWorkerThatPopsIt_CountedOnce) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::thread_pool pool({.workers = 1, .trace = trace});
    std::atomic<bool> release{false};
    std::atomic<bool> started{false};
    std::atomic<bool> next_ran{false};
    g_release_blocker = &release;
    g_next_ran = &next_ran;
    auto blocker = pool.submit([&] {
        started = true;
        eventually([&] { return release.load(); });
    });
    ASSERT_TRUE(eventually([&] { return started.load(); }));
    auto victim = pool.submit([] { return 1; });
    auto next = pool.submit([&] { next_ran = true; });
    tl_on_next_new = &hold_the_canceller;
    const bool cancelled = victim.cancel();
    tl_on_next_new = nullptr;
    ASSERT_TRUE(g_hook_ran.load());
    ASSERT_TRUE(cancelled);
    EXPECT_EQ(pool.stats().cancelled, 1u);
    blocker.get();
    next.get();
    pool.shutdown({.wait = true});
    const auto st = pool.stats();
    expect_balanced(st, "after shutdown");
    EXPECT_EQ(st.cancelled, 1u);
    EXPECT_EQ(st.completed, 2u);
    EXPECT_EQ(trace->size(), 3u);
    EXPECT_EQ(by_status(trace->tasks())[task_status::cancelled], 1);
}

// Cancels racing a shutdown that cancels the queue, a worker that pops, and each other,
// many times over: each task is counted exactly once.
TEST(ObserveThreadPool, CancelsRacingShutdownAndWorkers_EveryTaskCountedOnce) {
    for (int round = 0; round < 100; ++round) {
        auto trace = std::make_shared<procpool::trace_recorder>();
        procpool::thread_pool pool({.workers = 2, .trace = trace});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 40; ++i) fs.push_back(pool.submit([i] { return i; }));
        std::thread canceller([&] {
            for (std::size_t i = 0; i < fs.size(); i += 2) fs[i].cancel();
        });
        pool.shutdown({.wait = true, .cancel_pending = (round % 2) == 0});
        canceller.join();
        for (auto& f : fs) ASSERT_TRUE(f.ready());
        const auto st = pool.stats();
        expect_balanced(st, "round");
        ASSERT_EQ(st.submitted, 40u);
        std::uint64_t cancelled = 0;
        for (auto& f : fs) cancelled += f.cancelled() ? 1 : 0;
        ASSERT_EQ(st.cancelled, cancelled) << "round " << round;
        ASSERT_EQ(trace->size(), 40u) << "round " << round;
    }
}

// ==== process pools: every way a task can end ===============================================

int twice(int x) {
    return 2 * x;
}
int throws(int x) {
    throw std::runtime_error("thrown by " + std::to_string(x));
}
int aborts(int) {
    std::abort();
}
int segfaults(int x) {
    std::raise(SIGSEGV);
    return x;
}
int exits(int x) {
    _exit(x);
}
int sleeps_forever(int x) {
    for (;;) std::this_thread::sleep_for(1h);
    return x;
}
int throws_huge(int n) {
    throw std::runtime_error(std::string(static_cast<std::size_t>(n), 'e'));
}

TEST(ObserveProcessPool, EveryWayATaskEnds_CountedOnce_SubmittedEqualsResolved) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    auto pool = std::make_unique<procpool::process_pool>(
        procpool::process_pool_options{.workers = 2, .trace = trace});
    std::vector<procpool::future<int>> fs;
    fs.push_back(pool->submit(twice, 21));
    fs.push_back(pool->submit(throws, 1));
    fs.push_back(pool->submit(aborts, 1));
    fs.push_back(pool->submit(segfaults, 1));
    fs.push_back(pool->submit(exits, 3));
    fs.push_back(pool->submit(procpool::task_options{.timeout = 100ms}, sleeps_forever, 1));
    fs.push_back(pool->submit(throws_huge, 8 << 20));  // an 8 MiB message: out of band
    for (auto& f : fs) f.wait();
    auto st = pool->stats();
    expect_balanced(st, "after the first batch");
    EXPECT_EQ(st.submitted, 7u);
    EXPECT_EQ(st.completed, 1u);
    EXPECT_EQ(st.exceptions, 2u);
    EXPECT_EQ(st.worker_died, 3u);
    EXPECT_EQ(st.timeouts, 1u);
    EXPECT_EQ(trace->size(), 7u);

    // Both workers held; then a running task cancelled (its worker killed), queued ones
    // cancelled one by one and by a shutdown that cancels the queue.
    procpool_test::file_gate g1;
    procpool_test::file_gate g2;
    auto held1 = pool->submit(procpool_test::file_gate::wait_then_return, g1.path(), 1);
    auto held2 = pool->submit(procpool_test::file_gate::wait_then_return, g2.path(), 2);
    g1.wait_started();
    g2.wait_started();
    std::vector<procpool::future<int>> queued;
    for (int i = 0; i < 6; ++i) queued.push_back(pool->submit(twice, i));
    EXPECT_TRUE(queued[0].cancel());
    EXPECT_TRUE(queued[1].cancel_pending());
    EXPECT_TRUE(held1.cancel());
    st = pool->stats();  // held2 and 4 queued tasks remain
    EXPECT_EQ(st.submitted, 15u);
    EXPECT_EQ(st.resolved(), 15u - 5u);
    // held1's worker was killed: a new one may take a queued task before shutdown sees it.
    pool->shutdown({.wait = false, .cancel_pending = true});
    EXPECT_THROW((void)pool->submit(twice, 1), procpool::pool_shut_down);
    g2.open();
    for (auto& f : queued) f.wait();
    EXPECT_EQ(held2.get(), 2);
    pool->shutdown({.wait = true});
    st = pool->stats();
    expect_balanced(st, "after shutdown");
    EXPECT_EQ(st.submitted, 15u);
    EXPECT_EQ(trace->size(), 15u);
    std::uint64_t cancelled = 1;  // held1
    for (auto& f : queued) cancelled += f.cancelled() ? 1 : 0;
    EXPECT_EQ(st.cancelled, cancelled);
    for (const auto& t : trace->tasks()) {
        EXPECT_LE(t.submit_ns, t.end_ns);
        if (t.start_ns != 0) {
            EXPECT_LE(t.submit_ns, t.start_ns);
            EXPECT_LE(t.start_ns, t.end_ns);
        }
    }
    // The huge message survives, and the exports stay valid JSON.
    bool huge = false;
    for (const auto& t : trace->tasks()) huge = huge || t.error.size() >= (8u << 20);
    EXPECT_TRUE(huge);
    std::ostringstream json;
    trace->write_chrome_json(json);
    const auto doc = nlohmann::json::parse(json.str());
    EXPECT_FALSE(doc["traceEvents"].empty());
    std::ostringstream svg;
    trace->write_svg(svg);
    EXPECT_LT(svg.str().size(), std::size_t{4} << 20) << "tooltips are cut to 300 characters";
}

// A worker dies under its task T; its slot gets a new worker whose task numbers start
// at 1 again. A cancel() of T that comes while the pool is resolving T (after T left the
// dead worker's queue) must not leave a cancel word for T's number in the new worker's
// region: it would stop an unrelated later task there. Nor may it report success: T ends
// as worker_died.
std::set<pid_t> thread_ids() {
    std::set<pid_t> out;
    for (const auto& e : fs::directory_iterator("/proc/self/task")) {
        out.insert(static_cast<pid_t>(std::stoi(e.path().filename().string())));
    }
    return out;
}

std::atomic<bool> g_stalled{false};
std::atomic<bool> g_go{false};
void stall_until_go() {
    g_stalled = true;
    eventually([] { return g_go.load(); });
}

TEST(ObserveProcessPool, CancelWhileTheDeadWorkersTaskResolves_StopsNoLaterTask) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    // ThreadSanitizer starts a background thread of its own at the first thread this
    // process creates: let that happen before counting, so the only new one is the pool's.
    std::thread([] {}).join();
    const auto before = thread_ids();
    procpool::process_pool pool({.workers = 1, .trace = trace});
    std::vector<pid_t> fresh;
    for (pid_t t : thread_ids()) {
        if (before.count(t) == 0) fresh.push_back(t);
    }
    ASSERT_EQ(fresh.size(), 1u) << "expected one new thread, the supervisor";
    // Four tasks recorded: the recorder's vector is full (capacity 4), so recording the
    // fifth allocates room for eight, on the thread that resolves it.
    for (int i = 0; i < 4; ++i) EXPECT_EQ(pool.submit(twice, i).get(), 2 * i);
    ASSERT_EQ(trace->size(), 4u);
    g_stalled = false;
    g_go = false;
    g_stall_hook = &stall_until_go;
    g_stall_tid = fresh[0];
    g_stall_size = 8 * sizeof(procpool::task_trace);
    auto victim = pool.submit(aborts, 0);  // the fifth task on this worker: number 5
    const bool stalled = eventually([] { return g_stalled.load(); });
    if (!stalled) g_stall_size = 0;
    ASSERT_TRUE(stalled) << "the supervisor did not record the dead worker's task";
    // The supervisor holds the recorder's lock now: do not touch the trace until g_go.
    const bool said_cancelled = victim.cancel();
    g_go = true;
    EXPECT_THROW(victim.get(), procpool::worker_died);
    EXPECT_FALSE(said_cancelled) << "cancel() reported success for a task that died";
    // The new worker's tasks 1..8: none may be stopped by a stale cancel word.
    std::vector<procpool::future<int>> later;
    for (int i = 0; i < 8; ++i) later.push_back(pool.submit(twice, i));
    for (int i = 0; i < 8; ++i) {
        try {
            EXPECT_EQ(later[static_cast<std::size_t>(i)].get(), 2 * i);
        } catch (const procpool::task_cancelled& e) {
            ADD_FAILURE() << "task " << i + 1 << " on the new worker was cancelled: " << e.what();
        }
    }
    pool.shutdown({.wait = true});
    const auto st = pool.stats();
    expect_balanced(st, "after shutdown");
    EXPECT_EQ(st.cancelled, 0u);
    EXPECT_EQ(st.worker_died, 1u);
}

// submit() runs out of memory parking a task (no worker has room): it throws, and the
// task it did not accept must not count as submitted, nor keep shutdown waiting for it.
int bytes_of(std::vector<char> v) {
    return static_cast<int>(v.size());
}

TEST(ObserveProcessPool, SubmitOutOfMemoryParkingATask_NotCounted_ShutdownReturns) {
    auto pool =
        std::make_unique<procpool::process_pool>(procpool::process_pool_options{.workers = 1});
    procpool_test::file_gate gate;
    // A fresh pool gives its worker a window of two tasks: the third is parked.
    auto held = pool->submit(procpool_test::file_gate::wait_then_return, gate.path(), 1);
    const std::vector<char> big(500'000, 'x');
    auto sent = pool->submit(bytes_of, big);  // also grows this thread's encoding buffer
    tl_fail_new_from = 400'000;               // the parked copy of the next one's arguments
    EXPECT_THROW((void)pool->submit(bytes_of, big), std::bad_alloc);
    const bool hook_fired = tl_fail_new_from == 0;
    tl_fail_new_from = 0;
    ASSERT_TRUE(hook_fired);
    gate.open();
    EXPECT_EQ(held.get(), 1);
    EXPECT_EQ(sent.get(), 500'000);
    EXPECT_EQ(pool->submit(twice, 4).get(), 8);
    const auto st = pool->stats();
    if (st.submitted != st.resolved()) {
        (void)pool.release();  // its shutdown would wait forever for the lost task: leak it
        FAIL() << "submitted " << st.submitted << ", resolved " << st.resolved();
    }
    EXPECT_EQ(st.submitted, 3u);
    std::atomic<bool> down{false};
    std::thread closer([&] {
        pool->shutdown({.wait = true});
        down = true;
    });
    const bool returned = eventually([&] { return down.load(); });
    if (!returned) {
        closer.detach();
        (void)pool.release();
        FAIL() << "shutdown waits for a task it never accepted";
    }
    closer.join();
}

// ==== nesting: a thread-pool task that waits on a process pool (help_wait drains there) ====

TEST(ObserveNesting, ThreadTaskWaitingOnProcessPool_PromisesAndFutures_AllCountedOnce) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pp({.workers = 2, .trace = trace, .name = "pp"});
    procpool::thread_pool tp({.workers = 2, .name = "tp", .trace = trace});
    constexpr int n = 24;
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < n; ++i) {
        fs.push_back(tp.submit([&pp, i] {
            // Resolves a promise and waits on other futures on this worker's thread: only
            // the task itself may be counted for it.
            procpool::promise<int> p;
            auto pf = p.get_future();
            p.set_value(i);
            auto a = pp.submit(twice, pf.get());
            auto b = pp.submit(i % 3 == 0 ? throws : twice, i);
            int sum = a.get();  // helps drain the process pool's completions
            try {
                sum += b.get();
            } catch (const procpool::remote_exception&) {
            }
            if (i % 4 == 1) throw std::runtime_error("odd task");
            return sum;
        }));
    }
    for (auto& f : fs) f.wait();
    // No shutdown: the counts are complete the moment the futures are.
    const auto ts = tp.stats();
    const auto ps = pp.stats();
    expect_balanced(ts, "thread pool");
    expect_balanced(ps, "process pool");
    EXPECT_EQ(ts.submitted, static_cast<std::uint64_t>(n));
    EXPECT_EQ(ts.exceptions, static_cast<std::uint64_t>(n / 4));
    EXPECT_EQ(ps.submitted, 2u * n);
    EXPECT_EQ(ps.exceptions, static_cast<std::uint64_t>(n / 3));
    EXPECT_EQ(trace->size(), 3u * n);
}

// ==== callbacks that read the stats or export the trace while the pool resolves ============

TEST(ObserveCallbacks, OnDoneAndThen_SeeTheirOwnTask_AndMayExport) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pp({.workers = 2, .trace = trace, .name = "pp"});
    procpool::thread_pool tp({.workers = 2, .name = "tp", .trace = trace});
    procpool::thread_pool tc({.workers = 1, .name = "continuations"});
    constexpr int n = 30;
    std::atomic<int> unseen{0};
    std::atomic<int> callbacks{0};
    std::vector<procpool::future<int>> fs;
    std::vector<procpool::future<int>> thens;
    auto check = [&](std::uint64_t pool, std::uint64_t id) {
        // Runs on the resolving thread (a worker, the supervisor, or a helper).
        bool seen = false;
        for (const auto& t : trace->tasks()) seen = seen || (t.pool == pool && t.id == id);
        if (!seen) ++unseen;
        std::ostringstream out;
        trace->write_chrome_json(out);
        (void)tp.stats();
        (void)pp.stats();
        ++callbacks;
    };
    // Pool indices in the recorder: pp registered first.
    for (int i = 0; i < n; ++i) {
        auto f = pp.submit(i % 5 == 0 ? throws : twice, i);
        f.on_done([&check, id = static_cast<std::uint64_t>(i + 1)] { check(0, id); });
        thens.push_back(procpool::then(f, tc, [](int v) { return v + 1; }));
        fs.push_back(std::move(f));
        auto g = tp.submit([i] { return i; });
        g.on_done([&check, id = static_cast<std::uint64_t>(i + 1)] { check(1, id); });
        fs.push_back(std::move(g));
    }
    for (auto& f : fs) f.wait();
    for (auto& f : thens) f.wait();
    EXPECT_TRUE(eventually([&] { return callbacks.load() == 2 * n; }));
    EXPECT_EQ(unseen.load(), 0);
    expect_balanced(tp.stats(), "thread pool");
    expect_balanced(pp.stats(), "process pool");
    EXPECT_EQ(pp.stats().submitted, static_cast<std::uint64_t>(n));
}

// ==== one recorder, several pools, exported while they run =================================

TEST(ObserveSharedRecorder, SeveralPoolsAtOnce_ExportedWhileRunning) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pp({.workers = 2, .trace = trace, .name = "pp"});
    procpool::thread_pool t1({.workers = 2, .name = "t1", .trace = trace});
    procpool::thread_pool t2({.workers = 1, .name = "t2", .trace = trace});
    temp_dir dir;
    std::atomic<bool> done{false};
    std::atomic<int> exports{0};
    std::thread exporter([&] {
        while (!done.load()) {
            trace->save_chrome_json(dir.path() + "/t.json");
            trace->save_svg(dir.path() + "/t.svg");
            (void)trace->tasks();
            ++exports;
        }
    });
    constexpr int per = 100;
    std::vector<std::thread> submitters;
    std::atomic<int> failures{0};
    for (int k = 0; k < 3; ++k) {
        submitters.emplace_back([&, k] {
            std::vector<procpool::future<int>> fs;
            for (int i = 0; i < per; ++i) {
                if (k == 0) fs.push_back(pp.submit(i % 7 == 0 ? throws : twice, i));
                if (k == 1) fs.push_back(t1.submit([i] { return i; }));
                if (k == 2) {
                    fs.push_back(t2.submit([i]() -> int {
                        if (i % 3 == 0) throw std::runtime_error(std::string(100000, 'z'));
                        return i;
                    }));
                }
            }
            for (auto& f : fs) {
                if (f.exception()) ++failures;
            }
        });
    }
    for (auto& t : submitters) t.join();
    EXPECT_TRUE(eventually([&] { return exports.load() > 0; }));
    done = true;
    exporter.join();
    expect_balanced(pp.stats(), "pp");
    expect_balanced(t1.stats(), "t1");
    expect_balanced(t2.stats(), "t2");
    EXPECT_EQ(trace->size(), 3u * per);
    std::ifstream in(dir.path() + "/t.json");
    const auto doc = nlohmann::json::parse(in);  // the last export is whole
    EXPECT_TRUE(doc.contains("traceEvents"));
    std::ostringstream json;
    trace->write_chrome_json(json);
    std::size_t task_events = 0;
    const auto doc2 = nlohmann::json::parse(json.str());
    for (const auto& e : doc2["traceEvents"]) {
        if (e.contains("args") && e["args"].contains("status")) ++task_events;
    }
    EXPECT_EQ(task_events, 3u * per);
}

// ==== a worker that forges its completion header's times ===================================

using procpool::process::completion_header;

// Publishes a raw frame in this worker's completion ring, as its own code would.
void publish_frame(procpool::process::worker_region* r, std::uint32_t type, const void* payload,
                   std::uint32_t n) {
    auto& c = r->completions;
    const std::uint64_t head = c.head.load();
    const auto pos = static_cast<std::uint32_t>(head % r->ring_capacity);
    const procpool::ipc::frame_header h{n, type};
    std::memcpy(r->completion_data() + pos, &h, sizeof h);
    std::memcpy(r->completion_data() + pos + sizeof h, payload, n);
    c.head.store(head + procpool::ipc::ring::frame_size(n));
}

void wake_parent() {
    const int fd = procpool_test::find_fd("pipe:");
    const std::uint64_t one = 1;
    if (fd < 0 || write(fd, &one, sizeof one) != sizeof one) std::abort();
}

constexpr std::int64_t absurd_times[][2] = {
    {INT64_MAX, INT64_MAX},
    {INT64_MIN, INT64_MIN},
    {INT64_MAX, INT64_MIN},
    {INT64_MIN, INT64_MAX},
    {-1, 0},
    {0, -1},
    {INT64_MAX, 1},
    {1, INT64_MAX},
};

// Completes its own task with the value 42 and forged times, then exits.
int forge_times(int k) {
    auto* r = procpool_test::my_region();
    struct {
        completion_header h;
        int value;
    } f{};
    f.h.seq = r->started_seq.load();
    f.h.run_ns = absurd_times[k][0];
    f.h.end_ns = absurd_times[k][1];
    f.value = 42;
    publish_frame(r, static_cast<std::uint32_t>(procpool::detail::run_status::value), &f, sizeof f);
    wake_parent();
    _exit(0);
}

// Claims an absurd start time in its region, then crashes.
int forge_start_then_crash(int k) {
    auto* r = procpool_test::my_region();
    r->started_ns.store(absurd_times[k][0]);
    std::abort();
}

TEST(ObserveHostile, ForgedTimes_NoOverflow_NoNegativeDurations_CountedOnce) {
    auto trace = std::make_shared<procpool::trace_recorder>();
    procpool::process_pool pool({.workers = 2, .trace = trace});
    constexpr int kinds = static_cast<int>(std::size(absurd_times));
    int values = 0;
    for (int k = 0; k < kinds; ++k) {
        auto f = pool.submit(forge_times, k);
        try {
            EXPECT_EQ(f.get(), 42);
            ++values;
        } catch (const procpool::error&) {  // a worker that died first is fine too
        }
        EXPECT_THROW(pool.submit(forge_start_then_crash, k).get(), procpool::worker_died);
        expect_balanced(pool.stats(), "forged");
    }
    EXPECT_GT(values, 0);
    pool.shutdown({.wait = true});
    const auto st = pool.stats();
    expect_balanced(st, "after shutdown");
    EXPECT_EQ(st.submitted, 2u * kinds);
    ASSERT_EQ(trace->size(), 2u * kinds);
    for (const auto& t : trace->tasks()) {
        EXPECT_LE(t.submit_ns, t.start_ns);
        EXPECT_LE(t.start_ns, t.end_ns);
    }
    std::ostringstream json;
    trace->write_chrome_json(json);
    const auto doc = nlohmann::json::parse(json.str());
    for (const auto& e : doc["traceEvents"]) {
        if (e["ph"] == "X") {
            EXPECT_GE(e["ts"].get<double>(), 0.0);
            EXPECT_GE(e["dur"].get<double>(), 0.0);
        }
    }
    std::ostringstream svg;
    trace->write_svg(svg);
}

// trace_recorder::record is public: whatever a caller records (absurd times, worker
// numbers at the ends of int's range, unregistered pools, unknown statuses), the exports
// must stay defined behaviour (UBSan checks the arithmetic) and well-formed.
TEST(ObserveRecorder, AbsurdRecords_ExportWithoutOverflow) {
    procpool::trace_recorder rec;
    rec.add_pool({.name = "p", .workers = 2, .host = "h"});
    const std::int64_t big = std::int64_t{9} * 1'000'000'000'000'000'000 / 2;  // 4.5e18
    const std::int64_t times[][3] = {
        {-big, -big, big},  // spans 9e18 ns: close to int64's range
        {INT64_MIN, INT64_MIN, INT64_MAX},
        {0, INT64_MAX, INT64_MIN},
        {INT64_MAX, 0, INT64_MAX},
        {1, 2, 3},
    };
    const int workers[] = {INT_MAX, INT_MIN, -1, 0, 1};
    std::uint64_t id = 0;
    for (const auto& t : times) {
        for (int w : workers) {
            rec.record(procpool::task_trace{.id = ++id,
                                            .pool = id % 2 == 0 ? 0u : 4'000'000'000u,
                                            .worker = w,
                                            .pid = -7,
                                            .submit_ns = t[0],
                                            .start_ns = t[1],
                                            .end_ns = t[2],
                                            .status = static_cast<task_status>(id % 9),
                                            .attempt = ~std::uint32_t{0},
                                            .bytes_in = ~std::uint64_t{0},
                                            .bytes_out = 0,
                                            .error = std::string("\xff\xfe<&>\x01", 6)});
            rec.record(procpool::worker_trace{.pool = static_cast<std::uint32_t>(id),
                                              .worker = w,
                                              .pid = INT_MIN,
                                              .time_ns = t[id % 3],
                                              .what = procpool::worker_trace::kind::exited,
                                              .reason = "r"});
        }
    }
    // One trace at a time too: the 9e18 ns span alone.
    procpool::trace_recorder wide;
    procpool::task_trace one;
    one.id = 1;
    one.worker = 0;
    one.submit_ns = one.start_ns = -big;
    one.end_ns = big;
    wide.record(one);
    // And one at the very end of the clock's range (the axis spans at least 10 us).
    procpool::trace_recorder late;
    one.submit_ns = one.start_ns = one.end_ns = INT64_MAX;
    late.record(one);
    late.record(procpool::worker_trace{.time_ns = INT64_MAX, .reason = {}});
    for (const procpool::trace_recorder* r : {&rec, &wide, &late}) {
        std::ostringstream json;
        r->write_chrome_json(json);
        EXPECT_TRUE(nlohmann::json::accept(json.str()));
        for (const procpool::svg_options& o :
             {procpool::svg_options{},
              procpool::svg_options{.width = INT_MAX, .lane_height = INT_MAX},
              procpool::svg_options{.width = INT_MIN, .lane_height = INT_MIN, .title = "t"}}) {
            std::ostringstream svg;
            r->write_svg(svg, o);
            EXPECT_NE(svg.str().find("</svg>"), std::string::npos);
        }
    }
}

// ==== the journal ===========================================================================

using procpool::failure_kind;
using procpool::journal_mode;
using procpool::read_journal;
using procpool::run_in_processes;
using procpool::run_in_threads;

/// Counts each task's runs (thread tasks).
struct run_counter {
    std::mutex m;
    std::map<int, int> runs;
    void ran(int i) {
        std::lock_guard lock(m);
        ++runs[i];
    }
    int of(int i) {
        std::lock_guard lock(m);
        return runs.count(i) != 0 ? runs[i] : 0;
    }
    int total() {
        std::lock_guard lock(m);
        int n = 0;
        for (auto& [k, v] : runs) n += v;
        return n;
    }
};

int square_plus_one(int i) {
    return i * i + 1;
}

/// Appends raw bytes to the file at `path`.
void append_bytes(const std::string& path, const void* p, std::size_t n) {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
}

/// A whole frame holding record `r` with `value` bytes, its size and check correct.
std::vector<std::byte> forged_frame(const procpool::journal_record& r,
                                    const std::vector<std::byte>& value) {
    std::vector<std::byte> buf;
    procpool::detail::journal_file::begin_record(buf, r);
    buf.insert(buf.end(), value.begin(), value.end());
    const std::uint64_t size = buf.size() - sizeof(std::uint64_t);
    std::memcpy(buf.data(), &size, sizeof size);
    const std::uint64_t check = procpool::detail::journal_hash(buf);
    const auto* c = reinterpret_cast<const std::byte*>(&check);
    buf.insert(buf.end(), c, c + sizeof check);
    return buf;
}

/// The wire bytes of `v`.
template <class T>
std::vector<std::byte> wire_bytes(const T& v) {
    std::vector<std::byte> out;
    procpool::wire::writer w(out);
    procpool::wire::save(w, v);
    return out;
}

TEST(ObserveJournal, PathIsADirectory_MissingDirectory_FullDevice_ThrowBeforeAnyTaskRuns) {
    temp_dir dir;
    run_counter rc;
    auto fn = [&](int i) {
        rc.ran(i);
        return i;
    };
    for (const std::string& path :
         {dir.path(), dir.path() + "/missing/run.journal", std::string("/dev/full")}) {
        try {
            (void)run_in_threads(fn, numbers(4), {.workers = 2, .journal = path});
            ADD_FAILURE() << path << ": no exception";
        } catch (const procpool::error& e) {
            EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
        }
        EXPECT_EQ(rc.total(), 0) << path;
    }
    EXPECT_FALSE(fs::exists(dir.path() + "/missing"));
}

/// Child (--fsize-child PATH LIMIT): a run whose journal hits RLIMIT_FSIZE part-way.
/// SIGXFSZ is ignored (else the kernel kills the process), so write() fails with EFBIG.
int fsize_child(const std::string& path, long limit) {
    std::signal(SIGXFSZ, SIG_IGN);
    const rlimit lim{static_cast<rlim_t>(limit), static_cast<rlim_t>(limit)};
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) return 20;
    try {
        (void)run_in_threads(square_plus_one, numbers(64), {.workers = 1, .journal = path});
    } catch (const procpool::error& e) {
        return std::string(e.what()).find("writing journal") != std::string::npos ? 10 : 11;
    } catch (...) {
        return 12;
    }
    return 13;
}

/// Starts this test binary as a child with `args`; returns its pid.
pid_t spawn_self(const std::vector<std::string>& args) {
    const std::string self = fs::read_symlink("/proc/self/exe").string();
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(self.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        execv(self.c_str(), argv.data());
        _exit(127);
    }
    return pid;
}

int wait_exit(pid_t pid) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

TEST(ObserveJournal, DiskFullMidRun_ThrowsCleanly_LeavesWholeRecords_ResumeCompletes) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    // 1000 bytes: the header and some records fit; a record is cut by the limit.
    const pid_t child = spawn_self({"--fsize-child", path, "1000"});
    ASSERT_GT(child, 0);
    ASSERT_EQ(wait_exit(child), 10) << "the run must fail with procpool::error 'writing journal'";
    const auto left = read_journal(path);
    EXPECT_TRUE(left.tail_note.empty()) << left.tail_note;
    EXPECT_EQ(left.valid_bytes, left.file_bytes);
    EXPECT_LE(left.file_bytes, 1000u);
    ASSERT_FALSE(left.records.empty());
    std::set<int> stored;
    for (const auto& r : left.records) stored.insert(static_cast<int>(r.index));

    run_counter rc;
    const auto out = run_in_threads(
        [&](int i) {
            rc.ran(i);
            return square_plus_one(i);
        },
        numbers(64), {.workers = 2, .journal = path});
    for (int i = 0; i < 64; ++i) {
        ASSERT_TRUE(out[static_cast<std::size_t>(i)]) << i;
        EXPECT_EQ(*out[static_cast<std::size_t>(i)], i * i + 1);
        EXPECT_EQ(rc.of(i), stored.count(i) != 0 ? 0 : 1) << "task " << i;
    }
    const auto after = read_journal(path);
    EXPECT_EQ(after.valid_bytes, after.file_bytes);
    EXPECT_EQ(after.records.size(), 64u);
}

TEST(ObserveJournal, HugeLengthsGarbageAndUndecodableFrames_EndTheJournal_NoRerunOfWholeRecords) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    (void)run_in_threads(square_plus_one, numbers(6), {.workers = 1, .journal = path});
    const auto whole = read_journal(path);
    ASSERT_EQ(whole.records.size(), 6u);

    std::vector<std::vector<std::byte>> tails;
    for (std::uint64_t size : {~std::uint64_t{0}, std::uint64_t{1} << 62, std::uint64_t{1} << 40,
                               ~std::uint64_t{0} - 15, std::uint64_t{0}}) {
        std::vector<std::byte> t(sizeof size + 64, std::byte{0x5a});
        std::memcpy(t.data(), &size, sizeof size);
        tails.push_back(std::move(t));
    }
    tails.emplace_back(4096, std::byte{0});  // zeros, as a crash can leave
    {
        std::mt19937_64 rng(42);
        std::vector<std::byte> g(3000);
        for (auto& b : g) b = static_cast<std::byte>(rng());
        tails.push_back(std::move(g));
    }
    // A frame whose check matches but whose status byte is out of range.
    procpool::journal_record bad;
    bad.index = 1;
    bad.input_hash = whole.records[1].input_hash;
    bad.failure = static_cast<failure_kind>(200);
    tails.push_back(forged_frame(bad, {}));

    for (std::size_t k = 0; k < tails.size(); ++k) {
        fs::resize_file(path, whole.valid_bytes);
        append_bytes(path, tails[k].data(), tails[k].size());
        const auto seen = read_journal(path);
        EXPECT_EQ(seen.records.size(), 6u) << "tail " << k;
        EXPECT_EQ(seen.valid_bytes, whole.valid_bytes) << "tail " << k;
        EXPECT_FALSE(seen.tail_note.empty()) << "tail " << k;
        run_counter rc;
        const auto out = run_in_threads(
            [&](int i) {
                rc.ran(i);
                return square_plus_one(i);
            },
            numbers(6), {.workers = 1, .journal = path});
        EXPECT_EQ(rc.total(), 0) << "tail " << k;
        for (int i = 0; i < 6; ++i) EXPECT_EQ(*out[static_cast<std::size_t>(i)], i * i + 1);
        EXPECT_EQ(fs::file_size(path), whole.valid_bytes) << "the tail is cut off (" << k << ")";
    }
}

TEST(ObserveJournal, ForgedRecords_OutOfRange_BadValues_AbsurdAttempts_AreHarmless) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    std::atomic<bool> fail{true};
    auto fn = [&](int i) {
        if (i == 2 && fail.load()) throw std::runtime_error("two");
        return square_plus_one(i);
    };
    (void)run_in_threads(fn, numbers(6), {.workers = 1, .journal = path});
    const auto whole = read_journal(path);
    ASSERT_EQ(whole.records.size(), 6u);
    std::map<std::uint64_t, std::uint64_t> hash;
    for (const auto& r : whole.records) hash[r.index] = r.input_hash;

    auto add = [&](procpool::journal_record r, const std::vector<std::byte>& value) {
        const auto f = forged_frame(r, value);
        append_bytes(path, f.data(), f.size());
    };
    procpool::journal_record r;
    r.index = 6;  // out of range
    r.input_hash = hash[0];
    add(r, wire_bytes(-1));
    r.index = ~std::uint64_t{0};
    add(r, wire_bytes(-1));
    r.index = 3;  // a value that does not decode as an int: run again
    r.input_hash = hash[3];
    add(r, {std::byte{1}, std::byte{2}});
    r.index = 4;  // an int and trailing bytes: run again
    r.input_hash = hash[4];
    auto v = wire_bytes(77);
    v.push_back(std::byte{9});
    add(r, v);
    r.index = 2;  // a failure with an absurd attempt count, kept with resume_keep_failures
    r.input_hash = hash[2];
    r.failure = failure_kind::exception;
    r.message = "forged";
    r.attempts = ~std::uint32_t{0};
    add(r, {});
    const auto seen = read_journal(path);
    EXPECT_EQ(seen.records.size(), 11u);
    EXPECT_TRUE(seen.tail_note.empty()) << seen.tail_note;

    run_counter rc;
    fail = false;
    const auto out = run_in_threads(
        [&](int i) {
            rc.ran(i);
            return fn(i);
        },
        numbers(6),
        {.workers = 1, .journal = path, .journal_mode = journal_mode::resume_keep_failures});
    EXPECT_EQ(rc.of(3), 1);
    EXPECT_EQ(rc.of(4), 1);
    EXPECT_EQ(rc.total(), 2);
    ASSERT_FALSE(out[2]);
    EXPECT_EQ(out[2].error().cause_message(), "forged");
    EXPECT_GE(out[2].error().attempts(), 0) << out[2].error().what();
    for (int i : {0, 1, 3, 4, 5}) EXPECT_EQ(*out[static_cast<std::size_t>(i)], i * i + 1);
}

TEST(ObserveJournal, TwoRunsAtOnce_SecondRefused_EvenWithRestart_FirstKeepsItsRecords) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    procpool_test::gate release;
    std::atomic<int> done{0};
    std::thread first([&] {
        const auto out = run_in_threads(
            [&](int i) {
                if (i == 5) release.wait();
                return square_plus_one(i);
            },
            numbers(6),
            {.workers = 1,
             .on_result = [&](std::size_t, const procpool::outcome<int>&) { ++done; },
             .journal = path});
        EXPECT_EQ(out.size(), 6u);
    });
    ASSERT_TRUE(eventually([&] { return done.load() == 5; }));
    for (auto mode :
         {journal_mode::resume, journal_mode::resume_keep_failures, journal_mode::restart}) {
        run_counter rc;
        try {
            (void)run_in_threads(
                [&](int i) {
                    rc.ran(i);
                    return i;
                },
                numbers(6), {.workers = 1, .journal = path, .journal_mode = mode});
            ADD_FAILURE() << "no exception";
        } catch (const procpool::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
        }
        EXPECT_EQ(rc.total(), 0);
    }
    EXPECT_EQ(read_journal(path).records.size(), 5u) << "the refused restart emptied the file";
    release.open();
    first.join();
    EXPECT_EQ(read_journal(path).records.size(), 6u);
}

/// A result whose serializer throws for 13 and whose deserializer throws for 7.
struct picky {
    int x = 0;
    template <class Archive>
    void save(Archive& ar) const {
        if (x == 13) throw std::runtime_error("cannot save 13");
        ar(x);
    }
    template <class Archive>
    void load(Archive& ar) {
        ar(x);
        if (x == 7) throw std::runtime_error("cannot load 7");
    }
};

TEST(ObserveJournal, ResultSerializerThrows_TaskNotRecorded_RunsAgainOnResume) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    run_counter rc;
    auto fn = [&](int i) {
        rc.ran(i);
        return picky{i};
    };
    auto out = run_in_threads(fn, numbers(16), {.workers = 2, .journal = path});
    for (int i = 0; i < 16; ++i) EXPECT_EQ(out[static_cast<std::size_t>(i)]->x, i);
    EXPECT_EQ(read_journal(path).records.size(), 15u);
    out = run_in_threads(fn, numbers(16), {.workers = 2, .journal = path});
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(out[static_cast<std::size_t>(i)]->x, i);
        EXPECT_EQ(rc.of(i), (i == 13 || i == 7) ? 2 : 1) << "task " << i;
    }
}

TEST(ObserveJournal, ResumeWithAnotherResultType_Refused_RestartRuns) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    (void)run_in_threads(square_plus_one, numbers(4), {.journal = path});
    auto as_long = [](int i) { return static_cast<long>(i) * 2; };
    try {
        (void)run_in_threads(as_long, numbers(4), {.journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("long"), std::string::npos) << e.what();
    }
    const auto out = run_in_threads(as_long, numbers(4),
                                    {.journal = path, .journal_mode = journal_mode::restart});
    EXPECT_EQ(*out[3], 6L);
    EXPECT_EQ(read_journal(path).header.result_type, "long");
}

TEST(ObserveJournal, FailFast_RecordsCancellations_ResumeRunsThemAgain) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    run_counter rc;
    std::atomic<bool> broken{true};
    auto fn = [&](int i) {
        rc.ran(i);
        if (i == 5 && broken.load()) throw std::runtime_error("five");
        return square_plus_one(i);
    };
    const auto first = run_in_threads(
        fn, numbers(20), {.workers = 1, .fail_fast = true, .max_in_flight = 1, .journal = path});
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(first[static_cast<std::size_t>(i)]);
    for (int i = 5; i < 20; ++i) EXPECT_FALSE(first[static_cast<std::size_t>(i)]);
    const auto j = read_journal(path);
    EXPECT_EQ(j.records.size(), 20u);
    int cancelled = 0;
    for (const auto& r : j.records) cancelled += r.failure == failure_kind::cancelled ? 1 : 0;
    EXPECT_EQ(cancelled, 14);

    // Keeping failures: 5 stays failed, the cancelled ones run now.
    const auto kept = run_in_threads(fn, numbers(20),
                                     {.workers = 1,
                                      .fail_fast = true,
                                      .max_in_flight = 1,
                                      .journal = path,
                                      .journal_mode = journal_mode::resume_keep_failures});
    EXPECT_FALSE(kept[5]);
    for (int i = 0; i < 20; ++i) {
        if (i != 5) {
            EXPECT_EQ(*kept[static_cast<std::size_t>(i)], i * i + 1) << i;
        }
        EXPECT_EQ(rc.of(i), 1) << "task " << i;  // 0..5 in the first run, the rest now
    }
    broken = false;
    const auto fixed = run_in_threads(fn, numbers(20), {.workers = 1, .journal = path});
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(*fixed[static_cast<std::size_t>(i)], i * i + 1) << i;
        EXPECT_EQ(rc.of(i), i == 5 ? 2 : 1) << "task " << i;
    }
}

/// Crashes its worker the first time it runs for `i` (a marker file), then succeeds.
int crash_once(std::string marks, int i) {
    const std::string m = marks + "/crashed-" + std::to_string(i);
    if (i % 2 == 0 && !fs::exists(m)) {
        std::ofstream(m) << 1;
        std::abort();
    }
    if (i == 3) std::abort();  // always
    return i * 10;
}

TEST(ObserveJournal, Retries_RecordAttempts_KeptFailuresKeepThem) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    const std::string marks = dir.path() + "/marks";
    fs::create_directory(marks);
    std::vector<std::tuple<std::string, int>> tasks;
    for (int i = 0; i < 6; ++i) tasks.emplace_back(marks, i);
    const auto first =
        run_in_processes(crash_once, tasks, {.workers = 2, .retries = 1, .journal = path});
    for (int i = 0; i < 6; ++i) {
        if (i == 3) {
            ASSERT_FALSE(first[3]);
            EXPECT_EQ(first[3].error().attempts(), 2);
        } else {
            EXPECT_EQ(*first[static_cast<std::size_t>(i)], i * 10);
        }
    }
    std::map<std::uint64_t, std::uint32_t> attempts;
    for (const auto& r : read_journal(path).records) attempts[r.index] = r.attempts;
    EXPECT_EQ(attempts, (std::map<std::uint64_t, std::uint32_t>{
                            {0, 2}, {1, 1}, {2, 2}, {3, 2}, {4, 2}, {5, 1}}));
    const auto kept = run_in_processes(crash_once, tasks,
                                       {.workers = 2,
                                        .retries = 1,
                                        .journal = path,
                                        .journal_mode = journal_mode::resume_keep_failures});
    ASSERT_FALSE(kept[3]);
    EXPECT_EQ(kept[3].error().kind(), failure_kind::worker_died);
    EXPECT_EQ(kept[3].error().attempts(), 2);
    EXPECT_EQ(read_journal(path).records.size(), 6u) << "nothing ran again";
}

TEST(ObserveJournal, OnResultThrows_RecordsUpToIt_ResumeSkipsThem) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    run_counter rc;
    auto fn = [&](int i) {
        rc.ran(i);
        return square_plus_one(i);
    };
    try {
        (void)run_in_threads(fn, numbers(10),
                             {.workers = 1,
                              .on_result =
                                  [](std::size_t i, const procpool::outcome<int>&) {
                                      if (i == 4) throw std::logic_error("stop at 4");
                                  },
                              .max_in_flight = 1,
                              .journal = path});
        ADD_FAILURE() << "no exception";
    } catch (const std::logic_error& e) {
        EXPECT_STREQ(e.what(), "stop at 4");
    }
    const auto j = read_journal(path);
    std::set<std::uint64_t> ix;
    for (const auto& r : j.records) ix.insert(r.index);
    EXPECT_EQ(ix, (std::set<std::uint64_t>{0, 1, 2, 3, 4}));
    const auto out = run_in_threads(fn, numbers(10), {.workers = 1, .journal = path});
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(*out[static_cast<std::size_t>(i)], i * i + 1);
        EXPECT_EQ(rc.of(i), 1) << "task " << i;
    }
}

// ---- SIGKILL at arbitrary moments, fifty times, then resume --------------------------------

constexpr int kill_tasks = 3000;  // more than a run finishes before it is killed
int kill_expected(int i) {
    return i * 7 + 3;
}
bool kill_fails(int i) {
    return i % 13 == 5;
}

/// Child (--kill-child JOURNAL MARKS): a run over `kill_tasks` tasks that leave a marker
/// per run; the test kills it at a random moment.
int kill_child(const std::string& journal, const std::string& marks) {
    (void)run_in_threads(
        [&](int i) {
            std::ofstream(marks + "/ran-" + std::to_string(i) + "-" + std::to_string(getpid()))
                << 1;
            if (kill_fails(i)) throw std::runtime_error("fails " + std::to_string(i));
            return kill_expected(i);
        },
        numbers(kill_tasks), {.workers = 2, .journal = journal});
    return 0;
}

/// Task -> pids of the processes that ran it, from the markers.
std::map<int, std::set<int>> marker_runs(const std::string& marks) {
    std::map<int, std::set<int>> out;
    for (const auto& e : fs::directory_iterator(marks)) {
        const std::string name = e.path().filename().string();
        const auto dash = name.find('-', 4);
        out[std::stoi(name.substr(4, dash - 4))].insert(std::stoi(name.substr(dash + 1)));
    }
    return out;
}

TEST(ObserveJournal, KilledAtRandomMoments50Times_ResumeGivesEveryValue_NoFinishedTaskReruns) {
    temp_dir dir;
    const std::string path = dir.path() + "/run.journal";
    const std::string marks = dir.path() + "/marks";
    fs::create_directory(marks);
    std::mt19937 rng(std::random_device{}());
    std::set<int> finished;  // tasks with a value recorded, as of the last kill
    int killed_mid_run = 0;
    for (int round = 0; round < 50; ++round) {
        std::error_code ec;
        const auto size_before = fs::file_size(path, ec);
        const pid_t child = spawn_self({"--kill-child", path, marks});
        ASSERT_GT(child, 0);
        // A third of the kills at any moment from the start (often before the journal is
        // open, or while its header is written); the others once this child has written
        // to the journal (however slow its start, e.g. under a sanitizer), so they land
        // among its records.
        int status = 0;
        bool exited = false;
        if (round % 3 != 0) {
            const bool wrote = eventually([&] {
                if (waitpid(child, &status, WNOHANG) == child) exited = true;
                std::error_code e;
                const auto now = fs::file_size(path, e);
                return exited || (!e && (ec || now > size_before));
            });
            ASSERT_TRUE(wrote) << "round " << round << ": the child never wrote its journal";
        }
        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
        if (!exited) kill(child, SIGKILL);  // not once reaped: its pid may be another's
        const int st = exited ? (WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status))
                              : wait_exit(child);
        ASSERT_TRUE(st == 0 || st == 1000 + SIGKILL) << "child status " << st;
        // No task whose value was recorded before this child started ran in it.
        for (const auto& [task, pids] : marker_runs(marks)) {
            if (finished.count(task) != 0) {
                EXPECT_EQ(pids.count(child), 0u)
                    << "task " << task << " ran again in round " << round;
            }
        }
        if (!fs::exists(path)) continue;
        try {
            const auto j = read_journal(path);
            EXPECT_EQ(j.header.task_count, static_cast<std::uint64_t>(kill_tasks));
            for (const auto& r : j.records) {
                ASSERT_LT(r.index, static_cast<std::uint64_t>(kill_tasks));
                if (r.ok()) {
                    procpool::wire::reader in(r.value);
                    EXPECT_EQ(procpool::wire::load<int>(in),
                              kill_expected(static_cast<int>(r.index)));
                    finished.insert(static_cast<int>(r.index));
                } else {
                    EXPECT_TRUE(kill_fails(static_cast<int>(r.index))) << r.index;
                }
            }
            if (st != 0 && !j.records.empty()) ++killed_mid_run;
        } catch (const procpool::invalid_argument&) {
            // Killed before its header was whole: the next run starts it again.
        }
    }
    // Not asserted (it depends on the machine's speed): how many kills hit a run.
    std::printf("killed with records written: %d of 50 rounds; %zu of %d tasks finished\n",
                killed_mid_run, finished.size(), kill_tasks);

    run_counter rc;
    const auto out = run_in_threads(
        [&](int i) {
            rc.ran(i);
            if (kill_fails(i)) throw std::runtime_error("fails " + std::to_string(i));
            return kill_expected(i);
        },
        numbers(kill_tasks), {.workers = 2, .journal = path});
    for (int i = 0; i < kill_tasks; ++i) {
        const auto& o = out[static_cast<std::size_t>(i)];
        if (kill_fails(i)) {
            ASSERT_FALSE(o);
            EXPECT_EQ(o.error().cause_message(), "std::runtime_error: fails " + std::to_string(i));
        } else {
            ASSERT_TRUE(o) << o.error().what();
            EXPECT_EQ(*o, kill_expected(i));
        }
        if (finished.count(i) != 0) {
            EXPECT_EQ(rc.of(i), 0) << "task " << i;
        }
    }
    const auto j = read_journal(path);
    EXPECT_EQ(j.valid_bytes, j.file_bytes);
    std::set<std::uint64_t> ix;
    for (const auto& r : j.records) ix.insert(r.index);
    EXPECT_EQ(ix.size(), static_cast<std::size_t>(kill_tasks));
}

}  // namespace

// procpool::init first, as every program with process pools must. Children for the
// journal tests are this binary started with a mode flag.
int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--fsize-child") {
        return fsize_child(argv[2], std::stol(argv[3]));
    }
    if (argc == 4 && std::string(argv[1]) == "--kill-child") {
        return kill_child(argv[2], argv[3]);
    }
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
