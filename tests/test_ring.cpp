// A worker's request ring under a burst of forget notices (src/ipc/ring.hpp,
// src/process/pool_dispatch.cpp): thousands of shared arrays freed while their worker is
// stopped, then a task with a large frame.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

namespace {

std::size_t text_size(std::string s) { return s.size(); }
int first_element(procpool::shared_array<int> a) { return a[0]; }
int plus_one(int x) { return x + 1; }

// True once `pid` is stopped (T, or t under a tracer) in /proc/PID/stat, or false after ~60 s.
bool wait_stopped(int pid) {
    for (int i = 0; i < 60'000; ++i) {
        std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
        std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        const auto close = all.rfind(')');
        if (close != std::string::npos && close + 2 < all.size() &&
            (all[close + 2] == 'T' || all[close + 2] == 't')) {
            return true;
        }
        usleep(1000);
    }
    return false;
}

// Their forget notices wait in the worker's ring while it is stopped; the worker must not
// be taken for one that holds its read index back, and the task must run once it resumes
// (not stay parked with nothing in flight to bring it back).
TEST(RingBurst, ForgetNoticesForAStoppedWorker_ThenALargeTask_RunsWithoutRestart) {
    constexpr int n = 5000;
    // Each cached array holds a descriptor here and one in the worker (forked from this
    // process with its limit): raise the soft limit if it is lower.
    constexpr rlim_t want = 2 * n + 1000;
    rlimit old{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    struct restore {
        rlimit rl;
        ~restore() { setrlimit(RLIMIT_NOFILE, &rl); }
    } restore_limit{old};
    if (old.rlim_cur < want) {
        rlimit up = old;
        up.rlim_cur = std::min<rlim_t>(old.rlim_max, want);
        setrlimit(RLIMIT_NOFILE, &up);
        rlimit now{};
        getrlimit(RLIMIT_NOFILE, &now);
        if (now.rlim_cur < want) {
            GTEST_SKIP() << "needs " << want << " descriptors (RLIMIT_NOFILE hard limit "
                         << old.rlim_max << ")";
        }
    }
    procpool::process_pool pool({.workers = 1});
    ASSERT_EQ(pool.submit(plus_one, 0).get(), 1);
    const std::vector<int> pids = pool.worker_pids();
    ASSERT_EQ(pids.size(), 1u);
    // Whatever fails below, the worker is not left stopped (the pool would wait for it).
    struct resume {
        int pid;
        ~resume() { kill(pid, SIGCONT); }
    } resume_worker{pids[0]};
    {
        std::vector<procpool::shared_array<int>> arrays;
        arrays.reserve(n);
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < n; ++i) {
            arrays.emplace_back(1);
            arrays.back()[0] = i;
            fs.push_back(pool.submit(first_element, arrays.back()));
        }
        for (int i = 0; i < n; ++i) ASSERT_EQ(fs[static_cast<std::size_t>(i)].get(), i);
        ASSERT_EQ(kill(pids[0], SIGSTOP), 0);
        ASSERT_TRUE(wait_stopped(pids[0]));
        arrays.clear();  // n forget notices for the stopped worker
        auto f = pool.submit(text_size, std::string(200'000, 'x'));
        ASSERT_EQ(kill(pids[0], SIGCONT), 0);
        EXPECT_EQ(f.get(), 200'000u);
        EXPECT_EQ(pool.worker_pids(), pids);
    }
    pool.shutdown();
    EXPECT_EQ(pool.stats().worker_restarts, 0u);
}

}  // namespace
