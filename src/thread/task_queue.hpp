// The thread pool's run queue: unbounded FIFO of task states with sleeping consumers.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "procpool/detail/state.hpp"

namespace procpool::detail {

/// Multi-producer, multi-consumer FIFO of `state_base` nodes (linked through their
/// `next` field, so pushing allocates nothing).
///
/// Producers are wait-free: one exchange, as in Dmitry Vyukov's intrusive MPSC queue
/// (1024cores.net, "Intrusive MPSC node-based queue"). Consumers are serialised by a
/// yielding spin lock, held for a few instructions. A consumer that finds the queue
/// empty spins for `spin_budget`, then registers as a sleeper and parks on a futex of its
/// own; a producer wakes one sleeper per push only while sleepers exist, so a busy pool
/// makes no wake-up system calls.
class task_queue {
public:
    task_queue();
    task_queue(const task_queue&) = delete;
    task_queue& operator=(const task_queue&) = delete;
    ~task_queue();

    /// Appends `s` (the queue takes over one reference) and wakes a sleeper if any.
    void push(state_base* s) noexcept;
    /// The oldest node, or nullptr if the queue is empty.
    state_base* try_pop() noexcept;
    /// The oldest node; blocks while the queue is empty. nullptr once closed and drained.
    state_base* pop_wait() noexcept;
    /// No more pushes will come: wake every sleeper; pop_wait returns nullptr when drained.
    void close() noexcept;

private:
    struct stub_node final : state_base {};
    struct sleeper {
        std::atomic<std::uint32_t> word{0};
    };

    enum class pop_result { item, empty, retry };
    pop_result pop_locked(state_base*& out) noexcept;
    void lock_consumers() noexcept { consumer_lock_.lock(); }
    void unlock_consumers() noexcept { consumer_lock_.unlock(); }
    // Empty means the stub is both ends of the list. Checking head_ alone is not enough:
    // when a consumer re-inserts the stub behind the last node while a producer's push is
    // half done, the stub becomes head_ with that producer's node still before it.
    bool looks_empty() const noexcept {
        return head_.load(std::memory_order_seq_cst) == &stub_ &&
               tail_.load(std::memory_order_seq_cst) == &stub_;
    }
    void wake_one() noexcept;

    alignas(64) std::atomic<state_base*> head_;  // producers' end
    alignas(64) std::atomic<state_base*> tail_;  // consumers' end, written under consumer_lock_
    spin_lock consumer_lock_;
    stub_node stub_;
    alignas(64) std::atomic<int> nsleepers_{0};
    std::atomic<bool> closed_{false};
    std::mutex sleep_mutex_;
    std::vector<sleeper*> sleeping_;
};

}  // namespace procpool::detail
