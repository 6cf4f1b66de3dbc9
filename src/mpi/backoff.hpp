// How an MPI progress loop waits for work. MPI offers nothing to sleep on (progress is
// made inside MPI calls), so the loop polls: right after activity it spins, yielding the
// core (a reply usually follows a request within a round trip), then sleeps in growing
// steps so an idle rank costs almost no CPU.
#pragma once

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <cstdint>

namespace procpool::mpi_impl {

class backoff {
  public:
    /// There was work: spin again on the next idle round.
    void reset() noexcept {
        idle_rounds_ = 0;
        sleep_ns_ = min_sleep_ns;
    }

    /// Spins one round (yielding the core) if still in the spinning phase; false once
    /// it is over and the caller should sleep its own way.
    bool spin_once() noexcept {
        if (idle_rounds_ >= spin_rounds) return false;
        ++idle_rounds_;
        sched_yield();
        return true;
    }

    /// Nothing to do this round. `expecting` says a reply or a send completion is due (a
    /// task runs somewhere): sleeps then grow only to `max_busy_sleep_ns`, which bounds the
    /// latency added to a long task's result.
    void pause(bool expecting) noexcept {
        if (++idle_rounds_ <= spin_rounds) {
            sched_yield();
            return;
        }
        const std::int64_t cap = expecting ? max_busy_sleep_ns : max_idle_sleep_ns;
        timespec ts{0, static_cast<long>(sleep_ns_)};
        nanosleep(&ts, nullptr);
        sleep_ns_ = std::min<std::int64_t>(sleep_ns_ * 2, cap);
    }

  private:
    static constexpr int spin_rounds = 2000;                 // ~ a few hundred µs of yields
    static constexpr std::int64_t min_sleep_ns = 20'000;     // 20 µs
    static constexpr std::int64_t max_busy_sleep_ns = 200'000;   // 0.2 ms
    static constexpr std::int64_t max_idle_sleep_ns = 2'000'000;  // 2 ms
    int idle_rounds_ = 0;
    std::int64_t sleep_ns_ = min_sleep_ns;
};

}  // namespace procpool::mpi_impl
