// mpi_pool's front: tasks go to rank 0's engine, or, in single-rank mode, to a local
// process pool.
#include "procpool/mpi_pool.hpp"

#include <algorithm>
#include <climits>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <utility>

#include "mpi/engine.hpp"
#include "mpi/runtime.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/detail/validate.hpp"
#include "procpool/error.hpp"

namespace procpool {

struct mpi_pool::impl final : detail::cancel_hook, mpi_impl::pool_ref {
    mpi_pool_options opts;
    std::shared_ptr<mpi_impl::engine> eng;  // null: single-rank mode
    std::unique_ptr<process_pool> local;
    std::uint32_t id = 0;
    std::vector<mpi_rank_info> ranks;
    int total_workers = 0;

    std::mutex mu;  // closed, close_sent
    bool closed = false;
    bool close_sent = false;
    std::atomic<std::size_t> outstanding{0};
    std::mutex idle_mu;
    std::condition_variable idle_cv;

    void release_task(detail::mpi_task_base& t) noexcept override {
        // t.local stays: a thread may be cancelling through it; it goes with the task.
        t.attachments.clear();
        t.shared().release();
        // The count drops under the lock: a waiter in wait_idle that sees 0 may free this
        // pool at once, so nothing of it may be touched after the lock is released.
        std::lock_guard lock(idle_mu);
        if (outstanding.fetch_sub(1, std::memory_order_acq_rel) == 1) idle_cv.notify_all();
    }

    bool cancel_running(detail::state_base& s) noexcept override {
        auto* t = dynamic_cast<detail::mpi_task_base*>(&s);
        if (t == nullptr) return false;
        if (eng == nullptr) {
            // The local pool resolves its own task (running: by killing its worker), whose
            // callback resolves ours before cancel() returns.
            auto* f = static_cast<future<detail::raw_reply>*>(t->local.get());
            return f != nullptr && f->cancel();
        }
        if (s.is_done() || !t->begin_resolve()) return false;
        s.set_cancelled("task cancelled");
        try {
            eng->cancel(t->id);  // queued: dropped on rank 0; running: its worker is killed
        } catch (...) {          // NOLINT(bugprone-empty-catch): it still resolves by reply
        }
        return true;
    }

    bool cancel_pending(detail::state_base& s) noexcept override {
        auto* t = dynamic_cast<detail::mpi_task_base*>(&s);
        if (t == nullptr || s.is_done()) return false;
        if (eng == nullptr) {
            auto* f = static_cast<future<detail::raw_reply>*>(t->local.get());
            return f != nullptr && f->cancel_pending();
        }
        // Only the engine thread knows whether the task has left rank 0, and only its
        // rank whether it started: ask, and let it resolve as usual.
        try {
            eng->cancel_if_pending(t->id);
        } catch (...) {  // NOLINT(bugprone-empty-catch): it resolves by reply all the same
        }
        return false;
    }

    bool help_wait(const detail::state_base& s,
                   const std::chrono::steady_clock::time_point* /*deadline*/) noexcept override {
        return s.is_done();
    }

    void wait_idle() {
        std::unique_lock lock(idle_mu);
        idle_cv.wait(lock, [this] { return outstanding.load(std::memory_order_acquire) == 0; });
    }
};

namespace {

// What fits in one MPI message (count is an int) with a task's header.
constexpr std::size_t max_message_args = std::size_t{INT_MAX} - 4096;

void check_options(const mpi_pool_options& o) {
    if (o.workers_per_rank < 0 || o.workers_per_rank > detail::max_pool_workers) {
        throw invalid_argument("mpi_pool: workers_per_rank must be 0 (one per core) to " +
                               std::to_string(detail::max_pool_workers) + ", got " +
                               std::to_string(o.workers_per_rank));
    }
    if (o.in_flight_per_worker < 0) {
        throw invalid_argument("mpi_pool: in_flight_per_worker must be 0 (adaptive) or more, got " +
                               std::to_string(o.in_flight_per_worker));
    }
    if (o.max_tasks_per_child < 0) {
        throw invalid_argument("mpi_pool: max_tasks_per_child must be >= 0 (0: unlimited)");
    }
    detail::check_timeout(o.task_timeout, "mpi_pool_options::task_timeout");
}

}  // namespace

mpi_pool::mpi_pool(mpi_pool_options opts) : impl_(std::make_unique<impl>()) {
    check_options(opts);
    impl& p = *impl_;
    p.opts = std::move(opts);
    if (mpi_impl::runtime::serving()) {
        throw error("mpi_pool: created on a serving rank; only rank 0 runs the program's logic "
                    "(call procpool::mpi_init at the top of main)");
    }
    if (mpi_impl::runtime::finalized()) {
        throw error("mpi_pool: created after mpi_finalize(); the serving ranks have exited");
    }
    p.eng = mpi_impl::runtime::engine_or_null();
    if (p.eng == nullptr) {
        process_pool_options lo;
        if (p.opts.workers_per_rank > 0) lo.workers = p.opts.workers_per_rank;
        lo.max_tasks_per_child = p.opts.max_tasks_per_child;
        lo.memory_limit = p.opts.memory_limit;
        lo.env = p.opts.env;
        lo.initializer = p.opts.initializer;
        lo.task_timeout = p.opts.task_timeout;
        // Replies are decoded after the local pool has let go of their shared blocks, so
        // results travel in their own bytes, as they do from another rank.
        lo.shared_memory_threshold = SIZE_MAX;
        p.local = std::make_unique<process_pool>(std::move(lo));
        p.total_workers = p.local->workers();
        p.ranks.push_back({0, mpi_impl::host_name(), p.total_workers});
        mpi_impl::runtime::notice_local(p.total_workers);
        return;
    }
    mpi_impl::open_msg m;
    m.pool = p.eng->next_pool_id();
    m.workers = p.opts.workers_per_rank;
    m.max_tasks_per_child = p.opts.max_tasks_per_child;
    m.memory_limit = p.opts.memory_limit;
    m.env = p.opts.env;
    m.init_invoker = detail::initializer_access::invoker(p.opts.initializer);
    m.init_fn = detail::initializer_access::fn(p.opts.initializer);
    m.init_args = detail::initializer_access::args(p.opts.initializer);
    p.id = m.pool;
    p.ranks = p.eng->open_pool(std::move(m), p.opts.in_flight_per_worker);
    for (const auto& r : p.ranks) p.total_workers += r.workers;
}

mpi_pool::~mpi_pool() {
    try {
        shutdown({.wait = true});
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
    }
    detail::cancel_hook::quiesce(impl_.get());
}

void mpi_pool::enqueue(detail::mpi_task_base& t, const std::vector<std::byte>& args) {
    impl& p = *impl_;
    {
        std::lock_guard lock(p.mu);
        if (p.closed) throw pool_shut_down("mpi_pool: submit after shutdown(); create a new pool");
        if (p.eng && p.eng->stopped()) {
            throw pool_shut_down("mpi_pool: submit after mpi_finalize(); the serving ranks have "
                                 "exited");
        }
        p.outstanding.fetch_add(1, std::memory_order_relaxed);
    }
    t.shared().set_cancel_hook(impl_.get());
    t.shared().add_ref();  // the pool's reference, dropped by release_task
    t.pool = static_cast<mpi_impl::pool_ref*>(impl_.get());
    t.pool_id = p.id;
    if (p.local) {
        future<detail::raw_reply> f;
        try {
            f = detail::relay_access::submit(*p.local, t.invoker, t.fn, t.timeout_ns, args.data(),
                                             args.size(), t.attachments);
        } catch (...) {
            if (t.begin_resolve()) t.shared().set_exception(std::current_exception());
            p.release_task(t);
            return;
        }
        t.local = std::make_shared<future<detail::raw_reply>>(f);
        f.on_done([&t, &p](const future<detail::raw_reply>& done) {
            if (auto e = done.exception()) {
                if (t.begin_resolve()) {
                    if (done.cancelled()) {
                        t.shared().set_cancelled(mpi_impl::error_text(e).c_str());
                    } else {
                        t.shared().set_exception(std::move(e));
                    }
                }
            } else if (t.begin_resolve()) {
                const detail::raw_reply& r = done.get();
                wire::reader in(r.bytes.data(), r.bytes.size());
                detail::attachment_scope none(nullptr);
                t.decode(r.status, in);
            }
            p.release_task(t);
        });
        return;
    }
    if (args.size() > max_message_args) {
        if (t.begin_resolve()) {
            t.shared().set_exception(std::make_exception_ptr(serialization_error(
                "mpi_pool: the task's arguments take " + std::to_string(args.size()) +
                " bytes; one MPI message carries at most 2 GiB. Split the work, or share the "
                "data through a file every node can read")));
        }
        p.release_task(t);
        return;
    }
    if (t.timeout_ns < 0 && p.opts.task_timeout) {
        t.timeout_ns = static_cast<std::int64_t>(p.opts.task_timeout->count()) * 1'000'000;
    }
    t.id = p.eng->next_id();
    t.args = args;
    if (!p.eng->submit(t, p.id)) {  // mpi_finalize ran since the check above
        if (t.begin_resolve()) {
            t.shared().set_exception(std::make_exception_ptr(pool_shut_down(
                "mpi_pool: submit after mpi_finalize(); the serving ranks have exited")));
        }
        p.release_task(t);
    }
}

void mpi_pool::shutdown(shutdown_options opts) {
    impl& p = *impl_;
    {
        std::lock_guard lock(p.mu);
        p.closed = true;
    }
    if (p.local) {
        p.local->shutdown({.wait = false, .cancel_pending = opts.cancel_pending});
        if (!opts.wait) return;
        p.wait_idle();
        p.local->shutdown({.wait = true});
        return;
    }
    if (opts.cancel_pending) p.eng->cancel_pending(p.id);
    if (!opts.wait) return;
    p.wait_idle();
    std::lock_guard lock(p.mu);
    if (!p.close_sent) {
        p.close_sent = true;
        p.eng->close_pool(p.id);
    }
}

int mpi_pool::workers() const noexcept { return impl_->total_workers; }

const std::vector<mpi_rank_info>& mpi_pool::ranks() const noexcept { return impl_->ranks; }

std::size_t mpi_pool::auto_chunksize(std::size_t n) const noexcept {
    const std::size_t per = n / (static_cast<std::size_t>(std::max(1, impl_->total_workers)) * 4);
    return std::clamp<std::size_t>(per, 1, 16384);
}

}  // namespace procpool
