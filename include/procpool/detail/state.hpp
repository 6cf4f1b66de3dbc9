// The shared state behind a future: result storage, completion flag, waiters, callbacks.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

#include "procpool/detail/record_cache.hpp"
#include "procpool/detail/sync.hpp"

namespace procpool::detail {

class state_base;

/// Lets an executor stop a task that is already running (a process pool kills its worker).
/// Thread pools install none: a running thread cannot be stopped safely.
class cancel_hook {
public:
    /// Try to stop `s`, which is claimed (running or dispatched). On success the hook
    /// resolves `s` as cancelled and returns true.
    virtual bool cancel_running(state_base& s) noexcept = 0;

    /// Try to stop `s`, which is claimed, only if it has not started running: never stops
    /// a running task. On success the hook resolves `s` as cancelled and returns true. If
    /// the hook cannot tell whether the task started, it returns false and leaves it to
    /// resolve as usual (skipped or run).
    virtual bool cancel_pending(state_base& s) noexcept = 0;

    /// Called by a thread about to wait for `s`, until `*deadline` if it is not null: the
    /// executor may use the waiting thread to make progress itself (a process pool drains
    /// its completion rings) or let it sleep where the task's worker wakes it directly,
    /// saving a hand-off through its supervisor. It may return before `s` is done; the
    /// thread then sleeps on `s` itself. Returns `s.is_done()`.
    virtual bool help_wait(const state_base& s,
                           const std::chrono::steady_clock::time_point* deadline) noexcept = 0;

    /// Waits until no thread is inside a call to `hook` made through a future. An
    /// executor calls it before it frees the hook, once every task it resolved is done:
    /// a thread that saw a task not done yet may still be entering the hook. Calls are
    /// announced in per-thread hazard slots, checked here (hazard pointers, Michael 2004).
    static void quiesce(const cancel_hook* hook) noexcept;

    /// In a new worker process (one thread, forked from a program that may run others):
    /// the hazard slots' lock afresh and no slot announcing a call, as the threads that
    /// held them do not exist there, and no callbacks held back (defer_callbacks). Lets a
    /// task make pools of its own.
    static void forget_other_threads() noexcept;

protected:
    ~cancel_hook() = default;
};

/// Lets an executor see one task resolve, on the resolving thread, just before its waiters
/// and callbacks can (how pools keep statistics and traces that are complete the moment a
/// future is ready). Set per thread; see `observe_publish`.
struct publish_observer {
    const state_base* target = nullptr;  ///< the only state observed
    void (*fn)(void* ctx, state_base& s) noexcept = nullptr;
    void* ctx = nullptr;
};

/// While alive, a `publish` of `target` on this thread first calls `fn(ctx, target)`
/// (with the result or error already stored). Restores the previous observer on exit.
class observe_publish {
public:
    observe_publish(const state_base* target, void (*fn)(void*, state_base&) noexcept,
                    void* ctx) noexcept;
    ~observe_publish();
    observe_publish(const observe_publish&) = delete;
    observe_publish& operator=(const observe_publish&) = delete;
    /// True once the observer ran (the target was published on this thread).
    bool fired() const noexcept;

private:
    publish_observer saved_;
};

/// Holds back, on this thread, the callbacks of the states it completes until the
/// outermost holder ends: an executor completes tasks while it holds a lock (a process
/// pool's `draining`), and a callback run under that lock could block on a future that
/// only the lock's next holder can complete (a future of another pool whose own drainer
/// waits on this pool, or of this pool itself). Nestable; callbacks and `after` hooks run
/// in the order queued, on this thread, when the outermost holder ends (or earlier, from a
/// callback that waits: run_pending).
class defer_callbacks {
public:
    defer_callbacks() noexcept { begin(); }
    ~defer_callbacks() { end(); }
    defer_callbacks(const defer_callbacks&) = delete;
    defer_callbacks& operator=(const defer_callbacks&) = delete;

    /// The same as a holder's construction and destruction, for a lock's own lock and unlock.
    static void begin() noexcept;
    static void end() noexcept;
    /// Runs `fn(ctx)` after the callbacks of `s` held back on this thread have run (at once
    /// when none are held back): how an executor counts a task as finished only after its
    /// callbacks. Call it right after publishing `s`.
    static void after(const state_base* s, void (*fn)(void*) noexcept, void* ctx) noexcept;
    /// Outside any hold: runs what this thread queued and has not run yet (a callback that
    /// is about to block lets the callbacks queued behind it run first).
    static void run_pending() noexcept;
    /// In a new worker process forked by a thread that held callbacks back: no hold, and
    /// nothing held (the callbacks are the parent's). Called by `forget_other_threads`.
    static void forget() noexcept;
};

/// A node in a state's callback list; run exactly once when the state completes.
struct callback_node {
    callback_node* next = nullptr;
    virtual void run() noexcept = 0;
    virtual ~callback_node() = default;
};

/// Reports a callback that threw: callbacks cannot propagate, like Python's
/// add_done_callback, so the error is written to stderr and dropped.
void report_callback_error() noexcept;

/// Type-independent part of a task's shared state. Reference counted by hand so that
/// a task costs one allocation: the state is also the executor's queue node and holds
/// the callable (see thread_pool's task_state).
class state_base {
public:
    /// Bits of `flags_`.
    enum : std::uint32_t {
        claimed = 1,     ///< An executor started it, or cancel() won: only the claimer completes.
        done = 2,        ///< Result or error stored and published.
        waiters = 4,     ///< Some thread sleeps on the futex: completion must wake it.
        callbacks = 8,   ///< The callback list may be non-empty.
        cancelled = 16,  ///< Completed as cancelled.
    };

    state_base() = default;
    state_base(const state_base&) = delete;
    state_base& operator=(const state_base&) = delete;

    /// States come from the record cache: one is allocated per task, and a burst of them
    /// freed to the heap would be returned to the kernel, for the next burst to fault in
    /// again (see record_cache.hpp).
    static void* operator new(std::size_t n) { return record_cache::allocate(n); }
    static void operator delete(void* p, std::size_t n) noexcept {
        record_cache::deallocate(p, n);
    }
    /// Over-aligned result types: plain aligned heap blocks.
    static void* operator new(std::size_t n, std::align_val_t a) { return ::operator new(n, a); }
    static void operator delete(void* p, std::size_t, std::align_val_t a) noexcept {
        ::operator delete(p, a);
    }

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// Executor: take the right to run this task. False if it was cancelled first.
    bool try_claim() noexcept {
        return (flags_.fetch_or(claimed, std::memory_order_acq_rel) & claimed) == 0;
    }
    bool is_done() const noexcept { return (flags_.load(std::memory_order_acquire) & done) != 0; }
    bool is_claimed() const noexcept {
        return (flags_.load(std::memory_order_acquire) & claimed) != 0;
    }
    bool is_cancelled() const noexcept {
        return (flags_.load(std::memory_order_acquire) & cancelled) != 0;
    }

    /// Completes the task with an error. Only the claimer calls this, once.
    void set_exception(std::exception_ptr e) noexcept {
        error_ = std::move(e);
        publish(0);
    }
    /// Completes a task as cancelled with a `task_cancelled` error.
    void set_cancelled(const char* why) noexcept;

    /// Claim-and-cancel from any thread: succeeds only if no executor has claimed it.
    /// If it was claimed and a cancel hook is installed, asks the hook to stop it.
    bool cancel() noexcept;

    /// Like cancel(), but never asks the hook to stop a task that is already running.
    bool cancel_pending() noexcept;

    void set_cancel_hook(cancel_hook* h) noexcept { hook_ = h; }

    /// Block until done, or until `deadline` if given. Returns is_done().
    bool wait(const std::chrono::steady_clock::time_point* deadline = nullptr) const noexcept;

    /// Run `cb` when done; at once (on this thread) if already done. Exactly once.
    void add_callback(callback_node* cb) noexcept;

    const std::exception_ptr& error() const noexcept { return error_; }

    /// Executors run queued tasks through this; a task state sets `exec_` to run itself.
    /// A function pointer, not a virtual function: clang 14 can drop the instantiation of
    /// a virtual member of a class template first used inside a generic lambda.
    void execute() noexcept {
        if (exec_ != nullptr) exec_(this);
    }

    /// Intrusive link for executor queues.
    std::atomic<state_base*> next{nullptr};
    /// Executor bookkeeping for statistics and traces: when it was queued (steady_clock
    /// ns), its number in traces and its attempt (see thread_pool).
    std::int64_t queued_ns = 0;
    std::uint64_t trace_id = 0;
    std::uint32_t attempt = 1;
    /// Set by an executor that queues unclaimed tasks and records them (thread_pool): a
    /// `cancel()` that claims the task first publishes its cancellation under this
    /// observer (its `target` is ignored), so the executor counts it before the future is
    /// ready, on the cancelling thread. The executor must keep `*cancel_observer` alive
    /// until such a cancellation has published: it waits for `is_done()` on any task it
    /// finds claimed by someone else.
    const publish_observer* cancel_observer = nullptr;

protected:
    using exec_fn = void (*)(state_base*) noexcept;
    exec_fn exec_ = nullptr;

    virtual ~state_base();
    /// Marks done (plus `extra` bits), wakes waiters, runs callbacks.
    void publish(std::uint32_t extra) noexcept;

private:
    void run_callbacks() noexcept;
    bool cancel_claimed_or_ask(bool stop_running) noexcept;

    mutable std::atomic<std::uint32_t> flags_{0};
    std::atomic<std::uint32_t> refs_{1};
    cancel_hook* hook_ = nullptr;
    std::exception_ptr error_;
    std::mutex cb_mutex_;
    callback_node* cb_head_ = nullptr;
    callback_node* cb_tail_ = nullptr;
};

/// Result storage for a T-valued task.
template <class T>
class state : public state_base {
public:
    /// Completes the task with a value. Only the claimer calls this, once.
    template <class... A>
    void set_value(A&&... a) noexcept {
        try {
            ::new (static_cast<void*>(&storage_)) T(std::forward<A>(a)...);
            has_value_ = true;
        } catch (...) {
            set_exception(std::current_exception());
            return;
        }
        publish(0);
    }
    T& value() noexcept { return *std::launder(reinterpret_cast<T*>(&storage_)); }

protected:
    ~state() override {
        if (has_value_) value().~T();
    }

private:
    alignas(T) unsigned char storage_[sizeof(T)];
    bool has_value_ = false;
};

template <>
class state<void> : public state_base {
public:
    void set_value() noexcept { publish(0); }
};

/// Owning pointer to a state (one reference).
template <class S>
class state_ptr {
public:
    state_ptr() = default;
    /// Adopts one reference already held by the caller.
    explicit state_ptr(S* p) noexcept : p_(p) {}
    state_ptr(const state_ptr& o) noexcept : p_(o.p_) {
        if (p_ != nullptr) p_->add_ref();
    }
    state_ptr(state_ptr&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    state_ptr& operator=(state_ptr o) noexcept {
        std::swap(p_, o.p_);
        return *this;
    }
    ~state_ptr() {
        if (p_ != nullptr) p_->release();
    }
    S* get() const noexcept { return p_; }
    S* operator->() const noexcept { return p_; }
    S& operator*() const noexcept { return *p_; }
    explicit operator bool() const noexcept { return p_ != nullptr; }
    /// Gives up ownership without releasing.
    S* detach() noexcept { return std::exchange(p_, nullptr); }

private:
    S* p_ = nullptr;
};

}  // namespace procpool::detail
