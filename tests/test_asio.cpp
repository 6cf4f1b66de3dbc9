// procpool::asio::async_wait: procpool futures awaited inside Boost.Asio, with callbacks and
// with asio::awaitable coroutines.

// Boost 1.74 enables co_await support for clang only with <experimental/coroutine>, which
// libstdc++ does not have; clang 14's C++20 coroutines work with libstdc++'s <coroutine>.
#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT) && defined(__cpp_impl_coroutine)
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif

#include "procpool/asio.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "procpool/procpool.hpp"
#include "process_support.hpp"

namespace asio = boost::asio;
using procpool::future;
using procpool::process_pool;
using procpool::promise;
using procpool::thread_pool;
using procpool_test::file_gate;
using procpool_test::thread_count;

namespace {

int square(int x) { return x * x; }

int throws_domain_error(int) { throw std::domain_error("bad input"); }

struct custom_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---- callbacks --------------------------------------------------------------------------

TEST(AsioAsyncWait, CallbackRunsOnTheBoundExecutorWithTheValue) {
    asio::io_context io;
    promise<int> p;
    std::optional<int> got;
    std::thread::id ran_on;
    procpool::asio::async_wait(
        p.get_future(), asio::bind_executor(io, [&](std::exception_ptr e, int v) {
            EXPECT_FALSE(e);
            got = v;
            ran_on = std::this_thread::get_id();
        }));
    std::thread completer([&] { p.set_value(42); });
    // The pending wait is outstanding work: run() returns only after the handler ran.
    io.run();
    completer.join();
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(*got, 42);
    EXPECT_EQ(ran_on, std::this_thread::get_id());
}

TEST(AsioAsyncWait, AlreadyDoneFutureStillCompletesThroughTheExecutor) {
    asio::io_context io;
    promise<int> p;
    p.set_value(7);
    int got = 0;
    procpool::asio::async_wait(p.get_future(),
                               asio::bind_executor(io, [&](std::exception_ptr, int v) { got = v; }));
    EXPECT_EQ(got, 0) << "the handler must not run inside the initiating call";
    io.run();
    EXPECT_EQ(got, 7);
}

TEST(AsioAsyncWait, ErrorArrivesAsExceptionPtr) {
    asio::io_context io;
    promise<int> p;
    std::exception_ptr got;
    procpool::asio::async_wait(p.get_future(),
                               asio::bind_executor(io, [&](std::exception_ptr e, int v) {
                                   got = e;
                                   EXPECT_EQ(v, 0);
                               }));
    p.set_exception(std::make_exception_ptr(custom_error("boom")));
    io.run();
    ASSERT_TRUE(got);
    EXPECT_THROW(std::rethrow_exception(got), custom_error);
}

TEST(AsioAsyncWait, VoidFuture) {
    asio::io_context io;
    thread_pool tp({.workers = 1});
    bool done = false;
    procpool::asio::async_wait(tp.submit([] {}), asio::bind_executor(io, [&](std::exception_ptr e) {
                                   EXPECT_FALSE(e);
                                   done = true;
                               }));
    io.run();
    EXPECT_TRUE(done);
}

// ---- asio::awaitable coroutines ----------------------------------------------------------

asio::awaitable<int> awaited_square(process_pool& proc, int x, std::thread::id& resumed_on) {
    int v = co_await procpool::asio::async_wait(proc.submit(square, x), asio::use_awaitable);
    resumed_on = std::this_thread::get_id();
    co_return v;
}

TEST(AsioAwaitable, ProcessPoolResultResumesOnTheCoroutinesExecutor) {
    process_pool proc({.workers = 1});
    asio::io_context io;
    std::thread::id resumed_on;
    std::optional<int> result;
    asio::co_spawn(io, awaited_square(proc, 9, resumed_on),
                   [&](std::exception_ptr e, int v) {
                       EXPECT_FALSE(e);
                       result = v;
                   });
    io.run();
    ASSERT_TRUE(result.has_value());
    EXPECT_EQ(*result, 81);
    EXPECT_EQ(resumed_on, std::this_thread::get_id());
}

asio::awaitable<std::string> catch_remote(process_pool& proc) {
    try {
        co_await procpool::asio::async_wait(proc.submit(throws_domain_error, 1),
                                            asio::use_awaitable);
    } catch (const procpool::remote_exception& e) {
        co_return e.type_name() + ": " + e.message();
    }
    co_return "no error";
}

TEST(AsioAwaitable, RemoteExceptionIsRethrownInTheCoroutine) {
    process_pool proc({.workers = 1});
    asio::io_context io;
    std::string got;
    asio::co_spawn(io, catch_remote(proc), [&](std::exception_ptr e, std::string s) {
        EXPECT_FALSE(e);
        got = std::move(s);
    });
    io.run();
    EXPECT_NE(got.find("domain_error"), std::string::npos) << got;
    EXPECT_NE(got.find("bad input"), std::string::npos) << got;
}

asio::awaitable<bool> cancelled_while_awaiting(future<int> f) {
    try {
        co_await procpool::asio::async_wait(f, asio::use_awaitable);
    } catch (const procpool::task_cancelled&) {
        co_return true;
    }
    co_return false;
}

TEST(AsioAwaitable, CancellingTheFutureResumesTheCoroutineWithTaskCancelled) {
    process_pool proc({.workers = 1});
    file_gate gate;
    auto blocker = proc.submit(file_gate::wait_then_return, gate.path(), 1);
    auto queued = proc.submit(square, 3);  // behind the blocker: not started
    asio::io_context io;
    std::optional<bool> got;
    asio::co_spawn(io, cancelled_while_awaiting(queued), [&](std::exception_ptr e, bool b) {
        EXPECT_FALSE(e);
        got = b;
    });
    io.poll();  // the coroutine runs up to its wait
    EXPECT_FALSE(got.has_value());
    EXPECT_TRUE(queued.cancel());
    io.run();
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(*got);
    gate.open();
    EXPECT_EQ(blocker.get(), 1);
}

asio::awaitable<void> await_gated(process_pool& proc, std::string gate, int i,
                                  std::atomic<int>& suspended, std::vector<int>& out) {
    auto f = proc.submit(file_gate::wait_then_return, std::move(gate), i);
    suspended.fetch_add(1, std::memory_order_relaxed);
    out[static_cast<std::size_t>(i)] =
        co_await procpool::asio::async_wait(std::move(f), asio::use_awaitable);
}

TEST(AsioAwaitable, TenThousandCoroutinesOnOneThreadAddNoThreads) {
    constexpr int n = 10'000;
    process_pool proc({.workers = 2});
    file_gate gate;
    EXPECT_EQ(proc.submit(square, 2).get(), 4);  // the pool's own threads are up
    const int before = thread_count();
    ASSERT_GT(before, 0);

    asio::io_context io;
    std::atomic<int> suspended{0};
    std::vector<int> out(n, -1);
    int finished = 0;
    for (int i = 0; i < n; ++i) {
        asio::co_spawn(io, await_gated(proc, gate.path(), i, suspended, out),
                       [&](std::exception_ptr e) {
                           EXPECT_FALSE(e);
                           ++finished;
                       });
    }
    // Run every coroutine up to its co_await. No task can finish before the gate opens,
    // so poll() returns once all are suspended, without blocking.
    while (suspended.load(std::memory_order_relaxed) < n) io.poll();
    EXPECT_EQ(finished, 0);
    const int during = thread_count();
    EXPECT_EQ(during, before) << "threads grew with the number of suspended coroutines";

    gate.open();
    io.run();  // one thread resumes all of them
    EXPECT_EQ(finished, n);
    for (int i = 0; i < n; ++i) ASSERT_EQ(out[static_cast<std::size_t>(i)], i);
    EXPECT_EQ(thread_count(), before);
}

}  // namespace
