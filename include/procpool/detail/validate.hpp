// Option checks shared by every executor, so that each bad value gets one message.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "procpool/error.hpp"

namespace procpool::detail {

/// Throws invalid_argument unless `timeout` is unset or positive. `what` names the option
/// as the user wrote it, e.g. "task_options::timeout".
inline void check_timeout(const std::optional<std::chrono::milliseconds>& timeout,
                          std::string_view what) {
    if (!timeout || timeout->count() > 0) return;
    throw invalid_argument(std::string(what) + " must be positive (got " +
                           std::to_string(timeout->count()) +
                           " ms); leave it unset for no timeout");
}

}  // namespace procpool::detail
