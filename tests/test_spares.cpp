// The fork server's spares: children forked ahead of need that become workers when a pool
// asks (src/process/fork_server.cpp, fork_spare in src/process/spawn.cpp). A new pool's
// workers come from them; killing them, or the fork server, loses nothing and leaves no
// process behind. Waits here are bounded by a minute (a watchdog against hangs), never
// assertions about how fast anything is.
#include <signal.h>
#include <sys/types.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "process/fork_server.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"

using procpool::process_pool;

namespace {

int add(int a, int b) {
    return a + b;
}

std::string env_of(std::string name) {
    const char* v = std::getenv(name.c_str());
    return v != nullptr ? v : "<unset>";
}

int my_pid() {
    return static_cast<int>(getpid());
}

int my_pgid_is_my_pid() {
    return getpgid(0) == getpid() ? 1 : 0;
}

// Processes whose parent is `parent` (not zombies).
std::set<int> children_of(int parent) {
    std::set<int> out;
    for (const auto& p : procpool_test::all_processes()) {
        if (p.ppid == parent && p.state != 'Z') out.insert(p.pid);
    }
    return out;
}

// Running or stopped, not exited (a zombie left for its new parent to reap counts as gone).
bool alive(int pid) {
    procpool_test::proc_entry p;
    return procpool_test::read_proc(pid, p) && p.state != 'Z' && p.state != 'X';
}

// A spare done with its set-up (its own process group, only 0, 1, 2 and its socket open),
// not a child just forked.
bool set_up(int pid) {
    return getpgid(pid) == pid && procpool_test::fd_count_of(pid) == 4;
}

// The fork server's children, set up, that are not workers of any pool in `workers`: its
// spares.
std::set<int> spares(const std::set<int>& workers) {
    std::set<int> out;
    for (int pid : children_of(procpool::process::fork_server_pid())) {
        if (!workers.contains(pid) && set_up(pid)) out.insert(pid);
    }
    return out;
}

// Waits (bounded) until the fork server has `n` spares besides `workers`.
std::set<int> wait_for_spares(std::size_t n, const std::set<int>& workers = {}) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
        std::set<int> s = spares(workers);
        if (s.size() >= n) return s;
        if (std::chrono::steady_clock::now() > until) {
            ADD_FAILURE() << "the fork server did not make " << n << " spares (has " << s.size()
                          << ")";
            return s;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
}


// A first pool makes the fork server start keeping spares; it is gone before returning.
void use_a_pool_once() {
    process_pool pool({.workers = 1, .start = procpool::start_method::forkserver});
    ASSERT_EQ(pool.submit(add, 1, 2).get(), 3);
}

TEST(ForkServerSpares, ANewPoolsWorkersAreTheSparesMadeBeforeIt) {
    use_a_pool_once();
    const std::set<int> before = wait_for_spares(2);
    process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 100; ++i) fs.push_back(pool.submit(my_pid));
    std::set<int> ran_on;  // the pids of the processes that ran the tasks
    for (auto& f : fs) ran_on.insert(f.get());
    ASSERT_FALSE(ran_on.empty());
    for (int pid : ran_on) EXPECT_TRUE(before.contains(pid)) << "worker " << pid << " was no spare";
    // A worker made from a spare is set up as a forked one is: its own process group.
    EXPECT_EQ(pool.submit(my_pgid_is_my_pid).get(), 1);
}

TEST(ForkServerSpares, AWorkerFromASpareGetsItsPoolsEnvironment) {
    use_a_pool_once();
    const std::set<int> before = wait_for_spares(2);
    procpool::process_pool_options o;
    o.workers = 1;
    o.start = procpool::start_method::forkserver;
    o.env.emplace_back("PROCPOOL_SPARE_TEST", "from-the-pool");
    process_pool pool(std::move(o));
    EXPECT_EQ(pool.submit(env_of, std::string("PROCPOOL_SPARE_TEST")).get(), "from-the-pool");
    EXPECT_TRUE(before.contains(pool.submit(my_pid).get()));
    // The spare itself was made before this pool existed: nothing of one pool's settings
    // stays behind for the next.
    process_pool plain({.workers = 1, .start = procpool::start_method::forkserver});
    EXPECT_EQ(plain.submit(env_of, std::string("PROCPOOL_SPARE_TEST")).get(), "<unset>");
}

TEST(ForkServerSpares, KilledFromOutside_AreReplaced_AndPoolsStillStart) {
    use_a_pool_once();
    const std::set<int> killed = wait_for_spares(2);
    for (int pid : killed) ASSERT_EQ(kill(pid, SIGKILL), 0);
    for (int round = 0; round < 3; ++round) {
        process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 50; ++i) fs.push_back(pool.submit(add, i, round));
        for (int i = 0; i < 50; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + round);
        for (int i = 0; i < 10; ++i) EXPECT_FALSE(killed.contains(pool.submit(my_pid).get()));
    }
    // New spares, none of them the killed ones (which are reaped: not even zombies).
    const std::set<int> now = wait_for_spares(2);
    for (int pid : now) EXPECT_FALSE(killed.contains(pid));
    for (int pid : killed) EXPECT_FALSE(alive(pid)) << "killed spare " << pid << " still exists";
}

TEST(ForkServerSpares, StoppedSpare_IsNotLost_ThePoolStillRunsEverything) {
    use_a_pool_once();
    const std::set<int> s = wait_for_spares(2);
    // A stopped spare takes its request and cannot act on it until continued: the pool's
    // other worker runs the tasks meanwhile, and nothing is lost once it continues.
    const int stopped = *s.begin();
    ASSERT_EQ(kill(stopped, SIGSTOP), 0);
    {
        process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 40; ++i) fs.push_back(pool.submit(add, i, 2));
        std::thread resume([stopped] {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            kill(stopped, SIGCONT);
        });
        for (int i = 0; i < 40; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 2);
        resume.join();
    }
    kill(stopped, SIGCONT);
}

TEST(ForkServerSpares, DieWithTheForkServer) {
    use_a_pool_once();
    const std::set<int> s = wait_for_spares(2);
    const pid_t server = procpool::process::fork_server_pid();
    ASSERT_GT(server, 0);
    ASSERT_EQ(kill(server, SIGKILL), 0);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (int pid : s) {
        while (alive(pid) && std::chrono::steady_clock::now() < until) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        EXPECT_FALSE(alive(pid)) << "spare " << pid << " outlived its fork server";
    }
    // A pool made now starts a new fork server and runs.
    process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
    EXPECT_EQ(pool.submit(add, 20, 22).get(), 42);
    EXPECT_NE(procpool::process::fork_server_pid(), server);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
