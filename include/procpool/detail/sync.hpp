// Low-level waiting primitives shared by futures, pools and process channels.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace procpool::detail {

/// Sleep while `*word == expected`, until woken, or until `deadline` (steady clock) passes.
/// `shared` selects a process-shared futex (the word lives in a shared mapping).
/// Returns false only when the deadline passed. Spurious returns are possible.
bool futex_wait(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                const std::chrono::steady_clock::time_point* deadline = nullptr,
                bool shared = false) noexcept;

/// Wake up to `count` sleepers of `futex_wait(word, ...)`.
void futex_wake(const std::atomic<std::uint32_t>* word, int count, bool shared = false) noexcept;

/// How long a waiter spins (yielding the CPU each round) before it sleeps. About the cost
/// of one cross-core wake-up on a VM; see docs/architecture.md ("Waiting").
inline constexpr std::chrono::microseconds spin_budget{20};

/// Give up the CPU to any runnable thread (sched_yield).
void cpu_yield() noexcept;

/// Spin, yielding, until `ready()` is true or `spin_budget` has passed. Returns `ready()`.
template <class Pred>
bool spin_until(Pred&& ready) {
    if (ready()) return true;
    const auto until = std::chrono::steady_clock::now() + spin_budget;
    do {
        for (int i = 0; i < 16; ++i) {
            if (ready()) return true;
            cpu_yield();
        }
    } while (std::chrono::steady_clock::now() < until);
    return ready();
}

}  // namespace procpool::detail
