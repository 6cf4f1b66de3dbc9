// Per-task output capture (process_pool_options::capture_output, run_options::capture_output):
// every task's stdout and stderr, from every way of writing them, reach its own future and
// nothing else's; crashing, runaway and hostile writers cost only their own output.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ipc/ring.hpp"
#include "process/output.hpp"
#include "process/protocol.hpp"
#include "process/region.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/run.hpp"
#include "procpool/thread_pool.hpp"
#include "run_support.hpp"
#include "worker_internals.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool::start_method;

namespace {

constexpr auto watchdog = 2min;  // no test waits on a future longer than this

// ---- tasks (free functions: they run in worker processes) -----------------------------

/// Dies of `sig`, without leaving a core file behind.
[[noreturn]] void die_of(int sig) {
    const rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    std::raise(sig);
    std::_Exit(99);  // not reached for fatal signals
}

using procpool_test::write_all;

std::string line(int id, const char* stream, int i) {
    return "task " + std::to_string(id) + " " + stream + " line " + std::to_string(i) + "\n";
}

/// What `chatty(id, lines)` writes to one stream.
std::string expected(int id, const char* stream, int lines) {
    std::string s;
    for (int i = 0; i < lines; ++i) s += line(id, stream, i);
    return s;
}

/// Writes `lines` lines to each stream, in turns through printf / std::cout / write(1)
/// and fprintf / std::cerr / write(2). stdout is flushed before a write(1), as a program
/// mixing the two must do to keep its order.
int chatty(int id, int lines) {
    for (int i = 0; i < lines; ++i) {
        const std::string out = line(id, "out", i);
        const std::string err = line(id, "err", i);
        switch (i % 3) {
            case 0:
                std::printf("%s", out.c_str());
                std::fprintf(stderr, "%s", err.c_str());
                break;
            case 1:
                std::cout << out;
                std::cerr << err;
                break;
            default:
                std::fflush(stdout);
                write_all(1, out);
                write_all(2, err);
                break;
        }
    }
    return id;
}

/// Writes a line to each stream with write(2), leaves text in stdout's buffer, then dies
/// of `sig` (SIGSEGV, SIGABRT through abort, SIGKILL).
int write_then_die(int id, int sig) {
    write_all(1, line(id, "out", 0));
    write_all(2, line(id, "err", 0));
    std::printf("still buffered %d", id);  // no newline, no flush: dies with the process
    if (sig == SIGABRT) std::abort();
    die_of(sig);
}

/// chatty, but every third task (by id) writes with write(2) only and then segfaults.
int chatty_or_crash(int id, int lines) {
    if (id % 3 != 0) return chatty(id, lines);
    for (int i = 0; i < lines; ++i) {
        write_all(1, line(id, "out", i));
        write_all(2, line(id, "err", i));
    }
    die_of(SIGSEGV);
}

/// printf without a flush, then exit(3): exit flushes stdio, so the text is kept.
int print_then_exit(int id) {
    std::printf("%s", line(id, "out", 0).c_str());
    std::exit(3);
}

int write_bytes(std::size_t out_bytes, std::size_t err_bytes) {
    write_all(1, std::string(out_bytes, 'o'));
    write_all(2, std::string(err_bytes, 'e'));
    return 7;
}

int write_bytes_then_die(std::size_t out_bytes, std::size_t err_bytes) {
    write_bytes(out_bytes, err_bytes);
    die_of(SIGKILL);
}

/// Output and a result both large: one out-of-band payload carries them.
std::vector<char> big_output_and_result(int n) {
    write_all(1, std::string(static_cast<std::size_t>(n), 'o'));
    write_all(2, std::string(static_cast<std::size_t>(n), 'e'));
    return std::vector<char>(static_cast<std::size_t>(n), 'r');
}

/// Bytes of memory the file behind `fd` holds.
long long held_bytes(int fd) {
    struct stat st {};
    if (fstat(fd, &st) != 0) return -1;
    return static_cast<long long>(st.st_blocks) * 512;
}

/// Writes `mib` MiB to stdout, then waits (a minute at most) until the pool has freed
/// what its stdout file holds past the limit. Returns what it still holds.
long long flood_stdout(int mib) {
    const std::string chunk(std::size_t{1} << 20, 'x');
    for (int i = 0; i < mib; ++i) write_all(1, chunk);
    write_all(2, "flooded\n");
    const auto until = std::chrono::steady_clock::now() + 1min;
    while (held_bytes(1) > (16ll << 20) && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
    }
    return held_bytes(1);
}

/// Writes, then closes its stdout and stderr and writes again (into nothing).
int close_std_fds(int id) {
    write_all(1, line(id, "out", 0));
    write_all(2, line(id, "err", 0));
    std::fflush(nullptr);
    ::close(1);
    ::close(2);
    std::printf("after close\n");
    std::cout << "after close" << std::endl;
    std::cerr << "after close" << std::endl;
    // A later open takes the freed numbers: the task's own files, not the capture.
    const int a = ::open("/dev/null", O_WRONLY);
    const int b = ::open("/dev/null", O_WRONLY);
    return (a == 1 ? 1 : 0) + (b == 2 ? 1 : 0);
}

/// Points its stdout at /dev/null and writes there; leaves it so.
int dup2_devnull(int id) {
    write_all(1, line(id, "out", 0));
    const int fd = ::open("/dev/null", O_WRONLY);
    ::dup2(fd, 1);
    ::close(fd);
    write_all(1, "hidden\n");
    std::printf("hidden too\n");
    return id;
}

/// Reopens its own stdout file write-only onto fd 1 (same file, a descriptor the worker
/// cannot read through).
int reopen_stdout_write_only(int id) {
    const int fd = ::open("/proc/self/fd/1", O_WRONLY | O_APPEND);
    if (fd < 0) return -1;
    ::dup2(fd, 1);
    ::close(fd);
    write_all(1, line(id, "out", 0));
    return id;
}

/// The worker's descriptors other than 1 and 2 whose link names `what`.
std::vector<int> fds_naming(const char* what) {
    std::vector<int> found;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(d)) {
            const int fd = std::atoi(e->d_name);
            if (e->d_name[0] == '.' || fd <= 2) continue;
            char target[256] = {};
            const std::string path = "/proc/self/fd/" + std::to_string(fd);
            if (readlink(path.c_str(), target, sizeof target - 1) > 0 &&
                std::strstr(target, what) != nullptr) {
                found.push_back(fd);
            }
        }
        closedir(d);
    }
    return found;
}

/// Closes every descriptor of the capture files, the worker's private copies included,
/// then writes: the worker can no longer capture and must be replaced.
int break_capture(int id) {
    write_all(1, line(id, "out", 0));
    for (int fd : fds_naming("procpool-stdout")) ::close(fd);
    for (int fd : fds_naming("procpool-stderr")) ::close(fd);
    ::close(1);
    ::close(2);
    return static_cast<int>(getpid());
}

int my_pid() {
    return static_cast<int>(getpid());
}
int my_pid_of(int) {
    return static_cast<int>(getpid());
}

/// Starts a child that keeps writing after the task returned (until it is killed with
/// its worker's process group), then returns.
int leave_a_writer(int id) {
    write_all(1, line(id, "out", 0));
    const pid_t child = fork();
    if (child == 0) {
        for (;;) {
            write_all(1, "late\n");
            std::this_thread::sleep_for(1ms);
        }
    }
    return child > 0 ? id : -1;
}

/// Children the task starts write into its capture.
int run_children(int) {
    const int a = std::system("echo child out; echo child err 1>&2");
    const int b = std::system("printf 'second child\\n'");
    return (a == 0 && b == 0) ? 0 : 1;
}

/// Writes a line with write(2) every millisecond until killed (by its timeout).
int tick_forever(int) {
    for (;;) {
        write_all(1, "tick\n");
        std::this_thread::sleep_for(1ms);
    }
}

/// A thread writes while the task kills its own process: killed mid-write.
int killed_mid_write(int) {
    std::thread([] {
        const std::string block(4096, 'w');
        for (;;) write_all(1, block);
    }).detach();
    while (held_bytes(1) < (1 << 20)) std::this_thread::sleep_for(100us);
    die_of(SIGKILL);
}

/// Malformed output sections a hostile task can publish in its worker's completion ring.
enum class forged_output {
    on_a_pool_without_capture,  // a well-formed section the pool never asked for
    past_the_limit,             // more bytes than output_limit
    longer_than_its_total,      // out_len > out_total
    past_the_frame,             // lengths running past the completion
    short_section,              // shorter than its header
};
constexpr int forged_output_kinds = 5;

/// Publishes a completion for itself with a forged output section, wakes the parent and
/// waits to be killed.
int forge_output(int kind) {
    using procpool::process::output_header;
    auto* r = procpool_test::my_region();
    struct {
        procpool::process::completion_header h;
        output_header o;
        char text[8];
    } f{{r->started_seq.load(), 0, 0, 0, 0}, {4, 4, 0, 0}, {'a', 'b', 'c', 'd'}};
    std::uint32_t len = sizeof f.h + sizeof f.o + 4;
    switch (static_cast<forged_output>(kind)) {
        case forged_output::on_a_pool_without_capture:
            break;
        case forged_output::past_the_limit:
            f.o = {8, 8, 0, 0};  // the pool's limit is 4
            len += 4;
            break;
        case forged_output::longer_than_its_total:
            f.o = {4, 2, 0, 0};
            break;
        case forged_output::past_the_frame:
            f.o = {4, 4, 4, 4};
            break;
        case forged_output::short_section:
            len = sizeof f.h + 8;
            break;
    }
    auto& c = r->completions;
    const std::uint64_t head = c.head.load();
    const auto pos = static_cast<std::uint32_t>(head % r->ring_capacity);
    const procpool::ipc::frame_header fh{
        len, static_cast<std::uint32_t>(procpool::detail::run_status::value) |
                 procpool::process::output_flag};
    std::memcpy(r->completion_data() + pos, &fh, sizeof fh);
    std::memcpy(r->completion_data() + pos + sizeof fh, &f, len);
    c.head.store(head + procpool::ipc::ring::frame_size(len));
    const std::uint64_t one = 1;
    if (::write(procpool_test::find_fd("pipe:"), &one, sizeof one) != sizeof one) std::abort();
    std::this_thread::sleep_for(1h);  // the parent kills this worker
    return 0;
}

int add(int a, int b) {
    return a + b;
}

void print_from_initializer() {
    std::printf("procpool test: this line comes from a worker initializer\n");
    write_all(1, "procpool test: and this one too\n");
}

// ---- helpers -----------------------------------------------------------------------

int count_fds() { return procpool_test::open_fd_count(); }

template <class T>
std::shared_ptr<const procpool::task_output> output_of(const procpool::future<T>& f) {
    EXPECT_TRUE(f.wait_for(watchdog)) << "the task never finished";
    return f.output();
}

bool is_worker_died(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const procpool::worker_died&) {
        return true;
    } catch (...) {
    }
    return false;
}

bool all_lines_are(const std::string& text, const std::string& what) {
    std::istringstream in(text);
    std::string l;
    while (std::getline(in, l)) {
        if (l != what) return false;
    }
    return true;
}

// ---- the basics ----------------------------------------------------------------------

TEST(OutputCapture, EveryWayOfWriting_ReachesTheTasksFuture) {
    process_pool pool({.workers = 1, .capture_output = true});
    EXPECT_TRUE(pool.captures_output());
    auto f = pool.submit(chatty, 5, 30);
    EXPECT_EQ(f.get(), 5);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, expected(5, "out", 30));
    EXPECT_EQ(o->err, expected(5, "err", 30));
    EXPECT_FALSE(o->truncated);
}

TEST(OutputCapture, ATaskThatWritesNothing_HasAnEmptyOutput) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(my_pid);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_TRUE(o->out.empty());
    EXPECT_TRUE(o->err.empty());
    EXPECT_FALSE(o->truncated);
}

TEST(OutputCapture, Off_NoOutputIsAttached) {
    process_pool pool({.workers = 1});
    EXPECT_FALSE(pool.captures_output());
    auto f = pool.submit(my_pid);
    EXPECT_EQ(output_of(f), nullptr);
    procpool::thread_pool threads({.workers = 1});
    auto g = threads.submit([] { return 1; });
    EXPECT_EQ(output_of(g), nullptr);
    procpool::promise<int> p;
    p.set_value(3);
    EXPECT_EQ(output_of(p.get_future()), nullptr);
}

TEST(OutputCapture, ChildProcessesOfTheTask_AreCaptured) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(run_children, 0);
    EXPECT_EQ(f.get(), 0);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, "child out\nsecond child\n");
    EXPECT_EQ(o->err, "child err\n");
}

TEST(OutputCapture, TheInitializersOutput_IsNotATasks) {
    process_pool pool({.workers = 1,
                       .initializer = procpool::worker_initializer(print_from_initializer),
                       .capture_output = true});
    auto f = pool.submit(chatty, 1, 2);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, expected(1, "out", 2));
}

TEST(OutputCapture, TextTheParentHadNotFlushed_IsNeitherATasksNorPrintedTwice) {
    // This program's stdout goes to a file for the test, so that what reaches it can be
    // counted; a fork-method worker starts with a copy of the unflushed text.
    procpool_test::temp_dir dir;
    const std::string path = dir.path() + "/stdout";
    std::fflush(stdout);
    const int saved = ::dup(1);
    const int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(saved, 0);
    ASSERT_GE(file, 0);
    ::dup2(file, 1);
    ::close(file);
    const std::string text = "procpool test: printed by the test, flushed after the pool started";
    std::printf("%s", text.c_str());
    std::shared_ptr<const procpool::task_output> o;
    {
        process_pool pool({.workers = 1, .start = start_method::fork, .capture_output = true});
        auto f = pool.submit(chatty, 1, 2);
        o = output_of(f);
    }
    std::fflush(stdout);
    ::dup2(saved, 1);
    ::close(saved);
    std::ifstream in(path);
    const std::string printed((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    EXPECT_EQ(printed, text);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, expected(1, "out", 2));
}

TEST(OutputCapture, BadLimits_AreInvalidArguments) {
    EXPECT_THROW(process_pool({.workers = 1, .capture_output = true, .output_limit = 0}),
                 procpool::invalid_argument);
    EXPECT_THROW(
        process_pool(
            {.workers = 1, .capture_output = true, .output_limit = (std::size_t{1} << 30) + 1}),
        procpool::invalid_argument);
    // Without capture the limit is not used.
    process_pool ok({.workers = 1, .output_limit = 0});
    EXPECT_EQ(ok.submit(my_pid).wait_for(watchdog), true);
}

// ---- many writers at once ------------------------------------------------------------

void interleaved_writers(start_method method) {
    process_pool pool({.workers = 4, .start = method, .capture_output = true});
    constexpr int tasks = 24;
    constexpr int lines = 300;
    std::vector<procpool::future<int>> fs;
    for (int id = 0; id < tasks; ++id) fs.push_back(pool.submit(chatty, id, lines));
    for (int id = 0; id < tasks; ++id) {
        auto o = output_of(fs[static_cast<std::size_t>(id)]);
        ASSERT_NE(o, nullptr);
        EXPECT_EQ(o->out, expected(id, "out", lines)) << "task " << id;
        EXPECT_EQ(o->err, expected(id, "err", lines)) << "task " << id;
        EXPECT_FALSE(o->truncated);
    }
}

TEST(OutputCapture, InterleavedWriters_EachTaskGetsExactlyItsOwnText) {
    interleaved_writers(start_method::forkserver);
}

TEST(OutputCapture, InterleavedWriters_ForkMethod) {
    interleaved_writers(start_method::fork);
}

// ---- crashes -----------------------------------------------------------------------

TEST(OutputCapture, CrashingWriter_KeepsWhatReachedItsDescriptors) {
    process_pool pool({.workers = 1, .capture_output = true});
    int id = 0;
    for (int sig : {SIGSEGV, SIGABRT, SIGKILL}) {
        ++id;
        auto f = pool.submit(write_then_die, id, sig);
        auto o = output_of(f);
        EXPECT_TRUE(is_worker_died(f.exception())) << "signal " << sig;
        ASSERT_NE(o, nullptr) << "signal " << sig;
        // write(2) output survives; the printf left in stdout's buffer died with it.
        // (abort may flush stdio first: glibc before 2.27 did, TSan's interceptor does.)
        if (sig == SIGABRT && o->out != line(id, "out", 0)) {
            EXPECT_EQ(o->out, line(id, "out", 0) + "still buffered " + std::to_string(id));
        } else {
            EXPECT_EQ(o->out, line(id, "out", 0)) << "signal " << sig;
        }
        EXPECT_EQ(o->err, line(id, "err", 0)) << "signal " << sig;
        // The replacement worker starts clean.
        auto next = pool.submit(chatty, 100 + id, 3);
        auto n = output_of(next);
        ASSERT_NE(n, nullptr);
        EXPECT_EQ(n->out, expected(100 + id, "out", 3));
        EXPECT_EQ(n->err, expected(100 + id, "err", 3));
    }
}

TEST(OutputCapture, ExitFlushesStdio_SoTheTextIsKept) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(print_then_exit, 4);
    auto o = output_of(f);
    EXPECT_TRUE(is_worker_died(f.exception()));
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, line(4, "out", 0));
}

TEST(OutputCapture, CrashesAmongWriters_NeverMixOutputs) {
    process_pool pool({.workers = 3, .capture_output = true});
    constexpr int tasks = 30;
    constexpr int lines = 100;
    std::vector<procpool::future<int>> fs;
    for (int id = 0; id < tasks; ++id) fs.push_back(pool.submit(chatty_or_crash, id, lines));
    for (int id = 0; id < tasks; ++id) {
        const auto& f = fs[static_cast<std::size_t>(id)];
        auto o = output_of(f);
        ASSERT_NE(o, nullptr) << "task " << id;
        if (id % 3 == 0) {
            EXPECT_TRUE(is_worker_died(f.exception())) << "task " << id;
        } else {
            EXPECT_EQ(f.exception(), nullptr) << "task " << id;
        }
        EXPECT_EQ(o->out, expected(id, "out", lines)) << "task " << id;
        EXPECT_EQ(o->err, expected(id, "err", lines)) << "task " << id;
    }
}

TEST(OutputCapture, KilledForItsTimeout_KeepsWhatItWrote) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(procpool::task_options{.timeout = 300ms}, tick_forever, 0);
    auto o = output_of(f);
    EXPECT_THROW(f.get(), procpool::task_timeout);
    ASSERT_NE(o, nullptr);
    EXPECT_FALSE(o->out.empty());
    EXPECT_TRUE(all_lines_are(o->out, "tick"));
}

TEST(OutputCapture, KilledMidWrite_KeepsWholeWrites) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 256 << 10});
    auto f = pool.submit(killed_mid_write, 0);
    auto o = output_of(f);
    EXPECT_TRUE(is_worker_died(f.exception()));
    ASSERT_NE(o, nullptr);
    EXPECT_TRUE(o->truncated);
    const std::size_t body = o->out.find('\n');
    ASSERT_NE(body, std::string::npos);
    EXPECT_EQ(body, std::size_t{256} << 10);
    EXPECT_EQ(o->out.find_first_not_of('w'), body);
    EXPECT_NE(o->out.find("bytes dropped]"), std::string::npos);
}

// ---- limits --------------------------------------------------------------------------

TEST(OutputCapture, PastTheLimit_TruncatedAndMarked) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 4096});
    for (bool die : {false, true}) {
        auto f = die ? pool.submit(write_bytes_then_die, std::size_t{10000}, std::size_t{100})
                     : pool.submit(write_bytes, std::size_t{10000}, std::size_t{100});
        auto o = output_of(f);
        ASSERT_NE(o, nullptr);
        EXPECT_EQ(o->out, std::string(4096, 'o') + procpool::output_truncation_marker(5904))
            << (die ? "died" : "returned");
        EXPECT_EQ(o->out.substr(4096), "\n[procpool: output truncated: 5904 bytes dropped]\n");
        EXPECT_EQ(o->err, std::string(100, 'e'));
        EXPECT_TRUE(o->truncated);
    }
    // Exactly at the limit: nothing dropped.
    auto f = pool.submit(write_bytes, std::size_t{4096}, std::size_t{4096});
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, std::string(4096, 'o'));
    EXPECT_EQ(o->err, std::string(4096, 'e'));
    EXPECT_FALSE(o->truncated);
}

TEST(OutputCapture, LargeOutputAndResult_TravelTogether) {
    process_pool pool({.workers = 1, .capture_output = true});
    constexpr int n = 700 << 10;  // past a quarter of a ring: out of band
    auto f = pool.submit(big_output_and_result, n);
    auto o = output_of(f);
    ASSERT_EQ(f.get().size(), static_cast<std::size_t>(n));
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, std::string(n, 'o'));
    EXPECT_EQ(o->err, std::string(n, 'e'));
    auto small = pool.submit(chatty, 9, 2);
    EXPECT_EQ(output_of(small)->out, expected(9, "out", 2));
}

TEST(OutputCapture, ATaskWritingAGibibyte_IsBoundedAndCapped) {
    process_pool pool({.workers = 1, .capture_output = true, .output_limit = 64 << 10});
    auto f = pool.submit(flood_stdout, 1024);
    auto o = output_of(f);
    // The pool freed what the file held past the limit while the task waited for it.
    EXPECT_LE(f.get(), 16ll << 20);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, std::string(64 << 10, 'x') +
                          procpool::output_truncation_marker((std::size_t{1} << 30) - (64 << 10)));
    EXPECT_EQ(o->err, "flooded\n");
    auto next = pool.submit(chatty, 3, 2);
    EXPECT_EQ(output_of(next)->out, expected(3, "out", 2));
}

// ---- tasks that tamper with their descriptors ----------------------------------------

TEST(OutputCapture, ATaskClosingStdoutAndStderr_LaterTasksAreCapturedAgain) {
    process_pool pool({.workers = 1, .capture_output = true});
    const int pid = pool.submit(my_pid).get();
    auto f = pool.submit(close_std_fds, 1);
    EXPECT_EQ(f.get(), 2);  // the task's own opens took fd 1 and 2
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, line(1, "out", 0));
    EXPECT_EQ(o->err, line(1, "err", 0));
    auto next = pool.submit(chatty, 2, 12);
    auto n = output_of(next);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->out, expected(2, "out", 12));
    EXPECT_EQ(n->err, expected(2, "err", 12));
    EXPECT_EQ(pool.submit(my_pid).get(), pid);  // the same worker throughout
}

TEST(OutputCapture, ATaskRedirectingStdout_LaterTasksAreCapturedAgain) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(dup2_devnull, 1);
    auto o = output_of(f);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->out, line(1, "out", 0));
    auto g = pool.submit(reopen_stdout_write_only, 2);
    EXPECT_EQ(g.get(), 2);
    EXPECT_EQ(output_of(g)->out, line(2, "out", 0));
    auto next = pool.submit(chatty, 3, 12);
    auto n = output_of(next);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->out, expected(3, "out", 12));
    EXPECT_EQ(n->err, expected(3, "err", 12));
}

TEST(OutputCapture, ATaskBreakingTheCapture_CostsItsWorkerNotOthersOutput) {
    process_pool pool({.workers = 1, .capture_output = true});
    auto f = pool.submit(break_capture, 1);
    const int broken_pid = f.get();  // its result still arrives
    ASSERT_NE(output_of(f), nullptr);
    auto next = pool.submit(chatty, 2, 12);
    auto n = output_of(next);
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->out, expected(2, "out", 12));
    EXPECT_EQ(n->err, expected(2, "err", 12));
    EXPECT_NE(pool.submit(my_pid).get(), broken_pid);  // it was replaced
}

TEST(OutputCapture, AChildWritingAfterItsTaskEnded_DoesNotHangOrCrashThePool) {
    const int fds_before = count_fds();
    {
        process_pool pool({.workers = 1, .capture_output = true});
        auto f = pool.submit(leave_a_writer, 1);
        EXPECT_EQ(f.get(), 1);
        auto o = output_of(f);
        ASSERT_NE(o, nullptr);
        // Its own line first; the child may have added some of its own before the end.
        EXPECT_EQ(o->out.rfind(line(1, "out", 0), 0), 0u);
        EXPECT_TRUE(all_lines_are(o->out.substr(line(1, "out", 0).size()), "late"));
        // The next task shares the worker's descriptors with the child: its output may
        // hold late lines too (documented), but its own text is all there.
        auto next = pool.submit(chatty, 2, 5);
        auto n = output_of(next);
        ASSERT_NE(n, nullptr);
        EXPECT_NE(n->err.find(expected(2, "err", 5)), std::string::npos);
    }  // the worker's process group, the child included, ends with the pool
    EXPECT_EQ(count_fds(), fds_before);
}

TEST(OutputCapture, NoDescriptorsLeak_AfterCrashesAndReplacements) {
    const int fds_before = count_fds();
    for (auto method : {start_method::forkserver, start_method::fork}) {
        process_pool pool({.workers = 2, .start = method, .capture_output = true});
        std::vector<procpool::future<int>> fs;
        for (int id = 0; id < 9; ++id) fs.push_back(pool.submit(chatty_or_crash, id, 10));
        for (auto& f : fs) EXPECT_TRUE(f.wait_for(watchdog));
    }
    EXPECT_EQ(count_fds(), fds_before);
}

// ---- forged output sections ------------------------------------------------------------

class ForgedOutput : public ::testing::TestWithParam<int> {};

TEST_P(ForgedOutput, FailsOnlyItsTask_WithProtocolError_AndPoolKeepsServing) {
    const bool capture =
        static_cast<forged_output>(GetParam()) != forged_output::on_a_pool_without_capture;
    process_pool pool({.workers = 2, .capture_output = capture, .output_limit = 4});
    auto hostile = pool.submit(forge_output, GetParam());
    std::vector<procpool::future<int>> others;
    for (int i = 0; i < 50; ++i) others.push_back(pool.submit(add, i, 1));
    ASSERT_TRUE(hostile.wait_for(watchdog));
    EXPECT_THROW(hostile.get(), procpool::protocol_error);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(others[static_cast<std::size_t>(i)].get(), i + 1);
    EXPECT_EQ(pool.submit(add, 20, 22).get(), 42);
}

INSTANTIATE_TEST_SUITE_P(EveryKind, ForgedOutput, ::testing::Range(0, forged_output_kinds));

// ---- run_in_* ------------------------------------------------------------------------

TEST(OutputCapture, RunInProcesses_OutcomesCarryTheirOutput) {
    std::vector<std::tuple<int, int>> tasks;
    for (int id = 0; id < 9; ++id) tasks.emplace_back(id, 20);
    auto outcomes =
        procpool::run_in_processes(chatty_or_crash, tasks, {.workers = 3, .capture_output = true});
    ASSERT_EQ(outcomes.size(), tasks.size());
    for (int id = 0; id < 9; ++id) {
        const auto& r = outcomes[static_cast<std::size_t>(id)];
        EXPECT_EQ(r.has_value(), id % 3 != 0) << "task " << id;
        if (!r) {
            EXPECT_EQ(r.error().kind(), procpool::failure_kind::worker_died);
        }
        ASSERT_NE(r.output(), nullptr) << "task " << id;
        EXPECT_EQ(r.output()->out, expected(id, "out", 20)) << "task " << id;
        EXPECT_EQ(r.output()->err, expected(id, "err", 20)) << "task " << id;
    }
    // Without the option: no output, which then goes to this program's stdout and stderr.
    auto plain = procpool::run_in_processes(my_pid_of, procpool_test::numbers(2), {.workers = 1});
    for (const auto& r : plain) EXPECT_EQ(r.output(), nullptr);
}

TEST(OutputCapture, RunInOnACapturingPool_OutcomesCarryTheirOutput) {
    process_pool pool({.workers = 2, .capture_output = true});
    std::vector<std::tuple<int, int>> tasks{{1, 3}, {2, 4}};
    auto outcomes = procpool::run_in(pool, chatty, tasks);
    for (std::size_t i = 0; i < tasks.size(); ++i) {
        const auto [id, lines] = tasks[i];
        ASSERT_NE(outcomes[i].output(), nullptr);
        EXPECT_EQ(outcomes[i].output()->out, expected(id, "out", lines));
    }
    auto again = procpool::run_in(pool, chatty, tasks, {.capture_output = true});
    EXPECT_EQ(again[1].output()->err, expected(2, "err", 4));
}

TEST(OutputCapture, WithThreads_CaptureIsAnInvalidArgument) {
    std::vector<int> v{1, 2};
    EXPECT_THROW(
        (void)procpool::run_in_threads([](int i) { return i; }, v, {.capture_output = true}),
        procpool::invalid_argument);
    procpool::thread_pool threads({.workers = 1});
    EXPECT_THROW(
        (void)procpool::run_in(threads, [](int i) { return i; }, v, {.capture_output = true}),
        procpool::invalid_argument);
    process_pool plain({.workers = 1});
    EXPECT_THROW((void)procpool::run_in(plain, chatty, std::vector<std::tuple<int, int>>{{1, 1}},
                                        {.capture_output = true}),
                 procpool::invalid_argument);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
