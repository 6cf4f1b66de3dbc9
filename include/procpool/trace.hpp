// Seeing the work: a per-task trace (exported as Chrome trace JSON or an SVG timeline)
// and the statistics every pool keeps.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace procpool {

/// How a task ended, as traces and statistics count it.
enum class task_status : std::uint8_t {
    ok,           ///< returned a value
    exception,    ///< threw (in a process pool: `remote_exception`)
    worker_died,  ///< its worker process died (signal, exit, lost channel)
    timeout,      ///< ran past its deadline (`task_timeout`)
    cancelled,    ///< cancelled, or dropped by a shutdown (`task_cancelled`)
    failed,       ///< any other error: serialization, pool shut down or broken, protocol
};

/// The status's name as used in exports: "ok", "exception", "worker_died", ...
const char* to_string(task_status s) noexcept;

/// The status a task that ended with error `e` gets (null: `ok`).
task_status status_of(const std::exception_ptr& e) noexcept;

/// One task as a trace records it. Times are `std::chrono::steady_clock` readings in
/// nanoseconds (CLOCK_MONOTONIC, the same clock in every process of one machine).
struct task_trace {
    /// The pool's number for the task (1, 2, ... in submission order), or the input index
    /// for `run_in_*`.
    std::uint64_t id = 0;
    /// The pool it ran in: an index into `trace_recorder::pools()`.
    std::uint32_t pool = 0;
    /// The worker (index within its pool) that ran it; -1 if it never started.
    int worker = -1;
    /// That worker's process id (a thread pool's workers share the parent's).
    int pid = 0;
    /// When it was submitted, started running (0: never started) and resolved.
    std::int64_t submit_ns = 0;
    std::int64_t start_ns = 0;
    std::int64_t end_ns = 0;
    /// How it ended.
    task_status status = task_status::ok;
    /// 1 for the first run; `run_in_*` counts retries as further attempts.
    std::uint32_t attempt = 1;
    /// Bytes of arguments sent and of result received (0 for thread pools).
    std::uint64_t bytes_in = 0;
    std::uint64_t bytes_out = 0;
    /// The error's message for a failed task, empty otherwise.
    std::string error;
};

/// A worker's life event, drawn as a mark on its lane.
struct worker_trace {
    enum class kind : std::uint8_t {
        started,  ///< a worker process (or thread) began serving
        exited,   ///< it ended: retired, replaced after a crash or kill, or shut down
    };
    std::uint32_t pool = 0;
    int worker = 0;
    int pid = 0;
    std::int64_t time_ns = 0;
    kind what = kind::started;
    /// Why it exited, e.g. "killed by SIGSEGV"; empty for a normal exit.
    std::string reason;
};

/// A pool as a trace names it.
struct pool_trace_info {
    std::string name;  ///< e.g. "process_pool", "run_in_processes"
    int workers = 0;   ///< its worker count (lanes)
    std::string host;  ///< the machine it ran on
};

/// Options of `trace_recorder::write_svg`.
struct svg_options {
    /// Width of the drawing in pixels (the time axis spans it, less the lane labels); at
    /// least 320 is used.
    int width = 1200;
    /// Height of one worker's lane in pixels; at least 8 is used.
    int lane_height = 18;
    /// Title drawn above the lanes; empty: none.
    std::string title{};
};

/// Collects the trace of every task of the pools it is given to (opt in with the pool's
/// `trace` option, or `run_options::trace`), and exports it. Thread-safe; one recorder may
/// serve several pools at once. Recording costs one short lock per task.
///
///     auto trace = std::make_shared<procpool::trace_recorder>();
///     procpool::process_pool pool({.workers = 4, .trace = trace});
///     ... submit, wait ...
///     trace->save_svg("timeline.svg");       // one lane per worker, one bar per task
///     trace->save_chrome_json("trace.json");  // open in https://ui.perfetto.dev
class trace_recorder {
public:
    trace_recorder() = default;
    trace_recorder(const trace_recorder&) = delete;
    trace_recorder& operator=(const trace_recorder&) = delete;

    /// Pools call this once when they start: returns the pool's index in `pools()`.
    std::uint32_t add_pool(pool_trace_info info);
    /// Records a finished task (pools call it as each task resolves).
    void record(task_trace t);
    /// Records a worker's start or exit.
    void record(worker_trace w);

    /// Copies of what was recorded so far, in the order it was recorded.
    std::vector<task_trace> tasks() const;
    std::vector<worker_trace> worker_events() const;
    std::vector<pool_trace_info> pools() const;
    /// The number of tasks recorded.
    std::size_t size() const;
    /// Forgets every task and worker event (the pools stay registered).
    void clear();

    /// Writes Chrome's trace event format (a JSON object with "traceEvents"): one complete
    /// event ("ph":"X") per task that started, on a track per worker, with its id, status,
    /// attempt, bytes and error in "args"; instant events for worker starts and exits.
    /// Opens in Perfetto (ui.perfetto.dev) and chrome://tracing.
    ///
    /// The events, so that their number is known in advance: a "process_name" metadata
    /// event ("M") per pool (pid = pool index + 1, named "<name> on <host>") and a
    /// "thread_name" one per lane (tid = worker index + 1, "worker N (pid P)" with the
    /// worker's latest pid; tid 0, "queue", for tasks without a worker); then, in recording
    /// order, per task either an "X" event (it started: start_ns != 0) or, if it never
    /// started (e.g. cancelled while queued), a thread instant ("i") at its end time on its
    /// pool's queue lane (tid 0); then an "i" event per worker event ("worker started",
    /// "worker exited[: reason]"). "ts" and "dur" are microseconds from the earliest
    /// timestamp in the trace (given as "origin_ns" in "otherData"); "args" holds id,
    /// status, attempt, bytes_in, bytes_out, error (if any) and queue_wait_us (time from
    /// submit to start, or to the end for a task that never started). Invalid UTF-8 in
    /// strings is replaced by U+FFFD. Same recorded input, same bytes.
    void write_chrome_json(std::ostream& out) const;
    /// Writes a self-contained SVG timeline: one lane per worker, one bar per task coloured
    /// by status (with a `<title>` tooltip: id, duration, error), worker exits marked, a
    /// time axis and a legend. Bars narrower than a pixel are merged into one, so thousands
    /// of tasks stay readable.
    ///
    /// Details: lanes are sorted by pool, then worker; tasks that never started are drawn
    /// at their end on their pool's "queue" lane. Consecutive bars under a pixel wide are
    /// merged into blocks at most 8 px wide, coloured by their worst status (worker_died,
    /// failed, timeout, exception, cancelled, ok) with a "N tasks, k failed (...)" tooltip;
    /// a task that did not end `ok` keeps its own bar (at least a pixel wide) on top of its
    /// block. Error texts are cut to 300 characters in tooltips; all text is XML-escaped,
    /// control characters are dropped and invalid UTF-8 replaced. The time axis starts at
    /// the same origin as `write_chrome_json`'s. An empty trace gives a small SVG saying
    /// "no tasks recorded". Same recorded input, same bytes.
    void write_svg(std::ostream& out, const svg_options& opts = {}) const;
    /// `write_chrome_json` / `write_svg` to a file; throws `procpool::error` naming the
    /// path if it cannot be written. The file is written under a temporary name next to
    /// `path` and renamed over it, so a reader sees the old file or the whole new one.
    void save_chrome_json(const std::string& path) const;
    void save_svg(const std::string& path, const svg_options& opts = {}) const;

private:
    mutable std::mutex m_;
    std::vector<pool_trace_info> pools_;
    std::vector<task_trace> tasks_;
    std::vector<worker_trace> workers_;
};

/// Percentiles of a duration, from a log-scale histogram (within about 3 %).
struct duration_summary {
    std::uint64_t count = 0;
    std::chrono::nanoseconds p50{0};
    std::chrono::nanoseconds p99{0};
    std::chrono::nanoseconds max{0};
};

/// What a pool has done so far: `pool.stats()`.
struct pool_stats {
    std::uint64_t submitted = 0;  ///< tasks accepted by submit (a map chunk counts as one)
    std::uint64_t completed = 0;  ///< resolved with a value
    std::uint64_t exceptions = 0;   ///< resolved with the task's own exception
    std::uint64_t worker_died = 0;  ///< resolved as worker_died
    std::uint64_t timeouts = 0;     ///< resolved as task_timeout
    std::uint64_t cancelled = 0;    ///< resolved as task_cancelled
    std::uint64_t other_failures = 0;  ///< any other error (serialization, shut down, ...)
    /// Workers started to replace one that exited (crash, kill, timeout, max_tasks_per_child).
    std::uint64_t worker_restarts = 0;
    /// Per worker index: the fraction of the pool's lifetime (so far) it spent running tasks.
    std::vector<double> busy_fraction;
    /// Time from submit to start, and from start to end, of the tasks that ran.
    duration_summary queue_wait;
    duration_summary run_time;
    /// Time since the pool started.
    std::chrono::nanoseconds uptime{0};

    /// Tasks resolved in any way.
    std::uint64_t resolved() const noexcept {
        return completed + exceptions + worker_died + timeouts + cancelled + other_failures;
    }
    /// Tasks resolved with an error (cancellations included).
    std::uint64_t failed() const noexcept { return resolved() - completed; }
};

namespace detail {
/// Names the next task this thread submits to a procpool pool in traces: `id` instead of
/// the pool's own number, and `attempt`. run_in_* labels each task with its input index.
void set_trace_label(std::uint64_t id, std::uint32_t attempt) noexcept;
/// Drops a label `set_trace_label` left unused (the executor was not a procpool pool).
void clear_trace_label() noexcept;
}  // namespace detail

}  // namespace procpool
