// The process pool's supervisor: one thread that owns worker processes, resolves
// futures from their completion rings, and handles deaths, deadlines and cancellation.
#include "procpool/process_pool.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
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

namespace procpool {

namespace {

using detail::process_task_base;
using detail::run_status;
using process::now_ns;

constexpr std::uint32_t ring_capacity = 1u << 20;
// How much queued work (in expected run time) a worker may hold: deep enough that tiny
// tasks never leave a worker idle, shallow enough that long tasks stay balanced.
constexpr std::int64_t window_ns = 2'000'000;
constexpr std::int64_t max_window = 4096;

// Held for a few instructions by submitters and the supervisor; a sleeping mutex would
// cost a cross-core wake-up whenever the two meet.
class spin_mutex {
  public:
    void lock() noexcept {
        while (flag_.exchange(true, std::memory_order_acquire)) {
            while (flag_.load(std::memory_order_relaxed)) detail::cpu_yield();
        }
    }
    void unlock() noexcept { flag_.store(false, std::memory_order_release); }

  private:
    std::atomic<bool> flag_{false};
};

// Intrusive FIFO of tasks through process_task_base::link.
struct task_list {
    process_task_base* head = nullptr;
    process_task_base* tail = nullptr;
    std::size_t size = 0;

    void push_back(process_task_base* t) noexcept {
        t->link = nullptr;
        if (tail != nullptr) {
            tail->link = t;
        } else {
            head = t;
        }
        tail = t;
        ++size;
    }
    void push_front(process_task_base* t) noexcept {
        t->link = head;
        head = t;
        if (tail == nullptr) tail = t;
        ++size;
    }
    process_task_base* pop_front() noexcept {
        process_task_base* t = head;
        if (t == nullptr) return nullptr;
        head = t->link;
        if (head == nullptr) tail = nullptr;
        t->link = nullptr;
        --size;
        return t;
    }
    bool remove(process_task_base* t) noexcept {
        process_task_base* prev = nullptr;
        for (process_task_base* c = head; c != nullptr; prev = c, c = c->link) {
            if (c != t) continue;
            (prev != nullptr ? prev->link : head) = c->link;
            if (tail == c) tail = prev;
            c->link = nullptr;
            --size;
            return true;
        }
        return false;
    }
    bool empty() const noexcept { return head == nullptr; }
};

enum class kill_reason { none, timeout, cancel, channel_lost, malformed, send_failed };

// A worker that dies this many times before the task at the head of its queue is seen to
// start fails that task rather than requeueing it again (a task that crashes its worker
// before announcing its start must not loop through replacements forever).
constexpr std::uint32_t max_requeues = 3;

enum class slot_state { idle, spawning, alive, retiring, exiting };

struct worker_slot {
    int index = 0;
    slot_state state = slot_state::idle;
    pid_t pid = -1;
    std::uint64_t token = 0;
    ipc::unique_fd pidfd;
    ipc::unique_fd ctl;
    // The read end of the worker's own wake-up pipe (it holds the write end). Not an eventfd
    // shared by all workers: a task could read another worker's wake-ups from a shared one,
    // or make it blocking (O_NONBLOCK belongs to the open file, which all would share).
    ipc::unique_fd wake_rd;
    bool no_room = false;  // its request ring had no room in this dispatch round
    void* map = nullptr;
    std::size_t map_len = 0;
    ipc::worker_region* region = nullptr;
    ipc::ring req;
    ipc::ring cmp;
    task_list inflight;
    // When the task at the head of `inflight` became the head: the earliest it can have
    // started. Deadlines run from here, on the parent's clock alone, so a worker cannot
    // stretch its task's deadline and a timed task queued behind others is never missed.
    std::int64_t head_since = 0;
    std::uint32_t ctl_msgs = 0;  // messages sent on `ctl` for tasks not yet completed
    bool ready = false;          // the worker reported the end of its start-up
    bool server_gone = false;    // it died with its fork server: not a start-up failure
    // Its completion ring broke the protocol: not to be read again. Atomic, as drainers
    // read it without holding mu.
    std::atomic<bool> ring_bad{false};
    std::string violation;       // how the worker broke the protocol (kill_reason::malformed)
    std::uint64_t next_seq = 1;
    int sent = 0;
    kill_reason reason = kill_reason::none;
    std::uint64_t reason_seq = 0;
    bool hup = false;
    bool exit_sent = false;
    std::uint32_t gen = 0;  ///< incremented at each spawn
    std::int64_t spawned_ns = 0;
    std::unordered_set<std::uint64_t> cached;   ///< shared blocks the worker has mapped
    std::vector<std::uint64_t> forget_backlog;  ///< forget notices the ring had no room for
};

// epoll user data: kind, the slot's generation (so that an event still queued for a
// replaced worker is recognised as stale) and the slot index.
enum : std::uint64_t { ev_wake = 1, ev_server = 2, ev_ctl = 3, ev_pidfd = 4, ev_worker_wake = 5 };
constexpr std::uint64_t ev(std::uint64_t kind, int index, std::uint32_t gen = 0) {
    return (kind << 56) | (static_cast<std::uint64_t>(gen & 0xffffffu) << 32) |
           static_cast<std::uint32_t>(index);
}

std::string describe_status(int wstatus) {
    if (wstatus < 0) return "status unknown";
    if (WIFSIGNALED(wstatus)) {
        const char* name = sigabbrev_np(WTERMSIG(wstatus));
        return name != nullptr ? std::string("killed by SIG") + name
                               : "killed by signal " + std::to_string(WTERMSIG(wstatus));
    }
    return "exit code " + std::to_string(WEXITSTATUS(wstatus));
}

std::string describe_timeout(std::int64_t ns) {
    return "task ran longer than its timeout of " + std::to_string(ns / 1'000'000) +
           " ms; its worker was killed and replaced";
}

void resolve_error(process_task_base& t, std::exception_ptr e) noexcept {
    t.shared().set_exception(std::move(e));
}

// Appends `t` to a worker's queue, noting when a task becomes the head.
void push_inflight(worker_slot& w, process_task_base* t) noexcept {
    if (w.inflight.empty()) w.head_since = now_ns();
    w.inflight.push_back(t);
}

// Takes the head of a worker's queue; the next task becomes the head now.
process_task_base* pop_inflight(worker_slot& w) noexcept {
    process_task_base* t = w.inflight.pop_front();
    if (t != nullptr) {
        w.ctl_msgs -= std::min(w.ctl_msgs, t->ctl_msgs);
        t->ctl_msgs = 0;
    }
    w.head_since = now_ns();
    return t;
}

// Kills a worker's process group: whatever its tasks started must not outlive it.
void kill_worker_group(pid_t pid) noexcept {
    if (pid > 0) ::kill(-pid, SIGKILL);
}

}  // namespace

struct process_pool::impl final : detail::cancel_hook, detail::shm_listener {
    process_pool_options opts;
    start_method method = start_method::fork;
    std::vector<std::byte> config;
    std::int64_t default_timeout_ns = 0;

    spin_mutex mu;  // guards everything below except what only the supervisor touches
    std::vector<std::unique_ptr<worker_slot>> slots;
    task_list pending;
    bool closed = false;
    bool has_initializer = false;
    std::latch initial_spawn{1};  // counted down once the first workers are forked
    std::exception_ptr broken;    // set (under mu) when the pool cannot run tasks any more
    std::atomic<bool> is_broken{false};
    int failed_starts = 0;  // workers in a row that died before running anything
    int last_worker = 0;
    std::int64_t avg_task_ns = 1'000'000;  // EWMA of task run time
    std::uint64_t next_token = 1;

    // Tasks not yet resolved by the pool; shutdown waits for zero.
    std::atomic<std::uint64_t> outstanding{0};
    std::mutex idle_mu;
    std::condition_variable idle_cv;

    ipc::unique_fd epfd;
    ipc::unique_fd evfd;
    ipc::unique_fd server;  // fork-server channel (forkserver method)
    std::thread supervisor;
    // Completion rings have one consumer at a time: the supervisor or a thread waiting on
    // a future (help_wait), whoever holds `draining`.
    std::atomic<bool> draining{false};
    std::atomic<int> helpers{0};  // threads inside help_wait
    std::atomic<bool> supervisor_asleep{false};
    std::atomic<bool> stopping{false};
    std::atomic<bool> joined{false};
    std::mutex join_mu;

    // ---- setup ---------------------------------------------------------------------
    explicit impl(process_pool_options o) : opts(std::move(o)) {
        detail::check_workers(opts.workers, "process_pool", "processes");
        if (opts.max_tasks_per_child < 0) {
            throw invalid_argument("process_pool: max_tasks_per_child must be >= 0 (0: never)");
        }
        detail::check_timeout(opts.task_timeout, "process_pool_options::task_timeout");
        if (opts.task_timeout) default_timeout_ns = opts.task_timeout->count() * 1'000'000;
        method = opts.start;
        if (method == start_method::automatic) {
            method = initialized() ? start_method::forkserver : start_method::fork;
        }
        if (method == start_method::forkserver) {
            server = process::open_fork_server_channel();
            if (!server) {
                throw invalid_argument(
                    "process_pool: start_method::forkserver needs procpool::init(argc, argv) "
                    "at the top of main()");
            }
        } else if (opts.start == start_method::automatic && process::current_thread_count() > 1) {
            static std::once_flag warned;
            std::call_once(warned, [] {
                std::fprintf(stderr,
                             "procpool: warning: forking workers from a multi-threaded program; "
                             "a lock held by another thread stays locked in the workers. Call "
                             "procpool::init(argc, argv) at the top of main() to avoid this.\n");
            });
        }
        process::worker_config cfg;
        cfg.anchor = reinterpret_cast<std::uintptr_t>(&detail::code_anchor);
        cfg.ring_capacity = ring_capacity;
        cfg.max_tasks = opts.max_tasks_per_child;
        cfg.memory_limit = opts.memory_limit;
        cfg.shared_threshold = opts.shared_memory_threshold;
        cfg.env = opts.env;
        config = process::encode_config(cfg);

        epfd.reset(epoll_create1(EPOLL_CLOEXEC));
        evfd.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!epfd || !evfd) ipc::throw_errno("epoll/eventfd for process_pool");
        watch(evfd.get(), ev(ev_wake, 0), EPOLLIN);
        if (server) watch(server.get(), ev(ev_server, 0), EPOLLIN);
    }

    void set_initializer(std::uint64_t inv, std::uint64_t fn, const std::vector<std::byte>& args) {
        process::worker_config cfg = process::decode_config(config.data(), config.size());
        cfg.init_invoker = inv;
        cfg.init_fn = fn;
        cfg.init_args = args;
        config = process::encode_config(cfg);
        has_initializer = true;
    }

    void start() {
        if (config.size() > process::max_config_bytes) {
            throw invalid_argument(
                "process_pool: the workers' configuration (environment and initializer "
                "arguments) takes " +
                std::to_string(config.size()) + " bytes; at most " +
                std::to_string(process::max_config_bytes) +
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
        supervisor = std::thread([this] { supervise(); });
        detail::add_shm_listener(this);
        // As with the fork server, the workers exist (have pids) once the pool is made.
        initial_spawn.wait();
    }

    // The fork method's first workers, forked by the supervisor itself.
    void spawn_initial() {
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

    void watch(int fd, std::uint64_t data, std::uint32_t events) {
        epoll_event e{};
        e.events = events;
        e.data.u64 = data;
        if (epoll_ctl(epfd.get(), EPOLL_CTL_ADD, fd, &e) != 0) ipc::throw_errno("epoll_ctl");
    }
    void unwatch(int fd) noexcept { epoll_ctl(epfd.get(), EPOLL_CTL_DEL, fd, nullptr); }

    // Creates the slot's region and asks for a process. Called with mu held.
    void spawn(worker_slot& w) {
        ipc::unique_fd mem(memfd_create("procpool-worker", MFD_CLOEXEC));
        if (!mem) ipc::throw_errno("memfd_create");
        const std::size_t len = ipc::worker_region::mapping_size(ring_capacity);
        if (ftruncate(mem.get(), static_cast<off_t>(len)) != 0) ipc::throw_errno("ftruncate");
        void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, mem.get(), 0);
        if (p == MAP_FAILED) ipc::throw_errno("mmap of a worker region");
        // Workers forked later (start_method::fork) must not inherit other workers' rings.
        madvise(p, len, MADV_DONTFORK);
        auto* region = ::new (p) ipc::worker_region();
        region->ring_capacity = ring_capacity;
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            munmap(p, len);
            ipc::throw_errno("socketpair for a worker");
        }
        ipc::unique_fd theirs(sv[1]);
        w.ctl.reset(sv[0]);
        w.map = p;
        w.map_len = len;
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
        w.state = slot_state::spawning;
        w.spawned_ns = now_ns();
        ++w.gen;
        watch(w.ctl.get(), ev(ev_ctl, w.index, w.gen), EPOLLRDHUP);
        int wake[2];
        if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) ipc::throw_errno("pipe for a worker");
        w.wake_rd.reset(wake[0]);
        ipc::unique_fd wake_wr(wake[1]);
        watch(w.wake_rd.get(), ev(ev_worker_wake, w.index, w.gen), EPOLLIN);

        if (method == start_method::forkserver) {
            w.token = next_token++;
            std::vector<std::byte> msg(sizeof(process::fs_record) + config.size());
            const process::fs_record r{process::fs_spawn, 0, w.token};
            std::memcpy(msg.data(), &r, sizeof r);
            std::memcpy(msg.data() + sizeof r, config.data(), config.size());
            const int fds[3] = {mem.get(), theirs.get(), wake_wr.get()};
            if (!ipc::send_with_fds(server.get(), msg.data(), msg.size(), fds)) {
                // The server is gone: its channel reports the hang-up next, and
                // server_lost replaces this slot's worker along with the others.
                if (errno == EPIPE || errno == ECONNRESET) return;
                ipc::throw_errno("spawn request to the procpool fork server");
            }
            return;
        }
        const pid_t parent = getpid();
        const pid_t pid = fork();
        if (pid < 0) ipc::throw_errno("fork of a worker process");
        if (pid == 0) {
            process::worker_config cfg;
            try {
                cfg = process::decode_config(config.data(), config.size());
            } catch (...) {
                process::startup_failed(theirs.get(), process::startup_step::bad_config, 0);
            }
            process::run_worker(mem.get(), theirs.get(), wake_wr.get(), parent, cfg);
        }
        adopt_pid(w, pid);
        if (w.pidfd) watch(w.pidfd.get(), ev(ev_pidfd, w.index, w.gen), EPOLLIN);
    }

    void adopt_pid(worker_slot& w, pid_t pid) {
        w.pid = pid;
        w.pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
        if (w.state == slot_state::spawning) w.state = slot_state::alive;
        if (w.reason != kill_reason::none) kill_worker(w, w.reason, w.reason_seq);
    }

    // ---- dispatch --------------------------------------------------------------------
    std::int64_t window() const noexcept {
        const std::int64_t n = window_ns / std::max<std::int64_t>(avg_task_ns, 1);
        return std::clamp<std::int64_t>(n, 2, max_window);
    }

    bool usable(const worker_slot& w) const noexcept {
        return (w.state == slot_state::spawning || w.state == slot_state::alive) &&
               w.reason == kill_reason::none && !w.no_room;
    }

    // Picks a worker with room: the last one used if it has room (so sequential calls
    // keep the others asleep), else the least loaded. Called with mu held.
    worker_slot* pick() noexcept {
        const auto cap = static_cast<std::size_t>(window());
        worker_slot* last = slots[static_cast<std::size_t>(last_worker)].get();
        if (usable(*last) && last->inflight.size < cap && last->inflight.empty()) return last;
        worker_slot* best = nullptr;
        for (auto& s : slots) {
            if (!usable(*s) || s->inflight.size >= cap) continue;
            if (best == nullptr || s->inflight.size < best->inflight.size) best = s.get();
        }
        return best;
    }

    // Writes a task into a worker's request ring. False if it does not fit now.
    bool send(worker_slot& w, process_task_base& t, const std::byte* args, std::size_t n) {
        flush_forgets(w);
        const bool oob = sizeof(process::task_header) + n > w.req.max_payload();
        const std::size_t len = sizeof(process::task_header) + (oob ? sizeof(std::uint64_t) : n);
        std::vector<detail::shm_ref> fresh;
        for (const auto& b : t.attachments) {
            if (!w.cached.contains(b->id())) fresh.push_back(b);
        }
        // Messages on the control socket wait there until the worker starts their task.
        // Bounding them keeps the socket's buffer from filling, so that sends never block:
        // a send that would block means a worker that stopped reading, and is killed.
        const std::uint32_t msgs = static_cast<std::uint32_t>(fresh.size()) + (oob ? 1u : 0u);
        if (w.ctl_msgs != 0 && w.ctl_msgs + msgs > process::max_attachments) return false;
        std::byte* dst = w.req.try_reserve(static_cast<std::uint32_t>(len));
        if (dst == nullptr) {
            if (w.req.corrupt()) violation_locked(w, "it overwrote its request ring's read index");
            // A worker with no task in flight has consumed every task frame; only forget
            // notices (16 bytes each) can wait in its ring. Half a ring of them is not
            // plausible: its read index was held back on purpose.
            if (w.inflight.empty() && w.req.unconsumed() > ring_capacity / 2) {
                violation_locked(w, "its request ring stays full while it runs nothing");
            }
            return false;
        }
        // Descriptors go on the control socket before the frame is published, so the
        // worker finds them there when it reads the frame.
        if (!fresh.empty() && !process::send_attachments(w.ctl.get(), fresh, true)) {
            send_failed(w, errno);
            return false;
        }
        for (const auto& b : fresh) w.cached.insert(b->id());
        if (oob) {
            if (t.parked.empty()) t.parked.assign(args, args + n);  // kept for requeue
            if (!send_oob(w, args, n)) {
                send_failed(w, errno);
                return false;
            }
            const std::uint64_t size = n;
            std::memcpy(dst + sizeof(process::task_header), &size, sizeof size);
        } else if (n != 0) {
            std::memcpy(dst + sizeof(process::task_header), args, n);
        }
        const process::task_header th{w.next_seq, t.invoker, t.fn,
                                      static_cast<std::uint32_t>(fresh.size()), 0};
        std::memcpy(dst, &th, sizeof th);
        t.payload_pos = w.req.commit(static_cast<std::uint32_t>(len),
                                     oob ? process::msg_task_oob : process::msg_task);
        t.payload_len = static_cast<std::uint32_t>(len);
        t.seq = w.next_seq++;
        t.worker = w.index;
        t.ctl_msgs = msgs;
        w.ctl_msgs += msgs;
        if (!oob) {
            std::vector<std::byte>().swap(t.parked);
        }
        push_inflight(w, &t);
        // Its deadline runs from now if it is the head: the supervisor must not sleep
        // through it (the Dekker pair with supervise's second look, as in drain).
        if (t.timeout_ns > 0 && w.inflight.head == &t &&
            supervisor_asleep.load(std::memory_order_seq_cst)) {
            wake_supervisor();
        }
        ++w.sent;
        if (opts.max_tasks_per_child > 0 && w.sent >= opts.max_tasks_per_child &&
            w.state == slot_state::alive) {
            w.state = slot_state::retiring;
        }
        last_worker = w.index;
        wake_worker(w);
        return true;
    }

    // Tells the worker it may unmap shared blocks the parent has freed. Called with mu held.
    void flush_forgets(worker_slot& w) noexcept {
        while (!w.forget_backlog.empty()) {
            std::byte* p = w.req.try_reserve(sizeof(std::uint64_t));
            if (p == nullptr) return;
            std::memcpy(p, &w.forget_backlog.back(), sizeof(std::uint64_t));
            w.req.commit(sizeof(std::uint64_t), process::msg_forget);
            w.forget_backlog.pop_back();
        }
    }

    void forget_block(std::uint64_t id) noexcept override {
        std::lock_guard lock(mu);
        for (auto& s : slots) {
            if (s->region == nullptr || s->cached.erase(id) == 0) continue;
            s->forget_backlog.push_back(id);
            flush_forgets(*s);
            wake_worker(*s);
        }
    }

    bool send_oob(worker_slot& w, const std::byte* args, std::size_t n) {
        ipc::unique_fd fd(memfd_create("procpool-args", MFD_CLOEXEC));
        if (!fd || ftruncate(fd.get(), static_cast<off_t>(n)) != 0) return false;
        std::size_t off = 0;
        while (off < n) {
            ssize_t k = pwrite(fd.get(), args + off, n - off, static_cast<off_t>(off));
            if (k <= 0) return false;
            off += static_cast<std::size_t>(k);
        }
        const char tag = 'A';
        const int f = fd.get();
        return ipc::send_with_fds(w.ctl.get(), &tag, 1, std::span<const int>(&f, 1), true);
    }

    static void wake_worker(worker_slot& w) noexcept {
        auto* c = w.req.ctl();
        if (c->consumer_sleeping.load(std::memory_order_seq_cst) != 0 &&
            c->consumer_sleeping.exchange(0, std::memory_order_acq_rel) != 0) {
            c->data_futex.fetch_add(1, std::memory_order_release);
            detail::futex_wake(&c->data_futex, 1, true);
        }
    }

    // Parks or sends a new task. Called with mu held.
    void place(process_task_base& t, const std::byte* args, std::size_t n) {
        if (pending.empty()) {
            if (worker_slot* w = pick(); w != nullptr && send(*w, t, args, n)) return;
        }
        if (t.parked.empty() && n != 0) t.parked.assign(args, args + n);
        t.worker = -1;
        pending.push_back(&t);
    }

    // Moves parked tasks into workers with room. A worker whose ring has no room is
    // passed over for the rest of the round, so one slow (or hostile) worker does not
    // hold back the others. Called with mu held.
    void dispatch_pending() {
        while (!pending.empty()) {
            worker_slot* w = pick();
            if (w == nullptr) break;
            // Off the pending list first: send() links the task into the worker's list.
            process_task_base* t = pending.pop_front();
            std::vector<std::byte> args = std::move(t->parked);
            t->parked.clear();
            if (!send(*w, *t, args.data(), args.size())) {
                t->parked = std::move(args);
                pending.push_front(t);
                w->no_room = true;
            }
        }
        for (auto& s : slots) s->no_room = false;
    }

    void enqueue(process_task_base& t, const std::vector<std::byte>& args) {
        t.shared().set_cancel_hook(this);
        t.shared().add_ref();  // the pool's reference, dropped when it resolves the task
        std::exception_ptr fail;
        {
            std::lock_guard lock(mu);
            if (closed) {
                t.shared().release();
                throw pool_shut_down("process_pool: submit after shutdown(); create a new pool");
            }
            outstanding.fetch_add(1, std::memory_order_relaxed);
            if (t.timeout_ns < 0) t.timeout_ns = default_timeout_ns;
            if (broken) {
                fail = broken;
            } else {
                place(t, args.data(), args.size());
            }
        }
        if (fail) finish(t, [&] { resolve_error(t, fail); });
        // Only the supervisor enforces deadlines: it must not sleep through this one.
        if (t.timeout_ns > 0 && supervisor_asleep.load(std::memory_order_seq_cst)) {
            wake_supervisor();
        }
    }

    // Resolves `t` once (cancel and completion race) and drops the pool's reference.
    template <class Fn>
    void finish(process_task_base& t, Fn&& resolve) noexcept {
        // The task lets go of its shared arrays first, so that when its future resolves
        // the caller holds the last handle (and may count mappings, or free them).
        t.attachments.clear();
        if (t.begin_resolve()) resolve();
        t.shared().release();
        if (outstanding.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard lock(idle_mu);
            idle_cv.notify_all();
        }
    }

    // ---- completions -----------------------------------------------------------------
    // Resolves every completion waiting in `w`'s ring. One drainer at a time (`draining`).
    // Everything read from the ring or the control socket is checked: a worker that
    // breaks the protocol is killed, and the task it was running fails (see violation).
    bool drain(worker_slot& w) {
        if (w.ring_bad.load(std::memory_order_acquire)) return false;  // not to be read again
        bool any = false;
        ipc::frame_header h{};
        const std::byte* payload = nullptr;
        for (;;) {
            const ipc::peek_result r = w.cmp.peek(h, payload);
            if (r == ipc::peek_result::empty) break;
            if (r == ipc::peek_result::corrupt) {
                violation(w, "its completion ring's index or a frame length is out of bounds");
                break;
            }
            any = true;
            try {
                take_completion(w, h, payload);
            } catch (const process::protocol_violation& e) {
                violation(w, e.what());
                break;
            }
            w.cmp.pop(h);
            auto* c = w.cmp.ctl();
            if (c->producer_sleeping.load(std::memory_order_seq_cst) != 0 &&
                c->producer_sleeping.exchange(0, std::memory_order_acq_rel) != 0) {
                c->space_futex.fetch_add(1, std::memory_order_release);
                detail::futex_wake(&c->space_futex, 1, true);
            }
        }
        return any;
    }

    // A send on `w`'s control socket failed (it would block: the worker stopped reading;
    // or the system refused, e.g. too many descriptors in flight): the worker cannot be
    // given work any more, so it is killed and replaced. Called with mu held.
    void send_failed(worker_slot& w, int err) noexcept {
        try {
            w.violation =
                std::string("sending to its control socket failed: ") + std::strerror(err);
        } catch (...) {  // NOLINT(bugprone-empty-catch): the kind of error is enough
        }
        kill_worker(w, kill_reason::send_failed, 0);
    }

    // Marks `w` as having broken the protocol: it is killed, and the task at the head of
    // its queue (whose completion was due) fails with protocol_error.
    void violation(worker_slot& w, const std::string& what) noexcept {
        std::lock_guard lock(mu);
        violation_locked(w, what);
    }
    void violation_locked(worker_slot& w, const std::string& what) noexcept {
        if (w.reason == kill_reason::malformed) return;
        w.ring_bad.store(true, std::memory_order_release);
        try {
            w.violation = what;
        } catch (...) {  // NOLINT(bugprone-empty-catch): the kind of error is enough
        }
        const std::uint64_t seq = w.inflight.empty() ? 0 : w.inflight.head->seq;
        w.reason = kill_reason::none;  // malformed wins over any earlier reason
        kill_worker(w, kill_reason::malformed, seq);
    }

    // Checks and resolves one completion frame. Throws protocol_violation if it is bad.
    void take_completion(worker_slot& w, const ipc::frame_header& h, const std::byte* payload) {
        using process::protocol_violation;
        process::completion_header ch{};
        if (h.len < sizeof ch) throw protocol_violation("a completion shorter than its header");
        std::memcpy(&ch, payload, sizeof ch);
        const std::uint32_t raw = h.type & ~process::oob_flag;
        if (raw == static_cast<std::uint32_t>(run_status::init_failed)) {
            // Frames arrive in order and the ready frame precedes every task's, so a report
            // read after it comes from a task, not from the initializer.
            if (!has_initializer || w.ready || ch.seq != 0 || ch.nattach != 0 ||
                (h.type & process::oob_flag) != 0) {
                throw protocol_violation("a false report of a failed initializer");
            }
            std::lock_guard lock(mu);
            wire::reader in(payload + sizeof ch, h.len - sizeof ch);
            mark_broken(in);
            return;
        }
        if (raw == static_cast<std::uint32_t>(run_status::ready)) {
            if (w.ready || ch.seq != 0 || ch.nattach != 0 || h.type != raw) {
                throw protocol_violation("a second or malformed ready report");
            }
            std::lock_guard lock(mu);
            w.ready = true;
            failed_starts = 0;
            // Tasks sent while it started could not run before now: their clock starts now.
            w.head_since = now_ns();
            if (!w.inflight.empty() && w.inflight.head->timeout_ns > 0 &&
                supervisor_asleep.load(std::memory_order_seq_cst)) {
                wake_supervisor();
            }
            return;
        }
        if (raw < static_cast<std::uint32_t>(run_status::value) ||
            raw > static_cast<std::uint32_t>(run_status::cancelled)) {
            throw protocol_violation("a completion of unknown type " + std::to_string(h.type));
        }
        // Shared arrays in the result: their descriptors wait on the control socket.
        detail::shm_table received;
        std::exception_ptr attach_error;
        if (ch.nattach != 0) {
            try {
                process::receive_attachments(w.ctl.get(), ch.nattach, received, true);
            } catch (const protocol_violation&) {
                throw;
            } catch (...) {  // e.g. out of address space mapping it: the task's own error
                attach_error = std::current_exception();
            }
        }
        result_bytes bytes(payload + sizeof ch, h.len - sizeof ch);
        if ((h.type & process::oob_flag) != 0) receive_large_result(w, bytes);
        process_task_base* t = nullptr;
        {
            std::lock_guard lock(mu);
            if (w.inflight.empty() || w.inflight.head->seq != ch.seq) {
                if (broken) return;  // fail_all_broken emptied the queue meanwhile
                throw protocol_violation("a completion for a task it was not running");
            }
            t = pop_inflight(w);
            avg_task_ns =
                (avg_task_ns * 7 + std::clamp<std::int64_t>(ch.run_ns, 100, 1'000'000'000)) / 8;
            // The next task's deadline now runs: the supervisor must not sleep through it.
            if (!w.inflight.empty() && w.inflight.head->timeout_ns > 0 &&
                supervisor_asleep.load(std::memory_order_seq_cst)) {
                wake_supervisor();
            }
        }
        finish(*t, [&] {
            if (attach_error) {
                resolve_error(*t, attach_error);
                return;
            }
            detail::attachment_scope scope(nullptr, &received, opts.shared_memory_threshold);
            wire::reader in(bytes.data, bytes.size);
            t->decode(static_cast<run_status>(raw), in);
        });
    }

    // A result's bytes: in the ring, or in a memfd mapped for as long as this lives.
    struct result_bytes {
        result_bytes(const std::byte* p, std::size_t n) noexcept : data(p), size(n) {}
        ~result_bytes() {
            if (mapping != nullptr) munmap(mapping, size);
        }
        result_bytes(const result_bytes&) = delete;
        result_bytes& operator=(const result_bytes&) = delete;
        const std::byte* data;
        std::size_t size;
        void* mapping = nullptr;
    };

    // Maps a result too large for the ring: its size is in the frame, its memfd (sent
    // before the frame) on the control socket. Throws protocol_violation if either is bad.
    void receive_large_result(worker_slot& w, result_bytes& r) {
        using process::protocol_violation;
        std::uint64_t size = 0;
        if (r.size != sizeof size) throw protocol_violation("a bad large-result frame");
        std::memcpy(&size, r.data, sizeof size);
        int fd = -1;
        std::size_t nfds = 0;
        char tag = 0;
        if (ipc::recv_with_fds(w.ctl.get(), &tag, 1, std::span<int>(&fd, 1), nfds, true) != 1 ||
            nfds != 1 || tag != 'R') {
            if (nfds == 1) ::close(fd);
            throw protocol_violation("a large result's descriptor was missing");
        }
        ipc::unique_fd owned(fd);
        process::check_mappable(fd, size, true);
        r.data = nullptr;
        r.size = 0;
        if (size == 0) return;
        void* q = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        if (q == MAP_FAILED) {
            throw protocol_violation("a large result of " + std::to_string(size) +
                                     " bytes could not be mapped");
        }
        r.mapping = q;
        r.data = static_cast<const std::byte*>(q);
        r.size = size;
    }

    // The pool cannot run tasks any more: every task it holds or gets fails with `e`.
    // Called with mu held.
    void break_pool(std::exception_ptr e) noexcept {
        if (broken) return;
        broken = std::move(e);
        is_broken.store(true, std::memory_order_release);
    }

    // A worker initializer failed: the pool cannot run anything. Called with mu held.
    void mark_broken(wire::reader& in) {
        if (broken) return;
        std::string type = "unknown";
        std::string what;
        try {
            type = detail::decode_message(in);
            what = detail::decode_message(in);
        } catch (...) {
        }
        break_pool(std::make_exception_ptr(remote_exception(
            type, "the pool's worker initializer failed, so the pool cannot run tasks: " + what)));
    }

    // Fails every task the pool holds with the initializer's error. Supervisor thread.
    void fail_all_broken() {
        std::vector<process_task_base*> victims;
        std::exception_ptr err;
        {
            std::lock_guard lock(mu);
            err = broken;
            while (auto* t = pending.pop_front()) victims.push_back(t);
            for (auto& s : slots) {
                while (auto* t = s->inflight.pop_front()) victims.push_back(t);
            }
        }
        for (auto* t : victims) finish(*t, [&] { resolve_error(*t, err); });
    }

    // ---- deaths ------------------------------------------------------------------------
    void kill_worker(worker_slot& w, kill_reason why, std::uint64_t seq) noexcept {
        if (w.reason == kill_reason::none || why != kill_reason::channel_lost) {
            w.reason = why;
            w.reason_seq = seq;
        }
        if (w.pidfd) {
            syscall(SYS_pidfd_send_signal, w.pidfd.get(), SIGKILL, nullptr, 0);
        } else if (w.pid > 0 && method == start_method::fork) {
            ::kill(w.pid, SIGKILL);
        }
    }

    // The worker in `w` has exited with `wstatus`: settle its tasks, then replace it.
    void finalize(worker_slot& w, int wstatus) {
        lock_draining();  // its region is about to be unmapped
        struct unlock {
            impl* self;
            ~unlock() { self->unlock_draining(); }
        } guard{this};
        drain(w);
        std::vector<process_task_base*> requeue;
        std::vector<process_task_base*> settled;
        process_task_base* failed = nullptr;
        std::exception_ptr why;
        {
            std::lock_guard lock(mu);
            note_startup(w, wstatus);
            if (!w.inflight.empty()) {
                process_task_base* front = w.inflight.head;
                // Started if the worker said so, or if it was killed for this very task; a
                // task whose worker keeps dying before it is seen to start fails too.
                const bool started =
                    w.region->started_seq.load(std::memory_order_seq_cst) >= front->seq ||
                    (w.reason != kill_reason::none && w.reason_seq == front->seq) ||
                    (w.ready && ++front->requeues >= max_requeues);
                if (started) {
                    failed = pop_inflight(w);
                    why = death_error(w, *failed, wstatus);
                }
                while (auto* t = pop_inflight(w)) {
                    if (t->shared().is_done()) {  // cancelled while it sat in the ring
                        settled.push_back(t);
                        continue;
                    }
                    // Copy the arguments back out of the dead worker's ring.
                    if (t->parked.empty()) {
                        const std::byte* p =
                            w.req.at(t->payload_pos) + sizeof(process::task_header);
                        t->parked.assign(p, p + (t->payload_len - sizeof(process::task_header)));
                    }
                    t->worker = -1;
                    requeue.push_back(t);
                }
                for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
                    pending.push_front(*it);
                }
            }
            release_slot(w);
            if (!closed && !broken) {
                try {
                    spawn(w);
                } catch (const std::exception& e) {
                    release_slot(w);
                    break_pool(std::make_exception_ptr(error(
                        std::string("procpool: could not replace a dead worker: ") + e.what())));
                }
            }
            dispatch_pending();
        }
        if (failed != nullptr) finish(*failed, [&] { resolve_error(*failed, why); });
        for (auto* t : settled) finish(*t, [] {});
    }

    // A worker that dies before it is ready to serve, again and again (its initializer
    // exits, it cannot map its region, the memory limit is too small, it runs another
    // build of the program) would be replaced forever: after three in a row the pool gives
    // up with an error that says why. Counted by how far the worker got, not by time, so
    // that a slow start on a loaded machine is never mistaken for a failure or a success.
    // Called with mu held, before the slot is released.
    void note_startup(worker_slot& w, int wstatus) {
        // (A worker dying at start-up closes its control socket first: channel_lost.)
        // A failed send is the parent's observation, not the worker's start-up failing.
        if (w.ready || w.exit_sent || w.server_gone ||
            (w.reason != kill_reason::none && w.reason != kill_reason::channel_lost)) {
            return;
        }
        // Only for the message: the worker writes it, so it may lie, but never to effect.
        const std::uint32_t phase = w.region->phase.load(std::memory_order_seq_cst);
        std::string why = describe_status(wstatus);
        process::startup_report r{};
        if (w.ctl &&
            recv(w.ctl.get(), &r, sizeof r, MSG_DONTWAIT) == static_cast<ssize_t>(sizeof r) &&
            r.tag == process::startup_report_tag) {
            why = process::describe_startup(r);
        } else if (phase == ipc::phase_initializer) {
            why += " while running the pool's initializer";
        }
        if (opts.memory_limit != 0) {
            why += "; the pool's memory_limit of " + std::to_string(opts.memory_limit >> 20) +
                   " MiB may be too small for the program itself: raise it";
        }
        if (++failed_starts >= 3) {
            break_pool(std::make_exception_ptr(
                error("procpool: worker processes die before running any task (" +
                      std::to_string(failed_starts) + " in a row; last one: " + why +
                      "); the pool cannot run tasks")));
        }
    }

    std::exception_ptr death_error(const worker_slot& w, const process_task_base& t, int wstatus) {
        if (w.reason_seq == t.seq) {
            if (w.reason == kill_reason::timeout) {
                return std::make_exception_ptr(task_timeout(describe_timeout(t.timeout_ns)));
            }
            if (w.reason == kill_reason::cancel) {
                return std::make_exception_ptr(
                    task_cancelled("task cancelled while running; "
                                   "its worker was killed"));
            }
            if (w.reason == kill_reason::malformed) {
                return std::make_exception_ptr(protocol_error(
                    "worker sent a malformed message (" + w.violation +
                    "); it was killed and replaced (pid " + std::to_string(w.pid) + ")"));
            }
        }
        int sig = 0;
        int code = -1;
        if (wstatus >= 0 && WIFSIGNALED(wstatus)) sig = WTERMSIG(wstatus);
        if (wstatus >= 0 && WIFEXITED(wstatus)) code = WEXITSTATUS(wstatus);
        std::string detail = "pid " + std::to_string(w.pid);
        if (sig == SIGKILL && w.hup && w.reason == kill_reason::channel_lost) {
            detail += ", killed after it closed its control channel";
        }
        if (sig == SIGKILL && w.reason == kill_reason::send_failed) {
            detail += ", killed because " + w.violation;
        }
        return std::make_exception_ptr(worker_died(sig, code, detail));
    }

    // Unmaps and closes a dead worker's resources. Called with mu held.
    void release_slot(worker_slot& w) noexcept {
        if (w.ctl) {
            unwatch(w.ctl.get());
            w.ctl.reset();
        }
        if (w.pidfd) {
            unwatch(w.pidfd.get());
            w.pidfd.reset();
        }
        if (w.wake_rd) {
            unwatch(w.wake_rd.get());
            w.wake_rd.reset();
        }
        if (w.map != nullptr) munmap(w.map, w.map_len);
        w.map = nullptr;
        w.region = nullptr;
        w.state = slot_state::idle;
        w.pid = -1;
    }

    worker_slot* slot_by_pid(pid_t pid) noexcept {
        for (auto& s : slots) {
            if (s->pid == pid && s->state != slot_state::idle) return s.get();
        }
        return nullptr;
    }

    void on_server_message() {
        process::fs_record r{};
        for (;;) {
            ssize_t n = recv(server.get(), &r, sizeof r, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                server_lost();
                return;
            }
            if (n != static_cast<ssize_t>(sizeof r)) return;
            if (r.type == process::fs_spawned || r.type == process::fs_spawn_failed) {
                lock_draining();  // a failed slot's region is unmapped below
                std::lock_guard lock(mu);
                for (auto& s : slots) {
                    if (s->state == slot_state::idle || s->token != r.token || s->pid >= 0) {
                        continue;
                    }
                    if (r.type == process::fs_spawned) {
                        adopt_pid(*s, r.value);
                        continue;
                    }
                    // No process will ever serve this slot: fail its tasks with the pool.
                    while (auto* t = s->inflight.pop_front()) pending.push_back(t);
                    release_slot(*s);
                    break_pool(std::make_exception_ptr(
                        error(std::string("procpool: the fork server could not fork a worker: ") +
                              std::strerror(r.value))));
                }
                unlock_draining();
            } else if (r.type == process::fs_exited) {
                worker_slot* w = nullptr;
                {
                    std::lock_guard lock(mu);
                    w = slot_by_pid(static_cast<pid_t>(r.token));
                }
                if (w != nullptr) finalize(*w, r.value);
            }
        }
    }

    // The fork server is gone (killed from outside): its workers died with it. Their
    // running tasks fail (worker_died); the pool reconnects to a new fork server, started
    // again if needed, replaces the workers and keeps serving. Supervisor thread.
    void server_lost() {
        unwatch(server.get());
        std::exception_ptr reconnect_error;
        try {
            ipc::unique_fd fresh = process::open_fork_server_channel();
            if (!fresh) throw error("procpool::init() state is gone");
            server = std::move(fresh);
            watch(server.get(), ev(ev_server, 0), EPOLLIN);
        } catch (...) {
            reconnect_error = std::current_exception();
            server.reset();
        }
        std::vector<worker_slot*> dead;
        {
            std::lock_guard lock(mu);
            if (reconnect_error) closed = true;
            for (auto& s : slots) {
                if (s->state != slot_state::idle) {
                    s->reason = kill_reason::none;
                    s->hup = true;
                    s->server_gone = true;
                    dead.push_back(s.get());
                }
            }
        }
        // Workers die by SIGKILL when their fork server does (PR_SET_PDEATHSIG). The new
        // channel can be lost too, if it was handed to the old server as it was dying:
        // then this runs again, and the replacements are not counted as failed starts.
        for (auto* w : dead) finalize(*w, SIGKILL);
        if (!reconnect_error) return;
        std::fprintf(stderr,
                     "procpool: the fork server died and could not be restarted; "
                     "this pool cannot run tasks\n");
        std::vector<process_task_base*> left;
        {
            std::lock_guard lock(mu);
            while (auto* t = pending.pop_front()) left.push_back(t);
        }
        for (auto* t : left) {
            finish(*t, [&] {
                resolve_error(*t, std::make_exception_ptr(
                                      pool_shut_down("process_pool: its fork server died")));
            });
        }
    }

    void on_pidfd(int index) {
        worker_slot& w = *slots[static_cast<std::size_t>(index)];
        if (!w.pidfd) return;
        siginfo_t si{};
        int status = -1;
        // Exited but not reaped, its pid cannot be reused yet: kill what its tasks left in
        // its process group (the fork server does the same for its workers).
        if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(w.pidfd.get()), &si,
                   WEXITED | WNOHANG | WNOWAIT) == 0 &&
            si.si_pid != 0) {
            kill_worker_group(w.pid);
        }
        if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(w.pidfd.get()), &si,
                   WEXITED | WNOHANG) == 0 &&
            si.si_pid != 0) {
            status = si.si_code == CLD_EXITED ? W_EXITCODE(si.si_status, 0) : si.si_status;
        } else if (errno != ECHILD) {
            return;  // not exited yet
        }
        finalize(w, status);
    }

    void on_ctl_hangup(int index) {
        std::lock_guard lock(mu);
        worker_slot& w = *slots[static_cast<std::size_t>(index)];
        if (!w.ctl || w.hup) return;
        w.hup = true;
        unwatch(w.ctl.get());
        // The worker closed its end (a task closed the fd, or the process is exiting):
        // without its channel it cannot be steered, so make sure it is gone.
        const std::uint64_t running = w.region->started_seq.load(std::memory_order_acquire);
        if (!w.exit_sent) kill_worker(w, kill_reason::channel_lost, running);
    }

    // ---- deadlines and cancellation ---------------------------------------------------
    // Kills workers whose running task is past its deadline; returns the next deadline.
    // A task's clock starts when it becomes the head of its worker's queue (head_since),
    // the parent's own observation: nothing the worker writes can delay it.
    std::int64_t check_deadlines() {
        std::int64_t next = INT64_MAX;
        const std::int64_t now = now_ns();
        std::lock_guard lock(mu);
        for (auto& s : slots) {
            if (s->region == nullptr || !s->ready || s->inflight.empty() ||
                s->reason != kill_reason::none) {
                continue;
            }
            process_task_base* front = s->inflight.head;
            if (front->timeout_ns <= 0) continue;
            const std::int64_t deadline = s->head_since + front->timeout_ns;
            if (now >= deadline) {
                kill_worker(*s, kill_reason::timeout, front->seq);
            } else {
                next = std::min(next, deadline);
            }
        }
        return next;
    }

    bool cancel_running(detail::state_base& s) noexcept override {
        auto* t = dynamic_cast<process_task_base*>(&s);
        if (t == nullptr) return false;
        bool resolved_now = false;
        {
            std::lock_guard lock(mu);
            if (s.is_done()) return false;
            if (t->worker < 0) {
                if (!pending.remove(t)) return false;
                resolved_now = true;
            } else {
                worker_slot& w = *slots[static_cast<std::size_t>(t->worker)];
                if (w.region == nullptr) return false;
                auto* r = w.region;
                const std::uint32_t n = r->ncancels.load(std::memory_order_relaxed);
                if (n < ipc::worker_region::max_cancels) {
                    r->cancels[n].store(t->seq, std::memory_order_relaxed);
                    r->ncancels.store(n + 1, std::memory_order_seq_cst);
                }
                if (r->started_seq.load(std::memory_order_seq_cst) >= t->seq ||
                    n >= ipc::worker_region::max_cancels) {
                    // Running (or we could not mark it): stop it by killing its worker.
                    if (w.inflight.head != t) return false;
                    kill_worker(w, kill_reason::cancel, t->seq);
                }
            }
        }
        if (t->begin_resolve()) {
            s.set_cancelled("task cancelled");
        }
        if (resolved_now) {
            t->attachments.clear();
            t->shared().release();
            if (outstanding.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard lock(idle_mu);
                idle_cv.notify_all();
            }
        }
        return true;
    }

    // ---- waiting threads help -------------------------------------------------------
    // Drains every completion ring if no one else is; then refills windows from the
    // pending queue, since completions are what make room.
    bool drain_all() {
        if (draining.exchange(true, std::memory_order_acquire)) return false;
        bool any = false;
        for (auto& s : slots) {
            if (s->region != nullptr && drain(*s)) any = true;
        }
        draining.store(false, std::memory_order_release);
        if (any) {
            std::lock_guard lock(mu);
            if (!pending.empty()) dispatch_pending();
        }
        return any;
    }
    void lock_draining() noexcept {
        while (draining.exchange(true, std::memory_order_acquire)) detail::cpu_yield();
    }
    void unlock_draining() noexcept { draining.store(false, std::memory_order_release); }

    // Whether workers must write the eventfd after a completion. Cleared while some thread
    // waiting on a future drains the rings itself, so round trips cost no system call.
    void ask_workers_to_wake_us(std::uint32_t on) noexcept {
        for (auto& s : slots) {
            if (s->region != nullptr)
                s->region->parent_sleeping.store(on, std::memory_order_seq_cst);
        }
    }
    bool completions_waiting() const noexcept {
        for (auto& s : slots) {
            if (s->region != nullptr && !s->ring_bad.load(std::memory_order_relaxed) &&
                !s->cmp.empty()) {
                return true;
            }
        }
        return false;
    }

    bool help_wait(const detail::state_base& s) noexcept override {
        if (helpers.fetch_add(1, std::memory_order_seq_cst) == 0) {
            lock_draining();  // regions must not be unmapped under us
            ask_workers_to_wake_us(0);
            unlock_draining();
        }
        const bool done = detail::spin_until([&] {
            drain_all();
            return s.is_done();
        });
        if (helpers.fetch_sub(1, std::memory_order_seq_cst) == 1) {
            // Hand the rings back to the supervisor: re-arm the workers' wake-ups, then
            // take whatever completed before they were re-armed (Dekker with the worker).
            lock_draining();
            ask_workers_to_wake_us(1);
            const bool left = completions_waiting();
            unlock_draining();
            if (left && !drain_all()) wake_supervisor();
        }
        return done;
    }
    void wake_supervisor() noexcept {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto r = write(evfd.get(), &one, sizeof one);
    }

    // ---- supervisor loop -------------------------------------------------------------
    void supervise() {
        if (method == start_method::fork) {
            spawn_initial();
        } else {
            initial_spawn.count_down();
        }
        std::int64_t idle_since = now_ns();
        unsigned spins = 0;
        std::vector<epoll_event> events(16 + slots.size() * 2);
        for (;;) {
            bool progress = drain_all();
            if (progress && helpers.load(std::memory_order_relaxed) == 0) ask_workers_to_wake_us(0);
            if (is_broken.load(std::memory_order_acquire)) fail_all_broken();
            {
                std::lock_guard lock(mu);
                if (!pending.empty()) dispatch_pending();
            }
            check_deadlines();
            if (stopping.load(std::memory_order_acquire) && all_exited()) return;

            int timeout_ms = 0;
            const std::int64_t now = now_ns();
            if (progress) {
                idle_since = now;
                if ((++spins & 63) != 0) continue;  // poll events now and then while busy
            } else if (now - idle_since < detail::spin_budget.count() * 1000 &&
                       helpers.load(std::memory_order_relaxed) == 0) {
                detail::cpu_yield();
                if ((++spins & 15) != 0) continue;
            } else {
                // A task with a deadline submitted from now on wakes us (see enqueue);
                // one submitted before is seen by this second look (Dekker pair).
                supervisor_asleep.store(true, std::memory_order_seq_cst);
                const std::int64_t next_deadline = check_deadlines();
                timeout_ms = -1;
                if (next_deadline != INT64_MAX) {
                    timeout_ms = static_cast<int>(
                        std::clamp<std::int64_t>((next_deadline - now) / 1'000'000 + 1, 1, 1000));
                }
                if (stopping.load(std::memory_order_acquire)) timeout_ms = 10;
                // While threads waiting on futures drain the rings (help_wait), they own
                // the wake-up flags; otherwise workers must wake us through the eventfd.
                if (helpers.load(std::memory_order_seq_cst) == 0) {
                    ask_workers_to_wake_us(1);
                    if (completions_waiting()) continue;
                }
            }
            const int n =
                epoll_wait(epfd.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
            supervisor_asleep.store(false, std::memory_order_relaxed);
            if (timeout_ms != 0) idle_since = now_ns();
            for (int i = 0; i < n; ++i) handle_event(events[static_cast<std::size_t>(i)]);
        }
    }

    void handle_event(const epoll_event& e) {
        const std::uint64_t kind = e.data.u64 >> 56;
        const auto gen = static_cast<std::uint32_t>((e.data.u64 >> 32) & 0xffffffu);
        const int index = static_cast<int>(e.data.u64 & 0xffffffffu);
        if ((kind == ev_ctl || kind == ev_pidfd || kind == ev_worker_wake) &&
            (slots[static_cast<std::size_t>(index)]->gen & 0xffffffu) != gen) {
            return;  // for a worker already replaced
        }
        switch (kind) {
            case ev_wake: {
                std::uint64_t v = 0;
                [[maybe_unused]] auto r = read(evfd.get(), &v, sizeof v);
                break;
            }
            case ev_worker_wake: {
                // Empty it (bounded: a worker writing without end cannot hold us here;
                // the level-triggered epoll brings us back).
                char buf[256];
                const int fd = slots[static_cast<std::size_t>(index)]->wake_rd.get();
                for (int k = 0; k < 16 && read(fd, buf, sizeof buf) == sizeof buf; ++k) {
                }
                break;
            }
            case ev_server:
                on_server_message();
                break;
            case ev_ctl:
                on_ctl_hangup(index);
                break;
            case ev_pidfd:
                on_pidfd(index);
                break;
            default:
                break;
        }
    }

    bool all_exited() {
        std::lock_guard lock(mu);
        for (auto& s : slots) {
            if (s->state != slot_state::idle) return false;
        }
        return true;
    }

    // ---- shutdown ----------------------------------------------------------------------
    void close_and_cancel(bool cancel_pending) {
        std::vector<process_task_base*> cancelled;
        {
            std::lock_guard lock(mu);
            closed = true;
            if (cancel_pending) {
                while (auto* t = pending.pop_front()) cancelled.push_back(t);
                for (auto& s : slots) {
                    if (s->region != nullptr) {
                        s->region->skip_below.store(s->next_seq, std::memory_order_seq_cst);
                    }
                }
            }
        }
        for (auto* t : cancelled) {
            finish(*t, [&] { t->shared().set_cancelled("task cancelled: its pool shut down"); });
        }
    }

    void wait_idle() {
        std::unique_lock lock(idle_mu);
        idle_cv.wait(lock, [this] { return outstanding.load(std::memory_order_acquire) == 0; });
    }

    // Asks every worker to exit, waits until all are reaped, stops the supervisor.
    void stop_workers() {
        std::lock_guard jl(join_mu);
        if (joined) return;
        detail::remove_shm_listener(this);
        {
            std::lock_guard lock(mu);
            for (auto& s : slots) {
                if (s->region == nullptr || s->exit_sent) continue;
                s->exit_sent = true;
                if (std::byte* p = s->req.try_reserve(0)) {
                    (void)p;
                    s->req.commit(0, process::msg_exit);
                    wake_worker(*s);
                } else {
                    kill_worker(*s, kill_reason::none, 0);
                }
            }
        }
        stopping.store(true, std::memory_order_release);
        const std::uint64_t one = 1;
        [[maybe_unused]] auto r = write(evfd.get(), &one, sizeof one);
        if (supervisor.joinable()) supervisor.join();
        // A thread may still be returning from help_wait on a future that just resolved.
        while (helpers.load(std::memory_order_acquire) != 0) detail::cpu_yield();
        joined = true;
    }
};

process_pool::process_pool(process_pool_options opts) {
    const worker_initializer init = opts.initializer;
    if (opts.shared_memory_threshold == 0) {
        throw invalid_argument("process_pool: shared_memory_threshold must be > 0 bytes");
    }
    bulk_threshold_ = opts.shared_memory_threshold;
    impl_ = std::make_unique<impl>(std::move(opts));
    if (init) impl_->set_initializer(init.invoker_, init.fn_, init.args_);
    impl_->start();
}

process_pool::~process_pool() {
    try {
        shutdown({.wait = true});
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
    }
    // Every task is resolved; a thread that saw one unresolved may still be entering
    // help_wait or cancel_running on this pool.
    detail::cancel_hook::quiesce(impl_.get());
}

void process_pool::enqueue(detail::process_task_base& t, const std::vector<std::byte>& args) {
    impl_->enqueue(t, args);
}

void process_pool::shutdown(shutdown_options opts) {
    impl_->close_and_cancel(opts.cancel_pending);
    if (!opts.wait) return;
    impl_->wait_idle();
    impl_->stop_workers();
}

int process_pool::workers() const noexcept {
    return impl_->opts.workers;
}

std::vector<int> process_pool::worker_pids() const {
    std::lock_guard lock(impl_->mu);
    std::vector<int> pids;
    for (auto& s : impl_->slots) {
        if (s->pid > 0) pids.push_back(s->pid);
    }
    return pids;
}

std::size_t process_pool::auto_chunksize(std::size_t n) const noexcept {
    const std::size_t per = n / (static_cast<std::size_t>(impl_->opts.workers) * 4);
    return std::clamp<std::size_t>(per, 1, 16384);
}

}  // namespace procpool
