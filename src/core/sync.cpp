#include "procpool/detail/sync.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace procpool::detail {

namespace {
long futex(const std::atomic<std::uint32_t>* word, int op, std::uint32_t val,
           const timespec* ts, std::uint32_t val3) {
    // The kernel reads the word itself; std::atomic<uint32_t> is layout-compatible with it.
    return syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(word), op, val, ts, nullptr,
                   val3);
}
}  // namespace

bool futex_wait(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                const std::chrono::steady_clock::time_point* deadline, bool shared) noexcept {
    int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    timespec ts{};
    const timespec* tsp = nullptr;
    if (deadline != nullptr) {
        // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, which is what
        // std::chrono::steady_clock reads on Linux.
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      deadline->time_since_epoch())
                      .count();
        if (ns < 0) ns = 0;
        ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
        tsp = &ts;
    }
    long rc = futex(word, op, expected, tsp, FUTEX_BITSET_MATCH_ANY);
    return !(rc == -1 && errno == ETIMEDOUT);
}

void futex_wake(const std::atomic<std::uint32_t>* word, int count, bool shared) noexcept {
    int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    futex(word, op, static_cast<std::uint32_t>(count), nullptr, 0);
}

void cpu_yield() noexcept { sched_yield(); }

}  // namespace procpool::detail
