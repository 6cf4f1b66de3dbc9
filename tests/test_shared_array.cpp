// shared_array / mapped_file_array: large data shared with worker processes, no copies,
// no leaks.
#include <dirent.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "process_support.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"

using procpool::process_pool;
using procpool::shared_array;
using procpool::shared_span;

namespace {

double sum(shared_span<const double> xs) { return std::accumulate(xs.begin(), xs.end(), 0.0); }
void fill(shared_span<int> xs, int v) {
    for (auto& x : xs) x = v;
}
void fill_slice(shared_span<int> xs, std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) xs[i] = static_cast<int>(i) * 2;
}
shared_array<int> make_in_worker(std::size_t n) {
    shared_array<int> a(n);
    for (std::size_t i = 0; i < n; ++i) a[i] = static_cast<int>(i) + 1;
    return a;
}
std::uintptr_t mapping_address(shared_span<const double> xs) {
    return reinterpret_cast<std::uintptr_t>(xs.data());
}
long sparse_sum(shared_span<const char> xs) {
    long s = 0;
    for (std::size_t i = 0; i < xs.size(); i += std::size_t{1} << 24) s += xs[i];
    return s;
}
int crash_holding(shared_span<int> xs) {
    xs[0] = 7;
    raise(SIGSEGV);
    return 0;
}
long sum_ints(shared_span<const int> xs) { return std::accumulate(xs.begin(), xs.end(), 0L); }
std::size_t vec_size(std::vector<double> v) { return v.size(); }
std::vector<double> doubled(std::vector<double> v) {
    for (auto& x : v) x *= 2;
    return v;
}

int count_fds() {
    int n = 0;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (readdir(d) != nullptr) ++n;
        closedir(d);
    }
    return n;
}

int count_memfd_mappings() {
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (f == nullptr) return -1;
    char line[512];
    int n = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::string(line).find("procpool-shared-array") != std::string::npos) ++n;
    }
    std::fclose(f);
    return n;
}

int worker_memfd_mappings() { return count_memfd_mappings(); }

// A finished task lets go of its shared arrays a moment after its future resolves: the
// pool's supervisor thread resolves the future first and drops the task (and with it the
// arrays it was given) next. So right after get() the last handle may still be the
// task's. This waits for the parent's mapping count to reach `want` and returns the count
// it saw last; the watchdog only stops a real leak from hanging the test.
int memfd_mappings_settling_at(int want) {
    const auto watchdog = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    int n = count_memfd_mappings();
    while (n != want && std::chrono::steady_clock::now() < watchdog) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        n = count_memfd_mappings();
    }
    return n;
}

// Descriptors of this process whose /proc/self/fd link contains `target` (a memfd's name
// or a file's path).
std::vector<int> fds_naming(const std::string& target) {
    std::vector<int> names;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (const dirent* e = readdir(d)) {
            if (e->d_name[0] != '.') names.push_back(std::atoi(e->d_name));
        }
        closedir(d);  // its own descriptor was listed too; it is gone now and fails readlink
    }
    std::vector<int> found;
    for (int fd : names) {
        char link[PATH_MAX];
        const std::string path = "/proc/self/fd/" + std::to_string(fd);
        const ssize_t n = readlink(path.c_str(), link, sizeof link - 1);
        if (n <= 0) continue;
        link[n] = '\0';
        if (std::string(link).find(target) != std::string::npos) found.push_back(fd);
    }
    return found;
}

// The smallest size among this process's descriptors of `target`: a shrunk array shows
// here before touching it would SIGBUS.
long long smallest_size_of(const std::string& target) {
    long long smallest = -1;
    for (int fd : fds_naming(target)) {
        struct stat st {};
        if (fstat(fd, &st) != 0) continue;
        if (smallest < 0 || st.st_size < smallest) smallest = st.st_size;
    }
    return smallest;
}

// A task that promises to read (shared_span<const double>) and then tries to damage the
// parent's array through every descriptor of it in its process. Returns how many it
// found, then how many of each attack worked: mprotect of its view to writable, a
// writable shared mapping, ftruncate to zero, and (`reopen`) ftruncate through a
// read-write reopening of /proc/self/fd/N. Writable attacks write -1 to element 0.
std::vector<int> try_to_damage(shared_span<const double> xs, std::string target, bool reopen) {
    const std::size_t bytes = xs.size_bytes();
    const std::vector<int> fds = fds_naming(target);
    int protected_writable = 0, mapped_writable = 0, truncated = 0, reopened_truncated = 0;
    // The pages go last: a write after a successful truncation would SIGBUS this worker.
    auto* view = const_cast<double*>(xs.data());
    if (mprotect(view, bytes, PROT_READ | PROT_WRITE) == 0) {
        ++protected_writable;
        view[0] = -1;
    }
    for (int fd : fds) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            ++mapped_writable;
            static_cast<double*>(p)[0] = -1;
            munmap(p, bytes);
        }
    }
    for (int fd : fds) {
        if (ftruncate(fd, 0) == 0) ++truncated;
        if (!reopen) continue;
        const std::string path = "/proc/self/fd/" + std::to_string(fd);
        const int rw = open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (rw >= 0) {
            if (ftruncate(rw, 0) == 0) ++reopened_truncated;
            close(rw);
        }
    }
    return {static_cast<int>(fds.size()), protected_writable, mapped_writable, truncated,
            reopened_truncated};
}

void write_through_const_cast(shared_span<const double> xs) {
    const_cast<double*>(xs.data())[0] = -1;
}

int memfd_mappings_given(shared_span<const int>) { return count_memfd_mappings(); }
int mappings_naming(std::string path) {
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (f == nullptr) return -1;
    char line[4096];
    int n = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::string(line).find(path) != std::string::npos) ++n;
    }
    std::fclose(f);
    return n;
}

bool under_sanitizer() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return true;
#else
    return false;
#endif
}

}  // namespace

TEST(SharedArray, ParentWrites_WorkerReads) {
    process_pool pool({.workers = 1});
    shared_array<double> xs(1000);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<double>(i);
    EXPECT_EQ(pool.submit(sum, xs).get(), 999.0 * 1000 / 2);
}

TEST(SharedArray, WorkerWrites_ParentSeesThemWhenFutureResolves) {
    process_pool pool({.workers = 1});
    shared_array<int> xs(4096);
    pool.submit(fill, xs, 5).get();
    for (int x : xs) ASSERT_EQ(x, 5);
    // And the other way again, with the mapping cached in the worker.
    for (auto& x : xs) x = 1;
    EXPECT_EQ(pool.submit(sum_ints, xs).get(), 4096);
}

TEST(SharedArray, WorkerCachesTheMapping) {
    process_pool pool({.workers = 1});
    shared_array<double> xs(1 << 16);
    const auto first = pool.submit(mapping_address, xs).get();
    const auto second = pool.submit(mapping_address, xs).get();
    EXPECT_EQ(first, second);
}

TEST(SharedArray, ResultAllocatedByWorker_ArrivesInParent) {
    process_pool pool({.workers = 1});
    auto a = pool.submit(make_in_worker, std::size_t{10000}).get();
    ASSERT_EQ(a.size(), 10000u);
    EXPECT_EQ(a[0], 1);
    EXPECT_EQ(a[9999], 10000);
    // The parent can pass it on to another task.
    EXPECT_EQ(pool.submit(sum_ints, a).get(), 10000L * 10001 / 2);
}

TEST(SharedArray, TwoGiBArray_TouchedSparsely) {
    if (under_sanitizer()) GTEST_SKIP() << "2 GiB mappings under sanitizers are too slow";
    process_pool pool({.workers = 1});
    shared_array<char> big(std::size_t{2} << 30);
    for (std::size_t i = 0; i < big.size(); i += std::size_t{1} << 24) big[i] = 1;
    EXPECT_EQ(pool.submit(sparse_sum, big).get(), 128);
}

TEST(SharedArray, HundredArraysInFlight) {
    process_pool pool({.workers = 2});
    std::vector<shared_array<int>> arrays;
    std::vector<procpool::future<void>> fs;
    for (int i = 0; i < 100; ++i) {
        arrays.emplace_back(1000);
        fs.push_back(pool.submit(fill, arrays.back(), i));
    }
    for (auto& f : fs) f.get();
    for (int i = 0; i < 100; ++i) {
        EXPECT_EQ(arrays[static_cast<std::size_t>(i)][999], i);
    }
}

TEST(SharedArray, WorkerCrashingWhileHoldingAnArray_LeaksNothing) {
    const int fds = count_fds();
    {
        process_pool pool({.workers = 1});
        {
            shared_array<int> xs(1 << 20);
            EXPECT_THROW(pool.submit(crash_holding, xs).get(), procpool::worker_died);
            EXPECT_EQ(xs[0], 7);  // the write before the crash is in shared memory
            EXPECT_EQ(pool.submit(sum_ints, xs).get(), 7);
        }
        EXPECT_EQ(memfd_mappings_settling_at(0), 0);
    }
    EXPECT_EQ(count_fds(), fds);
    EXPECT_EQ(count_memfd_mappings(), 0);
}

TEST(SharedArray, ArrayOutlivesItsPool) {
    shared_array<int> xs(100);
    {
        process_pool pool({.workers = 1});
        pool.submit(fill, xs, 3).get();
    }
    EXPECT_EQ(xs[50], 3);
}

TEST(SharedArray, PoolOutlivesItsArrays_WorkerMappingsAreDropped) {
    process_pool pool({.workers = 1});
    for (int i = 0; i < 50; ++i) {
        shared_array<int> xs(1 << 18);  // 1 MiB each
        pool.submit(fill, xs, i).get();
    }
    // Freed arrays are forgotten by the worker; a last task proves the pool still works.
    shared_array<int> last(10);
    pool.submit(fill, last, 9).get();
    EXPECT_EQ(last[9], 9);
    EXPECT_EQ(count_memfd_mappings(), 1);
    // The worker unmapped the 50 freed arrays; it still maps `last`.
    EXPECT_EQ(pool.submit(worker_memfd_mappings).get(), 1);
}

TEST(SharedArray, DisjointSlicesInParallel) {
    process_pool pool({.workers = 2});
    shared_array<int> xs(1 << 20);
    std::vector<procpool::future<void>> fs;
    const std::size_t step = xs.size() / 8;
    for (std::size_t lo = 0; lo < xs.size(); lo += step) {
        fs.push_back(pool.submit(fill_slice, xs, lo, lo + step));
    }
    for (auto& f : fs) f.get();
    for (std::size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(xs[i], static_cast<int>(i) * 2);
}

TEST(SharedArray, AbsurdSize_ThrowsAClearError) {
    EXPECT_THROW(shared_array<double>(std::size_t{1} << 62), procpool::error);
}

TEST(SharedArray, SerializedOutsideAPool_IsASerializationError) {
    shared_array<int> xs(10);
    std::vector<std::byte> buf;
    procpool::wire::writer w(buf);
    EXPECT_THROW(procpool::wire::save(w, xs), procpool::serialization_error);
}

TEST(MappedFileArray, WorkerReadsAndWritesTheFile) {
    char path[] = "/tmp/procpool-mfa-XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    {
        auto file = procpool::mapped_file_array<int>::create(path, 1000);
        process_pool pool({.workers = 1});
        pool.submit(fill, file, 4).get();
        EXPECT_EQ(file[999], 4);
    }
    procpool::mapped_file_array<int> ro(path);
    EXPECT_FALSE(ro.writable());
    ASSERT_EQ(ro.size(), 1000u);
    process_pool pool({.workers = 1});
    EXPECT_EQ(pool.submit(sum_ints, ro).get(), 4000);
    std::remove(path);
}

TEST(MappedFileArray, MissingFile_ThrowsNamingIt) {
    try {
        procpool::mapped_file_array<int> a("/nonexistent/procpool.bin");
        FAIL();
    } catch (const procpool::error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/procpool.bin"), std::string::npos);
    }
}

TEST(SharedArray, LargeVectorArgument_CrossesTransparently) {
    process_pool pool({.workers = 1});
    std::vector<double> v(std::size_t{4} << 20);  // 32 MiB
    EXPECT_EQ(pool.submit(vec_size, v).get(), v.size());
}

TEST(SharedArray, LargeVectorResult_AndAnyThreshold_RoundTrip) {
    for (std::size_t threshold : {std::size_t{1} << 20, std::size_t{64}, std::size_t{1} << 40}) {
        process_pool pool({.workers = 1, .shared_memory_threshold = threshold});
        std::vector<double> v(300000);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
        auto out = pool.submit(doubled, v).get();
        ASSERT_EQ(out.size(), v.size()) << threshold;
        EXPECT_EQ(out[299999], 599998.0) << threshold;
        EXPECT_EQ(pool.submit(doubled, std::vector<double>{1, 2}).get(),
                  (std::vector<double>{2, 4}));
    }
    // Nothing stays mapped once the results are gone.
    EXPECT_EQ(count_memfd_mappings(), 0);
}

TEST(SharedArray, ReadOnlyView_HostileTask_CannotShrinkOrWriteTheParentsArray) {
    shared_array<double> xs(1 << 16);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<double>(i);
    const std::string memfd = "memfd:procpool-shared-array";
    process_pool pool({.workers = 1});
    const auto r = pool.submit(try_to_damage, xs, memfd, true).get();
    ASSERT_EQ(r.size(), 5u);
    EXPECT_GE(r[0], 1) << "the task found no descriptor of its array";
    EXPECT_EQ(r[1], 0) << "the task made its read-only view writable";
    EXPECT_EQ(r[2], 0) << "the task mapped its read-only array writable";
    EXPECT_EQ(r[3], 0) << "the task truncated its read-only array";
    EXPECT_EQ(r[4], 0) << "the task truncated the array through a reopened descriptor";
    // Checked before reading: pages lost to a truncation would kill this test by SIGBUS.
    ASSERT_EQ(smallest_size_of(memfd), static_cast<long long>(xs.size() * sizeof(double)));
    for (std::size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(xs[i], static_cast<double>(i)) << i;
}

TEST(MappedFileArray, ReadWriteFileAsReadOnlyView_HostileTask_CannotShrinkOrWriteIt) {
    char path[] = "/tmp/procpool-mfa-XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    {
        auto file = procpool::mapped_file_array<double>::create(path, 1 << 16);
        for (std::size_t i = 0; i < file.size(); ++i) file[i] = static_cast<double>(i);
        process_pool pool({.workers = 1});
        // No reopening: a file cannot be sealed, and a task may open it by its path anyway.
        const auto r = pool.submit(try_to_damage, file, std::string(path), false).get();
        ASSERT_EQ(r.size(), 5u);
        EXPECT_GE(r[0], 1) << "the task found no descriptor of the file";
        EXPECT_EQ(r[1], 0) << "the task made its read-only view writable";
        EXPECT_EQ(r[2], 0) << "the task mapped the file writable";
        EXPECT_EQ(r[3], 0) << "the task truncated the file";
        struct stat st {};
        ASSERT_EQ(stat(path, &st), 0);
        ASSERT_EQ(st.st_size, static_cast<off_t>(file.size() * sizeof(double)));
        for (std::size_t i = 0; i < file.size(); ++i) {
            ASSERT_EQ(file[i], static_cast<double>(i)) << i;
        }
    }
    std::remove(path);
}

TEST(SharedArray, ReadOnlyView_WriteThroughConstCast_KillsOnlyItsWorker) {
    shared_array<double> xs(1000);
    xs[0] = 3;
    process_pool pool({.workers = 1});
    EXPECT_THROW(pool.submit(write_through_const_cast, xs).get(), procpool::worker_died);
    EXPECT_EQ(xs[0], 3);
    EXPECT_EQ(pool.submit(sum, xs).get(), 3.0);
}

TEST(SharedArray, ReadOnlyThenWritableTask_OnOneWorker_EachMapsAsItNeeds) {
    process_pool pool({.workers = 1});
    shared_array<int> xs(4096);
    for (auto& x : xs) x = 1;
    // The worker now caches a read-only mapping; the writer must not be given it.
    EXPECT_EQ(pool.submit(sum_ints, xs).get(), 4096);
    pool.submit(fill, xs, 5).get();
    EXPECT_EQ(xs[4095], 5);
    EXPECT_EQ(pool.submit(sum_ints, xs).get(), 5 * 4096);
}

TEST(SharedArray, ForkedWorker_MapsOnlyTheArraysItIsSent) {
    char path[] = "/tmp/procpool-mfa-XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    close(fd);
    {
        // All mapped in this process before the workers are forked from it.
        shared_array<int> unsent(1 << 16);
        auto unsent_file = procpool::mapped_file_array<int>::create(path, 1 << 16);
        shared_array<int> sent(1 << 10);
        ASSERT_EQ(count_memfd_mappings(), 2);
        process_pool pool({.workers = 1, .start = procpool::start_method::fork});
        EXPECT_EQ(pool.submit(worker_memfd_mappings).get(), 0);
        EXPECT_EQ(pool.submit(mappings_naming, std::string(path)).get(), 0);
        EXPECT_EQ(pool.submit(memfd_mappings_given, sent).get(), 1);
    }
    std::remove(path);
}


namespace {

// ---- reused blocks of big std::vector arguments (shm_block::reusable) ----------------------

double sum_of(std::vector<double> v) {
    return std::accumulate(v.begin(), v.end(), 0.0);
}

std::size_t size_of(std::vector<double> v) {
    return v.size();
}

double sum_or_die(std::vector<double> v, bool die) {
    if (die) raise(SIGKILL);
    return std::accumulate(v.begin(), v.end(), 0.0);
}

// Above the default shared_memory_threshold (1 MiB): each travels in a block of its own.
constexpr std::size_t kBig = 200'000;  // 1.6 MB of doubles

std::vector<double> filled(std::size_t n, double v) {
    return std::vector<double>(n, v);
}

TEST(BulkVectorBlocks, SequentialArguments_ReuseOneBlock_EachTaskReadsItsOwnValues) {
    {
        process_pool pool({.workers = 1});
        for (int i = 1; i <= 6; ++i) {
            const auto v = filled(kBig, i);
            EXPECT_EQ(pool.submit(sum_of, v).get(), static_cast<double>(kBig) * i) << i;
            // The block went back to the idle list: later arguments do not need new ones.
            EXPECT_LE(procpool::detail::idle_bulk_blocks(), 1u);
        }
        EXPECT_EQ(procpool::detail::idle_bulk_blocks(), 1u);
        EXPECT_LE(count_memfd_mappings(), 1);
    }
    // With the last pool gone, nothing is kept.
    EXPECT_EQ(procpool::detail::idle_bulk_blocks(), 0u);
    EXPECT_EQ(count_memfd_mappings(), 0);
}

TEST(BulkVectorBlocks, ManyInFlight_NoTaskSeesAnothersArgument_InTwoWaves) {
    process_pool pool({.workers = 2});
    for (int wave = 0; wave < 2; ++wave) {
        std::vector<procpool::future<double>> fs;
        for (int i = 0; i < 24; ++i) fs.push_back(pool.submit(sum_of, filled(kBig, i + 100 * wave)));
        for (int i = 0; i < 24; ++i) {
            EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(),
                      static_cast<double>(kBig) * (i + 100 * wave))
                << "wave " << wave << " task " << i;
        }
    }
    // Bounded: however many were in flight, few stay idle.
    EXPECT_LE(procpool::detail::idle_bulk_blocks(), 4u);
}

TEST(BulkVectorBlocks, ASmallerVectorInABiggerBlock_ReadsOnlyItsOwnLength) {
    process_pool pool({.workers = 1});
    EXPECT_EQ(pool.submit(size_of, filled(2 * kBig, 1)).get(), 2 * kBig);
    // 1.2x kBig fits the idle 2x block (no more than half of it wasted): reused.
    const std::size_t n = kBig + kBig / 5;
    EXPECT_EQ(pool.submit(size_of, filled(n, 2)).get(), n);
    EXPECT_EQ(pool.submit(sum_of, filled(n, 3)).get(), static_cast<double>(n) * 3);
    EXPECT_EQ(procpool::detail::idle_bulk_blocks(), 1u);
}

TEST(BulkVectorBlocks, WorkerDiesHoldingABlock_TheReplacementGetsTheReusedBlockAfresh) {
    process_pool pool({.workers = 1});
    EXPECT_EQ(pool.submit(sum_or_die, filled(kBig, 1), false).get(), static_cast<double>(kBig));
    EXPECT_THROW(pool.submit(sum_or_die, filled(kBig, 2), true).get(), procpool::worker_died);
    // The replacement never had the block mapped: it must be sent its descriptor again.
    for (int i = 3; i < 6; ++i) {
        EXPECT_EQ(pool.submit(sum_or_die, filled(kBig, i), false).get(),
                  static_cast<double>(kBig) * i);
    }
}

TEST(BulkVectorBlocks, CancelledBeforeSending_ItsBlockIsReusedByTheNextTask) {
    process_pool pool({.workers = 1});
    procpool_test::file_gate gate;
    auto blocker = pool.submit(procpool_test::file_gate::wait_then_return, gate.path(), 7);
    gate.wait_started();
    // Queued behind the blocker; cancelled, its argument's block goes back to the list.
    std::vector<procpool::future<double>> queued;
    for (int i = 0; i < 8; ++i) queued.push_back(pool.submit(sum_of, filled(kBig, 50 + i)));
    for (auto& f : queued) f.cancel();
    auto after = pool.submit(sum_of, filled(kBig, 9));
    gate.open();
    EXPECT_EQ(blocker.get(), 7);
    EXPECT_EQ(after.get(), static_cast<double>(kBig) * 9);
    for (std::size_t i = 0; i < queued.size(); ++i) {
        // Each either ran with its own values or was cancelled: never another's.
        try {
            EXPECT_EQ(queued[i].get(), static_cast<double>(kBig) * (50 + static_cast<double>(i)));
        } catch (const procpool::task_cancelled&) {
        }
    }
}

// ---- big std::vector arguments copied in while the worker copies out (bulk_writes) -------

using procpool_test::patterned;
using procpool_test::pattern;

// In the worker: the first index that is not pattern(seed), n if none; SIZE_MAX: wrong size.
std::size_t first_wrong_of(std::vector<std::uint64_t> v, std::uint64_t seed, std::size_t n) {
    if (v.size() != n) return SIZE_MAX;
    for (std::size_t i = 0; i < n; ++i) {
        if (v[i] != pattern(seed, i)) return i;
    }
    return n;
}

TEST(BulkVectorBlocks, ArgumentCopiedInWhileTheWorkerCopiesOut_EveryElementIsItsOwn) {
    // 16 MiB: 128 pieces that the worker copies out while the parent still copies the next
    // in. Two patterns take turns in the one reused block, so a worker that read a piece
    // before this task's bytes were there would find the other pattern's.
    constexpr std::size_t n = std::size_t{2} << 20;
    const std::vector<std::uint64_t> a = patterned(n, 1);
    const std::vector<std::uint64_t> b = patterned(n, 2);
    process_pool pool({.workers = 1});
    for (int i = 0; i < 12; ++i) {
        const bool odd = i % 2 != 0;
        EXPECT_EQ(pool.submit(first_wrong_of, odd ? b : a, odd ? 2u : 1u, n).get(), n) << i;
    }
    // Moved in, and two in one task's arguments: each is written after the task is sent.
    std::vector<std::uint64_t> moved = patterned(n, 3);
    EXPECT_EQ(pool.submit(first_wrong_of, std::move(moved), 3u, n).get(), n);
    EXPECT_EQ(procpool::detail::idle_bulk_blocks(), 1u) << "the one block, reused";
}

std::size_t both_right(std::vector<std::uint64_t> x, std::vector<std::uint64_t> y,
                       std::size_t n) {
    return first_wrong_of(std::move(x), 4, n) == n && first_wrong_of(std::move(y), 5, n) == n
               ? n
               : 0;
}

TEST(BulkVectorBlocks, TwoBigArgumentsOfOneTask_BothArriveWhole_OnTwoWorkersInFlight) {
    constexpr std::size_t n = std::size_t{1} << 19;  // 4 MiB each
    const auto x = patterned(n, 4);
    const auto y = patterned(n, 5);
    process_pool pool({.workers = 2});
    std::vector<procpool::future<std::size_t>> fs;
    for (int i = 0; i < 8; ++i) fs.push_back(pool.submit(both_right, x, y, n));
    for (auto& f : fs) EXPECT_EQ(f.get(), n);
}

// A type whose serializer makes a big vector that lives only while it is being saved: its
// bytes must be in the block before the temporary goes (only a task argument's own vector
// is copied after the task is sent).
struct made_on_save {
    double value = 0;
    std::size_t count = 0;
    template <class Archive>
    void save(Archive& ar) const {
        std::vector<double> tmp(count, value);
        ar(tmp);
    }
    template <class Archive>
    void load(Archive& ar) {
        std::vector<double> tmp;
        ar(tmp);
        count = tmp.size();
        value = all_same(tmp) ? (tmp.empty() ? 0.0 : tmp[0]) : -1.0;
    }
    static bool all_same(const std::vector<double>& v) {
        return std::all_of(v.begin(), v.end(), [&](double x) { return x == v[0]; });
    }
};

double value_of(made_on_save m) {
    return m.count == kBig * 4 ? m.value : -2.0;
}

TEST(BulkVectorBlocks, AVectorATypesSerializerMakes_IsCopiedBeforeItGoes) {
    process_pool pool({.workers = 1});
    for (int i = 1; i <= 6; ++i) {
        EXPECT_EQ(pool.submit(value_of, made_on_save{static_cast<double>(i), kBig * 4}).get(),
                  static_cast<double>(i))
            << i;
    }
}

TEST(BulkVectorBlocks, AProcessForkedAfterBigArguments_MakesItsOwnPool_AndSendsThemToo) {
    // The child inherits the list of idle blocks but not their mappings.
    if (under_sanitizer()) {
        // The sanitizers' allocators do not hold their locks across a fork: a child forked
        // while a pool's thread allocates can wait for ever (see test_record_cache.cpp).
        GTEST_SKIP() << "fork with threads running is not reliable under a sanitizer";
    }
    const auto v = filled(kBig, 2);
    {
        process_pool pool({.workers = 1});
        ASSERT_EQ(pool.submit(sum_of, v).get(), static_cast<double>(kBig) * 2);
        ASSERT_EQ(procpool::detail::idle_bulk_blocks(), 1u);
        const pid_t child = fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            int code = 1;
            try {
                process_pool own({.workers = 1});
                code = own.submit(sum_of, v).get() == static_cast<double>(kBig) * 2 &&
                               own.submit(sum_of, filled(kBig, 3)).get() ==
                                   static_cast<double>(kBig) * 3
                           ? 0
                           : 2;
            } catch (...) {
                code = 3;
            }
            _exit(code);
        }
        int status = 0;
        ASSERT_EQ(waitpid(child, &status, 0), child);
        ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
        EXPECT_EQ(WEXITSTATUS(status), 0);
        EXPECT_EQ(pool.submit(sum_of, v).get(), static_cast<double>(kBig) * 2);
    }
}

// ---- big std::vector results: the worker's blocks come back (shm_block::returned_by_reader)

bool all_equal(const std::vector<double>& v, double want) {
    return std::all_of(v.begin(), v.end(), [&](double x) { return x == want; });
}

TEST(BulkVectorResults, SequentialResults_TheWorkerReusesOneBlock_EachResultIsItsOwn) {
    process_pool pool({.workers = 1});
    for (int i = 1; i <= 8; ++i) {
        const std::vector<double> r = pool.submit(filled, kBig, static_cast<double>(i)).get();
        ASSERT_EQ(r.size(), kBig);
        EXPECT_TRUE(all_equal(r, i)) << "result " << i;
    }
    // The parent gave each block back before the result was seen: one block served all
    // eight (without the hand-back the worker would hold its bound of 4, or none).
    EXPECT_EQ(pool.submit(worker_memfd_mappings).get(), 1);
}

TEST(BulkVectorResults, TheParentKeepsItsMappingOfAWorkersBlock_UntilTheWorkerOrPoolIsGone) {
    {
        process_pool pool({.workers = 1});
        for (int i = 1; i <= 4; ++i) {
            EXPECT_TRUE(all_equal(pool.submit(filled, kBig, static_cast<double>(i)).get(), i));
        }
        // One mapping, read through four times (mapped afresh, each page's first touch
        // would cost again).
        EXPECT_EQ(count_memfd_mappings(), 1);
        EXPECT_THROW(pool.submit(sum_or_die, std::vector<double>{}, true).get(),
                     procpool::worker_died);
        EXPECT_EQ(memfd_mappings_settling_at(0), 0) << "the dead worker's block is let go";
        EXPECT_TRUE(all_equal(pool.submit(filled, kBig, 9.0).get(), 9.0));
        EXPECT_EQ(count_memfd_mappings(), 1);
    }
    EXPECT_EQ(count_memfd_mappings(), 0);
}

TEST(BulkVectorResults, ManyInFlightOnTwoWorkers_OfVaryingSizes_NoResultHoldsAnothersBytes) {
    process_pool pool({.workers = 2});
    for (int wave = 0; wave < 3; ++wave) {
        std::vector<procpool::future<std::vector<double>>> fs;
        for (int i = 0; i < 24; ++i) {
            // Sizes from 1x to 2.4x kBig: some fit a kept block, some need a new one.
            const std::size_t n = kBig + kBig * static_cast<std::size_t>(i % 8) / 5;
            fs.push_back(pool.submit(filled, n, static_cast<double>(i + 100 * wave)));
        }
        for (int i = 0; i < 24; ++i) {
            const std::vector<double> r = fs[static_cast<std::size_t>(i)].get();
            EXPECT_EQ(r.size(), kBig + kBig * static_cast<std::size_t>(i % 8) / 5);
            EXPECT_TRUE(all_equal(r, i + 100 * wave)) << "wave " << wave << " task " << i;
        }
    }
    // Bounded: each worker keeps at most 4 blocks.
    for (int i = 0; i < 4; ++i) EXPECT_LE(pool.submit(worker_memfd_mappings).get(), 4);
}

TEST(BulkVectorResults, AResultKeptAsASharedArray_IsNotReusedUnderIt) {
    // A shared_array result is the same kind of block, but is never handed back: the
    // parent keeps reading it while the worker makes big vector results.
    process_pool pool({.workers = 1});
    auto sa = pool.submit([] {
                      shared_array<double> a(kBig);
                      std::fill(a.begin(), a.end(), 5.0);
                      return a;
                  })
                  .get();
    for (int i = 0; i < 4; ++i) {
        EXPECT_TRUE(all_equal(pool.submit(filled, kBig, 7.0 + i).get(), 7.0 + i));
    }
    EXPECT_TRUE(std::all_of(sa.begin(), sa.end(), [](double x) { return x == 5.0; }));
}

// In a worker that has returned big vectors (so it keeps result blocks), a pool of its own
// whose workers are forked from it: they inherit the list of kept blocks but not their
// mappings, and must neither read nor unmap them.
double nested_pool_sum(int start) {
    process_pool inner({.workers = 1, .start = procpool::start_method::fork});
    double total = 0;
    for (int i = 0; i < 3; ++i) {
        const std::vector<double> r = inner.submit(filled, kBig, static_cast<double>(start + i)).get();
        if (r.size() != kBig || !all_equal(r, start + i)) return -1;
        total += r[0];
    }
    // Arguments of the inner pool's tasks, from a worker: plain blocks.
    total += inner.submit(sum_of, filled(kBig, 1.0)).get() / static_cast<double>(kBig);
    return total;
}

TEST(BulkVectorResults, APoolInsideAWorkerThatKeepsBlocks_ItsForkedWorkersReturnBigVectors) {
    process_pool pool({.workers = 1});
    for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(all_equal(pool.submit(filled, kBig, 4.0).get(), 4.0));
    }
    EXPECT_EQ(pool.submit(nested_pool_sum, 10).get(), 10 + 11 + 12 + 1);
    EXPECT_EQ(pool.submit(nested_pool_sum, 20).get(), 20 + 21 + 22 + 1);
    EXPECT_TRUE(all_equal(pool.submit(filled, kBig, 5.0).get(), 5.0));
}

// Page faults taken to allocate and fill `bytes` in the worker, then free them.
long faults_to_fill(std::size_t bytes) {
    rusage before{};
    getrusage(RUSAGE_SELF, &before);
    {
        std::vector<char> v(bytes, 1);
        volatile char keep = v[bytes / 2];
        (void)keep;
    }
    rusage after{};
    getrusage(RUSAGE_SELF, &after);
    return after.ru_minflt - before.ru_minflt;
}

// The worker's resident memory, in MiB.
long worker_rss_mib() {
    FILE* f = std::fopen("/proc/self/status", "r");
    if (f == nullptr) return -1;
    char line[256];
    long kib = -1;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
    }
    std::fclose(f);
    return kib / 1024;
}

TEST(WorkerMemory, ABigBlockFreedByOneTask_IsReusedByTheNext_WithoutNewPages) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer's allocator";
    process_pool pool({.workers = 1});
    constexpr std::size_t bytes = std::size_t{64} << 20;  // above glibc's 32 MiB mmap cap
    const long first = pool.submit(faults_to_fill, bytes).get();
    const long second = pool.submit(faults_to_fill, bytes).get();
    EXPECT_GT(first, 1000) << "the first fill maps new pages";
    // glibc's default would map (and fault) 16,384 fresh pages again.
    EXPECT_LT(second, 1000) << "first " << first;
}

TEST(WorkerMemory, MoreThanTheKeptBoundFreed_IsGivenBack) {
    if (procpool_test::under_sanitizer()) GTEST_SKIP() << "a sanitizer's allocator";
    process_pool pool({.workers = 1});
    const long base = pool.submit(worker_rss_mib).get();
    ASSERT_GE(base, 0);
    EXPECT_GT(pool.submit(faults_to_fill, std::size_t{768} << 20).get(), 1000);
    // Kept: at most 256 MiB of free memory at the heap's top.
    EXPECT_LT(pool.submit(worker_rss_mib).get(), base + 300);
}

// The VmFlags line of /proc/self/smaps for the mapping holding `addr` ("" if none).
std::string vm_flags_at(std::uintptr_t a) {
    std::FILE* f = std::fopen("/proc/self/smaps", "r");
    if (f == nullptr) return "";
    char line[512];
    bool inside = false;
    std::string flags;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        unsigned long lo = 0;
        unsigned long hi = 0;
        char dash = 0;
        if (std::sscanf(line, "%lx%c%lx", &lo, &dash, &hi) == 3 && dash == '-') {
            inside = a >= lo && a < hi;
        } else if (inside && std::string(line).rfind("VmFlags:", 0) == 0) {
            flags = line;
            break;
        }
    }
    std::fclose(f);
    return flags;
}
std::string vm_flags_at(const void* addr) {
    return vm_flags_at(reinterpret_cast<std::uintptr_t>(addr));
}
bool has_flag(const std::string& flags, const char* flag) {
    return flags.find(std::string(" ") + flag + " ") != std::string::npos ||
           flags.find(std::string(" ") + flag + "\n") != std::string::npos;
}
bool thp_built() {
    return access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
}

constexpr std::size_t two_mib = std::size_t{2} << 20;

// A fresh allocation of 32 MiB or more that glibc mapped on its own (a big result's
// storage in the parent): the whole 2 MiB blocks inside it are asked for huge pages and
// populated; the page holding malloc's header is not marked, nor is anything around it.
TEST(PopulatePages, FreshMallocOf32MiB_AlignedBlocksInsideAskForHugePages) {
    if (!thp_built()) GTEST_SKIP() << "kernel built without transparent huge pages";
    if (under_sanitizer()) GTEST_SKIP() << "a sanitizer's allocator: nothing is marked";
    constexpr std::size_t bytes = std::size_t{34} << 20;
    char* p = static_cast<char*>(std::malloc(bytes));
    ASSERT_NE(p, nullptr);
    procpool::detail::populate_pages(p, bytes, true, true, true);
    EXPECT_TRUE(has_flag(vm_flags_at(p + 2 * two_mib), "hg")) << vm_flags_at(p + 2 * two_mib);
    EXPECT_FALSE(has_flag(vm_flags_at(p), "hg")) << "malloc's header page: " << vm_flags_at(p);
    unsigned char resident = 0;
    const auto mid = (reinterpret_cast<std::uintptr_t>(p) + (std::size_t{20} << 20)) & ~4095ul;
    ASSERT_EQ(mincore(reinterpret_cast<void*>(mid), 4096, &resident), 0);
    EXPECT_EQ(resident & 1, 1) << "populated";
    std::free(p);
}

// Memory that is not a block of its own from malloc is populated but never marked: a mark
// would outlive the vector (part of a larger mapping; the heap, which glibc may also
// serve a big request from).
TEST(PopulatePages, ARangeInsideALargerMappingOrTheHeap_NotMarked) {
    if (!thp_built()) GTEST_SKIP() << "kernel built without transparent huge pages";
    constexpr std::size_t len = std::size_t{48} << 20;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(m, MAP_FAILED);
    char* p = static_cast<char*>(m) + (std::size_t{8} << 20) + 16;
    procpool::detail::populate_pages(p, std::size_t{34} << 20, true, true, true);
    const std::string flags = vm_flags_at(p + (std::size_t{16} << 20));
    EXPECT_FALSE(has_flag(flags, "hg")) << "inside a larger mapping: " << flags;
    unsigned char resident = 0;
    ASSERT_EQ(mincore(static_cast<char*>(m) + (std::size_t{24} << 20), 4096, &resident), 0);
    EXPECT_EQ(resident & 1, 1) << "populated all the same";
    munmap(m, len);
    if (under_sanitizer()) return;  // its allocator ignores mallopt
    // glibc serving a 40 MiB request from the heap (as it may from a big free chunk).
    ASSERT_EQ(mallopt(M_MMAP_MAX, 0), 1);
    constexpr std::size_t heap_bytes = std::size_t{40} << 20;
    char* h = static_cast<char*>(std::malloc(heap_bytes));
    mallopt(M_MMAP_MAX, 65536);
    ASSERT_NE(h, nullptr);
    procpool::detail::populate_pages(h, heap_bytes, true, true, true);
    const std::string heap_flags = vm_flags_at(h + heap_bytes / 2);
    std::free(h);
    EXPECT_FALSE(has_flag(heap_flags, "hg")) << "heap memory: " << heap_flags;
}

// Left as they are, each for one reason (glibc's own blocks otherwise): memory already in
// use (a reused block), a range only read, a block below 32 MiB, a caller that does not
// say the range is one malloc block.
TEST(PopulatePages, ResidentReadSmallOrNotMalloced_NotMarked) {
    if (!thp_built()) GTEST_SKIP() << "kernel built without transparent huge pages";
    constexpr std::size_t big = std::size_t{40} << 20;
    const auto marked_after = [](std::size_t bytes, bool touch, bool write, bool from_malloc) {
        char* p = static_cast<char*>(std::malloc(bytes));
        if (p == nullptr) return std::string("malloc failed hg ");
        if (touch) std::fill(p, p + bytes, 'x');
        procpool::detail::populate_pages(p, bytes, write, true, from_malloc);
        std::string flags = vm_flags_at(p + bytes / 2);
        std::free(p);
        return flags;
    };
    EXPECT_FALSE(has_flag(marked_after(big, true, true, true), "hg")) << "resident";
    EXPECT_FALSE(has_flag(marked_after(big, false, false, true), "hg")) << "read";
    EXPECT_FALSE(has_flag(marked_after(std::size_t{24} << 20, false, true, true), "hg"))
        << "24 MiB";
    EXPECT_FALSE(has_flag(marked_after(big, false, true, false), "hg")) << "not said";
}

// A worker keeps big allocations on its heap (keep_freed_memory_for_reuse): nothing of
// its is marked, where the same call in the parent marks.
bool worker_marks_huge_pages() {
    constexpr std::size_t len = std::size_t{48} << 20;
    char* p = static_cast<char*>(std::malloc(len));
    if (p == nullptr) throw std::runtime_error("malloc failed");
    p[0] = 1;  // its first page only (the last is still fresh), and no "uninitialized" warning
    procpool::detail::populate_pages(p, len, true, true, true);
    const bool marked = has_flag(vm_flags_at(p + len / 2), "hg");
    std::free(p);
    return marked;
}

TEST(PopulatePages, InAWorker_ItsHeapBlocksAreNotMarked) {
    if (!thp_built()) GTEST_SKIP() << "kernel built without transparent huge pages";
    if (under_sanitizer()) GTEST_SKIP() << "a sanitizer's allocator: nothing is marked";
    process_pool pool({.workers = 1});
    EXPECT_FALSE(pool.submit(worker_marks_huge_pages).get());
    EXPECT_TRUE(worker_marks_huge_pages()) << "the same call in the parent marks (control)";
}

// End to end: a big result decoded in the parent, content intact.
std::vector<std::uint32_t> counting(std::size_t n) {
    std::vector<std::uint32_t> v(n);
    std::iota(v.begin(), v.end(), 7u);
    return v;
}

TEST(PopulatePages, BigVectorResultIntoFreshMemory_ArrivesIntact) {
    process_pool pool({.workers = 1});
    constexpr std::size_t n = (std::size_t{40} << 20) / sizeof(std::uint32_t);
    for (int round = 0; round < 2; ++round) {
        const std::vector<std::uint32_t> v = pool.submit(counting, n).get();
        ASSERT_EQ(v.size(), n);
        std::size_t wrong = 0;
        for (std::size_t i = 0; i < n; ++i) wrong += v[i] != static_cast<std::uint32_t>(i + 7);
        EXPECT_EQ(wrong, 0u) << "round " << round;
    }
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
