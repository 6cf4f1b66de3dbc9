// The process pool's shared state: the record of each worker, the queues, and the
// declaration of the engine whose parts live in pool_*.cpp, one file per responsibility:
//   pool_setup.cpp        start-up, spawning and replacing worker processes
//   pool_dispatch.cpp     placing tasks in workers' request rings
//   pool_completions.cpp  reading and checking results; threads waiting on futures help
//   pool_deaths.cpp       a worker's exit: settling its tasks, start-up failures
//   pool_supervisor.cpp   the supervisor thread: events, deadlines, cancellation
//   pool_output.cpp       captured output (capture_output): taking it, bounding it
//   process_pool.cpp      the public front and shutdown
#pragma once

#include <signal.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <latch>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ipc/fd.hpp"
#include "ipc/ring.hpp"
#include "process/output.hpp"
#include "process/protocol.hpp"
#include "process/region.hpp"
#include "procpool/detail/sync.hpp"
#include "procpool/process_pool.hpp"
#include "trace/monitor.hpp"

namespace procpool::process {
using detail::process_task_base;
using detail::run_status;

// A task's encoded arguments, in up to two pieces that are sent as one: `map` passes a
// chunk's elements straight from the caller's memory after a few bytes of header, so
// that they are copied once, into the ring, rather than into a buffer and then the ring.
struct task_args {
    std::span<const std::byte> head;
    std::span<const std::byte> body;

    std::size_t size() const noexcept { return head.size() + body.size(); }
    void copy_to(std::byte* dst) const noexcept {
        if (!head.empty()) std::memcpy(dst, head.data(), head.size());
        if (!body.empty()) std::memcpy(dst + head.size(), body.data(), body.size());
    }
    void assign_to(std::vector<std::byte>& v) const {
        v.clear();
        v.reserve(size());
        v.insert(v.end(), head.begin(), head.end());
        v.insert(v.end(), body.begin(), body.end());
    }
};

constexpr std::uint32_t ring_capacity = 1u << 19;
/// The most of a request ring that forget notices may hold unconsumed; the rest wait in
/// the slot's `forget_backlog`. With a quarter of the ring at most in notices, a task
/// frame of any size (at most max_payload, a quarter, plus a pad as large before it)
/// fits whenever the worker has nothing in flight: a worker that stopped reading (frozen,
/// stopped) still gets its next task, whose deadline then applies.
constexpr std::uint32_t forget_budget = ring_capacity / 4;
/// How soon an idle supervisor retries a forget backlog (a worker that reads its ring
/// makes room within microseconds). Doubled each time a whole wait passes with no notice
/// sent, up to forget_retry_max_ms: a worker that stays stopped costs a wake-up a second.
constexpr int forget_retry_ms = 10;
constexpr int forget_retry_max_ms = 1000;
// How long a thread waiting on a future sleeps on a worker's bell before it looks again
// anyway (help_wait), and the longest the supervisor sleeps: bounds what a task that
// writes its worker's wake-up words can delay (its own worker's results).
inline std::chrono::steady_clock::duration waiter_recheck = std::chrono::milliseconds(100);
// How much queued work (in expected run time) a worker may hold: deep enough that tiny
// tasks never leave a worker idle, shallow enough that long tasks stay balanced.
constexpr std::int64_t window_ns = 2'000'000;
constexpr std::int64_t max_window = 4096;
// Tasks this long on average will not end within a spin (spin_budget is 20 us): a thread
// waiting on one, and the supervisor between completions, sleep at once instead of
// spinning. On a machine with no idle core a spin takes that CPU from the workers.
constexpr std::int64_t long_task_ns = 200'000;

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
    // Threads seated on its region's waiters bell (arm_waiter to leave_waiter_seat): the
    // parent's own count, which the bell's count (in memory its tasks can write) is reset
    // to before the supervisor sleeps.
    int waiters_seated = 0;
    void* map = nullptr;
    std::size_t map_len = 0;
    std::size_t req_populated = 0;  // bytes of the request ring's data populated (prefault_until)
    worker_region* region = nullptr;
    // Each on a cache line of its own (alignas): `req` is the submitter's, `cmp` the
    // drainer's, and they run on different cores.
    ipc::ring req;
    alignas(64) ipc::ring cmp;
    alignas(64) task_list inflight;
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
    std::string violation;  // how the worker broke the protocol (kill_reason::malformed)
    std::uint64_t next_seq = 1;
    int sent = 0;
    kill_reason reason = kill_reason::none;
    std::uint64_t reason_seq = 0;
    bool hup = false;
    bool exit_sent = false;
    std::uint32_t gen = 0;  ///< incremented at each spawn
    std::int64_t spawned_ns = 0;
    std::unordered_set<std::uint64_t> cached;   ///< shared blocks the worker has mapped
    /// Mappings of the worker's result blocks, kept while it lives (receive_attachments'
    /// `kept`); touched only by whoever holds `draining`.
    detail::shm_table result_blocks;
    /// Forget notices not yet in the ring (beyond forget_budget); flushed by the next send
    /// to this worker or by the supervisor (retry_forgets).
    std::vector<std::uint64_t> forget_backlog;
    /// Bytes of the request ring published after its last task frame (forget notices and
    /// their pads): with no task in flight, the most the worker can have left unconsumed.
    std::uint64_t forget_bytes_since_task = 0;
    /// Its stdout and stderr files (capture_output). Replaced and closed only by the
    /// supervisor thread, which is what lets bound_output use them without `mu`.
    output_files output;
};

// epoll user data: kind, the slot's generation (so that an event still queued for a
// replaced worker is recognised as stale) and the slot index.
enum : std::uint64_t {
    ev_wake = 1,
    ev_server = 2,
    ev_ctl = 3,
    ev_pidfd = 4,
    ev_worker_wake = 5,
    ev_server_exit = 6,  // the fork server's pidfd
    ev_look = 7,         // lookfd: the supervisor's look after an idle pool got a task
};
constexpr std::uint64_t ev(std::uint64_t kind, int index, std::uint32_t gen = 0) {
    return (kind << 56) | (static_cast<std::uint64_t>(gen & 0xffffffu) << 32) |
           static_cast<std::uint32_t>(index);
}

inline std::string describe_status(int wstatus) {
    if (wstatus < 0) return "status unknown";
    if (WIFSIGNALED(wstatus)) {
        const char* name = sigabbrev_np(WTERMSIG(wstatus));
        return name != nullptr ? std::string("killed by SIG") + name
                               : "killed by signal " + std::to_string(WTERMSIG(wstatus));
    }
    return "exit code " + std::to_string(WEXITSTATUS(wstatus));
}

inline std::string describe_timeout(std::int64_t ns) {
    return "task ran longer than its timeout of " + std::to_string(ns / 1'000'000) +
           " ms; its worker was killed and replaced";
}

inline void resolve_error(process_task_base& t, std::exception_ptr e) noexcept {
    t.shared().set_exception(std::move(e));
}

// Appends `t` to a worker's queue, noting when a task becomes the head.
inline void push_inflight(worker_slot& w, process_task_base* t) noexcept {
    if (w.inflight.empty()) w.head_since = now_ns();
    w.inflight.push_back(t);
}

// Takes the head of a worker's queue; the next task becomes the head now.
inline process_task_base* pop_inflight(worker_slot& w) noexcept {
    process_task_base* t = w.inflight.pop_front();
    if (t != nullptr) {
        w.ctl_msgs -= std::min(w.ctl_msgs, t->ctl_msgs);
        t->ctl_msgs = 0;
    }
    w.head_since = now_ns();
    return t;
}

// Kills a worker's process group: whatever its tasks started must not outlive it.
inline void kill_worker_group(pid_t pid) noexcept {
    if (pid > 0) ::kill(-pid, SIGKILL);
}

/// The engine behind process_pool (see the file comment for where each part lives).
/// `mu` guards the shared fields; what only the supervisor touches is marked.
struct pool_core : detail::cancel_hook, detail::shm_listener {
    process_pool_options opts;
    start_method method = start_method::fork;
    std::vector<std::byte> config;
    std::int64_t default_timeout_ns = 0;

    // Fields that threads on different cores write (the lock, the counters, the drainers'
    // lock) each start a cache line of their own (alignas): sharing one made the submitter
    // and the drainer take turns at it even where they touch different fields.
    alignas(64) detail::spin_lock mu;  // guards everything below except what only the supervisor touches
    std::vector<std::unique_ptr<worker_slot>> slots;
    task_list pending;
    bool closed = false;
    bool has_initializer = false;
    std::latch initial_spawn{1};  // counted down once the first workers are forked
    std::exception_ptr broken;    // set (under mu) when the pool cannot run tasks any more
    std::atomic<bool> is_broken{false};
    // Set (seq_cst, under mu) once a task with a deadline is accepted, and never cleared:
    // until then check_deadlines has nothing to look for and skips `mu`, which the
    // supervisor would otherwise take on every turn of its busy loop, against submitters.
    std::atomic<bool> deadlines_used{false};
    int failed_starts = 0;  // workers in a row that died before running anything
    int last_worker = 0;
    // EWMA of task run time; 0 until the first completion, which sets it outright (a
    // pool's first tasks say more about its work than any guess would).
    // Atomic: threads waiting on futures read it without mu (help_drain).
    alignas(64) std::atomic<std::int64_t> avg_task_ns{0};
    std::uint64_t next_token = 1;

    // Tasks not yet resolved by the pool; shutdown waits for zero.
    alignas(64) std::atomic<std::uint64_t> outstanding{0};
    alignas(64) std::mutex idle_mu;
    std::condition_variable idle_cv;
    // Threads in wait_idle: the task that brings `outstanding` to zero takes idle_mu and
    // notifies only if there is one (seq_cst on both sides, a Dekker pair), so a pool that
    // goes idle after every task (one submit and get at a time) pays no lock for it.
    std::atomic<std::uint32_t> idle_waiters{0};
    ipc::unique_fd epfd;
    ipc::unique_fd evfd;
    // A timerfd armed by a submitter that gives an idle pool its first task while the
    // supervisor sleeps without a bound (`idle_unbounded`): see supervise().
    ipc::unique_fd lookfd;
    std::atomic<bool> idle_unbounded{false};
    // Set by the submitter that arms lookfd, cleared by the supervisor when it fires: a
    // pool whose tasks run one at a time (outstanding 0, 1, 0, ...) arms it once per look,
    // not once per task (a system call on the round trip).
    std::atomic<bool> look_armed{false};
    ipc::unique_fd server;         // fork-server channel (forkserver method)
    ipc::unique_fd server_pidfd;   // that server's pidfd: readable once it has exited
    std::thread supervisor;
    // Completion rings have one consumer at a time: the supervisor or a thread waiting on
    // a future (help_wait), whoever holds `draining`.
    alignas(64) detail::spin_lock draining;
    // The thread holding `draining`: a callback run under it (a future resolved by that
    // drain) that waits on another of this pool's futures must not take it again.
    std::atomic<std::thread::id> draining_owner{};
    std::atomic<int> helpers{0};  // threads inside help_wait
    alignas(64) std::atomic<bool> supervisor_asleep{false};
    // Some slot has a forget_backlog: the supervisor retries it while idle (retry_forgets).
    std::atomic<bool> forgets_waiting{false};
    // Flushes that published a notice, whoever made them: the supervisor's retries back
    // off only while this stays put.
    std::atomic<std::uint64_t> forgets_sent{0};
    std::atomic<bool> stopping{false};
    std::atomic<bool> joined{false};
    std::mutex join_mu;
    std::unique_ptr<trace::pool_monitor> monitor;  // statistics and the opt-in trace
    // Regions of dead workers with threads still seated on their bell: unmapped when the
    // last of them leaves (leave_waiter_seat), so that no new mapping can take the
    // address a thread is about to sleep on. Under mu.
    struct kept_region {
        void* map;
        std::size_t len;
        int slot;
        std::uint32_t gen;
        int seated;
    };
    std::vector<kept_region> kept_regions;

    // ---- setup ---------------------------------------------------------------------
    explicit pool_core(process_pool_options o);
    // Unmaps what a constructor that threw part-way left mapped (a pool shut down has
    // released every slot already).
    ~pool_core() {
        for (auto& s : slots) {
            if (s->map != nullptr) munmap(s->map, s->map_len);
            s->map = nullptr;
        }
        for (const kept_region& k : kept_regions) munmap(k.map, k.len);
    }
    pool_core(const pool_core&) = delete;
    pool_core& operator=(const pool_core&) = delete;
    void set_initializer(std::uint64_t inv, std::uint64_t fn, const std::vector<std::byte>& args);
    void start();
    void spawn_initial();
    void watch(int fd, std::uint64_t data, std::uint32_t events);
    void unwatch(int fd) noexcept { epoll_ctl(epfd.get(), EPOLL_CTL_DEL, fd, nullptr); }

    void spawn(worker_slot& w);
    void adopt_pid(worker_slot& w, pid_t pid);

    // ---- dispatch --------------------------------------------------------------------
    std::int64_t window() const noexcept;
    bool usable(const worker_slot& w) const noexcept;
    worker_slot* pick() noexcept;
    bool send(worker_slot& w, process_task_base& t, task_args args);
    static void reserve_backlog(worker_slot& w, std::size_t more);
    bool flush_forgets(worker_slot& w) noexcept;
    bool retry_forgets() noexcept;
    void forget_block(std::uint64_t id) noexcept override;
    static void wake_worker(worker_slot& w) noexcept;
    void place(process_task_base& t, task_args args);
    void dispatch_pending();
    void enqueue(process_task_base& t, task_args args);

    // Records `t` in the statistics and trace as it resolves, before its waiters wake.
    struct resolving {
        pool_core* pool;
        process_task_base* task;
    };
    static void on_resolved(void* ctx, detail::state_base& s) noexcept;

    // Resolves `t` once (cancel and completion race) and drops the pool's reference.
    template <class Fn>
    void finish(process_task_base& t, Fn&& resolve) noexcept {
        // The task lets go of its shared arrays first, so that when its future resolves
        // the caller holds the last handle (and may count mappings, or free them).
        t.attachments.clear();
        if (t.begin_resolve()) {
            resolving r{this, &t};
            const detail::observe_publish observe(&t.shared(), &on_resolved, &r);
            resolve();
        }
        const detail::state_base* const s = &t.shared();  // compared, never read, below
        t.shared().release();
        // Counted as finished once its callbacks ran: under `draining` they are held back
        // until it is let go (defer_callbacks), and shutdown must wait for them.
        detail::defer_callbacks::after(s, &task_settled, this);
    }
    static void task_settled(void* self) noexcept {
        auto* p = static_cast<pool_core*>(self);
        if (p->outstanding.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
            p->idle_waiters.load(std::memory_order_seq_cst) != 0) {
            std::lock_guard lock(p->idle_mu);
            p->idle_cv.notify_all();
        }
    }

    // ---- completions -----------------------------------------------------------------
    bool drain(worker_slot& w, bool read_index = true);
    void send_failed(worker_slot& w, int err) noexcept;
    void violation(worker_slot& w, const std::string& what) noexcept;
    void violation_locked(worker_slot& w, const std::string& what) noexcept;
    void take_completion(worker_slot& w, const ipc::frame_header& h, const std::byte* payload);

    void break_pool(std::exception_ptr e) noexcept;
    void mark_broken(wire::reader& in);
    void fail_all_broken();

    // ---- deaths ------------------------------------------------------------------------
    void kill_worker(worker_slot& w, kill_reason why, std::uint64_t seq) noexcept;
    void finalize(worker_slot& w, int wstatus);
    void note_startup(worker_slot& w, int wstatus);
    std::exception_ptr death_error(const worker_slot& w, const process_task_base& t, int wstatus);
    void release_slot(worker_slot& w) noexcept;
    worker_slot* slot_by_pid(pid_t pid) noexcept;
    void on_server_message();
    void server_lost();
    void on_pidfd(int index);
    void on_ctl_hangup(int index);

    // ---- deadlines and cancellation ---------------------------------------------------
    std::int64_t check_deadlines();
    bool cancel_running(detail::state_base& s) noexcept override;
    bool cancel_pending(detail::state_base& s) noexcept override;
    bool cancel_task(detail::state_base& s, bool stop_running) noexcept;

    // ---- waiting threads help -------------------------------------------------------
    bool drain_all();
    void lock_draining() noexcept;
    void unlock_draining() noexcept {
        draining_owner.store(std::thread::id(), std::memory_order_relaxed);
        draining.unlock();
        detail::defer_callbacks::end();  // the callbacks of what it resolved, unlocked
    }

    void ask_workers_to_wake_us(std::uint32_t on) noexcept;
    bool completions_waiting() const noexcept;
    bool help_drain(const detail::state_base& s) noexcept;
    bool help_wait(const detail::state_base& s,
                   const std::chrono::steady_clock::time_point* deadline) noexcept override;
    enum class waiter_arm { not_dispatched, look_again, armed };
    // Where a thread waiting on a future sleeps (help_wait): a worker's doorbell word.
    struct waiter_seat {
        const std::atomic<std::uint32_t>* word = nullptr;
        std::uint32_t seen = 0;
        int worker = -1;
        std::uint32_t gen = 0;
    };
    waiter_arm arm_waiter(const detail::state_base& s, const process_task_base& t,
                          waiter_seat& seat) noexcept;
    void leave_waiter_seat(const waiter_seat& seat) noexcept;
    void reset_waiter_counts() noexcept;
    void wake_waiters(worker_slot& w) noexcept;
    void wake_supervisor() noexcept;
    void arm_look() noexcept;

    // ---- supervisor loop -------------------------------------------------------------
    void supervise();
    void handle_event(const epoll_event& e);
    bool all_exited();

    // ---- captured output (pool_output.cpp) ---------------------------------------------
    std::int64_t output_next = INT64_MAX;  // supervisor: next bound_output check; MAX: idle
    std::atomic<bool> output_idle{true};   // the supervisor does not check: enqueue wakes it
    std::int64_t bound_output() noexcept;
    void wake_for_output() noexcept;
    std::shared_ptr<const task_output> completion_output(std::uint32_t type, run_status status,
                                                         const std::byte*& data,
                                                         std::size_t& size);

    // ---- shutdown ----------------------------------------------------------------------
    void close_and_cancel(bool cancel_pending);
    void wait_idle();

    void stop_workers();
};

}  // namespace procpool::process
