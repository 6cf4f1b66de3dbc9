// Hostile and unlucky tasks: a task may scribble on procpool's shared memory and control
// socket, fork children and crash, or have its fork server killed under it. Whatever it
// does, the parent must not die or hang, every future must resolve, and only that task
// may fail. These tests reach into the worker's internals (src/) to forge what a buggy
// or malicious task could write.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "ipc/fd.hpp"
#include "ipc/ring.hpp"
#include "process/region.hpp"
#include "process/fork_server.hpp"
#include "process/channel.hpp"
#include "process/protocol.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "worker_internals.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool_test::file_gate;
using procpool_test::my_region;

namespace {

int add(int a, int b) {
    return a + b;
}

// ---- forging messages from inside a worker ----------------------------------------------

// The worker's descriptor of that kind; it must exist.
int my_fd(const std::string& kind) {
    const int fd = procpool_test::find_fd(kind);
    if (fd < 0) std::abort();
    return fd;
}

// The worker's control socket: its only socket.
int my_control_socket() {
    return my_fd("socket:");
}

// Wakes the parent as a worker does after a completion (its wake-up pipe), so that the forged
// frame is read now rather than whenever something else wakes the parent.
void wake_parent() {
    const std::uint64_t one = 1;
    if (write(my_fd("pipe:"), &one, sizeof one) != sizeof one) std::abort();
}

// Publishes a raw frame in the worker's completion ring, as its own code would.
void publish(procpool::process::worker_region* r, std::uint32_t len, std::uint32_t type,
             const void* payload, std::size_t n) {
    auto& c = r->completions;
    const std::uint64_t head = c.head.load();
    const auto pos = static_cast<std::uint32_t>(head % r->ring_capacity);
    const procpool::ipc::frame_header h{len, type};
    std::memcpy(r->completion_data() + pos, &h, sizeof h);
    if (n != 0) std::memcpy(r->completion_data() + pos + sizeof h, payload, n);
    c.head.store(head + procpool::ipc::ring::frame_size(len));
}

// A completion header for the task running now, with `nattach` attachments announced.
procpool::process::completion_header header_for_current(procpool::process::worker_region* r,
                                                        std::uint32_t nattach) {
    return {r->started_seq.load(), 0, nattach, 0, 0};
}

enum class forgery {
    short_frame,           // a completion shorter than its header
    huge_pad,              // a pad frame whose length wraps the frame size to zero
    missing_attachments,   // announces attachments it never sends (the reader would block)
    wrong_sequence,        // a completion for a task it is not running
    unknown_type,          // a completion type that does not exist
    head_past_capacity,    // a published index more than a ring ahead
    missing_large_result,  // announces an out-of-band result and sends no descriptor
    oversized_block,       // a shared block claiming more bytes than its file has
    unsealed_block,        // a memfd that the worker could shrink under the parent
    false_init_failure,    // reports a failed initializer after its start-up was over
    second_ready,          // reports readiness again
    too_many_attachments,  // announces more attachments than the protocol allows
    file_large_result,     // a large result in a file it could truncate under the parent
};

// Sends one attach_msg for a fresh memfd of `size` bytes that claims `claimed` bytes.
void send_block(int sock, std::uint64_t size, std::uint64_t claimed, bool seal) {
    const int fd = memfd_create("procpool-shared-array", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
    if (seal) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
    const procpool::process::attach_msg m{777, claimed, 0, 0};
    if (!procpool::ipc::send_with_fds(sock, &m, sizeof m, std::span<const int>(&fd, 1))) {
        std::abort();
    }
}

// The hostile task: forges one kind of bad message, then waits to be killed.
int forge(int kind) {
    using procpool::detail::run_status;
    auto* r = my_region();
    const auto value = static_cast<std::uint32_t>(run_status::value);
    switch (static_cast<forgery>(kind)) {
        case forgery::short_frame: {
            const std::uint64_t eight = 0;
            publish(r, 8, value, &eight, sizeof eight);
            break;
        }
        case forgery::huge_pad:
            publish(r, 0xFFFFFFF8u, procpool::ipc::frame_pad, nullptr, 0);
            break;
        case forgery::missing_attachments: {
            const auto h = header_for_current(r, 3);
            publish(r, sizeof h, value, &h, sizeof h);
            break;
        }
        case forgery::wrong_sequence: {
            auto h = header_for_current(r, 0);
            h.seq += 1000;
            publish(r, sizeof h, value, &h, sizeof h);
            break;
        }
        case forgery::unknown_type: {
            const auto h = header_for_current(r, 0);
            publish(r, sizeof h, 99, &h, sizeof h);
            break;
        }
        case forgery::head_past_capacity:
            r->completions.head.store(r->completions.head.load() + 10ull * r->ring_capacity);
            break;
        case forgery::missing_large_result: {
            struct {
                procpool::process::completion_header h;
                std::uint64_t size;
            } f{header_for_current(r, 0), 1 << 20};
            publish(r, sizeof f, value | procpool::process::oob_flag, &f, sizeof f);
            break;
        }
        case forgery::oversized_block: {
            send_block(my_control_socket(), 4096, std::uint64_t{1} << 30, true);
            const auto h = header_for_current(r, 1);
            publish(r, sizeof h, value, &h, sizeof h);
            break;
        }
        case forgery::unsealed_block: {
            send_block(my_control_socket(), 4096, 4096, false);
            const auto h = header_for_current(r, 1);
            publish(r, sizeof h, value, &h, sizeof h);
            break;
        }
        case forgery::false_init_failure: {
            const procpool::process::completion_header h{0, 0, 0, 0, 0};
            publish(r, sizeof h, static_cast<std::uint32_t>(run_status::init_failed), &h, sizeof h);
            break;
        }
        case forgery::second_ready: {
            const procpool::process::completion_header h{0, 0, 0, 0, 0};
            publish(r, sizeof h, static_cast<std::uint32_t>(run_status::ready), &h, sizeof h);
            break;
        }
        case forgery::too_many_attachments: {
            const auto h = header_for_current(r, 100000);
            publish(r, sizeof h, value, &h, sizeof h);
            break;
        }
        case forgery::file_large_result: {
            char path[] = "/tmp/procpool-forged-XXXXXX";
            const int fd = mkstemp(path);
            if (fd < 0 || ftruncate(fd, 1 << 20) != 0) std::abort();
            unlink(path);
            const char tag = 'R';
            if (!procpool::ipc::send_with_fds(my_control_socket(), &tag, 1,
                                              std::span<const int>(&fd, 1))) {
                std::abort();
            }
            struct {
                procpool::process::completion_header h;
                std::uint64_t size;
            } f{header_for_current(r, 0), 1 << 20};
            publish(r, sizeof f, value | procpool::process::oob_flag, &f, sizeof f);
            break;
        }
    }
    wake_parent();
    std::this_thread::sleep_for(1h);  // the parent kills this worker
    return 0;
}

constexpr int forgery_count = 13;

int initialized_value = 0;
void harmless_init() {
    initialized_value = 1;
}

class ForgedMessage : public ::testing::TestWithParam<int> {};

TEST_P(ForgedMessage, FailsOnlyItsTask_WithProtocolError_AndPoolKeepsServing) {
    // With an initializer, so that a forged "initializer failed" is refused for coming
    // after the worker's start-up, not merely for the pool having none.
    process_pool pool({.workers = 2, .initializer = procpool::worker_initializer(harmless_init)});
    auto hostile = pool.submit(forge, GetParam());
    std::vector<procpool::future<int>> others;
    for (int i = 0; i < 100; ++i) others.push_back(pool.submit(add, i, 1));
    try {
        hostile.get();
        FAIL() << "a forged message was accepted";
    } catch (const procpool::protocol_error& e) {
        EXPECT_NE(std::string(e.what()).find("malformed message"), std::string::npos) << e.what();
    }
    for (int i = 0; i < 100; ++i) EXPECT_EQ(others[static_cast<std::size_t>(i)].get(), i + 1);
    EXPECT_EQ(pool.submit(add, 20, 22).get(), 42);
}

INSTANTIATE_TEST_SUITE_P(EveryKind, ForgedMessage, ::testing::Range(0, forgery_count));

// ---- deadlines -----------------------------------------------------------------------------

int sleep_ms(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}

// A task that never returns, with a timeout, queued behind a hundred untimed tasks while the
// test thread (not the supervisor) drains completions: the timeout is enforced every time.
TEST(ProcessPoolDeadlines, TimedTaskQueuedBehindUntimedOnes_IsEnforced) {
    for (int round = 0; round < 10; ++round) {
        process_pool pool({.workers = 2});
        std::vector<procpool::future<int>> untimed;
        for (int i = 0; i < 100; ++i) untimed.push_back(pool.submit(sleep_ms, 1));
        auto timed = pool.submit(procpool::task_options{.timeout = 50ms}, sleep_ms, 3'600'000);
        for (auto& f : untimed) EXPECT_EQ(f.get(), 1);
        EXPECT_THROW(timed.get(), procpool::task_timeout) << "round " << round;
    }
}

// The timeout counts from when the task can start, not from submission: a task queued
// behind a long one is not killed for the time it waited.
TEST(ProcessPoolDeadlines, TimeoutCountsFromStart_NotFromSubmission) {
    process_pool pool({.workers = 1});
    file_gate gate;
    auto first = pool.submit(file_gate::wait_then_return, gate.path(), 7);
    auto second = pool.submit(procpool::task_options{.timeout = 10min}, add, 1, 2);
    gate.wait_started();
    gate.open();
    EXPECT_EQ(first.get(), 7);
    EXPECT_EQ(second.get(), 3);
}

TEST(ProcessPoolDeadlines, NonPositiveTaskTimeout_IsRejectedWithAClearMessage) {
    process_pool pool({.workers = 1});
    for (auto bad : {0ms, -5ms}) {
        try {
            (void)pool.submit(procpool::task_options{.timeout = bad}, add, 1, 2);
            FAIL() << "a timeout of " << bad.count() << " ms was accepted";
        } catch (const procpool::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("task_options::timeout must be positive"),
                      std::string::npos)
                << e.what();
        }
    }
}

TEST(ProcessPoolDeadlines, TimeoutTooLongToCount_IsRejected_NotWrappedIntoAShortOne) {
    // In nanoseconds, milliseconds::max() would wrap to a negative deadline (none) and
    // ~584 years to a fraction of a millisecond.
    process_pool pool({.workers = 1});
    for (auto bad : {std::chrono::milliseconds::max(), std::chrono::milliseconds(18'446'744'073'710LL)}) {
        EXPECT_THROW((void)pool.submit(procpool::task_options{.timeout = bad}, add, 1, 2),
                     procpool::invalid_argument);
    }
    EXPECT_THROW(process_pool({.workers = 1, .task_timeout = std::chrono::milliseconds::max()}),
                 procpool::invalid_argument);
    EXPECT_EQ(pool.submit(procpool::task_options{.timeout = std::chrono::hours(24 * 365)}, add, 1, 2)
                  .get(),
              3);
}

// ---- start-up ------------------------------------------------------------------------------

void dying_init() {
    _exit(9);
}

// The start-up death of every worker fails the tasks with a message that says why, with
// either start method, every time (a hang here fails through the ctest timeout).
TEST(ProcessPoolStartup, WorkersDyingInTheirInitializer_FailTasks_EveryTime) {
    for (auto method : {procpool::start_method::forkserver, procpool::start_method::fork}) {
        for (int round = 0; round < 10; ++round) {
            process_pool pool({.workers = 1,
                               .initializer = procpool::worker_initializer(dying_init),
                               .start = method});
            auto f = pool.submit(add, 1, 2);
            try {
                f.get();
                FAIL();
            } catch (const procpool::error& e) {
                const std::string what = e.what();
                EXPECT_NE(what.find("die before running any task"), std::string::npos) << what;
                EXPECT_NE(what.find("exit code 9 while running the pool's initializer"),
                          std::string::npos)
                    << what;
            }
        }
    }
}

using procpool_test::under_sanitizer;

TEST(ProcessPoolStartup, MemoryLimitTooSmallToStart_ErrorNamesTheLimit) {
    if (under_sanitizer()) GTEST_SKIP() << "sanitizer runtimes fail on their own under RLIMIT_AS";
    process_pool pool({.workers = 1, .memory_limit = std::size_t{1} << 20});
    try {
        pool.submit(add, 1, 2).get();
        FAIL() << "a worker ran under a 1 MiB address-space limit";
    } catch (const procpool::error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("memory_limit of 1 MiB"), std::string::npos) << what;
    }
}

// ---- isolation -----------------------------------------------------------------------------

int worker_regions_mapped() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    int n = 0;
    while (std::getline(maps, line)) {
        if (line.find("memfd:procpool-worker") != std::string::npos) ++n;
    }
    return n;
}

TEST(ProcessPoolIsolation, ForkMethodWorkers_MapOnlyTheirOwnRegion) {
    process_pool pool({.workers = 4, .start = procpool::start_method::fork});
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 40; ++i) fs.push_back(pool.submit(worker_regions_mapped));
    for (auto& f : fs) EXPECT_EQ(f.get(), 1);
}

// A task that starts a child and then crashes: the child goes with its worker.
int fork_child_then_crash(std::string pid_file) {
    const pid_t child = fork();
    if (child == 0) {
        std::this_thread::sleep_for(1h);
        _exit(0);
    }
    { std::ofstream(pid_file) << child; }
    raise(SIGSEGV);
    return 0;
}

bool alive(int pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string a, b;
    char state = 0;
    return static_cast<bool>(stat >> a >> b >> state) && state != 'Z';
}

// Waits for `cond` for up to two minutes: a watchdog for a real hang, not a timing test.
template <class F>
bool eventually(F cond) {
    const auto until = std::chrono::steady_clock::now() + 2min;
    while (std::chrono::steady_clock::now() < until) {
        if (cond()) return true;
        std::this_thread::sleep_for(5ms);
    }
    return false;
}

TEST(ProcessPoolIsolation, ChildrenOfACrashedTask_DoNotOutliveItsWorker) {
    for (auto method : {procpool::start_method::forkserver, procpool::start_method::fork}) {
        procpool_test::temp_dir dir;
        const std::string pid_file = dir.path() + "/child.pid";
        {
            process_pool pool({.workers = 1, .start = method});
            EXPECT_THROW(pool.submit(fork_child_then_crash, pid_file).get(), procpool::worker_died);
            EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);
        }
        int child = 0;
        std::ifstream(pid_file) >> child;
        ASSERT_GT(child, 0);
        EXPECT_TRUE(eventually([&] { return !alive(child); })) << "child " << child;
    }
}

// ---- deep values ---------------------------------------------------------------------------

struct Node {
    int v = 0;
    std::vector<Node> kids;
    template <class A>
    void serialize(A& a) {
        a(v, kids);
    }
};

Node chain(int depth) {
    Node root;
    Node* at = &root;
    for (int i = 1; i < depth; ++i) {
        at->kids.emplace_back();
        at = &at->kids.back();
        at->v = i;
    }
    return root;
}

// Tears a chain down iteratively: the implicit destructor would recurse as deep as it is.
void dismantle(Node& n) {
    std::vector<Node> pending = std::move(n.kids);
    while (!pending.empty()) {
        Node last = std::move(pending.back());
        pending.pop_back();
        for (auto& k : last.kids) pending.push_back(std::move(k));
    }
}

int depth_of(const Node& n) {
    int d = 1;
    for (const Node* at = &n; !at->kids.empty(); at = &at->kids.front()) ++d;
    return d;
}

Node deep_result(int depth) {
    return chain(depth);
}

// A legitimate value nested deeper than the decoder allows is refused where it is made (in
// the worker), so the parent never recurses that deep: it stays alive and the task fails.
TEST(DeepValues, ResultNestedTooDeep_FailsItsTask_ParentSurvives) {
    process_pool pool({.workers = 1});
    try {
        Node n = pool.submit(deep_result, 13'000).get();
        dismantle(n);
        FAIL() << "a 13,000-deep value was accepted";
    } catch (const procpool::serialization_error& e) {
        EXPECT_NE(std::string(e.what()).find("deeper"), std::string::npos) << e.what();
    }
    Node ok = pool.submit(deep_result, 500).get();
    EXPECT_EQ(depth_of(ok), 500);
    dismantle(ok);
}

// ---- the fork server -----------------------------------------------------------------------

TEST(ForkServer, KilledFromOutside_RunningTaskFails_PoolsRecover) {
    process_pool pool({.workers = 2, .start = procpool::start_method::forkserver});
    EXPECT_EQ(pool.submit(add, 1, 1).get(), 2);
    file_gate gate;
    auto running = pool.submit(file_gate::wait_then_return, gate.path(), 1);
    gate.wait_started();
    const pid_t server = procpool::process::fork_server_pid();
    ASSERT_GT(server, 0);
    ASSERT_EQ(kill(server, SIGKILL), 0);
    EXPECT_THROW(running.get(), procpool::worker_died);
    // The same pool keeps serving, on workers from a new fork server.
    std::vector<procpool::future<int>> fs;
    for (int i = 0; i < 50; ++i) fs.push_back(pool.submit(add, i, i));
    for (int i = 0; i < 50; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), 2 * i);
    EXPECT_NE(procpool::process::fork_server_pid(), server);
    // And a new pool starts.
    process_pool another({.workers = 1, .start = procpool::start_method::forkserver});
    EXPECT_EQ(another.submit(add, 2, 3).get(), 5);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
