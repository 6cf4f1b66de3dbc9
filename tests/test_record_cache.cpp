// The task-record cache (detail::record_cache): blocks are usable and distinct, freed blocks
// come back to the threads that allocate (from any thread that frees them), the shared
// depot keeps no more than its bound, and a fork never inherits its lock held.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "procpool/detail/record_cache.hpp"
#include "procpool/process_pool.hpp"

namespace {

namespace rc = procpool::detail::record_cache;

constexpr std::size_t kRecord = 328;  // a process_pool task record's size today

// Fills a block with a pattern of its own.
void fill(void* p, std::size_t n, std::size_t i) {
    std::memset(p, static_cast<int>(i % 251), n);
}
bool intact(const void* p, std::size_t n, std::size_t i) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t k = 0; k < n; ++k) {
        if (b[k] != static_cast<unsigned char>(i % 251)) return false;
    }
    return true;
}

// Why a fork test of the cache cannot run in this build, or nullptr when it can. The
// sanitizers' own allocators (gcc 12's ASan and TSan runtimes) do not hold their locks across
// a fork: a child forked while another thread was inside one of them waits for ever on the
// copied lock (seen in CI and caught in gdb: the child stuck in TSan's
// SizeClassAllocator64::GetFromAllocator, under record_cache::allocate's operator new). Such
// a hang says nothing about the cache, which the release and clang builds test.
const char* fork_tests_unreliable_here() {
    if (!rc::enabled()) return "the cache is off in this build (AddressSanitizer)";
#if defined(__SANITIZE_THREAD__)
    return "TSan's allocator is not fork-safe while another thread allocates";
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
    return "TSan's allocator is not fork-safe while another thread allocates";
#endif
#endif
    return nullptr;
}

TEST(RecordCache, BlocksOfEverySize_AreDistinctAndHoldTheirBytes) {
    std::vector<std::pair<void*, std::size_t>> blocks;
    for (std::size_t i = 0; i < 3000; ++i) {
        const std::size_t n = 1 + (i * 37) % (rc::max_block + 200);  // some above max_block
        void* p = rc::allocate(n);
        ASSERT_NE(p, nullptr);
        ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % alignof(std::max_align_t), 0U);
        fill(p, n, i);
        blocks.emplace_back(p, n);
    }
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        EXPECT_TRUE(intact(blocks[i].first, blocks[i].second, i)) << "block " << i;
    }
    std::set<void*> seen;
    for (auto& [p, n] : blocks) EXPECT_TRUE(seen.insert(p).second) << "a block given twice";
    // Free half, allocate again: the new blocks must not overlap the live ones.
    for (std::size_t i = 0; i < blocks.size(); i += 2) {
        rc::deallocate(blocks[i].first, blocks[i].second);
    }
    for (std::size_t i = 0; i < blocks.size(); i += 2) {
        blocks[i].first = rc::allocate(blocks[i].second);
        fill(blocks[i].first, blocks[i].second, i);
    }
    for (std::size_t i = 0; i < blocks.size(); ++i) {
        EXPECT_TRUE(intact(blocks[i].first, blocks[i].second, i)) << "block " << i;
    }
    for (auto& [p, n] : blocks) rc::deallocate(p, n);
}

TEST(RecordCache, BlocksFreedOnAnotherThread_AreReusedByTheAllocatingThread) {
    if (!rc::enabled()) GTEST_SKIP() << "the cache is off in this build (AddressSanitizer)";
    constexpr std::size_t n = 10'000;
    std::vector<void*> first(n);
    for (auto& p : first) p = rc::allocate(kRecord);
    std::thread([&] {
        for (void* p : first) rc::deallocate(p, kRecord);
    }).join();  // the freeing thread's leftovers reach the depot when it exits
    const std::set<void*> old(first.begin(), first.end());
    std::size_t reused = 0;
    std::vector<void*> second(n);
    for (auto& p : second) {
        p = rc::allocate(kRecord);
        reused += old.count(p);
    }
    // All but what other tests of this process may have left in this thread's lists.
    EXPECT_GE(reused, n - 1024) << "blocks freed on another thread did not come back";
    for (void* p : second) rc::deallocate(p, kRecord);
}

TEST(RecordCache, TheDepotKeepsNoMoreThanItsBound_AndReleaseEmptiesIt) {
    if (!rc::enabled()) GTEST_SKIP() << "the cache is off in this build (AddressSanitizer)";
    const std::size_t n = rc::max_retained_bytes / kRecord + 20'000;  // more than it keeps
    std::vector<void*> v(n);
    for (auto& p : v) p = rc::allocate(kRecord);
    std::thread([&] {
        for (void* p : v) rc::deallocate(p, kRecord);
    }).join();
    EXPECT_LE(rc::retained_bytes(), rc::max_retained_bytes);
    EXPECT_GE(rc::retained_bytes(), rc::max_retained_bytes / 2);
    rc::release();
    EXPECT_EQ(rc::retained_bytes(), 0U);
    // Blocks still come and go after a release.
    for (auto& p : v) p = rc::allocate(kRecord);
    for (void* p : v) rc::deallocate(p, kRecord);
}

// A child forked while another thread makes the process's first use of the cache must be
// able to use it (it once inherited a half-done initialization and waited for ever). Each
// trial is a fresh child of this test process, which has not used the cache before when
// ctest runs this test alone.
TEST(RecordCache, AChildForkedDuringTheFirstUse_CanUseTheCache) {
    if (const char* why = fork_tests_unreliable_here()) GTEST_SKIP() << why;
    int hung = 0;
    for (int trial = 0; trial < 20; ++trial) {
        const pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            std::atomic<bool> go{false};
            std::atomic<bool> done{false};
            std::thread first([&] {
                while (!go.load()) {
                }
                rc::deallocate(rc::allocate(kRecord), kRecord);
                static_cast<void>(rc::retained_bytes());
                done = true;
            });
            int stuck = 0;
            go = true;
            for (int n = 0; !done.load() && n < 50; ++n) {
                const pid_t child = fork();
                if (child == 0) {
                    alarm(30);  // a watchdog: a stuck child ends with SIGALRM
                    rc::deallocate(rc::allocate(kRecord), kRecord);
                    static_cast<void>(rc::retained_bytes());
                    _exit(0);
                }
                int st = 0;
                waitpid(child, &st, 0);
                if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM) ++stuck;
            }
            first.join();
            _exit(stuck == 0 ? 0 : 1);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++hung;
    }
    EXPECT_EQ(hung, 0) << "trials in which a child forked during the first use got stuck";
}

// A child forked while another thread uses the depot must not find its lock held.
TEST(RecordCache, AChildForkedWhileAnotherThreadUsesTheDepot_CanAllocate) {
    if (const char* why = fork_tests_unreliable_here()) GTEST_SKIP() << why;
    std::atomic<bool> stop{false};
    std::thread churn([&] {
        std::vector<void*> v(600);
        while (!stop.load(std::memory_order_relaxed)) {
            for (auto& p : v) p = rc::allocate(kRecord);   // takes batches from the depot
            for (void* p : v) rc::deallocate(p, kRecord);  // hands batches to it
        }
    });
    int hung = 0;
    int failed = 0;
    for (int i = 0; i < 100; ++i) {
        const pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            std::vector<void*> v(1200);
            for (int round = 0; round < 3; ++round) {
                for (auto& p : v) p = rc::allocate(kRecord);
                for (void* p : v) rc::deallocate(p, kRecord);
            }
            _exit(0);
        }
        // A watchdog, not a timing assertion: a child still running after 60 s is stuck.
        int status = 0;
        pid_t got = 0;
        for (int waited_ms = 0; (got = waitpid(pid, &status, WNOHANG)) == 0 && waited_ms < 60'000;
             waited_ms += 1) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (got == 0) {
            ++hung;
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            ++failed;
        }
    }
    stop = true;
    churn.join();
    EXPECT_EQ(hung, 0) << "children stuck on the depot's lock";
    EXPECT_EQ(failed, 0);
}

int twice(int x) {
    return 2 * x;
}

TEST(RecordCache, ProcessPoolTasks_SubmittedOnOneThreadAndDroppedOnAnother_ResolveCorrectly) {
    std::vector<procpool::future<int>> fs;
    {
        procpool::process_pool pool({.workers = 2});
        for (int round = 0; round < 3; ++round) {
            for (int i = 0; i < 2000; ++i) fs.push_back(pool.submit(twice, i));
            std::thread([&] {
                for (int i = 0; i < 2000; ++i) {
                    EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), 2 * i);
                }
                fs.clear();  // the records are freed on this thread
            }).join();
            if (rc::enabled()) {
                EXPECT_GT(rc::retained_bytes(), 0U);
            }
        }
    }
}

}  // namespace
