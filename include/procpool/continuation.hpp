// Continuations and coroutines over procpool::future: then, when_all, when_any,
// co_await of a future, resume_on, and future<T> as a coroutine return type.
//
// Nothing here blocks a thread: everything is built from future::on_done callbacks and
// promises. Callbacks run on the thread that completes a future (a pool worker, a process
// pool's supervisor or a thread waiting on one of its futures), or at once on the calling
// thread when the future is already done.
#pragma once

#include <atomic>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/error.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"

namespace procpool {

namespace detail {

/// Resolves `p` with the outcome of `f` (which is done).
template <class U>
void forward_outcome(promise<U>& p, const future<U>& f) {
    if (auto e = f.exception()) {
        p.set_exception(std::move(e));
    } else if constexpr (std::is_void_v<U>) {
        p.set_value();
    } else {
        p.set_value(f.get());
    }
}

/// Does `fn` take the source's value (or nothing, for a void source)?
template <class Fn, class T>
constexpr bool takes_value() {
    if constexpr (std::is_void_v<T>) {
        return std::is_invocable_v<std::decay_t<Fn>&>;
    } else {
        return std::is_invocable_v<std::decay_t<Fn>&, const T&>;
    }
}

template <class Fn, class T>
struct then_result {
    using type = std::conditional_t<
        takes_value<Fn, T>(),
        std::conditional_t<std::is_void_v<T>, std::invoke_result<std::decay_t<Fn>&>,
                           std::invoke_result<std::decay_t<Fn>&, const std::conditional_t<
                                                  std::is_void_v<T>, int, T>&>>,
        std::invoke_result<std::decay_t<Fn>&, future<T>>>;
};

}  // namespace detail

/// The value type of the future `then(f, ex, fn)` returns.
template <class Fn, class T>
using then_result_t = std::remove_cvref_t<typename detail::then_result<Fn, T>::type::type>;

/// Runs `fn` on `ex` once `f` is done and returns a future of its result; no thread
/// waits in between (the submission happens in an `on_done` callback).
///
/// The rule for `fn`'s argument:
/// - if `fn` can be called with `f`'s value (`const T&`; no argument for `future<void>`),
///   it is called only when `f` succeeded: `ex.submit(fn, value)`. If `f` failed, the
///   returned future fails with the same exception and `fn` is not called; if `f` was
///   cancelled, that exception is `task_cancelled`. Works with any executor, including
///   `process_pool` (then `fn` must be remote-callable and the value sendable, which
///   its `submit` checks at compile time).
/// - otherwise `fn` must take the future itself (`fn(procpool::future<T>)`), and is
///   always called, with `f` done, through `ex.submit(fn, f)`: only executors that
///   run in this process (thread_pool) can take a future as an argument.
///
/// If `ex.submit` throws (the pool shut down), the returned future fails with that
/// exception. Cancelling the returned future resolves it as cancelled at once but
/// neither cancels `f` nor stops `fn` from being submitted (its result is dropped).
/// `ex` must outlive `f`'s completion.
template <class T, executor Ex, class Fn>
future<then_result_t<Fn, T>> then(future<T> f, Ex& ex, Fn fn) {
    using U = then_result_t<Fn, T>;
    promise<U> p;
    future<U> result = p.get_future();
    Ex* exp = &ex;
    f.on_done([p = std::move(p), exp, fn = std::move(fn)](const future<T>& src) mutable {
        try {
            future<U> inner;
            if constexpr (detail::takes_value<Fn, T>()) {
                if (auto e = src.exception()) {
                    p.set_exception(std::move(e));
                    return;
                }
                if constexpr (std::is_void_v<T>) {
                    inner = exp->submit(std::move(fn));
                } else {
                    inner = exp->submit(std::move(fn), src.get());
                }
            } else {
                inner = exp->submit(std::move(fn), src);
            }
            inner.on_done([p = std::move(p)](const future<U>& done) mutable {
                detail::forward_outcome(p, done);
            });
        } catch (...) {
            p.set_exception(std::current_exception());
        }
    });
    return result;
}

/// A future that completes once every future in `fs` has completed (never earlier, so
/// no input is still running when it resolves). It holds every value in input order, or
/// fails with the exception of the first failed future in input order (a cancelled input
/// fails it with `task_cancelled`). An empty `fs` gives a ready future of an empty vector.
/// Cancelling the result does not cancel the inputs.
template <class T>
    requires(!std::is_void_v<T>)
future<std::vector<T>> when_all(std::vector<future<T>> fs) {
    struct shared {
        std::vector<future<T>> fs;
        std::atomic<std::size_t> remaining;
        promise<std::vector<T>> p;
    };
    auto sh = std::make_shared<shared>();
    sh->fs = std::move(fs);
    sh->remaining.store(sh->fs.size(), std::memory_order_relaxed);
    future<std::vector<T>> result = sh->p.get_future();
    if (sh->fs.empty()) {
        sh->p.set_value();
        return result;
    }
    auto finish = [](shared& s) {
        try {
            std::vector<T> out;
            out.reserve(s.fs.size());
            for (const auto& f : s.fs) {
                if (auto e = f.exception()) {
                    s.p.set_exception(std::move(e));
                    return;
                }
                out.push_back(f.get());
            }
            s.p.set_value(std::move(out));
        } catch (...) {
            s.p.set_exception(std::current_exception());
        }
    };
    // The callbacks hold `sh`, which holds the futures: the cycle ends as each callback
    // runs (and is freed), which every future does eventually.
    const std::size_t n = sh->fs.size();
    for (std::size_t i = 0; i < n; ++i) {
        sh->fs[i].on_done([sh, finish] {
            if (sh->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) finish(*sh);
        });
    }
    return result;
}

/// As `when_all` for `future<void>`: completes once all have, failing with the first
/// failure in input order.
inline future<void> when_all(std::vector<future<void>> fs) {
    struct shared {
        std::vector<future<void>> fs;
        std::atomic<std::size_t> remaining;
        promise<void> p;
    };
    auto sh = std::make_shared<shared>();
    sh->fs = std::move(fs);
    sh->remaining.store(sh->fs.size(), std::memory_order_relaxed);
    future<void> result = sh->p.get_future();
    if (sh->fs.empty()) {
        sh->p.set_value();
        return result;
    }
    const std::size_t n = sh->fs.size();
    for (std::size_t i = 0; i < n; ++i) {
        sh->fs[i].on_done([sh] {
            if (sh->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
            for (const auto& f : sh->fs) {
                if (auto e = f.exception()) {
                    sh->p.set_exception(std::move(e));
                    return;
                }
            }
            sh->p.set_value();
        });
    }
    return result;
}

/// `when_all` over futures of different (non-void) types: a future of the tuple of their
/// values, with the same rule (completes once all have; the first failure in argument
/// order wins).
template <class A, class... B>
    requires(!std::is_void_v<A> && (!std::is_void_v<B> && ...))
future<std::tuple<A, B...>> when_all(future<A> a, future<B>... b) {
    struct shared {
        std::tuple<future<A>, future<B>...> fs;
        std::atomic<std::size_t> remaining{1 + sizeof...(B)};
        promise<std::tuple<A, B...>> p;
    };
    auto sh = std::make_shared<shared>();
    sh->fs = std::tuple<future<A>, future<B>...>(std::move(a), std::move(b)...);
    future<std::tuple<A, B...>> result = sh->p.get_future();
    auto on_one = [sh] {
        if (sh->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
        try {
            std::exception_ptr first;
            std::apply(
                [&](const auto&... f) {
                    ((first = first ? first : f.exception()), ...);
                },
                sh->fs);
            if (first) {
                sh->p.set_exception(std::move(first));
                return;
            }
            sh->p.set_value(std::apply(
                [](const auto&... f) { return std::tuple<A, B...>(f.get()...); }, sh->fs));
        } catch (...) {
            sh->p.set_exception(std::current_exception());
        }
    };
    std::apply([&](const auto&... f) { (f.on_done(on_one), ...); }, sh->fs);
    return result;
}

/// A future of the index of the first future in `fs` to complete, with a value or an
/// error alike (look at `fs[i]` for which). Among futures already done when called, the
/// lowest index wins. An empty `fs` gives a future failed with `invalid_argument`.
/// Cancelling the result does not cancel the inputs.
template <class T>
future<std::size_t> when_any(std::vector<future<T>> fs) {
    auto p = std::make_shared<promise<std::size_t>>();
    future<std::size_t> result = p->get_future();
    if (fs.empty()) {
        p->set_exception(std::make_exception_ptr(invalid_argument("when_any of no futures")));
        return result;
    }
    for (std::size_t i = 0; i < fs.size(); ++i) {
        // set_value after the first succeeds is a harmless no-op returning false.
        fs[i].on_done([p, i] { p->set_value(i); });
    }
    return result;
}

// ---- coroutines ----------------------------------------------------------------------

namespace detail {

/// Awaiter of a future: suspends unless it is done, resumes from its completion callback.
template <class T, class Ex = void>
struct future_awaiter {
    future<T> fut;
    Ex* ex = nullptr;

    bool await_ready() const noexcept { return ex == nullptr && fut.ready(); }

    void await_suspend(std::coroutine_handle<> h) {
        // A local reference: the callback may resume (and finish, freeing the frame that
        // holds `fut`) on this very thread or another before on_done returns.
        future<T> keep = fut;
        if constexpr (std::is_void_v<Ex>) {
            keep.on_done([h] { h.resume(); });
        } else {
            keep.on_done([h, e = ex] {
                try {
                    static_cast<void>(e->submit([h] { h.resume(); }));
                } catch (...) {
                    h.resume();  // the executor refused (shut down): resume here
                }
            });
        }
    }

    T await_resume() const {
        if constexpr (std::is_void_v<T>) {
            fut.get();
        } else {
            return fut.get();
        }
    }
};

}  // namespace detail

/// `co_await fut` suspends the coroutine until `fut` is done (without blocking a thread),
/// then yields its value (a copy) or rethrows its error. The coroutine resumes on the
/// thread that completed `fut` (a pool's worker or supervisor thread), or continues at
/// once if `fut` is already done. Use `resume_on` to choose where it resumes.
template <class T>
detail::future_awaiter<T> operator co_await(future<T> fut) noexcept {
    return {std::move(fut), nullptr};
}

/// `co_await resume_on(ex, fut)`: as `co_await fut`, but the coroutine always resumes in
/// a task submitted to `ex` (an executor that runs in this process, e.g. thread_pool),
/// even if `fut` is already done. If `ex` refuses the task (shut down), the coroutine
/// resumes on the completing thread instead. `ex` must outlive the wait.
template <class T, executor Ex>
detail::future_awaiter<T, Ex> resume_on(Ex& ex, future<T> fut) noexcept {
    return {std::move(fut), &ex};
}

namespace detail {

template <class T>
struct future_promise_base {
    promise<T> p;
    future<T> get_return_object() { return p.get_future(); }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { p.set_exception(std::current_exception()); }
};

template <class T>
struct future_promise : future_promise_base<T> {
    template <class V>
    void return_value(V&& v) {
        this->p.set_value(std::forward<V>(v));
    }
};

template <>
struct future_promise<void> : future_promise_base<void> {
    void return_void() { this->p.set_value(); }
};

}  // namespace detail

}  // namespace procpool

/// A coroutine may return `procpool::future<T>`: it starts eagerly (runs on the calling
/// thread up to its first suspension), its frame is freed when it finishes, and the
/// future resolves with the `co_return` value or the exception that escaped it.
/// Cancelling that future does not stop the coroutine; its result is then dropped.
template <class T, class... Args>
struct std::coroutine_traits<procpool::future<T>, Args...> {
    using promise_type = procpool::detail::future_promise<T>;
};
