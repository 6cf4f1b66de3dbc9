// Vocabulary shared by every executor: shutdown options, task-state construction, the
// callable-to-result mapping.
#pragma once

#include <functional>
#include <thread>
#include <type_traits>
#include <utility>

#include "procpool/detail/state.hpp"
#include "procpool/future.hpp"

namespace procpool {

/// How `shutdown()` ends a pool, as Python's `Executor.shutdown(wait, cancel_futures)`.
struct shutdown_options {
    /// Block until every worker has finished its tasks and exited.
    bool wait = true;
    /// Resolve every task that has not started with `task_cancelled` instead of running it.
    bool cancel_pending = false;
};

/// The number of hardware threads, at least 1: the default worker count.
inline int default_worker_count() noexcept {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

/// The value type a task `F(Args...)` produces: its result with references and
/// cv-qualifiers removed, since results are stored by value.
template <class F, class... Args>
using task_result_t = std::remove_cvref_t<std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>>;

namespace detail {

/// A state that also owns the callable: one allocation per in-process task.
template <class R, class Fn>
class task_state final : public state<R> {
public:
    explicit task_state(Fn&& fn) : fn_(std::move(fn)) {}

    void execute() noexcept override {
        if (!this->try_claim()) return;  // cancelled while queued
        try {
            if constexpr (std::is_void_v<R>) {
                fn_();
                this->set_value();
            } else {
                this->set_value(fn_());
            }
        } catch (...) {
            this->set_exception(std::current_exception());
        }
    }

private:
    Fn fn_;
};

/// Binds `f(args...)` into a state with one reference for the caller.
template <class F, class... A>
auto make_task(F&& f, A&&... a) {
    using R = task_result_t<F, A...>;
    auto fn = [f = std::forward<F>(f), ... args = std::forward<A>(a)]() mutable -> R {
        return std::invoke(std::move(f), std::move(args)...);
    };
    return new task_state<R, decltype(fn)>(std::move(fn));
}

}  // namespace detail
}  // namespace procpool
