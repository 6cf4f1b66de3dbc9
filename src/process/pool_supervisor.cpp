// The supervisor thread: its event loop, task deadlines, and cancelling running tasks.
#include "process/pool_core.hpp"

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

namespace procpool::process {

// Kills workers whose running task is past its deadline; returns the next deadline.
// A task's clock starts when it becomes the head of its worker's queue (head_since),
// the parent's own observation: nothing the worker writes can delay it.
std::int64_t pool_core::check_deadlines() {
    if (!deadlines_used.load(std::memory_order_seq_cst)) return INT64_MAX;
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

bool pool_core::cancel_running(detail::state_base& s) noexcept {
    return cancel_task(s, true);
}

bool pool_core::cancel_pending(detail::state_base& s) noexcept {
    return cancel_task(s, false);
}

// A parked task is taken out of the queue; a dispatched one that has not started gets a
// cancel word, which its worker reads before it starts (it then skips the task). A
// started one is stopped only with `stop_running`, by killing its worker.
bool pool_core::cancel_task(detail::state_base& s, bool stop_running) noexcept {
    auto* t = dynamic_cast<process_task_base*>(&s);
    if (t == nullptr) return false;
    bool resolved_now = false;
    bool won = false;
    std::int64_t killed_start = 0;  // a running task stopped by killing its worker: its start
    int killed_pid = 0;
    int dispatched_to = -1;  // its worker, whose doorbell its waiters may sleep on
    std::uint32_t dispatched_gen = 0;
    {
        std::lock_guard lock(mu);
        if (s.is_done()) return false;
        if (t->worker < 0) {
            if (!pending.remove(t)) return false;
            resolved_now = true;
        } else {
            worker_slot& w = *slots[static_cast<std::size_t>(t->worker)];
            dispatched_to = t->worker;
            dispatched_gen = t->worker_gen;
            // Its worker died and the slot was given a new one: the death is resolving
            // the task right now (it left the dead worker's queue under mu). The new
            // worker numbers its tasks from 1 again, so a cancel word for this task's
            // number would stop whichever of its tasks gets that number.
            if (w.region == nullptr || w.gen != t->worker_gen) return false;
            auto* r = w.region;
            // Running already: without `stop_running`, leave it (and the worker's few
            // cancel words) alone.
            if (!stop_running && r->started_seq.load(std::memory_order_seq_cst) >= t->seq) {
                return false;
            }
            const std::uint32_t n = r->ncancels.load(std::memory_order_relaxed);
            if (n < worker_region::max_cancels) {
                r->cancels[n].store(t->seq, std::memory_order_relaxed);
                r->ncancels.store(n + 1, std::memory_order_seq_cst);
            }
            const std::uint64_t started = r->started_seq.load(std::memory_order_seq_cst);
            // Finished already (its worker began a later task): its completion resolves it,
            // and killing the worker would fail that later task.
            if (started > t->seq) return false;
            if (started == t->seq || n >= worker_region::max_cancels) {
                // Running (or we could not mark it): stop it by killing its worker. Without
                // `stop_running`, a task that started meanwhile reads the word or not: its
                // worker then skips it or runs it, and its reply resolves it either way.
                // A running task need not be the head of the queue yet: the completions of
                // tasks before it (skipped ones, say) may not be drained; the death path
                // drains them first. One not marked must be next, or another task dies.
                if (!stop_running) return false;
                if (started != t->seq && w.inflight.head != t) return false;
                kill_worker(w, kill_reason::cancel, t->seq);
                killed_start = std::max(w.head_since, t->shared().queued_ns);
                killed_pid = static_cast<int>(w.pid);
            }
        }
        // Another thread may be resolving it already (its completion, a broken pool): then
        // it was not cancelled, whatever this did, and cancel() must not say it was. Claimed
        // under mu: a worker's death settling its queue (finalize) must see the claim, or it
        // would requeue a task cancelled a moment later, which then runs on a new worker
        // with its future already resolved, and shutdown waits for it (TSan found this).
        won = t->begin_resolve();
    }
    if (won) {
        // Its times belong to the thread that resolves it: this one.
        if (killed_start != 0) {
            t->start_ns = killed_start;
            t->pid = killed_pid;
        }
        resolving r{this, t};
        const detail::observe_publish observe(&s, &on_resolved, &r);
        // A dispatched task is counted out when its worker's reply is taken (finish), which
        // may come before its callbacks, run here, return: count them in the meantime, so
        // that shutdown waits for them.
        if (!resolved_now) outstanding.fetch_add(1, std::memory_order_seq_cst);
        s.set_cancelled("task cancelled");
        if (!resolved_now) detail::defer_callbacks::after(&s, &task_settled, this);
        // Its waiters may sleep on its worker's doorbell (help_wait): the worker rings
        // only when it gets to the task. `t` may be gone by now (its skip completion).
        if (dispatched_to >= 0) {
            std::lock_guard lock(mu);
            worker_slot& w = *slots[static_cast<std::size_t>(dispatched_to)];
            if (w.gen == dispatched_gen) wake_waiters(w);
        }
    }
    if (resolved_now) {
        t->attachments.clear();
        t->shared().release();
        task_settled(this);
    }
    return won;
}

void pool_core::supervise() {
    if (method == start_method::fork) spawn_initial();  // forkserver: start() counted down
    std::int64_t idle_since = now_ns();
    unsigned spins = 0;
    // Retries of a forget backlog: the wait, when it last changed, notices sent by then.
    int forget_wait_ms = forget_retry_ms;
    std::int64_t forget_looked_ns = 0;
    std::uint64_t forgets_seen = 0;
    std::vector<epoll_event> events(16 + slots.size() * 2);
    for (;;) {
        bool progress = drain_all();
        if (progress && helpers.load(std::memory_order_relaxed) == 0) ask_workers_to_wake_us(0);
        if (is_broken.load(std::memory_order_acquire)) fail_all_broken();
        if (!progress) {  // drain_all refilled the windows if it took completions
            std::lock_guard lock(mu);
            if (!pending.empty()) dispatch_pending();
        }
        check_deadlines();
        bound_output();
        if (stopping.load(std::memory_order_acquire) && all_exited()) return;

        int timeout_ms = 0;
        const std::int64_t now = now_ns();
        if (progress) {
            idle_since = now;
            if ((++spins & 63) != 0) continue;  // poll events now and then while busy
        } else if (now - idle_since < detail::spin_budget.count() * 1000 &&
                   helpers.load(std::memory_order_relaxed) == 0 &&
                   avg_task_ns.load(std::memory_order_relaxed) < long_task_ns) {
            detail::cpu_yield();
            if ((++spins & 15) != 0) continue;
        } else {
            // A task with a deadline submitted from now on wakes us (see enqueue);
            // one submitted before is seen by this second look (Dekker pair).
            supervisor_asleep.store(true, std::memory_order_seq_cst);
            const std::int64_t next_deadline = std::min(check_deadlines(), bound_output());
            timeout_ms = -1;
            if (next_deadline != INT64_MAX) {
                timeout_ms = static_cast<int>(
                    std::clamp<std::int64_t>((next_deadline - now) / 1'000'000 + 1, 1, 1000));
            }
            // Forget notices beyond forget_budget wait until their worker reads the ones
            // in its ring: look again soon, and later each time a whole wait passed with
            // none sent (forget_block wakes us if it left some after this look, the
            // Dekker pair with supervisor_asleep).
            if (forgets_waiting.load(std::memory_order_seq_cst)) {
                const bool left = retry_forgets();
                const std::uint64_t sent = forgets_sent.load(std::memory_order_relaxed);
                if (!left || sent != forgets_seen) {
                    forget_wait_ms = forget_retry_ms;
                    forget_looked_ns = now;
                } else if (now - forget_looked_ns >= std::int64_t{forget_wait_ms} * 1'000'000) {
                    forget_wait_ms = std::min(2 * forget_wait_ms, forget_retry_max_ms);
                    forget_looked_ns = now;
                }
                forgets_seen = sent;
                if (left && (timeout_ms < 0 || timeout_ms > forget_wait_ms)) {
                    timeout_ms = forget_wait_ms;
                }
            }
            // A task can write its worker's wake-up words (they are in its memory), and
            // a thread it leaves behind can do so while the pool is idle: look every
            // waiter_recheck anyway while the pool holds a task, and put the waiters
            // bells' counts back to the parent's own. With no task (and no deadline)
            // there is no completion to strand: sleep until woken. The submitter that
            // gives the pool its next task arms `lookfd` if it sees `idle_unbounded`;
            // one that got in before it was set is seen here (Dekker pair).
            idle_unbounded.store(true, std::memory_order_seq_cst);
            if (timeout_ms >= 0 || outstanding.load(std::memory_order_seq_cst) != 0) {
                idle_unbounded.store(false, std::memory_order_relaxed);
                const int look = static_cast<int>(std::clamp<std::int64_t>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(waiter_recheck)
                        .count(),
                    1, INT_MAX));
                if (timeout_ms < 0 || timeout_ms > look) timeout_ms = look;  // a deadline's too
            }
            reset_waiter_counts();
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
        idle_unbounded.store(false, std::memory_order_relaxed);
        if (timeout_ms != 0) idle_since = now_ns();
        for (int i = 0; i < n; ++i) handle_event(events[static_cast<std::size_t>(i)]);
    }
}

void pool_core::handle_event(const epoll_event& e) {
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
        case ev_look: {
            std::uint64_t expirations = 0;
            [[maybe_unused]] auto r = read(lookfd.get(), &expirations, sizeof expirations);
            look_armed.store(false, std::memory_order_relaxed);
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
        case ev_server_exit:
            // Its exit statuses first (they may still be in the channel), then the loss.
            // Checked again: an event for a server already replaced is stale.
            if (server_pidfd && process_exited(server_pidfd.get())) {
                on_server_message();
                if (server_pidfd && process_exited(server_pidfd.get())) server_lost();
            }
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

bool pool_core::all_exited() {
    std::lock_guard lock(mu);
    for (auto& s : slots) {
        if (s->state != slot_state::idle) return false;
    }
    return true;
}

}  // namespace procpool::process
