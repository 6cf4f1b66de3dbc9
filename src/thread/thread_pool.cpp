#include "procpool/thread_pool.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "thread/task_queue.hpp"
#include "trace/monitor.hpp"

namespace procpool {

namespace {
thread_local const void* current_pool = nullptr;
}  // namespace

struct thread_pool::impl {
    impl(int n, const thread_pool_options& o) : nworkers(n), monitor(o.name, n, o.trace) {}

    // Submitters in progress, times two, plus bit 0 once shutdown began. shutdown() waits
    // for in-progress submits so that no task can be queued after the workers exit.
    std::atomic<std::uint64_t> gate{0};
    detail::task_queue queue;
    int nworkers;
    std::vector<std::thread> threads;
    std::mutex join_mutex;
    trace::pool_monitor monitor;

    // What a worker knows of the task it runs, for the moment it resolves.
    struct running {
        impl* self;
        int worker;
        std::int64_t start;
    };

    // Called on the worker's thread as the task it runs resolves, before its waiters wake.
    static void on_publish(void* ctx, detail::state_base& s) noexcept {
        auto* r = static_cast<running*>(ctx);
        r->self->record(s, r->worker, r->start, trace::clock_ns());
    }

    // Called on the thread of a cancel() that claimed a queued task, as it publishes the
    // cancellation (state_base::cancel_observer): counted before its future is ready, not
    // only later when a worker pops it (and not lost when a worker pops it between the
    // claim and the publish, before the task shows as cancelled).
    static void on_cancelled(void* ctx, detail::state_base& s) noexcept {
        static_cast<impl*>(ctx)->record(s, -1, 0, trace::clock_ns());
    }
    const detail::publish_observer cancel_observer{nullptr, &on_cancelled, this};

    void record(const detail::state_base& s, int worker, std::int64_t start,
                std::int64_t end) noexcept {
        static const int pid = static_cast<int>(::getpid());
        monitor.finished(trace::task_done{.worker = worker,
                                          .pid = pid,
                                          .id = s.trace_id,
                                          .attempt = s.attempt,
                                          .submit_ns = s.queued_ns,
                                          .start_ns = start,
                                          .end_ns = end},
                         s.error());
    }

    void worker_loop(const void* owner, int index) {
        current_pool = owner;
        while (detail::state_base* s = queue.pop_wait()) {
            running r{this, index, trace::clock_ns()};
            const detail::observe_publish observe(s, &on_publish, &r);
            s->execute();
            // Not resolved here: a cancel() claimed it while queued, and counts it as it
            // publishes. Wait for that: the canceller may still be inside `monitor`, which
            // must outlive it (this pool cannot shut down while a worker waits here).
            if (!observe.fired()) s->wait();
            s->release();
        }
    }

    // Undoes a constructor that could not start every thread: nothing was queued, so
    // closing the queue lets the started workers return at once.
    void stop_started() noexcept {
        queue.close();
        for (auto& t : threads) t.join();
    }

    void cancel_queued() {
        while (detail::state_base* s = queue.try_pop()) {
            if (s->try_claim()) {
                running r{this, -1, 0};
                const detail::observe_publish observe(s, &on_publish, &r);
                s->set_cancelled("task cancelled: its pool shut down");
            } else {
                s->wait();  // claimed by a cancel(), which counts it (see worker_loop)
            }
            s->release();
        }
    }
};

thread_pool::thread_pool(thread_pool_options opts) {
    detail::check_workers(opts.workers, "thread_pool", "threads");
    impl_ = std::make_unique<impl>(opts.workers, opts);
    impl_->threads.reserve(static_cast<std::size_t>(opts.workers));
    for (int i = 0; i < opts.workers; ++i) {
        try {
            impl_->threads.emplace_back([this, i] { impl_->worker_loop(this, i); });
        } catch (const std::system_error& e) {
            // Leaving with joinable threads would call std::terminate: stop the ones that
            // run (nothing is queued yet) and report how far we got.
            impl_->stop_started();
            throw error("thread_pool: could start only " + std::to_string(i) + " of the " +
                        std::to_string(opts.workers) + " worker threads asked for (" +
                        e.code().message() +
                        "); ask for fewer workers, or raise the limit on threads or processes "
                        "(ulimit -u, /proc/sys/kernel/threads-max)");
        } catch (...) {
            impl_->stop_started();
            throw;
        }
        // Best effort: a name helps in top -H and gdb; the kernel limits it to 15 chars.
        std::string name = opts.name.substr(0, 10) + "/" + std::to_string(i);
        pthread_setname_np(impl_->threads.back().native_handle(), name.substr(0, 15).c_str());
    }
}

thread_pool::~thread_pool() { shutdown({.wait = true}); }

void thread_pool::enqueue(detail::state_base* s) {
    const trace::submission_label label = trace::take_label();
    const std::uint64_t g = impl_->gate.fetch_add(2, std::memory_order_acq_rel);
    if ((g & 1) != 0) {
        impl_->gate.fetch_sub(2, std::memory_order_acq_rel);
        // Drop only the queue's reference: the caller still owns the future's one and
        // releases it when the exception unwinds submit().
        s->release();
        throw pool_shut_down("thread_pool: submit after shutdown(); create a new pool");
    }
    const std::uint64_t id = impl_->monitor.submitted();
    s->trace_id = label.set ? label.id : id;
    s->attempt = label.attempt;
    s->queued_ns = trace::clock_ns();
    s->cancel_observer = &impl_->cancel_observer;
    impl_->queue.push(s);
    impl_->gate.fetch_sub(2, std::memory_order_release);
}

void thread_pool::shutdown(shutdown_options opts) {
    if (opts.wait && current_pool == this) {
        throw invalid_argument(
            "thread_pool::shutdown(wait = true) called from one of its own tasks would wait "
            "for itself; use shutdown({.wait = false}) there");
    }
    impl_->gate.fetch_or(1, std::memory_order_acq_rel);
    while ((impl_->gate.load(std::memory_order_acquire) >> 1) != 0) detail::cpu_yield();
    if (opts.cancel_pending) impl_->cancel_queued();
    impl_->queue.close();
    if (opts.wait) {
        std::lock_guard lock(impl_->join_mutex);
        for (auto& t : impl_->threads) {
            if (t.joinable()) t.join();
        }
    }
}

int thread_pool::workers() const noexcept { return impl_->nworkers; }

pool_stats thread_pool::stats() const { return impl_->monitor.stats(); }

std::size_t thread_pool::auto_chunksize(std::size_t n) const noexcept {
    // About eight chunks a worker balances uneven items; a cap keeps the results of one
    // chunk within cache.
    const std::size_t per = n / (static_cast<std::size_t>(impl_->nworkers) * 8);
    return std::clamp<std::size_t>(per, 1, 16384);
}

}  // namespace procpool
