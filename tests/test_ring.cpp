// The shared-memory ring on its own (src/ipc/ring.hpp), one producer and one consumer in
// one thread: frames arrive whole and in order, and the producer writes only below its
// reach, which starts small and grows only for large frames.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ipc/ring.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

namespace {

using procpool::ipc::frame_header;
using procpool::ipc::peek_result;
using procpool::ipc::ring;
using procpool::ipc::ring_ctl;

// A ring over private memory: the producer's and the consumer's views share it.
struct test_ring {
    explicit test_ring(std::uint32_t cap)
        : ctl(std::make_unique<ring_ctl>()),
          data(std::make_unique<std::uint64_t[]>(cap / 8)),
          base(reinterpret_cast<std::byte*>(data.get())),
          producer(ctl.get(), base, cap),
          consumer(ctl.get(), base, cap) {}

    // Publishes a frame of `len` bytes, each byte (seed + i); false if it does not fit.
    bool put(std::uint32_t len, std::uint8_t seed, std::size_t* offset = nullptr) {
        std::byte* p = producer.try_reserve(len);
        if (p == nullptr) return false;
        for (std::uint32_t i = 0; i < len; ++i)
            p[i] = std::byte(static_cast<std::uint8_t>(seed + i));
        if (offset != nullptr) *offset = static_cast<std::size_t>(p - base);
        producer.commit(len, 1);
        return true;
    }
    // Takes the next frame and checks its bytes; false if the ring is empty.
    bool take(std::uint32_t want_len, std::uint8_t seed) {
        frame_header h{};
        const std::byte* p = nullptr;
        const peek_result r = consumer.peek(h, p);
        EXPECT_NE(r, peek_result::corrupt);
        if (r != peek_result::frame) return false;
        EXPECT_EQ(h.len, want_len);
        EXPECT_EQ(h.type, 1u);
        for (std::uint32_t i = 0; i < h.len; ++i) {
            if (p[i] != std::byte(static_cast<std::uint8_t>(seed + i))) {
                ADD_FAILURE() << "byte " << i << " of a " << h.len << "-byte frame differs";
                break;
            }
        }
        consumer.pop(h);
        return true;
    }

    std::unique_ptr<ring_ctl> ctl;
    std::unique_ptr<std::uint64_t[]> data;
    std::byte* base;
    ring producer;
    ring consumer;
};

constexpr std::uint32_t mib = 1u << 20;

TEST(Ring, SmallFrames_StayBelowTheInitialReach_ThroughManyLaps) {
    test_ring r(mib);
    ASSERT_EQ(r.producer.reach(), ring::initial_reach);
    std::size_t max_end = 0;
    for (int i = 0; i < 20'000; ++i) {
        std::size_t off = 0;
        const auto len = static_cast<std::uint32_t>(40 + i % 300);
        ASSERT_TRUE(r.put(len, static_cast<std::uint8_t>(i), &off)) << i;
        max_end = std::max(max_end, off + len);
        // The consumer lags a few frames behind.
        if (i >= 5) {
            ASSERT_TRUE(r.take(static_cast<std::uint32_t>(40 + (i - 5) % 300),
                               static_cast<std::uint8_t>(i - 5)));
        }
    }
    EXPECT_LE(max_end, ring::initial_reach);
    EXPECT_EQ(r.producer.reach(), ring::initial_reach);
}

TEST(Ring, WithoutAConsumer_FillsOnlyItsReach_AndUnconsumedCountsFramesNotTheSkip) {
    test_ring r(mib);
    std::uint64_t bytes = 0;
    int n = 0;
    while (r.put(1000, static_cast<std::uint8_t>(n))) {
        bytes += ring::frame_size(1000);
        ++n;
        ASSERT_LT(n, 10'000) << "a ring with no consumer never filled";
    }
    // Full at its reach (64 KiB), not at its capacity (1 MiB).
    EXPECT_LE(bytes, ring::initial_reach);
    EXPECT_GT(bytes, ring::initial_reach - 2 * ring::frame_size(1000));
    EXPECT_EQ(r.producer.unconsumed(), bytes);
    // Consume half; the producer wraps early (a pad frame skipping the rest of the buffer)
    // and unconsumed() still counts only the frames and the pad's header.
    for (int i = 0; i < n / 2; ++i) ASSERT_TRUE(r.take(1000, static_cast<std::uint8_t>(i)));
    int more = 0;
    while (r.put(1000, static_cast<std::uint8_t>(n + more))) ++more;
    EXPECT_GT(more, 0);
    const std::uint64_t frames =
        static_cast<std::uint64_t>(n - n / 2 + more) * ring::frame_size(1000);
    EXPECT_EQ(r.producer.unconsumed(), frames + sizeof(frame_header));
    for (int i = n / 2; i < n + more; ++i) ASSERT_TRUE(r.take(1000, static_cast<std::uint8_t>(i)));
    EXPECT_EQ(r.producer.unconsumed(), 0u);
    EXPECT_TRUE(r.consumer.empty());
}

TEST(Ring, ALargeFrame_GrowsTheReach_ToFourFramesInWholePages) {
    test_ring r(mib);
    const std::uint32_t len = 64 * 1024;
    std::size_t off = 0;
    ASSERT_TRUE(r.put(len, 7, &off));
    const std::uint64_t want = (4 * ring::frame_size(len) + 4095) / 4096 * 4096;
    EXPECT_EQ(r.producer.reach(), want);
    // Three more fit without a consumer; the reach, not the capacity, bounds them.
    int n = 1;
    std::size_t max_end = off + len;
    while (r.put(len, static_cast<std::uint8_t>(7 + n), &off)) {
        max_end = std::max(max_end, off + len);
        ++n;
    }
    EXPECT_EQ(n, 4);
    EXPECT_LE(max_end, r.producer.reach());
    for (int i = 0; i < n; ++i) ASSERT_TRUE(r.take(len, static_cast<std::uint8_t>(7 + i)));
    // A frame of the largest size a ring takes grows the reach to the whole capacity.
    ASSERT_TRUE(r.put(r.producer.max_payload(), 3));
    EXPECT_EQ(r.producer.reach(), mib);
    ASSERT_TRUE(r.take(r.producer.max_payload(), 3));
}

TEST(Ring, AReservationDroppedAfterItWrapped_LeavesUnconsumedRight) {
    test_ring r(mib);
    for (int i = 0; i < 60; ++i) {
        ASSERT_TRUE(r.put(1000, static_cast<std::uint8_t>(i)));
        ASSERT_TRUE(r.take(1000, static_cast<std::uint8_t>(i)));
    }
    // This reservation wraps (a pad frame's header is written) and is never committed.
    ASSERT_NE(r.producer.try_reserve(8000), nullptr);
    // The next one fits where the first would have started: no pad was published.
    ASSERT_TRUE(r.put(16, 9));
    EXPECT_EQ(r.producer.unconsumed(), ring::frame_size(16));
    ASSERT_TRUE(r.take(16, 9));
    EXPECT_EQ(r.producer.unconsumed(), 0u);
}

TEST(Ring, ACapacityBelowTheInitialReach_IsItsReach) {
    test_ring r(16 * 1024);
    EXPECT_EQ(r.producer.reach(), 16u * 1024);
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(r.put(r.producer.max_payload(), static_cast<std::uint8_t>(i)));
        ASSERT_TRUE(r.take(r.producer.max_payload(), static_cast<std::uint8_t>(i)));
    }
}

TEST(Ring, RandomSizesAndLags_ArriveWholeAndInOrder_BelowTheReachAtWritingTime) {
    test_ring r(mib);
    std::mt19937 rng(12345);
    std::deque<std::pair<std::uint32_t, std::uint8_t>> queued;
    std::uint8_t seed = 0;
    for (int step = 0; step < 200'000; ++step) {
        if (rng() % 2 == 0) {
            // Mostly small frames, now and then a large one.
            const std::uint32_t len =
                rng() % 50 == 0 ? static_cast<std::uint32_t>(rng() % r.producer.max_payload())
                                : static_cast<std::uint32_t>(rng() % 2000);
            std::size_t off = 0;
            if (r.put(len, seed, &off)) {
                ASSERT_LE(off + len, r.producer.reach());
                queued.emplace_back(len, seed++);
            }
        } else if (!queued.empty()) {
            ASSERT_TRUE(r.take(queued.front().first, queued.front().second));
            queued.pop_front();
        } else {
            frame_header h{};
            const std::byte* p = nullptr;
            ASSERT_EQ(r.consumer.peek(h, p), peek_result::empty);
        }
    }
    while (!queued.empty()) {
        ASSERT_TRUE(r.take(queued.front().first, queued.front().second));
        queued.pop_front();
    }
    EXPECT_FALSE(r.producer.corrupt());
}

// Kilobytes resident of each worker region this process maps (/proc/self/smaps).
std::vector<long> worker_region_rss_kb() {
    std::ifstream smaps("/proc/self/smaps");
    std::string line;
    std::vector<long> out;
    bool in_region = false;
    while (std::getline(smaps, line)) {
        if (line.find(" /memfd:") != std::string::npos || line.find("-") < line.find(' ')) {
            in_region = line.find("memfd:procpool-worker") != std::string::npos;
        } else if (in_region && line.rfind("Rss:", 0) == 0) {
            out.push_back(std::stol(line.substr(4)));
            in_region = false;
        }
    }
    return out;
}

int plus_one(int x) {
    return x + 1;
}

// True where shared memory may come in huge pages (then a region's first 2 MiB are one page).
bool shmem_huge_pages() {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    std::string line;
    std::getline(f, line);
    for (const char* on : {"[always]", "[within_size]", "[force]"}) {
        if (line.find(on) != std::string::npos) return true;
    }
    return false;
}

TEST(RingReach, APoolWithSmallTasks_TouchesOnlyTheFirstPagesOfItsRings) {
    if (shmem_huge_pages()) GTEST_SKIP() << "shared memory comes in huge pages here";
    procpool::process_pool pool({.workers = 2});
    std::vector<int> in(40'000);
    std::iota(in.begin(), in.end(), 0);
    // 40,000 one-item chunks: several megabytes through each direction of each ring,
    // many times the rings' capacity.
    const std::vector<int> out = pool.map(plus_one, in, {.chunksize = 1});
    ASSERT_EQ(out.size(), in.size());
    for (std::size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], in[i] + 1) << i;
    const std::vector<long> rss = worker_region_rss_kb();
    ASSERT_EQ(rss.size(), 2u);
    // The control page, then at most the initial reach of each ring (64 KiB), populated in
    // 64 KiB batches; the whole region is over 2 MiB.
    for (long kb : rss) EXPECT_LE(kb, 4 + 64 + 64) << "KiB resident of a worker region";
}

// Descriptors process `pid` has open.
std::size_t open_descriptors(int pid) {
    std::size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        ++n;
    }
    return n;
}

int first_element(procpool::shared_array<int> a) {
    return a[0];
}

// True once `pid` is stopped (state T in /proc/PID/stat), or false after ~60 s.
bool wait_stopped(int pid) {
    for (int i = 0; i < 60'000; ++i) {
        std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
        std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
        const auto close = all.rfind(')');
        // T: stopped; t: stopped under a tracer.
        if (close != std::string::npos && close + 2 < all.size() &&
            (all[close + 2] == 'T' || all[close + 2] == 't'))
            return true;
        usleep(1000);
    }
    return false;
}

// Thousands of shared arrays freed while their worker is stopped (descheduled, traced):
// their forget notices would fill the ring's small reach while no task is in flight, which
// is what a worker that holds its read index back looks like. The notices wait in the
// parent instead, and the worker is not killed.
TEST(RingReach, ForgetNoticesForAStoppedIdleWorker_DoNotMakeItLookHostile) {
    constexpr int n = 5000;  // 80 KB of notices: more than the 64 KiB reach
    // Each cached array holds a descriptor in this process and one in the worker (forked
    // from this process with its limit): raise the soft limit if it is lower.
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
    const std::size_t fds_before = open_descriptors(pids[0]);
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
        ASSERT_GE(open_descriptors(pids[0]), fds_before + n);  // each array cached there
        ASSERT_EQ(kill(pids[0], SIGSTOP), 0);
        ASSERT_TRUE(wait_stopped(pids[0]));
        arrays.clear();  // n forget notices for the stopped worker
        auto f = pool.submit(plus_one, 41);
        ASSERT_EQ(kill(pids[0], SIGCONT), 0);
        EXPECT_EQ(f.get(), 42);
        EXPECT_EQ(pool.worker_pids(), pids);
    }
    pool.shutdown();
    EXPECT_EQ(pool.stats().worker_restarts, 0u);
}

}  // namespace
