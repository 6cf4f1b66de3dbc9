// outcome<T> and task_error: the per-task result of run_in, run_in_threads and
// run_in_processes, which never throw for a task's failure.
#pragma once

#include <cstddef>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "procpool/error.hpp"
#include "procpool/task_output.hpp"

namespace procpool {

/// Why a task of a `run_in_*` call has no value, one kind per procpool error type.
enum class failure_kind {
    exception,      ///< The task threw: its own exception type (threads) or `remote_exception`.
    worker_died,    ///< Its worker process died (`worker_died`: a signal or an exit).
    timeout,        ///< It ran past `run_options::timeout` (`task_timeout`).
    cancelled,      ///< It was cancelled, e.g. by `fail_fast` (`task_cancelled`).
    shut_down,      ///< Its pool shut down before it ran (`pool_shut_down`).
    serialization,  ///< Its arguments or result could not cross a process boundary.
    other,          ///< Any other `procpool::error` (e.g. `invalid_argument` from submit).
};

/// The failure kind's name as used in messages and JSON: "exception", "worker_died", ...
const char* to_string(failure_kind k) noexcept;

/// Why one task failed: the original error (`cause()`), its kind, and a message that
/// names the task, e.g. `task 3 failed: worker died (SIGSEGV)`.
///
/// `what()` is meant for people; code should branch on `kind()` or inspect the original
/// error with `cause_as<E>()` / `rethrow_cause()`. A task that threw in this process
/// keeps its own exception type (`cause_as<std::out_of_range>()`); a task that threw in
/// a worker process arrives as `remote_exception`.
class task_error : public error {
public:
    /// `index` is the task's position in the input, `cause` what it failed with (not
    /// null), `attempts` how many times it was started (more than 1 after retries).
    task_error(std::size_t index, std::exception_ptr cause, int attempts = 1);
    /// A failure rebuilt from its parts, as a run's journal stored it (see
    /// `run_options::journal`): `kind()` is `kind` and `cause_message()` is `message`.
    /// `cause()` is a procpool error of the kind's type carrying `message`
    /// (`remote_exception` for `failure_kind::exception`, as from a worker process).
    task_error(std::size_t index, failure_kind kind, std::string message, int attempts);

    /// The task's position in the input range.
    std::size_t index() const noexcept { return index_; }
    /// What kind of failure this was.
    failure_kind kind() const noexcept { return kind_; }
    /// How many times the task was started (1 + the retries it used).
    int attempts() const noexcept { return attempts_; }
    /// The original error, as the executor reported it.
    const std::exception_ptr& cause() const noexcept { return cause_; }
    /// The original error's text without the task prefix, e.g. `worker died (SIGSEGV)`;
    /// for non-procpool exceptions prefixed with their type (`std::out_of_range: ...`).
    const std::string& cause_message() const noexcept { return cause_message_; }

    /// Rethrows the original error (its own type), e.g. to let it propagate after all.
    [[noreturn]] void rethrow_cause() const { std::rethrow_exception(cause_); }

    /// The original error if it is (or derives from) `E`, else null. The pointer lives as
    /// long as this task_error (or a copy of it).
    template <class E>
    const E* cause_as() const noexcept {
        try {
            std::rethrow_exception(cause_);
        } catch (const E& e) {
            return &e;
        } catch (...) {
        }
        return nullptr;
    }

private:
    struct described {
        failure_kind kind;
        std::string message;
    };
    static described describe(const std::exception_ptr& cause);
    static std::exception_ptr rebuild(failure_kind kind, const std::string& message);
    task_error(std::size_t index, std::exception_ptr cause, int attempts, described d);

    std::size_t index_;
    std::exception_ptr cause_;
    int attempts_;
    failure_kind kind_;
    std::string cause_message_;
};

template <class T>
class outcome;

namespace detail {
/// Lets run_in_* attach a task's captured output to its outcome.
struct outcome_access {
    /// Makes `out` the output `o` reports.
    template <class T>
    static void set_output(outcome<T>& o, std::shared_ptr<const task_output> out) noexcept {
        o.output_ = std::move(out);
    }
};
}  // namespace detail

/// The result of one task of a `run_in_*` call: its value, or the `task_error` that
/// explains why there is none. Like `std::expected<T, task_error>` plus the task's index.
///
/// ```cpp
/// for (auto& o : procpool::run_in_processes(heavy_calc, sizes))
///     if (o) use(*o); else std::cerr << o.error().what() << '\n';
/// ```
template <class T>
class outcome {
    using stored = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

public:
    /// The type of a successful task's value (`void` for tasks that return nothing).
    using value_type = T;

    /// A successful outcome of task `index`.
    template <class... A>
    explicit outcome(std::size_t index, std::in_place_t, A&&... value)
        : index_(index), data_(std::in_place_index<0>, std::forward<A>(value)...) {}
    /// A failed outcome.
    explicit outcome(task_error e)
        : index_(e.index()), data_(std::in_place_index<1>, std::move(e)) {}

    /// True if the task produced a value.
    bool has_value() const noexcept { return data_.index() == 0; }
    /// Same as `has_value()`: `if (o) ...`.
    explicit operator bool() const noexcept { return has_value(); }

    /// The task's position in the input range.
    std::size_t index() const noexcept { return index_; }

    /// The value. Throws the `task_error` (naming the task) if the task failed.
    template <class U = T>
        requires(!std::is_void_v<U>)
    U& value() & {
        check();
        return std::get<0>(data_);
    }
    /// The value. Throws the `task_error` (naming the task) if the task failed.
    template <class U = T>
        requires(!std::is_void_v<U>)
    const U& value() const& {
        check();
        return std::get<0>(data_);
    }
    /// The value, moved out. Throws the `task_error` (naming the task) if the task failed.
    template <class U = T>
        requires(!std::is_void_v<U>)
    U&& value() && {
        check();
        return std::get<0>(std::move(data_));
    }
    /// For `outcome<void>`: returns if the task succeeded, else throws its `task_error`.
    void value() const
        requires std::is_void_v<T>
    {
        check();
    }

    /// The value, or `fallback` if the task failed.
    template <class U>
        requires(!std::is_void_v<T>)
    T value_or(U&& fallback) const& {
        return has_value() ? std::get<0>(data_) : static_cast<T>(std::forward<U>(fallback));
    }

    /// Unchecked access to the value (`has_value()` must be true).
    template <class U = T>
        requires(!std::is_void_v<U>)
    const U& operator*() const& noexcept {
        return *std::get_if<0>(&data_);
    }
    /// Unchecked member access to the value (`has_value()` must be true).
    template <class U = T>
        requires(!std::is_void_v<U>)
    const U* operator->() const noexcept {
        return std::get_if<0>(&data_);
    }

    /// What the task wrote to stdout and stderr (its last attempt's, after retries), when
    /// it ran on a process pool with `capture_output` (see `task_output`); null otherwise,
    /// and for a task that never ran. Lives as long as this outcome or a copy of it.
    const task_output* output() const noexcept { return output_.get(); }

    /// Why the task failed. Throws `std::logic_error` if it succeeded.
    const task_error& error() const {
        if (has_value()) {
            throw std::logic_error("outcome::error(): task " + std::to_string(index_) +
                                   " succeeded; check has_value() first");
        }
        return std::get<1>(data_);
    }

private:
    friend struct detail::outcome_access;
    void check() const {
        if (!has_value()) throw std::get<1>(data_);
    }

    std::size_t index_;
    std::variant<stored, task_error> data_;
    std::shared_ptr<const task_output> output_;
};

}  // namespace procpool
