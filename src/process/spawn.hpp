// Creating worker processes, written once for both start methods: the fork server and the
// pool's supervisor (start_method::fork) call the same fork_worker.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <initializer_list>
#include <string>

#include "process/protocol.hpp"

namespace procpool::process {

/// The descriptors a new worker starts from, all in the forking process.
struct worker_fds {
    int region;  ///< memfd of its shared region (rings and control words)
    int ctl;     ///< its end of the control socket
    int wake;    ///< write end of its wake-up pipe to the parent
    int out = -1;  ///< memfd for its tasks' stdout (capture_output), else -1
    int err = -1;  ///< memfd for its tasks' stderr (capture_output), else -1
};

/// Forks with every signal blocked, so that no handler of the parent's program runs in
/// the child before the child resets them; the parent's mask is restored after. Returns
/// fork's result (errno set on -1).
pid_t fork_signals_blocked() noexcept;

/// Forks a worker: the child decodes `config` (an encode_config message) and becomes a
/// worker serving over `fds`; it never returns. A child that cannot start sends a
/// startup_report on `fds.ctl` and exits with startup_exit_code. Returns the child's pid,
/// or -1 with errno set.
pid_t fork_worker(const worker_fds& fds, const std::byte* config, std::size_t config_len) noexcept;

/// Forks a spare: a child set up as far as a worker can be without a pool (process group,
/// signals, descriptors closed but `sock`), which then waits on `sock` for one spawn
/// request (an fs_record and configuration with 3 or 5 descriptors, as a pool sends the
/// fork server) and becomes that worker; it exits quietly if `sock` closes first. The fork
/// server keeps spares so that a new worker does not wait for a fork (fork_server.cpp).
/// Returns the child's pid, or -1 with errno set.
pid_t fork_spare(int sock) noexcept;

/// Sends a startup_report on `ctl` (best effort) and exits: a worker that cannot start.
[[noreturn]] void startup_failed(int ctl, startup_step step, int err) noexcept;

/// Closes every descriptor except 0, 1, 2 and those in `keep`.
void close_other_fds(std::initializer_list<int> keep) noexcept;

/// Resets signal handlers and mask for a new child; SIGINT is ignored so that Ctrl-C is
/// the parent's to handle.
void reset_signals_for_child() noexcept;

}  // namespace procpool::process
