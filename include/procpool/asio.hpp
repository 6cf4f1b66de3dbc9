// Waiting for a procpool::future inside Boost.Asio: an asynchronous operation that
// completes on the waiter's own executor, with any Asio completion token (a callback,
// `use_awaitable` in an `asio::awaitable` coroutine, `use_future`, `deferred`...).
//
// Optional: include this header only where Boost.Asio (Debian `libboost-dev`, 1.74 or
// newer) is available; the rest of procpool does not need Boost.
#pragma once

#include <exception>
#include <type_traits>
#include <utility>

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>

#include "procpool/future.hpp"

namespace procpool::asio {

namespace detail {

/// The completion signature of waiting for a `future<T>`: the error (null on success) and,
/// for a non-void `T`, the value.
template <class T>
struct wait_signature {
    using type = void(std::exception_ptr, T);
};
template <>
struct wait_signature<void> {
    using type = void(std::exception_ptr);
};

/// Starts the wait: registers a completion callback on the future that posts the handler
/// to its associated executor. A work guard keeps that executor's context running (an
/// `io_context::run()` does not return) while the future is pending.
struct initiate_wait {
    template <class Handler, class T>
    void operator()(Handler&& handler, future<T> fut) const {
        auto ex = boost::asio::get_associated_executor(handler, boost::asio::system_executor());
        auto work = boost::asio::make_work_guard(ex);
        // on_done runs on the thread that completes the future (a pool worker, a process
        // pool's supervisor) or here if it is already done: either way the handler itself
        // runs only through its executor, as Asio's rules for asynchronous operations say.
        fut.on_done([h = std::forward<Handler>(handler),
                     work = std::move(work)](const future<T>& done) mutable {
            auto target = work.get_executor();
            boost::asio::post(target, [h = std::move(h), done]() mutable {
                std::exception_ptr e = done.exception();
                if constexpr (std::is_void_v<T>) {
                    std::move(h)(e);
                } else if (e) {
                    std::move(h)(e, T{});
                } else {
                    std::move(h)(e, done.get());
                }
            });
            work.reset();
        });
    }
};

}  // namespace detail

/// Waits for `fut` without blocking a thread and completes through `token` with
/// `(std::exception_ptr error, T value)` (`(std::exception_ptr)` for `future<void>`):
/// `error` is null on success, else the future's exception (`task_cancelled`,
/// `worker_died`, the task's own exception...) and `value` is default-constructed.
///
/// The completion runs on the token's associated executor (the coroutine's own executor
/// for `use_awaitable`, `system_executor` for a plain callback), never on a procpool
/// thread; the executor's context counts the wait as outstanding work. With
/// `boost::asio::use_awaitable`, `co_await async_wait(fut, use_awaitable)` yields the value
/// or rethrows the error. Cancelling an Asio operation does not cancel `fut`: call
/// `fut.cancel()` for that.
template <class T, class CompletionToken>
auto async_wait(future<T> fut, CompletionToken&& token) {
    static_assert(std::is_void_v<T> || std::is_default_constructible_v<T>,
                  "asio::async_wait completes with (error, value), so a failed future's "
                  "value must be default-constructible: wait for a future<std::optional<T>> "
                  "(procpool::then can convert), or use co_await on the future itself");
    return boost::asio::async_initiate<CompletionToken, typename detail::wait_signature<T>::type>(
        detail::initiate_wait{}, token, std::move(fut));
}

}  // namespace procpool::asio
