// Deaths: when a worker exits, its tasks are settled (failed, requeued), start-up
// failures are counted, and the worker is replaced; the fork server's messages.
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

void pool_core::kill_worker(worker_slot& w, kill_reason why, std::uint64_t seq) noexcept {
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
void pool_core::finalize(worker_slot& w, int wstatus) {
    lock_draining();  // its region is about to be unmapped
    struct unlock {
        pool_core* self;
        ~unlock() { self->unlock_draining(); }
    } guard{this};
    drain(w);
    w.result_blocks.clear();  // its result blocks die with it (a replacement makes its own)
    std::vector<process_task_base*> requeue;
    std::vector<process_task_base*> settled;
    std::vector<process_task_base*> lost;  // their frames were written over (see below)
    process_task_base* failed = nullptr;
    std::int64_t failed_start = 0;  // when it started, as its worker said (or became the head)
    int failed_pid = 0;
    std::exception_ptr why;
    output_files dead_output;
    {
        std::lock_guard lock(mu);
        note_startup(w, wstatus);
        if (monitor->tracing()) {
            static constexpr const char* why[] = {"",
                                                  "killed: its task timed out; ",
                                                  "killed: its task was cancelled; ",
                                                  "killed: its control channel was lost; ",
                                                  "killed: it broke the protocol; ",
                                                  "killed: a send to it failed; "};
            try {
                monitor->worker_exited(w.index, static_cast<int>(w.pid),
                                       why[static_cast<int>(w.reason)] + describe_status(wstatus));
            } catch (...) {  // NOLINT(bugprone-empty-catch): the trace loses one mark
            }
        }
        if (!w.inflight.empty()) {
            process_task_base* front = w.inflight.head;
            // Started if the worker said so, or if it was killed for this very task; a
            // task whose worker keeps dying before it is seen to start fails too.
            const bool started =
                w.region->started_seq.load(std::memory_order_seq_cst) >= front->seq ||
                (w.reason != kill_reason::none && w.reason_seq == front->seq) ||
                (w.ready && ++front->requeues >= max_requeues);
            if (started) {
                // It ran from when the worker said it started (or became the head) to now.
                const std::int64_t said =
                    w.region->started_seq.load(std::memory_order_relaxed) == front->seq
                        ? w.region->started_ns.load(std::memory_order_relaxed)
                        : 0;
                failed_start = said != 0 ? said : w.head_since;
                failed_pid = static_cast<int>(w.pid);
                failed = pop_inflight(w);
                why = death_error(w, *failed, wstatus);
            }
            while (auto* t = pop_inflight(w)) {
                // Cancelled while it sat in the ring: claimed under mu (cancel_task), so
                // never requeued, even if its future is not published yet.
                if (t->shared().is_done() || t->resolve_begun()) {
                    settled.push_back(t);
                    continue;
                }
                // Copy the arguments back out of the dead worker's ring, unless the parent
                // has written a lap's worth since: a worker that forged its read index got
                // frames written over ones it had not read, and a copy would run the task
                // on other bytes elsewhere, to a wrong value. Those fail instead.
                if (t->parked.empty() &&
                    w.req.overwritten(t->payload_pos - sizeof(ipc::frame_header))) {
                    t->worker = -1;
                    lost.push_back(t);
                    continue;
                }
                if (t->parked.empty()) {
                    const std::byte* p = w.req.at(t->payload_pos) + sizeof(task_header);
                    t->parked.assign(p, p + (t->payload_len - sizeof(task_header)));
                }
                t->worker = -1;
                requeue.push_back(t);
            }
            for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
                pending.push_front(*it);
            }
        }
        // The failed task's output is in the worker's files if the worker started it
        // (the files were emptied after the previous task's completion was published).
        if (failed != nullptr && w.output &&
            w.region->started_seq.load(std::memory_order_seq_cst) >= failed->seq) {
            dead_output = std::move(w.output);
        }
        release_slot(w);
        // After shutdown() a worker is still replaced while tasks wait for one: accepted
        // tasks run (a worker retiring at max_tasks_per_child, or dying, while the pool
        // drains left them pending forever, and shutdown waiting for them). Not when the
        // fork server is gone for good (server_lost fails what is pending).
        const bool needed = !closed || !pending.empty();
        if (needed && !broken && (method != start_method::forkserver || server)) {
            try {
                spawn(w);
            } catch (const std::exception& e) {
                release_slot(w);
                break_pool(std::make_exception_ptr(
                    error(std::string("procpool: could not replace a dead worker: ") + e.what())));
            }
        }
        dispatch_pending();
    }
    if (failed != nullptr) {
        finish(*failed, [&] {
            // Its times are written only by the thread that resolves it (a cancel() may
            // have won, and then owns them).
            failed->end_ns = trace::clock_ns();
            failed->start_ns = std::clamp(failed_start, failed->shared().queued_ns, failed->end_ns);
            failed->pid = failed_pid;
            if (dead_output) failed->output = read_output(dead_output, opts.output_limit);
            resolve_error(*failed, why);
        });
    }
    for (auto* t : lost) {
        finish(*t, [&] {
            resolve_error(*t, std::make_exception_ptr(protocol_error(
                                  "worker broke the protocol (its request ring's read index "
                                  "was forged) before it read this task, whose arguments "
                                  "were written over; the worker ended")));
        });
    }
    for (auto* t : settled) finish(*t, [] {});
}

// A worker that dies before it is ready to serve, again and again (its initializer
// exits, it cannot map its region, the memory limit is too small, it runs another
// build of the program) would be replaced forever: after three in a row the pool gives
// up with an error that says why. Counted by how far the worker got, not by time, so
// that a slow start on a loaded machine is never mistaken for a failure or a success.
// Called with mu held, before the slot is released.
void pool_core::note_startup(worker_slot& w, int wstatus) {
    // (A worker dying at start-up closes its control socket first: channel_lost.)
    // A failed send is the parent's observation, not the worker's start-up failing.
    if (w.ready || w.exit_sent || w.server_gone ||
        (w.reason != kill_reason::none && w.reason != kill_reason::channel_lost)) {
        return;
    }
    // Only for the message: the worker writes it, so it may lie, but never to effect.
    const std::uint32_t phase = w.region->phase.load(std::memory_order_seq_cst);
    std::string why = describe_status(wstatus);
    startup_report r{};
    ssize_t got = -1;
    if (w.ctl) {
        got = recv(w.ctl.get(), &r, sizeof r, MSG_DONTWAIT);
        // A worker that closed with our messages unread: ECONNRESET comes first, once
        // (see ipc::recv_with_fds); its report may be behind it.
        if (got < 0 && errno == ECONNRESET) got = recv(w.ctl.get(), &r, sizeof r, MSG_DONTWAIT);
    }
    if (got == static_cast<ssize_t>(sizeof r) && r.tag == startup_report_tag) {
        why = describe_startup(r);
    } else if (phase == phase_initializer) {
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

std::exception_ptr pool_core::death_error(const worker_slot& w, const process_task_base& t,
                                          int wstatus) {
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
void pool_core::release_slot(worker_slot& w) noexcept {
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
    wake_waiters(w);  // threads asleep on its bell look again (help_wait)
    if (w.map != nullptr && w.waiters_seated > 0) {
        // They leave their seats after this: the mapping stays until the last has left,
        // so that no new mapping takes the address one is about to sleep on.
        try {
            kept_regions.push_back({w.map, w.map_len, w.index, w.gen, w.waiters_seated});
            w.map = nullptr;
        } catch (...) {  // NOLINT(bugprone-empty-catch): unmapped now; the sleeper's
        }                // second look (waiter_recheck) bounds what that costs it
    }
    w.waiters_seated = 0;
    if (w.map != nullptr) munmap(w.map, w.map_len);
    w.output = {};
    w.map = nullptr;
    w.region = nullptr;
    w.state = slot_state::idle;
    w.pid = -1;
}

worker_slot* pool_core::slot_by_pid(pid_t pid) noexcept {
    for (auto& s : slots) {
        if (s->pid == pid && s->state != slot_state::idle) return s.get();
    }
    return nullptr;
}

void pool_core::on_server_message() {
    fs_record r{};
    for (;;) {
        ssize_t n = recv(server.get(), &r, sizeof r, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            server_lost();
            return;
        }
        if (n != static_cast<ssize_t>(sizeof r)) return;
        if (r.type == fs_spawned || r.type == fs_spawn_failed) {
            lock_draining();  // a failed slot's region is unmapped below
            std::lock_guard lock(mu);
            for (auto& s : slots) {
                if (s->state == slot_state::idle || s->token != r.token || s->pid >= 0) {
                    continue;
                }
                if (r.type == fs_spawned) {
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
        } else if (r.type == fs_exited) {
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
void pool_core::server_lost() {
    unwatch(server.get());
    if (server_pidfd) unwatch(server_pidfd.get());
    server_pidfd.reset();
    std::exception_ptr reconnect_error;
    try {
        fork_server_link fresh = open_fork_server_channel();
        if (!fresh.channel) throw error("procpool::init() state is gone");
        server = std::move(fresh.channel);
        server_pidfd = std::move(fresh.pidfd);
        watch(server.get(), ev(ev_server, 0), EPOLLIN);
        if (server_pidfd) watch(server_pidfd.get(), ev(ev_server_exit, 0), EPOLLIN);
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
            resolve_error(
                *t, std::make_exception_ptr(pool_shut_down("process_pool: its fork server died")));
        });
    }
}

void pool_core::on_pidfd(int index) {
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

void pool_core::on_ctl_hangup(int index) {
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

}  // namespace procpool::process
