// Option checks shared by every executor, so that each bad value gets one message.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "procpool/error.hpp"

namespace procpool::detail {

/// Throws invalid_argument unless `timeout` is unset or positive. `what` names the option
/// as the user wrote it, e.g. "task_options::timeout".
inline void check_timeout(const std::optional<std::chrono::milliseconds>& timeout,
                          std::string_view what) {
    if (!timeout) return;
    // Deadlines are kept in nanoseconds: a longer timeout would overflow into a short
    // (or negative) one.
    constexpr std::int64_t max_ms = INT64_MAX / 1'000'000 / 2;
    if (timeout->count() > 0 && timeout->count() <= max_ms) return;
    if (timeout->count() > 0) {
        throw invalid_argument(std::string(what) + " of " + std::to_string(timeout->count()) +
                               " ms is longer than procpool can count (about 146 years); "
                               "leave it unset for no timeout");
    }
    throw invalid_argument(std::string(what) + " must be positive (got " +
                           std::to_string(timeout->count()) +
                           " ms); leave it unset for no timeout");
}

/// The most workers any pool accepts: far past what one machine runs usefully, low enough
/// that a typo (a count of items passed as the worker count) fails at once.
inline constexpr int max_pool_workers = 4096;

/// Throws invalid_argument unless 1 <= `workers` <= max_pool_workers. `pool` names the
/// executor ("process_pool"), `unit` what a worker is ("processes").
inline void check_workers(int workers, std::string_view pool, std::string_view unit) {
    if (workers <= 0) {
        throw invalid_argument(std::string(pool) + " needs at least one worker (got workers = " +
                               std::to_string(workers) +
                               "); leave it unset for one per hardware thread");
    }
    if (workers > max_pool_workers) {
        throw invalid_argument(std::string(pool) + ": workers = " + std::to_string(workers) +
                               " is more " + std::string(unit) +
                               " than makes sense; use at most " +
                               std::to_string(max_pool_workers));
    }
}

}  // namespace procpool::detail
