// task_output: what a process-pool task wrote to stdout and stderr, captured per task
// (process_pool_options::capture_output, run_options::capture_output).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace procpool {

/// The text one task of a process pool wrote to its standard output and standard error
/// (file descriptors 1 and 2: `printf`, `std::cout`, `write(1, ...)`, and processes the
/// task started), when its pool was created with `capture_output`. Each stream keeps at
/// most the pool's `output_limit` bytes; what came after is dropped and the text ends with
/// the marker `"\n[procpool: output truncated: N bytes dropped]\n"`.
///
/// A task that crashed or timed out keeps what reached the file descriptors before it
/// died; text still in its stdio buffers (a `printf` without `fflush`) dies with it.
struct task_output {
    std::string out;         ///< What the task wrote to stdout (fd 1).
    std::string err;         ///< What the task wrote to stderr (fd 2).
    bool truncated = false;  ///< True if either stream passed the pool's output_limit.
};

/// The marker appended to a stream whose output passed the limit by `dropped` bytes.
std::string output_truncation_marker(std::size_t dropped);

namespace detail {
class state_base;
/// The output a process pool captured for the task of `s`, or null: for tasks of other
/// executors, of pools without capture_output, and tasks that never ran. Never waits;
/// call it once `s` is done (the pool stores the output before it resolves the task).
std::shared_ptr<const task_output> captured_output(const state_base& s) noexcept;
}  // namespace detail

}  // namespace procpool
