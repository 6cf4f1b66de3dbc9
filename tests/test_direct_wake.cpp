// A thread blocked on a process-pool future sleeps on its task's worker's doorbell
// (help_wait), and whatever resolves the task must wake it there: the worker's
// completion, the worker's death, a cancel, the waiter's own deadline. These tests turn
// the waiter's periodic second look off (`waiter_recheck`, one hour), so a path that
// forgets to ring hangs its test, which the ctest timeout then fails.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "process/pool_core.hpp"
#include "process_support.hpp"
#include "procpool/procpool.hpp"
#include "worker_internals.hpp"

using procpool::process_pool;
using procpool_test::file_gate;

namespace {

int add(int a, int b) {
    return a + b;
}

// Marks that it started, waits for the gate, then kills its own worker.
int die_at_gate(std::string dir) {
    file_gate::wait_then_return(std::move(dir), 0);
    raise(SIGKILL);
    return 0;
}

// Turns the waiters' periodic second look off for one test.
class no_recheck {
  public:
    no_recheck() : saved_(procpool::process::waiter_recheck) {
        procpool::process::waiter_recheck = std::chrono::hours(1);
    }
    no_recheck(const no_recheck&) = delete;
    no_recheck& operator=(const no_recheck&) = delete;
    ~no_recheck() { procpool::process::waiter_recheck = saved_; }

  private:
    std::chrono::steady_clock::duration saved_;
};

// Waits until `done()` is true; false if it is not within minutes (a watchdog: the test
// then fails instead of hanging).
template <class Done>
bool eventually(Done done) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (!done()) {
        if (std::chrono::steady_clock::now() >= until) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

// The state letter of thread `tid` of this process ('S': asleep), from /proc.
char thread_state(int tid) {
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');
    return close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : '?';
}

// A thread that calls `wait()` and records that it returned. `asleep()` returns once the
// thread is inside the call and the kernel shows it sleeping (a watchdog of minutes
// fails the test if it never does).
class blocked_waiter {
  public:
    template <class Wait>
    explicit blocked_waiter(Wait wait)
        : thread_([this, wait]() mutable {
              tid_.store(static_cast<int>(syscall(SYS_gettid)));
              wait();
              returned_.store(true);
          }) {}
    blocked_waiter(const blocked_waiter&) = delete;
    blocked_waiter& operator=(const blocked_waiter&) = delete;
    ~blocked_waiter() {
        if (thread_.joinable()) thread_.join();
    }

    void asleep() const {
        const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(2);
        while (tid_.load() == 0 || thread_state(tid_.load()) != 'S') {
            ASSERT_LT(std::chrono::steady_clock::now(), until) << "the waiter never slept";
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        ASSERT_FALSE(returned_.load());
    }
    void join() { thread_.join(); }
    bool returned() const { return returned_.load(); }

  private:
    std::atomic<int> tid_{0};
    std::atomic<bool> returned_{false};
    std::thread thread_;
};

TEST(DirectWake, TheWorkersCompletion_WakesTheThreadAsleepInGet) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    file_gate gate;
    auto f = pool.submit(file_gate::wait_then_return, gate.path(), 7);
    gate.wait_started();
    int got = 0;
    blocked_waiter w([&] { got = f.get(); });
    w.asleep();
    gate.open();
    w.join();
    EXPECT_EQ(got, 7);
}

TEST(DirectWake, TwoThreadsAsleepOnOneWorker_BothWake) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    file_gate gate;
    auto first = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    auto second = pool.submit(add, 2, 3);  // dispatched behind it (a window of two)
    gate.wait_started();
    int a = 0;
    int b = 0;
    blocked_waiter wa([&] { a = first.get(); });
    blocked_waiter wb([&] { b = second.get(); });
    wa.asleep();
    wb.asleep();
    gate.open();
    wa.join();
    wb.join();
    EXPECT_EQ(a, 1);
    EXPECT_EQ(b, 5);
}

TEST(DirectWake, TheWorkersDeath_WakesTheThreadAsleepInGet) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    file_gate gate;
    auto f = pool.submit(die_at_gate, gate.path());
    gate.wait_started();
    bool died = false;
    blocked_waiter w([&] {
        try {
            (void)f.get();
        } catch (const procpool::worker_died& e) {
            died = e.signal() == SIGKILL;
        }
    });
    w.asleep();
    gate.open();
    w.join();
    EXPECT_TRUE(died);
    EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);  // and the pool goes on with a new worker
}

// The number of mappings of worker regions in this process (from /proc/self/maps).
int region_mappings() {
    std::ifstream in("/proc/self/maps");
    int n = 0;
    for (std::string line; std::getline(in, line);) {
        n += line.find("procpool-worker") != std::string::npos ? 1 : 0;
    }
    return n;
}

// A worker that dies with a thread seated on its bell keeps its region mapped until that
// thread leaves (no new mapping may take the address it is about to sleep on), and not
// longer: after many such deaths and the pool, no region is left mapped.
TEST(DirectWake, RegionsKeptForSeatedWaiters_AreUnmappedWhenTheyLeave) {
    no_recheck quick_look_off;
    const int before = region_mappings();
    {
        process_pool pool({.workers = 1});
        for (int round = 0; round < 10; ++round) {
            file_gate gate;
            auto f = pool.submit(die_at_gate, gate.path());
            gate.wait_started();
            blocked_waiter w([&] {
                try {
                    (void)f.get();
                } catch (const procpool::worker_died&) {
                }
            });
            w.asleep();
            gate.open();
            w.join();
        }
        EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);
        EXPECT_EQ(region_mappings(), before + 1);  // the live worker's only
    }
    EXPECT_EQ(region_mappings(), before);
}

// A task writes its worker's wake-up words (they are in its memory): the count of
// waiting threads, so that the worker leaves every later completion to threads that do
// not exist, or the supervisor's "I sleep" flag, so that the worker does not wake it.
// Futures that nobody waits on (a callback only) still resolve: the supervisor puts the
// count back before it sleeps and, while tasks are outstanding, looks every
// waiter_recheck anyway. And the pool's destructor returns.
int claim_waiters() {
    procpool_test::my_region()->waiters.sleepers.store(5);
    return 1;
}
int clear_parent_flag() {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));  // the supervisor sleeps by now
    procpool_test::my_region()->parent.sleeping.store(0);
    return 2;
}

TEST(DirectWake, ATaskThatWritesItsWorkersWakeUpWords_DelaysOnlyItsOwnResults) {
    for (auto* task : {&claim_waiters, &clear_parent_flag}) {
        process_pool pool({.workers = 1});
        std::atomic<int> fired{0};
        auto hostile = pool.submit(task);
        hostile.on_done([&fired] { fired.fetch_add(1); });
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        auto after = pool.submit(add, 2, 3);
        after.on_done([&fired] { fired.fetch_add(1); });
        ASSERT_TRUE(eventually([&] { return fired.load() == 2; })) << "a completion was stranded";
        EXPECT_EQ(after.get(), 5);
    }
}

// The same, from a thread the task leaves behind in its worker, writing after the pool
// has gone idle (so after the supervisor last put the count back and went to sleep).
template <int Which>
int leave_a_writer() {
    std::thread([] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        for (;;) {
            if (Which == 0) procpool_test::my_region()->waiters.sleepers.store(1);
            if (Which == 1) procpool_test::my_region()->parent.sleeping.store(0);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }).detach();
    return 0;
}

TEST(DirectWake, AThreadATaskLeavesBehind_WritingWakeUpWordsWhileIdle_StrandsNothing) {
    for (auto* task : {&leave_a_writer<0>, &leave_a_writer<1>}) {
        process_pool pool({.workers = 1});
        EXPECT_EQ(pool.submit(task).get(), 0);
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // idle; it writes
        std::atomic<bool> fired{false};
        auto after = pool.submit(add, 2, 3);
        after.on_done([&fired] { fired.store(true); });
        ASSERT_TRUE(eventually([&] { return fired.load(); })) << "a completion was stranded";
        EXPECT_EQ(after.get(), 5);
    }  // and the destructor returns (the writer dies with its worker)
}

// The number of times the thread named `name` in this process went to sleep and was woken
// (voluntary context switches), or -1 if there is no such thread.
long wake_ups_of(const std::string& name) {
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream comm(task.path() / "comm");
        std::string n;
        std::getline(comm, n);
        if (n != name) continue;
        std::ifstream status(task.path() / "status");
        for (std::string line; std::getline(status, line);) {
            if (line.rfind("voluntary_ctxt_switches:", 0) == 0) return std::stol(line.substr(24));
        }
    }
    return -1;
}

// An idle pool's supervisor sleeps until something happens: no task, so nothing a task
// could strand, so no periodic look (that look would be 10 wake-ups a second here).
// Settling (the fork server's spares, the last look after the task) takes longer on a
// busy machine, so the test watches up to 20 one-second windows and wants one quiet
// one; a periodic look wakes it about 10 times in every window, loaded or not.
TEST(DirectWake, AnIdlePoolsSupervisor_IsNotWokenWhileNothingHappens) {
    process_pool pool({.workers = 2});
    EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);
    long fewest = std::numeric_limits<long>::max();
    for (int window = 0; window < 20 && fewest >= 5; ++window) {
        const long before = wake_ups_of("procpool-super");
        ASSERT_GE(before, 0) << "no supervisor thread found";
        std::this_thread::sleep_for(std::chrono::seconds(1));
        fewest = std::min(fewest, wake_ups_of("procpool-super") - before);
    }
    EXPECT_LT(fewest, 5) << "an idle supervisor was woken at least " << fewest
                         << " times in each idle second";
    // And it still looks after the next task.
    EXPECT_EQ(pool.submit(add, 2, 3).get(), 5);
}

int spin_us(int us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (std::chrono::steady_clock::now() < until) {
    }
    return us;
}

// A callback runs on the thread that drains its task's completion, often a thread
// waiting in get(), once it has let go of the pool's drain lock: a wait_for there on
// another future of the pool must return, not take the lock again. Tiny tasks (the
// waiting thread spins and drains) and long ones (it sleeps on the worker's bell).
TEST(DirectWake, WaitForInsideACallback_OnAnotherFutureOfThePool_ReturnsAtItsDeadline) {
    for (const int us : {0, 1000}) {
        process_pool pool({.workers = 1});
        for (int i = 0; i < 3; ++i) ASSERT_EQ(pool.submit(spin_us, us).get(), us);
        std::atomic<int> polled{0};
        for (int i = 0; i < 10; ++i) {
            auto a = pool.submit(spin_us, us);
            auto b = pool.submit(spin_us, 20'000);
            a.on_done([b, &polled] {
                (void)b.wait_for(std::chrono::milliseconds(1));
                polled.fetch_add(1);
            });
            EXPECT_EQ(a.get(), us);
            EXPECT_EQ(b.get(), 20'000);
        }
        // The callback may run on another thread that a loaded machine has not yet let
        // finish; shutdown returns only after the callbacks of the pool's tasks ran.
        pool.shutdown();
        EXPECT_EQ(polled.load(), 10);
    }
}

// A task dispatched to a busy worker and cancelled before it starts is resolved by the
// cancel; its worker rings only when it gets to it, which here is never before the test
// opens the gate, and the test opens it only after the waiter returned.
TEST(DirectWake, CancellingADispatchedTask_WakesTheThreadAsleepInItsGet) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    file_gate gate;
    auto running = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    auto queued = pool.submit(add, 2, 3);  // dispatched behind it (a window of two)
    gate.wait_started();
    bool cancelled = false;
    blocked_waiter w([&] {
        try {
            (void)queued.get();
        } catch (const procpool::task_cancelled&) {
            cancelled = true;
        }
    });
    w.asleep();
    ASSERT_TRUE(queued.cancel_pending());
    w.join();
    EXPECT_TRUE(cancelled);
    gate.open();
    EXPECT_EQ(running.get(), 1);
}

// A worker that rang its waiters leaves the completions after it to them until they
// take themselves back; those for futures nobody waits on (callbacks only) must still be
// resolved, by the leaving thread or by the supervisor it wakes.
TEST(DirectWake, CompletionsAfterTheWaitersOwn_ReachFuturesThatOnlyHaveCallbacks) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    for (int i = 0; i < 200; ++i) ASSERT_EQ(pool.submit(add, i, 1).get(), i + 1);  // deep window
    for (int round = 0; round < 20; ++round) {
        file_gate gate;
        auto head = pool.submit(file_gate::wait_then_return, gate.path(), 0);
        auto mine = pool.submit(add, round, 1);
        std::atomic<int> called{0};
        std::vector<procpool::future<int>> rest;
        for (int i = 0; i < 200; ++i) {
            rest.push_back(pool.submit(add, i, 2));
            rest.back().on_done([&called] { called.fetch_add(1); });
        }
        gate.wait_started();
        int got = -1;
        blocked_waiter w([&] { got = mine.get(); });
        w.asleep();
        gate.open();
        w.join();
        EXPECT_EQ(got, round + 1);
        // Nobody waits on `rest`: their callbacks say whether their completions were taken.
        ASSERT_TRUE(eventually([&] { return called.load() == 200; }))
            << called.load() << " of 200 completions reached their futures";
        EXPECT_EQ(head.get(), 0);
    }
}

TEST(DirectWake, WaitFor_ReturnsAtItsDeadline_WhileTheTaskRuns) {
    no_recheck quick_look_off;
    process_pool pool({.workers = 1});
    file_gate gate;
    auto f = pool.submit(file_gate::wait_then_return, gate.path(), 9);
    gate.wait_started();
    // Still running (the gate is shut): each wait ends at its deadline, not the task's end.
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(f.wait_for(std::chrono::milliseconds(20)));
    gate.open();
    EXPECT_EQ(f.get(), 9);
}

// A pool runs its futures' callbacks after it lets go of its drain lock, so a callback may
// block on any future. Two pools whose callbacks wait in get() on each other's tasks
// deadlocked when the callbacks ran under the lock: each held its own pool's lock and
// needed the other's to take the result it waited for. The main thread only watches, so
// the callbacks run on the pools' own threads.
TEST(CallbacksThatBlock, TwoPoolsCallbacksWaitingInGetOnEachOther_BothReturn) {
    process_pool a({.workers = 1});
    process_pool b({.workers = 1});
    // Gated, so that the callbacks are in place before the tasks end (a callback added to
    // a finished future runs on the thread adding it).
    file_gate gate_first;
    file_gate gate_a;
    file_gate gate_b;
    auto first_a = a.submit(file_gate::wait_then_return, gate_first.path(), 1);
    auto first_b = b.submit(file_gate::wait_then_return, gate_first.path(), 2);
    auto later_a = a.submit(file_gate::wait_then_return, gate_a.path(), 11);
    auto later_b = b.submit(file_gate::wait_then_return, gate_b.path(), 22);
    std::atomic<int> entered{0};
    std::atomic<int> got_a{0};
    std::atomic<int> got_b{0};
    // Each callback waits until the other one is running too, so that both are in
    // progress at once (each on the thread that drained its pool), then blocks.
    first_a.on_done([&, later_b] {
        entered.fetch_add(1);
        if (eventually([&] { return entered.load() == 2; })) got_b = later_b.get();
    });
    first_b.on_done([&, later_a] {
        entered.fetch_add(1);
        if (eventually([&] { return entered.load() == 2; })) got_a = later_a.get();
    });
    gate_first.open();
    ASSERT_TRUE(eventually([&] { return entered.load() == 2; }));
    gate_a.open();
    gate_b.open();
    ASSERT_TRUE(eventually([&] { return got_a.load() != 0 && got_b.load() != 0; }))
        << "the callbacks did not return";
    EXPECT_EQ(got_a.load(), 11);
    EXPECT_EQ(got_b.load(), 22);
}

// A callback blocking in get() on a later task of its own pool: the result it waits for
// must be taken from the rings, which the thread running the callback (or any other)
// can do because the lock is not held while callbacks run.
TEST(CallbacksThatBlock, ACallbackWaitingInGetOnALaterTaskOfItsPool_Returns) {
    for (const int workers : {1, 2}) {
        process_pool pool({.workers = workers});
        file_gate gate_first;
        file_gate gate;
        auto first = pool.submit(file_gate::wait_then_return, gate_first.path(), 7);
        auto later = pool.submit(file_gate::wait_then_return, gate.path(), 5);
        std::atomic<bool> entered{false};
        std::atomic<int> got{0};
        first.on_done([&, later] {
            entered = true;
            got = later.get();
        });
        gate_first.open();
        ASSERT_TRUE(eventually([&] { return entered.load(); }));
        gate.open();
        ASSERT_TRUE(eventually([&] { return got.load() != 0; })) << "the callback did not return";
        EXPECT_EQ(got.load(), 5);
        EXPECT_EQ(first.get(), 7);
    }
}

// A chain in which each task's callback submits the next task, gives it the same callback
// and waits for it in get(): the next callback runs inside that get() (the waiting thread
// drains the completion and runs what it held back), one level deeper per step. Runs
// nested past a fixed depth leave their callbacks to a run further out, so the chain's
// stack stays bounded however long it is (unbounded, 5000 steps took megabytes).
struct callback_chain {
    process_pool* pool = nullptr;
    int limit = 0;
    std::atomic<int> steps{0};
    std::atomic<std::uintptr_t> deepest{0};  // bytes below a thread's first step, at most

    void step(int k) {
        char here = 0;
        const auto at = reinterpret_cast<std::uintptr_t>(&here);
        // The chain may move between threads (whoever drains runs the callback): depth is
        // measured from each thread's first step.
        thread_local std::uintptr_t first = at;
        const std::uintptr_t depth = first > at ? first - at : at - first;
        if (depth > deepest.load()) deepest = depth;
        steps.fetch_add(1);
        if (k >= limit) return;
        auto f = pool->submit(add, k, 1);
        f.on_done([this, k] { step(k + 1); });
        (void)f.get();
    }
};

TEST(CallbacksThatBlock, AChainOfCallbacksWaitingOnTheNextTask_KeepsItsStackBounded) {
    process_pool pool({.workers = 1});
    callback_chain chain;
    chain.pool = &pool;
    chain.limit = 5000;
    auto first = pool.submit(add, 0, 0);
    first.on_done([&chain] { chain.step(0); });
    ASSERT_TRUE(eventually([&] { return chain.steps.load() > chain.limit; }))
        << chain.steps.load() << " steps of " << chain.limit;
    EXPECT_LT(chain.deepest.load(), 1u << 20);
}

// Shutdown waits for the tasks' callbacks too, though they now run after the pool lets go
// of its drain lock: a callback still running when shutdown returned could touch what
// the caller frees next. Here the callback runs on a thread woken on its worker's bell,
// which drains the ring itself (the supervisor, which shutdown joins, never sees it).
TEST(CallbacksThatBlock, ShutdownReturns_OnlyAfterTheCallbacksOfItsTasksRan) {
    no_recheck quick_look_off;
    for (int round = 0; round < 5; ++round) {
        process_pool pool({.workers = 1});
        // Long tasks: a waiting thread then goes straight to the worker's bell.
        for (int i = 0; i < 3; ++i) ASSERT_EQ(pool.submit(spin_us, 2000).get(), 2000);
        file_gate gate;
        auto f = pool.submit(file_gate::wait_then_return, gate.path(), 1);
        std::atomic<bool> ran{false};
        f.on_done([&ran] {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            ran = true;
        });
        gate.wait_started();
        blocked_waiter w([&] { (void)f.get(); });
        w.asleep();
        gate.open();
        pool.shutdown({.wait = true});
        EXPECT_TRUE(ran.load()) << "round " << round;
        w.join();
    }
}

// A task sent to a busy worker and cancelled before it starts: its callbacks run on the
// cancelling thread, while the worker's reply (it skips the task) is taken by another and
// counts the task out. Shutdown must still wait for those callbacks.
TEST(CallbacksThatBlock, ShutdownWaits_ForTheCallbacksOfATaskCancelledOnAnotherThread) {
    process_pool pool({.workers = 1});
    file_gate gate;
    auto head = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    auto behind = pool.submit(add, 1, 1);
    gate.wait_started();
    std::atomic<bool> entered{false};
    std::atomic<bool> finished{false};
    behind.on_done([&] {
        entered = true;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        finished = true;
    });
    std::thread canceller([&] { EXPECT_TRUE(behind.cancel()); });
    ASSERT_TRUE(eventually([&] { return entered.load(); }));
    gate.open();
    pool.shutdown({.wait = true});
    EXPECT_TRUE(finished.load()) << "shutdown returned while a callback of its task ran";
    canceller.join();
    EXPECT_EQ(head.get(), 1);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
