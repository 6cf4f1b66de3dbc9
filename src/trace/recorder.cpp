// trace_recorder's storage and the classification of errors into task statuses. The
// exports (Chrome JSON, SVG) live in export.cpp.
#include <exception>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "procpool/error.hpp"
#include "procpool/trace.hpp"
#include "trace/status.hpp"

namespace procpool {

const char* to_string(task_status s) noexcept {
    switch (s) {
        case task_status::ok: return "ok";
        case task_status::exception: return "exception";
        case task_status::worker_died: return "worker_died";
        case task_status::timeout: return "timeout";
        case task_status::cancelled: return "cancelled";
        case task_status::failed: return "failed";
    }
    return "failed";
}

namespace trace {

status_and_message classify(const std::exception_ptr& e) {
    if (!e) return {task_status::ok, {}};
    try {
        std::rethrow_exception(e);
    } catch (const worker_died& x) {
        return {task_status::worker_died, x.what()};
    } catch (const task_timeout& x) {
        return {task_status::timeout, x.what()};
    } catch (const task_cancelled& x) {
        return {task_status::cancelled, x.what()};
    } catch (const remote_exception& x) {
        return {task_status::exception, x.what()};
    } catch (const error& x) {
        return {task_status::failed, x.what()};
    } catch (const std::exception& x) {
        return {task_status::exception, x.what()};
    } catch (...) {
        return {task_status::exception, "an exception not derived from std::exception"};
    }
}

}  // namespace trace

task_status status_of(const std::exception_ptr& e) noexcept {
    try {
        return trace::classify(e).status;
    } catch (...) {  // out of memory copying the message
        return task_status::failed;
    }
}

std::uint32_t trace_recorder::add_pool(pool_trace_info info) {
    std::lock_guard lock(m_);
    pools_.push_back(std::move(info));
    return static_cast<std::uint32_t>(pools_.size() - 1);
}

void trace_recorder::record(task_trace t) {
    std::lock_guard lock(m_);
    tasks_.push_back(std::move(t));
}

void trace_recorder::record(worker_trace w) {
    std::lock_guard lock(m_);
    workers_.push_back(std::move(w));
}

std::vector<task_trace> trace_recorder::tasks() const {
    std::lock_guard lock(m_);
    return tasks_;
}

std::vector<worker_trace> trace_recorder::worker_events() const {
    std::lock_guard lock(m_);
    return workers_;
}

std::vector<pool_trace_info> trace_recorder::pools() const {
    std::lock_guard lock(m_);
    return pools_;
}

std::size_t trace_recorder::size() const {
    std::lock_guard lock(m_);
    return tasks_.size();
}

void trace_recorder::clear() {
    std::lock_guard lock(m_);
    tasks_.clear();
    workers_.clear();
}

}  // namespace procpool
