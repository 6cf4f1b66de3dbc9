// Streams (imap, imap_unordered) on thread and process pools: results equal to map's, every
// result exactly once out of order, endless input read only as far as the bound allows,
// errors that end the stream, early destruction that cancels what has not started; and
// run_in's max_in_flight. Nothing here waits for time to pass: gates and latches order
// the events, and bounds are checked with counters.
#include "procpool/stream.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <latch>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/run.hpp"
#include "procpool/thread_pool.hpp"
#include "run_support.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using procpool::stream_options;
using procpool_test::numbers;

using procpool_test::gate;

/// 0, 1, 2, ... without end, like a generator: no size, a sentinel that is never reached.
/// Counts the elements read (on the reading thread only).
class naturals {
public:
    class iterator {
    public:
        using value_type = long;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        iterator(long i, long* reads) : i_(i), reads_(reads) {}
        long operator*() const {
            ++*reads_;
            return i_;
        }
        iterator& operator++() {
            ++i_;
            return *this;
        }
        void operator++(int) { ++i_; }

    private:
        long i_ = 0;
        long* reads_ = nullptr;
    };

    explicit naturals(long* reads) : reads_(reads) {}
    iterator begin() const { return iterator(0, reads_); }
    std::unreachable_sentinel_t end() const { return {}; }

private:
    long* reads_;
};

static_assert(std::ranges::input_range<naturals>);
static_assert(!std::ranges::sized_range<naturals>);

using int_stream = procpool::stream<int>;
static_assert(std::ranges::input_range<int_stream>);
static_assert(std::input_iterator<int_stream::iterator>);
static_assert(std::sentinel_for<std::default_sentinel_t, int_stream::iterator>);
static_assert(std::is_same_v<std::ranges::range_value_t<int_stream>, int>);
static_assert(std::is_same_v<std::ranges::range_reference_t<int_stream>, int&>);
static_assert(std::is_nothrow_move_constructible_v<int_stream>);
static_assert(!std::is_copy_constructible_v<int_stream>);
static_assert(std::ranges::input_range<procpool::stream<bool>>);

template <class Stream>
auto collect(Stream&& s) {
    std::vector<std::ranges::range_value_t<Stream>> out;
    for (auto&& v : s) out.push_back(std::move(v));
    return out;
}

int square(int x) {
    return x * x;
}

// ---- thread_pool: results --------------------------------------------------------------

TEST(ThreadStream, InInputOrder_EqualsMap_ForEveryChunkSizeAndBound) {
    procpool::thread_pool pool({.workers = 3});
    const auto in = numbers(103);
    const auto expected = pool.map(square, in);
    for (std::size_t chunk : {0, 1, 3, 50, 1000}) {
        for (std::size_t bound : {0, 1, 2, 5}) {
            auto got = collect(pool.imap(square, in, {.chunksize = chunk, .max_in_flight = bound}));
            EXPECT_EQ(got, expected) << "chunksize " << chunk << ", max_in_flight " << bound;
        }
    }
}

TEST(ThreadStream, Unordered_YieldsEveryResultExactlyOnce) {
    procpool::thread_pool pool({.workers = 3});
    const auto in = numbers(257);
    for (std::size_t chunk : {1, 4, 100}) {
        auto got = collect(pool.imap_unordered(square, in, {.chunksize = chunk}));
        std::sort(got.begin(), got.end());
        EXPECT_EQ(got, pool.map(square, in)) << "chunksize " << chunk;
    }
}

TEST(ThreadStream, Unordered_ASlowChunk_DoesNotHoldBackTheOthers) {
    // Element 0 holds its worker until the reader has every other result, which only
    // completion order can give it.
    constexpr int n = 40;
    gate release;
    procpool::thread_pool pool({.workers = 2});
    auto s = pool.imap_unordered(
        [&](int x) {
            if (x == 0) release.wait();
            return x;
        },
        numbers(n), {.chunksize = 1, .max_in_flight = 4});
    std::vector<int> got;
    for (int v : s) {
        got.push_back(v);
        if (got.size() == static_cast<std::size_t>(n - 1)) {
            EXPECT_EQ(std::count(got.begin(), got.end(), 0), 0);
            release.open();
        }
    }
    ASSERT_EQ(got.size(), static_cast<std::size_t>(n));
    EXPECT_EQ(got.back(), 0);
}

TEST(ThreadStream, AnyInputRange_ListsAndRvalues_TheStreamOwnsAnRvalue) {
    procpool::thread_pool pool({.workers = 2});
    std::list<std::string> words = {"a", "bb", "ccc"};
    auto lengths = collect(pool.imap([](const std::string& w) { return w.size(); }, words));
    EXPECT_EQ(lengths, (std::vector<std::size_t>{1, 2, 3}));

    // The temporary vector is moved into the stream: reading after the full expression
    // that made it is fine (ASan would see a dangling read otherwise).
    auto s = pool.imap(square, std::vector<int>{1, 2, 3}, {.chunksize = 1, .max_in_flight = 1});
    EXPECT_EQ(collect(s), (std::vector<int>{1, 4, 9}));
}

TEST(ThreadStream, EmptyInput_HasNoResults) {
    procpool::thread_pool pool({.workers = 2});
    auto s = pool.imap(square, std::vector<int>{});
    EXPECT_TRUE(s.begin() == s.end());
    EXPECT_EQ(s.in_flight(), 0u);
}

TEST(ThreadStream, BoolResults_ReadThroughTheVectorsReference) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<bool> got;
    for (bool b : pool.imap([](int x) { return x % 2 == 0; }, numbers(5), {.chunksize = 2})) {
        got.push_back(b);
    }
    EXPECT_EQ(got, (std::vector<bool>{true, false, true, false, true}));
}

TEST(ThreadStream, MoveOnlyResults_CanBeMovedOutOfTheStream) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<std::unique_ptr<int>> got;
    for (auto& p : pool.imap([](int x) { return std::make_unique<int>(x); }, numbers(4))) {
        got.push_back(std::move(p));
    }
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(*got[3], 3);
}

TEST(ThreadStream, MovedStream_KeepsItsIteratorValid) {
    procpool::thread_pool pool({.workers = 2});
    auto a = pool.imap(square, numbers(10), {.chunksize = 3, .max_in_flight = 2});
    auto it = a.begin();
    EXPECT_EQ(*it, 0);
    auto b = std::move(a);
    ++it;
    EXPECT_EQ(*it, 1);
    std::vector<int> rest;
    for (; it != b.end(); ++it) rest.push_back(*it);
    EXPECT_EQ(rest, (std::vector<int>{1, 4, 9, 16, 25, 36, 49, 64, 81}));
    EXPECT_TRUE(a.begin() == a.end());  // moved from: reads as empty
}

#if !defined(__clang__) || __clang_major__ >= 15
// (clang 14 cannot compile libstdc++ 12's views.)
TEST(ThreadStream, ComposesWithStdViews) {
    procpool::thread_pool pool({.workers = 2});
    long reads = 0;
    std::vector<int> got;
    for (long v : pool.imap([](long x) { return x * 10; }, naturals(&reads)) |
                      std::views::filter([](long v) { return v % 20 == 0; }) |
                      std::views::take(3)) {
        got.push_back(static_cast<int>(v));
    }
    EXPECT_EQ(got, (std::vector<int>{0, 20, 40}));
    auto lvalue = pool.imap(square, numbers(6));
    std::vector<int> halves;
    for (int v : lvalue | std::views::transform([](int v) { return v / 2; })) halves.push_back(v);
    EXPECT_EQ(halves, (std::vector<int>{0, 0, 2, 4, 8, 12}));
}
#endif

/// 0, 1, ..., n-1 through an iterator and a sentinel of another type (not a common range).
struct below {
    int n;
    struct sentinel {
        int n;
    };
    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int operator*() const { return i; }
        iterator& operator++() {
            ++i;
            return *this;
        }
        void operator++(int) { ++i; }
        friend bool operator==(const iterator& it, const sentinel& s) { return it.i == s.n; }
    };
    iterator begin() const { return {0}; }
    sentinel end() const { return {n}; }
};

TEST(ThreadStream, MapAndImap_TakeARangeWhoseSentinelIsAnotherType) {
    procpool::thread_pool pool({.workers = 2});
    EXPECT_EQ(pool.map(square, below{5}), (std::vector<int>{0, 1, 4, 9, 16}));
    EXPECT_EQ(collect(pool.imap(square, below{5})), (std::vector<int>{0, 1, 4, 9, 16}));
}

// ---- thread_pool: bounded memory -------------------------------------------------------

TEST(ThreadStream, EndlessInput_TheFirstResultsArrive_AndStoppingEndsIt) {
    procpool::thread_pool pool({.workers = 2});
    long reads = 0;
    std::atomic<long> calls{0};
    constexpr std::size_t chunk = 4;
    constexpr std::size_t bound = 3;
    {
        auto s = pool.imap(
            [&](long x) {
                ++calls;
                return x * 2;
            },
            naturals(&reads), {.chunksize = chunk, .max_in_flight = bound});
        long expect = 0;
        for (long v : s) {
            ASSERT_EQ(v, expect * 2);
            if (++expect == 1000) break;
        }
    }
    // 1000 results read: 250 chunks taken, at most `bound` more submitted.
    EXPECT_GE(reads, 1000);
    EXPECT_LE(reads, static_cast<long>((1000 / chunk + bound) * chunk));
    EXPECT_LE(calls.load(), reads);
}

TEST(ThreadStream, MaxInFlight_BoundsTheInputReadAndTheTasksStarted_AheadOfTheReader) {
    procpool::thread_pool pool({.workers = 3});
    for (bool ordered : {true, false}) {
        long reads = 0;
        std::atomic<long> calls{0};
        constexpr long chunk = 2;
        constexpr long bound = 3;
        auto f = [&](long x) {
            ++calls;
            return x;
        };
        const stream_options opts{.chunksize = chunk, .max_in_flight = bound};
        auto s = ordered ? pool.imap(f, naturals(&reads), opts)
                         : pool.imap_unordered(f, naturals(&reads), opts);
        // Made: the first `bound` chunks are out, not one more.
        EXPECT_EQ(s.in_flight(), static_cast<std::size_t>(bound));
        EXPECT_EQ(reads, bound * chunk);
        long taken = 0;
        for (auto it = s.begin(); taken < 500; ++it) {
            ++taken;
            // The chunks taken so far (the current one included) plus those in flight.
            const long chunks_taken = (taken + chunk - 1) / chunk;
            ASSERT_LE(s.in_flight(), static_cast<std::size_t>(bound));
            ASSERT_LE(reads, (chunks_taken + bound) * chunk) << "after " << taken << " results";
            ASSERT_LE(calls.load(), (chunks_taken + bound) * chunk);
        }
    }
}

// ---- thread_pool: errors ----------------------------------------------------------------

int fail_on_five(int x) {
    if (x == 5) throw std::out_of_range("no five");
    return x;
}

TEST(ThreadStream, FailingElement_ThrowsItsOwnException_WhenReached_AndTheStreamEnds) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<int> got;
    auto s = pool.imap(fail_on_five, numbers(100), {.chunksize = 1, .max_in_flight = 4});
    auto it = s.begin();
    try {
        for (; it != s.end(); ++it) got.push_back(*it);
        FAIL() << "the failing element was passed over";
    } catch (const std::out_of_range& e) {
        EXPECT_STREQ(e.what(), "no five");
    }
    EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4}));
    EXPECT_TRUE(it == s.end());
    EXPECT_EQ(s.in_flight(), 0u);
    EXPECT_TRUE(s.begin() == s.end());
}

TEST(ThreadStream, FailingElement_CostsItsWholeChunk) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<int> got;
    // Chunks {0,1,2} {3,4,5} ...: the second fails at 5, so 3 and 4 are never yielded.
    EXPECT_THROW(
        {
            for (int v : pool.imap(fail_on_five, numbers(30), {.chunksize = 3})) got.push_back(v);
        },
        std::out_of_range);
    EXPECT_EQ(got, (std::vector<int>{0, 1, 2}));
}

TEST(ThreadStream, FailingFirstChunk_BeginThrows_Unordered_Too) {
    procpool::thread_pool pool({.workers = 2});
    auto fails = [](int) -> int { throw std::invalid_argument("bad input"); };
    auto s = pool.imap(fails, numbers(3));
    EXPECT_THROW(s.begin(), std::invalid_argument);
    EXPECT_TRUE(s.begin() == s.end());
    auto u = pool.imap_unordered(fails, numbers(3));
    EXPECT_THROW((void)collect(u), std::invalid_argument);
}

/// An input whose reading fails after `good` elements.
struct breaks_after {
    int good;
    struct iterator {
        using value_type = int;
        using difference_type = std::ptrdiff_t;
        int i = 0;
        int good = 0;
        int operator*() const {
            if (i >= good) throw std::runtime_error("input broke");
            return i;
        }
        iterator& operator++() {
            ++i;
            return *this;
        }
        void operator++(int) { ++i; }
    };
    iterator begin() const { return {0, good}; }
    std::unreachable_sentinel_t end() const { return {}; }
};

TEST(ThreadStream, InputThatThrows_PropagatesFromTheRead_AfterTheResultsBeforeIt) {
    procpool::thread_pool pool({.workers = 2});
    std::vector<int> got;
    auto s = pool.imap(square, breaks_after{3}, {.chunksize = 2, .max_in_flight = 1});
    try {
        for (int v : s) got.push_back(v);
        FAIL() << "the input's exception was lost";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "input broke");
    }
    // Every element read before the input broke has its result, then the error comes.
    EXPECT_EQ(got, (std::vector<int>{0, 1, 4}));
    // And from imap itself when the first chunks cannot be read.
    EXPECT_THROW((void)pool.imap(square, breaks_after{0}), std::runtime_error);
}

TEST(ThreadStream, PoolShutDown_ImapThrows_AndPendingChunksReadAsCancelled) {
    procpool::thread_pool pool({.workers = 1});
    {
        procpool_test::blocker busy(pool);
        auto s = pool.imap(square, numbers(20), {.chunksize = 1, .max_in_flight = 4});
        pool.shutdown({.wait = false, .cancel_pending = true});
        busy.open();
        EXPECT_THROW((void)collect(s), procpool::task_cancelled);
    }
    EXPECT_THROW((void)pool.imap(square, numbers(3)), procpool::pool_shut_down);
}

// ---- thread_pool: stopping early --------------------------------------------------------

TEST(ThreadStream, DestroyedEarly_CancelsTheChunksThatHaveNotStarted) {
    // The pool's one worker is held while the stream is made and destroyed: all its
    // chunks are queued, so none may run.
    procpool::thread_pool pool({.workers = 1});
    std::atomic<int> ran{0};
    {
        procpool_test::blocker busy(pool);
        {
            auto s = pool.imap(
                [&](int x) {
                    ++ran;
                    return x;
                },
                numbers(100), {.chunksize = 1, .max_in_flight = 10});
            EXPECT_EQ(s.in_flight(), 10u);
        }
        busy.open();
    }
    pool.submit([] {}).get();  // FIFO: anything queued before this has run by now
    EXPECT_EQ(ran.load(), 0);
}

TEST(ThreadStream, Close_WaitsForTheRunningChunk_ThenReadsAsEnded) {
    // Element 0 runs until the gate opens; close() on another thread must not return
    // before it has returned, since it calls a function that uses this frame.
    procpool::thread_pool pool({.workers = 2});
    std::latch started(1);
    gate release;
    std::atomic<bool> closed{false};
    std::atomic<bool> closed_before_return{true};
    std::atomic<int> ran{0};
    auto s = pool.imap(
        [&](int x) {
            ++ran;
            if (x == 0) {
                started.count_down();
                release.wait();
                closed_before_return = closed.load();
            }
            return x;
        },
        numbers(1000), {.chunksize = 1, .max_in_flight = 4});
    started.wait();
    std::thread closer([&] {
        s.close();
        closed = true;
    });
    release.open();
    closer.join();
    EXPECT_FALSE(closed_before_return.load());
    EXPECT_LE(ran.load(), 4);  // only what was submitted could run
    EXPECT_TRUE(s.begin() == s.end());
    EXPECT_EQ(s.in_flight(), 0u);
}

TEST(ThreadStream, BreakingOutOfTheLoop_RunsOnlyWhatWasInFlight) {
    procpool::thread_pool pool({.workers = 2});
    std::atomic<int> ran{0};
    {
        auto s = pool.imap(
            [&](int x) {
                ++ran;
                return x;
            },
            numbers(100'000), {.chunksize = 10, .max_in_flight = 4});
        for (int v : s) {
            if (v == 25) break;
        }
    }
    // Three chunks read, at most four more submitted: nothing else was ever queued.
    EXPECT_LE(ran.load(), (3 + 4) * 10);
}

// ---- future::cancel_pending: what stops a stream --------------------------------------

TEST(CancelPending, ThreadPool_StopsAQueuedTask_NotARunningOne) {
    procpool::thread_pool pool({.workers = 1});
    procpool_test::blocker busy(pool);
    auto queued = pool.submit([] { return 1; });
    EXPECT_FALSE(busy.task().cancel_pending());  // running
    EXPECT_TRUE(queued.cancel_pending());
    EXPECT_TRUE(queued.cancelled());
    EXPECT_THROW(queued.get(), procpool::task_cancelled);
    busy.open();
    EXPECT_EQ(busy.task().get(), 42);
    EXPECT_FALSE(busy.task().cancel_pending());  // done
}

// ---- run_in with max_in_flight ---------------------------------------------------------

/// A pool for run_in that checks its bound from run_in's side: each submit notes how many
/// tasks were submitted and not yet reported through on_result (which the test counts
/// in `results`). A task is reported only once it has finished, so this is never less
/// than the number really in flight. Everything happens on run_in's thread.
template <class Pool, class Options>
class counting {
public:
    explicit counting(Options opts) : pool_(std::move(opts)) {}

    template <class F, class... A>
        requires std::invocable<std::decay_t<F>, std::decay_t<A>...>
    auto submit(F&& f, A&&... args) {
        ++submits_;
        peak_ = std::max(peak_, submits_ - results);
        return pool_.submit(std::forward<F>(f), std::forward<A>(args)...);
    }
    /// Forwarded where the pool has it, so a process pool stays a timed_executor (run_in
    /// would otherwise wrap the function in a lambda, which cannot cross to a worker).
    template <class F, class... A>
        requires requires(Pool& p, F&& f, A&&... a) {
            p.submit(procpool::task_options{}, std::forward<F>(f), std::forward<A>(a)...);
        }
    auto submit(procpool::task_options topts, F&& f, A&&... args) {
        ++submits_;
        peak_ = std::max(peak_, submits_ - results);
        return pool_.submit(topts, std::forward<F>(f), std::forward<A>(args)...);
    }
    int workers() const noexcept { return pool_.workers(); }
    /// The most tasks out at once, as seen at the submits.
    int peak() const noexcept { return peak_; }
    /// Outcomes reported so far: the test's on_result increments it.
    int results = 0;

private:
    int submits_ = 0;
    int peak_ = 0;
    Pool pool_;
};
using counting_threads = counting<procpool::thread_pool, procpool::thread_pool_options>;
using counting_processes = counting<procpool::process_pool, procpool::process_pool_options>;

TEST(RunInMaxInFlight, BoundsTheTasksSubmittedAndUnfinished_ResultsInInputOrder) {
    counting_threads pool({.workers = 4});
    std::vector<int> seen(200, 0);
    auto out = procpool::run_in(pool, [](int x) { return x * 3; }, numbers(200),
                                {.on_result =
                                     [&](std::size_t i, const procpool::outcome<int>&) {
                                         ++seen[i];
                                         ++pool.results;
                                     },
                                 .max_in_flight = 3});
    ASSERT_EQ(out.size(), 200u);
    for (std::size_t i = 0; i < out.size(); ++i) {
        ASSERT_TRUE(out[i]);
        EXPECT_EQ(out[i].index(), i);
        EXPECT_EQ(*out[i], static_cast<int>(i) * 3);
        EXPECT_EQ(seen[i], 1);
    }
    EXPECT_EQ(pool.peak(), 3);  // reached at the start: three submitted before any result
}

TEST(RunInMaxInFlight, Unbounded_ByDefault_EveryTaskIsSubmittedAtOnce) {
    counting_threads pool({.workers = 1});
    auto out = procpool::run_in(pool, [](int x) { return x; }, numbers(20),
                                {.on_result = [&](std::size_t, const procpool::outcome<int>&) {
                                    ++pool.results;
                                }});
    EXPECT_EQ(pool.peak(), 20);
    for (auto& o : out) EXPECT_TRUE(o);
}

TEST(RunInMaxInFlight, FailFast_TheTasksNotLaunched_AreCancelledWithoutRunning) {
    std::atomic<int> calls{0};
    auto out = procpool::run_in_threads(
        [&](int x) {
            ++calls;
            if (x == 0) throw std::runtime_error("first");
            return x;
        },
        numbers(10), {.workers = 2, .fail_fast = true, .max_in_flight = 1});
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(out[0].error().kind(), procpool::failure_kind::exception);
    for (std::size_t i = 1; i < 10; ++i) {
        ASSERT_FALSE(out[i]);
        EXPECT_EQ(out[i].error().kind(), procpool::failure_kind::cancelled);
    }
}

TEST(RunInMaxInFlight, RunInThreads_WithABound_GivesEveryOutcome) {
    auto out = procpool::run_in_threads(
        [](int x) {
            if (x % 5 == 0) throw std::runtime_error("fives fail");
            return x;
        },
        numbers(50), {.workers = 3, .show_progress = false, .max_in_flight = 2});
    ASSERT_EQ(out.size(), 50u);
    for (std::size_t i = 0; i < 50; ++i) EXPECT_EQ(static_cast<bool>(out[i]), i % 5 != 0);
}

// ---- process_pool ------------------------------------------------------------------------

long twice(long x) {
    return 2 * x;
}
int fail_on_seven(int x) {
    if (x == 7) throw std::out_of_range("seven");
    return x;
}
int touch(std::string path) {
    std::ofstream(path) << 1;
    return 1;
}
void noop() {}

/// The pool's worker pids once every worker has one (the pool learns them from the fork
/// server, after the workers start); a watchdog of minutes fails the test on a hang.
std::vector<int> started_pids(const procpool::process_pool& pool) {
    const auto until = std::chrono::steady_clock::now() + 2min;
    for (;;) {
        auto pids = pool.worker_pids();
        if (pids.size() == static_cast<std::size_t>(pool.workers())) return pids;
        if (std::chrono::steady_clock::now() > until) {
            ADD_FAILURE() << "the pool's workers never all started";
            return pids;
        }
        std::this_thread::sleep_for(1ms);
    }
}

TEST(ProcessStream, InInputOrder_EqualsMap) {
    procpool::process_pool pool({.workers = 2});
    const auto in = numbers(301);
    const auto expected = pool.map(square, in);
    for (std::size_t chunk : {0, 1, 7, 1000}) {
        for (std::size_t bound : {0, 1, 3}) {
            EXPECT_EQ(collect(pool.imap(square, in, {.chunksize = chunk, .max_in_flight = bound})),
                      expected)
                << "chunksize " << chunk << ", max_in_flight " << bound;
        }
    }
    // A captureless lambda is a task too.
    EXPECT_EQ(collect(pool.imap([](int x) { return x + 1; }, numbers(3))),
              (std::vector<int>{1, 2, 3}));
}

TEST(ProcessStream, MapAndImap_TakeARangeWhoseSentinelIsAnotherType) {
    procpool::process_pool pool({.workers = 2});
    EXPECT_EQ(pool.map(square, below{5}), (std::vector<int>{0, 1, 4, 9, 16}));
    EXPECT_EQ(collect(pool.imap(square, below{5})), (std::vector<int>{0, 1, 4, 9, 16}));
}

TEST(ProcessStream, Unordered_YieldsEveryResultExactlyOnce) {
    procpool::process_pool pool({.workers = 2});
    const auto in = numbers(301);
    auto got = collect(pool.imap_unordered(square, in, {.chunksize = 5}));
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, pool.map(square, in));
}

TEST(ProcessStream, EndlessInput_StopsWithinTheBound_WithoutKillingAWorker) {
    procpool::process_pool pool({.workers = 2});
    const auto pids = started_pids(pool);
    long reads = 0;
    {
        auto s = pool.imap(twice, naturals(&reads), {.chunksize = 100, .max_in_flight = 3});
        long expect = 0;
        for (long v : s) {
            ASSERT_EQ(v, 2 * expect);
            if (++expect == 5000) break;
        }
    }
    EXPECT_LE(reads, (5000 / 100 + 3) * 100);
    EXPECT_EQ(pool.worker_pids(), pids) << "stopping the stream killed a worker";
    EXPECT_EQ(pool.submit(twice, 21L).get(), 42);
}

TEST(ProcessStream, FailingElement_ThrowsRemoteException_AndThePoolStaysUsable) {
    procpool::process_pool pool({.workers = 2});
    for (bool ordered : {true, false}) {
        std::vector<int> got;
        const stream_options opts{.chunksize = 1, .max_in_flight = 3};
        auto s = ordered ? pool.imap(fail_on_seven, numbers(50), opts)
                         : pool.imap_unordered(fail_on_seven, numbers(50), opts);
        try {
            for (int v : s) got.push_back(v);
            FAIL() << "the failing element was passed over";
        } catch (const procpool::remote_exception& e) {
            EXPECT_EQ(e.type_name(), "std::out_of_range");
            EXPECT_EQ(e.message(), "seven");
        }
        EXPECT_TRUE(s.begin() == s.end());
        if (ordered) {
            EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3, 4, 5, 6}));
        }
        EXPECT_EQ(std::count(got.begin(), got.end(), 7), 0);
    }
    EXPECT_EQ(pool.submit(square, 9).get(), 81);
}

TEST(ProcessStream, DestroyedEarly_CancelsTheChunksNotStarted_WithoutKillingTheWorker) {
    // The one worker runs a gated task while the stream is made and destroyed: none of the
    // stream's chunks has started, so none may run (each would leave a file).
    procpool::process_pool pool({.workers = 1});
    procpool_test::file_gate held;
    procpool_test::temp_dir files;
    auto busy = pool.submit(&procpool_test::file_gate::wait_then_return, held.path(), 1);
    held.wait_started();
    const auto pids = started_pids(pool);
    std::vector<std::string> paths;
    for (int i = 0; i < 100; ++i) paths.push_back(files.path() + "/" + std::to_string(i));
    {
        auto s = pool.imap(touch, paths, {.chunksize = 1, .max_in_flight = 8});
        EXPECT_EQ(s.in_flight(), 8u);
    }
    held.open();
    EXPECT_EQ(busy.get(), 1);
    pool.submit(noop).get();  // the worker has passed every request queued before it
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(files.path()),
                            std::filesystem::directory_iterator()),
              0);
    EXPECT_EQ(pool.worker_pids(), pids);
}

TEST(CancelPending, ProcessPool_StopsAQueuedTask_AndLeavesTheRunningOneAndItsWorker) {
    procpool::process_pool pool({.workers = 1});
    procpool_test::file_gate held;
    auto running = pool.submit(&procpool_test::file_gate::wait_then_return, held.path(), 7);
    held.wait_started();
    const auto pids = started_pids(pool);
    std::vector<procpool::future<int>> queued;
    for (int i = 0; i < 6; ++i) queued.push_back(pool.submit(square, i));  // ring and parked
    EXPECT_FALSE(running.cancel_pending());
    for (auto& f : queued) {
        EXPECT_TRUE(f.cancel_pending());
        EXPECT_THROW(f.get(), procpool::task_cancelled);
    }
    held.open();
    EXPECT_EQ(running.get(), 7);
    EXPECT_EQ(pool.worker_pids(), pids) << "cancel_pending killed the worker";
    EXPECT_EQ(pool.submit(square, 5).get(), 25);
}

TEST(ProcessStream, ShutDownPool_ImapThrowsPoolShutDown) {
    procpool::process_pool pool({.workers = 1});
    pool.shutdown();
    EXPECT_THROW((void)pool.imap(square, numbers(3)), procpool::pool_shut_down);
}

TEST(RunInMaxInFlight, ProcessPool_BoundHolds_AndRunInProcessesTakesIt) {
    counting_processes pool({.workers = 2});
    auto out = procpool::run_in(
        pool, square, numbers(60),
        {.on_result = [&](std::size_t, const procpool::outcome<int>&) { ++pool.results; },
         .max_in_flight = 2});
    for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i].value(), static_cast<int>(i * i));
    EXPECT_EQ(pool.peak(), 2);

    auto more = procpool::run_in_processes(fail_on_seven, numbers(20),
                                           {.workers = 2, .max_in_flight = 3});
    ASSERT_EQ(more.size(), 20u);
    for (std::size_t i = 0; i < 20; ++i) EXPECT_EQ(static_cast<bool>(more[i]), i != 7);
}

}  // namespace

// Process pools: init first thing in main (see tests/test_run_processes.cpp).
int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
