// Vocabulary shared by every executor: shutdown options, task-state construction, the
// callable-to-result mapping.
#pragma once

#include <chrono>
#include <concepts>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <thread>
#include <type_traits>
#include <utility>

#include "procpool/detail/state.hpp"
#include "procpool/future.hpp"
#include "procpool/progress.hpp"

namespace procpool {

/// How `shutdown()` ends a pool, as Python's `Executor.shutdown(wait, cancel_futures)`.
struct shutdown_options {
    /// Block until every worker has finished its tasks and exited.
    bool wait = true;
    /// Resolve every task that has not started with `task_cancelled` instead of running it.
    bool cancel_pending = false;
};

/// Per-submit options of executors that enforce deadlines themselves (process pools):
/// `pool.submit(procpool::task_options{.timeout = 2s}, fn, args...)`.
struct task_options {
    /// Deadline for this task once it starts; overrides the pool's `task_timeout`.
    std::optional<std::chrono::milliseconds> timeout{};
};

/// Options of a pool's `map`: `pool.map(f, items, {.chunksize = 1000, .show_progress = true})`.
struct map_options {
    /// Elements per task (0: a size picked from the item and worker counts).
    std::size_t chunksize = 0;
    /// Report progress on stderr as `run_in_*` does (see progress_reporter), counting
    /// elements, not chunks: a map of 1M items in 8 chunks moves as the chunks finish
    /// rather than jumping from 0 to 100 %, with rate and ETA in items per second.
    bool show_progress = false;
    /// Where and how the progress line is written (label, stream, terminal or log).
    progress_options progress{.label = "map"};
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
/// A task every executor can run: used only to state the `executor` concept (never
/// defined, never called).
int executor_probe() noexcept;
}  // namespace detail

/// What `run_in` and other generic algorithms need from a pool: `submit(f, args...)`
/// returning a `procpool::future` of the call's result (or something that converts to
/// one). `thread_pool` and `process_pool` model it, and also offer `workers()` (how many
/// tasks run at once; `run_in` uses it when present), `shutdown(shutdown_options)` and
/// `map`; so should any new executor. A wrapper around a pool models it by forwarding
/// `submit`.
template <class Ex>
concept executor = requires(Ex& ex) {
    { ex.submit(&detail::executor_probe) } -> std::convertible_to<future<int>>;
};

/// An executor that stops a task past its deadline itself (`submit(task_options, f,
/// args...)`): a process pool kills the worker. Others (thread pools) cannot stop a running
/// task; `run_in` then stops waiting for it instead.
template <class Ex>
concept timed_executor = executor<Ex> && requires(Ex& ex) {
    { ex.submit(task_options{}, &detail::executor_probe) } -> std::convertible_to<future<int>>;
};

namespace detail {

/// A state that also owns the callable: one allocation per in-process task.
template <class R, class Fn>
class task_state final : public state<R> {
public:
    explicit task_state(Fn&& fn) : fn_(std::move(fn)) {
        // The body lives in this lambda so that it is instantiated with the constructor
        // (see state_base::execute for why there is no virtual function here).
        this->exec_ = [](state_base* base) noexcept {
            auto* self = static_cast<task_state*>(base);
            if (!self->try_claim()) return;  // cancelled while queued
            try {
                if constexpr (std::is_void_v<R>) {
                    self->fn_();
                    self->set_value();
                } else {
                    self->set_value(self->fn_());
                }
            } catch (...) {
                self->set_exception(std::current_exception());
            }
        };
        static_cast<void>(&task_state::destroy);  // likewise makes clang emit the destructor
    }

private:
    static void destroy(task_state* p) noexcept { delete p; }
    Fn fn_;
};

/// A callable with its arguments bound by value. A named type rather than a lambda with
/// a pack init-capture, which clang 14 fails to instantiate inside generic lambdas.
template <class R, class F, class... A>
struct bound_call {
    F f;
    std::tuple<A...> args;
    R operator()() { return std::apply(std::move(f), std::move(args)); }
};

template <class F, class... A>
using bound_task_t =
    task_state<task_result_t<F, A...>,
               bound_call<task_result_t<F, A...>, std::decay_t<F>, std::decay_t<A>...>>;

/// Binds `f(args...)` into a state with one reference for the caller. The return type is
/// spelled out: deducing it would let clang 14 instantiate the body in unevaluated
/// contexts (requires-expressions) and then never emit the state's virtual functions.
template <class F, class... A>
bound_task_t<F, A...>* make_task(F&& f, A&&... a) {
    using R = task_result_t<F, A...>;
    using Fn = bound_call<R, std::decay_t<F>, std::decay_t<A>...>;
    return new task_state<R, Fn>(Fn{std::forward<F>(f), {std::forward<A>(a)...}});
}

}  // namespace detail
}  // namespace procpool
