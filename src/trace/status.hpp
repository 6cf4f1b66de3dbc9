// Internal: an error's task status together with its message, for traces and stats.
#pragma once

#include <exception>
#include <string>

#include "procpool/trace.hpp"

namespace procpool::trace {

struct status_and_message {
    task_status status = task_status::ok;
    std::string message;
};

/// Classifies `e` (null: ok) by rethrowing it. Throws only std::bad_alloc.
status_and_message classify(const std::exception_ptr& e);

}  // namespace procpool::trace
