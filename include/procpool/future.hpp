// future<T>, promise<T>, as_completed and wait: the vocabulary every executor shares.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/state.hpp"
#include "procpool/error.hpp"
#include "procpool/task_output.hpp"

namespace procpool {

template <class T>
class future;

namespace detail {
template <class T>
future<T> make_future(state_ptr<state<T>> s) noexcept;
}  // namespace detail

/// The eventual result of a task: a value of type T, or an error.
///
/// Like Python's `concurrent.futures.Future`, a future is a handle to shared state:
/// copies refer to the same task, `get()` may be called any number of times on an
/// lvalue, and every future an executor hands out is resolved eventually (with a
/// value, the task's exception, or a procpool error such as `task_cancelled`).
template <class T>
class future {
public:
    using value_type = T;

    /// An empty future (`valid() == false`), e.g. a default-constructed vector element.
    future() = default;

    /// True if this future refers to a task.
    bool valid() const noexcept { return static_cast<bool>(s_); }

    /// True once the task has a value or an error. Never blocks.
    bool ready() const noexcept { return s_->is_done(); }

    /// True if the task ended cancelled (by `cancel()` or a pool shutdown).
    bool cancelled() const noexcept { return s_->is_cancelled(); }

    /// Blocks until the task is done.
    void wait() const noexcept { s_->wait(); }

    /// Blocks until the task is done or `d` has passed. Returns `ready()`.
    template <class Rep, class Period>
    bool wait_for(std::chrono::duration<Rep, Period> d) const noexcept {
        // Waits longer than ~100 years (e.g. duration::max()) mean "no deadline"; adding
        // them to now() would overflow.
        using namespace std::chrono;
        if (d > duration_cast<duration<Rep, Period>>(hours(24 * 365 * 100))) {
            wait();
            return true;
        }
        return wait_until(steady_clock::now() + duration_cast<steady_clock::duration>(d));
    }

    /// Blocks until the task is done or the time point `t` is reached. Returns `ready()`.
    template <class Clock, class Duration>
    bool wait_until(std::chrono::time_point<Clock, Duration> t) const noexcept {
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                  t - Clock::now());
        return s_->wait(&deadline);
    }

    /// Waits, then returns the value or rethrows the task's error. For tasks run in this
    /// process the original exception object is rethrown; for tasks run in another
    /// process, `remote_exception` or another `procpool::error`.
    decltype(auto) get() const& {
        wait();
        if (s_->error()) std::rethrow_exception(s_->error());
        if constexpr (!std::is_void_v<T>) return std::as_const(s_->value());
    }

    /// Waits, then moves the value out (the future should not be read again), or rethrows.
    T get() && {
        wait();
        if (s_->error()) std::rethrow_exception(s_->error());
        if constexpr (!std::is_void_v<T>) return std::move(s_->value());
    }

    /// Waits, then returns the task's error, or null if it produced a value.
    std::exception_ptr exception() const noexcept {
        wait();
        return s_->error();
    }

    /// Waits, then returns what the task wrote to stdout and stderr, for a task of a
    /// process pool created with `capture_output` (see `task_output`); null for other
    /// tasks, for one that never ran (cancelled before it started) and for one cancelled
    /// while running (resolved at once, as its worker is killed). The text stays valid
    /// after the future is gone.
    std::shared_ptr<const task_output> output() const noexcept {
        wait();
        return detail::captured_output(*s_);
    }

    /// Stops the task if it can. A task that has not started is always stopped; a running
    /// task only where the executor can kill it (a process pool kills its worker). On
    /// success the future holds `task_cancelled` and this returns true.
    bool cancel() const noexcept { return s_->cancel(); }

    /// Stops the task only if it has not started, as Python's `Future.cancel()`: unlike
    /// `cancel()`, never kills a process pool's worker to stop a running task. Returns true
    /// if the task was stopped (the future then holds `task_cancelled`); false if it runs,
    /// has run, or could no longer be stopped for sure, in which case it resolves as usual.
    bool cancel_pending() const noexcept { return s_->cancel_pending(); }

    /// Runs `fn` exactly once when the task is done: right away on this thread if it
    /// already is, otherwise on the thread that completes it. `fn` takes either no
    /// argument or this future. Exceptions thrown by `fn` are reported and dropped.
    template <class F>
    void on_done(F&& fn) const {
        static_assert(std::is_invocable_v<std::decay_t<F>&, const future&> ||
                          std::is_invocable_v<std::decay_t<F>&>,
                      "on_done callback must be callable with no arguments or with the future");
        struct node final : detail::callback_node {
            node(F&& f, detail::state<T>* s) : fn(std::forward<F>(f)), s(s) {}
            void run() noexcept override {
                try {
                    if constexpr (std::is_invocable_v<std::decay_t<F>&, const future&>) {
                        // Whoever completes the state holds a reference while callbacks
                        // run, so taking a new one here is safe.
                        s->add_ref();
                        fn(future(detail::state_ptr<detail::state<T>>(s)));
                    } else {
                        fn();
                    }
                } catch (...) {
                    detail::report_callback_error();
                }
            }
            std::decay_t<F> fn;
            // Not owning: a state that referred to itself through its own callback
            // would never be freed.
            detail::state<T>* s;
        };
        s_->add_callback(new node(std::forward<F>(fn), s_.get()));
    }

    /// Two futures are equal when they refer to the same task.
    friend bool operator==(const future& a, const future& b) noexcept {
        return a.s_.get() == b.s_.get();
    }

    /// Identity of the underlying task, for hashing and ordering.
    const void* id() const noexcept { return s_.get(); }

private:
    friend future detail::make_future<T>(detail::state_ptr<detail::state<T>>) noexcept;
    explicit future(detail::state_ptr<detail::state<T>> s) noexcept : s_(std::move(s)) {}

    detail::state_ptr<detail::state<T>> s_;
};

namespace detail {
template <class T>
future<T> make_future(state_ptr<state<T>> s) noexcept {
    return future<T>(std::move(s));
}
}  // namespace detail

/// The producing side of a future, for code that computes a result itself (the
/// counterpart of `std::promise`). Each promise resolves its future exactly once; a
/// promise destroyed unresolved resolves it with `task_cancelled` so no waiter hangs.
template <class T>
class promise {
public:
    promise() : s_(new detail::state<T>()) {}
    promise(promise&&) noexcept = default;
    promise& operator=(promise&& o) noexcept {
        abandon();
        s_ = std::move(o.s_);
        return *this;
    }
    ~promise() { abandon(); }

    /// A future for this promise's result. May be called any number of times.
    future<T> get_future() const {
        detail::state_ptr<detail::state<T>> p = s_;
        return detail::make_future(std::move(p));
    }

    /// Resolves the future with a value. Returns false if it was already resolved
    /// (or cancelled through the future).
    template <class... A>
    bool set_value(A&&... a) {
        if (!s_->try_claim()) return false;
        s_->set_value(std::forward<A>(a)...);
        return true;
    }

    /// Resolves the future with an error. Returns false if it was already resolved.
    bool set_exception(std::exception_ptr e) {
        if (!s_->try_claim()) return false;
        s_->set_exception(std::move(e));
        return true;
    }

private:
    void abandon() noexcept {
        if (s_ && s_->try_claim()) s_->set_cancelled("promise destroyed without a result");
    }
    detail::state_ptr<detail::state<T>> s_;
};

/// What `wait()` waits for, as in Python's `concurrent.futures.wait`.
enum class return_when {
    first_completed,  ///< Return as soon as any future is done.
    first_exception,  ///< Return when any future fails, or when all are done.
    all_completed,    ///< Return when every future is done.
};

/// The result of `wait()`: the futures that are done and those that are not, each in
/// input order.
template <class T>
struct wait_result {
    std::vector<future<T>> done;      ///< Futures that had completed when wait returned.
    std::vector<future<T>> not_done;  ///< The rest.
};

namespace detail {

/// Collects completion notices from many futures; shared with their callbacks so that
/// abandoning an as_completed loop early is safe.
class completion_queue {
public:
    void push(std::size_t i) {
        {
            std::lock_guard lock(m_);
            q_.push_back(i);
        }
        cv_.notify_one();
    }
    /// Pops the next completed index; nullopt if the deadline (if any) passed first.
    std::optional<std::size_t> pop(const std::chrono::steady_clock::time_point* deadline) {
        std::unique_lock lock(m_);
        auto nonempty = [this] { return !q_.empty(); };
        if (deadline != nullptr) {
            if (!cv_.wait_until(lock, *deadline, nonempty)) return std::nullopt;
        } else {
            cv_.wait(lock, nonempty);
        }
        std::size_t i = q_.front();
        q_.pop_front();
        return i;
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::size_t> q_;
};

template <class T>
std::shared_ptr<completion_queue> watch(const std::vector<future<T>>& fs) {
    auto q = std::make_shared<completion_queue>();
    for (std::size_t i = 0; i < fs.size(); ++i) {
        fs[i].on_done([q, i] { q->push(i); });
    }
    return q;
}

}  // namespace detail

/// A range over futures in completion order; see `as_completed`.
template <class T>
class completion_range {
public:
    /// Input iterator: dereferences to the next future to complete.
    class iterator {
    public:
        using value_type = future<T>;
        using difference_type = std::ptrdiff_t;
        const future<T>& operator*() const { return r_->fs_[r_->current_]; }
        const future<T>* operator->() const { return &r_->fs_[r_->current_]; }
        iterator& operator++() {
            r_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t) const { return r_->finished(); }

    private:
        friend class completion_range;
        explicit iterator(completion_range* r) : r_(r) {}
        completion_range* r_;
    };

    /// Starts the iteration (blocks until the first future completes).
    iterator begin() {
        if (!started_) {
            started_ = true;
            advance();
        }
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

    /// Use `as_completed` rather than constructing this directly.
    completion_range(std::vector<future<T>> fs,
                     std::optional<std::chrono::steady_clock::time_point> deadline)
        : fs_(std::move(fs)), deadline_(deadline), q_(detail::watch(fs_)) {}

private:

    bool finished() const noexcept { return yielded_ > fs_.size(); }
    void advance() {
        if (yielded_ == fs_.size()) {
            ++yielded_;
            return;
        }
        auto i = q_->pop(deadline_ ? &*deadline_ : nullptr);
        if (!i) {
            throw timeout_error(std::to_string(fs_.size() - yielded_) + " of " +
                                std::to_string(fs_.size()) +
                                " futures unfinished when the as_completed timeout passed");
        }
        current_ = *i;
        ++yielded_;
    }

    std::vector<future<T>> fs_;
    std::optional<std::chrono::steady_clock::time_point> deadline_;
    std::shared_ptr<detail::completion_queue> q_;
    std::size_t current_ = 0;
    std::size_t yielded_ = 0;
    bool started_ = false;
};

/// Iterate over `fs` in the order they complete, already-done ones first, as Python's
/// `as_completed`. With a timeout (counted from this call), advancing past the deadline
/// throws `timeout_error`. Usage: `for (auto& f : as_completed(futures)) use(f.get());`
template <class T, class D = std::chrono::steady_clock::duration>
completion_range<T> as_completed(std::vector<future<T>> fs, std::optional<D> timeout = {}) {
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (timeout) {
        deadline = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
    }
    return completion_range<T>(std::move(fs), deadline);
}

/// `as_completed` with a timeout given as a plain duration.
template <class T, class Rep, class Period>
completion_range<T> as_completed(std::vector<future<T>> fs,
                                 std::chrono::duration<Rep, Period> timeout) {
    return as_completed(std::move(fs), std::optional<std::chrono::duration<Rep, Period>>(timeout));
}

/// Waits for futures as Python's `concurrent.futures.wait`: returns when `when` is
/// satisfied or the timeout (if any) passes, never throws for a timeout. The result
/// splits the futures into done and not done, each in input order.
template <class T, class D = std::chrono::steady_clock::duration>
wait_result<T> wait(const std::vector<future<T>>& fs,
                    return_when when = return_when::all_completed,
                    std::optional<D> timeout = {}) {
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (timeout) {
        deadline = std::chrono::steady_clock::now() +
                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(*timeout);
    }
    auto satisfied = [&](std::size_t n_done, bool any_failed) {
        switch (when) {
            case return_when::first_completed:
                return n_done > 0 || fs.empty();
            case return_when::first_exception:
                return any_failed || n_done == fs.size();
            case return_when::all_completed:
                break;
        }
        return n_done == fs.size();
    };
    std::size_t n_done = 0;
    bool any_failed = false;
    for (const auto& f : fs) {
        if (f.ready()) {
            ++n_done;
            any_failed = any_failed || f.exception() != nullptr;
        }
    }
    if (!satisfied(n_done, any_failed)) {
        auto q = detail::watch(fs);
        // The callbacks also report futures already done; count each index once.
        std::vector<bool> seen(fs.size(), false);
        std::size_t n_seen = 0;
        bool failed_seen = false;
        while (!satisfied(n_seen, failed_seen)) {
            auto i = q->pop(deadline ? &*deadline : nullptr);
            if (!i) break;
            if (!seen[*i]) {
                seen[*i] = true;
                ++n_seen;
                failed_seen = failed_seen || fs[*i].exception() != nullptr;
            }
        }
    }
    wait_result<T> r;
    for (const auto& f : fs) (f.ready() ? r.done : r.not_done).push_back(f);
    return r;
}

/// `wait` with a timeout given as a plain duration.
template <class T, class Rep, class Period>
wait_result<T> wait(const std::vector<future<T>>& fs, return_when when,
                    std::chrono::duration<Rep, Period> timeout) {
    return wait(fs, when, std::optional<std::chrono::duration<Rep, Period>>(timeout));
}

}  // namespace procpool
