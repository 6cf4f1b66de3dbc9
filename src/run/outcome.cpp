#include "procpool/outcome.hpp"

#include <cxxabi.h>

#include <charconv>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
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

namespace {

/// The signal and exit code a `worker_died` message names ("worker died (SIGSEGV): ...",
/// "worker died (signal 40)", "worker died (exit code 3)") and the detail after them.
struct death {
    int signal = 0;
    int exit_code = -1;
    std::string detail;
};

std::optional<death> parse_death(const std::string& message) {
    const std::string prefix = "worker died (";
    if (message.rfind(prefix, 0) != 0) return std::nullopt;
    const std::size_t close = message.find(')', prefix.size());
    if (close == std::string::npos) return std::nullopt;
    const std::string what = message.substr(prefix.size(), close - prefix.size());
    death d;
    if (message.size() > close + 1) {
        if (message.compare(close + 1, 2, ": ") != 0) return std::nullopt;
        d.detail = message.substr(close + 3);
    }
    auto number = [](const std::string& s, int& out) {
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
        return ec == std::errc() && end == s.data() + s.size();
    };
    if (what.rfind("exit code ", 0) == 0) {
        if (!number(what.substr(10), d.exit_code)) return std::nullopt;
        return d;
    }
    if (what.rfind("signal ", 0) == 0) {
        if (!number(what.substr(7), d.signal) || d.signal <= 0) return std::nullopt;
        return d;
    }
    for (int sig = 1; sig < NSIG; ++sig) {
        const char* abbrev = sigabbrev_np(sig);
        if (abbrev != nullptr && what == std::string("SIG") + abbrev) {
            d.signal = sig;
            return d;
        }
    }
    return std::nullopt;
}

}  // namespace

std::exception_ptr task_error::rebuild(failure_kind kind, const std::string& message) {
    switch (kind) {
        case failure_kind::exception: {
            // describe() wrote "type: message" for everything a task threw.
            const std::size_t colon = message.find(": ");
            if (colon == std::string::npos) {
                return std::make_exception_ptr(remote_exception(message, ""));
            }
            return std::make_exception_ptr(
                remote_exception(message.substr(0, colon), message.substr(colon + 2)));
        }
        case failure_kind::worker_died:
            if (const auto d = parse_death(message)) {
                return std::make_exception_ptr(worker_died(d->signal, d->exit_code, d->detail));
            }
            return std::make_exception_ptr(worker_died(0, -1, message));
        case failure_kind::timeout:
            return std::make_exception_ptr(task_timeout(message));
        case failure_kind::cancelled:
            return std::make_exception_ptr(task_cancelled(message));
        case failure_kind::shut_down:
            return std::make_exception_ptr(pool_shut_down(message));
        case failure_kind::serialization:
            return std::make_exception_ptr(serialization_error(message));
        case failure_kind::other:
            break;
    }
    return std::make_exception_ptr(error(message));
}

task_error::task_error(std::size_t index, failure_kind kind, std::string message, int attempts)
    // A copy, not a move: the order in which the arguments are evaluated is unspecified.
    : task_error(index, rebuild(kind, message), attempts, described{kind, message}) {}

task_error::task_error(std::size_t index, std::exception_ptr cause, int attempts, described d)
    : error(headline(index, d.kind, attempts, d.message)),
      index_(index),
      cause_(std::move(cause)),
      attempts_(attempts),
      kind_(d.kind),
      cause_message_(std::move(d.message)) {}

}  // namespace procpool
