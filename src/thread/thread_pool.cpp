#include "procpool/thread_pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "thread/task_queue.hpp"

namespace procpool {

namespace {
thread_local const void* current_pool = nullptr;
}  // namespace

struct thread_pool::impl {
    explicit impl(int n) : nworkers(n) {}

    // Submitters in progress, times two, plus bit 0 once shutdown began. shutdown() waits
    // for in-progress submits so that no task can be queued after the workers exit.
    std::atomic<std::uint64_t> gate{0};
    detail::task_queue queue;
    int nworkers;
    std::vector<std::thread> threads;
    std::mutex join_mutex;

    void worker_loop(const void* owner) {
        current_pool = owner;
        while (detail::state_base* s = queue.pop_wait()) {
            s->execute();
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
            if (s->try_claim()) s->set_cancelled("task cancelled: its pool shut down");
            s->release();
        }
    }
};

thread_pool::thread_pool(thread_pool_options opts) {
    detail::check_workers(opts.workers, "thread_pool", "threads");
    impl_ = std::make_unique<impl>(opts.workers);
    impl_->threads.reserve(static_cast<std::size_t>(opts.workers));
    for (int i = 0; i < opts.workers; ++i) {
        try {
            impl_->threads.emplace_back([this] { impl_->worker_loop(this); });
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
    const std::uint64_t g = impl_->gate.fetch_add(2, std::memory_order_acq_rel);
    if ((g & 1) != 0) {
        impl_->gate.fetch_sub(2, std::memory_order_acq_rel);
        // Drop only the queue's reference: the caller still owns the future's one and
        // releases it when the exception unwinds submit().
        s->release();
        throw pool_shut_down("thread_pool: submit after shutdown(); create a new pool");
    }
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

std::size_t thread_pool::auto_chunksize(std::size_t n) const noexcept {
    // About eight chunks a worker balances uneven items; a cap keeps the results of one
    // chunk within cache.
    const std::size_t per = n / (static_cast<std::size_t>(impl_->nworkers) * 8);
    return std::clamp<std::size_t>(per, 1, 16384);
}

}  // namespace procpool
