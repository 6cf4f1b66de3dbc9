// Error types: every future resolves with a value or with one of these.
#pragma once

#include <stdexcept>
#include <string>

namespace procpool {

/// Base of every error procpool raises. Catch this to handle all of them.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A caller passed an argument procpool cannot use (zero workers, a bad option...).
class invalid_argument : public error {
public:
    using error::error;
};

/// A task threw in another process. The original exception cannot cross a process
/// boundary, so this carries its dynamic type name and its `what()` text.
class remote_exception : public error {
public:
    /// `type_name` is the demangled dynamic type of the thrown object.
    remote_exception(std::string type_name, std::string message)
        : error(type_name + ": " + message),
          type_name_(std::move(type_name)),
          message_(std::move(message)) {}
    /// Demangled type name of the exception the task threw (e.g. "std::out_of_range").
    const std::string& type_name() const noexcept { return type_name_; }
    /// The `what()` text of the exception the task threw.
    const std::string& message() const noexcept { return message_; }

private:
    std::string type_name_;
    std::string message_;
};

/// The worker process running the task ended before it returned a result.
/// Exactly one of `signal()` and `exit_code()` is meaningful (`signal() == 0` means exit).
class worker_died : public error {
public:
    /// `signal` is the terminating signal (0 if the worker exited) and `exit_code` its status.
    worker_died(int signal, int exit_code, const std::string& detail);
    /// Signal that killed the worker, or 0 if it exited.
    int signal() const noexcept { return signal_; }
    /// Exit status if the worker exited (`signal() == 0`), otherwise -1.
    int exit_code() const noexcept { return exit_code_; }

private:
    int signal_;
    int exit_code_;
};

/// The task ran past its deadline; its worker was killed and replaced.
class task_timeout : public error {
public:
    using error::error;
};

/// The task was cancelled (by `future::cancel`, `shutdown({.cancel_pending = true})`
/// or a `fail_fast` run) and will never produce a value.
class task_cancelled : public error {
public:
    using error::error;
};

/// Work was submitted to (or left queued in) a pool that has shut down.
class pool_shut_down : public error {
public:
    using error::error;
};

/// A task's arguments or result could not be serialized or deserialized.
class serialization_error : public error {
public:
    using error::error;
};

/// The worker running the task sent a malformed message (a frame, count, size or
/// descriptor that breaks the protocol: a task that scribbled on procpool's shared memory
/// or control socket). The worker was killed and replaced; other tasks are unaffected.
class protocol_error : public serialization_error {
public:
    using serialization_error::serialization_error;
};

/// A wait with a deadline (`as_completed`, `wait`) ran out of time. The futures
/// themselves are unaffected and may still complete.
class timeout_error : public error {
public:
    using error::error;
};

}  // namespace procpool
