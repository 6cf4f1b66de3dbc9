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

/// A spin-wait hint to the CPU (x86 `pause`): no system call, no yield.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

/// Looks this many times, with a `cpu_relax` between, before spin_until starts yielding:
/// about a microsecond, as long as a hand-off through shared memory takes when the other
/// side is running, so that a reply that is on its way costs no system call.
inline constexpr int relax_spins = 64;

/// Spin, yielding, until `ready()` is true or `spin_budget` has passed. Returns `ready()`.
/// The first `relax_spins` looks do not yield (no system call); after them each round
/// yields the CPU, so that on a machine with fewer cores than busy threads the one being
/// waited for gets to run.
template <class Pred>
bool spin_until(Pred&& ready) {
    for (int i = 0; i < relax_spins; ++i) {
        if (ready()) return true;
        cpu_relax();
    }
    // The clock is read after every yield: on a loaded machine one yield can last a time
    // slice, so sixteen between looks at the clock stretched each spin far past its budget.
    const auto until = std::chrono::steady_clock::now() + spin_budget;
    do {
        if (ready()) return true;
        cpu_yield();
    } while (std::chrono::steady_clock::now() < until);
    return ready();
}

/// A lock for sections of a few instructions shared by threads on different cores: a
/// sleeping mutex would cost a cross-core wake-up whenever two of them meet. Waits by
/// looking (test and test-and-set) with a `cpu_relax` between looks for `relax_spins`
/// looks, about a microsecond, then by yielding: a holder that is running leaves its
/// section within that time, so meeting it costs no system call (yielding at once made
/// the submitter and the completion drainer of a process_pool, which meet on its lock
/// every few tasks, call sched_yield ~0.08 times per task); a holder the kernel preempted
/// gets the CPU back from the yields.
class spin_lock {
public:
    /// Takes the lock if it is free.
    bool try_lock() noexcept { return !flag_.exchange(true, std::memory_order_acquire); }
    /// Takes the lock: looks briefly while another thread holds it, then yields the CPU.
    void lock() noexcept {
        int looks = 0;
        while (!try_lock()) {
            while (flag_.load(std::memory_order_relaxed)) {
                if (looks < relax_spins) {
                    ++looks;
                    cpu_relax();
                } else {
                    cpu_yield();
                }
            }
        }
    }
    /// Releases the lock.
    void unlock() noexcept { flag_.store(false, std::memory_order_release); }

private:
    std::atomic<bool> flag_{false};
};

/// The sleep/wake handshake of two sides (threads or processes) over shared memory,
/// written once. The sleeper announces itself, looks again for what it waits for, then
/// sleeps on `word`; the waker publishes, then takes the announcement and wakes it. Both
/// the announcement and the publication are sequentially consistent, so either the sleeper
/// sees the data or the waker sees the announcement (a Dekker pair): no wake-up is lost,
/// and a waker whose peer is awake pays one load, no system call.
struct doorbell {
    /// The sleeper's announcement (1: about to sleep or asleep).
    std::atomic<std::uint32_t> sleeping{0};
    /// The futex word the sleeper waits on; each wake-up bumps it.
    std::atomic<std::uint32_t> word{0};

    /// Sleeper: returns once `ready()` is true, spinning for `spin_budget` first.
    /// `before_sleep()` runs after each announcement, right before sleeping (e.g. to make
    /// sure the peer is awake to make progress). `shared`: the word is in a shared mapping.
    template <class Ready, class BeforeSleep>
    void wait(Ready&& ready, BeforeSleep&& before_sleep, bool shared) {
        wait(ready, ready, before_sleep, shared);
    }

    /// As `wait(ready, ...)`, spinning on `look()`: a cheaper check that may miss for a
    /// while what `ready()` sees but never reports what is not there (e.g. one that keeps
    /// off a line the waker writes). `ready()` is the check after the announcement.
    template <class Look, class Ready, class BeforeSleep>
    void wait(Look&& look, Ready&& ready, BeforeSleep&& before_sleep, bool shared) {
        if (spin_until(look) || ready()) return;
        for (;;) {
            const std::uint32_t seen = word.load(std::memory_order_acquire);
            sleeping.store(1, std::memory_order_seq_cst);
            if (ready()) {
                sleeping.store(0, std::memory_order_relaxed);
                return;
            }
            before_sleep();
            futex_wait(&word, seen, nullptr, shared);
        }
    }

    /// Waker, after publishing: true if the sleeper announced itself. The announcement is
    /// taken, so of several wakers exactly one sees true.
    bool take_sleeper() noexcept {
        return sleeping.load(std::memory_order_seq_cst) != 0 &&
               sleeping.exchange(0, std::memory_order_acq_rel) != 0;
    }

    /// Waker, after publishing: wakes the sleeper if it announced itself.
    void ring(bool shared) noexcept {
        if (!take_sleeper()) return;
        word.fetch_add(1, std::memory_order_release);
        futex_wake(&word, 1, shared);
    }
};

}  // namespace procpool::detail
