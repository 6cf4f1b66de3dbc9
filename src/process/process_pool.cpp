// process_pool's public front and its shutdown; the engine is in pool_*.cpp.
#include "procpool/process_pool.hpp"

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

void pool_core::close_and_cancel(bool cancel_pending) {
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

void pool_core::wait_idle() {
    idle_waiters.fetch_add(1, std::memory_order_seq_cst);
    {
        std::unique_lock lock(idle_mu);
        idle_cv.wait(lock, [this] { return outstanding.load(std::memory_order_seq_cst) == 0; });
    }
    idle_waiters.fetch_sub(1, std::memory_order_relaxed);
}

// Asks every worker to exit, waits until all are reaped, stops the supervisor.
void pool_core::stop_workers() {
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
                s->req.commit(0, msg_exit);
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

}  // namespace procpool::process

namespace procpool {

struct process_pool::impl final : process::pool_core {
    using pool_core::pool_core;
};

process_pool::process_pool(process_pool_options opts) {
    const worker_initializer init = opts.initializer;
    if (opts.shared_memory_threshold == 0) {
        throw invalid_argument("process_pool: shared_memory_threshold must be > 0 bytes");
    }
    if (opts.capture_output &&
        (opts.output_limit == 0 || opts.output_limit > process::max_output_limit)) {
        throw invalid_argument("process_pool: output_limit must be between 1 byte and 1 GiB (got " +
                               std::to_string(opts.output_limit) + " bytes)");
    }
    bulk_threshold_ = opts.shared_memory_threshold;
    copy_bulk_after_send_ = !opts.task_timeout;  // a deadline must not count the copy
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
    impl_->enqueue(t, process::task_args{args, {}});
}

void process_pool::enqueue_parts(detail::process_task_base& t, std::span<const std::byte> head,
                                 std::span<const std::byte> body) {
    impl_->enqueue(t, process::task_args{head, body});
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

pool_stats process_pool::stats() const { return impl_->monitor->stats(); }

std::vector<int> process_pool::worker_pids() const {
    std::lock_guard lock(impl_->mu);
    std::vector<int> pids;
    for (auto& s : impl_->slots) {
        if (s->pid > 0) pids.push_back(s->pid);
    }
    return pids;
}

bool process_pool::captures_output() const noexcept {
    return impl_->opts.capture_output;
}

// A chunk that finds its worker's ring full waits in the parked list, as a copy of its
// bytes made there and then copied into the ring later: a `map` keeps no more chunks
// submitted than the rings hold, and submits the next as it collects one. (The pool's
// dispatch window, smaller than this until tasks' run times are known, can still park
// some of a new pool's first chunks.) Chunks that travel out of band (larger than a
// frame may be) are copied aside anyway: no bound.
std::size_t process_pool::map_window(std::size_t chunk_bytes) const noexcept {
    // A frame: its header, the task header, the two words before the elements, rounding.
    const std::size_t frame = chunk_bytes + 128;
    if (frame > process::ring_capacity / 4) return SIZE_MAX;
    const auto workers = static_cast<std::size_t>(impl_->opts.workers);
    return workers * std::max<std::size_t>(2, process::ring_capacity / frame - 1);
}

std::size_t process_pool::auto_chunksize(std::size_t n) const noexcept {
    const std::size_t per = n / (static_cast<std::size_t>(impl_->opts.workers) * 4);
    return std::clamp<std::size_t>(per, 1, 16384);
}

}  // namespace procpool
