// The public template surface every executor that ships tasks to other processes shares:
// submit, submit with task options, map, and the compile-time checks with their messages.
// An executor derives from remote_executor<Self, Record> and provides the transport.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iterator>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/map_progress.hpp"
#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/remote_task.hpp"
#include "procpool/detail/validate.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/stream.hpp"
#include "procpool/wire.hpp"

namespace procpool::detail {

/// Takes the calling thread's encoding buffer, kept between submits and freed when the
/// thread ends; usable in any destructor on the thread (also after its thread_local
/// objects are gone). Null while an outer submit on this thread holds it (a serializer
/// that submits, to any remote executor) or if it cannot be made (out of memory): the
/// caller then encodes into a buffer of its own. Give it back with
/// release_encoding_scratch.
std::vector<std::byte>* acquire_encoding_scratch() noexcept;
/// Gives back the buffer a non-null acquire_encoding_scratch returned.
void release_encoding_scratch() noexcept;

/// Holds the thread's encoding buffer (acquire_encoding_scratch) for its lifetime.
class scratch_lease {
  public:
    scratch_lease() noexcept : buf_(acquire_encoding_scratch()) {}
    scratch_lease(const scratch_lease&) = delete;
    scratch_lease& operator=(const scratch_lease&) = delete;
    ~scratch_lease() {
        if (buf_ != nullptr) release_encoding_scratch();
    }
    /// The buffer, or null: encode into one of the caller's own then.
    std::vector<std::byte>* get() const noexcept { return buf_; }

  private:
    std::vector<std::byte>* buf_;
};

/// True if a task result of type R can come back from a worker (void always can).
template <class R>
constexpr bool result_crosses() {
    if constexpr (std::is_void_v<R>) {
        return true;
    } else {
        return wire::is_serializable_v<R>;
    }
}

/// Stands in for the result type of a call that is not possible, so that the declaration
/// of `submit` stays valid and its body's static_assert gives the readable message.
struct not_invocable {};

/// The value a remote call of `F` with arguments `A...` produces (arguments as they
/// travel: see wire_arg_t), or `not_invocable`.
template <class F, class... A>
struct remote_result {
    using type = not_invocable;
};
template <class F, class... A>
requires std::is_invocable_v < std::decay_t<F>
&, wire_arg_t<A>... > struct remote_result<F, A...> {
    using type = std::remove_cvref_t<std::invoke_result_t<std::decay_t<F>&, wire_arg_t<A>...>>;
};
template <class F, class... A>
using remote_result_t = typename remote_result<F, A...>::type;

/// Base of executors whose tasks run in other processes (CRTP). `Self` provides, as
/// members this class may call (befriend it):
///   void enqueue(Record& t, const std::vector<std::byte>& args);  // take ownership of t
///   optionally void enqueue_parts(Record& t, std::span<const std::byte> head,
///                                 std::span<const std::byte> body);
///     the same with the arguments in two pieces, sent as one (else they are joined)
///   std::size_t auto_chunksize(std::size_t items) const noexcept; // map's default chunk
///   optionally std::size_t map_window(std::size_t chunk_bytes) const noexcept;
///     how many `map` chunks of that size to keep submitted ahead of the one collected
///     (else all are submitted at once)
///   int workers() const noexcept;  // imap's default bound: twice this many chunks
/// and sets `bulk_threshold_` (vectors of at least that many bytes travel out of band).
/// `enqueue` must not wait for the task to run: a big argument vector's block is written
/// after it returns (bulk_writes), and the worker reading it waits for those bytes.
/// `Record` is the executor's per-task record, derived from remote_task_base.
/// Lets a relaying executor (mpi_pool's serving ranks) hand a task encoded by another
/// process of the same binary to a remote executor, and get the worker's reply undecoded.
struct relay_access {
    template <class Ex>
    static future<raw_reply> submit(Ex& ex, std::uint64_t invoker, std::uint64_t fn,
                                    std::int64_t timeout_ns, const std::byte* args,
                                    std::size_t n, std::vector<shm_ref> attachments = {}) {
        return ex.submit_raw(invoker, fn, timeout_ns, args, n, std::move(attachments));
    }
};

template <class Self, class Record = remote_task_base>
class remote_executor {
  public:
    /// Runs `f(args...)` in a worker and returns its future. Arguments are serialized now;
    /// one that cannot be resolves the future with `serialization_error`.
    /// Throws `pool_shut_down` after `shutdown()`.
    template <class F, class... A>
    [[nodiscard]] future<remote_result_t<F, A...>> submit(F&& f, A&&... args) {
        return submit(task_options{}, std::forward<F>(f), std::forward<A>(args)...);
    }

    /// As `submit(f, args...)`, with per-task options (a timeout).
    template <class F, class... A>
    [[nodiscard]] future<remote_result_t<F, A...>> submit(task_options topts, F&& f, A&&... args) {
        using Fn = std::decay_t<F>;
        static_assert(remote_callable<F>,
                      "tasks run in worker processes must be free functions or captureless "
                      "lambdas: a capture cannot cross a process boundary; pass the data as "
                      "arguments");
        static_assert(std::is_invocable_v<Fn&, wire_arg_t<A>...>,
                      "submit: the function cannot be called with these arguments");
        using R = remote_result_t<F, A...>;
        static_assert(result_crosses<R>(),
                      "submit: the task's result type cannot cross a process boundary (see "
                      "procpool/wire.hpp)");
        return submit_encoded<R, Fn, wire_arg_t<A>...>(
            topts, detail::callable_offset(static_cast<const Fn&>(f)),
            [&](wire::writer& w) { detail::save_call_args<Fn>(w, std::forward<A>(args)...); });
    }

    /// Applies `f` to every element of `items` in the workers and returns the results in
    /// input order, like Python's `ProcessPoolExecutor.map`. Elements travel in chunks of
    /// `chunksize` (0 picks a size from the item and worker counts: large chunks make tiny
    /// tasks cheap). If a call fails, the error of the first failing element (in input
    /// order) is thrown after every chunk has finished. Chunks are submitted as earlier
    /// ones are collected (as many ahead as the transport holds at once), so a `shutdown()`
    /// from another thread during a `map` makes it throw `pool_shut_down`.
    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& items, std::size_t chunksize = 0) {
        return map_impl(std::forward<F>(f), std::forward<Range>(items), chunksize, nullptr);
    }

    /// `map` with options: chunk size and a progress line counting elements.
    template <class F, std::ranges::input_range Range>
    auto map(F&& f, Range&& items, const map_options& opts) {
        return map_impl(std::forward<F>(f), std::forward<Range>(items), opts.chunksize, &opts);
    }

private:
    // Checks that `f` can take the elements, so that a function that cannot gets one
    // readable error rather than pages about invoke_result; then map_checked does the work.
    template <class F, std::ranges::input_range Range>
    auto map_impl(F&& f, Range&& items, std::size_t chunksize, const map_options* mopts) {
        using Fn = std::decay_t<F>;
        using T = std::ranges::range_value_t<Range>;
        static_assert(remote_callable<F>,
                      "tasks run in worker processes must be free functions or captureless "
                      "lambdas");
        if constexpr (!std::is_invocable_v<Fn&, T&>) {
            static_assert(std::is_invocable_v<Fn&, T&>,
                          "map: the function cannot be called with the range's elements (in "
                          "the worker it gets each element of its copy of the chunk as an "
                          "lvalue: take the element type by value or by reference)");
            return std::vector<int>{};
        } else {
            return map_checked(std::forward<F>(f), std::forward<Range>(items), chunksize,
                               mopts);
        }
    }

    template <class F, std::ranges::input_range Range>
    auto map_checked(F&& f, Range&& items, std::size_t chunksize, const map_options* mopts) {
        using Fn = std::decay_t<F>;
        using T = std::ranges::range_value_t<Range>;
        // As the worker calls it (map_chunk, invoke_map_chunk): on an lvalue of its copy,
        // so a function taking T& works, as with imap, and changes only that copy.
        using R = std::remove_cvref_t<std::invoke_result_t<Fn&, T&>>;
        static_assert(!std::is_void_v<R>, "map needs a function that returns a value; use submit");
        if constexpr (!std::ranges::contiguous_range<Range> || !std::ranges::sized_range<Range>) {
            // Chunks are sent straight from contiguous memory: materialise other ranges
            // (element by element: the vector's iterator-pair constructor needs a common
            // range, and an input of unknown length has an iterator and a sentinel).
            std::vector<T> copy;
            for (auto&& e : items) copy.emplace_back(std::forward<decltype(e)>(e));
            return map_checked(std::forward<F>(f), copy, chunksize, mopts);
        } else {
            const T* base = std::ranges::data(items);
            const std::size_t n = std::ranges::size(items);
            if (chunksize == 0) chunksize = self().auto_chunksize(n);
            const std::uint64_t fn_off = detail::callable_offset(static_cast<const Fn&>(f));
            using chunk_fn = std::vector<R> (*)(std::uint64_t, std::vector<T>);
            const chunk_fn chunk = &detail::map_chunk<Fn, T, R>;
            // Plain bytes in and out: the worker reads the elements where they arrive and
            // writes the results straight into its reply (same message, same reply).
            invoker_fn invoker = nullptr;
            if constexpr (detail::map_in_place<T, R>) {
                invoker = &detail::invoke_map_chunk<Fn, T, R>;
            } else {
                invoker = detail::invoker_for<chunk_fn, std::uint64_t, std::vector<T>>();
            }
            const std::size_t nchunks = (n + chunksize - 1) / chunksize;
            // The chunk starting at element `lo`.
            const auto submit_chunk = [&](std::size_t lo) {
                const std::size_t hi = std::min(n, lo + chunksize);
                if constexpr (wire::detail::bulk<T>()) {
                    // Plain bytes below the bulk threshold: the elements go from `items`
                    // straight to the transport, after the two words before them.
                    if ((hi - lo) * sizeof(T) < bulk_threshold_) {
                        const std::uint64_t head[2] = {fn_off, hi - lo};
                        return submit_parts<std::vector<R>>(
                            invoker, detail::callable_offset(chunk), std::as_bytes(std::span(head)),
                            std::as_bytes(std::span(base + lo, hi - lo)));
                    }
                }
                // Same bytes as submit(chunk, fn_off, std::vector<T>(base + lo, base + hi)),
                // without building the vector.
                return submit_encoded_with<std::vector<R>>(
                    invoker, task_options{}, detail::callable_offset(chunk), [&](wire::writer& w) {
                        wire::save(w, fn_off);
                        wire::detail::save_vector_of(w, base + lo, hi - lo);
                    });
            };
            std::vector<future<std::vector<R>>> chunks;
            chunks.reserve(nchunks);
            const bool progress_shown = mopts != nullptr && mopts->show_progress;
            // How many chunks may be submitted ahead of the one being collected: all of
            // them, unless the transport says how many it holds without setting them aside
            // (a process pool's rings: a chunk that finds them full is copied aside first,
            // then copied in when there is room; submitted later, it is copied once).
            std::size_t ahead = nchunks;
            if constexpr (requires { self().map_window(std::size_t{}); }) {
                if (!progress_shown) {
                    ahead =
                        std::min(std::max<std::size_t>(self().map_window(chunksize * sizeof(T)), 1),
                                 nchunks);
                }
            }
            for (std::size_t c = 0; c < ahead; ++c) chunks.push_back(submit_chunk(c * chunksize));
            if (progress_shown) {
                std::vector<std::size_t> sizes;
                sizes.reserve(chunks.size());
                for (std::size_t lo = 0; lo < n; lo += chunksize) {
                    sizes.push_back(std::min(n, lo + chunksize) - lo);
                }
                progress_reporter progress(n, self().workers(),
                                           mopts->progress);
                progress.start();
                detail::wait_counting(chunks, sizes, progress);
            }
            std::vector<R> out;
            out.reserve(n);
            // Fresh memory (a big result's first map, or one kept by the caller): its pages
            // mapped in one call rather than one trap each as the results are copied in.
            detail::populate_pages(out.data(), n * sizeof(R), true, true, true);
            std::exception_ptr first;
            for (std::size_t i = 0; i < nchunks; ++i) {
                // The chunk `ahead` places on goes in as this one is collected; every chunk
                // runs, as when all are submitted at once, whatever an earlier one threw.
                if (chunks.size() < nchunks)
                    chunks.push_back(submit_chunk(chunks.size() * chunksize));
                auto& c = chunks[i];
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

public:
    /// Applies `f` to the elements of `items` in the workers as the caller reads the
    /// results, in input order: a `stream` (an input range) with at most
    /// `opts.max_in_flight` chunks of `opts.chunksize` elements submitted ahead of the
    /// reader, so `items` may be of any length, an endless generator included. The
    /// counterpart of Python's `Executor.map(..., buffersize=n)` and
    /// `multiprocessing.Pool.imap`. Chunks travel as `map`'s do. Reaching a failed
    /// element throws its error and ends the stream; destroying the stream cancels the
    /// chunks not started (never killing a worker) and waits for the running ones (see
    /// `stream`). Throws `pool_shut_down` after `shutdown()`.
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] auto imap(F&& f, Range&& items, stream_options opts = {}) {
        return open_stream(std::forward<F>(f), std::forward<Range>(items), opts, true);
    }

    /// As `imap`, but yields the results as their chunks complete, like Python's
    /// `multiprocessing.Pool.imap_unordered`: a slow chunk does not hold back the others.
    template <class F, std::ranges::input_range Range>
    [[nodiscard]] auto imap_unordered(F&& f, Range&& items, stream_options opts = {}) {
        return open_stream(std::forward<F>(f), std::forward<Range>(items), opts, false);
    }

  protected:
    remote_executor() = default;
    ~remote_executor() = default;

    /// Vectors of trivially copyable elements of at least this many bytes travel out of
    /// band (the transport's shared blocks); SIZE_MAX: never.
    std::size_t bulk_threshold_ = SIZE_MAX;
    /// Whether a big argument vector may be copied into its block after its task is sent,
    /// while the worker copies it out (bulk_writes). Set it false when every task has a
    /// deadline (a pool-wide timeout): a deadline starts when the task is sent and must
    /// not count the copy. A task with a timeout of its own is copied in first anyway.
    bool copy_bulk_after_send_ = true;

  private:
    friend struct relay_access;

    // A task encoded elsewhere (by the same binary), for relaying executors: the future
    // holds the worker's reply undecoded.
    future<raw_reply> submit_raw(std::uint64_t invoker, std::uint64_t fn, std::int64_t timeout_ns,
                                 const std::byte* args, std::size_t n,
                                 std::vector<shm_ref> attachments) {
        auto* t = new remote_task<raw_reply, Record>();
        t->try_claim();
        state_ptr<state<raw_reply>> owner(t);
        t->invoker = invoker;
        t->fn = fn;
        t->timeout_ns = timeout_ns;
        t->attachments = std::move(attachments);
        std::vector<std::byte> own;
        const scratch_lease lease;
        std::vector<std::byte>* shared = lease.get();
        std::vector<std::byte>& buf = shared != nullptr ? *shared : own;
        buf.assign(args, args + n);
        self().enqueue(*t, buf);
        return detail::make_future(std::move(owner));
    }

    Self& self() noexcept { return static_cast<Self&>(*this); }
    const Self& self() const noexcept { return static_cast<const Self&>(*this); }

    // Creates the task for an invoker of `Fn(InvArgs...)`, lets `encode` write the
    // arguments (as InvArgs would be written) and hands it to the executor.
    template <class R, class Fn, class... InvArgs, class Encode>
    future<R> submit_encoded(task_options topts, std::uint64_t fn_off, Encode&& encode) {
        return submit_encoded_with<R>(detail::invoker_for<Fn, InvArgs...>(), topts, fn_off,
                                      std::forward<Encode>(encode));
    }

    // As submit_encoded, with the worker's invoker named.
    template <class R, class Encode>
    future<R> submit_encoded_with(invoker_fn invoker, task_options topts, std::uint64_t fn_off,
                                  Encode&& encode) {
        detail::check_timeout(topts.timeout, "task_options::timeout");
        auto* t = new remote_task<R, Record>();
        t->try_claim();  // the executor owns it from here; cancel() goes through it
        state_ptr<state<R>> owner(t);
        t->invoker = detail::code_offset(reinterpret_cast<const void*>(invoker));
        t->fn = fn_off;
        t->timeout_ns =
            topts.timeout ? static_cast<std::int64_t>(topts.timeout->count()) * 1'000'000 : -1;
        std::vector<std::byte> own;
        const scratch_lease lease;
        std::vector<std::byte>* shared = lease.get();
        std::vector<std::byte>& buf = shared != nullptr ? *shared : own;
        buf.clear();
        // Big argument vectors go into their blocks after the task is sent, while the
        // worker copies them out (finished here at the latest: the arguments are alive);
        // not for a task with a deadline, which starts when the task is sent.
        bulk_writes later;
        const bool after_send = copy_bulk_after_send_ && !topts.timeout;
        try {
            attachment_scope scope(&t->attachments, bulk_threshold_,
                                   after_send ? &later : nullptr);
            wire::writer w(buf);
            encode(w);
        } catch (const std::exception& e) {
            t->set_exception(std::make_exception_ptr(serialization_error(
                std::string("could not serialize the task's arguments: ") + e.what())));
            return detail::make_future(std::move(owner));
        }
        self().enqueue(*t, buf);
        later.finish();
        return detail::make_future(std::move(owner));
    }

    // A task whose arguments are already encoded, in two pieces (see enqueue_parts).
    template <class R>
    future<R> submit_parts(invoker_fn invoker, std::uint64_t fn_off,
                           std::span<const std::byte> head, std::span<const std::byte> body) {
        auto* t = new remote_task<R, Record>();
        t->try_claim();  // the executor owns it from here; cancel() goes through it
        state_ptr<state<R>> owner(t);
        t->invoker = detail::code_offset(reinterpret_cast<const void*>(invoker));
        t->fn = fn_off;
        if constexpr (requires { self().enqueue_parts(*t, head, body); }) {
            self().enqueue_parts(*t, head, body);
        } else {
            std::vector<std::byte> own;
            const scratch_lease lease;
            std::vector<std::byte>* shared = lease.get();
            std::vector<std::byte>& buf = shared != nullptr ? *shared : own;
            buf.assign(head.begin(), head.end());
            buf.insert(buf.end(), body.begin(), body.end());
            self().enqueue(*t, buf);
        }
        return detail::make_future(std::move(owner));
    }

    template <class F, class Range>
    auto open_stream(F&& f, Range&& items, stream_options opts, bool ordered) {
        using Fn = std::decay_t<F>;
        using T = std::ranges::range_value_t<Range>;
        static_assert(remote_callable<F>,
                      "tasks run in worker processes must be free functions or captureless "
                      "lambdas");
        static_assert(std::is_invocable_v<Fn&, T&>,
                      "imap: the function cannot be called with the range's elements");
        using R = std::remove_cvref_t<std::invoke_result_t<Fn&, T&>>;
        static_assert(!std::is_void_v<R>,
                      "imap needs a function that returns a value; use submit");
        // Each chunk is a call of map_chunk, as map sends it, with the elements in a
        // vector filled from the input.
        struct submit_chunk {
            remote_executor* ex;
            std::uint64_t fn_off;
            future<std::vector<R>> operator()(std::vector<T>&& chunk) const {
                return ex->submit(&detail::map_chunk<Fn, T, R>, fn_off, std::move(chunk));
            }
        };
        const std::size_t chunksize = detail::stream_chunksize(
            opts, items, [this](std::size_t n) { return self().auto_chunksize(n); });
        const std::size_t max_in_flight =
            opts.max_in_flight != 0 ? opts.max_in_flight
                                    : 2 * static_cast<std::size_t>(self().workers());
        const submit_chunk submit{this, detail::callable_offset(static_cast<const Fn&>(f))};
        detail::chunk_source_ptr<R> source(new detail::range_chunk_source<R, Range, submit_chunk>(
            std::forward<Range>(items), chunksize, submit));
        return stream<R>(std::move(source), ordered, max_in_flight);
    }

};

}  // namespace procpool::detail
