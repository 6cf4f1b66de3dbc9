// process_pool: tasks in worker processes that survive crashes and can be killed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/validate.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/shared_array.hpp"
#include "procpool/wire.hpp"

namespace procpool {

namespace detail {
/// True if a task result of type R can come back from a worker (void always can).
template <class R>
constexpr bool result_crosses() {
    if constexpr (std::is_void_v<R>) {
        return true;
    } else {
        return wire::is_serializable_v<R>;
    }
}
}  // namespace detail

/// Prepares procpool for process pools; call it first thing in `main`, while the program
/// is still single-threaded. It is the C++ counterpart of Python's
/// `if __name__ == "__main__":` guard: it starts a small fork server from the clean,
/// single-threaded program, and every later pool gets its workers from it, so pools are
/// safe to create even once the program runs other threads (whose locks a plain fork
/// would copy in a locked state). Calling it again does nothing. `argc`/`argv` are
/// accepted for future start methods and not modified.
void init(int argc, char** argv);

/// True once `init` has started the fork server.
bool initialized() noexcept;

/// How a process pool creates its workers.
enum class start_method {
    /// `forkserver` if `init` ran, else `fork`.
    automatic,
    /// Workers are forked from the fork server `init` started: they see the program as it
    /// was at `init`, and a threaded parent cannot leave them with a locked mutex.
    forkserver,
    /// Workers are forked from the pool's supervisor thread: they see the program's
    /// current state (copy-on-write: data loaded after start-up is visible for free).
    /// Hazard: locks held by other threads at that moment stay locked in the worker.
    fork,
};

/// Environment variables set in every worker by default: one BLAS/OpenMP thread each,
/// since the pool itself provides the parallelism.
std::vector<std::pair<std::string, std::string>> default_worker_env();

/// A function and arguments run once in each new worker before its first task.
class worker_initializer {
public:
    /// No initializer.
    worker_initializer() = default;
    /// Runs `f(args...)` in each new worker. `f` is a free function or captureless lambda;
    /// arguments must be serializable. If it throws, every task the pool holds fails with
    /// a `remote_exception` describing it and the pool stops taking work.
    template <class F, class... A>
        requires detail::remote_callable<F>
    explicit worker_initializer(F&& f, A&&... args)
        : invoker_(detail::code_offset(reinterpret_cast<const void*>(
              detail::invoker_for<std::decay_t<F>, detail::wire_arg_t<A>...>()))),
          fn_(detail::callable_offset(static_cast<const std::decay_t<F>&>(f))) {
        wire::writer w(args_);
        wire::save_all(w, detail::wire_arg_t<A>(std::forward<A>(args))...);
    }
    /// True if an initializer was set.
    explicit operator bool() const noexcept { return invoker_ != 0; }

private:
    friend class process_pool;
    std::uint64_t invoker_ = 0;
    std::uint64_t fn_ = 0;
    std::vector<std::byte> args_;
};

/// Options of a `process_pool`; designated initializers:
/// `process_pool({.workers = 4, .task_timeout = 30s})`.
struct process_pool_options {
    /// Number of worker processes (> 0). Defaults to the number of hardware threads.
    int workers = default_worker_count();
    /// Default deadline for each task, counted from when it starts running; the worker of
    /// a task past its deadline is killed and replaced, and its future gets `task_timeout`.
    std::optional<std::chrono::milliseconds> task_timeout{};
    /// Replace a worker after it has run this many tasks (0: never), to contain leaks.
    int max_tasks_per_child = 0;
    /// Address-space limit per worker in bytes (RLIMIT_AS; 0: none). A task allocating
    /// past it gets `std::bad_alloc`, reported as `remote_exception`.
    std::size_t memory_limit = 0;
    /// Environment overrides applied in each worker (see `default_worker_env`).
    std::vector<std::pair<std::string, std::string>> env = default_worker_env();
    /// Run once in each new worker (see `worker_initializer`).
    worker_initializer initializer{};
    /// How workers are created.
    start_method start = start_method::automatic;
    /// A `std::vector` of trivially copyable elements (argument or result) at least this
    /// many bytes travels through a shared-memory block instead of the byte stream: one
    /// copy on each side, whatever its size.
    std::size_t shared_memory_threshold = std::size_t{1} << 20;
};

/// Per-submit options: `pool.submit(procpool::task_options{.timeout = 2s}, fn, args...)`.
struct task_options {
    /// Deadline for this task once it starts; overrides the pool's `task_timeout`.
    std::optional<std::chrono::milliseconds> timeout{};
};

/// A pool of worker processes, the counterpart of Python's `ProcessPoolExecutor`, that
/// keeps working when tasks crash: a task that segfaults, aborts, exits or times out fails
/// only its own future (`worker_died`, `task_timeout`), its worker is replaced and every
/// other task completes. Tasks are free functions or captureless lambdas of the same
/// binary; arguments and results cross by value through shared memory (see wire.hpp).
class process_pool {
public:
    /// Starts the workers. Throws `procpool::invalid_argument` for bad options and
    /// `procpool::error` if processes cannot be created.
    explicit process_pool(process_pool_options opts = {});
    /// Equivalent to `shutdown({.wait = true})`.
    ~process_pool();
    process_pool(const process_pool&) = delete;
    process_pool& operator=(const process_pool&) = delete;
    process_pool(process_pool&&) = delete;
    process_pool& operator=(process_pool&&) = delete;

    /// Runs `f(args...)` in a worker and returns its future. Arguments are serialized now;
    /// one that cannot be resolves the future with `serialization_error`.
    /// Throws `pool_shut_down` after `shutdown()`.
    template <class F, class... A>
    [[nodiscard]] auto submit(F&& f, A&&... args) {
        return submit(task_options{}, std::forward<F>(f), std::forward<A>(args)...);
    }

    /// As `submit(f, args...)`, with per-task options (a timeout).
    template <class F, class... A>
    [[nodiscard]] auto submit(task_options topts, F&& f, A&&... args) {
        using Fn = std::decay_t<F>;
        static_assert(detail::remote_callable<F>,
                      "process_pool tasks must be free functions or captureless lambdas: a "
                      "capture cannot cross a process boundary; pass the data as arguments");
        static_assert(std::is_invocable_v<Fn&, detail::wire_arg_t<A>...>,
                      "process_pool::submit: the function cannot be called with these arguments");
        using R = std::remove_cvref_t<std::invoke_result_t<Fn&, detail::wire_arg_t<A>...>>;
        static_assert(detail::result_crosses<R>(),
                      "process_pool::submit: the task's result type cannot cross a process "
                      "boundary (see procpool/wire.hpp)");
        return submit_encoded<R, Fn, detail::wire_arg_t<A>...>(
            topts, detail::callable_offset(static_cast<const Fn&>(f)), [&](wire::writer& w) {
                detail::save_call_args<Fn>(w, std::forward<A>(args)...);
            });
    }

    /// Applies `f` to every element of `items` in the workers and returns the results in
    /// input order, like Python's `ProcessPoolExecutor.map`. Elements travel in chunks of
    /// `chunksize` (0 picks a size from the item and worker counts: large chunks make tiny
    /// tasks cheap). If a call fails, the error of the first failing element (in input
    /// order) is thrown after every chunk has finished.
    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& items, std::size_t chunksize = 0) {
        using Fn = std::decay_t<F>;
        using T = std::ranges::range_value_t<Range>;
        static_assert(detail::remote_callable<F>,
                      "process_pool tasks must be free functions or captureless lambdas");
        using R = std::remove_cvref_t<std::invoke_result_t<Fn&, T>>;
        static_assert(!std::is_void_v<R>,
                      "process_pool::map needs a function that returns a value; use submit");
        if constexpr (!std::ranges::contiguous_range<Range> || !std::ranges::sized_range<Range>) {
            // Chunks are sent straight from contiguous memory: materialise other ranges.
            std::vector<T> copy(std::ranges::begin(items), std::ranges::end(items));
            return map(std::forward<F>(f), copy, chunksize);
        } else {
            const T* base = std::ranges::data(items);
            const std::size_t n = std::ranges::size(items);
            if (chunksize == 0) chunksize = auto_chunksize(n);
            const std::uint64_t fn_off = detail::callable_offset(static_cast<const Fn&>(f));
            using chunk_fn = std::vector<R> (*)(std::uint64_t, std::vector<T>);
            const chunk_fn chunk = &detail::map_chunk<Fn, T, R>;
            std::vector<future<std::vector<R>>> chunks;
            chunks.reserve((n + chunksize - 1) / chunksize);
            for (std::size_t lo = 0; lo < n; lo += chunksize) {
                const std::size_t hi = std::min(n, lo + chunksize);
                // Same bytes as submit(chunk, fn_off, std::vector<T>(base + lo, base + hi)),
                // without building the vector.
                chunks.push_back(submit_encoded<std::vector<R>, chunk_fn, std::uint64_t,
                                                std::vector<T>>(
                    task_options{}, detail::callable_offset(chunk), [&](wire::writer& w) {
                        wire::save(w, fn_off);
                        wire::detail::save_vector_of(w, base + lo, hi - lo);
                    }));
            }
            std::vector<R> out;
            out.reserve(n);
            std::exception_ptr first;
            for (auto& c : chunks) {
                if (auto e = c.exception()) {
                    if (!first) first = e;
                    continue;
                }
                if (first) continue;
                auto part = std::move(c).get();
                out.insert(out.end(), std::make_move_iterator(part.begin()),
                           std::make_move_iterator(part.end()));
            }
            if (first) std::rethrow_exception(first);
            return out;
        }
    }

    /// Stops accepting work. With `wait`, blocks until every task resolved and the workers
    /// exited; with `cancel_pending`, tasks not yet started resolve as `task_cancelled`
    /// (running ones finish). Calling it again is harmless.
    void shutdown(shutdown_options opts = {});

    /// The number of worker processes the pool keeps running.
    int workers() const noexcept;

    /// Process ids of the live workers (for diagnostics and tests).
    std::vector<int> worker_pids() const;

private:
    // Creates the task for an invoker of `Fn(InvArgs...)`, lets `encode` write the
    // arguments (as InvArgs would be written) and queues it.
    template <class R, class Fn, class... InvArgs, class Encode>
    future<R> submit_encoded(task_options topts, std::uint64_t fn_off, Encode&& encode) {
        detail::check_timeout(topts.timeout, "task_options::timeout");
        auto* t = new detail::process_task<R>();
        t->try_claim();  // the pool owns it from here; cancel() goes through the pool
        detail::state_ptr<detail::state<R>> owner(t);
        t->invoker = detail::code_offset(
            reinterpret_cast<const void*>(detail::invoker_for<Fn, InvArgs...>()));
        t->fn = fn_off;
        t->timeout_ns = topts.timeout ? timeout_ns(*topts.timeout) : -1;
        std::vector<std::byte>& buf = scratch();
        buf.clear();
        try {
            detail::attachment_scope scope(&t->attachments, nullptr, shared_threshold_);
            wire::writer w(buf);
            encode(w);
        } catch (const std::exception& e) {
            t->set_exception(std::make_exception_ptr(serialization_error(
                std::string("could not serialize the task's arguments: ") + e.what())));
            return detail::make_future(std::move(owner));
        }
        enqueue(*t, buf);
        return detail::make_future(std::move(owner));
    }

    static std::int64_t timeout_ns(std::chrono::milliseconds d) noexcept {
        return static_cast<std::int64_t>(d.count()) * 1'000'000;
    }
    static std::vector<std::byte>& scratch() noexcept {
        thread_local std::vector<std::byte> buf;
        return buf;
    }
    std::size_t auto_chunksize(std::size_t n) const noexcept;
    void enqueue(detail::process_task_base& t, const std::vector<std::byte>& args);

    struct impl;
    std::unique_ptr<impl> impl_;
    std::size_t shared_threshold_ = SIZE_MAX;
};

}  // namespace procpool
