// Internal: what every pool keeps about its tasks, behind `stats()` and the opt-in trace.
//
// Counters and histograms live in one slot per worker (plus one for tasks that never ran),
// each on its own cache lines, so worker threads that record in parallel do not share a
// line; stats() sums the slots. Updates are relaxed atomic adds: a slot may be written by
// more than one thread (a process pool's supervisor and the threads that help it).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "procpool/trace.hpp"

namespace procpool::trace {

/// steady_clock now, in nanoseconds.
inline std::int64_t clock_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

/// A log-linear histogram of durations in nanoseconds: 16 sub-buckets per power of two,
/// so a reported percentile (the bucket's midpoint) is within about 3 % of the truth.
class histogram {
public:
    static constexpr int sub_bits = 4;
    static constexpr int sub = 1 << sub_bits;
    static constexpr int buckets = sub + (64 - sub_bits) * sub;

    void add(std::int64_t ns) noexcept;
    /// Adds this histogram's counts into `into` (plain counts, for summarising).
    void sum_into(std::array<std::uint64_t, buckets>& into, std::int64_t& max) const noexcept;
    /// Percentiles of the summed counts.
    static duration_summary summarize(const std::array<std::uint64_t, buckets>& counts,
                                      std::int64_t max) noexcept;

private:
    static int index_of(std::uint64_t v) noexcept;
    static std::uint64_t midpoint(int index) noexcept;
    std::array<std::atomic<std::uint64_t>, buckets> counts_{};
    std::atomic<std::int64_t> max_{0};
};

/// One task as a pool reports it when it resolves.
struct task_done {
    int worker = -1;  ///< worker index; -1: it never ran
    int pid = 0;
    std::uint64_t id = 0;
    std::uint32_t attempt = 1;
    std::int64_t submit_ns = 0;
    std::int64_t start_ns = 0;  ///< 0: it never started
    std::int64_t end_ns = 0;
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
};

/// The statistics (always) and the trace (when a recorder is given) of one pool.
class pool_monitor {
public:
    pool_monitor(std::string name, int workers, std::shared_ptr<trace_recorder> recorder);
    pool_monitor(const pool_monitor&) = delete;
    pool_monitor& operator=(const pool_monitor&) = delete;

    /// Counts one accepted task and returns its number in traces (1, 2, ...).
    std::uint64_t submitted() noexcept {
        return next_id_.fetch_add(1, std::memory_order_relaxed) + 1;
    }
    /// Counts a task handed back at submit (it was counted but never accepted).
    void unsubmitted() noexcept { rejected_.fetch_add(1, std::memory_order_relaxed); }
    /// Records a resolved task; `error` null means it produced a value.
    void finished(const task_done& t, const std::exception_ptr& error) noexcept;
    /// A worker started (`replacement`: it replaces one that exited) or exited.
    void worker_started(int worker, int pid, bool replacement) noexcept;
    void worker_exited(int worker, int pid, const std::string& reason) noexcept;

    /// True when a trace recorder is attached.
    bool tracing() const noexcept { return recorder_ != nullptr; }
    pool_stats stats() const;

private:
    void mark(int worker, int pid, worker_trace::kind what, const std::string& reason) noexcept;

    struct alignas(64) slot {
        std::atomic<std::uint64_t> by_status[6]{};
        std::atomic<std::int64_t> busy_ns{0};
        histogram queue_wait;
        histogram run_time;
    };

    std::shared_ptr<trace_recorder> recorder_;
    std::uint32_t pool_index_ = 0;
    std::int64_t started_ns_;
    std::vector<std::unique_ptr<slot>> slots_;  // one per worker, the last for tasks that never ran
    alignas(64) std::atomic<std::uint64_t> next_id_{0};
    std::atomic<std::uint64_t> rejected_{0};
    std::atomic<std::uint64_t> restarts_{0};
};

/// The trace label the next submission on this thread takes (see detail::set_trace_label);
/// pools take it once.
struct submission_label {
    bool set = false;
    std::uint64_t id = 0;
    std::uint32_t attempt = 1;
};
/// Returns and clears this thread's label.
submission_label take_label() noexcept;

}  // namespace procpool::trace
