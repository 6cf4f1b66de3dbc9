// stream<R>: the results of a function applied to an input range of any length (a
// generator, an endless one included) by a pool, with a bounded number of chunks in
// flight. Returned by the pools' imap / imap_unordered; shared by every executor.
#pragma once

#include <algorithm>
#include <cstddef>
#include <deque>
#include <exception>
#include <iterator>
#include <memory>
#include <optional>
#include <ranges>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/future.hpp"

namespace procpool {

/// Options of `imap` and `imap_unordered`; designated initializers:
/// `pool.imap(f, items, {.chunksize = 10'000, .max_in_flight = 8})`.
struct stream_options {
    /// Input elements per task. 0: for an input whose size is known, the size `map` would
    /// pick; for one of unknown or endless length, 1 (as Python's `imap`). Tiny tasks in a
    /// process pool want thousands per chunk.
    std::size_t chunksize = 0;
    /// The most chunks submitted to the pool and not yet consumed by the caller: what
    /// bounds the memory a stream holds (input and results of at most this many chunks,
    /// plus the chunk being read). 0: twice the pool's workers, enough to keep every
    /// worker busy while the caller reads.
    std::size_t max_in_flight = 0;
};

namespace detail {

/// Where a stream's chunks come from: reads the next chunk of the input and submits it.
/// Function pointers rather than virtual functions, for the reason given at
/// detail::task_state (clang 14 and class templates first used in generic lambdas).
template <class R>
class chunk_source {
public:
    /// Reads up to one chunk of input and stores its submitted task in `out`. Returns
    /// false, submitting nothing, once the input is exhausted.
    bool next(future<std::vector<R>>& out) { return next_(this, out); }
    /// Deletes this source (its most derived type).
    void destroy() noexcept { destroy_(this); }

protected:
    using next_fn = bool (*)(chunk_source*, future<std::vector<R>>&);
    using destroy_fn = void (*)(chunk_source*) noexcept;
    chunk_source(next_fn n, destroy_fn d) noexcept : next_(n), destroy_(d) {}
    ~chunk_source() = default;

private:
    next_fn next_;
    destroy_fn destroy_;
};

/// Deletes a chunk_source through its own destroy function.
struct chunk_source_deleter {
    template <class R>
    void operator()(chunk_source<R>* s) const noexcept {
        s->destroy();
    }
};

/// Owning pointer to a stream's chunk source.
template <class R>
using chunk_source_ptr = std::unique_ptr<chunk_source<R>, chunk_source_deleter>;

/// The chunk source of an input range: `Range` is how the caller passed it (an lvalue
/// reference is kept as a reference, an rvalue is moved in and owned), `Submit` turns a
/// `std::vector` of elements into the future of their results.
template <class R, class Range, class Submit>
class range_chunk_source final : public chunk_source<R> {
    using stored = std::conditional_t<std::is_lvalue_reference_v<Range>, Range,
                                      std::remove_cvref_t<Range>>;
    using range_type = std::remove_reference_t<stored>;
    using element = std::ranges::range_value_t<range_type>;

public:
    range_chunk_source(Range&& items, std::size_t chunksize, Submit submit)
        : chunk_source<R>(&next_impl, &destroy_impl),
          range_(std::forward<Range>(items)),
          chunksize_(chunksize),
          submit_(std::move(submit)) {}

private:
    static bool next_impl(chunk_source<R>* base, future<std::vector<R>>& out) {
        return static_cast<range_chunk_source*>(base)->next_chunk(out);
    }
    static void destroy_impl(chunk_source<R>* base) noexcept {
        delete static_cast<range_chunk_source*>(base);
    }

    bool next_chunk(future<std::vector<R>>& out) {
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
        // begin() only now, on the first chunk: some inputs start reading when asked.
        if (!it_) {
            it_.emplace(std::ranges::begin(range_));
            end_.emplace(std::ranges::end(range_));
        }
        if (*it_ == *end_) return false;
        std::vector<element> items;
        items.reserve(std::min<std::size_t>(chunksize_, 4096));
        try {
            do {
                items.emplace_back(**it_);
                ++*it_;
            } while (items.size() < chunksize_ && *it_ != *end_);
        } catch (...) {
            // The elements read before the input failed still get their results; the
            // error comes with the next chunk, i.e. where the input broke.
            if (items.empty()) throw;
            error_ = std::current_exception();
        }
        out = submit_(std::move(items));
        return true;
    }

    stored range_;
    std::size_t chunksize_;
    Submit submit_;
    std::exception_ptr error_;  // the input failed after the chunk last submitted
    std::optional<std::ranges::iterator_t<range_type&>> it_;
    std::optional<std::ranges::sentinel_t<range_type&>> end_;
};

/// The type of the values a stream of `f` over `Range` yields: what `f` returns for an
/// element (taken by lvalue reference from the chunk that carries it), by value.
template <class F, class Range>
using stream_result_t = std::remove_cvref_t<
    std::invoke_result_t<std::decay_t<F>&, std::ranges::range_value_t<Range>&>>;

/// The chunk size a stream over `items` uses: the option if set, else `auto_size(n)` for
/// an input of known size n, else 1.
template <class Range, class AutoSize>
std::size_t stream_chunksize(const stream_options& opts, Range& items, AutoSize auto_size) {
    if (opts.chunksize != 0) return opts.chunksize;
    if constexpr (std::ranges::sized_range<Range>) {
        return auto_size(static_cast<std::size_t>(std::ranges::size(items)));
    } else {
        return 1;
    }
}

}  // namespace detail

/// The results of a function over an input range, computed by a pool as the caller reads
/// them: what `imap` and `imap_unordered` return. An input range (a single pass):
///
/// ```cpp
/// for (double r : pool.imap(heavy_calc, sizes, {.chunksize = 100})) use(r);
/// ```
///
/// The input is read on the reading thread, one chunk at a time, only as far as
/// `max_in_flight` chunks ahead of the caller, so an input of any length (an endless
/// generator included) runs in bounded memory. Chunks are submitted when the stream is
/// made and each time the caller takes a chunk's results.
///
/// Order: `imap` yields results in input order; `imap_unordered` as chunks complete.
///
/// Errors: when reading reaches a chunk whose task failed, `begin()` or `++` throws that
/// task's error (a thread pool's task rethrows its own exception; a process pool's gives
/// `remote_exception`, `worker_died`, ...), and the stream ends there, as Python's
/// `Executor.map` does: the chunks still in flight are stopped as by `close()`. The
/// failed chunk's results are all lost (a chunk stops at its first failing element):
/// use `chunksize` 1, or return an `outcome`-like value, to keep every other result.
/// An exception from the input itself (its iterator threw) or from submitting (the pool
/// shut down) is thrown in the same way once every chunk submitted before it has been
/// read; `imap` throws it at once when it could not submit a single chunk.
///
/// A stream is read by one thread at a time (the input is read on that thread too).
///
/// Lifetime: a stream must not outlive its pool. An input passed as an lvalue is read in
/// place and must outlive the stream; an rvalue is moved into the stream. The function
/// (copied into the stream for thread pools) may be called until the stream is closed.
/// Moving a stream keeps its iterators valid.
template <class R>
class stream {
    struct impl;

public:
    /// Input iterator; dereferences to the current result, which `*it` may move from.
    class iterator {
    public:
        using value_type = R;
        using difference_type = std::ptrdiff_t;
        using iterator_concept = std::input_iterator_tag;
        using reference = typename std::vector<R>::reference;

        /// A past-the-end iterator.
        iterator() = default;
        /// The current result.
        reference operator*() const { return s_->buf[s_->pos]; }
        /// Moves to the next result; may block until a chunk completes, and throws that
        /// chunk's error if it failed.
        iterator& operator++() {
            s_->advance();
            return *this;
        }
        /// As `++it` (an input iterator has no useful copy to return).
        void operator++(int) { ++*this; }
        /// True once the stream has no more results.
        friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
            return it.s_ == nullptr || it.s_->finished;
        }

    private:
        friend class stream;
        explicit iterator(impl* s) noexcept : s_(s) {}
        impl* s_ = nullptr;
    };

    /// Made by the pools' `imap` / `imap_unordered`; `ordered` chooses input order over
    /// completion order. Submits the first chunks at once; throws what that throws (e.g.
    /// `pool_shut_down`).
    stream(detail::chunk_source_ptr<R> source, bool ordered, std::size_t max_in_flight)
        : impl_(std::make_unique<impl>()) {
        impl_->source = std::move(source);
        impl_->ordered = ordered;
        impl_->max_in_flight = std::max<std::size_t>(max_in_flight, 1);
        impl_->refill();
        // Nothing could be submitted: say why now (~impl closes the stream).
        if (impl_->in_flight == 0 && impl_->input_error) {
            std::rethrow_exception(impl_->input_error);
        }
    }

    stream(stream&&) noexcept = default;
    /// Closes this stream (see `close()`), then takes `other`'s place.
    stream& operator=(stream&& other) noexcept {
        if (this != &other) {
            close();
            impl_ = std::move(other.impl_);
        }
        return *this;
    }
    stream(const stream&) = delete;
    stream& operator=(const stream&) = delete;
    /// Closes the stream (see `close()`).
    ~stream() = default;

    /// The first result not yet read: blocks until it is there, and throws if its chunk
    /// failed. Calling it again returns an iterator at the current position.
    iterator begin() {
        if (impl_ == nullptr) return iterator();
        if (!impl_->started) {
            impl_->started = true;
            impl_->advance();
        }
        return iterator(impl_.get());
    }
    /// The end of the results.
    std::default_sentinel_t end() const noexcept { return {}; }

    /// Stops the stream: chunks in flight that have not started are cancelled (never a
    /// running one: a process pool's worker is not killed), then waits for the running
    /// ones to finish, so no task of this stream runs once it returns (a thread pool's
    /// chunk calls the caller's function, which may refer to the caller's locals). Waits
    /// at most as long as the running chunks take. The stream then reads as ended, and its
    /// input is released. The destructor does this; calling it again does nothing.
    void close() noexcept {
        if (impl_ != nullptr) impl_->close();
    }

    /// Chunks submitted and not yet taken by the reader; never more than `max_in_flight`.
    std::size_t in_flight() const noexcept { return impl_ == nullptr ? 0 : impl_->in_flight; }

private:
    struct impl {
        impl() = default;
        impl(const impl&) = delete;
        impl& operator=(const impl&) = delete;
        ~impl() { close(); }

        detail::chunk_source_ptr<R> source;
        bool ordered = true;
        std::size_t max_in_flight = 1;
        std::size_t in_flight = 0;
        bool input_done = false;
        // Why the input ended early (it threw, or submitting failed): thrown once every
        // chunk submitted before it has been read.
        std::exception_ptr input_error;
        bool started = false;
        bool finished = false;
        // In order: the chunks in submission order.
        std::deque<future<std::vector<R>>> queue;
        // As completed: each chunk in a slot; a slot's index arrives in `completed` when
        // its chunk is done (completion callbacks share the queue, so they may outlive
        // the stream).
        std::vector<future<std::vector<R>>> slots;
        std::vector<std::size_t> free_slots;
        std::shared_ptr<detail::completion_queue> completed;
        // The results of the chunk being read, and the current one.
        std::vector<R> buf;
        std::size_t pos = 0;

        // Submits chunks until max_in_flight are out or the input ends.
        void refill() {
            while (!input_done && in_flight < max_in_flight) {
                future<std::vector<R>> f;
                bool more = false;
                try {
                    more = source->next(f);
                } catch (...) {
                    input_error = std::current_exception();
                }
                if (!more) {
                    input_done = true;
                    return;
                }
                if (ordered) {
                    queue.push_back(std::move(f));
                    ++in_flight;
                } else {
                    if (!completed) completed = std::make_shared<detail::completion_queue>();
                    if (free_slots.empty()) {
                        free_slots.push_back(slots.size());
                        slots.emplace_back();
                    }
                    const std::size_t s = free_slots.back();
                    free_slots.pop_back();
                    slots[s] = std::move(f);
                    ++in_flight;
                    slots[s].on_done([q = completed, s] { q->push(s); });
                }
            }
        }

        // The next chunk to read (waiting for it in completion order); in_flight > 0.
        future<std::vector<R>> take() {
            --in_flight;
            if (ordered) {
                future<std::vector<R>> f = std::move(queue.front());
                queue.pop_front();
                return f;
            }
            const std::size_t s = *completed->pop(nullptr);
            free_slots.push_back(s);
            return std::move(slots[s]);
        }

        // Moves to the next result (the first one on the first call).
        void advance() {
            if (finished) return;
            try {
                if (!buf.empty()) ++pos;
                while (pos >= buf.size()) {
                    // Every take() is followed by a refill(), so nothing in flight means
                    // the input is exhausted.
                    if (in_flight == 0) {
                        const std::exception_ptr e = input_error;
                        close();
                        if (e) std::rethrow_exception(e);
                        return;
                    }
                    future<std::vector<R>> f = take();
                    f.wait();
                    buf.clear();
                    pos = 0;
                    buf = std::move(f).get();  // the chunk's error, if it failed
                    refill();  // a slot is free: keep the workers busy while the caller reads
                }
            } catch (...) {
                close();
                throw;
            }
        }

        void close() noexcept {
            // Cancel first, all of them, so that no worker moves on to a chunk this is
            // about to cancel while it waits for another.
            for (auto& f : queue) f.cancel_pending();
            for (auto& f : slots) {
                if (f.valid()) f.cancel_pending();
            }
            for (auto& f : queue) f.wait();
            for (auto& f : slots) {
                if (f.valid()) f.wait();
            }
            queue.clear();
            input_error = nullptr;
            slots.clear();
            free_slots.clear();
            in_flight = 0;
            input_done = true;
            finished = true;
            started = true;
            std::vector<R>().swap(buf);
            pos = 0;
            source.reset();  // the input and, for thread pools, the function
        }
    };

    std::unique_ptr<impl> impl_;
};

}  // namespace procpool
