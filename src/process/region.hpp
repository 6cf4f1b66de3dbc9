// The memory a pool and one of its workers share: the two rings and the words used to
// watch and steer tasks (start, cancel, skip, start-up phase, wake-ups).
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>

#include "ipc/ring.hpp"
#include "procpool/detail/sync.hpp"

namespace procpool::process {

/// Start-up steps a worker records in `worker_region::phase`.
/// (The last two are remote::serve_phase's values, which serve reports through the
/// ring transport.)
enum worker_phase : std::uint32_t {
    phase_mapped = 1,       ///< its region is mapped; configuring the process
    phase_initializer = 2,  ///< running the pool's initializer
    phase_serving = 3,      ///< ready: reading requests
};

/// Where threads of the parent waiting for a worker's tasks sleep (help_wait). After a
/// completion, the worker wakes them instead of the supervisor: one hand-off instead of
/// two (worker, supervisor, waiting thread); they take the completion themselves.
struct waiter_bell {
    /// Threads announced (each takes itself back after its sleep). While it is not zero
    /// the worker leaves its completions to them and does not wake the supervisor.
    std::atomic<std::uint32_t> sleepers{0};
    /// Set by each announcement, taken by the completion that rings: one wake-up for
    /// however many completions follow before the woken threads take themselves back.
    std::atomic<std::uint32_t> armed{0};
    /// The futex word they sleep on; each ring bumps it.
    std::atomic<std::uint32_t> word{0};

    /// Worker, after publishing a completion: true if waiting threads take it (so the
    /// supervisor need not be woken); wakes them if they announced since the last ring.
    bool ring() noexcept {
        if (sleepers.load(std::memory_order_seq_cst) == 0) return false;
        if (armed.load(std::memory_order_relaxed) != 0 &&
            armed.exchange(0, std::memory_order_acq_rel) != 0) {
            wake();
        }
        return true;
    }
    /// Wakes every thread asleep here.
    void wake() noexcept {
        word.fetch_add(1, std::memory_order_release);
        detail::futex_wake(&word, INT_MAX, true);
    }
};

/// Everything a parent and one worker share: two rings and the words used to run,
/// watch and steer tasks. Lives at the start of a memfd mapping; ring data follows.
struct worker_region {
    static constexpr std::uint64_t magic_value = 0x6c6f6f70636f7270ull;  // "procpool"
    std::uint64_t magic = magic_value;
    std::uint32_t ring_capacity = 0;
    std::uint32_t reserved = 0;
    ipc::ring_ctl requests;     ///< parent -> worker
    ipc::ring_ctl completions;  ///< worker -> parent
    /// How far the worker got in starting (see `worker_phase`); the parent reads it when a
    /// worker dies to tell a start-up failure from a task's.
    alignas(64) std::atomic<std::uint32_t> phase{0};
    /// The parent sleeps in epoll: after a completion the worker must write its wake-up
    /// pipe (`take_sleeper`; the parent's sleep is epoll, not this doorbell's futex word).
    alignas(64) detail::doorbell parent;
    /// Threads of the parent waiting for a task this worker has (help_wait) sleep here.
    alignas(64) waiter_bell waiters;
    /// Sequence number of the task the worker started last, and when (CLOCK_MONOTONIC ns).
    alignas(64) std::atomic<std::uint64_t> started_seq{0};
    std::atomic<std::int64_t> started_ns{0};
    /// Tasks with a sequence number below this are skipped (shutdown with cancel_pending).
    alignas(64) std::atomic<std::uint64_t> skip_below{0};
    /// Individually cancelled, not-yet-started tasks (future::cancel on a dispatched task).
    static constexpr std::uint32_t max_cancels = 32;
    std::atomic<std::uint32_t> ncancels{0};
    std::atomic<std::uint64_t> cancels[max_cancels]{};

    std::byte* request_data() noexcept {
        return reinterpret_cast<std::byte*>(this) + data_offset();
    }
    std::byte* completion_data() noexcept { return request_data() + ring_capacity; }
    static constexpr std::size_t data_offset() noexcept {
        return (sizeof(worker_region) + 4095) & ~std::size_t{4095};
    }
    static std::size_t mapping_size(std::uint32_t cap) noexcept {
        return data_offset() + 2 * static_cast<std::size_t>(cap);
    }
    bool is_skipped(std::uint64_t seq) const noexcept {
        if (seq < skip_below.load(std::memory_order_seq_cst)) return true;
        const std::uint32_t n = ncancels.load(std::memory_order_seq_cst);
        for (std::uint32_t i = 0; i < n && i < max_cancels; ++i) {
            if (cancels[i].load(std::memory_order_relaxed) == seq) return true;
        }
        return false;
    }
};

/// First use of a ring's pages. A page touched for the first time costs a trap (about
/// 10 us on a VM, where the trap is the expensive part) against well under 1 us per page
/// populated in one madvise(MADV_POPULATE_WRITE) call (docs/architecture.md, "First
/// use"). A writer calls `prefault_until` before writing below `end`, so the ring's first
/// pass maps its pages in batches of `prefault_chunk`. `done` counts the bytes of
/// [base, base + len) populated, which grow from the start as the ring is written in order. Where the kernel lacks
/// MADV_POPULATE_WRITE (before Linux 5.14) they give up and pages fault in one by one.
inline constexpr std::size_t prefault_chunk = 64 * 1024;

inline void prefault_until(std::byte* base, std::size_t len, std::size_t& done,
                           std::size_t end) noexcept {
    if (end <= done) return;
    const std::size_t to = std::min(len, (end + prefault_chunk - 1) / prefault_chunk * prefault_chunk);
#ifdef MADV_POPULATE_WRITE
    if (madvise(base + done, to - done, MADV_POPULATE_WRITE) != 0) {
        done = len;  // unsupported, or no memory now: the pages fault in on first use
        return;
    }
    done = to;
#else
    (void)base;
    done = len;
#endif
}

}  // namespace procpool::process
