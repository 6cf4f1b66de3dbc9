#include "procpool/detail/state.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "core/thread_end.hpp"
#include "procpool/error.hpp"

namespace procpool::detail {

namespace {

// One slot per thread that has called into a cancel hook: the hooks it is inside, or null.
// A few deep: a callback run inside one pool's help_wait may wait on another pool's future
// (callbacks run after a pool's lock is let go, defer_callbacks), and both calls must stay
// announced. Past the last entry, a deeper call saves and restores that entry's hook.
constexpr int hazard_depth = 4;
struct hazard_slot {
    std::atomic<const cancel_hook*> hook[hazard_depth] = {};
    int used = 0;  // calls in progress on the owning thread (may exceed hazard_depth)
};

std::mutex hazard_mutex;
// Never destroyed: a cancel may come from a static object's destructor, after the
// static objects constructed later than this list are gone. Constant-initialized: no
// guard that a fork could copy half-taken.
constinit never_destroyed<std::vector<hazard_slot*>> hazard_list;
std::vector<hazard_slot*>& hazard_slots() {
    return hazard_list.value;
}

struct thread_hazard {
    hazard_slot slot;
    thread_hazard() {
        std::lock_guard lock(hazard_mutex);
        hazard_slots().push_back(&slot);
    }
    ~thread_hazard() {
        std::lock_guard lock(hazard_mutex);
        std::erase(hazard_slots(), &slot);
    }
    thread_hazard(const thread_hazard&) = delete;
    thread_hazard& operator=(const thread_hazard&) = delete;
};

constinit thread_local thread_hazard* tl_hazard = nullptr;

void free_hazard_at_thread_end(void* h) noexcept {
    if (tl_hazard != h || tl_hazard->slot.used != 0) return;
    delete tl_hazard;
    tl_hazard = nullptr;
}

// Announces a call into `hook` for as long as it lives. Announce first, then look at the
// state: if the task is done by then, the executor may already be gone (do not call).
class hook_guard {
  public:
    explicit hook_guard(const cancel_hook* hook) noexcept
        : slot_(slot()), index_(std::min(slot_.used, hazard_depth - 1)) {
        ++slot_.used;
        // An exchange, not a store plus fence: a full barrier that TSan also understands.
        prev_ = slot_.hook[index_].exchange(hook, std::memory_order_seq_cst);
    }
    ~hook_guard() {
        slot_.hook[index_].store(prev_, std::memory_order_release);
        --slot_.used;
    }
    hook_guard(const hook_guard&) = delete;
    hook_guard& operator=(const hook_guard&) = delete;

  private:
    static hazard_slot& slot() noexcept;
    hazard_slot& slot_;
    int index_;
    const cancel_hook* prev_ = nullptr;
};

hazard_slot& hook_guard::slot() noexcept {
    if (tl_hazard == nullptr) {
        tl_hazard = new thread_hazard();
        thread_end_key<free_hazard_at_thread_end>::set(tl_hazard);
    }
    return tl_hazard->slot;
}

}  // namespace

void cancel_hook::quiesce(const cancel_hook* hook) noexcept {
    for (;;) {
        bool busy = false;
        {
            std::lock_guard lock(hazard_mutex);
            for (const hazard_slot* s : hazard_slots()) {
                for (const auto& h : s->hook) {
                    if (h.load(std::memory_order_seq_cst) == hook) busy = true;
                }
            }
        }
        if (!busy) return;
        std::this_thread::yield();
    }
}

void cancel_hook::forget_other_threads() noexcept {
    new (&hazard_mutex) std::mutex();
    for (hazard_slot* s : hazard_slots()) {
        for (auto& h : s->hook) h.store(nullptr, std::memory_order_relaxed);
        s->used = 0;
    }
    defer_callbacks::forget();
}

state_base::~state_base() {
    // A state that never completed (its executor vanished) still owns its callbacks.
    while (cb_head_ != nullptr) delete std::exchange(cb_head_, cb_head_->next);
}

void report_callback_error() noexcept {
    const char* what = "unknown exception";
    try {
        throw;
    } catch (const std::exception& e) {
        what = e.what();
        std::fprintf(stderr, "procpool: a future's done-callback threw: %s\n", what);
        return;
    } catch (...) {
    }
    std::fprintf(stderr, "procpool: a future's done-callback threw: %s\n", what);
}

void state_base::set_cancelled(const char* why) noexcept {
    try {
        error_ = std::make_exception_ptr(task_cancelled(why));
    } catch (...) {
        error_ = std::current_exception();
    }
    publish(cancelled);
}

bool state_base::cancel() noexcept { return cancel_claimed_or_ask(true); }

bool state_base::cancel_pending() noexcept { return cancel_claimed_or_ask(false); }

// Unclaimed: cancelled here. Claimed: the executor's hook decides, stopping a running task
// only if `stop_running`.
bool state_base::cancel_claimed_or_ask(bool stop_running) noexcept {
    if (try_claim()) {
        if (cancel_observer != nullptr) {
            // Its executor counts it as it resolves, like every task it resolves itself;
            // it still holds the task and waits for it to be done (see cancel_observer).
            const observe_publish observe(this, cancel_observer->fn, cancel_observer->ctx);
            set_cancelled("task cancelled before it started");
        } else {
            set_cancelled("task cancelled before it started");
        }
        return true;
    }
    if (hook_ == nullptr) return false;
    const hook_guard guard(hook_);
    if (is_done()) return false;
    return stop_running ? hook_->cancel_running(*this) : hook_->cancel_pending(*this);
}

namespace {
thread_local publish_observer tl_observer;
}  // namespace

observe_publish::observe_publish(const state_base* target,
                                 void (*fn)(void*, state_base&) noexcept, void* ctx) noexcept
    : saved_(tl_observer) {
    tl_observer = publish_observer{target, fn, ctx};
}

observe_publish::~observe_publish() { tl_observer = saved_; }

bool observe_publish::fired() const noexcept { return tl_observer.target == nullptr; }

void state_base::publish(std::uint32_t extra) noexcept {
    if (tl_observer.target == this) {
        const publish_observer o = tl_observer;
        tl_observer.target = nullptr;  // once; also what fired() reports
        o.fn(o.ctx, *this);
    }
    const std::uint32_t old = flags_.fetch_or(done | extra, std::memory_order_acq_rel);
    if ((old & waiters) != 0) futex_wake(&flags_, INT_MAX);
    if ((old & callbacks) != 0) run_callbacks();
}

bool state_base::wait(const std::chrono::steady_clock::time_point* deadline) const noexcept {
    // A callback about to block: the callbacks queued behind it on this thread run first
    // (one of them may be what completes this state).
    if (!is_done()) defer_callbacks::run_pending();
    if (hook_ != nullptr) {
        const hook_guard guard(hook_);
        if (is_done() || hook_->help_wait(*this, deadline)) return true;
    } else if (spin_until([this] { return is_done(); })) {
        return true;
    }
    for (;;) {
        const std::uint32_t old = flags_.fetch_or(waiters, std::memory_order_acq_rel);
        if ((old & done) != 0) return true;
        if (!futex_wait(&flags_, old | waiters, deadline)) return is_done();
    }
}

void state_base::add_callback(callback_node* cb) noexcept {
    {
        std::lock_guard lock(cb_mutex_);
        const std::uint32_t old = flags_.fetch_or(callbacks, std::memory_order_acq_rel);
        if ((old & done) == 0) {
            if (cb_tail_ != nullptr) {
                cb_tail_->next = cb;
            } else {
                cb_head_ = cb;
            }
            cb_tail_ = cb;
            return;
        }
    }
    cb->run();
    delete cb;
}

namespace {

void run_list(callback_node* list) noexcept {
    while (list != nullptr) {
        callback_node* next = list->next;
        list->run();
        delete list;
        list = next;
    }
}

// What a thread holds back (defer_callbacks): a state's callbacks (with a reference on
// the state, as its completer held one while they would have run), then an `after` hook
// (the count of a task as finished, which must follow its own callbacks); either may be
// absent.
struct held_back {
    state_base* state = nullptr;
    callback_node* list = nullptr;
    void (*fn)(void*) noexcept = nullptr;
    void* ctx = nullptr;
};

// One queue per thread, consumed in order from `next` by whichever run on this thread
// comes: the run at the end of the outermost hold, or one nested in a callback (its own
// drain's, or a wait's: run_pending). So a callback that blocks does not keep the entries
// queued behind it from running (one of them may be what it waits for), and the buffer
// is kept from one drain to the next.
//
// The thread-local itself is trivially destructible and its buffer lives on the heap:
// destructors that run on a thread after its thread_local objects are destroyed (a
// static object's, at exit, waiting on a process-pool future) still find a usable
// queue. A thread_end_key frees the buffer when the thread ends (thread_end.hpp).
struct deferral {
    int depth = 0;         // holds in progress (begin without end)
    int running = 0;       // runs in progress, nested in callbacks
    std::size_t next = 0;  // the first entry not yet taken
    std::vector<held_back>* queue = nullptr;  // allocated at the first entry

    std::size_t size() const noexcept { return queue == nullptr ? 0 : queue->size(); }
};

// Runs nested deeper than this leave their entries to a run further out: a callback that
// waits on a task whose callback waits on the next task... would otherwise take one
// stack frame of callbacks per task.
constexpr int max_nested_runs = 32;

constinit thread_local deferral tl_deferral;

// The key's destructor: runs when the thread ends, with nothing of the queue running.
void free_queue_at_thread_end(void* q) noexcept {
    deferral& d = tl_deferral;
    if (d.queue != q || d.running != 0 || d.next < d.queue->size()) return;  // not idle: kept
    delete d.queue;
    d.queue = nullptr;
    d.next = 0;
}

// Appends one entry; throws std::bad_alloc when out of memory.
void enqueue(deferral& d, const held_back& h) {
    if (d.queue == nullptr) {
        d.queue = new std::vector<held_back>;
        thread_end_key<free_queue_at_thread_end>::set(d.queue);
    }
    d.queue->push_back(h);
}

void run_queued(deferral& d) noexcept {
    if (d.depth > 0) return;
    if (d.running >= max_nested_runs) {
        // Too deep for more callbacks, but the entries that carry none (a task counted as
        // finished) run here: they call no user code, and a run further out may be a
        // frame that waits for them (a pool destroyed in a callback waits for its count).
        for (std::size_t i = d.next; i < d.size(); ++i) {
            held_back& h = (*d.queue)[i];
            if (h.list != nullptr || h.fn == nullptr) continue;
            const auto fn = std::exchange(h.fn, nullptr);
            fn(h.ctx);
        }
        return;
    }
    ++d.running;
    while (d.next < d.size()) {
        const held_back h = (*d.queue)[d.next++];  // a copy: callbacks may grow the queue
        if (h.list != nullptr) run_list(h.list);
        if (h.state != nullptr) h.state->release();
        if (h.fn != nullptr) h.fn(h.ctx);
    }
    if (--d.running == 0) {
        if (d.queue != nullptr) d.queue->clear();  // capacity kept
        d.next = 0;
    }
}

}  // namespace

void defer_callbacks::begin() noexcept {
    ++tl_deferral.depth;
}

void defer_callbacks::end() noexcept {
    deferral& d = tl_deferral;
    if (--d.depth == 0) run_queued(d);
}

void defer_callbacks::run_pending() noexcept {
    deferral& d = tl_deferral;
    if (d.next < d.size()) run_queued(d);
}

void defer_callbacks::forget() noexcept {
    // Forked by a thread that held callbacks back (a pool's supervisor forks a worker
    // while it holds `draining`): they are the parent's, and nothing here ends the hold.
    deferral& d = tl_deferral;
    d.depth = 0;
    d.running = 0;
    d.next = 0;
    if (d.queue != nullptr) d.queue->clear();
}

void defer_callbacks::after(const state_base* s, void (*fn)(void*) noexcept,
                            void* ctx) noexcept {
    deferral& d = tl_deferral;
    if (d.depth > 0) {
        // Behind the state's own callbacks if it has some queued (the last entry, as it
        // has just been published); otherwise an entry of its own.
        if (d.size() > d.next && d.queue->back().state == s && d.queue->back().fn == nullptr) {
            d.queue->back().fn = fn;
            d.queue->back().ctx = ctx;
            return;
        }
        try {
            enqueue(d, held_back{nullptr, nullptr, fn, ctx});
            return;
        } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory: run it now
        }
    }
    fn(ctx);
}

void state_base::run_callbacks() noexcept {
    callback_node* list = nullptr;
    {
        std::lock_guard lock(cb_mutex_);
        list = cb_head_;
        cb_head_ = cb_tail_ = nullptr;
    }
    if (list == nullptr) return;
    deferral& d = tl_deferral;
    if (d.depth > 0) {
        try {
            enqueue(d, held_back{this, list, nullptr, nullptr});
            add_ref();  // the completer's reference may go before the queue runs
            return;
        } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory: run them now
        }
    }
    run_list(list);
}

namespace {

constinit thread_local std::vector<std::byte>* tl_scratch = nullptr;
constinit thread_local bool tl_scratch_taken = false;

void free_scratch_at_thread_end(void* v) noexcept {
    if (tl_scratch != v || tl_scratch_taken) return;
    delete tl_scratch;
    tl_scratch = nullptr;
}

}  // namespace

std::vector<std::byte>* acquire_encoding_scratch() noexcept {
    if (tl_scratch_taken) return nullptr;  // a submit nested in an outer one's encoding
    if (tl_scratch == nullptr) {
        // A plain new (a program may replace it and its delete, not the nothrow form).
        try {
            tl_scratch = new std::vector<std::byte>;
        } catch (const std::bad_alloc&) {
            return nullptr;
        }
        thread_end_key<free_scratch_at_thread_end>::set(tl_scratch);
    }
    tl_scratch_taken = true;
    return tl_scratch;
}

void release_encoding_scratch() noexcept {
    tl_scratch_taken = false;
}

}  // namespace procpool::detail
