// Completions: reading each worker's completion ring, checking every frame (a worker
// is not trusted), resolving futures; threads waiting on a future drain the rings too.
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

// Resolves every completion waiting in `w`'s ring. One drainer at a time (`draining`).
// Everything read from the ring or the control socket is checked: a worker that
// breaks the protocol is killed, and the task it was running fails (see violation).
// `read_index`: see ring::peek (without it, frames are found by their stamps).
bool pool_core::drain(worker_slot& w, bool read_index) {
    if (w.ring_bad.load(std::memory_order_acquire)) return false;  // not to be read again
    bool any = false;
    ipc::frame_header h{};
    const std::byte* payload = nullptr;
    for (;;) {
        const ipc::peek_result r = w.cmp.peek(h, payload, read_index);
        if (r == ipc::peek_result::empty) break;
        if (r == ipc::peek_result::corrupt) {
            violation(w, "its completion ring's index or a frame length is out of bounds");
            break;
        }
        any = true;
        try {
            take_completion(w, h, payload);
        } catch (const protocol_violation& e) {
            violation(w, e.what());
            break;
        }
        w.cmp.pop(h);
        w.cmp.ctl()->space.ring(true);
    }
    return any;
}

// A send on `w`'s control socket failed (it would block: the worker stopped reading;
// or the system refused, e.g. too many descriptors in flight): the worker cannot be
// given work any more, so it is killed and replaced. Called with mu held.
void pool_core::send_failed(worker_slot& w, int err) noexcept {
    try {
        w.violation = std::string("sending to its control socket failed: ") + std::strerror(err);
    } catch (...) {  // NOLINT(bugprone-empty-catch): the kind of error is enough
    }
    kill_worker(w, kill_reason::send_failed, 0);
}

// Marks `w` as having broken the protocol: it is killed, and the task at the head of
// its queue (whose completion was due) fails with protocol_error.
void pool_core::violation(worker_slot& w, const std::string& what) noexcept {
    std::lock_guard lock(mu);
    violation_locked(w, what);
}

void pool_core::violation_locked(worker_slot& w, const std::string& what) noexcept {
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
void pool_core::take_completion(worker_slot& w, const ipc::frame_header& h,
                                const std::byte* payload) {
    completion_header ch{};
    if (h.len < sizeof ch) throw protocol_violation("a completion shorter than its header");
    std::memcpy(&ch, payload, sizeof ch);
    const std::uint32_t raw = h.type & ~(oob_flag | output_flag);
    if (raw == static_cast<std::uint32_t>(run_status::init_failed)) {
        // Frames arrive in order and the ready frame precedes every task's, so a report
        // read after it comes from a task, not from the initializer.
        if (!has_initializer || w.ready || ch.seq != 0 || ch.nattach != 0 || h.type != raw) {
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
            receive_attachments(w.ctl.get(), ch.nattach, received, true, &w.result_blocks);
        } catch (const protocol_violation&) {
            throw;
        } catch (...) {  // e.g. out of address space mapping it: the task's own error
            attach_error = std::current_exception();
        }
    }
    // A result too large for the ring: its size is in the frame, its memfd (sent before
    // the frame) on the control socket.
    const std::byte* data = payload + sizeof ch;
    std::size_t size = h.len - sizeof ch;
    mapped_payload large;
    if ((h.type & oob_flag) != 0) {
        std::uint64_t n = 0;
        if (size != sizeof n) throw protocol_violation("a bad large-result frame");
        std::memcpy(&n, data, sizeof n);
        receive_payload(w.ctl.get(), 'R', n, true, large);
        data = large.data();
        size = large.size();
    }
    // What the task wrote (capture_output) leads the payload.
    std::shared_ptr<const task_output> output =
        completion_output(h.type, static_cast<run_status>(raw), data, size);
    process_task_base* t = nullptr;
    int worker_pid = 0;
    {
        std::lock_guard lock(mu);
        if (w.inflight.empty() || w.inflight.head->seq != ch.seq) {
            if (broken) return;  // fail_all_broken emptied the queue meanwhile
            throw protocol_violation("a completion for a task it was not running");
        }
        // Its arguments did not arrive whole (perhaps a shared array the worker could not
        // take, out of descriptors, which it has then dropped: receive_attachments), or it
        // was skipped, which the worker decides after taking its blocks, with the same
        // outcome. Its blocks are no longer taken for cached there: the worker is told to
        // forget them, and the next task that needs one sends it again.
        const bool blocks_doubtful =
            (raw == static_cast<std::uint32_t>(run_status::serialization) ||
             raw == static_cast<std::uint32_t>(run_status::cancelled)) &&
            !w.inflight.head->attachments.empty();
        // Room first: nothing may throw once the task is off the queue.
        if (blocks_doubtful) reserve_backlog(w, w.inflight.head->attachments.size());
        t = pop_inflight(w);
        worker_pid = static_cast<int>(w.pid);
        if (blocks_doubtful) {
            for (const auto& b : t->attachments) {
                if (!b->per_task() && w.cached.erase(b->id()) != 0) {
                    w.forget_backlog.push_back(b->id());
                }
            }
            flush_forgets(w);
        }
        const std::int64_t run = std::clamp<std::int64_t>(ch.run_ns, 100, 1'000'000'000);
        const std::int64_t avg = avg_task_ns.load(std::memory_order_relaxed);
        avg_task_ns.store(avg == 0 ? run : (avg + run) / 2, std::memory_order_relaxed);
        // The next task's deadline now runs: the supervisor must not sleep through it.
        if (!w.inflight.empty() && w.inflight.head->timeout_ns > 0 &&
            supervisor_asleep.load(std::memory_order_seq_cst)) {
            wake_supervisor();
        }
    }
    finish(*t, [&] {
        // Only the thread that resolves the task writes its times (a cancel() may have
        // resolved it first, and then owns them). The worker's clock is this machine's;
        // a worker that lies only moves its own bar.
        const std::int64_t now = trace::clock_ns();
        t->end_ns = std::clamp(ch.end_ns, t->shared().queued_ns, now);
        t->start_ns = std::clamp(t->end_ns - std::max<std::int64_t>(ch.run_ns, 0),
                                 t->shared().queued_ns, t->end_ns);
        t->pid = worker_pid;
        t->bytes_out = h.len;
        t->output = std::move(output);
        if (attach_error) {
            resolve_error(*t, attach_error);
            return;
        }
        detail::attachment_scope scope(nullptr, &received, opts.shared_memory_threshold);
        wire::reader in(data, size);
        t->decode(static_cast<run_status>(raw), in);
    });
    // Result blocks not read (the task was resolved before, or its decoding failed) go
    // back to the worker too; the table's own handles may outlive this (kept mappings).
    for (auto& [id, b] : received) b->return_now();
}

void pool_core::on_resolved(void* ctx, detail::state_base& s) noexcept {
    auto* r = static_cast<resolving*>(ctx);
    process_task_base& t = *r->task;
    if (t.end_ns == 0) t.end_ns = trace::clock_ns();
    r->pool->monitor->finished(trace::task_done{.worker = t.worker,
                                                .pid = t.pid,
                                                .id = t.shared().trace_id,
                                                .attempt = t.shared().attempt,
                                                .submit_ns = t.shared().queued_ns,
                                                .start_ns = t.start_ns,
                                                .end_ns = t.end_ns,
                                                .bytes_in = t.bytes_in,
                                                .bytes_out = t.bytes_out},
                               s.error());
}

// The pool cannot run tasks any more: every task it holds or gets fails with `e`.
// Called with mu held.
void pool_core::break_pool(std::exception_ptr e) noexcept {
    if (broken) return;
    broken = std::move(e);
    is_broken.store(true, std::memory_order_release);
}

// A worker initializer failed: the pool cannot run anything. Called with mu held.
void pool_core::mark_broken(wire::reader& in) {
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
void pool_core::fail_all_broken() {
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
    std::lock_guard lock(mu);
    for (auto& s : slots) wake_waiters(*s);  // the failed tasks' waiters (help_wait)
}

// Drains every completion ring if no one else is; then refills windows from the
// pending queue, since completions are what make room.
bool pool_core::drain_all() {
    if (!draining.try_lock()) return false;
    draining_owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
    // The callbacks of what it resolves run after `draining` is let go (and after the
    // windows are refilled): a callback may wait on a future that needs a drain.
    detail::defer_callbacks::begin();
    bool any = false;
    for (auto& s : slots) {
        // By stamps: drains are the pollers (helpers spin on them), and a look at each
        // worker's index after its last frame would pull that line back from the worker
        // each time. Whoever decides to sleep asks completions_waiting (the indices).
        if (s->region != nullptr && drain(*s, false)) any = true;
    }
    draining_owner.store(std::thread::id(), std::memory_order_relaxed);
    draining.unlock();
    if (any) {
        std::lock_guard lock(mu);
        if (!pending.empty()) dispatch_pending();
    }
    detail::defer_callbacks::end();
    return any;
}

void pool_core::lock_draining() noexcept {
    draining.lock();
    draining_owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
    detail::defer_callbacks::begin();
}

// Whether workers must write the eventfd after a completion. Cleared while some thread
// waiting on a future drains the rings itself, so round trips cost no system call.
void pool_core::ask_workers_to_wake_us(std::uint32_t on) noexcept {
    for (auto& s : slots) {
        if (s->region != nullptr) s->region->parent.sleeping.store(on, std::memory_order_seq_cst);
    }
}

bool pool_core::completions_waiting() const noexcept {
    for (auto& s : slots) {
        if (s->region != nullptr && !s->ring_bad.load(std::memory_order_relaxed) &&
            !s->cmp.empty()) {
            return true;
        }
    }
    return false;
}

// Drains the rings while spinning for `spin_budget`, as one of the `helpers` (while any
// thread is one, workers do not wake the supervisor). Returns `s.is_done()`.
bool pool_core::help_drain(const detail::state_base& s) noexcept {
    // Callbacks of what it drains run once it is no longer a helper: while it is one the
    // workers do not wake the supervisor, and a callback may block for long.
    const detail::defer_callbacks hold;
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

// Waits for `s`: drains while spinning first (unless tasks run long: long_task_ns), then,
// while its task sits in a worker's queue, sleeps on that worker's `waiters` doorbell.
// The worker rings it after each completion it publishes, instead of waking the
// supervisor: one wake-up, where through the supervisor it is two, and this thread
// drains. What else resolves a dispatched task rings it too: the worker's death
// (release_slot), a cancel (cancel_task), a broken pool (fail_all_broken). Every
// `waiter_recheck` the thread looks again whatever happened, so a worker that never rings
// (a hostile task can write the doorbell) delays only its own tasks' waiters, and by
// that much at most.
bool pool_core::help_wait(const detail::state_base& s,
                          const std::chrono::steady_clock::time_point* deadline) noexcept {
    // Called while this thread holds `draining`: callbacks run after it is let go
    // (defer_callbacks), unless queueing them ran out of memory and they ran at once.
    // Neither draining nor a seat is possible here; the thread sleeps on the future
    // until its deadline.
    if (draining_owner.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
        return s.is_done();
    }
    const auto* t = dynamic_cast<const process_task_base*>(&s);
    for (;;) {
        if (deadline != nullptr && std::chrono::steady_clock::now() >= *deadline) {
            // Past it already (a wait_until of many futures with one deadline): one look,
            // no spin, which on a loaded machine can outlast the wait itself.
            drain_all();
            return s.is_done();
        }
        if (t != nullptr && avg_task_ns.load(std::memory_order_relaxed) >= long_task_ns) {
            drain_all();  // one look: a spin would not see such a task end
            if (s.is_done()) return true;
        } else if (help_drain(s)) {
            return true;
        }
        if (t == nullptr) return false;
        const auto now = std::chrono::steady_clock::now();
        if (deadline != nullptr && now >= *deadline) return false;
        waiter_seat seat;
        const waiter_arm armed = arm_waiter(s, *t, seat);
        if (armed == waiter_arm::not_dispatched) return s.is_done();  // sleep on the state
        if (armed == waiter_arm::look_again) continue;
        auto until = now + waiter_recheck;
        if (deadline != nullptr && *deadline < until) until = *deadline;
        detail::futex_wait(seat.word, seat.seen, &until, true);
        leave_waiter_seat(seat);
    }
}

// Announces a thread about to sleep until `t`'s worker rings its `waiters` bell
// (`sleepers` counts such threads; `armed` asks the next completion to ring), and gives
// the word to sleep on with the value seen before the announcement (a ring after it
// changes the word, so the sleep returns at once). Under `draining`: a completion is taken from the
// ring and resolved while it is held, so a task that is not done and has no completion in the ring
// gets its completion after the announcement, and its worker then rings (the ring's publication and
// the announcement are a Dekker pair). Under `mu`: the task's worker and that worker's region
// (unmapped only under mu, which rings first).
pool_core::waiter_arm pool_core::arm_waiter(const detail::state_base& s, const process_task_base& t,
                                            waiter_seat& seat) noexcept {
    waiter_arm armed = waiter_arm::not_dispatched;
    lock_draining();
    {
        std::lock_guard lock(mu);
        if (t.worker >= 0) {
            worker_slot& w = *slots[static_cast<std::size_t>(t.worker)];
            if (w.region != nullptr && w.gen == t.worker_gen) {
                waiter_bell& d = w.region->waiters;
                seat.word = &d.word;
                seat.seen = d.word.load(std::memory_order_acquire);
                // `armed` first: a worker that reads the count this adds reads it too.
                d.armed.store(1, std::memory_order_seq_cst);
                d.sleepers.fetch_add(1, std::memory_order_seq_cst);
                // A ring not read any more (a worker that broke the protocol, being
                // killed): its death rings, however full the ring looks.
                const bool waiting = !w.ring_bad.load(std::memory_order_relaxed) && !w.cmp.empty();
                if (s.is_done() || waiting) {
                    d.sleepers.fetch_sub(1, std::memory_order_seq_cst);
                    armed = waiter_arm::look_again;
                } else {
                    seat.worker = t.worker;
                    seat.gen = w.gen;
                    ++w.waiters_seated;
                    armed = waiter_arm::armed;
                }
            }
        }
    }
    unlock_draining();
    return armed;
}

// After the sleep: takes back the announcement, then settles what the worker published
// while it stood. A worker that saw it rang this thread and did not wake the supervisor,
// so whatever is in the rings now is this thread's to take, or to hand to the
// supervisor (the same Dekker pair as a helper's leaving, help_drain).
void pool_core::leave_waiter_seat(const waiter_seat& seat) noexcept {
    lock_draining();
    {
        std::lock_guard lock(mu);
        worker_slot& w = *slots[static_cast<std::size_t>(seat.worker)];
        if (w.region != nullptr && w.gen == seat.gen) {
            w.region->waiters.sleepers.fetch_sub(1, std::memory_order_seq_cst);
            --w.waiters_seated;
        } else {
            // Its worker died: the region was kept for the threads seated on it.
            for (auto k = kept_regions.begin(); k != kept_regions.end(); ++k) {
                if (k->slot != seat.worker || k->gen != seat.gen) continue;
                if (--k->seated == 0) {
                    munmap(k->map, k->len);
                    kept_regions.erase(k);
                }
                break;
            }
        }
    }
    const bool left = completions_waiting();
    unlock_draining();
    if (left && !drain_all()) wake_supervisor();
}

// Before the supervisor sleeps: each bell's count back to the parent's own. A task can
// write its worker's count (the region is in its memory); a count left above zero would
// make the worker leave every completion to waiting threads that do not exist, and never
// wake the supervisor again. Under mu, which seats and unseats take.
void pool_core::reset_waiter_counts() noexcept {
    std::lock_guard lock(mu);
    for (auto& s : slots) {
        if (s->region == nullptr) continue;
        const auto n = static_cast<std::uint32_t>(s->waiters_seated);
        if (s->region->waiters.sleepers.load(std::memory_order_relaxed) != n) {
            s->region->waiters.sleepers.store(n, std::memory_order_seq_cst);
        }
    }
}

// Wakes the threads sleeping on `w`'s doorbell (arm_waiter), whether or not they
// announced themselves. Called with mu held, before its region can be unmapped.
void pool_core::wake_waiters(worker_slot& w) noexcept {
    if (w.region != nullptr) w.region->waiters.wake();
}

void pool_core::wake_supervisor() noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] auto r = write(evfd.get(), &one, sizeof one);
}

// Wakes the supervisor once, `waiter_recheck` from now (not now: the task it looks after
// has only just been given, and the look is for what a task might strand).
void pool_core::arm_look() noexcept {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(waiter_recheck).count();
    itimerspec at{};
    at.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    at.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    if (at.it_value.tv_sec == 0 && at.it_value.tv_nsec == 0) at.it_value.tv_nsec = 1;
    timerfd_settime(lookfd.get(), 0, &at, nullptr);
}

}  // namespace procpool::process
