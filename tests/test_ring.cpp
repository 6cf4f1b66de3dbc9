// A worker's request ring under a burst of forget notices (src/ipc/ring.hpp,
// src/process/pool_dispatch.cpp): thousands of shared arrays freed while their worker is
// stopped, then a task with a large frame.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ipc/ring.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

namespace {

std::size_t text_size(std::string s) { return s.size(); }
int first_element(procpool::shared_array<int> a) { return a[0]; }
int plus_one(int x) { return x + 1; }

// Descriptors open in process `pid`.
std::size_t open_fds(int pid) {
    std::error_code ec;
    const std::filesystem::directory_iterator it("/proc/" + std::to_string(pid) + "/fd", ec);
    return ec ? 0
              : static_cast<std::size_t>(std::distance(it, std::filesystem::directory_iterator()));
}

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

// ---- the ring itself (src/ipc/ring.hpp), in private memory -----------------------------

// A ring over a buffer of this process, with its producer and consumer views.
struct local_ring {
    static constexpr std::uint32_t cap = 1024;
    explicit local_ring(std::uint64_t key = procpool::ipc::random_stamp_key())
        : producer{(ctl.stamp_key = key, &ctl), data, cap}, consumer{&ctl, data, cap} {}
    procpool::ipc::ring_ctl ctl;
    alignas(64) std::byte data[cap]{};
    procpool::ipc::ring producer;
    procpool::ipc::ring consumer;

    bool put(std::uint32_t value) {
        std::byte* p = producer.try_reserve(sizeof value);
        if (p == nullptr) return false;
        std::memcpy(p, &value, sizeof value);
        producer.commit(sizeof value, 1);
        return true;
    }
    // The next value, or -1 if the ring is empty, or -2 if it is corrupt.
    long long take() {
        procpool::ipc::frame_header h{};
        const std::byte* p = nullptr;
        const auto r = consumer.peek(h, p);
        if (r == procpool::ipc::peek_result::empty) return -1;
        if (r == procpool::ipc::peek_result::corrupt) return -2;
        std::uint32_t v = 0;
        std::memcpy(&v, p, sizeof v);
        consumer.pop(h);
        return v;
    }
};

// The consumer reads the producer's index once for the frames published together, then
// again when it has consumed them: frames published after its last look still arrive.
TEST(RingUnit, FramesPublishedAfterTheConsumersLastLook_AllArriveInOrder) {
    local_ring r;
    ASSERT_TRUE(r.put(1));
    ASSERT_TRUE(r.put(2));
    EXPECT_EQ(r.take(), 1);  // its look saw two frames
    ASSERT_TRUE(r.put(3));
    ASSERT_TRUE(r.put(4));
    EXPECT_EQ(r.take(), 2);
    EXPECT_EQ(r.take(), 3);
    EXPECT_EQ(r.take(), 4);
    EXPECT_EQ(r.take(), -1);
    ASSERT_TRUE(r.put(5));
    EXPECT_EQ(r.take(), 5);
    EXPECT_EQ(r.take(), -1);
}

// The producer reads the consumer's index only when its last look leaves no room: room
// freed since then is found, through many wraps of the buffer.
TEST(RingUnit, RoomTheConsumerFreedSinceTheProducersLastLook_IsFound) {
    local_ring r;
    std::uint32_t next_put = 0;
    std::uint32_t next_take = 0;
    for (int round = 0; round < 50; ++round) {
        int added = 0;
        while (r.put(next_put)) {
            ++next_put;
            ++added;
        }
        ASSERT_GT(added, 0) << "round " << round << ": no room after the consumer freed some";
        // Free a different amount each round, so the frames straddle the end differently.
        const int free_now = 1 + round % 7;
        for (int i = 0; i < free_now; ++i) ASSERT_EQ(r.take(), next_take++);
    }
    while (next_take < next_put) ASSERT_EQ(r.take(), next_take++);
    EXPECT_EQ(r.take(), -1);
}

// The producer stamps a frame, then stores its index: a consumer that took the frame by
// its stamp in between finds the index behind its own, which means "nothing more yet",
// not a broken ring.
TEST(RingUnit, FrameTakenByItsStampBeforeTheIndexIsStored_ThenEmptyNotCorrupt) {
    local_ring r;
    const std::uint64_t before = r.ctl.head.load();
    ASSERT_TRUE(r.put(9));
    r.ctl.head.store(before);  // as if the index had not been stored yet
    EXPECT_EQ(r.take(), 9);
    EXPECT_EQ(r.take(), -1);
    EXPECT_TRUE(r.consumer.empty());
    r.ctl.head.store(before + procpool::ipc::ring::frame_size(sizeof(std::uint32_t)));
    EXPECT_EQ(r.take(), -1);
    ASSERT_TRUE(r.put(10));
    EXPECT_EQ(r.take(), 10);
}

// A stamped header is checked against the buffer: a frame that would run past its end is
// reported, never read.
TEST(RingUnit, StampedFrameLongerThanTheBuffer_IsCorrupt) {
    local_ring r;
    procpool::ipc::frame_header h{local_ring::cap, 1};
    std::memcpy(r.data, &h, sizeof h);
    const std::uint64_t stamp = r.producer.stamp_of(0);
    std::memcpy(r.data + offsetof(procpool::ipc::frame_header, stamp), &stamp, sizeof stamp);
    EXPECT_EQ(r.take(), -2);
}

// A consumer with nothing to read looks for a stamp where the next frame will start,
// which still holds what an earlier frame left there: data a user chose. Data made to
// look like stamped frames (headers, and stamps for the positions it will be found at, as
// anyone who knows the stamp rule but not the ring's key can compute them) is never taken
// for a frame.
TEST(RingUnit, PayloadShapedLikeStampedFrames_IsNeverTakenForOne) {
    local_ring r;
    // One big frame from offset 0 whose payload, at every 16-byte-aligned offset of the
    // buffer, holds a header {4, 7} and the stamp of that offset one lap later, made with
    // the key 0 (the attacker's best guess); then small frames through the wrap while the
    // consumer looks whenever it has nothing to read.
    std::vector<std::uint64_t> fake((local_ring::cap / 4 - 16) / sizeof(std::uint64_t));
    for (std::size_t i = 0; i + 1 < fake.size(); i += 2) {
        const std::uint64_t offset = 16 + 8 * i;  // the buffer offset of fake[i]
        fake[i] = (std::uint64_t{7} << 32) | 4u;
        fake[i + 1] = (offset + local_ring::cap) | 1;
    }
    std::byte* p = r.producer.try_reserve(static_cast<std::uint32_t>(fake.size() * 8));
    ASSERT_NE(p, nullptr);
    std::memcpy(p, fake.data(), fake.size() * 8);
    r.producer.commit(static_cast<std::uint32_t>(fake.size() * 8), 1);
    procpool::ipc::frame_header h{};
    const std::byte* payload = nullptr;
    ASSERT_EQ(r.consumer.peek(h, payload), procpool::ipc::peek_result::frame);
    r.consumer.pop(h);
    for (std::uint32_t i = 0; i < 200; ++i) {
        ASSERT_TRUE(r.put(i));
        ASSERT_EQ(r.take(), i);
        EXPECT_EQ(r.take(), -1) << "after frame " << i << ": a frame nobody sent";
    }
}

// Frames start on cache lines: a frame of up to 48 payload bytes (a no-op task's request
// is 48) fills one line, so the consumer that sees its stamp has the whole frame.
TEST(RingUnit, SmallFrames_EachStartsOnACacheLineAndFitsInIt) {
    local_ring r;
    std::uint32_t expect_at = 0;
    for (std::uint32_t len = 1; len <= 48; ++len) {
        std::byte* p = r.producer.try_reserve(len);
        ASSERT_NE(p, nullptr);
        const auto at = static_cast<std::uint32_t>(p - r.data) - 16;
        EXPECT_EQ(at % 64, 0u) << "a " << len << "-byte frame starts mid-line";
        EXPECT_EQ(at, expect_at);
        r.producer.commit(len, 1);
        expect_at = (at + 64) % local_ring::cap;
        procpool::ipc::frame_header h{};
        const std::byte* payload = nullptr;
        ASSERT_EQ(r.consumer.peek(h, payload), procpool::ipc::peek_result::frame);
        r.consumer.pop(h);
    }
    EXPECT_EQ(procpool::ipc::ring::frame_size(48), 64u);
    EXPECT_EQ(procpool::ipc::ring::frame_size(49), 128u);
}

// A spinning look (read_index false) finds frames by their stamps only, and reads the
// producer's index every 256th look that finds none: a frame published without a stamp
// (only a hostile peer does that) is found then, and by a look that reads the index at once.
TEST(RingUnit, UnstampedFrame_FoundByTheIndexOnlyEvery256thSpinningLook) {
    local_ring r;
    ASSERT_TRUE(r.put(41));
    std::memset(r.data + offsetof(procpool::ipc::frame_header, stamp), 0, 8);  // no stamp
    procpool::ipc::frame_header h{};
    const std::byte* p = nullptr;
    for (int i = 1; i < 256; ++i) {
        ASSERT_EQ(r.consumer.peek(h, p, false), procpool::ipc::peek_result::empty) << "look " << i;
    }
    ASSERT_EQ(r.consumer.peek(h, p, false), procpool::ipc::peek_result::frame);
    r.consumer.pop(h);
    ASSERT_TRUE(r.put(42));
    std::memset(r.data + 64 + offsetof(procpool::ipc::frame_header, stamp), 0, 8);
    EXPECT_EQ(r.take(), 42);  // read_index true: the index at once
    // Stamped frames are found by a spinning look at once.
    ASSERT_TRUE(r.put(43));
    ASSERT_EQ(r.consumer.peek(h, p, false), procpool::ipc::peek_result::frame);
}

// No honest producer writes a pad at offset 0 (every frame fits there): a stamped pad that
// claims the whole buffer is reported, so a peer rewriting it each lap cannot keep the
// consumer skipping pads.
TEST(RingUnit, StampedPadFillingTheWholeBuffer_IsCorrupt) {
    local_ring r;
    procpool::ipc::frame_header h{local_ring::cap - 16, procpool::ipc::frame_pad};
    std::memcpy(r.data, &h, sizeof h);
    const std::uint64_t stamp = r.producer.stamp_of(0);
    std::memcpy(r.data + offsetof(procpool::ipc::frame_header, stamp), &stamp, sizeof stamp);
    EXPECT_EQ(r.take(), -2);
}

// The pool's forget budget (a quarter of a request ring in notices, pool_core.hpp): at any
// ring position, with that much unconsumed, a frame of any payload up to max_payload (the
// largest task frame) still fits, the pad before it at the wrap included.
TEST(RingUnit, AQuarterInNotices_LeavesRoomForTheLargestFrameAtEveryPosition) {
    for (std::uint32_t start = 0; start < local_ring::cap; start += 64) {
        for (std::uint32_t len = 0; len <= local_ring::cap / 4; len += 8) {
            local_ring r;
            ASSERT_EQ(r.producer.max_payload(), local_ring::cap / 4);
            for (std::uint32_t i = 0; i < start / 64; ++i) {  // both indices to `start`
                ASSERT_TRUE(r.put(i));
                ASSERT_EQ(r.take(), i);
            }
            while (r.producer.unconsumed() + procpool::ipc::ring::frame_size(8) <=
                   local_ring::cap / 4) {
                ASSERT_TRUE(r.put(0));
            }
            ASSERT_EQ(r.producer.unconsumed(), local_ring::cap / 4);
            EXPECT_NE(r.producer.try_reserve(len), nullptr) << "at " << start << ", " << len;
        }
    }
}

// A peer that forges the other side's index is still caught when the index is read.
TEST(RingUnit, ForgedIndices_AreReportedCorrupt) {
    {
        local_ring r;
        ASSERT_TRUE(r.put(7));
        EXPECT_EQ(r.take(), 7);
        // The producer's index claims more than the buffer holds.
        r.ctl.head.store(r.ctl.head.load() + 10ull * local_ring::cap);
        EXPECT_EQ(r.take(), -2);
    }
    {
        local_ring r;
        while (r.put(1)) {
        }
        ASSERT_FALSE(r.producer.corrupt());
        // The consumer's index claims to be ahead of what was published.
        r.ctl.tail.store(r.ctl.head.load() + 8);
        EXPECT_FALSE(r.put(1));
        EXPECT_TRUE(r.producer.corrupt());
    }
}

// Their forget notices wait in the worker's ring while it is stopped; the worker must not
// be taken for one that holds its read index back, and the task must run once it resumes
// (not stay parked with nothing in flight to bring it back).
// Each cached array holds a descriptor here and one in the worker (forked from this process
// with its limit): raises the soft limit for `n` arrays if it is lower, for the object's
// lifetime.
class descriptor_limit {
  public:
    explicit descriptor_limit(int n) : want_(2 * static_cast<rlim_t>(n) + 1000) {
        getrlimit(RLIMIT_NOFILE, &old_);
        if (old_.rlim_cur >= want_) return;
        rlimit up = old_;
        up.rlim_cur = std::min<rlim_t>(old_.rlim_max, want_);
        setrlimit(RLIMIT_NOFILE, &up);
    }
    ~descriptor_limit() { setrlimit(RLIMIT_NOFILE, &old_); }
    descriptor_limit(const descriptor_limit&) = delete;
    descriptor_limit& operator=(const descriptor_limit&) = delete;
    bool ok() const {
        rlimit now{};
        getrlimit(RLIMIT_NOFILE, &now);
        return now.rlim_cur >= want_;
    }
    std::string why() const {
        return "needs " + std::to_string(want_) + " descriptors (RLIMIT_NOFILE hard limit " +
               std::to_string(old_.rlim_max) + ")";
    }

  private:
    rlim_t want_;
    rlimit old_{};
};

// A one-worker pool whose worker a test stops and continues; never left stopped (the pool
// would wait for it).
struct one_worker {
    procpool::process_pool pool{procpool::process_pool_options{.workers = 1}};
    std::vector<int> pids;
    one_worker() {
        if (pool.submit(plus_one, 0).get() == 1) pids = pool.worker_pids();
    }
    ~one_worker() {
        if (pids.size() == 1) kill(pids[0], SIGCONT);
    }
    one_worker(const one_worker&) = delete;
    one_worker& operator=(const one_worker&) = delete;
    bool started() const { return pids.size() == 1; }
    bool stop() const { return kill(pids[0], SIGSTOP) == 0 && wait_stopped(pids[0]); }
    bool resume() const { return kill(pids[0], SIGCONT) == 0; }
};

// `n` arrays the worker of `pool` has mapped (each passed to a task once).
std::vector<procpool::shared_array<int>> cached_arrays(procpool::process_pool& pool, int n) {
    std::vector<procpool::shared_array<int>> arrays;
    arrays.reserve(static_cast<std::size_t>(n));
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < n; ++i) {
        arrays.emplace_back(1);
        arrays.back()[0] = i;
        fs.push_back(pool.submit(first_element, arrays.back()));
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i);
    return arrays;
}

// `n` arrays freed while the worker is stopped, then a task whose argument is a string of
// `arg_bytes`. With `resume`, the worker is continued and must run it without a restart;
// without, it stays stopped and the task's deadline must kill it (the task must have been
// sent, not left parked behind notices that fill the ring).
void forget_burst_then_task(int n, std::size_t arg_bytes, bool resume = true) {
    const descriptor_limit limit(n);
    if (!limit.ok()) GTEST_SKIP() << limit.why();
    one_worker w;
    ASSERT_TRUE(w.started());
    procpool::process_pool& pool = w.pool;
    const std::vector<int>& pids = w.pids;
    const std::size_t fds_before = open_fds(pids[0]);
    {
        std::vector<procpool::shared_array<int>> arrays = cached_arrays(pool, n);
        ASSERT_TRUE(w.stop());
        arrays.clear();  // n forget notices for the stopped worker
        // Only this task has a deadline (none of the setup's may time out on a busy machine).
        auto f = resume ? pool.submit(text_size, std::string(arg_bytes, 'x'))
                        : pool.submit(procpool::task_options{.timeout = std::chrono::seconds(1)},
                                      text_size, std::string(arg_bytes, 'x'));
        if (!resume) {
            // A watchdog (under ctest's per-test timeout, so that its message is seen): a
            // task never sent has no deadline and never resolves.
            ASSERT_TRUE(f.wait_for(std::chrono::seconds(60))) << "the task was never sent";
            EXPECT_THROW(f.get(), procpool::task_timeout);
            EXPECT_EQ(pool.submit(plus_one, 1).get(), 2);  // on its replacement
            EXPECT_NE(pool.worker_pids(), pids);
            return;
        }
        ASSERT_TRUE(w.resume());
        EXPECT_EQ(f.get(), arg_bytes);
        EXPECT_EQ(pool.worker_pids(), pids);
        // The notices held back (beyond a quarter of the ring) reach it with no further
        // task: it closes every array's descriptor. A watchdog (under ctest's per-test
        // timeout), not a timing.
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (open_fds(pids[0]) > fds_before) {
            ASSERT_LT(std::chrono::steady_clock::now(), until)
                << open_fds(pids[0]) << " descriptors open, " << fds_before << " before";
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    }
    pool.shutdown();
    EXPECT_EQ(pool.stats().worker_restarts, 0u);
}

// A task too large for the ring: its frame is small (the bytes go out of band).
TEST(RingBurst, ForgetNoticesForAStoppedWorker_ThenALargeTask_RunsWithoutRestart) {
    forget_burst_then_task(5000, 200'000);
}

// Found by an adversarial review: 7000 notices (a 64-byte frame each) and a task whose
// 100 kB frame does not fit after them. The worker, stopped, was taken for one that holds
// its read index back (more than half a ring unconsumed) and killed.
TEST(RingBurst, ManyForgetNoticesForAStoppedWorker_ThenATaskInTheRing_RunsWithoutRestart) {
    forget_burst_then_task(7000, 100'000);
}

// Found by an adversarial review: the same worker never resumed. Its notices filled the
// ring, the task did not fit, was never sent, and its deadline never started: a 1-worker
// pool with a task_timeout stalled for good. Notices now fill a quarter of the ring at
// most, so the task is sent and the deadline kills the worker.
TEST(RingBurst, ManyForgetNoticesForAWorkerThatStaysStopped_ThenATask_TimesOut) {
    forget_burst_then_task(7000, 100'000, false);
}

// Access to a shared_array's block, to give it one relayed under a chosen id.
struct block_access : procpool::shared_array<int> {
    static auto member() { return &block_access::block_; }
};

// A shared_array over a block relayed under `id`, as an mpi_pool serving rank makes one
// for each use of rank 0's array after the last was freed (src/mpi/arrays.cpp).
procpool::shared_array<int> relayed_array(std::uint64_t id, int value) {
    procpool::shared_array<int> a(1);
    auto b = procpool::detail::shm_block::relayed(-1, sizeof(int), true, id, false);
    std::memcpy(b->data(), &value, sizeof value);
    a.*(block_access::member()) = b;
    return a;
}

// Found by an adversarial review: a block freed while its worker's notices fill their
// budget has its notice wait in the backlog; a new block under the same id sent meanwhile
// went out first, and the old notice, published after it, made the worker drop the new
// mapping (the next use failed: "a shared array in this message was not received").
TEST(RingBurst, IdSentAgainWhileItsNoticeWaits_TheNewMappingStays) {
    constexpr int n = 2500;  // more than a quarter of the ring in notices
    const descriptor_limit limit(n);
    if (!limit.ok()) GTEST_SKIP() << limit.why();
    constexpr std::uint64_t id = (std::uint64_t{1} << 60) + 12345;
    one_worker w;
    ASSERT_TRUE(w.started());
    procpool::process_pool& pool = w.pool;
    const std::vector<int>& pids = w.pids;
    std::vector<procpool::shared_array<int>> arrays = cached_arrays(pool, n);
    auto first = std::make_unique<procpool::shared_array<int>>(relayed_array(id, 11));
    ASSERT_EQ(pool.submit(first_element, *first).get(), 11);  // the worker caches `id`
    ASSERT_TRUE(w.stop());
    arrays.clear();                       // the budget fills, the rest wait in the backlog
    first.reset();                        // `id`'s notice waits too
    auto second = relayed_array(id, 22);  // the same id, a new block
    auto f = pool.submit(first_element, second);
    ASSERT_TRUE(w.resume());
    EXPECT_EQ(f.get(), 22);
    EXPECT_EQ(pool.submit(plus_one, 1).get(), 2);  // whatever was held back is out by now
    EXPECT_EQ(pool.submit(first_element, second).get(), 22);  // still mapped in the worker
    EXPECT_EQ(pool.worker_pids(), pids);
}

// True in an ASan+UBSan build: UBSan's vptr check tells valid memory from invalid by
// writing it into a pipe, which a worker with no descriptor left cannot open, so it reports
// a false "invalid vptr" there and ends the worker. The tests that starve a worker of
// descriptors run in the other builds.
bool sanitizer_needs_descriptors() {
#if defined(__SANITIZE_ADDRESS__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return true;
#endif
#endif
    return false;
}

// In a worker: no descriptor can be opened from now on, as when its table is full of
// cached blocks; `descriptors_back` undoes it.
rlim_t saved_descriptor_limit = 0;
int no_more_descriptors(int) {
    rlimit r{};
    getrlimit(RLIMIT_NOFILE, &r);
    saved_descriptor_limit = r.rlim_cur;
    r.rlim_cur = 3;
    return setrlimit(RLIMIT_NOFILE, &r);
}
int descriptors_back(int) {
    rlimit r{};
    getrlimit(RLIMIT_NOFILE, &r);
    r.rlim_cur = saved_descriptor_limit;
    return setrlimit(RLIMIT_NOFILE, &r);
}

// Found by an adversarial review: a block sent again under an id the worker has mapped
// from before, whose descriptor the worker cannot take (out of descriptors: the kernel
// drops it), left the old mapping in place: that task and every later one read the freed
// block's stale value, with no error. Now the task fails with a serialization error, the
// old mapping is gone, and once the worker has descriptors again the block is sent anew.
// With `backlog`, the old block's notice is still waiting when the new one is sent.
void id_sent_again_not_received(bool backlog) {
    if (sanitizer_needs_descriptors()) GTEST_SKIP() << "UBSan needs descriptors in the worker";
    constexpr int n = 2500;
    const descriptor_limit limit(n);
    if (!limit.ok()) GTEST_SKIP() << limit.why();
    constexpr std::uint64_t id = (std::uint64_t{1} << 60) + 54321;
    one_worker w;
    ASSERT_TRUE(w.started());
    procpool::process_pool& pool = w.pool;
    const std::vector<int>& pids = w.pids;
    std::vector<procpool::shared_array<int>> arrays;
    if (backlog) arrays = cached_arrays(pool, n);
    auto first = std::make_unique<procpool::shared_array<int>>(relayed_array(id, 11));
    ASSERT_EQ(pool.submit(first_element, *first).get(), 11);  // mapped in the worker
    ASSERT_EQ(pool.submit(no_more_descriptors, 0).get(), 0);
    ASSERT_TRUE(w.stop());
    arrays.clear();
    first.reset();
    auto second = relayed_array(id, 22);  // the same id, a new block
    auto f = pool.submit(first_element, second);
    ASSERT_TRUE(w.resume());
    EXPECT_THROW(f.get(), procpool::serialization_error);  // not the old block's 11
    EXPECT_THROW(pool.submit(first_element, second).get(), procpool::serialization_error);
    ASSERT_EQ(pool.submit(descriptors_back, 0).get(), 0);
    EXPECT_EQ(pool.submit(first_element, second).get(), 22);
    EXPECT_EQ(pool.submit(first_element, second).get(), 22);
    EXPECT_EQ(pool.worker_pids(), pids);
}

TEST(RingBurst, IdSentAgainButNotReceived_FailsThenIsSentAnew) {
    id_sent_again_not_received(false);
}

TEST(RingBurst, IdSentAgainWhileItsNoticeWaitsButNotReceived_FailsThenIsSentAnew) {
    id_sent_again_not_received(true);
}

// Found by an adversarial review: a task skipped (cancelled while its frame waited in the
// ring) whose block the worker could not take. The worker takes a task's blocks before it
// decides to skip it, and drops what it could not take; the parent must then not count the
// block as cached there, or the next task that needs it, once the worker has descriptors
// again, is sent without it and fails.
TEST(RingBurst, SkippedTaskWhoseBlockWasNotReceived_TheBlockIsSentAgainLater) {
    if (sanitizer_needs_descriptors()) GTEST_SKIP() << "UBSan needs descriptors in the worker";
    one_worker w;
    ASSERT_TRUE(w.started());
    procpool::process_pool& pool = w.pool;
    const std::vector<int>& pids = w.pids;
    procpool::shared_array<int> array(1);
    array[0] = 7;
    ASSERT_EQ(pool.submit(no_more_descriptors, 0).get(), 0);
    ASSERT_TRUE(w.stop());
    auto skipped = pool.submit(first_element, array);  // its frame waits in the ring
    EXPECT_TRUE(skipped.cancel());
    ASSERT_TRUE(w.resume());
    EXPECT_THROW(skipped.get(), procpool::task_cancelled);
    ASSERT_EQ(pool.submit(descriptors_back, 0).get(), 0);
    EXPECT_EQ(pool.submit(first_element, array).get(), 7);
    EXPECT_EQ(pool.submit(first_element, array).get(), 7);
    EXPECT_EQ(pool.worker_pids(), pids);
}

int sum_two(procpool::shared_array<int> a, procpool::shared_array<int> b) {
    return a[0] + b[0];
}

// A task with two blocks the worker cannot take: it reads both records (the control socket
// stays in step: the next task's block is its own, not the second of these), fails, and
// both work once the worker has descriptors again.
TEST(RingBurst, TwoBlocksNotReceived_TheControlSocketStaysInStep) {
    if (sanitizer_needs_descriptors()) GTEST_SKIP() << "UBSan needs descriptors in the worker";
    procpool::process_pool pool({.workers = 1});
    ASSERT_EQ(pool.submit(plus_one, 0).get(), 1);
    procpool::shared_array<int> a(1), b(1), c(1);
    a[0] = 1;
    b[0] = 2;
    c[0] = 40;
    ASSERT_EQ(pool.submit(no_more_descriptors, 0).get(), 0);
    EXPECT_THROW(pool.submit(sum_two, a, b).get(), procpool::serialization_error);
    ASSERT_EQ(pool.submit(descriptors_back, 0).get(), 0);
    EXPECT_EQ(pool.submit(first_element, c).get(), 40);
    EXPECT_EQ(pool.submit(sum_two, a, b).get(), 3);
    EXPECT_EQ(pool.submit(first_element, c).get(), 40);
}

}  // namespace
