// Adversarial review of the fork server's spares (src/process/fork_server.cpp, fork_spare
// in src/process/spawn.cpp) and of the page population added with them (prefault_until,
// populate_pages): spares killed, stopped and continued at every moment, the fork server
// killed while spares exist, many pools made at once from several threads, large
// configurations forwarded to a spare, memory-limited pools, worker churn, crash loops, big
// vectors with cancels. Each test checks procpool's promises: every future resolves (a value
// or a typed error), nothing hangs, no process, zombie, descriptor or shared memory is left
// behind once the pools are gone.
//
// No timing assertions: every wait is bounded by a watchdog of a minute at most, after which
// the test fails instead of hanging.
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "process/fork_server.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool::start_method;

namespace {

constexpr auto watchdog = std::chrono::seconds(60);

// ---- tasks --------------------------------------------------------------------------------

int add(int a, int b) {
    return a + b;
}

int crash_if(int i) {
    if (i % 2 == 1) std::abort();
    return i;
}

std::string env_of(std::string name) {
    const char* v = std::getenv(name.c_str());
    return v != nullptr ? v : "<unset>";
}

int say(int i) {
    procpool_test::write_all(1, "out " + std::to_string(i));
    procpool_test::write_all(2, "err " + std::to_string(i));
    return i;
}

int my_pid() {
    return static_cast<int>(getpid());
}

int my_parent() {
    return static_cast<int>(getppid());
}

std::size_t g_init_len = 0;
char g_init_last = 0;
void remember_length(std::string s) {
    g_init_len = s.size();
    g_init_last = s.empty() ? '\0' : s.back();
}
std::size_t init_length() {
    return g_init_len + static_cast<unsigned char>(g_init_last);
}

// Tries to allocate and touch `mib` MiB; 1 if it could.
int allocate_mib(int mib) {
    const std::size_t n = static_cast<std::size_t>(mib) << 20;
    auto* p = static_cast<char*>(std::malloc(n));
    if (p == nullptr) throw std::bad_alloc();
    // Through a volatile pointer: a compiler may not drop the allocation (clang elides a
    // malloc whose memory nothing observes, and the test would see no limit at all).
    volatile char* q = p;
    for (std::size_t i = 0; i < n; i += 4096) q[i] = 1;
    const int touched = q[n - 1] == 0 || q[n - 1] == 1 ? 1 : 0;
    std::free(p);
    return touched;
}

std::vector<double> twice(std::vector<double> v) {
    for (double& x : v) x *= 2;
    return v;
}

double sum_then_crash(std::vector<double> v, int crash) {
    if (crash != 0) std::abort();
    double s = 0;
    for (double x : v) s += x;
    return s;
}

// ---- /proc helpers --------------------------------------------------------------------------

using procpool_test::all_processes;
using procpool_test::fd_count_of;
using proc_stat = procpool_test::proc_entry;

bool read_stat(int pid, proc_stat& out) {
    return procpool_test::read_proc(pid, out);
}

// Children of `parent`: live ones (running or stopped) and zombies.
std::set<int> live_children_of(int parent) {
    std::set<int> out;
    for (const auto& s : all_processes()) {
        if (s.ppid == parent && s.state != 'Z' && s.state != 'X') out.insert(s.pid);
    }
    return out;
}
std::set<int> zombie_children_of(int parent) {
    std::set<int> out;
    for (const auto& s : all_processes()) {
        if (s.ppid == parent && s.state == 'Z') out.insert(s.pid);
    }
    return out;
}

bool alive(int pid) {
    proc_stat s;
    return read_stat(pid, s) && s.state != 'Z' && s.state != 'X';
}

// Mappings of shared memory blocks in this process ("memfd:procpool-..." in /proc/self/maps).
int procpool_mappings() {
    std::ifstream in("/proc/self/maps");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) n += line.find("memfd:procpool") != std::string::npos ? 1 : 0;
    return n;
}

int server() {
    return procpool::process::fork_server_pid();
}

// Polls `ok` every 2 ms until it holds or the watchdog runs out; returns its last value.
template <class F>
bool eventually(F ok, std::chrono::seconds limit = watchdog) {
    const auto until = std::chrono::steady_clock::now() + limit;
    for (;;) {
        if (ok()) return true;
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(2ms);
    }
}

// A spare done setting itself up (PR_SET_PDEATHSIG, its own process group, the fork
// server's descriptors closed: 0, 1, 2 and its socket left), waiting for a request.
bool set_up(int pid) {
    proc_stat s;
    return read_stat(pid, s) && s.pgrp == pid && fd_count_of(pid) == 4;
}

// The fork server's live children that are no pool's worker: its spares (once no pool
// is alive, every live child is a spare), each set up.
std::set<int> wait_for_spares(std::size_t n) {
    std::set<int> s;
    const bool got = eventually([&] {
        s = live_children_of(server());
        if (s.size() < n) return false;
        for (int pid : s) {
            if (!set_up(pid)) return false;
        }
        return true;
    });
    EXPECT_TRUE(got) << "the fork server did not make " << n << " spares (has " << s.size() << ")";
    return s;
}

void use_a_pool_once() {
    process_pool pool({.workers = 1, .start = start_method::forkserver});
    ASSERT_EQ(pool.submit(add, 1, 2).get(), 3);
}

// The fork server at rest: every pool gone, its two spares made, no zombies. Returns its
// descriptor count then.
int settled_server_fds() {
    int fds = -1;
    const bool ok = eventually([&] {
        if (live_children_of(server()).size() != 2) return false;
        if (!zombie_children_of(server()).empty()) return false;
        fds = fd_count_of(server());
        return true;
    });
    EXPECT_TRUE(ok) << "the fork server did not settle: live children "
                    << live_children_of(server()).size() << ", zombies "
                    << zombie_children_of(server()).size();
    return fds;
}

// After pools are gone: the fork server back to at most `baseline` descriptors, two spares,
// no zombies (bounded wait: the server learns of closed channels and exits asynchronously).
// At most, not exactly: the baseline can include the channel of the pool that was just
// closed, if the server was making its spares (two forks in a row) when the channel closed
// and the count was taken before it noticed; fewer descriptors than that is not a leak.
void expect_server_back_to(int baseline) {
    int fds = -1;
    std::size_t live = 0;
    std::size_t zombies = 0;
    const bool ok = eventually([&] {
        live = live_children_of(server()).size();
        zombies = zombie_children_of(server()).size();
        fds = fd_count_of(server());
        return live == 2 && zombies == 0 && fds <= baseline;
    });
    EXPECT_TRUE(ok) << "fork server: " << fds << " descriptors (at most " << baseline
                    << " expected), " << live << " live children (2 spares expected), " << zombies
                    << " zombies";
}

// Waits for a future with the watchdog; false (and a failure) if it did not resolve.
template <class F>
bool resolves(const F& f) {
    const bool ready = f.wait_for(watchdog);
    EXPECT_TRUE(ready) << "a future did not resolve within a minute";
    return ready;
}

// ---- spares: assignment, races with kills and stops ----------------------------------------

// Spares killed at every moment (before, during and after they are handed a request) while
// pools start, run and end: every future resolves, with its value or a typed error; nothing
// is left behind.
TEST(AdversarySpares, KilledAtEveryMoment_FuturesResolve_NothingLeft) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    const int parent_fds = procpool_test::open_fd_count();

    std::atomic<bool> stop{false};
    std::mutex mu;
    std::set<int> protected_pids;  // workers of live pools, as far as the killer knows
    std::atomic<int> killed{0};
    std::thread killer([&] {
        while (!stop.load()) {
            std::set<int> keep;
            {
                std::lock_guard lock(mu);
                keep = protected_pids;
            }
            for (int pid : live_children_of(server())) {
                if (!keep.contains(pid) && kill(pid, SIGKILL) == 0) ++killed;
            }
            std::this_thread::sleep_for(std::chrono::microseconds(300));
        }
    });
    int values = 0;
    int errors = 0;
    for (int round = 0; round < 30; ++round) {
        process_pool pool({.workers = 2, .start = start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, round));
        for (int i = 0; i < 20; ++i) {
            if (!resolves(fs[static_cast<std::size_t>(i)])) break;
            if (i == 0) {  // this pool's workers, once it has them, are left alone
                std::lock_guard lock(mu);
                for (int pid : pool.worker_pids()) protected_pids.insert(pid);
            }
            try {
                EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + round);
                ++values;
            } catch (const procpool::error&) {  // worker_died, or a pool given up on
                ++errors;
            }
        }
    }
    stop = true;
    killer.join();
    std::printf("killed %d processes; %d values, %d errors\n", killed.load(), values, errors);
    // Once the killing stops, a pool works again.
    {
        process_pool pool({.workers = 2, .start = start_method::forkserver});
        EXPECT_EQ(pool.submit(add, 40, 2).get(), 42);
    }
    expect_server_back_to(fds0);
    EXPECT_TRUE(eventually([&] { return procpool_test::open_fd_count() == parent_fds; }))
        << "parent descriptors: " << procpool_test::open_fd_count() << ", " << parent_fds
        << " before";
}

// Spares stopped and continued again and again while pools start and run: everything
// completes with its value.
TEST(AdversarySpares, StoppedAndContinuedInALoop_EverythingCompletes) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    std::atomic<bool> stop{false};
    std::thread toggler([&] {
        while (!stop.load()) {
            const std::set<int> kids = live_children_of(server());
            for (int pid : kids) kill(pid, SIGSTOP);
            std::this_thread::sleep_for(std::chrono::microseconds(500));
            for (int pid : kids) kill(pid, SIGCONT);
            std::this_thread::sleep_for(std::chrono::microseconds(500));
        }
    });
    for (int round = 0; round < 20; ++round) {
        process_pool pool({.workers = 2, .start = start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, round));
        for (int i = 0; i < 20; ++i) {
            if (!resolves(fs[static_cast<std::size_t>(i)])) break;
            EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + round);
        }
    }
    stop = true;
    toggler.join();
    for (int pid : live_children_of(server())) kill(pid, SIGCONT);
    expect_server_back_to(fds0);
}

// Both spares stopped, a pool made from them, then the stopped processes killed without
// being continued: the pool replaces them and runs every task.
TEST(AdversarySpares, StoppedThenKilledAfterAssignment_PoolReplacesThem) {
    use_a_pool_once();
    const std::set<int> stopped = wait_for_spares(2);
    for (int pid : stopped) ASSERT_EQ(kill(pid, SIGSTOP), 0);
    process_pool pool({.workers = 2, .start = start_method::forkserver});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 30; ++i) fs.push_back(pool.submit(add, i, 7));
    // The pool has made its requests (the constructor sent them); the stopped spares took
    // them. Kill them as they are.
    for (int pid : stopped) kill(pid, SIGKILL);
    for (int i = 0; i < 30; ++i) {
        if (!resolves(fs[static_cast<std::size_t>(i)])) break;
        EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 7);
    }
    for (int pid : pool.worker_pids()) EXPECT_FALSE(stopped.contains(pid));
}

// The fork server killed while it has spares and a pool's workers are being made from them:
// the running pool recovers, nothing it made outlives it (spares included: no orphans).
TEST(AdversarySpares, ForkServerKilledDuringAssignment_NoOrphans) {
    use_a_pool_once();
    const std::set<int> spares = wait_for_spares(2);
    const int old = server();
    const std::set<int> descendants = spares;
    {
        process_pool pool({.workers = 3, .start = start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, 1));
        ASSERT_EQ(kill(old, SIGKILL), 0);  // requests in flight, spares being handed them
        for (int i = 0; i < 20; ++i) {
            if (!resolves(fs[static_cast<std::size_t>(i)])) break;
            try {
                EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 1);
            } catch (const procpool::worker_died& e) {
                EXPECT_EQ(e.signal(), SIGKILL);
            }
        }
        // The same pool runs on a new server's workers. The old server's workers die with
        // it (their death signal) a moment after the kill, which returns first: until then
        // tasks may still run on them, or be cut short by that death.
        const bool moved = eventually([&] {
            try {
                EXPECT_EQ(pool.submit(add, 2, 2).get(), 4);
            } catch (const procpool::worker_died& e) {
                EXPECT_EQ(e.signal(), SIGKILL);
            }
            return server() != old;
        });
        EXPECT_TRUE(moved) << "the pool did not start a new fork server after the kill";
        EXPECT_EQ(pool.submit(add, 2, 2).get(), 4);
    }
    for (int pid : descendants) {
        EXPECT_TRUE(eventually([&] { return !alive(pid); }))
            << "process " << pid << " of the killed fork server is still alive";
    }
    // The old fork server, this process's child, is reaped (not left a zombie).
    EXPECT_TRUE(eventually([&] { return !zombie_children_of(getpid()).contains(old); }))
        << "the killed fork server " << old << " stays a zombie of this process";
    // Nothing re-parented from the old server survives anywhere (orphans of our making:
    // a process whose parent is init or a subreaper, created under the old server).
    for (const auto& s : all_processes()) {
        if (descendants.contains(s.pid)) {
            EXPECT_EQ(s.state, 'Z') << "orphan " << s.pid << " (ppid " << s.ppid << ")";
        }
    }
}

// Killing the fork server while its spares are stopped: stopped processes die too.
TEST(AdversarySpares, ForkServerKilledWhileSparesStopped_TheyDie) {
    use_a_pool_once();
    const std::set<int> spares = wait_for_spares(2);
    for (int pid : spares) ASSERT_EQ(kill(pid, SIGSTOP), 0);
    const int old = server();
    ASSERT_EQ(kill(old, SIGKILL), 0);
    for (int pid : spares) {
        EXPECT_TRUE(eventually([&] { return !alive(pid); }))
            << "stopped spare " << pid << " outlived its fork server";
    }
    process_pool pool({.workers = 2, .start = start_method::forkserver});
    EXPECT_EQ(pool.submit(add, 3, 4).get(), 7);
    EXPECT_NE(server(), old);
}

// A live child of `parent` among the last few pids handed out (/proc/sys/kernel/ns_last_pid),
// or -1: fast enough to catch a child within microseconds of its fork.
int newest_child_of(int parent) {
    std::ifstream in("/proc/sys/kernel/ns_last_pid");
    int last = 0;
    in >> last;
    for (int p = last; p > last - 4 && p > 1; --p) {
        proc_stat st;
        if (read_stat(p, st) && st.ppid == parent && st.state != 'Z') return p;
    }
    return -1;
}

// Found by this review and fixed (pools also watch the fork server's pidfd): a program
// once learned that its fork server died only from the hang-up of the server's socket.
// A spare stopped right after its fork, before it
// set PR_SET_PDEATHSIG and closed the server's descriptors, keeps the server's end of the
// program's socket open: once the server is killed, a new pool's channel goes into that
// socket, nobody serves it, and its tasks never run (until the stopped process continues,
// finds its parent gone and exits). The stopped process itself outlives the server too.
// The catch is a race (a few tries at most here, on two CPUs); the test gives up quietly
// if it never catches a spare before its set-up.
TEST(AdversarySpares, SpareStoppedBeforeItsSetUp_ServerKilled_PoolsStillRun) {
    use_a_pool_once();
    for (int tries = 0; tries < 40; ++tries) {
        const std::set<int> s = wait_for_spares(2);
        const int srv = server();
        ASSERT_EQ(kill(*s.begin(), SIGKILL), 0);  // the server forks a replacement ~20 ms later
        int stopped = -1;
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (stopped < 0 && std::chrono::steady_clock::now() < until) {
            const int p = newest_child_of(srv);
            if (p > 0 && !s.contains(p) && kill(p, SIGSTOP) == 0) stopped = p;
        }
        if (stopped < 0) continue;
        std::this_thread::sleep_for(5ms);  // a stopped process stays as it was caught
        if (set_up(stopped)) {
            kill(stopped, SIGCONT);
            continue;
        }
        std::printf("caught spare %d before its set-up (try %d)\n", stopped, tries + 1);
        ASSERT_EQ(kill(srv, SIGKILL), 0);
        {
            process_pool pool({.workers = 1, .start = start_method::forkserver});
            auto f = pool.submit(add, 1, 2);
            EXPECT_TRUE(f.wait_for(std::chrono::seconds(20)))
                << "a pool made after its fork server was killed ran nothing (spare " << stopped
                << ", stopped before its set-up, holds the server's socket)";
            kill(stopped, SIGCONT);  // unstick: it finds its parent gone and exits
            if (f.wait_for(watchdog)) {
                EXPECT_EQ(f.get(), 3);
            }
        }
        EXPECT_TRUE(eventually([&] { return !alive(stopped); }));
        return;
    }
    std::printf("never caught a spare before its set-up: inconclusive\n");
}

// Found by this review and fixed (see the previous test). Any process holding a copy of the
// server's end keeps that socket open after the server is dead: a spare (or a worker) stopped, or
// not yet scheduled, between its fork and close_other_fds holds every descriptor of the server.
// Then pools send their channel into a socket nobody reads, and their tasks never run. Here this
// test process holds the copies itself (pidfd_getfd), which is what such a child does: the
// deterministic form of the previous test.
TEST(AdversarySpares, ForkServerDeadButItsSocketHeldElsewhere_PoolsStillRun) {
    use_a_pool_once();
    wait_for_spares(2);
    const int old = server();
    const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, old, 0));
    ASSERT_GE(pidfd, 0);
    std::vector<int> held;  // copies of the server's descriptors, as a lingering child has
    for (int fd = 3; fd < 64; ++fd) {
        const int dup = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
        if (dup >= 0) held.push_back(dup);
    }
    close(pidfd);
    if (held.empty()) GTEST_SKIP() << "pidfd_getfd not permitted here";
    ASSERT_EQ(kill(old, SIGKILL), 0);
    EXPECT_TRUE(eventually([&] { return !alive(old); }));
    {
        process_pool pool({.workers = 1, .start = start_method::forkserver});
        auto f = pool.submit(add, 20, 22);
        const bool ran = f.wait_for(std::chrono::seconds(20));
        EXPECT_TRUE(ran) << "a pool made after its fork server died (its socket held open "
                            "by another process) ran nothing";
        for (int fd : held) close(fd);  // the socket hangs up: the pool recovers
        held.clear();
        if (f.wait_for(watchdog)) {
            EXPECT_EQ(f.get(), 42);
        }
    }
    for (int fd : held) close(fd);
}

// ---- many pools at once ---------------------------------------------------------------------

// Four threads making pools of one to three workers at once, while spares are forked in the
// gaps: every result right; afterwards no zombie, no descriptor left in the fork server or
// the parent, no shared memory mapped.
TEST(AdversarySpares, ManyPoolsFromSeveralThreads_NoLeaks) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    const int parent_fds = procpool_test::open_fd_count();
    const int maps0 = procpool_mappings();
    std::atomic<int> wrong{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
        ts.emplace_back([t, &wrong] {
            for (int round = 0; round < 12; ++round) {
                process_pool pool(
                    {.workers = 1 + (round + t) % 3, .start = start_method::forkserver});
                std::vector<procpool::future<int>> fs;
                for (int i = 0; i < 10; ++i) fs.push_back(pool.submit(add, i, t * 100 + round));
                for (int i = 0; i < 10; ++i) {
                    const auto& f = fs[static_cast<std::size_t>(i)];
                    if (!f.wait_for(watchdog) || f.get() != i + t * 100 + round) ++wrong;
                }
                // Some pools stay out of the spares' 20 ms gap, some wait in it.
                if (round % 3 == 0) std::this_thread::sleep_for(25ms);
            }
        });
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(wrong.load(), 0);
    expect_server_back_to(fds0);
    EXPECT_TRUE(eventually([&] { return procpool_test::open_fd_count() == parent_fds; }))
        << "parent descriptors: " << procpool_test::open_fd_count() << ", " << parent_fds
        << " before";
    EXPECT_EQ(procpool_mappings(), maps0);
}

// The fork server stopped while pools are made from three threads: the constructors do
// not wait for it (they only send requests); once it continues, every task runs.
TEST(AdversarySpares, ForkServerStoppedWhilePoolsAreMade_AllRunOnceContinued) {
    use_a_pool_once();
    wait_for_spares(2);
    const int srv = server();
    ASSERT_EQ(kill(srv, SIGSTOP), 0);
    std::atomic<int> made{0};
    std::atomic<int> wrong{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 3; ++t) {
        ts.emplace_back([&, t] {
            process_pool pool({.workers = 2, .start = start_method::forkserver});
            ++made;
            std::vector<procpool::future<int>> fs;
            for (int i = 0; i < 10; ++i) fs.push_back(pool.submit(add, i, t));
            for (int i = 0; i < 10; ++i) {
                const auto& f = fs[static_cast<std::size_t>(i)];
                if (!f.wait_for(watchdog) || f.get() != i + t) ++wrong;
            }
        });
    }
    const bool constructed = eventually([&] { return made.load() == 3; });
    kill(srv, SIGCONT);
    EXPECT_TRUE(constructed) << "a pool's constructor waited for a stopped fork server";
    for (auto& t : ts) t.join();
    EXPECT_EQ(wrong.load(), 0);
}

// Pools destroyed as soon as they are made (the supervisor thread perhaps not yet running,
// the workers perhaps not yet answered for), from two threads: no leak, no zombie.
TEST(AdversarySpares, PoolsDestroyedAtOnce_NoLeaks) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    const int parent_fds = procpool_test::open_fd_count();
    const int maps0 = procpool_mappings();
    std::vector<std::thread> ts;
    for (int t = 0; t < 2; ++t) {
        ts.emplace_back([t] {
            for (int i = 0; i < 60; ++i) {
                process_pool pool({.workers = 1 + (i + t) % 3, .start = start_method::forkserver});
                if (i % 4 == 0) (void)pool.submit(add, i, t);  // a task left for shutdown
            }
        });
    }
    for (auto& t : ts) t.join();
    expect_server_back_to(fds0);
    EXPECT_TRUE(eventually([&] { return procpool_test::open_fd_count() == parent_fds; }));
    EXPECT_EQ(procpool_mappings(), maps0);
}

// ---- configurations forwarded to a spare ----------------------------------------------------

// An environment of two thousand variables reaches a worker made from a spare, whole.
TEST(AdversarySpares, ManyEnvironmentVariables_ReachAWorkerMadeFromASpare) {
    use_a_pool_once();
    const std::set<int> before = wait_for_spares(2);
    procpool::process_pool_options o;
    o.workers = 1;
    o.start = start_method::forkserver;
    for (int i = 0; i < 2000; ++i) {  // ~105 KB of the 128 KiB a configuration may take
        o.env.emplace_back("PROCPOOL_ADV_" + std::to_string(i), std::string(20, 'a' + i % 26));
    }
    process_pool pool(std::move(o));
    EXPECT_EQ(pool.submit(env_of, std::string("PROCPOOL_ADV_0")).get(), std::string(20, 'a'));
    EXPECT_EQ(pool.submit(env_of, std::string("PROCPOOL_ADV_1999")).get(),
              std::string(20, 'a' + 1999 % 26));
    EXPECT_TRUE(before.contains(pool.submit(my_pid).get())) << "the worker was not a spare";
}

// Initializer arguments of increasing size, up to just under the limit (max_config_bytes,
// 128 KiB): each pool starts, through a spare, and its initializer sees the whole argument.
// Found by this review: the limit used to be 1 MiB, which no spawn request could reach (it
// is one SOCK_SEQPACKET message, refused with EMSGSIZE past the sender's SO_SNDBUF, 212992
// bytes by default), and a forward to a spare that failed so killed both spares.
void initializer_of(std::size_t bytes) {
    procpool::process_pool_options o;
    o.workers = 2;
    o.start = start_method::forkserver;
    std::string arg(bytes, 'x');
    arg.back() = 'z';
    o.initializer = procpool::worker_initializer(remember_length, arg);
    std::unique_ptr<process_pool> pool;
    try {
        pool = std::make_unique<process_pool>(std::move(o));
    } catch (const procpool::invalid_argument& e) {
        ADD_FAILURE() << bytes << " bytes refused (under the limit): " << e.what();
        return;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "a pool with " << bytes
                      << " bytes of initializer arguments did not start: " << e.what();
        return;
    }
    auto f = pool->submit(init_length);
    if (!resolves(f)) return;
    try {
        EXPECT_EQ(f.get(), bytes + 'z');
    } catch (const std::exception& e) {
        ADD_FAILURE() << bytes << " bytes of initializer arguments: " << e.what();
    }
}

TEST(AdversarySpares, InitializerArgs_100KiB) {
    use_a_pool_once();
    wait_for_spares(2);
    initializer_of(100 << 10);
}
TEST(AdversarySpares, InitializerArgs_NearTheLimit) {
    use_a_pool_once();
    wait_for_spares(2);
    initializer_of((128 << 10) - (4 << 10));
}

// Over the limit, where it once failed with "Message too long": a clear error naming it.
TEST(AdversarySpares, InitializerArgs_300KiB_ClearError) {
    procpool::process_pool_options o;
    o.workers = 1;
    o.start = start_method::forkserver;
    o.initializer = procpool::worker_initializer(remember_length, std::string(300 << 10, 'x'));
    try {
        process_pool pool(std::move(o));
        ADD_FAILURE() << "a configuration over the limit was accepted";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("at most"), std::string::npos) << e.what();
    }
}

// Over the limit: a clear invalid_argument, from the constructor.
TEST(AdversarySpares, InitializerArgs_OverTheLimit_ClearError) {
    procpool::process_pool_options o;
    o.workers = 1;
    o.start = start_method::forkserver;
    o.initializer = procpool::worker_initializer(remember_length, std::string(1 << 20, 'x'));
    try {
        process_pool pool(std::move(o));
        ADD_FAILURE() << "a configuration over 1 MiB was accepted";
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("at most"), std::string::npos) << e.what();
    }
}

// Found by this review and fixed (pool_core unmaps what a failed constructor left): a
// constructor that threw after spawn() mapped a worker's region left that mapping (2 MiB of
// shared memory) behind for good. Reproduced with a descriptor limit that runs out
// part-way through the workers.
TEST(AdversarySpares, ConstructorThatThrows_LeavesNoSharedMemory) {
    use_a_pool_once();
    const int maps0 = procpool_mappings();
    const int fds0 = procpool_test::open_fd_count();
    rlimit old{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(fds0 + 24);  // enough for a few workers, not 64
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    bool threw = false;
    try {
        process_pool pool({.workers = 64, .start = start_method::forkserver});
    } catch (const procpool::error&) {
        threw = true;
    }
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    ASSERT_TRUE(threw) << "64 workers started with " << low.rlim_cur << " descriptors";
    EXPECT_TRUE(eventually([&] { return procpool_test::open_fd_count() == fds0; }));
    EXPECT_EQ(procpool_mappings(), maps0) << "a pool that failed to start left its regions mapped";
    // Nothing stays broken.
    process_pool pool({.workers = 2, .start = start_method::forkserver});
    EXPECT_EQ(pool.submit(add, 2, 3).get(), 5);
}

// ---- limits, churn, crashes ------------------------------------------------------------------

// A memory-limited pool whose workers come from spares: the limit holds in them (an
// allocation past it fails as a remote exception; a small one works).
using procpool_test::under_sanitizer;

TEST(AdversarySpares, MemoryLimitHoldsInWorkersFromSpares) {
    // The sanitizers' shadow memory does not fit a 1 GiB address space.
    if (under_sanitizer()) GTEST_SKIP() << "sanitizer runtimes fail on their own under RLIMIT_AS";
    use_a_pool_once();
    const std::set<int> before = wait_for_spares(2);
    process_pool pool(
        {.workers = 2, .memory_limit = std::size_t{1} << 30, .start = start_method::forkserver});
    EXPECT_EQ(pool.submit(allocate_mib, 16).get(), 1);
    EXPECT_THROW(pool.submit(allocate_mib, 2048).get(), procpool::remote_exception);
    EXPECT_EQ(pool.submit(add, 1, 2).get(), 3);
    // bad_alloc is a task's exception, not a death: the workers are still the spares.
    for (int pid : pool.worker_pids()) EXPECT_TRUE(before.contains(pid)) << pid << " was no spare";
}

// A memory limit too small for the program: the pool gives up with an error naming the
// limit, whether its workers came from spares or were forked.
TEST(AdversarySpares, MemoryLimitTooSmall_ClearErrorNotAHang) {
    use_a_pool_once();
    wait_for_spares(2);
    process_pool pool(
        {.workers = 2, .memory_limit = std::size_t{4} << 20, .start = start_method::forkserver});
    auto f = pool.submit(add, 1, 2);
    if (!resolves(f)) return;
    try {
        f.get();
        ADD_FAILURE() << "a 4 MiB address space ran a task";
    } catch (const procpool::error& e) {
        EXPECT_NE(std::string(e.what()).find("memory_limit"), std::string::npos) << e.what();
    }
}

// max_tasks_per_child = 1: every task needs a new worker (a spare or a fork): every result
// right, and the fork server keeps neither zombies nor descriptors afterwards.
TEST(AdversarySpares, OneTaskPerChildChurn_NoZombiesNoFds) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    {
        process_pool pool(
            {.workers = 2, .max_tasks_per_child = 1, .start = start_method::forkserver});
        for (int batch = 0; batch < 6; ++batch) {
            std::vector<procpool::future<int>> fs;
            for (int i = 0; i < 25; ++i) fs.push_back(pool.submit(add, i, batch));
            for (int i = 0; i < 25; ++i) {
                if (!resolves(fs[static_cast<std::size_t>(i)])) break;
                EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + batch);
            }
            if (batch % 2 == 0) std::this_thread::sleep_for(30ms);  // let spares be made
        }
    }
    expect_server_back_to(fds0);
}

// Tasks that crash their worker in a loop, workers replaced from spares and forks: each
// crash is a worker_died with SIGABRT, every other task its value.
TEST(AdversarySpares, CrashLoop_TypedErrors) {
    use_a_pool_once();
    const int fds0 = settled_server_fds();
    {
        process_pool pool({.workers = 2, .start = start_method::forkserver});
        for (int round = 0; round < 4; ++round) {
            std::vector<procpool::future<int>> fs;
            for (int i = 0; i < 30; ++i) fs.push_back(pool.submit(crash_if, i));
            for (int i = 0; i < 30; ++i) {
                const auto& f = fs[static_cast<std::size_t>(i)];
                if (!resolves(f)) break;
                if (i % 2 == 0) {
                    EXPECT_EQ(f.get(), i);
                } else {
                    try {
                        f.get();
                        ADD_FAILURE() << "task " << i << " crashed but returned";
                    } catch (const procpool::worker_died& e) {
                        EXPECT_EQ(e.signal(), SIGABRT) << e.what();
                    }
                }
            }
            std::this_thread::sleep_for(30ms);  // spares made in the gap
        }
    }
    expect_server_back_to(fds0);
}

// capture_output pools (five descriptors in the request) from spares: each task's output
// is its own.
TEST(AdversarySpares, CaptureOutputFromSpares) {
    use_a_pool_once();
    const std::set<int> before = wait_for_spares(2);
    process_pool pool({.workers = 2, .start = start_method::forkserver, .capture_output = true});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(say, i));
    for (int i = 0; i < 20; ++i) {
        auto& f = fs[static_cast<std::size_t>(i)];
        ASSERT_EQ(f.get(), i);
        ASSERT_NE(f.output(), nullptr);
        EXPECT_EQ(f.output()->out, "out " + std::to_string(i));
        EXPECT_EQ(f.output()->err, "err " + std::to_string(i));
    }
    for (int pid : pool.worker_pids()) EXPECT_TRUE(before.contains(pid)) << pid << " was no spare";
}

// ---- the fork start method -------------------------------------------------------------------

// A start_method::fork pool while spares exist: its workers are this process's children,
// none is a spare, and the spares stay as they were.
TEST(AdversarySpares, ForkMethodUnaffected) {
    use_a_pool_once();
    const std::set<int> spares = wait_for_spares(2);
    {
        process_pool pool({.workers = 2, .start = start_method::fork});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 40; ++i) fs.push_back(pool.submit(add, i, 3));
        for (int i = 0; i < 40; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 3);
        EXPECT_EQ(pool.submit(my_parent).get(), static_cast<int>(getpid()));
        for (int pid : pool.worker_pids()) EXPECT_FALSE(spares.contains(pid));
    }
    EXPECT_EQ(live_children_of(server()), spares);
}

// ---- big vectors ------------------------------------------------------------------------------

// Big vectors (2 MiB, over the shared-memory threshold) both ways from two threads, every
// third cancelled at once, some tasks crashing with one in their arguments: every future
// resolves, values right; afterwards no shared memory stays mapped, no descriptor open.
TEST(AdversarySpares, BigVectorsWithCancelsAndCrashes_NoSharedMemoryLeft) {
    use_a_pool_once();
    const int maps0 = procpool_mappings();
    const int fds0 = procpool_test::open_fd_count();
    {
        process_pool pool({.workers = 2, .start = start_method::forkserver});
        std::atomic<int> wrong{0};
        std::vector<std::thread> ts;
        for (int t = 0; t < 2; ++t) {
            ts.emplace_back([&, t] {
                std::vector<double> v(std::size_t{1} << 18);
                for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i + t);
                std::vector<procpool::future<std::vector<double>>> fs;
                std::vector<procpool::future<double>> crashes;
                for (int i = 0; i < 24; ++i) {
                    fs.push_back(pool.submit(twice, v));
                    if (i % 3 == 0) fs.back().cancel();
                    if (i % 8 == 0) crashes.push_back(pool.submit(sum_then_crash, v, 1));
                }
                for (auto& f : fs) {
                    if (!f.wait_for(watchdog)) {
                        ++wrong;
                        continue;
                    }
                    try {
                        const std::vector<double> r = f.get();
                        if (r.size() != v.size() || r[12345] != 2.0 * v[12345] ||
                            r.back() != 2.0 * v.back()) {
                            ++wrong;
                        }
                    } catch (const procpool::task_cancelled&) {
                    } catch (const procpool::worker_died&) {
                        // a task cancelled while running, or one behind a crash: no
                    }
                }
                for (auto& f : crashes) {
                    if (!f.wait_for(watchdog)) {
                        ++wrong;
                        continue;
                    }
                    try {
                        f.get();
                        ++wrong;
                    } catch (const procpool::worker_died& e) {
                        if (e.signal() != SIGABRT) ++wrong;
                    }
                }
            });
        }
        for (auto& t : ts) t.join();
        EXPECT_EQ(wrong.load(), 0);
        // The pool still works with a big vector.
        std::vector<double> v(std::size_t{1} << 18, 1.5);
        EXPECT_EQ(pool.submit(twice, v).get().back(), 3.0);
    }
    EXPECT_TRUE(eventually([&] { return procpool_mappings() == maps0; }))
        << procpool_mappings() << " procpool mappings, " << maps0 << " before";
    EXPECT_TRUE(eventually([&] { return procpool_test::open_fd_count() == fds0; }))
        << procpool_test::open_fd_count() << " descriptors, " << fds0 << " before";
}

// Vectors just over and under the bulk threshold and at odd (not page-aligned) sizes: the
// populate call covers only whole pages inside; the values arrive intact.
TEST(AdversarySpares, BigVectorsOddSizes_ValuesIntact) {
    process_pool pool(
        {.workers = 1, .start = start_method::forkserver, .shared_memory_threshold = 64 << 10});
    for (std::size_t n : {std::size_t{8191}, std::size_t{8192}, std::size_t{8193},
                          std::size_t{100003}, std::size_t{(1 << 17) + 511}}) {
        std::vector<double> v(n);
        for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<double>(i) * 0.5;
        const std::vector<double> r = pool.submit(twice, v).get();
        ASSERT_EQ(r.size(), n);
        for (std::size_t i = 0; i < n; i += 997) ASSERT_EQ(r[i], static_cast<double>(i)) << n;
        EXPECT_EQ(r.back(), static_cast<double>(n - 1));
        EXPECT_EQ(r.front(), 0.0);
    }
}

// The request ring's first pass (prefault_until) with frames of every size, including ones
// that straddle the 64 KiB batches and fill the ring past its first wrap.
std::size_t length_of(std::vector<char> v) {
    return v.size();
}
TEST(AdversarySpares, RingFirstPassWithOddFrames_AllArrive) {
    process_pool pool({.workers = 2, .start = start_method::forkserver});
    std::vector<procpool::future<std::size_t>> fs;
    std::vector<std::size_t> sizes;
    for (int i = 0; i < 300; ++i) {
        const std::size_t n = (static_cast<std::size_t>(i) * 7919) % (70 << 10);
        sizes.push_back(n);
        fs.push_back(pool.submit(length_of, std::vector<char>(n, 'q')));
    }
    for (std::size_t i = 0; i < fs.size(); ++i) {
        if (!resolves(fs[i])) break;
        EXPECT_EQ(fs[i].get(), sizes[i]);
    }
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
