// Dispatch: placing tasks in workers' request rings (or parking them), choosing a
// worker by its window of queued work, out-of-band arguments, waking a sleeping worker.
#include "process/channel.hpp"
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

std::int64_t pool_core::window() const noexcept {
    const std::int64_t avg = avg_task_ns.load(std::memory_order_relaxed);
    if (avg == 0) return 2;  // nothing has completed yet: run time unknown
    const std::int64_t n = window_ns / std::max<std::int64_t>(avg, 1);
    return std::clamp<std::int64_t>(n, 2, max_window);
}

bool pool_core::usable(const worker_slot& w) const noexcept {
    return (w.state == slot_state::spawning || w.state == slot_state::alive) &&
           w.reason == kill_reason::none && !w.no_room;
}

// Picks a worker with room: the last one used if it has room (so sequential calls
// keep the others asleep), else the least loaded. Called with mu held.
worker_slot* pool_core::pick() noexcept {
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
bool pool_core::send(worker_slot& w, process_task_base& t, task_args args) {
    flush_forgets(w);
    const std::size_t n = args.size();
    const bool oob = sizeof(task_header) + n > w.req.max_payload();
    const std::size_t len = sizeof(task_header) + (oob ? sizeof(std::uint64_t) : n);
    std::vector<detail::shm_ref> fresh;
    for (const auto& b : t.attachments) {
        if (b->per_task() || !w.cached.contains(b->id())) fresh.push_back(b);
    }
    // Messages on the control socket wait there until the worker starts their task.
    // Bounding them keeps the socket's buffer from filling, so that sends never block:
    // a send that would block means a worker that stopped reading, and is killed.
    const std::uint32_t msgs = static_cast<std::uint32_t>(fresh.size()) + (oob ? 1u : 0u);
    if (w.ctl_msgs != 0 && w.ctl_msgs + msgs > max_attachments) return false;
    std::byte* dst = w.req.try_reserve(static_cast<std::uint32_t>(len));
    if (dst != nullptr) {  // the ring's first pass: map its pages a batch at a time
        prefault_until(w.region->request_data(), ring_capacity, w.req_populated,
                       static_cast<std::size_t>(dst - w.region->request_data()) + len);
    }
    if (dst == nullptr) {
        if (w.req.corrupt()) violation_locked(w, "it overwrote its request ring's read index");
        // A worker with no task in flight has consumed every task frame (it releases a
        // request before it publishes the completion): only the forget notices published
        // after the last one can wait in its ring. More than those unconsumed means its
        // read index was moved back. (A count of bytes, not a share of the ring: a worker
        // stopped while thousands of shared arrays are freed has that many notices, a
        // 64-byte frame each, and is not to be killed for it.)
        if (w.inflight.empty() && w.req.unconsumed() > w.forget_bytes_since_task) {
            violation_locked(w, "its request ring stays full while it runs nothing");
        }
        return false;
    }
    // What may throw comes before anything is sent: a throw after the descriptors went
    // would leave them on the socket for a frame that never comes.
    if (oob && t.parked.empty()) args.assign_to(t.parked);  // kept for requeue
    // Ids sent again while a notice for them waits (see below), sorted to be looked up.
    std::vector<std::uint64_t> resent;
    if (!w.forget_backlog.empty()) {
        for (const auto& b : fresh) resent.push_back(b->id());
        std::sort(resent.begin(), resent.end());
    }
    if (!fresh.empty()) {
        reserve_backlog(w, fresh.size());  // for the per-task ones' notices
        try {  // taken for cached now; if the descriptors then fail, the worker is replaced
            for (const auto& b : fresh) {
                if (!b->per_task()) w.cached.insert(b->id());
            }
        } catch (...) {
            for (const auto& b : fresh) {
                if (!b->per_task()) w.cached.erase(b->id());
            }
            throw;
        }
    }
    // Descriptors go on the control socket before the frame is published, so the
    // worker finds them there when it reads the frame.
    if (!fresh.empty() && !send_attachments(w.ctl.get(), fresh, true)) {
        send_failed(w, errno);
        return false;
    }
    if (oob) {
        if (!send_payload(w.ctl.get(), 'A', t.parked.data(), n, false, true)) {
            send_failed(w, errno);
            return false;
        }
        const std::uint64_t size = n;
        std::memcpy(dst + sizeof(task_header), &size, sizeof size);
    } else {
        args.copy_to(dst + sizeof(task_header));
    }
    const task_header th{w.next_seq, t.invoker, t.fn, static_cast<std::uint32_t>(fresh.size()), 0};
    std::memcpy(dst, &th, sizeof th);
    t.payload_pos = w.req.commit(static_cast<std::uint32_t>(len), oob ? msg_task_oob : msg_task);
    w.forget_bytes_since_task = 0;
    t.payload_len = static_cast<std::uint32_t>(len);
    // A notice still waiting for an id sent again now (a relayed block under an id used
    // before, as an mpi_pool rank makes) would reach the worker after this frame and drop
    // the new mapping: it goes. The worker's new mapping replaces the old one (and if the
    // worker fails to take it, it drops the old one: receive_attachments).
    if (!resent.empty()) {
        std::erase_if(w.forget_backlog, [&](std::uint64_t id) {
            return std::binary_search(resent.begin(), resent.end(), id);
        });
    }
    // A per-task copy (shm_block::relayed) is dropped by the worker once this task is over:
    // the notice follows the task's frame in the ring.
    bool per_task = false;
    for (const auto& b : fresh) {
        if (!b->per_task()) continue;
        w.forget_backlog.push_back(b->id());
        per_task = true;
    }
    if (per_task) flush_forgets(w);
    t.seq = w.next_seq++;
    t.worker = w.index;
    t.worker_gen = w.gen;
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
    // A worker runs max_tasks_per_child tasks and exits: it gets no more, whether it has
    // started yet or not (a task sent beyond them would wait in the ring of a worker that
    // never reads it, and be requeued as if that worker had died before starting it).
    if (opts.max_tasks_per_child > 0 && w.sent >= opts.max_tasks_per_child &&
        (w.state == slot_state::alive || w.state == slot_state::spawning)) {
        w.state = slot_state::retiring;
    }
    last_worker = w.index;
    wake_worker(w);
    return true;
}

// Room for `more` forget notices, so that queueing them cannot throw (geometric growth:
// a backlog that grows a notice at a time is not copied each time).
void pool_core::reserve_backlog(worker_slot& w, std::size_t more) {
    const std::size_t need = w.forget_backlog.size() + more;
    if (need > w.forget_backlog.capacity()) {
        w.forget_backlog.reserve(std::max(need, 2 * w.forget_backlog.capacity()));
    }
}

// Tells the worker it may unmap shared blocks the parent has freed, up to forget_budget
// bytes of its ring unconsumed; the rest stay in the backlog. True if it sent any.
// Called with mu held.
bool pool_core::flush_forgets(worker_slot& w) noexcept {
    if (w.forget_backlog.empty()) return false;
    constexpr std::uint64_t notice = ipc::ring::frame_size(sizeof(std::uint64_t));
    const std::uint64_t unconsumed = w.req.unconsumed();
    std::uint64_t room = unconsumed < forget_budget ? forget_budget - unconsumed : 0;
    bool published = false;
    while (!w.forget_backlog.empty() && room >= notice) {
        const std::uint64_t before = w.req.published();
        std::byte* p = w.req.try_reserve(sizeof(std::uint64_t));
        if (p == nullptr) break;
        std::memcpy(p, &w.forget_backlog.back(), sizeof(std::uint64_t));
        w.req.commit(sizeof(std::uint64_t), msg_forget);
        const std::uint64_t used = w.req.published() - before;
        w.forget_bytes_since_task += used;
        room = room > used ? room - used : 0;
        w.forget_backlog.pop_back();
        published = true;
    }
    if (published) {
        wake_worker(w);
        forgets_sent.fetch_add(1, std::memory_order_relaxed);
    }
    // seq_cst: the Dekker pair with the supervisor's look before it sleeps (retry_forgets).
    if (!w.forget_backlog.empty()) forgets_waiting.store(true, std::memory_order_seq_cst);
    return published;
}

// Supervisor: flushes what the workers have made room for since. True if some notices
// still wait (a worker that is not reading: the supervisor looks again soon).
bool pool_core::retry_forgets() noexcept {
    std::lock_guard lock(mu);
    forgets_waiting.store(false, std::memory_order_relaxed);
    bool left = false;
    for (auto& s : slots) {
        if (s->region == nullptr || s->forget_backlog.empty()) continue;
        flush_forgets(*s);
        left = left || !s->forget_backlog.empty();
    }
    return left;
}

void pool_core::forget_block(std::uint64_t id) noexcept {
    std::lock_guard lock(mu);
    for (auto& s : slots) {
        if (s->region == nullptr || s->cached.erase(id) == 0) continue;
        s->forget_backlog.push_back(id);
        flush_forgets(*s);  // wakes the worker if it published
    }
    // A backlog left with the supervisor asleep and nothing else to wake it: wake it so
    // that it retries (it sees forgets_waiting if it went to sleep before this look).
    if (forgets_waiting.load(std::memory_order_seq_cst) &&
        supervisor_asleep.load(std::memory_order_seq_cst)) {
        wake_supervisor();
    }
}

void pool_core::wake_worker(worker_slot& w) noexcept {
    w.req.ctl()->data.ring(true);
}

// Parks or sends a new task. Called with mu held.
void pool_core::place(process_task_base& t, task_args args) {
    if (pending.empty()) {
        if (worker_slot* w = pick(); w != nullptr && send(*w, t, args)) return;
    }
    if (t.parked.empty() && args.size() != 0) args.assign_to(t.parked);
    t.worker = -1;
    pending.push_back(&t);
}

// Moves parked tasks into workers with room. A worker whose ring has no room is
// passed over for the rest of the round, so one slow (or hostile) worker does not
// hold back the others. Called with mu held.
void pool_core::dispatch_pending() {
    while (!pending.empty()) {
        worker_slot* w = pick();
        if (w == nullptr) break;
        // Off the pending list first: send() links the task into the worker's list.
        process_task_base* t = pending.pop_front();
        std::vector<std::byte> args = std::move(t->parked);
        t->parked.clear();
        if (!send(*w, *t, task_args{args, {}})) {
            t->parked = std::move(args);
            pending.push_front(t);
            w->no_room = true;
        }
    }
    for (auto& s : slots) s->no_room = false;
}

void pool_core::enqueue(process_task_base& t, task_args args) {
    const trace::submission_label label = trace::take_label();
    t.shared().queued_ns = trace::clock_ns();
    t.shared().attempt = label.attempt;
    t.bytes_in = static_cast<std::uint32_t>(std::min<std::size_t>(args.size(), UINT32_MAX));
    t.shared().set_cancel_hook(this);
    t.shared().add_ref();  // the pool's reference, dropped when it resolves the task
    std::exception_ptr fail;
    std::exception_ptr not_placed;
    {
        std::lock_guard lock(mu);
        if (closed) {
            t.shared().release();
            throw pool_shut_down("process_pool: submit after shutdown(); create a new pool");
        }
        // seq_cst: the Dekker pair of wake_for_output and bound_output.
        if (outstanding.fetch_add(1, std::memory_order_seq_cst) == 0 &&
            idle_unbounded.load(std::memory_order_seq_cst) &&
            !look_armed.exchange(true, std::memory_order_relaxed)) {
            arm_look();  // the supervisor sleeps without a bound: bound it
        }
        const std::uint64_t id = monitor->submitted();
        t.shared().trace_id = label.set ? label.id : id;
        if (t.timeout_ns < 0) t.timeout_ns = default_timeout_ns;
        // Before the task can be sent; the supervisor's check_deadlines reads it after
        // announcing that it sleeps, and enqueue reads that announcement below (Dekker).
        if (t.timeout_ns > 0 && !deadlines_used.load(std::memory_order_relaxed)) {
            deadlines_used.store(true, std::memory_order_seq_cst);
        }
        if (broken) {
            fail = broken;
        } else {
            try {
                place(t, args);
            } catch (...) {  // out of memory parking or sending it: not linked anywhere
                not_placed = std::current_exception();
            }
        }
    }
    if (not_placed) {
        // Not accepted after all (submit throws): undo what accepting it counted, or the
        // statistics would count it forever and shutdown would wait for it forever.
        monitor->unsubmitted();
        t.shared().release();
        task_settled(this);
        std::rethrow_exception(not_placed);
    }
    if (fail) finish(t, [&] { resolve_error(t, fail); });
    // Only the supervisor enforces deadlines: it must not sleep through this one.
    if (t.timeout_ns > 0 && supervisor_asleep.load(std::memory_order_seq_cst)) {
        wake_supervisor();
    }
    wake_for_output();
}

}  // namespace procpool::process
