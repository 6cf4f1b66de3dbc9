// run_in, run_in_threads, run_in_processes: the seed article's helper. Run a function over
// a list of tasks, get every task's outcome back in input order, never an exception for a
// task's failure.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/validate.hpp"
#include "procpool/error.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/journal.hpp"
#include "procpool/outcome.hpp"
#include "procpool/process_pool.hpp"
#include "procpool/progress.hpp"
#include "procpool/thread_pool.hpp"
#include "procpool/trace.hpp"

namespace procpool {

/// Options of `run_in`, `run_in_threads` and `run_in_processes`, for designated
/// initializers in this order: `{.workers = 4, .show_progress = true, .retries = 1}`.
/// `R` is the tasks' result type; it is deduced when the options are written in the call.
template <class R>
struct run_options {
    /// Workers of the pool `run_in_threads` / `run_in_processes` create (0: one per
    /// hardware thread; never more than there are tasks). `run_in` uses the pool's own.
    int workers = 0;
    /// Report progress on stderr: a redrawn bar on a terminal, a start and a summary line
    /// otherwise (see `progress_reporter`).
    bool show_progress = false;
    /// Longest a single task may run, counted from when it starts. A process pool kills
    /// the worker; a thread cannot be stopped, so for threads the task's outcome becomes
    /// `task_timeout` while its thread finishes in the background (and stays busy).
    std::optional<std::chrono::milliseconds> timeout{};
    /// Run a task again, up to this many times, when its worker died or it timed out.
    /// Exceptions thrown by the task are not retried: they would happen again.
    int retries = 0;
    /// After the first task fails (for good), cancel every task not yet finished; those
    /// report `task_cancelled`. Running threads cannot be cancelled and finish normally.
    bool fail_fast = false;
    /// Called on the calling thread, in completion order, as each task's final outcome
    /// arrives. If it throws, the unfinished tasks are cancelled and the exception
    /// propagates out of the `run_in_*` call.
    std::function<void(std::size_t index, const outcome<R>& result)> on_result{};
    /// The most tasks submitted to the pool and not yet finished at any time (0: no bound,
    /// every task is submitted at once). The rest wait in the call, not in the pool, so a
    /// bound keeps the pool's queue (and the arguments it holds) small and leaves room
    /// for other work. Results stay in input order; retries count as the same task.
    std::size_t max_in_flight = 0;
    /// Record every task (each attempt, named by its input index) in this trace; see
    /// trace_recorder. `run_in_threads` / `run_in_processes` give it to the pool they
    /// create; `run_in` labels the tasks it submits to the given pool, which records them
    /// in the pool's own trace (if it has one) and ignores this field.
    std::shared_ptr<trace_recorder> trace{};
    /// A journal file (empty: none): each task's final outcome is appended to it as it
    /// arrives (before `on_result`), and a later call over the same inputs reuses what it
    /// holds, per `journal_mode`, without running those tasks again; `on_result` and
    /// progress still see them. Task arguments and results must be serializable
    /// (procpool/wire.hpp), else the call throws `procpool::invalid_argument`; so does a
    /// journal written for other inputs, task count or result type, or in use by another
    /// call. A failed write throws `procpool::error` as a throwing `on_result` would.
    /// Read one with `read_journal` or the `procpool-journal` tool.
    std::string journal{};
    /// What to do with the records `journal` already holds: `resume` (reuse successes,
    /// run failed tasks again), `resume_keep_failures` (reuse failures too) or `restart`.
    procpool::journal_mode journal_mode = procpool::journal_mode::resume;
    /// fdatasync the journal after each record, so records survive a power loss or an OS
    /// crash. Without it a record survives the program being killed (even by SIGKILL),
    /// since its one write() has reached the OS.
    bool journal_sync = false;
    /// Capture what each task writes to stdout and stderr into its outcome
    /// (`outcome::output()`), as `process_pool_options::capture_output`: `run_in_processes`
    /// creates its pool with it. A process-pool feature (threads share one stdout), so
    /// `run_in_threads` refuses it with `invalid_argument`, and so does `run_in` unless
    /// the executor is a process_pool created with capture_output (whose outcomes always
    /// carry their output).
    bool capture_output = false;
    /// With `capture_output`, for `run_in_processes`: the most bytes kept per stream per
    /// task (`process_pool_options::output_limit`).
    std::size_t output_limit = std::size_t{1} << 20;
};

namespace detail {

/// Tuple-like task elements whose parts are the function's arguments.
template <class F, class T>
inline constexpr bool applicable_v = false;
template <class F, class... A>
inline constexpr bool applicable_v<F, std::tuple<A...>> =
    std::is_invocable_v<std::decay_t<F>, std::decay_t<A>...>;
template <class F, class A, class B>
inline constexpr bool applicable_v<F, std::pair<A, B>> =
    std::is_invocable_v<std::decay_t<F>, std::decay_t<A>, std::decay_t<B>>;

/// True when a task element `E` is unpacked into `F`'s arguments (a tuple or pair whose
/// parts fit), false when it is passed as the single argument.
template <class F, class E>
inline constexpr bool unpacks_v = applicable_v<F, std::remove_cvref_t<E>>;

template <class F, class T>
struct applied_result;
template <class F, class... A>
struct applied_result<F, std::tuple<A...>> {
    using type = task_result_t<F, A...>;
};
template <class F, class A, class B>
struct applied_result<F, std::pair<A, B>> {
    using type = task_result_t<F, A, B>;
};

template <class F, class E, bool = unpacks_v<F, E>>
struct element_result {
    using type = task_result_t<F, E>;
};
template <class F, class E>
struct element_result<F, E, true> : applied_result<F, std::remove_cvref_t<E>> {};

/// A task element `E` is runnable by `F` as one argument or as a tuple of arguments.
template <class F, class E>
concept runs_element = unpacks_v<F, E> || std::is_invocable_v<std::decay_t<F>, std::decay_t<E>>;

}  // namespace detail

/// The result type of running `F` on an element of `Range` (after tuple unpacking).
template <class F, class Range>
using run_result_t =
    typename detail::element_result<F, std::ranges::range_reference_t<Range>>::type;

namespace detail {

/// Calls `go(args...)` with the element's parts (tuple/pair) or with the element itself.
template <class F, class E, class Go>
decltype(auto) with_arguments(const E& elem, Go&& go) {
    if constexpr (unpacks_v<F, E>) {
        return std::apply(std::forward<Go>(go), elem);
    } else {
        return std::forward<Go>(go)(elem);
    }
}

/// True if `ex` attaches captured output to its tasks' futures (a process_pool created
/// with capture_output).
template <class Ex>
bool captures_output(const Ex& ex) noexcept {
    if constexpr (requires { ex.captures_output(); }) {
        return ex.captures_output();
    } else {
        return false;
    }
}

/// Throws invalid_argument for run_options::capture_output on an executor that cannot
/// capture (`captures`: whether it does).
void check_capture_output(bool requested, bool captures, const char* label);

/// The retryable failures: the task itself may well succeed on a fresh worker.
bool is_retryable(const std::exception_ptr& e) noexcept;
/// True if `e` is a `task_cancelled`.
bool is_cancellation(const std::exception_ptr& e) noexcept;

/// Runs every element of `elems` (a random-access sized range) on `ex` and collects the
/// outcomes. All bookkeeping happens on the calling thread; completion callbacks only
/// push an attempt number into a queue, which keeps them safe to outlive this call.
/// `abandoned` is set once a timed-out task is left running on a thread (even if this
/// throws, so the caller knows not to join that thread).
template <class R, class Ex, class F, class Elems>
std::vector<outcome<R>> drive(Ex& ex, const F& fn, const Elems& elems, run_options<R>& opts,
                              int workers, const char* label, bool& abandoned) {
    using clock = std::chrono::steady_clock;
    using E = std::ranges::range_reference_t<const Elems>;
    const std::size_t n = std::ranges::size(elems);
    auto first = std::ranges::begin(elems);
    if (opts.retries < 0) throw invalid_argument("run_options::retries must be >= 0");
    detail::check_timeout(opts.timeout, "run_options::timeout");
    const bool capture = captures_output(ex);
    check_capture_output(opts.capture_output, capture, label);

    // Executors without their own timeouts (thread pools): each attempt notes when it
    // starts, and this thread stops waiting for it once the deadline has passed.
    constexpr bool pool_timeouts = timed_executor<Ex>;
    const bool watch_deadlines = opts.timeout.has_value() && !pool_timeouts;
    using started_at = std::atomic<clock::rep>;

    struct slot {
        future<R> f;
        std::size_t attempt = 0;  // id of the current attempt
        int attempts = 0;
        std::shared_ptr<started_at> started;  // only when watching deadlines
        bool launched = false;
        bool finished = false;
    };
    std::vector<slot> slots(n);
    std::vector<std::optional<outcome<R>>> results(n);
    std::vector<std::size_t> attempt_task;  // attempt id -> task index
    auto queue = std::make_shared<completion_queue>();
    std::size_t remaining = n;
    std::size_t next = 0;       // the first task not launched yet
    std::size_t in_flight = 0;  // tasks launched and not finished
    const std::size_t max_in_flight = opts.max_in_flight == 0 ? n : opts.max_in_flight;
    bool stopping = false;  // fail_fast has fired
    std::string stop_reason;

    run_journal<R> journal(opts.journal, opts.journal_mode, opts.journal_sync, elems);
    std::optional<progress_reporter> progress;
    if (opts.show_progress) {
        progress.emplace(n, workers, progress_options{.label = label});
        progress->start();
    }

    auto cancel_unfinished = [&] {
        for (auto& s : slots) {
            if (!s.finished && s.f.valid()) s.f.cancel();
        }
    };
    auto record = [&](std::size_t i, outcome<R> o) {
        slot& s = slots[i];
        if (capture && s.f.valid() && s.f.ready()) {
            outcome_access::set_output(o, s.f.output());  // ready: does not wait
        }
        s.finished = true;
        --remaining;
        if (s.launched) --in_flight;
        const bool ok = o.has_value();
        results[i].emplace(std::move(o));
        journal.finished(i, *results[i], s.attempts);
        if (progress) progress->task_finished(ok);
        if (opts.on_result) opts.on_result(i, *results[i]);
    };

    auto submit = [&](slot& s, const auto&... args) -> future<R> {
        if constexpr (pool_timeouts) {
            if (opts.timeout) return ex.submit(task_options{.timeout = *opts.timeout}, fn, args...);
            return ex.submit(fn, args...);
        } else {
            if (!watch_deadlines) return ex.submit(fn, args...);
            s.started = std::make_shared<started_at>(0);
            return ex.submit(
                [fn, started = s.started](auto&&... a) mutable -> R {
                    const auto t = clock::now().time_since_epoch().count();
                    started->store(std::max<clock::rep>(1, t), std::memory_order_release);
                    return std::invoke(fn, std::forward<decltype(a)>(a)...);
                },
                args...);
        }
    };

    // Returns true when the task should be launched again (a retry).
    auto fail = [&](std::size_t i, std::exception_ptr e) -> bool {
        slot& s = slots[i];
        if (!stopping && s.attempts <= opts.retries && is_retryable(e)) {
            if (progress) progress->task_retried();
            return true;
        }
        if (stopping && is_cancellation(e)) {
            e = std::make_exception_ptr(task_cancelled(stop_reason));
        }
        record(i, outcome<R>(task_error(i, std::move(e), s.attempts)));
        if (opts.fail_fast && !stopping) {
            stopping = true;
            stop_reason = "cancelled by fail_fast after task " + std::to_string(i) + " failed";
            cancel_unfinished();
        }
        return false;
    };
    auto launch = [&](std::size_t i) {
        for (;;) {
            slot& s = slots[i];
            const std::size_t id = attempt_task.size();
            attempt_task.push_back(i);
            s.attempt = id;
            ++s.attempts;
            try {
                detail::set_trace_label(i, static_cast<std::uint32_t>(s.attempts));
                s.f = with_arguments<F, E>(first[static_cast<std::ptrdiff_t>(i)],
                                           [&](const auto&... a) { return submit(s, a...); });
                detail::clear_trace_label();
            } catch (...) {
                detail::clear_trace_label();
                s.f = {};
                if (fail(i, std::current_exception())) continue;
                return;
            }
            s.f.on_done([queue, id] { queue->push(id); });
            return;
        }
    };

    // Launches tasks in input order while fewer than max_in_flight are unfinished; once
    // fail_fast has fired, the rest are cancelled without being launched. A task whose
    // outcome the journal holds is recorded from it instead, whatever the state.
    auto top_up = [&] {
        while (next < n && (stopping || in_flight < max_in_flight)) {
            const std::size_t i = next++;
            if (auto stored = journal.restore(i)) {
                record(i, std::move(*stored));
            } else if (stopping) {
                fail(i, std::make_exception_ptr(task_cancelled(stop_reason)));
            } else {
                slots[i].launched = true;
                ++in_flight;
                journal.launched(i);
                launch(i);
            }
        }
    };

    // A completion notice for attempt `id`; stale ones (a retried or abandoned attempt
    // finishing late) are ignored.
    auto complete = [&](std::size_t id) {
        const std::size_t i = attempt_task[id];
        slot& s = slots[i];
        if (s.finished || s.attempt != id) return;
        if (auto e = s.f.exception()) {
            if (fail(i, std::move(e))) launch(i);
        } else if constexpr (std::is_void_v<R>) {
            record(i, outcome<R>(i, std::in_place));
        } else {
            record(i, outcome<R>(i, std::in_place, std::move(s.f).get()));
        }
    };

    const auto timeout = watch_deadlines
                             ? std::chrono::duration_cast<clock::duration>(*opts.timeout)
                             : clock::duration::zero();
    // Gives up on the attempts that started more than `timeout` ago (threads only).
    auto abandon_overdue = [&](clock::time_point now) {
        for (std::size_t i = 0; i < n; ++i) {
            slot& s = slots[i];
            if (s.finished || !s.started || s.f.ready()) continue;
            const auto t0 = s.started->load(std::memory_order_acquire);
            if (t0 == 0 || now - clock::time_point(clock::duration(t0)) < timeout) continue;
            abandoned = true;
            s.f.cancel();  // stops it only if it has not started after all
            s.started.reset();
            auto e = std::make_exception_ptr(task_timeout(
                "task ran longer than its timeout of " + std::to_string(opts.timeout->count()) +
                " ms; a thread cannot be stopped, so it finishes in the background"));
            if (fail(i, std::move(e))) launch(i);
        }
    };

    try {
        top_up();
        // Deadlines are checked by scanning, so a task overruns by at most one interval.
        const auto scan_every = std::clamp<clock::duration>(
            timeout / 10, std::chrono::milliseconds(1), std::chrono::milliseconds(50));
        auto next_scan = clock::now() + scan_every;
        while (remaining > 0) {
            auto wake = progress ? progress->next_refresh() : clock::time_point::max();
            if (watch_deadlines) wake = std::min(wake, next_scan);
            if (const auto id = queue->pop(wake == clock::time_point::max() ? nullptr : &wake)) {
                complete(*id);
            }
            const auto now = clock::now();
            if (watch_deadlines && now >= next_scan) {
                next_scan = now + scan_every;
                abandon_overdue(now);
            }
            top_up();
            if (progress) progress->refresh();
        }
    } catch (...) {
        cancel_unfinished();
        throw;
    }
    if (progress) progress->finish();

    std::vector<outcome<R>> outcomes;
    outcomes.reserve(n);
    for (auto& r : results) outcomes.push_back(std::move(*r));
    return outcomes;
}

/// Ranges `drive` can index in place; others are copied into a vector first.
template <class Range>
concept indexable_range =
    std::ranges::random_access_range<Range> && std::ranges::sized_range<Range>;

/// The elements of a range that is not `indexable_range`, in a vector.
template <class Range>
auto materialize(Range&& tasks) {
    std::vector<std::ranges::range_value_t<Range>> copy;
    for (auto&& e : tasks) copy.emplace_back(std::forward<decltype(e)>(e));
    return copy;
}

/// The worker count for a pool made for `n` tasks: `requested` (0: one per hardware
/// thread), never more than `n`, at least 1.
int pool_size_for(int requested, std::size_t n) noexcept;

}  // namespace detail

/// Runs `fn` on every element of `tasks` in `executor` (any `procpool::executor`:
/// `thread_pool`, `process_pool`...) and returns one `outcome` per task, in
/// input order. An element that is a `std::tuple` or `std::pair` is unpacked into `fn`'s
/// arguments (as the seed's `executor.submit(func, *args)`); any other element is the
/// single argument. Blocks until every task has its outcome; never throws for a task's
/// failure (only for bad options, or when `on_result` throws). `options.workers` is
/// ignored: the pool has its own. The pool stays usable afterwards.
template <executor Executor, class F, std::ranges::input_range Range>
    requires detail::runs_element<F, std::ranges::range_reference_t<Range>>
[[nodiscard]] std::vector<outcome<run_result_t<F, Range>>> run_in(
    Executor& executor, F&& fn, Range&& tasks, run_options<run_result_t<F, Range>> options = {}) {
    using R = run_result_t<F, Range>;
    if constexpr (!detail::indexable_range<Range>) {
        return run_in(executor, std::forward<F>(fn), detail::materialize(tasks),
                      std::move(options));
    } else {
        int workers = options.workers;
        if constexpr (requires { executor.workers(); }) {
            workers = static_cast<int>(executor.workers());
        }
        const std::decay_t<F> f(std::forward<F>(fn));
        bool abandoned = false;
        return detail::drive<R>(executor, f, tasks, options, workers, "run_in", abandoned);
    }
}

/// `run_in` on a fresh `thread_pool` of `options.workers` threads, for I/O-bound work
/// (files, sockets, subprocesses) and for functions that cannot cross a process boundary.
/// `fn` may be any callable, capturing lambdas included.
///
/// With a `timeout`, a task that overruns is reported as `task_timeout` and abandoned:
/// this call returns without waiting for it, and its pool is released (in the
/// background) when the task returns.
template <class F, std::ranges::input_range Range>
    requires detail::runs_element<F, std::ranges::range_reference_t<Range>>
[[nodiscard]] std::vector<outcome<run_result_t<F, Range>>> run_in_threads(
    F&& fn, Range&& tasks, run_options<run_result_t<F, Range>> options = {}) {
    using R = run_result_t<F, Range>;
    if constexpr (!detail::indexable_range<Range>) {
        return run_in_threads(std::forward<F>(fn), detail::materialize(tasks), std::move(options));
    } else {
        detail::check_capture_output(options.capture_output, false, "run_in_threads");
        const int workers = detail::pool_size_for(options.workers, std::ranges::size(tasks));
        auto pool = std::make_unique<thread_pool>(thread_pool_options{
            .workers = workers, .name = "run_in_threads", .trace = options.trace});
        const std::decay_t<F> f(std::forward<F>(fn));
        bool abandoned = false;
        // Joining would wait for abandoned tasks: then a detached thread does it.
        struct release_pool {
            std::unique_ptr<thread_pool>& pool;
            const bool& abandoned;
            ~release_pool() {
                if (!abandoned) return;
                pool->shutdown({.wait = false, .cancel_pending = true});
                std::thread([p = std::move(pool)] {}).detach();
            }
        } release{pool, abandoned};
        return detail::drive<R>(*pool, f, tasks, options, workers, "run_in_threads", abandoned);
    }
}

/// `run_in` on a fresh `process_pool` of `options.workers` processes: the seed's
/// `run_in_processes`, for CPU-bound work. A task that crashes its worker (a segfault, an
/// abort, `exit`) or overruns `timeout` costs only that task; with `retries` it is run
/// again on a fresh worker. `fn` must be a function or a captureless lambda and the
/// arguments and result serializable (see `process_pool::submit`). Call
/// `procpool::init(argc, argv)` at the top of `main`.
template <class F, std::ranges::input_range Range>
    requires detail::runs_element<F, std::ranges::range_reference_t<Range>>
[[nodiscard]] std::vector<outcome<run_result_t<F, Range>>> run_in_processes(
    F&& fn, Range&& tasks, run_options<run_result_t<F, Range>> options = {}) {
    using R = run_result_t<F, Range>;
    if constexpr (!detail::indexable_range<Range>) {
        return run_in_processes(std::forward<F>(fn), detail::materialize(tasks),
                                std::move(options));
    } else {
        const int workers = detail::pool_size_for(options.workers, std::ranges::size(tasks));
        process_pool_options pool_opts;
        pool_opts.workers = workers;
        pool_opts.trace = options.trace;
        pool_opts.name = "run_in_processes";
        pool_opts.capture_output = options.capture_output;
        pool_opts.output_limit = options.output_limit;
        process_pool pool(std::move(pool_opts));
        const std::decay_t<F> f(std::forward<F>(fn));
        bool abandoned = false;  // never: a process pool kills what runs past its timeout
        return detail::drive<R>(pool, f, tasks, options, workers, "run_in_processes", abandoned);
    }
}

}  // namespace procpool
