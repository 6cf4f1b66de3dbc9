// Start-up of the pool and of each worker process: configuration, the shared region
// and control socket, forking (directly or through the fork server).
#include "process/pool_core.hpp"
#include "process/spawn.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ipc/fd.hpp"
#include "ipc/ring.hpp"
#include "process/fork_server.hpp"
#include "process/protocol.hpp"
#include "procpool/detail/sync.hpp"

namespace procpool::process {

pool_core::pool_core(process_pool_options o) : opts(std::move(o)) {
    detail::check_workers(opts.workers, "process_pool", "processes");
    if (opts.max_tasks_per_child < 0) {
        throw invalid_argument("process_pool: max_tasks_per_child must be >= 0 (0: never)");
    }
    detail::check_timeout(opts.task_timeout, "process_pool_options::task_timeout");
    monitor = std::make_unique<trace::pool_monitor>(opts.name, opts.workers, opts.trace);
    if (opts.task_timeout) default_timeout_ns = opts.task_timeout->count() * 1'000'000;
    method = opts.start;
    if (method == start_method::automatic) {
        method = initialized() ? start_method::forkserver : start_method::fork;
    }
    if (method == start_method::forkserver) {
        fork_server_link link = open_fork_server_channel();
        server = std::move(link.channel);
        server_pidfd = std::move(link.pidfd);
        if (!server && is_worker_process()) {
            throw invalid_argument(
                "process_pool: start_method::forkserver is not available to a pool made "
                "inside a worker process (the fork server belongs to the program); use "
                "start_method::fork or automatic there");
        }
        if (!server) {
            throw invalid_argument(
                "process_pool: start_method::forkserver needs procpool::init(argc, argv) "
                "at the top of main()");
        }
    } else if (opts.start == start_method::automatic && current_thread_count() > 1) {
        static std::once_flag warned;
        std::call_once(warned, [] {
            std::fprintf(stderr,
                         "procpool: warning: forking workers from a multi-threaded program; "
                         "a lock held by another thread stays locked in the workers. %s\n",
                         is_worker_process()
                             ? "In a task, make the pool before the task starts threads."
                             : "Call procpool::init(argc, argv) at the top of main() to "
                               "avoid this.");
        });
    }
    worker_config cfg;
    cfg.build_id = remote::program_build_id();
    cfg.anchor = reinterpret_cast<std::uintptr_t>(&detail::code_anchor);
    cfg.ring_capacity = ring_capacity;
    cfg.max_tasks = opts.max_tasks_per_child;
    cfg.memory_limit = opts.memory_limit;
    cfg.shared_threshold = opts.shared_memory_threshold;
    cfg.env = opts.env;
    cfg.output_limit = opts.capture_output ? opts.output_limit : 0;
    config = encode_config(cfg);

    epfd.reset(epoll_create1(EPOLL_CLOEXEC));
    evfd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    lookfd.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!epfd || !evfd || !lookfd) ipc::throw_errno("epoll/eventfd/timerfd for process_pool");
    watch(evfd.get(), ev(ev_wake, 0), EPOLLIN);
    watch(lookfd.get(), ev(ev_look, 0), EPOLLIN);
    if (server) watch(server.get(), ev(ev_server, 0), EPOLLIN);
    if (server_pidfd) watch(server_pidfd.get(), ev(ev_server_exit, 0), EPOLLIN);
}

void pool_core::set_initializer(std::uint64_t inv, std::uint64_t fn,
                                const std::vector<std::byte>& args) {
    worker_config cfg = decode_config(config.data(), config.size());
    cfg.init_invoker = inv;
    cfg.init_fn = fn;
    cfg.init_args = args;
    config = encode_config(cfg);
    has_initializer = true;
}

void pool_core::start() {
    if (config.size() > max_config_bytes) {
        throw invalid_argument(
            "process_pool: the workers' configuration (environment and initializer "
            "arguments) takes " +
            std::to_string(config.size()) + " bytes; at most " + std::to_string(max_config_bytes) +
            " fit. Pass large data to tasks (or a shared_array) instead");
    }
    {
        std::lock_guard lock(mu);
        for (int i = 0; i < opts.workers; ++i) {
            slots.push_back(std::make_unique<worker_slot>());
            slots.back()->index = i;
            // The fork method forks on the supervisor thread (see supervise): a child's
            // PR_SET_PDEATHSIG follows the *thread* that forked it, and the supervisor
            // lives exactly as long as the workers, unlike the thread making the pool.
            if (method == start_method::forkserver) spawn(*slots.back());
        }
    }
    // The fork server was asked for every worker above: nothing to wait for. (Waiting for
    // the new thread to be scheduled cost the constructor up to a millisecond when both
    // CPUs were busy.)
    if (method == start_method::forkserver) initial_spawn.count_down();
    // Before the supervisor starts: with the fork method it forks while this thread goes
    // on, and nothing here may allocate then. A sanitizer's allocator does not hold its
    // locks across fork(), so a worker forked while this thread was inside malloc waited
    // for ever at its own first allocation (seen once in ~1000 runs under ASan).
    detail::add_shm_listener(this);
    try {
        supervisor = std::thread([this] { supervise(); });
    } catch (...) {
        detail::remove_shm_listener(this);
        throw;
    }
    // Named for `top -H` and /proc (15 characters at most); no allocation.
    pthread_setname_np(supervisor.native_handle(), "procpool-super");
    // The fork method's workers are forked by the supervisor: they exist (have pids) once
    // the pool is made, as a fork server's do once it has the requests.
    initial_spawn.wait();
}

// The fork method's first workers, forked by the supervisor itself.
void pool_core::spawn_initial() {
    struct done {
        std::latch& l;
        ~done() { l.count_down(); }
    } signal{initial_spawn};
    std::lock_guard lock(mu);
    for (auto& s : slots) {
        if (s->state != slot_state::idle || broken) continue;
        try {
            spawn(*s);
        } catch (const std::exception& e) {
            release_slot(*s);
            break_pool(std::make_exception_ptr(
                error(std::string("procpool: could not start a worker: ") + e.what())));
        }
    }
}

void pool_core::watch(int fd, std::uint64_t data, std::uint32_t events) {
    epoll_event e{};
    e.events = events;
    e.data.u64 = data;
    if (epoll_ctl(epfd.get(), EPOLL_CTL_ADD, fd, &e) != 0) ipc::throw_errno("epoll_ctl");
}

// Creates the slot's region and asks for a process. Called with mu held.
void pool_core::spawn(worker_slot& w) {
    ipc::unique_fd mem(memfd_create("procpool-worker", MFD_CLOEXEC));
    if (!mem) ipc::throw_errno("memfd_create");
    const std::size_t len = worker_region::mapping_size(ring_capacity);
    if (ftruncate(mem.get(), static_cast<off_t>(len)) != 0) ipc::throw_errno("ftruncate");
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
    if (p == MAP_FAILED) ipc::throw_errno("mmap of a worker region");
    // Workers forked later (start_method::fork) must not inherit other workers' rings.
    madvise(p, len, MADV_DONTFORK);
    auto* region = ::new (p) worker_region();
    region->ring_capacity = ring_capacity;
    // Before either side makes its view of the rings, which keeps a copy.
    region->requests.stamp_key = ipc::random_stamp_key();
    region->completions.stamp_key = ipc::random_stamp_key();
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        munmap(p, len);
        ipc::throw_errno("socketpair for a worker");
    }
    ipc::unique_fd theirs(sv[1]);
    w.ctl.reset(sv[0]);
    w.map = p;
    w.map_len = len;
    w.req_populated = 0;
    w.region = region;
    w.req = ipc::ring(&region->requests, region->request_data(), ring_capacity);
    w.cmp = ipc::ring(&region->completions, region->completion_data(), ring_capacity);
    w.next_seq = 1;
    w.head_since = 0;
    w.ctl_msgs = 0;
    w.ready = false;
    w.server_gone = false;
    w.ring_bad.store(false, std::memory_order_relaxed);
    w.violation.clear();
    w.sent = 0;
    w.reason = kill_reason::none;
    w.reason_seq = 0;
    w.hup = false;
    w.exit_sent = false;
    w.pid = -1;
    w.pidfd.reset();
    w.cached.clear();
    w.forget_backlog.clear();
    w.forget_bytes_since_task = 0;
    w.state = slot_state::spawning;
    w.spawned_ns = now_ns();
    ++w.gen;
    watch(w.ctl.get(), ev(ev_ctl, w.index, w.gen), EPOLLRDHUP);
    int wake[2];
    if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) ipc::throw_errno("pipe for a worker");
    w.wake_rd.reset(wake[0]);
    ipc::unique_fd wake_wr(wake[1]);
    watch(w.wake_rd.get(), ev(ev_worker_wake, w.index, w.gen), EPOLLIN);
    if (opts.capture_output) w.output = make_output_files();
    const int out = w.output ? w.output.out.get() : -1;
    const int err = w.output ? w.output.err.get() : -1;

    if (method == start_method::forkserver) {
        w.token = next_token++;
        std::vector<std::byte> msg(sizeof(fs_record) + config.size());
        const fs_record r{fs_spawn, 0, w.token};
        std::memcpy(msg.data(), &r, sizeof r);
        std::memcpy(msg.data() + sizeof r, config.data(), config.size());
        const int fds[5] = {mem.get(), theirs.get(), wake_wr.get(), out, err};
        if (!ipc::send_with_fds(server.get(), msg.data(), msg.size(),
                                std::span<const int>(fds, w.output ? 5 : 3))) {
            // The server is gone: its channel reports the hang-up next, and
            // server_lost replaces this slot's worker along with the others.
            if (errno == EPIPE || errno == ECONNRESET) return;
            ipc::throw_errno("spawn request to the procpool fork server");
        }
        return;
    }
    const pid_t pid = fork_worker({mem.get(), theirs.get(), wake_wr.get(), out, err},
                                  config.data(), config.size());
    if (pid < 0) ipc::throw_errno("fork of a worker process");
    adopt_pid(w, pid);
    if (w.pidfd) watch(w.pidfd.get(), ev(ev_pidfd, w.index, w.gen), EPOLLIN);
}

void pool_core::adopt_pid(worker_slot& w, pid_t pid) {
    w.pid = pid;
    monitor->worker_started(w.index, static_cast<int>(pid), w.gen > 1);
    w.pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
    if (w.state == slot_state::spawning) w.state = slot_state::alive;
    if (w.reason != kill_reason::none) kill_worker(w, w.reason, w.reason_seq);
}

}  // namespace procpool::process
