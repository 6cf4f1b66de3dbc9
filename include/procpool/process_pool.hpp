// process_pool: tasks in worker processes that survive crashes and can be killed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/remote_executor.hpp"
#include "procpool/detail/remote_task.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/shared_array.hpp"
#include "procpool/trace.hpp"
#include "procpool/task_output.hpp"
#include "procpool/wire.hpp"

namespace procpool {

namespace detail {

/// process_pool's record of a task: the remote task plus where the pool's scheduler has
/// put it (its worker, its place in that worker's ring, its queue link).
class process_task_base : public remote_task_base {
public:
    using remote_task_base::remote_task_base;

    std::uint64_t seq = 0;          ///< sequence number on its current worker
    int worker = -1;                ///< index of the worker it was dispatched to; -1 if parked
    std::uint32_t worker_gen = 0;   ///< that worker slot's generation when it was dispatched
    std::uint64_t payload_pos = 0;  ///< where its arguments sit in the worker's request ring
    std::uint32_t payload_len = 0;
    std::vector<std::byte> parked;      ///< serialized arguments while it waits in the pool
    process_task_base* link = nullptr;  ///< pool-internal queue link
    std::uint32_t requeues = 0;  ///< times its worker died before it was seen to start
    std::uint32_t ctl_msgs = 0;  ///< messages it sent on its worker's control socket
    // For statistics and traces (steady_clock ns; 0: unknown). When it was submitted, its
    // number and attempt are in its shared state (queued_ns, trace_id, attempt): a task
    // record is allocated per task, and every byte here is a page fault per 4096/size tasks.
    std::int64_t start_ns = 0;
    std::int64_t end_ns = 0;
    int pid = 0;                  ///< the worker process that ran it
    std::uint32_t bytes_in = 0;   ///< its arguments' size (as sent in one frame)
    std::uint32_t bytes_out = 0;  ///< its completion frame's size
    /// What it wrote to stdout and stderr (pools with capture_output), stored before the
    /// task is resolved; null otherwise.
    std::shared_ptr<const task_output> output;

protected:
    ~process_task_base() = default;
};

}  // namespace detail

/// Prepares procpool for process pools; call it first thing in `main`, while the program
/// is still single-threaded. It is the C++ counterpart of Python's
/// `if __name__ == "__main__":` guard: it starts a small fork server from the clean,
/// single-threaded program, and every later pool gets its workers from it, so pools are
/// safe to create even once the program runs other threads (whose locks a plain fork
/// would copy in a locked state). Calling it again does nothing. `argc`/`argv` are
/// accepted for future start methods and not modified.
void init(int argc, char** argv);

/// True once `init` has started the fork server.
bool initialized() noexcept;

/// How a process pool creates its workers.
enum class start_method {
    /// `forkserver` if `init` ran, else `fork`.
    automatic,
    /// Workers are forked from the fork server `init` started: they see the program as it
    /// was at `init`, and a threaded parent cannot leave them with a locked mutex.
    forkserver,
    /// Workers are forked from the pool's supervisor thread: they see the program's
    /// current state (copy-on-write: data loaded after start-up is visible for free).
    /// Hazard: locks held by other threads at that moment stay locked in the worker.
    fork,
};

/// Environment variables set in every worker by default: one BLAS/OpenMP thread each,
/// since the pool itself provides the parallelism.
std::vector<std::pair<std::string, std::string>> default_worker_env();

class mpi_pool;
class worker_initializer;

namespace detail {
/// Builds or reads a worker_initializer from its encoded parts (for relaying executors).
struct initializer_access {
    static worker_initializer make(std::uint64_t invoker, std::uint64_t fn,
                                   std::vector<std::byte> args);
    static std::uint64_t invoker(const worker_initializer& i) noexcept;
    static std::uint64_t fn(const worker_initializer& i) noexcept;
    static const std::vector<std::byte>& args(const worker_initializer& i) noexcept;
};
}  // namespace detail

/// A function and arguments run once in each new worker before its first task.
class worker_initializer {
public:
    /// No initializer.
    worker_initializer() = default;
    /// Runs `f(args...)` in each new worker. `f` is a free function or captureless lambda;
    /// arguments must be serializable. If it throws, every task the pool holds fails with
    /// a `remote_exception` describing it and the pool stops taking work.
    template <class F, class... A>
        requires detail::remote_callable<F>
    explicit worker_initializer(F&& f, A&&... args)
        : invoker_(detail::code_offset(reinterpret_cast<const void*>(
              detail::invoker_for<std::decay_t<F>, detail::wire_arg_t<A>...>()))),
          fn_(detail::callable_offset(static_cast<const std::decay_t<F>&>(f))) {
        wire::writer w(args_);
        wire::save_all(w, detail::wire_arg_t<A>(std::forward<A>(args))...);
    }
    /// True if an initializer was set.
    explicit operator bool() const noexcept { return invoker_ != 0; }

private:
    friend class process_pool;
    friend struct detail::initializer_access;
    std::uint64_t invoker_ = 0;
    std::uint64_t fn_ = 0;
    std::vector<std::byte> args_;
};

namespace detail {
inline worker_initializer initializer_access::make(std::uint64_t invoker, std::uint64_t fn,
                                                   std::vector<std::byte> args) {
    worker_initializer i;
    i.invoker_ = invoker;
    i.fn_ = fn;
    i.args_ = std::move(args);
    return i;
}
inline std::uint64_t initializer_access::invoker(const worker_initializer& i) noexcept {
    return i.invoker_;
}
inline std::uint64_t initializer_access::fn(const worker_initializer& i) noexcept { return i.fn_; }
inline const std::vector<std::byte>& initializer_access::args(
    const worker_initializer& i) noexcept {
    return i.args_;
}
}  // namespace detail

/// Options of a `process_pool`; designated initializers:
/// `process_pool({.workers = 4, .task_timeout = 30s})`.
struct process_pool_options {
    /// Number of worker processes (> 0). Defaults to the number of hardware threads.
    int workers = default_worker_count();
    /// Default deadline for each task, counted from when it starts running; the worker of
    /// a task past its deadline is killed and replaced, and its future gets `task_timeout`.
    std::optional<std::chrono::milliseconds> task_timeout{};
    /// Replace a worker after it has run this many tasks (0: never), to contain leaks.
    int max_tasks_per_child = 0;
    /// Address-space limit per worker in bytes (RLIMIT_AS; 0: none). A task allocating
    /// past it gets `std::bad_alloc`, reported as `remote_exception`.
    std::size_t memory_limit = 0;
    /// Environment overrides applied in each worker (see `default_worker_env`).
    std::vector<std::pair<std::string, std::string>> env = default_worker_env();
    /// Run once in each new worker (see `worker_initializer`).
    worker_initializer initializer{};
    /// How workers are created.
    start_method start = start_method::automatic;
    /// A `std::vector` of trivially copyable elements (argument or result) at least this
    /// many bytes travels through a shared-memory block instead of the byte stream: one
    /// copy on each side, whatever its size.
    std::size_t shared_memory_threshold = std::size_t{1} << 20;
    /// Record every task and worker start/exit in this trace (see trace_recorder); null:
    /// no trace. Statistics (`stats()`) are kept either way.
    std::shared_ptr<trace_recorder> trace{};
    /// Names the pool in traces.
    std::string name = "process_pool";
    /// Capture what each task writes to stdout and stderr (fd 1 and 2: `printf`,
    /// `std::cout`, `write(1, ...)`, processes it starts) and attach it to the task's
    /// future (`future::output()`) instead of letting it reach this program's terminal.
    /// A task that crashes keeps what it wrote before dying, except text left in its stdio
    /// buffers. Off: workers write to this program's stdout and stderr.
    bool capture_output = false;
    /// With `capture_output`: the most bytes kept per stream per task (1 byte to 1 GiB);
    /// the rest is dropped and the text ends with a marker (see `task_output`).
    std::size_t output_limit = std::size_t{1} << 20;
};

/// A pool of worker processes, the counterpart of Python's `ProcessPoolExecutor`, that
/// keeps working when tasks crash: a task that segfaults, aborts, exits or times out fails
/// only its own future (`worker_died`, `task_timeout`), its worker is replaced and every
/// other task completes. Tasks are free functions or captureless lambdas of the same
/// binary; arguments and results cross by value through shared memory (see wire.hpp).
class process_pool : public detail::remote_executor<process_pool, detail::process_task_base> {
public:
    /// Starts the workers. Throws `procpool::invalid_argument` for bad options and
    /// `procpool::error` if processes cannot be created.
    explicit process_pool(process_pool_options opts = {});
    /// Equivalent to `shutdown({.wait = true})`.
    ~process_pool();
    process_pool(const process_pool&) = delete;
    process_pool& operator=(const process_pool&) = delete;
    process_pool(process_pool&&) = delete;
    process_pool& operator=(process_pool&&) = delete;

    // submit(f, args...), submit(task_options, f, args...), map(f, items, chunksize),
    // imap(f, items, stream_options) and imap_unordered(...) come from remote_executor
    // (see procpool/detail/remote_executor.hpp).

    /// Stops accepting work. With `wait`, blocks until every task resolved and the workers
    /// exited; with `cancel_pending`, tasks not yet started resolve as `task_cancelled`
    /// (running ones finish). Calling it again is harmless.
    void shutdown(shutdown_options opts = {});

    /// The number of worker processes the pool keeps running.
    int workers() const noexcept;

    /// Process ids of the live workers (for diagnostics and tests). A worker the fork server
    /// has not yet reported started is missing (its first tasks may already have run).
    std::vector<int> worker_pids() const;

    /// What the pool has done so far: tasks by outcome, worker restarts, busy fraction per
    /// worker, queue wait and run time percentiles (see pool_stats). A task counts by the
    /// time its future is ready.
    pool_stats stats() const;
    /// True if the pool captures its tasks' output (`process_pool_options::capture_output`).
    bool captures_output() const noexcept;

private:
    friend class detail::remote_executor<process_pool, detail::process_task_base>;
    std::size_t auto_chunksize(std::size_t n) const noexcept;
    // How many map chunks of `chunk_bytes` the workers' request rings hold at once.
    std::size_t map_window(std::size_t chunk_bytes) const noexcept;
    void enqueue(detail::process_task_base& t, const std::vector<std::byte>& args);
    // As enqueue, with the arguments in two pieces copied straight into a worker's ring.
    void enqueue_parts(detail::process_task_base& t, std::span<const std::byte> head,
                       std::span<const std::byte> body);

    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace procpool
