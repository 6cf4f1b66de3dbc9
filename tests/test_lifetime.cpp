// Thread lifetime: the threads that start procpool's processes may exit before the
// processes do. A child's PR_SET_PDEATHSIG follows the *thread* that forked it, so the
// fork server and fork-method workers must not depend on the thread that made them.
// This binary's main() does not call procpool::init: each test decides where it runs.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "process/fork_server.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"

using procpool::process_pool;
using procpool_test::file_gate;

namespace {

int add(int a, int b) {
    return a + b;
}

TEST(ThreadLifetime, InitOnAThreadThatExits_ForkServerKeepsServing) {
    std::thread([] { procpool::init(0, nullptr); }).join();
    ASSERT_TRUE(procpool::initialized());
    const pid_t server = procpool::process::fork_server_pid();
    for (int round = 0; round < 3; ++round) {
        process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, round));
        for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + round);
    }
    // The very server init() started serves them (none had to be started again).
    EXPECT_EQ(procpool::process::fork_server_pid(), server);
}

TEST(ThreadLifetime, ForkPoolMadeOnAThreadThatExits_KeepsItsRunningTask) {
    std::unique_ptr<process_pool> pool;
    file_gate gate;
    procpool::future<int> running;
    std::thread([&] {
        pool = std::make_unique<process_pool>(
            procpool::process_pool_options{.workers = 1, .start = procpool::start_method::fork});
        running = pool->submit(file_gate::wait_then_return, gate.path(), 5);
        gate.wait_started();
    }).join();  // the thread that made the pool is gone while its task runs
    gate.open();
    EXPECT_EQ(running.get(), 5);
    EXPECT_EQ(pool->submit(add, 2, 2).get(), 4);
    pool.reset();
}

}  // namespace

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
