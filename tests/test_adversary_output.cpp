// Adversarial tests of per-task output capture (capture_output): tasks that abuse their
// stdout/stderr descriptors (sparse offsets, O_APPEND toggling, swapped descriptors, mmap,
// binary bytes, tiny limits) and pools that are recycled, cancelled or shut down while
// tasks write. Every future must resolve, each task's output must be exactly its own, and
// nothing may leak once the pool is gone.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/run.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool::start_method;

namespace {

constexpr auto watchdog = 2min;  // no test waits on a future longer than this

using procpool_test::write_all;

std::string tagged(int id, const char* what) {
    return "task " + std::to_string(id) + " " + what + "\n";
}

/// One line to each stream.
int plain(int id) {
    write_all(1, tagged(id, "out"));
    write_all(2, tagged(id, "err"));
    return id;
}

/// Clears O_APPEND on stdout (a flag it shares with the capture), seeks a terabyte in and
/// writes one byte there: a sparse file whose size claims a terabyte.
int sparse_terabyte(int id) {
    const int fl = fcntl(1, F_GETFL);
    fcntl(1, F_SETFL, (fl & ~O_APPEND) | O_NONBLOCK);
    lseek(1, off_t{1} << 40, SEEK_SET);
    write_all(1, "x");
    write_all(2, tagged(id, "err"));
    return id;
}

/// The same, then dies: the parent reads the files itself.
int sparse_terabyte_then_die(int id) {
    sparse_terabyte(id);
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    std::raise(SIGKILL);
    return id;
}

/// Grows its stdout to 64 MiB with ftruncate and fills it through a shared mapping.
int mmap_stdout(int) {
    const std::size_t len = std::size_t{64} << 20;
    if (ftruncate(1, static_cast<off_t>(len)) != 0) return -1;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, 1, 0);
    if (p == MAP_FAILED) return -2;
    std::memset(p, 'm', len);
    munmap(p, len);
    return 0;
}

/// Every byte value, NUL included, to each stream.
int binary_bytes(int) {
    std::string s;
    for (int i = 0; i < 256; ++i) s += static_cast<char>(i);
    write_all(1, s);
    write_all(2, s + s);
    return 0;
}

/// Swaps fd 1 and 2 and leaves them swapped.
int swap_stdout_stderr(int id) {
    const int t = dup(1);
    dup2(2, 1);
    dup2(t, 2);
    close(t);
    write_all(1, tagged(id, "to fd 1"));
    write_all(2, tagged(id, "to fd 2"));
    return id;
}

/// Writes `n` bytes to stdout.
int write_n(std::size_t n) {
    write_all(1, std::string(n, 'w'));
    return static_cast<int>(n);
}

/// Writes until killed.
int write_forever(int) {
    for (;;) {
        write_all(1, "spin\n");
        std::this_thread::sleep_for(1ms);
    }
}

/// Fails with worker_died on its first attempt (marked in `path`), succeeds after.
int crash_first_attempt(std::string path, int id) {
    const bool first = ::access(path.c_str(), F_OK) != 0;
    if (first) {
        std::ofstream(path) << "x";
        write_all(1, tagged(id, "attempt 1"));
        const rlimit no_core{0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        std::raise(SIGKILL);
    }
    write_all(1, tagged(id, "attempt 2"));
    return id;
}

int my_pid() {
    return static_cast<int>(getpid());
}

int count_fds() { return procpool_test::open_fd_count(); }

template <class T>
std::shared_ptr<const procpool::task_output> output_of(const procpool::future<T>& f) {
    EXPECT_TRUE(f.wait_for(watchdog)) << "the task never finished";
    return f.output();
}

void expect_plain_next(process_pool& pool, int id) {
    auto f = pool.submit(plain, id);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, tagged(id, "out"));
    EXPECT_EQ(o->err, tagged(id, "err"));
    EXPECT_FALSE(o->truncated);
}

// ---- descriptor abuse ------------------------------------------------------------------

TEST(AdversaryOutput, SparseTerabyteOffset_BoundedAndNextTaskClean) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 16});
    auto f = pool.submit(sparse_terabyte, 1);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(f.get(), 1);
    EXPECT_EQ(o->out, std::string(16, '\0') +
                          procpool::output_truncation_marker((std::size_t{1} << 40) + 1 - 16));
    EXPECT_TRUE(o->truncated);
    for (int id = 2; id < 5; ++id) expect_plain_next(pool, id);
}

TEST(AdversaryOutput, SparseTerabyteOffset_ThenDying_Bounded) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 16});
    auto f = pool.submit(sparse_terabyte_then_die, 1);
    auto o = output_of(f);
    EXPECT_THROW(f.get(), procpool::worker_died);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out.substr(0, 16), std::string(16, '\0'));
    expect_plain_next(pool, 2);
}

TEST(AdversaryOutput, MmappedStdout_CappedAndNextTaskClean) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 16});
    auto f = pool.submit(mmap_stdout, 1);
    auto o = output_of(f);
    EXPECT_EQ(f.get(), 0);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, std::string(16, 'm') +
                          procpool::output_truncation_marker((std::size_t{64} << 20) - 16));
    expect_plain_next(pool, 2);
}

TEST(AdversaryOutput, BinaryBytes_KeptExactly) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(binary_bytes, 1);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    std::string s;
    for (int i = 0; i < 256; ++i) s += static_cast<char>(i);
    EXPECT_EQ(o->out, s);
    EXPECT_EQ(o->err, s + s);
}

TEST(AdversaryOutput, SwappedStdoutStderr_EachStreamItsFile_NextTaskClean) {
    process_pool pool({.workers = 1, .capture_output = true});
    const int pid = pool.submit(my_pid).get();
    auto f = pool.submit(swap_stdout_stderr, 1);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, tagged(1, "to fd 2"));
    EXPECT_EQ(o->err, tagged(1, "to fd 1"));
    expect_plain_next(pool, 2);
    EXPECT_EQ(pool.submit(my_pid).get(), pid);
}

TEST(AdversaryOutput, LimitOfOne_Boundaries) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 1});
    auto zero = pool.submit(write_n, std::size_t{0});
    auto one = pool.submit(write_n, std::size_t{1});
    auto two = pool.submit(write_n, std::size_t{2});
    auto o0 = output_of(zero);
    auto o1 = output_of(one);
    auto o2 = output_of(two);
    ASSERT_NE(o0, nullptr);
    ASSERT_NE(o1, nullptr);
    ASSERT_NE(o2, nullptr);
    EXPECT_EQ(o0->out, "");
    EXPECT_FALSE(o0->truncated);
    EXPECT_EQ(o1->out, "w");
    EXPECT_FALSE(o1->truncated);
    EXPECT_EQ(o2->out, "w" + procpool::output_truncation_marker(1));
    EXPECT_TRUE(o2->truncated);
}

// ---- pool life cycle -------------------------------------------------------------------

TEST(AdversaryOutput, MaxTasksPerChild1_EachTaskExactlyItsOwn) {
    for (auto method : {start_method::forkserver, start_method::fork}) {
        process_pool pool({.workers = 2, .max_tasks_per_child = 1, .start = method,
                           .capture_output = true});
        std::vector<procpool::future<int>> fs;
        for (int id = 0; id < 12; ++id) fs.push_back(pool.submit(plain, id));
        for (int id = 0; id < 12; ++id) {
            auto o = output_of(fs[static_cast<std::size_t>(id)]);
            ASSERT_NE(o, nullptr);
            EXPECT_EQ(o->out, tagged(id, "out"));
            EXPECT_EQ(o->err, tagged(id, "err"));
        }
    }
}

// DISABLED: hangs (cancel of running writers and/or shutdown(wait=false) then the destructor);
// not yet narrowed down, also hangs without capture_output. See the review report.
TEST(AdversaryOutput, CancelAndShutdownWhileWriting_AllResolve_NoFdLeak) {
    const int before = count_fds();
    for (auto method : {start_method::forkserver, start_method::fork}) {
        process_pool pool({.workers = 2, .start = method,
                           .capture_output = true});
        auto a = pool.submit(write_forever, 1);
        auto b = pool.submit(write_forever, 2);
        auto c = pool.submit(write_forever, 3);
        // Both workers write forever, so nothing queued behind them can run: cancel the
        // two writers (running or about to: either way they resolve), then the queued one.
        a.cancel();
        b.cancel();
        EXPECT_TRUE(a.wait_for(watchdog));
        EXPECT_TRUE(b.wait_for(watchdog));
        c.cancel();
        pool.shutdown({.wait = false, .cancel_pending = true});
        EXPECT_TRUE(c.wait_for(watchdog));
        EXPECT_TRUE(a.cancelled());
        EXPECT_TRUE(b.cancelled());
        EXPECT_TRUE(c.cancelled());
    }
    EXPECT_EQ(count_fds(), before);
}

TEST(AdversaryOutput, ShutdownWithoutWaitThenCancelRunningWriters_DestructorReturns) {
    for (auto method : {start_method::forkserver, start_method::fork}) {
        process_pool pool({.workers = 2, .start = method, .capture_output = true});
        auto a = pool.submit(write_forever, 1);
        auto b = pool.submit(write_forever, 2);
        pool.shutdown({.wait = false, .cancel_pending = true});
        // Running tasks survive a shutdown without wait; cancelling them kills their
        // workers, and the destructor (a waiting shutdown) then returns.
        a.cancel();
        b.cancel();
        EXPECT_TRUE(a.wait_for(watchdog));
        EXPECT_TRUE(b.wait_for(watchdog));
    }
}

TEST(AdversaryOutput, Retries_OutcomeCarriesTheLastAttemptsOutput) {
    procpool_test::temp_dir dir;
    std::vector<std::tuple<std::string, int>> tasks;
    for (int id = 0; id < 3; ++id) tasks.emplace_back(dir.path() + "/m" + std::to_string(id), id);
    auto outcomes = procpool::run_in_processes(
        crash_first_attempt, tasks, {.workers = 2, .retries = 1, .capture_output = true});
    for (int id = 0; id < 3; ++id) {
        const auto& r = outcomes[static_cast<std::size_t>(id)];
        ASSERT_TRUE(r.has_value()) << id;
        ASSERT_NE(r.output(), nullptr);
        EXPECT_EQ(r.output()->out, tagged(id, "attempt 2"));
    }
}

TEST(AdversaryOutput, ManyCapturingPoolsAtOnce_EachTaskItsOwn) {
    const int before = count_fds();
    {
        std::vector<std::unique_ptr<process_pool>> pools;
        for (int i = 0; i < 4; ++i) {
            pools.push_back(std::make_unique<process_pool>(
                procpool::process_pool_options{.workers = 2, .capture_output = true}));
        }
        std::vector<procpool::future<int>> fs;
        for (int id = 0; id < 40; ++id) fs.push_back(pools[id % 4]->submit(plain, id));
        for (int id = 0; id < 40; ++id) {
            auto o = output_of(fs[static_cast<std::size_t>(id)]);
            ASSERT_NE(o, nullptr);
            EXPECT_EQ(o->out, tagged(id, "out"));
        }
    }
    EXPECT_EQ(count_fds(), before);
}

// ---- without capture ---------------------------------------------------------------------

/// Prints a line through stdio and flushes it.
int print_and_flush(int id) {
    std::printf("%s", tagged(id, "printed").c_str());
    std::fflush(stdout);
    return id;
}

TEST(AdversaryOutput, NoCapture_ForkMethod_ParentsUnflushedTextIsNotPrintedTwice) {
    // This program's stdout goes to a file (fully buffered) for the test; a fork-method
    // worker starts with a copy of the text the parent has not flushed yet. Without
    // capture_output its output goes to the same file: the task's line must be there once,
    // and the parent's text once, not once more from the worker's copy of the buffer.
    procpool_test::temp_dir dir;
    const std::string path = dir.path() + "/stdout";
    std::fflush(stdout);
    const int saved = ::dup(1);
    const int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    ASSERT_GE(saved, 0);
    ASSERT_GE(file, 0);
    ::dup2(file, 1);
    ::close(file);
    const std::string text = "procpool adversary: unflushed parent text|";
    std::printf("%s", text.c_str());
    {
        process_pool pool({.workers = 1, .start = start_method::fork});
        auto f = pool.submit(print_and_flush, 1);
        EXPECT_TRUE(f.wait_for(watchdog));
        EXPECT_EQ(f.output(), nullptr);
    }
    std::fflush(stdout);
    ::dup2(saved, 1);
    ::close(saved);
    std::ifstream in(path);
    const std::string printed((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    std::size_t copies = 0;
    for (auto at = printed.find(text); at != std::string::npos; at = printed.find(text, at + 1)) {
        ++copies;
    }
    EXPECT_EQ(copies, 1u) << printed;
    EXPECT_NE(printed.find(tagged(1, "printed")), std::string::npos) << printed;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
