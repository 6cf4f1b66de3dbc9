// Adversarial review of the process pool's trust boundary: each test is a minimal
// reproduction of a way a task (or an unlucky thread) breaks one of procpool's promises:
// every future resolves, the parent never dies or hangs, and a task can hurt only itself
// and the tasks queued behind it on its own worker.
//
// No timing assertions: hangs are caught by watchdogs of a minute, after which the test
// unsticks the pool (killing workers, opening gates) so that it fails instead of hanging.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ipc/ring.hpp"
#include "process_support.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/shared_array.hpp"
#include "procpool/thread_pool.hpp"
#include "worker_internals.hpp"

using namespace std::chrono_literals;
using procpool::process_pool;
using procpool_test::file_gate;
using procpool_test::temp_dir;

namespace {

// ---- helpers run inside workers ---------------------------------------------------------

using procpool_test::my_region;

// The worker's descriptor whose link target starts with `kind`, or -1.
int my_fd(const std::string& kind) {
    return procpool_test::find_fd(kind);
}

bool exists(const std::string& p) {
    return std::filesystem::exists(p);
}

int add(int a, int b) {
    return a + b;
}

int sleep_then(int ms, int value) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return value;
}

std::size_t consume(std::vector<char> v) {
    return v.size();
}

// Kills every worker of `pool` (SIGKILL): unsticks a pool a test found stalled, so that the
// test fails with a message instead of hanging in the pool's destructor.
void kill_workers(process_pool& pool) {
    for (int pid : pool.worker_pids()) ::kill(pid, SIGKILL);
}

// ---- 1. the pool's eventfd is shared by every worker ------------------------------------

// A hostile task that swallows every wake-up written to the pool's eventfd (which every
// worker holds, for telling the parent that a completion is waiting) until `stop` exists.
int swallow_wakeups(std::string stop) {
    const int efd = my_fd("anon_inode:[eventfd]");  // -1 (poll ignores it) once fixed
    std::ofstream(stop + ".started") << 1;
    while (!exists(stop)) {
        pollfd p{efd, POLLIN, 0};
        if (poll(&p, 1, 20) == 1) {
            std::uint64_t v = 0;
            [[maybe_unused]] auto n = read(efd, &v, sizeof v);
        }
    }
    return 1;
}

// Failed before the fix: the task on the other worker completes, but its wake-up is read by the
// hostile worker before the supervisor's epoll_wait re-checks the eventfd; the supervisor sleeps on
// (no deadline: timeout -1) and the victim's future never resolves (watchdog fires).
TEST(AdversaryEventfd, WorkerSwallowingWakeups_DoesNotStallTasksOfOtherWorkers) {
    process_pool pool({.workers = 2});
    temp_dir dir;
    const std::string stop = dir.path() + "/stop";
    // Worker 0 runs the hostile task for the whole test.
    auto hostile = pool.submit(swallow_wakeups, stop);
    while (!exists(stop + ".started")) std::this_thread::sleep_for(1ms);
    int stalled = 0;
    for (int round = 0; round < 20 && stalled == 0; ++round) {
        // Goes to the idle worker 1. It outlasts the waiting thread's spin, so that only the
        // supervisor (woken through the eventfd) can resolve it.
        auto victim = pool.submit(sleep_then, 50, round);
        if (!victim.wait_for(60s)) {
            ++stalled;
            break;
        }
        EXPECT_EQ(victim.get(), round);
    }
    EXPECT_EQ(stalled, 0) << "a task on another worker was never resolved: the hostile "
                             "worker swallowed its wake-up";
    std::ofstream(stop) << 1;  // the hostile task's completion wakes the supervisor again
    EXPECT_EQ(hostile.get(), 1);
}

// A hostile task that makes the pool's eventfd blocking (O_NONBLOCK is a flag of the open
// file description, which every worker shares with the parent) and then reads it in a
// blocking loop: a wake-up the supervisor saw in epoll may be gone before its read(), which
// then blocks the supervisor thread itself.
int block_and_swallow_wakeups(std::string stop) {
    const int efd = my_fd("anon_inode:[eventfd]");  // -1 (calls fail) once fixed
    fcntl(efd, F_SETFL, fcntl(efd, F_GETFL) & ~O_NONBLOCK);
    std::ofstream(stop + ".started") << 1;
    while (!exists(stop)) {
        pollfd p{efd, POLLIN, 0};
        if (poll(&p, 1, 20) == 1) {
            std::uint64_t v = 0;
            [[maybe_unused]] auto n = read(efd, &v, sizeof v);
        }
    }
    fcntl(efd, F_SETFL, fcntl(efd, F_GETFL) | O_NONBLOCK);
    return 1;
}

// Failed before the fix (same cause as above; when the supervisor loses the race for the read it
// blocks inside read(evfd) instead of in epoll_wait).
TEST(AdversaryEventfd, WorkerMakingTheEventfdBlocking_DoesNotStallTheSupervisor) {
    process_pool pool({.workers = 2});
    temp_dir dir;
    const std::string stop = dir.path() + "/stop";
    auto hostile = pool.submit(block_and_swallow_wakeups, stop);
    while (!exists(stop + ".started")) std::this_thread::sleep_for(1ms);
    int stalled = 0;
    for (int round = 0; round < 20 && stalled == 0; ++round) {
        auto victim = pool.submit(sleep_then, 50, round);
        if (!victim.wait_for(60s)) {
            ++stalled;
            break;
        }
        EXPECT_EQ(victim.get(), round);
    }
    EXPECT_EQ(stalled, 0) << "a task on another worker was never resolved";
    std::ofstream(stop) << 1;
    EXPECT_EQ(hostile.get(), 1);
}

// ---- 2. the request ring's read index ----------------------------------------------------

// A hostile task that leaves a thread behind in its worker: the thread keeps the request
// ring's published read index (tail) one frame short of "full". The index stays within the
// bounds ring::try_reserve checks (tail <= head, head - tail <= capacity), so the parent
// never sees `corrupt`, only a worker whose ring never has room, although the worker is idle.
int fake_full_request_ring(std::string stop) {
    auto* r = my_region();
    const std::uint64_t cap = r->ring_capacity;
    if (r->requests.head.load() < cap) std::abort();  // the test sends enough bytes first
    std::thread([r, cap, stop] {
        for (unsigned i = 0;; ++i) {
            r->requests.tail.store(r->requests.head.load() - cap + 8);
            if ((i & 1023) == 0 && exists(stop)) return;
            sched_yield();
        }
    }).detach();
    return 1;
}

// Failed before the fix: the hostile worker is idle (its task returned), so pick() keeps choosing
// it (last worker used, idle); send() finds no room and dispatch_pending() returns at the first
// failure, so every later task of the pool stays pending forever while the other worker
// idles, and the pool's destructor would wait for them forever.
TEST(AdversaryRing, ForgedRequestTail_DoesNotStallThePool) {
    process_pool pool({.workers = 2});
    temp_dir dir;
    const std::string stop = dir.path() + "/stop";
    // Sequential tasks go to the same (last used, idle) worker: push a ring's worth of
    // bytes through it so that its published head is past one capacity.
    // (Each small enough to travel in the ring, not out of band.)
    for (int i = 0; i < 12; ++i) {
        EXPECT_EQ(pool.submit(consume, std::vector<char>(100'000, 'x')).get(), 100'000u);
    }
    EXPECT_EQ(pool.submit(fake_full_request_ring, stop).get(), 1);
    std::vector<procpool::future<int>> victims;
    for (int i = 0; i < 10; ++i) victims.push_back(pool.submit(add, i, 1));
    bool stalled = false;
    for (int i = 0; i < 10; ++i) {
        auto& f = victims[static_cast<std::size_t>(i)];
        if (!f.wait_for(60s)) {
            stalled = true;
            break;
        }
        EXPECT_EQ(f.get(), i + 1);
    }
    EXPECT_FALSE(stalled) << "tasks submitted after the hostile one never ran";
    std::ofstream(stop) << 1;
    if (stalled) kill_workers(pool);  // unstick it so the destructor can finish
    for (auto& f : victims) (void)f.wait_for(60s);
}

// A leftover thread that keeps writing the request ring's read index, in and out of range
// (found by an adversarial review): the parent, believing frames consumed, writes over
// ones the worker never read. When the worker is killed for it, a task whose frame was
// written over must fail, not be copied back out of the ring and run elsewhere on other
// bytes: with a worker that forges only its read index, no task that another worker ran
// may return a wrong value. (A task can also write its queued neighbours' frames
// directly: those tasks are its to corrupt, see "Trust boundaries".)
int forge_request_tail_in_a_loop(std::string stop, int seed) {
    auto* r = my_region();
    const std::uint64_t cap = r->ring_capacity;
    std::thread([r, cap, stop, seed] {
        std::uint64_t x = static_cast<std::uint64_t>(seed) * 0x9e3779b97f4a7c15ull + 1;
        for (unsigned i = 0;; ++i) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            auto& q = r->requests;
            const std::uint64_t h = q.head.load();
            std::uint64_t v = 0;
            switch (x % 5) {
                case 0:
                    v = x;
                    break;
                case 1:
                    v = h + 8;
                    break;
                case 2:
                    v = h > cap ? h - cap + 8 : 0;
                    break;
                case 3:
                    v = h;
                    break;
                default:
                    v = h > cap ? h - cap : 0;
                    break;
            }
            q.tail.store(v);
            if ((i & 1023) == 0 && exists(stop)) return;
        }
    }).detach();
    return static_cast<int>(getpid());
}

std::uint64_t tagged_sum(const std::vector<char>& v, int tag) {
    std::uint64_t s = static_cast<std::uint64_t>(tag) << 40;
    for (char c : v) s += static_cast<unsigned char>(c);
    return s;
}
std::vector<std::uint64_t> tagged_sum_and_pid(std::vector<char> v, int tag) {
    return {tagged_sum(v, tag), static_cast<std::uint64_t>(getpid())};
}

TEST(AdversaryRing, ForgedRequestTailInALoop_NoTaskElsewhereReturnsAWrongValue) {
    int wrong_elsewhere = 0;
    int hung = 0;
    for (int round = 0; round < 40 && hung == 0; ++round) {
        process_pool pool({.workers = 3});
        temp_dir dir;
        const std::string stop = dir.path() + "/stop";
        auto hostile = pool.submit(forge_request_tail_in_a_loop, stop, round);
        std::vector<procpool::future<std::vector<std::uint64_t>>> others;
        std::vector<std::uint64_t> want;
        for (int i = 0; i < 600; ++i) {
            std::vector<char> v(static_cast<std::size_t>((i * 7919) % 120'000),
                                static_cast<char>(i));
            want.push_back(tagged_sum(v, i));
            others.push_back(pool.submit(tagged_sum_and_pid, std::move(v), i));
        }
        int hostile_pid = -1;
        try {
            hostile_pid = hostile.get();
        } catch (const procpool::error&) {  // NOLINT(bugprone-empty-catch): killed for it
        }
        for (std::size_t i = 0; i < others.size(); ++i) {
            if (!others[i].wait_for(60s)) {
                ++hung;
                break;
            }
            try {
                const auto r = others[i].get();
                if (r[0] != want[i] && static_cast<int>(r[1]) != hostile_pid) ++wrong_elsewhere;
            } catch (const procpool::error&) {  // NOLINT(bugprone-empty-catch)
                // Failing is allowed: the task was sent to the hostile worker.
            }
        }
        std::ofstream(stop) << 1;
        if (hung != 0) kill_workers(pool);
    }
    EXPECT_EQ(hung, 0) << "a task was never resolved";
    EXPECT_EQ(wrong_elsewhere, 0) << "tasks run by other workers returned wrong values";
}

// ---- 3. a file-backed shared block in a result ------------------------------------------

// Returns a file-backed array of `n` ints; the worker keeps the file (and could keep a
// descriptor), so it can shrink it under the parent's mapping at any time.
procpool::mapped_file_array<int> make_file_array(std::string path, int n) {
    auto a = procpool::mapped_file_array<int>::create(path, static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) a.data()[i] = i;
    return a;
}

int truncate_file(std::string path) {
    return ::truncate(path.c_str(), 0);
}

// Failed before the fix: the parent dies with SIGBUS. check_mappable() accepts any regular file
// that is large enough at the time of the check and demands seals of memfds only; the file the
// worker sent is mapped MAP_SHARED in the parent, and the next task on that worker (or a
// child it left behind) truncates it: the parent's next read of the array faults.
TEST(AdversaryShmDeathTest, FileBackedResultTruncatedByATask_DoesNotKillTheParent) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    temp_dir dir;
    const std::string path = dir.path() + "/array";
    EXPECT_EXIT(
        {
            {
                process_pool pool({.workers = 1});
                try {
                    auto a = pool.submit(make_file_array, path, 1 << 16).get();
                    (void)pool.submit(truncate_file, path).get();
                    long sum = 0;
                    for (std::size_t i = 0; i < a.size(); i += 1024) {
                        sum += static_cast<volatile const int*>(a.data())[i];
                    }
                    std::printf("sum %ld\n", sum);
                } catch (const procpool::error&) {
                    // refusing such a result (protocol_error) is a fix too
                }
            }
            std::exit(0);
        },
        ::testing::ExitedWithCode(0), "");
}

// ---- 4. descriptors in flight are counted per user -------------------------------------

// A hostile task that stuffs its control socket with descriptors the parent never reads
// (nothing announces them), until the kernel refuses more: the count of descriptors in
// flight on unix sockets is per *user*, and a sender over RLIMIT_NOFILE gets ETOOMANYREFS
// (unless privileged). Then it waits until `stop` exists.
int flood_descriptors(std::string dir) {
    const int sock = my_fd("socket:");
    int fds[250];
    for (int& f : fds) f = 0;
    const char byte = 'x';
    long sent = 0;
    for (;;) {
        iovec iov{const_cast<char*>(&byte), 1};
        alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof fds)] = {};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl;
        msg.msg_controllen = sizeof ctrl;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof fds);
        std::memcpy(CMSG_DATA(c), fds, sizeof fds);
        if (sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
            std::ofstream(dir + "/errno") << errno;
            break;
        }
        sent += 250;
    }
    std::ofstream(dir + "/started") << sent;
    while (!exists(dir + "/stop")) std::this_thread::sleep_for(1ms);
    return 1;
}

long sum_shared(procpool::shared_array<int> a) {
    long s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += a.data()[i];
    return s;
}

// The death-test body of DescriptorsInFlight_...: exits 0 if the innocent tasks ran.
[[noreturn]] void flood_descriptors_scenario() {
    const rlimit rl{512, 512};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) std::exit(3);
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) std::exit(4);
    int code = 0;
    {
        process_pool pool({.workers = 2, .start = procpool::start_method::fork});
        temp_dir dir;
        file_gate gate;
        // An innocent task runs on worker 0 ...
        auto innocent = pool.submit(file_gate::wait_then_return, gate.path(), 7);
        gate.wait_started();
        // ... the hostile one on worker 1 (the least loaded).
        auto hostile = pool.submit(flood_descriptors, dir.path());
        while (!exists(dir.path() + "/started")) std::this_thread::sleep_for(1ms);
        // A task with a shared array goes to worker 0 (equally loaded, first): the parent
        // must send it a descriptor.
        procpool::shared_array<int> a(1000);
        for (int i = 0; i < 1000; ++i) a.data()[i] = 1;
        auto victim = pool.submit(sum_shared, a);
        gate.open();
        try {
            if (innocent.get() != 7) code = 5;
        } catch (const procpool::error& e) {
            std::fprintf(stderr, "innocent task failed: %s\n", e.what());
            code = 6;
        }
        try {
            if (victim.get() != 1000) code = 7;
        } catch (const procpool::error& e) {
            std::fprintf(stderr, "victim failed: %s\n", e.what());
            code = 8;
        }
        std::ofstream(dir.path() + "/stop") << 1;
        (void)hostile.wait_for(60s);
    }
    std::exit(code);
}

// Fails: the parent's sendmsg of the victim's shared-array descriptor to worker 0 fails
// with ETOOMANYREFS (the count of descriptors in flight is per user, and the hostile worker
// of the same user pushed it over RLIMIT_NOFILE); send() takes that for a worker that
// stopped reading and kills worker 0, so the innocent task running there fails with
// worker_died; replacements fail the same way, and after three the pool declares itself
// broken ("worker processes die before running any task"). Root and CAP_SYS_RESOURCE are
// exempt from the limit, so the child drops to uid 65534.
// Known limitation, not fixed: the kernel's count is per user, so the parent cannot tell
// which worker exhausted it; the destination worker is killed (its error names the
// errno). Root and CAP_SYS_RESOURCE are exempt. See docs/architecture.md, trust boundaries.
TEST(AdversaryShmDeathTest, DISABLED_DescriptorsInFlight_FloodedByOneWorker_DoNotFailOthersTasks) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(flood_descriptors_scenario(), ::testing::ExitedWithCode(0), "");
}

// ---- 5. a pool destroyed while threads wait on its futures -------------------------------

// Failed before the fix (under -DPROCPOOL_SANITIZE=address; in a release build it is a silent write
// to freed memory): heap-use-after-free in process_pool::impl::help_wait. A waiting thread leaves
// help_wait by `helpers.fetch_sub(1) == 1` and only then calls lock_draining(),
// ask_workers_to_wake_us(), completions_waiting() and maybe drain_all()/wake_supervisor()
// on the pool; stop_workers() waits for `helpers == 0`, which that decrement already
// satisfied, so ~process_pool frees the impl (and unmaps the regions) under the thread.
// (state_base::wait and state_base::cancel have a smaller window of the same kind: between
// their is_done() check and the call through hook_.)
// Seen about once in 270 rounds with two `yes` loads on two cores: hence 300 rounds.
TEST(AdversaryLifetime, PoolDestroyedWhileThreadsWaitOnItsFutures) {
    for (int round = 0; round < 300; ++round) {
        std::vector<procpool::future<int>> fs;
        std::vector<std::thread> waiters;
        std::atomic<int> ok{0};
        {
            process_pool pool({.workers = 2});
            for (int i = 0; i < 64; ++i) fs.push_back(pool.submit(add, i, 1));
            for (int k = 0; k < 8; ++k) {
                waiters.emplace_back([&fs, &ok, k] {
                    for (int i = k; i < 64; i += 8) {
                        if (fs[static_cast<std::size_t>(i)].get() == i + 1) ++ok;
                    }
                });
            }
        }  // the destructor runs while the waiters are inside get()
        for (auto& t : waiters) t.join();
        EXPECT_EQ(ok.load(), 64);
    }
}

// ---- 5b. a serializer that submits ------------------------------------------------------

int identity(int x) {
    return x;
}

process_pool* inner_pool = nullptr;

// Its save() submits to another pool, and waits for that task, while the outer submit is
// still encoding its arguments into the thread's encoding buffer.
struct submits_while_saved {
    int v = 0;
    template <class Archive>
    void save(Archive& ar) const {
        if (inner_pool->submit(identity, v).get() != v) throw std::runtime_error("inner task");
        ar(v);
    }
    template <class Archive>
    void load(Archive& ar) {
        ar(v);
    }
};

std::string joined(std::string a, submits_while_saved m, std::string b) {
    return a + "|" + std::to_string(m.v) + "|" + b;
}

// The inner submit encoded into the same buffer, clearing what the outer one had written:
// the task failed with "corrupt input" (or, with other sizes, ran on wrong arguments).
TEST(AdversaryNestedSubmit, ASerializerThatSubmits_LeavesTheOuterArgumentsIntact) {
    process_pool inner({.workers = 1});
    process_pool outer({.workers = 1});
    inner_pool = &inner;
    for (int i = 0; i < 20; ++i) {
        auto f = outer.submit(joined, std::string("left-argument"), submits_while_saved{i},
                              std::string("right"));
        EXPECT_EQ(f.get(), "left-argument|" + std::to_string(i) + "|right");
    }
    inner_pool = nullptr;
}

// ---- 6. pools used after main returned ---------------------------------------------

// Tiny tasks with callbacks, waited for one by one: the waiting thread drains most
// completions itself and holds their callbacks back in its per-thread queue until it lets
// go of the pool's lock. With `then_shut_down`, shuts the pool down, which waits for the
// callbacks, and returns how many ran.
int tiny_tasks_with_callbacks(process_pool& p, bool then_shut_down) {
    auto ran = std::make_shared<std::atomic<int>>(0);
    for (int i = 0; i < 200; ++i) {
        auto f = p.submit(add, i, 1);
        f.on_done([ran] { ran->fetch_add(1); });
        if (f.get() != i + 1) return -1;
    }
    if (then_shut_down) p.shutdown({.wait = true});
    return ran->load();
}

// Submits, waits and cancels through pools from its destructor. Static, constructed after
// the pools: destroyed before them, after main returned, when the main thread's
// thread_local objects (procpool's encoding buffer and cancel slot among them) are gone.
struct uses_pools_at_exit {
    process_pool* pool;
    procpool::thread_pool* threads;
    uses_pools_at_exit(process_pool* p, procpool::thread_pool* t) : pool(p), threads(t) {}
    uses_pools_at_exit(const uses_pools_at_exit&) = delete;
    uses_pools_at_exit& operator=(const uses_pools_at_exit&) = delete;
    ~uses_pools_at_exit() {
        const int v = pool->submit(add, 40, 9).get();
        auto slow = pool->submit(sleep_then, 60'000, 1);
        const bool cancelled = slow.cancel();
        slow.wait();
        auto t = threads->submit([] { return 7; });
        const int w = t.get();
        std::fprintf(stderr, "at exit: %d %d %d %d %d\n", v, cancelled ? 1 : 0,
                     slow.cancelled() ? 1 : 0, w, tiny_tasks_with_callbacks(*pool, true));
    }
};

[[noreturn]] void use_pools_then_exit() {
    static process_pool pool({.workers = 1});
    static procpool::thread_pool threads({.workers = 1});
    // The thread_local objects exist before the user below is constructed, so they are
    // destroyed before its destructor runs.
    static_cast<void>(pool.submit(add, 1, 2).get());
    auto c = pool.submit(sleep_then, 60'000, 1);
    static_cast<void>(c.cancel());
    static_cast<void>(threads.submit([] { return 1; }).get());
    // This thread's callback queue exists before the user below too.
    static_cast<void>(tiny_tasks_with_callbacks(pool, false));
    static uses_pools_at_exit user(&pool, &threads);
    std::exit(0);
}

// Failed before the fix under ASan: the submit wrote its arguments into the encoding
// buffer, a thread_local vector already destroyed (heap-use-after-free). Later the same
// with the queue in which a thread that drains completions holds their callbacks back.
TEST(AdversaryAtExitDeathTest, SubmitWaitCancelFromAStaticDestructor_AfterMain) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            use_pools_then_exit();
        },
        ::testing::ExitedWithCode(0), "at exit: 49 1 1 7 200");
}

// A thread's pthread key destructors run after its thread_local objects are destroyed.
// One that submits and waits on futures with callbacks makes the thread's encoding
// buffer, hazard slot and callback queue there, the first time this thread needs them;
// they must still be freed when the thread ends (under LeakSanitizer the child's exit
// status fails the test if they are not) and every callback must run.
pthread_key_t late_key;
std::atomic<int> late_callbacks{0};

void wait_with_callbacks_at_key_destruction(void* p) {
    auto* pool = static_cast<process_pool*>(p);
    for (int i = 0; i < 50; ++i) {
        auto f = pool->submit(add, i, 1);
        f.on_done([] { late_callbacks.fetch_add(1); });
        if (f.get() != i + 1) return;
    }
}

[[noreturn]] void use_a_pool_in_a_key_destructor_then_exit() {
    process_pool pool({.workers = 1});
    if (pthread_key_create(&late_key, wait_with_callbacks_at_key_destruction) != 0) std::exit(3);
    std::thread t([&pool] { pthread_setspecific(late_key, &pool); });
    t.join();
    pool.shutdown({.wait = true});
    std::fprintf(stderr, "callbacks run: %d\n", late_callbacks.load());
    std::exit(0);
}

TEST(AdversaryAtExitDeathTest, FuturesWaitedForInAThreadsKeyDestructor_LeakNothing) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
            use_a_pool_in_a_key_destructor_then_exit();
        },
        ::testing::ExitedWithCode(0), "callbacks run: 50");
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
