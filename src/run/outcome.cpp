#include "procpool/outcome.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <typeinfo>

namespace procpool {

namespace {

std::string demangle(const std::type_info* t) {
    if (t == nullptr) return "unknown exception";
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name(
        abi::__cxa_demangle(t->name(), nullptr, nullptr, &status), std::free);
    return status == 0 && name ? std::string(name.get()) : std::string(t->name());
}

// procpool's own errors already read well ("worker died (SIGSEGV)"); anything else a task
// threw gets its type in front, the format remote_exception uses for the process pools.
}  // namespace

task_error::described task_error::describe(const std::exception_ptr& e) {
    if (!e) return {failure_kind::other, "no error was recorded"};
    try {
        std::rethrow_exception(e);
    } catch (const remote_exception& x) {
        return {failure_kind::exception, x.what()};
    } catch (const worker_died& x) {
        return {failure_kind::worker_died, x.what()};
    } catch (const task_timeout& x) {
        return {failure_kind::timeout, x.what()};
    } catch (const task_cancelled& x) {
        return {failure_kind::cancelled, x.what()};
    } catch (const pool_shut_down& x) {
        return {failure_kind::shut_down, x.what()};
    } catch (const serialization_error& x) {
        return {failure_kind::serialization, x.what()};
    } catch (const task_error& x) {
        // A task that itself ran a run_in_* and rethrew one of its outcomes' errors.
        return {failure_kind::exception, demangle(&typeid(x)) + ": " + x.what()};
    } catch (const error& x) {
        return {failure_kind::other, x.what()};
    } catch (const std::exception& x) {
        return {failure_kind::exception, demangle(&typeid(x)) + ": " + x.what()};
    } catch (...) {
        return {failure_kind::exception, demangle(abi::__cxa_current_exception_type())};
    }
}

namespace {

std::string headline(std::size_t index, failure_kind kind, int attempts, const std::string& cause) {
    std::string s = "task " + std::to_string(index);
    s += kind == failure_kind::cancelled ? " cancelled" : " failed";
    if (attempts > 1) s += " after " + std::to_string(attempts) + " attempts";
    return s + ": " + cause;
}

}  // namespace

const char* to_string(failure_kind k) noexcept {
    switch (k) {
        case failure_kind::exception:
            return "exception";
        case failure_kind::worker_died:
            return "worker_died";
        case failure_kind::timeout:
            return "timeout";
        case failure_kind::cancelled:
            return "cancelled";
        case failure_kind::shut_down:
            return "shut_down";
        case failure_kind::serialization:
            return "serialization";
        case failure_kind::other:
            break;
    }
    return "other";
}

task_error::task_error(std::size_t index, std::exception_ptr cause, int attempts)
    : task_error(index, cause, attempts, describe(cause)) {}

task_error::task_error(std::size_t index, std::exception_ptr cause, int attempts, described d)
    : error(headline(index, d.kind, attempts, d.message)),
      index_(index),
      cause_(std::move(cause)),
      attempts_(attempts),
      kind_(d.kind),
      cause_message_(std::move(d.message)) {}

}  // namespace procpool
