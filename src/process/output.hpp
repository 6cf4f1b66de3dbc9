// Per-task output capture (process_pool_options::capture_output), both ends.
//
// Each worker's fd 1 and 2 are two memfds the parent creates when it spawns the worker and
// keeps open itself. Within a task, whatever writes to them (the task, stdio, processes it
// started) appends to the files: no parent involvement, no pipe to drain. After the task
// the worker flushes stdio, reads at most `limit` bytes of each file into its completion
// frame (with the files' full sizes, so the parent can say how much was dropped), publishes
// the frame, and only then empties the files for the next task. If the worker dies, the
// parent reads the files itself for the task that was running. While tasks run, the
// parent's supervisor frees (punches out) what a file holds past the limit, so a task
// writing gigabytes costs the machine about `limit` bytes, not gigabytes.
// See docs/architecture.md, "Per-task output", for the choices and their costs.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ipc/fd.hpp"
#include "procpool/task_output.hpp"

namespace procpool::process {

/// The largest output_limit a pool accepts.
inline constexpr std::size_t max_output_limit = std::size_t{1} << 30;

/// Leads the output section of a completion frame (frame type with output_flag); the
/// stdout bytes follow it, then the stderr bytes.
struct output_header {
    std::uint64_t out_len;    ///< stdout bytes that follow (at most the limit)
    std::uint64_t out_total;  ///< how many bytes the task's stdout held (>= out_len)
    std::uint64_t err_len;    ///< stderr bytes that follow them
    std::uint64_t err_total;  ///< how many bytes its stderr held
};

// ---- parent ------------------------------------------------------------------------

/// The parent's handles on one worker's capture files (empty when capture is off).
struct output_files {
    ipc::unique_fd out;  ///< the memfd behind the worker's fd 1
    ipc::unique_fd err;  ///< the memfd behind its fd 2
    explicit operator bool() const noexcept { return static_cast<bool>(out); }
};

/// Creates a worker's two capture files. Throws procpool::error if it cannot.
output_files make_output_files();

/// Reads what the files hold (at most `limit` bytes per stream, the rest counted and
/// marked): the output of a task whose worker died while running it. Null if the memory
/// for it cannot be had. Never blocks on the worker.
std::shared_ptr<const task_output> read_output(const output_files& f, std::size_t limit) noexcept;

/// What bound_output found in a worker's files.
struct bound_result {
    bool punched = false;     ///< it freed data past the limit (a task writes a lot)
    bool over_limit = false;  ///< a file still holds more than the limit allows
};

/// Frees whatever the files hold past `limit` (rounded up to a page) once that is more
/// than a little: the bytes are dropped anyway, and the files' sizes, which say how many
/// were written, stay. Safe at any moment, concurrently with the worker's writes, reads
/// and resets: it touches nothing the worker reads.
bound_result bound_output(const output_files& f, std::size_t limit) noexcept;

/// Parses the output section at the start of a completion payload (checked: lengths
/// within `limit` and the payload), advances `data`/`size` past it, and returns the
/// output (null if out of memory). Throws protocol_violation if the section is malformed.
std::shared_ptr<const task_output> parse_output(const std::byte*& data, std::size_t& size,
                                                std::size_t limit);

/// The output of a task that wrote nothing (one shared instance).
const std::shared_ptr<const task_output>& empty_output() noexcept;

// ---- worker ------------------------------------------------------------------------

/// The worker's end: fd 1 and 2 point at the pool's capture files during tasks.
class output_capture {
  public:
    /// Drops what stdio buffers hold when the worker starts: a fork-method worker's copy
    /// of text the parent had not flushed yet (the parent prints it itself; the worker
    /// would print it again, or put it in its first task's output).
    static void discard_inherited() noexcept;

    /// Flushes stdio (what the initializer printed goes where it went before), then points
    /// fd 1 and 2 at `out` and `err`, keeping private copies (close-on-exec) to restore
    /// them from. False if that failed. `limit`: bytes kept per stream per task.
    bool start(int out, int err, std::uint64_t limit) noexcept;

    /// True once start succeeded.
    bool on() const noexcept { return out_.priv >= 0; }

    /// After a task: flushes stdio and, if either file holds anything, fills `section`
    /// with an output_header and the bytes (at most the limit per stream) and returns true.
    /// Restores fd 1 or 2 if the task closed or replaced it. Costs one fstat per stream
    /// when the task wrote nothing.
    bool collect(std::vector<std::byte>& section) noexcept;

    /// After the task's completion is published: empties the files that held anything, for
    /// the next task. False if they cannot be emptied or reached any more (a task broke
    /// them): the worker must then exit, or the next task would get this one's output.
    bool reset() noexcept;

  private:
    struct stream {
        int fd = -1;    ///< 1 or 2
        int priv = -1;  ///< the private copy
        dev_t dev = 0;  ///< the file's identity
        ino_t ino = 0;
        std::uint64_t size = 0;  ///< what it held at the last collect
    };
    bool check(stream& s) noexcept;
    bool restore(stream& s) noexcept;
    std::uint64_t read_into(stream& s, std::byte* dst, std::uint64_t n) noexcept;
    bool empty(stream& s) noexcept;

    stream out_;
    stream err_;
    std::uint64_t limit_ = 0;
    bool broken_ = false;
};

}  // namespace procpool::process
