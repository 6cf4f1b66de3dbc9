// Adversarial review of big std::vector results travelling back through blocks the worker
// keeps (shm_block::returned_by_reader, src/ipc/shm.cpp), of the parent's kept mappings of
// them (receive_attachments' `kept`, src/process/channel.cpp; worker_slot::result_blocks),
// of the hand-back word (attachments::bulk_copied -> shm_block::return_now), of the
// workers' malloc settings (keep_freed_memory_for_reuse, src/process/spawn.cpp) and of
// populate_pages' mincore shortcut.
//
// Each test checks procpool's promises: every result holds exactly its own task's bytes
// (and keeps them after later tasks ran), every future resolves (a value or a typed
// error), nothing hangs, and no descriptor, mapping or memory is left behind or grows
// without bound.
//
// No timing assertions: every wait is bounded by a watchdog of minutes, after which the
// test fails instead of hanging.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool::shared_array;

namespace {

constexpr auto watchdog = std::chrono::minutes(2);

// ---- helpers ------------------------------------------------------------------------------

using procpool_test::pattern;
using procpool_test::patterned;

// The first index where `v` differs from pattern(seed), or SIZE_MAX if none (and the size
// is right).
std::size_t first_wrong(const std::vector<std::uint64_t>& v, std::size_t n, std::uint64_t seed) {
    if (v.size() != n) return 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (v[i] != pattern(seed, i)) return i;
    }
    return SIZE_MAX;
}

// This process's mappings of procpool memfds (of at least `min_bytes` each).
int memfd_mappings(std::size_t min_bytes = 0) {
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (f == nullptr) return -1;
    char line[512];
    int n = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        unsigned long lo = 0;
        unsigned long hi = 0;
        if (std::strstr(line, "procpool-shared-array") != nullptr &&
            std::sscanf(line, "%lx-%lx", &lo, &hi) == 2 && hi - lo >= min_bytes) {
            ++n;
        }
    }
    std::fclose(f);
    return n;
}

// Waits (a watchdog, not a timing assertion) for the parent's count of mapped blocks to
// reach at most `want`; returns the last count seen.
int memfd_mappings_settling_at_most(int want) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    int n = memfd_mappings();
    while (n > want && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
        n = memfd_mappings();
    }
    return n;
}

// Descriptors of this process naming a procpool memfd.
int memfd_fds() {
    int n = 0;
    for (int fd = 0; fd < 4096; ++fd) {
        char link[256];
        const ssize_t k =
            readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
        if (k <= 0) continue;
        link[k] = 0;
        if (std::strstr(link, "procpool-shared-array") != nullptr) ++n;
    }
    return n;
}

int fds_settling_at_most(int want) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    int n = procpool_test::open_fd_count();
    while (n > want && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
        n = procpool_test::open_fd_count();
    }
    return n;
}

// A field of /proc/self/status in KiB (VmRSS, VmSize, VmData), -1 if absent.
long status_kib(const char* key) {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (f == nullptr) return -1;
    char line[256];
    long kib = -1;
    const std::size_t k = std::strlen(key);
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::strncmp(line, key, k) == 0 && line[k] == ':') {
            std::sscanf(line + k + 1, " %ld", &kib);
            break;
        }
    }
    std::fclose(f);
    return kib;
}

template <class F>
bool resolves(const F& f) {
    return f.wait_for(watchdog);
}

// ---- tasks --------------------------------------------------------------------------------

std::vector<std::uint64_t> make(std::size_t n, std::uint64_t seed) {
    return patterned(n, seed);
}

std::tuple<std::vector<std::uint64_t>, std::vector<std::uint64_t>, std::vector<std::uint64_t>,
           std::vector<std::uint64_t>, std::vector<std::uint64_t>, std::vector<std::uint64_t>>
make_six(std::size_t n, std::uint64_t seed) {
    return {patterned(n, seed),
            patterned(n + 1000, seed + 1),
            patterned(n * 2, seed + 2),
            patterned(n + 7, seed + 3),
            patterned(n / 2 + 200'000, seed + 4),
            patterned(n * 3, seed + 5)};
}

std::vector<std::vector<std::uint64_t>> make_many(int k, std::size_t n, std::uint64_t seed) {
    std::vector<std::vector<std::uint64_t>> out;
    for (int j = 0; j < k; ++j) {
        out.push_back(patterned(n + static_cast<std::size_t>(j) * 4099,
                                seed + static_cast<std::uint64_t>(j)));
    }
    return out;
}

struct flagged {
    std::int32_t value;
    bool flag;
};

std::vector<char> make_chars(std::size_t n, int seed) {
    std::vector<char> v(n);
    for (std::size_t i = 0; i < n; ++i)
        v[i] = static_cast<char>((i * 31 + static_cast<std::size_t>(seed)) & 0x7f);
    return v;
}

std::vector<flagged> make_flagged(std::size_t n, int seed) {
    std::vector<flagged> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        v[i] = {static_cast<std::int32_t>(i) + seed,
                ((i + static_cast<std::size_t>(seed)) % 3) == 0};
    }
    return v;
}

std::vector<std::array<float, 3>> make_points(std::size_t n, int seed) {
    std::vector<std::array<float, 3>> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        const float x = static_cast<float>(i % 100000) + static_cast<float>(seed);
        v[i] = {x, x + 1, x + 2};
    }
    return v;
}

// Keeps one vector across calls (a static) and changes it each time: each result must be
// the state of its own call, and stay so after later calls.
std::vector<std::uint64_t> bump_static(std::size_t n) {
    static std::vector<std::uint64_t> kept;
    static std::uint64_t calls = 0;
    if (kept.size() != n) kept.assign(n, 0);
    ++calls;
    for (auto& x : kept) x = calls;
    return kept;
}

// Returns a big vector, then kills its own process from another thread a moment later:
// the parent may be reading the result while the worker dies.
std::vector<std::uint64_t> make_then_die(std::size_t n, std::uint64_t seed, int delay_us) {
    std::thread([delay_us] {
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
        raise(SIGKILL);
    }).detach();
    return patterned(n, seed);
}

int die(int how) {
    if (how == 0) raise(SIGKILL);
    if (how == 1) std::abort();
    std::_Exit(3);
}

std::pair<shared_array<std::uint64_t>, std::vector<std::uint64_t>> array_and_vector(
    std::size_t n, std::uint64_t seed) {
    shared_array<std::uint64_t> a(n);
    for (std::size_t i = 0; i < n; ++i) a[i] = pattern(seed, i);
    return {std::move(a), patterned(n + 3, seed + 1)};
}

// Threads of the task allocate and fill big vectors; the result is made on one of them.
std::vector<std::uint64_t> make_on_threads(std::size_t n, std::uint64_t seed) {
    std::vector<std::vector<std::uint64_t>> made(4);
    std::vector<std::thread> ts;
    for (std::size_t t = 0; t < made.size(); ++t) {
        ts.emplace_back([&made, t, n, seed] { made[t] = patterned(n + t, seed + t); });
    }
    for (auto& t : ts) t.join();
    for (std::size_t t = 1; t < made.size(); ++t) {
        if (first_wrong(made[t], n + t, seed + t) != SIZE_MAX) return {};
    }
    return std::move(made[0]);
}

// fork() inside a task: the child allocates big memory and leaves; the task returns a big
// vector made before and after.
std::vector<std::uint64_t> make_around_fork(std::size_t n, std::uint64_t seed) {
    std::vector<std::uint64_t> before = patterned(n, seed);
    const pid_t pid = fork();
    if (pid == 0) {
        std::vector<std::uint64_t> big(std::size_t{8} << 20, 7);  // 64 MiB in the child
        _exit(big[12345] == 7 ? 0 : 1);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        return {};
    }
    return before;
}

// Allocates `mib` MiB and touches it; the count of MiB it saw.
long allocate_mib(long mib) {
    std::vector<char> v(static_cast<std::size_t>(mib) << 20);
    for (std::size_t i = 0; i < v.size(); i += 4096) v[i] = 1;
    long s = 0;
    for (std::size_t i = 0; i < v.size(); i += std::size_t{1} << 20) s += v[i];
    return s;
}

// As allocate_mib, on a thread of the task.
long allocate_mib_on_thread(long mib) {
    long r = -1;
    std::exception_ptr e;
    std::thread([&] {
        try {
            r = allocate_mib(mib);
        } catch (...) {
            e = std::current_exception();
        }
    }).join();
    if (e) std::rethrow_exception(e);
    return r;
}

long vm_size_mib() {
    return status_kib("VmSize") / 1024;
}
long vm_rss_mib() {
    return status_kib("VmRSS") / 1024;
}

// ---- many results of many sizes, checked element by element ------------------------------

// Sizes (in u64 elements) around every edge of the block logic: the 1 MiB threshold, a
// whole number of pages with and without room for the 64-byte word, half of a kept block.
std::vector<std::size_t> edge_sizes() {
    constexpr std::size_t page_elems = 4096 / 8;
    std::vector<std::size_t> s = {
        131072,                      // exactly 1 MiB: the threshold
        131071,                      // just below: in the byte stream
        131072 + 1,                  //
        page_elems * 300 - 8,        // 300 pages less the word: fills whole pages
        page_elems * 300 - 7,        // one byte over: one more page
        page_elems * 600 - 8,        // twice the above, less the word
        page_elems * 600 - 16,       //
        page_elems * 301,            //
        (page_elems * 600 - 8) / 2,  // half a 600-page block: at the reuse edge
        (page_elems * 600 - 8) / 2 + 1,
        std::size_t{4} << 20,  // 32 MiB
        std::size_t{5} << 20,  // 40 MiB
    };
    return s;
}

TEST(BulkAdversary, ManyInFlightOnThreeWorkers_EdgeSizes_EveryElementIsItsOwn) {
    const int fds_before = procpool_test::open_fd_count();
    const int maps_before = memfd_mappings();
    {
        process_pool pool({.workers = 3});
        const std::vector<std::size_t> sizes = edge_sizes();
        for (int wave = 0; wave < 4; ++wave) {
            std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
            std::vector<std::size_t> ns;
            for (int i = 0; i < 36; ++i) {
                const std::size_t n = sizes[static_cast<std::size_t>(i * 7 + wave) % sizes.size()];
                ns.push_back(n);
                fs.push_back(pool.submit(make, n, static_cast<std::uint64_t>(wave * 1000 + i)));
            }
            for (std::size_t i = 0; i < fs.size(); ++i) {
                ASSERT_TRUE(resolves(fs[i])) << "wave " << wave << " task " << i;
                const std::vector<std::uint64_t> r = fs[i].get();
                EXPECT_EQ(first_wrong(r, ns[i], static_cast<std::uint64_t>(wave) * 1000 + i),
                          SIZE_MAX)
                    << "wave " << wave << " task " << i << " of " << ns[i] << " elements";
            }
        }
        // Bounded: at most 4 kept mappings per worker.
        EXPECT_LE(memfd_mappings_settling_at_most(maps_before + 12), maps_before + 12);
    }
    EXPECT_EQ(memfd_mappings_settling_at_most(maps_before), maps_before);
    EXPECT_LE(fds_settling_at_most(fds_before), fds_before);
}

TEST(BulkAdversary, SixBigVectorsInOneResult_MoreThanTheWorkerKeeps_EachIsItsOwn) {
    process_pool pool({.workers = 2});
    constexpr std::size_t n = 300'000;
    std::vector<procpool::future<decltype(make_six(0, 0))>> fs;
    for (int i = 0; i < 12; ++i)
        fs.push_back(pool.submit(make_six, n + static_cast<std::size_t>(i) * 1000,
                                 static_cast<std::uint64_t>(i) * 10));
    for (std::size_t i = 0; i < fs.size(); ++i) {
        ASSERT_TRUE(resolves(fs[i]));
        const auto [a, b, c, d, e, f] = fs[i].get();
        const std::size_t m = n + i * 1000;
        const std::uint64_t s = i * 10;
        EXPECT_EQ(first_wrong(a, m, s), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(b, m + 1000, s + 1), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(c, m * 2, s + 2), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(d, m + 7, s + 3), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(e, m / 2 + 200'000, s + 4), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(f, m * 3, s + 5), SIZE_MAX) << i;
    }
}

TEST(BulkAdversary, VectorOfTenBigVectors_InFlightTogether_EachIsItsOwn) {
    process_pool pool({.workers = 2});
    constexpr std::size_t n = 140'000;
    std::vector<procpool::future<std::vector<std::vector<std::uint64_t>>>> fs;
    for (int i = 0; i < 10; ++i)
        fs.push_back(pool.submit(make_many, 10, n, static_cast<std::uint64_t>(i) * 100));
    for (std::size_t i = 0; i < fs.size(); ++i) {
        ASSERT_TRUE(resolves(fs[i]));
        const auto r = fs[i].get();
        ASSERT_EQ(r.size(), 10u);
        for (std::size_t j = 0; j < r.size(); ++j) {
            EXPECT_EQ(first_wrong(r[j], n + j * 4099, i * 100 + j), SIZE_MAX) << i << "/" << j;
        }
    }
}

TEST(BulkAdversary, CharStructWithBoolAndArrayElements_RoundTrip) {
    process_pool pool({.workers = 2});
    constexpr std::size_t n = 3'000'000;
    for (int round = 0; round < 3; ++round) {
        auto c = pool.submit(make_chars, n, round);
        auto f = pool.submit(make_flagged, n / 4, round);
        auto p = pool.submit(make_points, n / 8, round);
        auto c2 = pool.submit(make_chars, n / 2, round + 50);
        const std::vector<char> vc = c.get();
        const std::vector<flagged> vf = f.get();
        const std::vector<std::array<float, 3>> vp = p.get();
        const std::vector<char> vc2 = c2.get();
        EXPECT_EQ(vc, make_chars(n, round));
        EXPECT_EQ(vc2, make_chars(n / 2, round + 50));
        const std::vector<flagged> wf = make_flagged(n / 4, round);
        ASSERT_EQ(vf.size(), wf.size());
        for (std::size_t i = 0; i < vf.size(); ++i) {
            if (vf[i].value != wf[i].value || vf[i].flag != wf[i].flag) {
                ADD_FAILURE() << "flagged element " << i;
                break;
            }
        }
        EXPECT_EQ(vp, make_points(n / 8, round));
    }
}

TEST(BulkAdversary, AStaticVectorReturnedAgainAndAgain_EarlierResultsNeverChange) {
    process_pool pool({.workers = 1});
    constexpr std::size_t n = 400'000;
    std::vector<std::vector<std::uint64_t>> results;
    for (int i = 0; i < 16; ++i) results.push_back(pool.submit(bump_static, n).get());
    for (std::size_t i = 0; i < results.size(); ++i) {
        ASSERT_EQ(results[i].size(), n);
        EXPECT_TRUE(std::all_of(results[i].begin(), results[i].end(),
                                [&](std::uint64_t x) { return x == i + 1; }))
            << "result " << i << " was rewritten";
    }
}

// ---- deaths, cancels, timeouts, shutdowns ------------------------------------------------

TEST(BulkAdversary, WorkerKilledRightAfterReturning_EveryFutureResolves_ValuesAreTheirOwn) {
    const int maps_before = memfd_mappings();
    {
        process_pool pool({.workers = 2});
        std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
        std::vector<bool> dies;
        for (int i = 0; i < 30; ++i) {
            const bool d = i % 3 == 0;
            dies.push_back(d);
            const std::size_t n = 200'000 + static_cast<std::size_t>(i % 5) * 50'000;
            if (d) {
                fs.push_back(
                    pool.submit(make_then_die, n, static_cast<std::uint64_t>(i), (i * 97) % 500));
            } else {
                fs.push_back(pool.submit(make, n, static_cast<std::uint64_t>(i)));
            }
        }
        int values = 0;
        for (std::size_t i = 0; i < fs.size(); ++i) {
            ASSERT_TRUE(resolves(fs[i])) << i;
            const std::size_t n = 200'000 + (i % 5) * 50'000;
            try {
                EXPECT_EQ(first_wrong(fs[i].get(), n, i), SIZE_MAX) << i;
                ++values;
            } catch (const procpool::worker_died&) {
            }
        }
        EXPECT_GT(values, 0);
    }
    EXPECT_EQ(memfd_mappings_settling_at_most(maps_before), maps_before);
    // Deaths between results: each replacement's blocks are mapped afresh. A pool of its
    // own: a worker of the pool above may still hold a thread that kills it (make_then_die
    // kills up to 500 µs after its result, later on a busy machine), and a task given to
    // it would die too.
    {
        process_pool pool({.workers = 2});
        for (int k = 0; k < 3; ++k) {
            EXPECT_EQ(first_wrong(pool.submit(make, 300'000, 77).get(), 300'000, 77), SIZE_MAX);
            EXPECT_THROW(pool.submit(die, k).get(), procpool::worker_died);
            EXPECT_EQ(first_wrong(pool.submit(make, 300'000, 78).get(), 300'000, 78), SIZE_MAX);
        }
        EXPECT_LE(memfd_mappings_settling_at_most(maps_before + 8), maps_before + 8);
    }
    EXPECT_EQ(memfd_mappings_settling_at_most(maps_before), maps_before);
}

TEST(BulkAdversary, CancelsAndTimeoutsRacingBigResults_ResolveTyped_ValuesAreTheirOwn) {
    process_pool pool({.workers = 3});
    std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
    std::vector<std::size_t> ns;
    for (int i = 0; i < 60; ++i) {
        const std::size_t n = 150'000 + static_cast<std::size_t>(i % 7) * 90'000;
        ns.push_back(n);
        procpool::task_options o;
        if (i % 4 == 1) o.timeout = std::chrono::milliseconds(1 + i % 3);
        fs.push_back(pool.submit(o, make, n, static_cast<std::uint64_t>(i)));
        if (i % 5 == 2) fs.back().cancel();
        if (i % 6 == 3 && i > 0) fs[static_cast<std::size_t>(i) - 1].cancel();
    }
    for (std::size_t i = 0; i < fs.size(); ++i) {
        ASSERT_TRUE(resolves(fs[i])) << i;
        try {
            EXPECT_EQ(first_wrong(fs[i].get(), ns[i], i), SIZE_MAX) << i;
        } catch (const procpool::task_cancelled&) {
        } catch (const procpool::task_timeout&) {
        } catch (const procpool::worker_died&) {  // cancel() of a running task kills it
        }
    }
    for (int i = 0; i < 6; ++i) {
        EXPECT_EQ(first_wrong(pool.submit(make, 333'333, 5).get(), 333'333, 5), SIZE_MAX);
    }
}

TEST(BulkAdversary, ShutdownWithBigResultsInFlight_EveryFutureResolves_NothingLeaks) {
    const int fds_before = procpool_test::open_fd_count();
    const int maps_before = memfd_mappings();
    for (int round = 0; round < 3; ++round) {
        std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
        {
            process_pool pool({.workers = 3});
            for (int i = 0; i < 40; ++i) {
                fs.push_back(pool.submit(make, 200'000 + static_cast<std::size_t>(i) * 10'000,
                                         static_cast<std::uint64_t>(i)));
            }
            if (round == 1) static_cast<void>(fs[5].get());
            pool.shutdown({.wait = round == 2, .cancel_pending = round != 2});
        }
        for (std::size_t i = 0; i < fs.size(); ++i) {
            ASSERT_TRUE(resolves(fs[i])) << round << "/" << i;
            try {
                EXPECT_EQ(first_wrong(fs[i].get(), 200'000 + i * 10'000, i), SIZE_MAX) << i;
            } catch (const procpool::task_cancelled&) {
            } catch (const procpool::pool_shut_down&) {
            }
        }
    }
    EXPECT_EQ(memfd_mappings_settling_at_most(maps_before), maps_before);
    EXPECT_LE(fds_settling_at_most(fds_before), fds_before);
}

TEST(BulkAdversary, MaxTasksPerChild_ReplacementsReturnBlocksUnderFreshIds_ValuesAreTheirOwn) {
    const int maps_before = memfd_mappings();
    for (int per_child : {1, 3}) {
        process_pool pool({.workers = 2, .max_tasks_per_child = per_child});
        std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
        for (int i = 0; i < 30; ++i) {
            fs.push_back(pool.submit(make, 200'000 + static_cast<std::size_t>(i % 3) * 1000,
                                     static_cast<std::uint64_t>(i)));
        }
        for (std::size_t i = 0; i < fs.size(); ++i) {
            ASSERT_TRUE(resolves(fs[i]));
            EXPECT_EQ(first_wrong(fs[i].get(), 200'000 + (i % 3) * 1000, i), SIZE_MAX) << i;
        }
        // Retired workers' blocks are let go: at most the live workers' bound remains.
        EXPECT_LE(memfd_mappings_settling_at_most(maps_before + 8), maps_before + 8);
    }
    EXPECT_EQ(memfd_mappings_settling_at_most(maps_before), maps_before);
}

// ---- shared arrays next to big vectors ---------------------------------------------------

TEST(BulkAdversary, SharedArraysNextToBigVectors_StayUntouchedByLaterResults) {
    process_pool pool({.workers = 1});
    constexpr std::size_t n = 250'000;
    std::vector<shared_array<std::uint64_t>> arrays;
    for (int i = 0; i < 6; ++i) {
        auto [a, v] = pool.submit(array_and_vector, n, static_cast<std::uint64_t>(i) * 2).get();
        EXPECT_EQ(first_wrong(v, n + 3, static_cast<std::uint64_t>(i) * 2 + 1), SIZE_MAX);
        arrays.push_back(std::move(a));
    }
    for (int i = 0; i < 8; ++i) {
        EXPECT_EQ(first_wrong(pool.submit(make, n, 999).get(), n, 999), SIZE_MAX);
    }
    for (std::size_t i = 0; i < arrays.size(); ++i) {
        ASSERT_EQ(arrays[i].size(), n);
        for (std::size_t j = 0; j < n; ++j) {
            if (arrays[i][j] != pattern(i * 2, j)) {
                ADD_FAILURE() << "shared array " << i << " changed at " << j;
                break;
            }
        }
    }
}

// ---- threads, fork() and the workers' malloc settings ------------------------------------

TEST(BulkAdversary, ThreadsOfATaskAllocateBigVectors_ResultsAreRight) {
    process_pool pool({.workers = 2});
    for (int i = 0; i < 6; ++i) {
        // 80 MiB per thread: more than a thread arena's heap, with mmap turned off.
        const std::size_t n = std::size_t{10} << 20;
        EXPECT_EQ(
            first_wrong(pool.submit(make_on_threads, n, static_cast<std::uint64_t>(i)).get(), n, i),
            SIZE_MAX);
    }
}

TEST(BulkAdversary, ForkInsideATask_TheChildAllocates_TheResultIsRight) {
    process_pool pool({.workers = 1});
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(
            first_wrong(pool.submit(make_around_fork, 300'000, static_cast<std::uint64_t>(i)).get(),
                        300'000, i),
            SIZE_MAX);
    }
}

// ---- memory_limit --------------------------------------------------------------------------

TEST(BulkAdversary, MemoryLimit_AnAllocationPastIt_IsBadAlloc_OnTheMainThreadAndOnAThread) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer needs more address space";
    process_pool pool({.workers = 1, .memory_limit = std::size_t{768} << 20});
    EXPECT_THROW(pool.submit(allocate_mib, 2048).get(), procpool::remote_exception);
    EXPECT_THROW(pool.submit(allocate_mib_on_thread, 2048).get(), procpool::remote_exception);
    EXPECT_EQ(first_wrong(pool.submit(make, 300'000, 1).get(), 300'000, 1), SIZE_MAX);
    EXPECT_EQ(pool.submit(allocate_mib, 200).get(), 200);
    EXPECT_EQ(pool.submit(allocate_mib_on_thread, 200).get(), 200);
    EXPECT_THROW(pool.submit(allocate_mib, 2048).get(), procpool::remote_exception);
}

TEST(BulkAdversary, MemoryLimit_AResultTooBigForTheBlockToo_IsATypedError) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer needs more address space";
    // The vector fits, the vector and its block do not.
    process_pool pool({.workers = 1, .memory_limit = std::size_t{512} << 20});
    auto f = pool.submit(make, std::size_t{36} << 20, 3);  // 288 MiB
    ASSERT_TRUE(resolves(f));
    try {
        EXPECT_EQ(first_wrong(f.get(), std::size_t{36} << 20, 3), SIZE_MAX);
    } catch (const procpool::remote_exception&) {
    } catch (const procpool::serialization_error&) {
    }
    EXPECT_EQ(first_wrong(pool.submit(make, 300'000, 4).get(), 300'000, 4), SIZE_MAX);
}

// A task allocating `mib` MiB in a shared_array (mapped memory, not the heap).
long shared_array_mib(long mib) {
    shared_array<char> a(static_cast<std::size_t>(mib) << 20);
    for (std::size_t i = 0; i < a.size(); i += 4096) a[i] = 1;
    return static_cast<long>(a.size() >> 20);
}

TEST(BulkAdversary, MemoryLimit_ABigResultsKeptBlock_DoesNotShrinkWhatTheNextTaskMayAllocate) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer needs more address space";
    // A fresh worker (a few MiB of address space) can allocate 600 MiB under a 768 MiB
    // limit; after a 200 MiB result that the parent has long copied out, it must still
    // can: the result's block, free again, is no memory of any task's.
    process_pool pool({.workers = 1, .memory_limit = std::size_t{768} << 20});
    ASSERT_EQ(pool.submit(allocate_mib, 600).get(), 600);
    const std::size_t n = std::size_t{200} << 17;  // 200 MiB of u64
    EXPECT_EQ(first_wrong(pool.submit(make, n, 1).get(), n, 1), SIZE_MAX);
    try {
        EXPECT_EQ(pool.submit(allocate_mib, 600).get(), 600);
    } catch (const procpool::remote_exception& e) {
        ADD_FAILURE() << "after a 200 MiB result the worker (VmSize "
                      << pool.submit(vm_size_mib).get()
                      << " MiB) could not allocate 600 MiB: " << e.what();
    }
}

TEST(BulkAdversary, MemoryLimit_HeapFreedByOneTask_DoesNotShrinkWhatTheNextMayMap) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer needs more address space";
    // 250 MiB allocated and freed by one task; the next maps 600 MiB (a shared_array: memory
    // the heap's free pages cannot serve) under a 768 MiB limit, as a fresh worker can.
    process_pool pool({.workers = 1, .memory_limit = std::size_t{768} << 20});
    ASSERT_EQ(pool.submit(shared_array_mib, 600).get(), 600);
    ASSERT_EQ(pool.submit(allocate_mib, 250).get(), 250);
    try {
        EXPECT_EQ(pool.submit(shared_array_mib, 600).get(), 600);
    } catch (const std::exception& e) {
        ADD_FAILURE() << "after a task freed 250 MiB the worker (VmSize "
                      << pool.submit(vm_size_mib).get()
                      << " MiB) could not map 600 MiB: " << e.what();
    }
}

TEST(BulkAdversary, AWorkersIdleMemoryAfterBigResults_IsBounded) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer's allocator";
    process_pool pool({.workers = 1});
    const long base = pool.submit(vm_rss_mib).get();
    for (std::size_t mib : {16, 48, 100, 150, 200, 240, 64, 32, 250}) {
        EXPECT_EQ(first_wrong(pool.submit(make, mib << 17, mib).get(), mib << 17, mib), SIZE_MAX);
    }
    // At most 256 MiB of free heap and 256 MiB of kept blocks (and some slack).
    EXPECT_LT(pool.submit(vm_rss_mib).get(), base + 560);
    EXPECT_LE(memfd_mappings_settling_at_most(4), 4);
}

TEST(BulkAdversary, ResultsAroundTheKeptBlockBound_256MiB_EachIsItsOwn) {
    process_pool pool({.workers = 1});
    constexpr std::size_t mib256 = std::size_t{256} << 20;
    // Under the bound (256 MiB of vector, its block one page more); the vector that just
    // fills a block's pages with the word; exactly the bound; over it (never kept). As
    // u64: sizes in elements.
    const std::size_t sizes[] = {(mib256 - 64) / 8 - 512, (mib256 - 64) / 8, mib256 / 8,
                                 mib256 / 8 + 1, (mib256 - 64) / 8 - 512};
    std::uint64_t seed = 1;
    for (std::size_t n : sizes) {
        EXPECT_EQ(first_wrong(pool.submit(make, n, seed).get(), n, seed), SIZE_MAX) << n;
        ++seed;
    }
    EXPECT_LE(memfd_mappings_settling_at_most(4), 4);
}

TEST(BulkAdversary, AResultOfExactly256MiB_ItsBlockIsKeptAndServesTheNext) {
    process_pool pool({.workers = 1});
    constexpr std::size_t mib256 = std::size_t{256} << 20;
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
        EXPECT_EQ(first_wrong(pool.submit(make, mib256 / 8, seed).get(), mib256 / 8, seed),
                  SIZE_MAX);
        // The vector is gone; the block's mapping stays, one for all three results.
        EXPECT_EQ(memfd_mappings(mib256), 1) << "after result " << seed;
    }
}

TEST(BulkAdversary, RepeatedResults_TheKeptPath_LeaksNoDescriptorsInTheParent) {
    process_pool pool({.workers = 2});
    for (int i = 0; i < 10; ++i) static_cast<void>(pool.submit(make, 300'000, 1).get());
    const int fds = procpool_test::open_fd_count();
    const int maps = memfd_mappings();
    for (int i = 0; i < 200; ++i) {
        auto a = pool.submit(make, 300'000, static_cast<std::uint64_t>(i));
        auto b = pool.submit(make, 170'000, static_cast<std::uint64_t>(i) + 5);
        EXPECT_EQ(first_wrong(a.get(), 300'000, i), SIZE_MAX);
        EXPECT_EQ(first_wrong(b.get(), 170'000, i + 5), SIZE_MAX);
    }
    // Each kept mapping holds a descriptor (bounded: 4 per worker); nothing else grows.
    EXPECT_LE(fds_settling_at_most(fds - memfd_fds() + 8), fds - memfd_fds() + 8);
    EXPECT_LE(memfd_mappings_settling_at_most(std::max(maps, 8)), std::max(maps, 8));
}

std::tuple<std::string, std::vector<std::uint64_t>, std::vector<std::uint64_t>> big_mixed(
    std::size_t n, std::uint64_t seed) {
    std::printf("task %llu writes something\n", static_cast<unsigned long long>(seed));
    std::string text(std::size_t{6} << 20, static_cast<char>('a' + seed % 26));
    return {std::move(text), patterned(n, seed), patterned(n / 2 + 131072, seed + 1)};
}

TEST(BulkAdversary, BigVectorsWithALargeInlinePayloadAndCapturedOutput_EachIsItsOwn) {
    process_pool pool({.workers = 2, .capture_output = true});
    std::vector<procpool::future<decltype(big_mixed(0, 0))>> fs;
    for (int i = 0; i < 12; ++i)
        fs.push_back(pool.submit(big_mixed, 250'000 + static_cast<std::size_t>(i) * 333,
                                 static_cast<std::uint64_t>(i)));
    for (std::size_t i = 0; i < fs.size(); ++i) {
        ASSERT_TRUE(resolves(fs[i]));
        const auto [text, a, b] = fs[i].get();
        const std::size_t n = 250'000 + i * 333;
        EXPECT_EQ(text, std::string(std::size_t{6} << 20, static_cast<char>('a' + i % 26)));
        EXPECT_EQ(first_wrong(a, n, i), SIZE_MAX) << i;
        EXPECT_EQ(first_wrong(b, n / 2 + 131072, i + 1), SIZE_MAX) << i;
        ASSERT_NE(fs[i].output(), nullptr);
    }
}

// Restores this process's descriptor limit when the test ends, failed or not.
struct fd_limit_guard {
    rlimit old{};
    fd_limit_guard() { getrlimit(RLIMIT_NOFILE, &old); }
    ~fd_limit_guard() { setrlimit(RLIMIT_NOFILE, &old); }
    void set_soft(int n) const {
        rlimit l = old;
        l.rlim_cur = static_cast<rlim_t>(n);
        setrlimit(RLIMIT_NOFILE, &l);
    }
};

TEST(BulkAdversary, ADescriptorLimitThePoolFitsUnder_StillFitsAfterManyBigResults) {
    // A pool that runs (and took big results before the change) with a dozen spare
    // descriptors must keep doing so: descriptors held for results already copied out
    // must not eat the headroom, or a result's block cannot be received, the worker is
    // killed as "malformed", and its replacement cannot even be made (EMFILE).
    // UBSan's vptr check needs a pipe() to probe memory: out of descriptors, it reports
    // false errors.
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer needs descriptors";
    process_pool pool({.workers = 6});
    std::vector<procpool::future<int>> warm;
    for (int i = 0; i < 12; ++i) warm.push_back(pool.submit([] { return 1; }));
    for (auto& f : warm) ASSERT_EQ(f.get(), 1);
    fd_limit_guard guard;
    guard.set_soft(procpool_test::open_fd_count() + 12);
    for (int round = 0; round < 6; ++round) {
        std::vector<procpool::future<std::vector<std::uint64_t>>> fs;
        for (int i = 0; i < 24; ++i) {
            const std::size_t n = 140'000 + static_cast<std::size_t>(i % 4) * 180'000;
            fs.push_back(pool.submit(make, n, static_cast<std::uint64_t>(i)));
        }
        for (std::size_t i = 0; i < fs.size(); ++i) {
            ASSERT_TRUE(resolves(fs[i])) << round << "/" << i;
            try {
                EXPECT_EQ(first_wrong(fs[i].get(), 140'000 + (i % 4) * 180'000, i), SIZE_MAX);
            } catch (const std::exception& e) {
                ADD_FAILURE() << "round " << round << " task " << i << ": " << e.what();
            }
        }
        if (::testing::Test::HasFailure()) break;
    }
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
