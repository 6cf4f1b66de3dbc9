// process_pool: results, every fault a task can commit, cancellation, hygiene.
// Faults are real: real signals, real exits, real kills.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"
#include "process_support.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool_test::file_gate;

namespace {

// ---- tasks (free functions: they run in worker processes) -----------------------------

int add(int a, int b) { return a + b; }
std::string greet(std::string who) { return "hello " + who; }
std::vector<double> scale(std::vector<double> v, double k) {
    for (auto& x : v) x *= k;
    return v;
}
std::map<std::string, std::vector<int>> group(std::vector<int> xs) {
    std::map<std::string, std::vector<int>> m;
    for (int x : xs) m[x % 2 == 0 ? "even" : "odd"].push_back(x);
    return m;
}
std::tuple<int, std::string, std::optional<double>> tuple_task(int a) {
    return {a, std::to_string(a), a > 0 ? std::optional<double>(a * 0.5) : std::nullopt};
}
void nothing() {}
int my_pid() { return static_cast<int>(getpid()); }
int segfault(int) {
    raise(SIGSEGV);
    return 0;
}
int do_abort(int) { std::abort(); }
int exit3(int) { std::exit(3); }
int quick_exit0(int) { _exit(0); }
struct custom_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
int throw_std(int) { throw custom_error("custom failure"); }
int throw_int(int) { throw 42; }
int sleep_ms(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}
char* volatile escaped = nullptr;  // keeps the compiler from eliding the allocation
std::size_t allocate_mb(int mb) {
    std::vector<char> big(static_cast<std::size_t>(mb) << 20, 'x');
    escaped = big.data();
    return big.size();
}
int close_all_fds(int) {
    for (int fd = 3; fd < 1024; ++fd) close(fd);
    std::this_thread::sleep_for(1h);  // the parent must notice the closed channel and kill it
    return 0;
}
std::vector<int> open_fds() {
    std::vector<int> fds;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] != '.') fds.push_back(std::atoi(e->d_name));
        }
        closedir(d);
    }
    return fds;
}
std::string env_of(std::string name) {
    const char* v = std::getenv(name.c_str());
    return v != nullptr ? v : "<unset>";
}

std::mutex shared_mutex;
int lock_and_allocate(int n) {
    std::lock_guard lock(shared_mutex);
    std::vector<std::string> v;
    for (int i = 0; i < n; ++i) v.push_back(std::string(64, 'a'));
    return static_cast<int>(v.size());
}

int init_value = 0;
void set_init_value(int v) { init_value = v; }
int read_init_value() { return init_value; }

int parent_pid() { return static_cast<int>(getppid()); }

// A task that makes a pool of its own with the default start method: how many of its
// workers' answers say they were forked from this worker (the program's fork server is
// the program's, not the worker's).
int tasks_of_a_pool_of_its_own() {
    process_pool inner({.workers = 2});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(inner.submit(parent_pid));
    int mine = 0;
    for (auto& f : fs) mine += f.get() == static_cast<int>(getpid()) ? 1 : 0;
    return mine;
}

// Mappings of procpool's shared blocks in this process.
int shared_block_mappings() {
    std::FILE* f = std::fopen("/proc/self/maps", "r");
    if (f == nullptr) return -1;
    int n = 0;
    char line[512];
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::string(line).find("memfd:procpool") != std::string::npos) ++n;
    }
    std::fclose(f);
    return n;
}

double sum_doubles(std::vector<double> v) {
    double s = 0;
    for (double x : v) s += x;
    return s;
}

// A task whose own pool sends 40 big vector arguments (each a new block in a worker): how
// many shared blocks the inner worker still maps after them (-1: a wrong sum).
int blocks_an_inner_worker_keeps() {
    process_pool inner({.workers = 1});
    for (int i = 0; i < 40; ++i) {
        std::vector<double> v(std::size_t{1} << 18, 1.0);  // 2 MiB
        if (inner.submit(sum_doubles, std::move(v)).get() != static_cast<double>(1 << 18)) {
            return -1;
        }
    }
    return inner.submit(shared_block_mappings).get();
}

// An inner task that leaves a process of its own behind: its pid.
int leave_a_process_behind() {
    const pid_t pid = fork();
    if (pid == 0) {
        for (;;) pause();
    }
    return static_cast<int>(pid);
}

// A task whose own pool's task leaves a process behind; writes that process's pid to
// `path`, then dies by SIGKILL as a crashing worker would.
int die_after_an_inner_task_left_a_process(std::string path) {
    process_pool inner({.workers = 1});
    const int pid = inner.submit(leave_a_process_behind).get();
    std::ofstream(path) << pid;
    kill(getpid(), SIGKILL);
    return pid;
}

int add_ints(int a, int b) { return a + b; }

// A task that makes three pools at once and lets them all go (the last one leaves the
// worker without pools), then makes one more: the sum of what they returned.
int pools_made_and_let_go(int i) {
    std::vector<std::unique_ptr<process_pool>> pools;
    for (int k = 0; k < 3; ++k) pools.push_back(std::make_unique<process_pool>(
                                    procpool::process_pool_options{.workers = 1}));
    int s = 0;
    for (auto& p : pools) s += p->submit(add_ints, i, 1).get();
    pools.clear();
    process_pool again({.workers = 1});
    return s + again.submit(add_ints, 0, 0).get();
}

// The message a worker's pool asking for the fork server explicitly fails with.
std::string forkserver_pool_in_a_worker() {
    try {
        process_pool inner({.workers = 1, .start = procpool::start_method::forkserver});
    } catch (const procpool::invalid_argument& e) {
        return e.what();
    }
    return "made";
}
void failing_init() { throw std::runtime_error("initializer refused"); }
void dying_init() { _exit(9); }

using procpool_test::under_sanitizer;

template <class T>
std::string error_text(const procpool::future<T>& f) {
    try {
        f.get();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "<no error>";
}

int count_fds() { return static_cast<int>(open_fds().size()); }

// Direct children of this process other than the fork server, alive or zombie.
std::vector<int> children() {
    std::vector<int> out;
    const int me = static_cast<int>(getpid());
    for (const auto& p : procpool_test::all_processes()) {
        if (p.ppid == me && p.comm != "(procpool-forksr)") out.push_back(p.pid);
    }
    return out;
}

bool process_gone(int pid) {
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    FILE* f = std::fopen(path.c_str(), "r");
    if (f == nullptr) return true;
    int p = 0;
    char comm[256];
    char state = 0;
    const bool zombie = std::fscanf(f, "%d %255s %c", &p, comm, &state) == 3 && state == 'Z';
    std::fclose(f);
    return zombie;
}

bool wait_gone(const std::vector<int>& pids, std::chrono::seconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
        bool all = true;
        for (int p : pids) all = all && process_gone(p);
        if (all) return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

}  // namespace

// ---- results ---------------------------------------------------------------------------

TEST(ProcessPool, Submit_ReturnsValuesOfStandardTypes) {
    process_pool pool({.workers = 2});
    EXPECT_EQ(pool.submit(add, 2, 3).get(), 5);
    EXPECT_EQ(pool.submit(greet, "world").get(), "hello world");
    EXPECT_EQ(pool.submit(scale, std::vector<double>{1, 2, 3}, 2.0).get(),
              (std::vector<double>{2, 4, 6}));
    auto g = pool.submit(group, std::vector<int>{1, 2, 3, 4, 5}).get();
    EXPECT_EQ(g["odd"], (std::vector<int>{1, 3, 5}));
    EXPECT_EQ(g["even"], (std::vector<int>{2, 4}));
    auto [a, s, o] = pool.submit(tuple_task, 4).get();
    EXPECT_EQ(a, 4);
    EXPECT_EQ(s, "4");
    EXPECT_EQ(o, 2.0);
    EXPECT_FALSE(std::get<2>(pool.submit(tuple_task, -1).get()).has_value());
    pool.submit(nothing).get();
}

TEST(ProcessPool, Submit_RunsInAnotherProcess) {
    process_pool pool({.workers = 1});
    EXPECT_NE(pool.submit(my_pid).get(), static_cast<int>(getpid()));
}

TEST(ProcessPool, CaptureLessLambda_RunsAsTask) {
    process_pool pool({.workers = 1});
    auto f = pool.submit([](int x) { return x * 10; }, 7);
    EXPECT_EQ(f.get(), 70);
}

TEST(ProcessPool, LargeArgumentsAndResults_TravelOutOfBand) {
    process_pool pool({.workers = 1});
    std::vector<double> big(1 << 20);  // 8 MiB: more than a ring frame
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<double>(i);
    auto out = pool.submit(scale, big, 0.5).get();
    ASSERT_EQ(out.size(), big.size());
    EXPECT_EQ(out[12345], 12345 * 0.5);
    EXPECT_EQ(out.back(), static_cast<double>(big.size() - 1) * 0.5);
}

TEST(ProcessPool, Map_KeepsInputOrder) {
    process_pool pool({.workers = 2});
    std::vector<int> xs(10000);
    for (int i = 0; i < 10000; ++i) xs[static_cast<std::size_t>(i)] = i;
    auto ys = pool.map([](int x) { return x * 3; }, xs);
    ASSERT_EQ(ys.size(), xs.size());
    for (int i = 0; i < 10000; ++i) EXPECT_EQ(ys[static_cast<std::size_t>(i)], 3 * i);
    auto small = pool.map([](int x) { return x + 1; }, std::vector<int>{1, 2, 3}, 1);
    EXPECT_EQ(small, (std::vector<int>{2, 3, 4}));
}

// A function taking its element by non-const reference is called on the worker's copy, as
// imap calls it: map accepts it (it used to fail to compile), and the caller's elements
// stay as they were. Both map paths: plain bytes in place, and decoded vectors (strings).
TEST(ProcessPool, Map_FunctionTakingItsElementByReference_ChangesOnlyTheWorkersCopy) {
    process_pool pool({.workers = 2});
    std::vector<int> xs(5000);
    for (int i = 0; i < 5000; ++i) xs[static_cast<std::size_t>(i)] = i;
    auto ys = pool.map([](int& x) { return ++x; }, xs);
    ASSERT_EQ(ys.size(), xs.size());
    for (int i = 0; i < 5000; ++i) {
        EXPECT_EQ(ys[static_cast<std::size_t>(i)], i + 1);
        EXPECT_EQ(xs[static_cast<std::size_t>(i)], i);
    }
    std::vector<std::string> words{"a", "bb", "ccc"};
    auto lens = pool.map(
        [](std::string& w) {
            w += "!";
            return w.size();
        },
        words, 1);
    EXPECT_EQ(lens, (std::vector<std::size_t>{2, 3, 4}));
    EXPECT_EQ(words, (std::vector<std::string>{"a", "bb", "ccc"}));
}

TEST(ProcessPool, Map_RethrowsFirstFailingElement) {
    process_pool pool({.workers = 2});
    std::vector<int> xs = {1, 2, 3, -1, 5, -2};
    try {
        pool.map(
            [](int x) {
                if (x < 0) throw std::invalid_argument("negative " + std::to_string(x));
                return x;
            },
            xs, 2);
        FAIL() << "map did not throw";
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.type_name(), "std::invalid_argument");
        EXPECT_EQ(e.message(), "negative -1");
    }
}

// A map of more chunks than the workers' rings hold submits them as it collects (see
// process_pool::map_window): every result arrives, in input order, and the error thrown is
// the first in input order, also when a later chunk, submitted after it was collected,
// fails too.
TEST(ProcessPool, Map_MoreChunksThanTheRingsHold_AllResultsInOrder_FirstErrorFirst) {
    process_pool pool({.workers = 2});
    constexpr int chunk = 4096;  // 16 KiB of ints: about 30 chunks per worker's ring
    std::vector<int> xs(300 * chunk);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<int>(i);
    const auto ys = pool.map([](int x) { return 3 * x + 1; }, xs, chunk);
    ASSERT_EQ(ys.size(), xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) {
        ASSERT_EQ(ys[i], 3 * xs[i] + 1) << "element " << i;
    }
    xs[5 * chunk + 7] = -1;
    xs[290 * chunk + 3] = -2;
    try {
        pool.map(
            [](int x) {
                if (x < 0) throw std::invalid_argument("negative " + std::to_string(x));
                return x;
            },
            xs, chunk);
        FAIL() << "map did not throw";
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.message(), "negative -1");
    }
    // The pool serves on.
    EXPECT_EQ(pool.map([](int x) { return x + 1; }, std::vector<int>{1, 2, 3}),
              (std::vector<int>{2, 3, 4}));
}

// Elements and results that travel as plain bytes are read and written in place by the
// worker (detail::invoke_map_chunk): structs with padding, sizes that differ, a function
// that changes its (copied) argument, chunk sizes that leave elements at odd offsets, and
// chunks big enough to go through a shared block must all give map's results.
struct reading {
    int id;
    double value;
    char unit;
};
std::array<float, 3> spread(reading r) {
    r.value *= 2;  // its own copy of the element
    return {static_cast<float>(r.id), static_cast<float>(r.value), static_cast<float>(r.unit)};
}
double widen(char c) { return c * 1.5; }
struct flagged {
    bool on;
    int x;
};
int pick_flagged(flagged f) { return f.on ? f.x : -f.x; }
static_assert(procpool::detail::map_in_place<reading, std::array<float, 3>>);
static_assert(procpool::detail::map_in_place<char, double>);
static_assert(!procpool::detail::map_in_place<flagged, int>);

TEST(ProcessPool, Map_PlainBytesInPlace_SameResultsAsAPlainLoop) {
    process_pool pool({.workers = 2});
    std::vector<reading> rs;
    for (int i = 0; i < 5000; ++i) rs.push_back({i, i * 0.25, static_cast<char>('a' + i % 26)});
    for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{7}, std::size_t{0}}) {
        const auto out = pool.map(spread, rs, chunk);
        ASSERT_EQ(out.size(), rs.size());
        for (std::size_t i = 0; i < rs.size(); ++i) {
            ASSERT_EQ(out[i][0], static_cast<float>(rs[i].id)) << "chunksize " << chunk;
            ASSERT_EQ(out[i][1], static_cast<float>(rs[i].value * 2)) << "chunksize " << chunk;
            ASSERT_EQ(out[i][2], static_cast<float>(rs[i].unit)) << "chunksize " << chunk;
        }
    }
    EXPECT_EQ(rs[10].value, 2.5);  // the caller's elements are not changed
    EXPECT_TRUE(pool.map(widen, std::vector<char>{}).empty());
    // Elements holding a bool go the decoding way (their bytes are checked).
    const auto fl = pool.map(pick_flagged, std::vector<flagged>{{true, 4}, {false, 5}}, 1);
    EXPECT_EQ(fl, (std::vector<int>{4, -5}));
}

TEST(ProcessPool, Map_ChunksAboveTheSharedThreshold_SameResults) {
    // 4 KiB: a chunk of 1000 chars is sent in the ring, but its 8000 bytes of doubles come
    // back in a shared block; 1000 doubles go both ways in blocks.
    process_pool pool({.workers = 2, .shared_memory_threshold = 4096});
    std::vector<char> cs(3000);
    for (std::size_t i = 0; i < cs.size(); ++i) cs[i] = static_cast<char>(i % 100);
    const auto ws = pool.map(widen, cs, 1000);
    ASSERT_EQ(ws.size(), cs.size());
    for (std::size_t i = 0; i < cs.size(); ++i) ASSERT_EQ(ws[i], cs[i] * 1.5);
    std::vector<double> ds(3000);
    for (std::size_t i = 0; i < ds.size(); ++i) ds[i] = static_cast<double>(i);
    const auto halves = pool.map([](double d) { return d / 2; }, ds, 1000);
    ASSERT_EQ(halves.size(), ds.size());
    for (std::size_t i = 0; i < ds.size(); ++i) ASSERT_EQ(halves[i], ds[i] / 2);
}

// map sends a chunk of plain elements in two pieces (a header, then the elements straight
// from the caller's vector): into the ring, parked while every ring is full, out of band
// when bigger than a ring's frame, and with results that are not plain bytes.
TEST(ProcessPool, Map_ChunksInTwoPieces_RingParkedOutOfBandAndDecodedResults) {
    process_pool pool({.workers = 2});
    std::vector<int> xs(600'000);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<int>(i);
    const auto big = pool.map([](int x) { return x ^ 0x5a5a; }, xs, 200'000);  // 800 KB each
    ASSERT_EQ(big.size(), xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(big[i], xs[i] ^ 0x5a5a) << i;
    const auto many = pool.map([](int x) { return x - 1; }, xs, 100);  // thousands parked
    ASSERT_EQ(many.size(), xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) ASSERT_EQ(many[i], xs[i] - 1) << i;
    const std::vector<int> few = {7, 8, 9, 10, 11};
    const auto names = pool.map([](int x) { return std::to_string(x) + "!"; }, few, 2);
    EXPECT_EQ(names, (std::vector<std::string>{"7!", "8!", "9!", "10!", "11!"}));
}

TEST(ProcessPool, HundredThousandTasks_AllResolveCorrectly) {
    process_pool pool({.workers = 2});
    std::vector<procpool::future<int>> fs;
    fs.reserve(100000);
    for (int i = 0; i < 100000; ++i) fs.push_back(pool.submit(add, i, 1));
    for (int i = 0; i < 100000; ++i) ASSERT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 1);
}

TEST(ProcessPool, ZeroWorkers_IsRejectedWithAClearMessage) {
    try {
        process_pool pool({.workers = 0});
        FAIL();
    } catch (const procpool::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("at least one worker"), std::string::npos);
    }
    EXPECT_THROW(process_pool({.workers = -3}), procpool::invalid_argument);
    EXPECT_THROW(process_pool({.workers = 1, .max_tasks_per_child = -1}),
                 procpool::invalid_argument);
}

TEST(ProcessPool, SubmitAfterShutdown_ThrowsPoolShutDown) {
    process_pool pool({.workers = 1});
    pool.shutdown();
    EXPECT_THROW((void)pool.submit(add, 1, 2), procpool::pool_shut_down);
}

// ---- faults: each fails exactly its own future, the pool goes on ------------------------

struct fault_case {
    const char* name;
    int (*fn)(int);
};

TEST(ProcessPoolFaults, EachFault_FailsOnlyItsTask_AndPoolKeepsServing) {
    process_pool pool({.workers = 2});
    auto good_before = pool.submit(add, 1, 1);
    auto seg = pool.submit(segfault, 0);
    auto abrt = pool.submit(do_abort, 0);
    auto ex3 = pool.submit(exit3, 0);
    auto ex0 = pool.submit(quick_exit0, 0);
    auto thr = pool.submit(throw_std, 0);
    auto thr_int = pool.submit(throw_int, 0);
    std::vector<procpool::future<int>> others;
    for (int i = 0; i < 200; ++i) others.push_back(pool.submit(add, i, i));

    try {
        seg.get();
        FAIL();
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.signal(), SIGSEGV);
        EXPECT_NE(std::string(e.what()).find("SIGSEGV"), std::string::npos);
    }
    try {
        abrt.get();
        FAIL();
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.signal(), SIGABRT);
    }
    try {
        ex3.get();
        FAIL();
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.signal(), 0);
        EXPECT_EQ(e.exit_code(), 3);
    }
    try {
        ex0.get();
        FAIL();
    } catch (const procpool::worker_died& e) {
        EXPECT_EQ(e.exit_code(), 0);
    }
    try {
        thr.get();
        FAIL();
    } catch (const procpool::remote_exception& e) {
        EXPECT_NE(e.type_name().find("custom_error"), std::string::npos);
        EXPECT_EQ(e.message(), "custom failure");
    }
    try {
        thr_int.get();
        FAIL();
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.type_name(), "int");
    }
    EXPECT_EQ(good_before.get(), 2);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(others[static_cast<std::size_t>(i)].get(), 2 * i);
    EXPECT_EQ(pool.submit(add, 20, 22).get(), 42);
}

TEST(ProcessPoolFaults, Timeout_KillsTheWorker_AndFailsWithTaskTimeout) {
    process_pool pool({.workers = 1, .task_timeout = 100ms});
    auto slow = pool.submit(sleep_ms, 3'600'000);
    // Per-submit timeouts override the pool's (generous ones: a loaded machine is slow).
    auto quick = pool.submit(procpool::task_options{.timeout = 10min}, add, 1, 2);
    EXPECT_THROW(slow.get(), procpool::task_timeout);
    EXPECT_EQ(quick.get(), 3);
    auto ok = pool.submit(procpool::task_options{.timeout = 10min}, sleep_ms, 200);
    EXPECT_EQ(ok.get(), 200);
}

TEST(ProcessPoolFaults, MemoryLimit_AllocationFailureIsReported) {
    if (under_sanitizer()) GTEST_SKIP() << "sanitizers reserve terabytes of address space";
    process_pool pool({.workers = 1, .memory_limit = std::size_t{512} << 20});
    auto big = pool.submit(allocate_mb, 2048);
    try {
        big.get();
        FAIL() << "allocation past the limit succeeded";
    } catch (const procpool::remote_exception& e) {
        EXPECT_EQ(e.type_name(), "std::bad_alloc");
    } catch (const procpool::worker_died&) {
        SUCCEED();  // the allocator may abort instead of throwing
    }
    EXPECT_EQ(pool.submit(allocate_mb, 16).get(), std::size_t{16} << 20);
}

TEST(ProcessPoolFaults, TaskClosingItsChannel_FailsTypedAndWorkerIsReplaced) {
    process_pool pool({.workers = 1});
    auto bad = pool.submit(close_all_fds, 0);
    EXPECT_THROW(bad.get(), procpool::worker_died);
    EXPECT_EQ(pool.submit(add, 2, 2).get(), 4);
}

TEST(ProcessPoolFaults, InitializerRunsInEachWorker) {
    process_pool pool({.workers = 2, .initializer = procpool::worker_initializer(set_init_value, 7)});
    EXPECT_EQ(pool.submit(read_init_value).get(), 7);
}

TEST(ProcessPoolFaults, FailingInitializer_FailsEveryTask_NoRespawnLoop) {
    process_pool pool({.workers = 2, .initializer = procpool::worker_initializer(failing_init)});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, 0));
    for (auto& f : fs) {
        try {
            f.get();
            FAIL();
        } catch (const procpool::remote_exception& e) {
            EXPECT_NE(std::string(e.what()).find("initializer refused"), std::string::npos);
        }
    }
    EXPECT_THROW(pool.submit(add, 1, 1).get(), procpool::remote_exception);
}

TEST(ProcessPoolFaults, WorkersDyingAtStartup_FailTasksInsteadOfRespawningForever) {
    process_pool pool({.workers = 1, .initializer = procpool::worker_initializer(dying_init)});
    auto f = pool.submit(add, 1, 2);
    try {
        f.get();
        FAIL();
    } catch (const procpool::error& e) {
        EXPECT_NE(std::string(e.what()).find("die before running any task"), std::string::npos)
            << e.what();
    }
}

TEST(ProcessPoolFaults, MaxTasksPerChild_ReplacesWorkers) {
    process_pool pool({.workers = 1, .max_tasks_per_child = 3});
    std::set<int> pids;
    for (int i = 0; i < 9; ++i) pids.insert(pool.submit(my_pid).get());
    EXPECT_EQ(pids.size(), 3u);
}

TEST(ProcessPool, WorkersGetEnvironmentOverrides) {
    process_pool pool({.workers = 1});
    EXPECT_EQ(pool.submit(env_of, "OMP_NUM_THREADS").get(), "1");
    process_pool custom({.workers = 1, .env = {{"PROCPOOL_TEST_VAR", "yes"}}});
    EXPECT_EQ(custom.submit(env_of, "PROCPOOL_TEST_VAR").get(), "yes");
}

// ---- cancellation ----------------------------------------------------------------------

TEST(ProcessPoolCancel, CancelRunningTask_KillsWorker_ResolvesCancelled) {
    process_pool pool({.workers = 1});
    file_gate gate;  // never opened before the cancel: the task runs until killed
    auto running = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    gate.wait_started();
    EXPECT_TRUE(running.cancel());
    EXPECT_TRUE(running.cancelled());
    EXPECT_THROW(running.get(), procpool::task_cancelled);
    EXPECT_EQ(pool.submit(add, 3, 4).get(), 7);
}

TEST(ProcessPoolCancel, CancelQueuedTask_NeverRuns) {
    process_pool pool({.workers = 1});
    file_gate gate;
    auto blocker = pool.submit(file_gate::wait_then_return, gate.path(), 300);
    gate.wait_started();
    auto queued = pool.submit(add, 1, 1);
    EXPECT_TRUE(queued.cancel());
    EXPECT_THROW(queued.get(), procpool::task_cancelled);
    gate.open();
    EXPECT_EQ(blocker.get(), 300);
}

std::size_t length_of(std::string s) { return s.size(); }

// Arguments too large for a ring frame (and not a vector) travel as a memfd beside the
// frame; a task cancelled while queued in the worker's ring is skipped, and its memfd must
// still be taken off the control socket so that the next task gets its own.
TEST(ProcessPoolCancel, CancelQueuedTaskWithLargeArguments_NextTaskGetsItsOwn) {
    process_pool pool({.workers = 1});
    file_gate gate;
    auto blocker = pool.submit(file_gate::wait_then_return, gate.path(), 300);
    gate.wait_started();
    const std::string big(600 * 1024, 'x');
    auto skipped = pool.submit(length_of, big);
    auto after = pool.submit(length_of, big + "yz");
    EXPECT_TRUE(skipped.cancel());
    gate.open();
    EXPECT_THROW(skipped.get(), procpool::task_cancelled);
    EXPECT_EQ(after.get(), big.size() + 2);
    EXPECT_EQ(blocker.get(), 300);
}

TEST(ProcessPoolCancel, ShutdownCancelPending_ResolvesEveryQueuedFuture) {
    process_pool pool({.workers = 1});
    file_gate gate;
    auto running = pool.submit(file_gate::wait_then_return, gate.path(), 300);
    gate.wait_started();
    std::vector<procpool::future<int>> queued;
    for (int i = 0; i < 50; ++i) queued.push_back(pool.submit(add, i, 0));
    pool.shutdown({.wait = false, .cancel_pending = true});
    gate.open();
    pool.shutdown({.wait = true});
    EXPECT_EQ(running.get(), 300);
    for (auto& f : queued) {
        ASSERT_TRUE(f.ready());
        EXPECT_TRUE(f.cancelled());  // all of them sat behind the gated task
    }
}

TEST(ProcessPool, ShutdownWithoutWait_StillResolvesEverything) {
    std::vector<procpool::future<int>> fs;
    {
        process_pool pool({.workers = 2});
        for (int i = 0; i < 100; ++i) fs.push_back(pool.submit(add, i, 1));
        pool.shutdown({.wait = false});
    }
    for (int i = 0; i < 100; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 1);
}

// Workers that exit while a shut-down pool still holds tasks (retiring at
// max_tasks_per_child, or crashing) are replaced until the tasks have run: the destructor
// used to wait forever for tasks no worker would ever take.
TEST(ProcessPool, ShutdownWhileWorkersRetire_EveryTaskStillRuns) {
    for (auto method : {procpool::start_method::forkserver, procpool::start_method::fork}) {
        std::vector<procpool::future<int>> fs;
        {
            process_pool pool({.workers = 2, .max_tasks_per_child = 1, .start = method});
            for (int i = 0; i < 7; ++i) fs.push_back(pool.submit(add, i, 1));
        }  // the destructor shuts down and waits
        for (int i = 0; i < 7; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 1);
    }
}

TEST(ProcessPool, ShutdownWithoutWaitAfterCrashes_EveryTaskStillResolves) {
    std::vector<procpool::future<int>> crashes;
    std::vector<procpool::future<int>> fs;
    {
        process_pool pool({.workers = 2});
        for (int i = 0; i < 2; ++i) crashes.push_back(pool.submit(do_abort, i));
        for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(add, i, 1));
        pool.shutdown({.wait = false});
    }
    for (auto& c : crashes) EXPECT_THROW(c.get(), procpool::worker_died);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i + 1);
}

// ---- safe start --------------------------------------------------------------------------

TEST(ProcessPoolStart, ThreadedParentHoldingLocks_WorkersDoNotDeadlock) {
    ASSERT_TRUE(procpool::initialized());
    std::atomic<bool> stop{false};
    std::vector<std::thread> noise;
    for (int i = 0; i < 3; ++i) {
        noise.emplace_back([&] {
            while (!stop.load()) {
                std::lock_guard lock(shared_mutex);
                std::vector<std::string> v(100, std::string(100, 'x'));
            }
        });
    }
    {
        process_pool pool({.workers = 2});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 50; ++i) fs.push_back(pool.submit(lock_and_allocate, 100));
        for (auto& f : fs) EXPECT_EQ(f.get(), 100);
    }
    stop = true;
    for (auto& t : noise) t.join();
}

TEST(ProcessPoolStart, ForkMethod_SeesStateCreatedAfterInit) {
    init_value = 99;
    process_pool pool({.workers = 1, .start = procpool::start_method::fork});
    EXPECT_EQ(pool.submit(read_init_value).get(), 99);
    process_pool server({.workers = 1, .start = procpool::start_method::forkserver});
    EXPECT_EQ(server.submit(read_init_value).get(), 0);  // the program as it was at init()
    init_value = 0;
}

TEST(ProcessPoolStart, APoolMadeInsideAWorker_ForksItsWorkersFromThatWorker) {
    ASSERT_TRUE(procpool::initialized());
    for (auto m : {procpool::start_method::forkserver, procpool::start_method::fork}) {
        // ThreadSanitizer ends a process forked from a threaded one once it starts a thread.
        if (m == procpool::start_method::fork && procpool_test::under_sanitizer()) continue;
        process_pool pool({.workers = 2, .start = m});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 4; ++i) fs.push_back(pool.submit(tasks_of_a_pool_of_its_own));
        for (auto& f : fs) EXPECT_EQ(f.get(), 6);
        const std::string why = pool.submit(forkserver_pool_in_a_worker).get();
        EXPECT_NE(why.find("start_method::fork"), std::string::npos) << why;
    }
}

// Each block a pool inside a worker sent is unmapped by its worker once the block is
// freed, as at the top level (the inner worker mapped every one of them for good).
TEST(ProcessPoolStart, APoolMadeInsideAWorker_ItsWorkersLetGoOfFreedBlocks) {
    process_pool pool({.workers = 1});
    const int kept = pool.submit(blocks_an_inner_worker_keeps).get();
    EXPECT_GE(kept, 0);
    EXPECT_LE(kept, 4);
}

// A worker that dies takes with it what the tasks of a pool it made left running: their
// workers share its process group, which its pool kills.
TEST(ProcessPoolStart, AWorkerThatDies_TakesItsInnerPoolsTaskProcessesWithIt) {
    procpool_test::temp_dir dir;
    const std::string path = dir.path() + "/pid";
    process_pool pool({.workers = 1});
    EXPECT_THROW(pool.submit(die_after_an_inner_task_left_a_process, path).get(),
                 procpool::worker_died);
    int pid = 0;
    std::ifstream(path) >> pid;
    ASSERT_GT(pid, 0);
    // Killed before the future failed; the watchdog only turns a survivor into a failure.
    const auto until = std::chrono::steady_clock::now() + std::chrono::minutes(1);
    procpool_test::proc_entry e;
    while (procpool_test::read_proc(pid, e) && e.state != 'Z') {
        if (std::chrono::steady_clock::now() > until) {
            kill(pid, SIGKILL);
            FAIL() << "process " << pid << " outlived the worker whose inner task started it";
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

// While another thread of the parent takes the library's locks (shared arrays made and
// freed), fork-started workers make pools of their own: a lock copied held into a worker
// would stop its pool's constructor for good.
TEST(ProcessPoolStart, PoolsMadeInForkStartedWorkers_WhileTheParentTakesLibraryLocks) {
    if (procpool_test::under_sanitizer()) {
        GTEST_SKIP() << "ThreadSanitizer ends a process forked from a threaded one once it "
                        "starts a thread";
    }
    std::atomic<bool> stop{false};
    std::thread churn([&] {
        while (!stop.load()) {
            procpool::shared_array<double> a(16);
            a[0] = 1;
        }
    });
    {
        process_pool pool({.workers = 2, .max_tasks_per_child = 1,
                           .start = procpool::start_method::fork});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 24; ++i) fs.push_back(pool.submit(tasks_of_a_pool_of_its_own));
        for (auto& f : fs) EXPECT_EQ(f.get(), 6);
    }
    stop = true;
    churn.join();
}

// The parent keeps blocks of big vector arguments for reuse; a fork-started worker has
// copies of that list but not the mappings. Its last own pool going away must not free
// them (it unmapped whatever the worker had at those addresses by then: SIGSEGV).
TEST(ProcessPoolStart, ForkStartedWorkers_DoNotFreeTheParentsIdleBlocks) {
    if (procpool_test::under_sanitizer()) {
        GTEST_SKIP() << "ThreadSanitizer ends a process forked from a threaded one once it "
                        "starts a thread";
    }
    process_pool side({.workers = 2});
    {
        const std::vector<double> v(std::size_t{1} << 17, 1.0);  // 1 MiB: a block each
        auto a = side.submit(sum_doubles, v);
        auto b = side.submit(sum_doubles, v);
        EXPECT_EQ(a.get(), static_cast<double>(1 << 17));
        EXPECT_EQ(b.get(), static_cast<double>(1 << 17));
    }
    process_pool pool({.workers = 1, .max_tasks_per_child = 1,
                       .start = procpool::start_method::fork});
    for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.submit(pools_made_and_let_go, i).get(), 3 * (i + 1));
}

TEST(ProcessPoolStart, WorkersDoNotInheritUnrelatedFds) {
    const int fd = open("/proc/self/status", O_RDONLY);  // no O_CLOEXEC on purpose
    ASSERT_GE(fd, 0);
    for (auto m : {procpool::start_method::fork, procpool::start_method::forkserver}) {
        process_pool pool({.workers = 1, .start = m});
        auto fds = pool.submit(open_fds).get();
        // stdin/out/err, the shared region is unmapped-from-fd, control socket, eventfd.
        EXPECT_LE(fds.size(), 6u);
        if (m == procpool::start_method::fork) {
            EXPECT_EQ(std::count(fds.begin(), fds.end(), fd), 0);
        }
    }
    close(fd);
}

TEST(ProcessPoolStart, WorkersDieWithTheirParent_EvenBySigkill) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        close(pipefd[0]);
        process_pool pool({.workers = 2, .start = procpool::start_method::fork});
        pool.submit(add, 1, 1).get();
        pool.submit(add, 1, 1).get();
        auto pids = pool.worker_pids();
        for (int p : pids) [[maybe_unused]] auto n = write(pipefd[1], &p, sizeof p);
        close(pipefd[1]);
        for (;;) pause();
    }
    close(pipefd[1]);
    std::vector<int> workers;
    int p = 0;
    while (read(pipefd[0], &p, sizeof p) == sizeof p) workers.push_back(p);
    close(pipefd[0]);
    ASSERT_EQ(workers.size(), 2u);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    EXPECT_TRUE(wait_gone(workers, 60s));
}

TEST(ProcessPoolStart, SigintToProcessGroup_ParentStopsCleanly_NoOrphans) {
    int pipefd[2];
    ASSERT_EQ(pipe(pipefd), 0);
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        setpgid(0, 0);
        close(pipefd[0]);
        static std::atomic<bool> interrupted{false};
        signal(SIGINT, [](int) { interrupted = true; });
        int resolved = 0;
        {
            process_pool pool({.workers = 2, .start = procpool::start_method::fork});
            std::vector<procpool::future<int>> fs;
            // Tasks that never finish by themselves: only the cancel below resolves them.
            for (int i = 0; i < 6; ++i) fs.push_back(pool.submit(sleep_ms, 3'600'000));
            auto pids = pool.worker_pids();
            for (int q : pids) [[maybe_unused]] auto n = write(pipefd[1], &q, sizeof q);
            close(pipefd[1]);
            while (!interrupted) std::this_thread::sleep_for(5ms);
            for (auto& f : fs) f.cancel();
            for (auto& f : fs) {
                f.wait();
                ++resolved;
            }
        }
        _exit(resolved == 6 ? 0 : 1);
    }
    close(pipefd[1]);
    std::vector<int> workers;
    int p = 0;
    while (read(pipefd[0], &p, sizeof p) == sizeof p) workers.push_back(p);
    close(pipefd[0]);
    ASSERT_EQ(workers.size(), 2u);
    kill(-child, SIGINT);  // the whole process group, as a terminal's Ctrl-C does
    int status = 0;
    waitpid(child, &status, 0);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_TRUE(wait_gone(workers, 60s));
}

// ---- hygiene -----------------------------------------------------------------------------

TEST(ProcessPoolHygiene, AfterDestruction_NoChildrenNoFdsNoShm) {
    const int fds_before = count_fds();
    const auto shm_before = [] {
        int n = 0;
        if (DIR* d = opendir("/dev/shm")) {
            while (readdir(d) != nullptr) ++n;
            closedir(d);
        }
        return n;
    }();
    std::vector<int> pids;
    for (auto m : {procpool::start_method::fork, procpool::start_method::forkserver}) {
        process_pool pool({.workers = 2, .start = m});
        std::vector<procpool::future<int>> fs;
        for (int i = 0; i < 100; ++i) fs.push_back(pool.submit(add, i, 1));
        auto crash = pool.submit(segfault, 0);
        for (auto& f : fs) f.get();
        EXPECT_THROW(crash.get(), procpool::worker_died);
        auto now = pool.worker_pids();
        pids.insert(pids.end(), now.begin(), now.end());
    }
    EXPECT_TRUE(wait_gone(pids, 60s));  // already gone: the destructor waited
    EXPECT_TRUE(children().empty());
    EXPECT_EQ(count_fds(), fds_before);
    int shm_after = 0;
    if (DIR* d = opendir("/dev/shm")) {
        while (readdir(d) != nullptr) ++shm_after;
        closedir(d);
    }
    EXPECT_EQ(shm_after, shm_before);
}

// ---- soak --------------------------------------------------------------------------------

int soak_task(int i) {
    switch (i % 100) {
        case 11:
            raise(SIGSEGV);
            break;
        case 23:
            std::abort();
        case 37:
            _exit(5);
        case 51:
            throw std::runtime_error("soak " + std::to_string(i));
        case 77:
            std::this_thread::sleep_for(1h);  // past its timeout, however slow the machine
            break;
        default:
            break;
    }
    return i * 2;
}

TEST(ProcessPoolSoak, FivePercentFaults_EveryFutureResolvesWithTheRightKind) {
    const char* env = std::getenv("PROCPOOL_SOAK_TASKS");
    // 10,000 tasks by default (about 5 s); PROCPOOL_SOAK_TASKS=100000 for a long soak.
    const int n = env != nullptr ? std::atoi(env) : 10000;
    // Only the tasks meant to time out have a timeout: a loaded machine may run any other
    // task slowly, and that must not turn into a timeout.
    process_pool pool({.workers = 2});
    // Shuffle so faults land on different workers in varied orders.
    std::vector<int> ids(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = i;
    std::shuffle(ids.begin(), ids.end(), std::mt19937(12345));
    std::vector<procpool::future<int>> fs;
    for (int i : ids) {
        fs.push_back(i % 100 == 77 ? pool.submit(procpool::task_options{.timeout = 50ms}, soak_task, i)
                                   : pool.submit(soak_task, i));
    }
    for (std::size_t k = 0; k < fs.size(); ++k) {
        const int i = ids[k];
        auto& f = fs[k];
        switch (i % 100) {
            case 11:
            case 23:
                EXPECT_THROW(f.get(), procpool::worker_died) << i;
                break;
            case 37:
                try {
                    f.get();
                    ADD_FAILURE() << i;
                } catch (const procpool::worker_died& e) {
                    EXPECT_EQ(e.exit_code(), 5);
                }
                break;
            case 51:
                EXPECT_THROW(f.get(), procpool::remote_exception) << i;
                break;
            case 77:
                EXPECT_THROW(f.get(), procpool::task_timeout) << i;
                break;
            default:
                EXPECT_EQ(f.get(), i * 2);
        }
    }
}

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
