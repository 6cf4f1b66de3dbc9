// progress_reporter: the progress line of run_in_* (a redrawn bar on a terminal, a start
// and a summary line in logs), reusable for any loop over tasks.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <iosfwd>
#include <mutex>
#include <optional>
#include <string>

namespace procpool {

/// Where and how a `progress_reporter` writes. Every field has a working default.
struct progress_options {
    /// Names the run in every line, e.g. "run_in_processes".
    std::string label = "tasks";
    /// The stream to write to; null means `std::cerr`.
    std::ostream* out = nullptr;
    /// Draw a redrawn bar (true) or write plain log lines (false). Unset: true exactly when
    /// `out` is `std::cerr` (or null) and stderr is a terminal.
    std::optional<bool> terminal{};
    /// Width of the terminal in columns; the bar line is cut to fit. 0: ask the terminal
    /// (stderr), falling back to 80.
    int columns = 0;
    /// Least time between two redraws of the bar: at most 10 redraws a second by default.
    std::chrono::milliseconds interval{100};
    /// Time source, replaceable for tests; unset means `std::chrono::steady_clock::now`.
    std::function<std::chrono::steady_clock::time_point()> clock{};
};

/// Reports the progress of a known number of tasks, counting tasks (never chunks).
///
/// On a terminal it redraws one line, at most once per `interval`:
/// `run_in_threads [#############.............]  9/20  1 failed  4.5/s  elapsed 0:02  ETA 0:02`
/// (the bar takes the width the text leaves, the whole line fits the terminal)
/// and ends it with a newline in `finish()`. Otherwise (a log file, a pipe) it writes no
/// control characters, just two lines:
/// `procpool: starting run_in_threads: workers = 4, tasks = 20` and
/// `procpool: run_in_threads done: 20 tasks, 19 ok, 1 failed, wall time 4.41 s`.
///
/// All members may be called from any thread.
class progress_reporter {
public:
    /// A reporter for `total` tasks run by `workers` workers. Writes nothing yet.
    progress_reporter(std::size_t total, int workers, progress_options opts = {});
    /// Calls `finish()`.
    ~progress_reporter();
    progress_reporter(const progress_reporter&) = delete;
    progress_reporter& operator=(const progress_reporter&) = delete;

    /// Starts the clock and writes the start line (logs) or the empty bar (terminal).
    void start();
    /// Counts one task as finished (`ok` false: failed) and redraws if it is time to.
    void task_finished(bool ok);
    /// Counts `n` tasks (or items) as finished, `failed` of them failed, without drawing:
    /// for counting from threads that must not block on the terminal. `refresh()` draws.
    void tasks_finished(std::size_t n, std::size_t failed = 0);
    /// Counts one retry (a task started again); shown when non-zero.
    void task_retried();
    /// Redraws the bar if `interval` has passed since the last draw (terminal only), so
    /// elapsed time and ETA move while no task finishes.
    void refresh();
    /// Writes the final bar and a newline (terminal) or the summary line (logs). Only the
    /// first call writes; later calls, and the destructor, do nothing.
    void finish();

    /// When `refresh()` would next draw, for callers that sleep until then.
    std::chrono::steady_clock::time_point next_refresh() const;
    /// True if this reporter draws a bar, false if it writes log lines.
    bool terminal() const noexcept { return terminal_; }

    /// The bar line as it would be drawn now, without control characters.
    std::string bar_line() const;
    /// The log line written by `start()`.
    std::string start_line() const;
    /// The log line written by `finish()`.
    std::string summary_line() const;

private:
    std::chrono::steady_clock::time_point now() const;
    std::string bar_line_locked(std::chrono::steady_clock::time_point t) const;
    std::string start_line_locked() const;
    std::string summary_line_locked(std::chrono::steady_clock::time_point t) const;
    void draw_locked(std::chrono::steady_clock::time_point t);
    void write(const std::string& s);

    mutable std::mutex m_;
    progress_options opts_;
    std::ostream* out_;
    bool terminal_;
    int columns_;
    std::size_t total_;
    int workers_;
    std::size_t done_ = 0;
    std::size_t failed_ = 0;
    std::size_t retried_ = 0;
    bool started_ = false;
    bool finished_ = false;
    std::chrono::steady_clock::time_point start_{};
    std::chrono::steady_clock::time_point last_draw_{};
};

}  // namespace procpool
