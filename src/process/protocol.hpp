// The process transport's own messages: what it adds to the remote envelope (payloads
// too large for a ring travel as memfds) and the fork server's records.
#pragma once

#include <sys/types.h>

#include <cstdint>

#include "remote/envelope.hpp"

namespace procpool::process {

struct worker_region;

// The envelope, as this transport uses it.
using remote::completion_header;
using remote::decode_config;
using remote::describe_startup;
using remote::encode_config;
using remote::max_config_bytes;
using remote::msg_exit;
using remote::msg_forget;
using remote::msg_task;
using remote::now_ns;
using remote::same_binary;
using remote::startup_exit_code;
using remote::startup_report;
using remote::startup_report_tag;
using remote::startup_step;
using remote::task_header;
using remote::worker_config;

/// A task request whose arguments travel in a memfd on the control socket: the frame
/// holds the task_header and their size as a u64.
inline constexpr std::uint32_t msg_task_oob = 2;
/// Set in a completion frame's type when its payload travels in a memfd on the control
/// socket (the frame holds the payload's size as a u64).
inline constexpr std::uint32_t oob_flag = 0x100;
/// Set in a completion frame's type when its payload (in the ring or out of band) starts
/// with the task's captured output: an output_header, then the bytes (see output.hpp).
inline constexpr std::uint32_t output_flag = 0x200;

/// Fork-server protocol (pool channel), fixed-size records.
enum : std::uint32_t { fs_spawn = 1, fs_spawned = 2, fs_exited = 3, fs_spawn_failed = 4 };
/// One fork-server record.
struct fs_record {
    std::uint32_t type;
    std::int32_t value;   ///< pid (spawned), wait status (exited), errno (spawn_failed)
    std::uint64_t token;  ///< spawn token (spawned, spawn_failed) or pid (exited)
};

/// Serves tasks from the rings of `region` until told to exit: never returns. `ctl` is
/// the worker's control socket, `wake` the write end of its wake-up pipe to the parent;
/// `out` and `err` the memfds its tasks' stdout and stderr go to (-1: not captured).
/// (The worker side of the ring transport; see ring_worker.cpp.)
[[noreturn]] void serve_ring(worker_region* region, int ctl, int wake, int out, int err,
                             const worker_config& cfg);

}  // namespace procpool::process
