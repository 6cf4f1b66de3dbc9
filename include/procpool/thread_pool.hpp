// thread_pool: a futures executor over OS threads, for I/O-bound work and cheap tasks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/map_progress.hpp"
#include "procpool/detail/validate.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/stream.hpp"
#include "procpool/trace.hpp"

namespace procpool {

/// Options of a `thread_pool`; designated initializers: `thread_pool({.workers = 8})`.
struct thread_pool_options {
    /// Number of worker threads (1 to `thread_pool::max_workers`). Defaults to the number
    /// of hardware threads.
    int workers = default_worker_count();
    /// Prefix of the worker threads' names (as shown by `top -H`, at most 15 characters).
    std::string name = "procpool";
    /// Record every task in this trace (see trace_recorder); null: no trace.
    std::shared_ptr<trace_recorder> trace{};
};

/// A pool of worker threads, the counterpart of Python's `ThreadPoolExecutor`.
///
/// Tasks are any callables; `submit` returns a `future` that rethrows the task's own
/// exception type. Queued tasks run in submission order (FIFO). Idle workers spin for
/// about one wake-up's cost and then sleep, so an idle pool uses no CPU.
/// The destructor shuts down and waits for every queued task to finish.
class thread_pool {
public:
    /// The most workers a pool accepts: the same bound as process_pool's, far past what
    /// helps even I/O-bound work, low enough to catch a garbage count before it exhausts
    /// the system's threads.
    static constexpr int max_workers = detail::max_pool_workers;

    /// Starts the workers. Throws `procpool::invalid_argument` if `workers` is not in
    /// 1..max_workers, and `procpool::error` (after joining the threads it did start) if the
    /// system refuses to create one, e.g. under a low `ulimit -u`.
    explicit thread_pool(thread_pool_options opts = {});
    /// Equivalent to `shutdown({.wait = true})`: runs every queued task, joins workers.
    ~thread_pool();
    thread_pool(const thread_pool&) = delete;
    thread_pool& operator=(const thread_pool&) = delete;
    thread_pool(thread_pool&&) = delete;
    thread_pool& operator=(thread_pool&&) = delete;

    /// Queues `f(args...)` (decayed copies of `f` and `args`) and returns its future.
    /// Throws `pool_shut_down` once `shutdown()` has been called.
    template <class F, class... A>
        requires std::invocable<std::decay_t<F>, std::decay_t<A>...>
    [[nodiscard]] future<task_result_t<F, A...>> submit(F&& f, A&&... args) {
        using R = task_result_t<F, A...>;
        auto* s = detail::make_task(std::forward<F>(f), std::forward<A>(args)...);
        s->add_ref();  // one reference for the queue, one for the future
        detail::state_ptr<detail::state<R>> owner(s);
        enqueue(s);
        return detail::make_future(std::move(owner));
    }

    /// Applies `f` to every element of `items` and returns the results in input order,
    /// like Python's `Executor.map`. Elements are grouped into chunks of `chunksize`
    /// (0 picks a size from the item and worker counts). If any call throws, the
    /// exception of the first failing element (in input order) is rethrown after all
    /// chunks have finished. Blocks until done.
    template <class F, std::ranges::input_range Range>
        requires std::invocable<std::decay_t<F>&, std::ranges::range_reference_t<Range>>
    auto map(F&& f, Range&& items, std::size_t chunksize = 0) {
        return map_impl(std::forward<F>(f), std::forward<Range>(items), chunksize, nullptr);
    }

    /// `map` with options: chunk size and a progress line counting elements.
    template <class F, std::ranges::input_range Range>
        requires std::invocable<std::decay_t<F>&, std::ranges::range_reference_t<Range>>
    auto map(F&& f, Range&& items, const map_options& opts) {
        return map_impl(std::forward<F>(f), std::forward<Range>(items), opts.chunksize, &opts);
    }

    /// Applies `f` to the elements of `items` as the caller reads the results, in input
    /// order: a `stream` (an input range) with at most `opts.max_in_flight` chunks of
    /// `opts.chunksize` elements submitted ahead of the reader, so `items` may be of any
    /// length, an endless generator included. The counterpart of Python's
    /// `Executor.map(..., buffersize=n)` and `multiprocessing.Pool.imap`. Elements are
    /// copied into their chunk; `f` is copied into the stream and called on them as
    /// lvalues. Reaching a failed element throws its exception and ends the stream;
    /// destroying the stream cancels the chunks not started and waits for the running
    /// ones (see `stream`). Throws `pool_shut_down` once `shutdown()` has been called.
    template <class F, std::ranges::input_range Range>
        requires std::invocable<std::decay_t<F>&, std::ranges::range_value_t<Range>&>
    [[nodiscard]] stream<detail::stream_result_t<F, Range>> imap(F&& f, Range&& items,
                                                                 stream_options opts = {}) {
        return open_stream(std::forward<F>(f), std::forward<Range>(items), opts, true);
    }

    /// As `imap`, but yields the results as their chunks complete, like Python's
    /// `multiprocessing.Pool.imap_unordered`: a slow chunk does not hold back the others.
    template <class F, std::ranges::input_range Range>
        requires std::invocable<std::decay_t<F>&, std::ranges::range_value_t<Range>&>
    [[nodiscard]] stream<detail::stream_result_t<F, Range>> imap_unordered(
        F&& f, Range&& items, stream_options opts = {}) {
        return open_stream(std::forward<F>(f), std::forward<Range>(items), opts, false);
    }

    /// Stops accepting work. With `wait`, blocks until queued tasks ran and workers exited;
    /// with `cancel_pending`, tasks not yet started resolve as `task_cancelled`.
    /// Calling it again is harmless.
    void shutdown(shutdown_options opts = {});

    /// The number of worker threads.
    int workers() const noexcept;

    /// What the pool has done so far: tasks by outcome, busy fraction per worker, queue
    /// wait and run time percentiles (see pool_stats). A task counts once its future is
    /// ready; one cancelled while queued counts when its worker takes it off the queue.
    pool_stats stats() const;

private:
    template <class F, class Range>
    auto map_impl(F&& f, Range&& items, std::size_t chunksize, const map_options* mopts);
    void enqueue(detail::state_base* s);
    std::size_t auto_chunksize(std::size_t n) const noexcept;

    template <class F, class Range>
    stream<detail::stream_result_t<F, Range>> open_stream(F&& f, Range&& items,
                                                          stream_options opts, bool ordered);

    struct impl;
    std::unique_ptr<impl> impl_;
};

template <class F, class Range>
auto thread_pool::map_impl(F&& f, Range&& items, std::size_t chunksize,
                           const map_options* mopts) {
    using R = std::remove_cvref_t<std::invoke_result_t<std::decay_t<F>&,
                                                         std::ranges::range_reference_t<Range>>>;
    if constexpr (!std::ranges::random_access_range<Range> || !std::ranges::sized_range<Range>) {
        // Chunking needs indexable input: materialise other ranges once (element by
        // element: the vector's iterator-pair constructor needs a common range).
        std::vector<std::ranges::range_value_t<Range>> copy;
        for (auto&& e : items) copy.emplace_back(std::forward<decltype(e)>(e));
        return map_impl(std::forward<F>(f), copy, chunksize, mopts);
    } else {
        const std::size_t n = std::ranges::size(items);
        if (chunksize == 0) chunksize = auto_chunksize(n);
        auto first = std::ranges::begin(items);
        std::decay_t<F> fn(std::forward<F>(f));  // one copy, shared by all chunks

        // Each chunk stops at its first failure and records it; the caller rethrows the
        // earliest one once every chunk is done, so no chunk outlives this call.
        struct failure {
            std::size_t index;
            std::exception_ptr error;
        };
        const std::size_t nchunks = (n + chunksize - 1) / chunksize;
        std::vector<std::optional<failure>> failures(nchunks);
        // vector<bool> packs bits, so neighbouring chunks would race on one word.
        constexpr bool direct = std::is_void_v<R> || (std::is_default_constructible_v<R> &&
                                                      !std::is_same_v<R, bool>);
        using slot = std::conditional_t<std::is_void_v<R>, char,
                                        std::conditional_t<direct, R, std::optional<R>>>;
        std::vector<slot> out(std::is_void_v<R> ? 0 : n);

        std::vector<future<void>> chunks;
        chunks.reserve(nchunks);
        // Chunks refer to this frame: if submitting fails (the pool shut down), the ones
        // already queued must finish before the error leaves.
        struct join_guard {
            std::vector<future<void>>& cs;
            ~join_guard() {
                for (auto& c : cs) c.wait();
            }
        } guard{chunks};
        for (std::size_t c = 0; c < nchunks; ++c) {
            const std::size_t lo = c * chunksize;
            const std::size_t hi = std::min(n, lo + chunksize);
            chunks.push_back(submit([&fn, &out, &failures, first, lo, hi, c] {
                std::size_t i = lo;
                try {
                    for (; i < hi; ++i) {
                        if constexpr (std::is_void_v<R>) {
                            // Nothing to store: the capture is unused, and clang warns.
                            (void)out;
                            fn(first[static_cast<std::ptrdiff_t>(i)]);
                        } else {
                            out[i] = fn(first[static_cast<std::ptrdiff_t>(i)]);
                        }
                    }
                } catch (...) {
                    failures[c] = failure{i, std::current_exception()};
                }
            }));
        }
        if (mopts != nullptr && mopts->show_progress) {
            std::vector<std::size_t> sizes(nchunks, chunksize);
            if (nchunks != 0) sizes.back() = n - (nchunks - 1) * chunksize;
            progress_reporter progress(n, workers(), mopts->progress);
            progress.start();
            detail::wait_counting(chunks, sizes, progress);
        }
        for (std::size_t c = 0; c < nchunks; ++c) {
            // A chunk cancelled by shutdown({.cancel_pending = true}) produced nothing.
            if (auto e = chunks[c].exception()) std::rethrow_exception(e);
            if (failures[c]) std::rethrow_exception(failures[c]->error);
        }
        if constexpr (std::is_void_v<R>) {
            return;
        } else if constexpr (direct) {
            return out;
        } else {
            std::vector<R> values;
            values.reserve(n);
            for (auto& o : out) values.push_back(std::move(*o));
            return values;
        }
    }
}

template <class F, class Range>
stream<detail::stream_result_t<F, Range>> thread_pool::open_stream(F&& f, Range&& items,
                                                                   stream_options opts,
                                                                   bool ordered) {
    using R = detail::stream_result_t<F, Range>;
    using T = std::ranges::range_value_t<Range>;
    using Fn = std::decay_t<F>;
    static_assert(!std::is_void_v<R>,
                  "imap needs a function that returns a value; use submit or map");
    // The stream keeps this (with the function) until it is closed, and closing waits for
    // every chunk it submitted: a chunk can refer to the function in place.
    struct submit_chunk {
        thread_pool* pool;
        Fn fn;
        future<std::vector<R>> operator()(std::vector<T>&& chunk) {
            return pool->submit([f = &fn, items = std::move(chunk)]() mutable {
                std::vector<R> out;
                out.reserve(items.size());
                for (auto& x : items) out.push_back(std::invoke(*f, x));
                return out;
            });
        }
    };
    const std::size_t chunksize = detail::stream_chunksize(
        opts, items, [this](std::size_t n) { return auto_chunksize(n); });
    const std::size_t max_in_flight =
        opts.max_in_flight != 0 ? opts.max_in_flight : 2 * static_cast<std::size_t>(workers());
    detail::chunk_source_ptr<R> source(new detail::range_chunk_source<R, Range, submit_chunk>(
        std::forward<Range>(items), chunksize, submit_chunk{this, Fn(std::forward<F>(f))}));
    return stream<R>(std::move(source), ordered, max_in_flight);
}

}  // namespace procpool
