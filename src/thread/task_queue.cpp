#include "thread/task_queue.hpp"

#include <algorithm>

#include "procpool/detail/sync.hpp"

namespace procpool::detail {

task_queue::task_queue() : head_(&stub_), tail_(&stub_) {}

task_queue::~task_queue() {
    // Whatever is left was never run: drop the queue's references.
    while (state_base* s = try_pop()) s->release();
}

void task_queue::push(state_base* s) noexcept {
    s->next.store(nullptr, std::memory_order_relaxed);
    // seq_cst pairs with the sleeper's seq_cst registration: either this push sees the
    // sleeper, or the sleeper's re-check sees this node (no lost wake-up).
    state_base* prev = head_.exchange(s, std::memory_order_seq_cst);
    prev->next.store(s, std::memory_order_release);
    if (nsleepers_.load(std::memory_order_seq_cst) != 0) wake_one();
}

task_queue::pop_result task_queue::pop_locked(state_base*& out) noexcept {
    state_base* tail = tail_.load(std::memory_order_relaxed);
    state_base* next = tail->next.load(std::memory_order_acquire);
    if (tail == &stub_) {
        if (next == nullptr) {
            // Empty, unless a producer has swapped head_ but not linked its node yet.
            return head_.load(std::memory_order_acquire) == &stub_ ? pop_result::empty
                                                                    : pop_result::retry;
        }
        tail = next;
        tail_.store(tail, std::memory_order_release);
        next = next->next.load(std::memory_order_acquire);
    }
    if (next != nullptr) {
        tail_.store(next, std::memory_order_release);
        out = tail;
        return pop_result::item;
    }
    if (tail != head_.load(std::memory_order_acquire)) return pop_result::retry;
    // `tail` is the last node: put the stub behind it so it can be handed out.
    stub_.next.store(nullptr, std::memory_order_relaxed);
    state_base* prev = head_.exchange(&stub_, std::memory_order_acq_rel);
    prev->next.store(&stub_, std::memory_order_release);
    next = tail->next.load(std::memory_order_acquire);
    if (next != nullptr) {
        tail_.store(next, std::memory_order_release);
        out = tail;
        return pop_result::item;
    }
    return pop_result::retry;
}

state_base* task_queue::try_pop() noexcept {
    if (looks_empty()) return nullptr;
    lock_consumers();
    state_base* out = nullptr;
    pop_result r;
    // retry means a producer is between its two steps; it finishes within instructions
    // unless preempted, so yield to it.
    while ((r = pop_locked(out)) == pop_result::retry) cpu_yield();
    unlock_consumers();
    return r == pop_result::item ? out : nullptr;
}

state_base* task_queue::pop_wait() noexcept {
    thread_local sleeper self;
    for (;;) {
        const bool closed = closed_.load(std::memory_order_acquire);
        if (state_base* s = try_pop()) return s;
        if (closed) return nullptr;
        if (spin_until([this] {
                return !looks_empty() || closed_.load(std::memory_order_relaxed);
            })) {
            continue;
        }
        self.word.store(0, std::memory_order_relaxed);
        {
            std::lock_guard lock(sleep_mutex_);
            sleeping_.push_back(&self);
            nsleepers_.fetch_add(1, std::memory_order_seq_cst);
        }
        if (!looks_empty() || closed_.load(std::memory_order_seq_cst)) {
            std::lock_guard lock(sleep_mutex_);
            auto it = std::find(sleeping_.begin(), sleeping_.end(), &self);
            if (it != sleeping_.end()) {
                sleeping_.erase(it);
                nsleepers_.fetch_sub(1, std::memory_order_relaxed);
            }
            continue;
        }
        while (self.word.load(std::memory_order_acquire) == 0) futex_wait(&self.word, 0);
    }
}

void task_queue::wake_one() noexcept {
    std::lock_guard lock(sleep_mutex_);
    if (sleeping_.empty()) return;
    sleeper* w = sleeping_.back();
    sleeping_.pop_back();
    nsleepers_.fetch_sub(1, std::memory_order_relaxed);
    w->word.store(1, std::memory_order_release);
    futex_wake(&w->word, 1);
}

void task_queue::close() noexcept {
    closed_.store(true, std::memory_order_seq_cst);
    std::lock_guard lock(sleep_mutex_);
    for (sleeper* w : sleeping_) {
        w->word.store(1, std::memory_order_release);
        futex_wake(&w->word, 1);
    }
    sleeping_.clear();
    nsleepers_.store(0, std::memory_order_relaxed);
}

}  // namespace procpool::detail
