#include "procpool/run.hpp"

#include <algorithm>
#include <string>

namespace procpool::detail {

bool is_retryable(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const worker_died&) {
        return true;
    } catch (const task_timeout&) {
        return true;
    } catch (...) {
    }
    return false;
}

bool is_cancellation(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const task_cancelled&) {
        return true;
    } catch (...) {
    }
    return false;
}

void check_capture_output(bool requested, bool captures, const char* label) {
    if (!requested || captures) return;
    throw invalid_argument(
        std::string(label) +
        ": run_options::capture_output is a process-pool feature (the threads of one process "
        "share its stdout and stderr, so their output cannot be told apart); use "
        "run_in_processes, or run_in on a process_pool created with "
        "process_pool_options::capture_output");
}

int pool_size_for(int requested, std::size_t n) noexcept {
    const int wanted = requested > 0 ? requested : default_worker_count();
    return static_cast<int>(std::clamp<std::size_t>(n, 1, static_cast<std::size_t>(wanted)));
}

}  // namespace procpool::detail
