// The ring's stamp keys (see ring.hpp).
#include "ipc/ring.hpp"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace procpool::ipc {

namespace {

// splitmix64's finalizer: spreads every input bit over the output.
std::uint64_t mix(std::uint64_t z) noexcept {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

std::uint64_t random_stamp_key() noexcept {
    std::uint64_t key = 0;
    if (getrandom(&key, sizeof key, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof key)) return key;
    // No entropy to give yet (early boot) or no getrandom: what differs between rings and
    // runs, mixed. It need not be secret from the worker (which can write its ring
    // anyway), only unlikely to be matched by data the user sends.
    static std::atomic<std::uint64_t> count{0};
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    key =
        mix(static_cast<std::uint64_t>(ts.tv_nsec) ^ (static_cast<std::uint64_t>(ts.tv_sec) << 30));
    key = mix(key ^ static_cast<std::uint64_t>(getpid()) ^
              (count.fetch_add(1, std::memory_order_relaxed) << 40));
    return mix(key ^ reinterpret_cast<std::uintptr_t>(&key));
}

}  // namespace procpool::ipc
