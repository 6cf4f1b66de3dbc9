// The fork server started by procpool::init: a single-threaded child that forks workers.
#pragma once

#include <sys/types.h>

#include "ipc/fd.hpp"

namespace procpool::process {

/// Opens a private channel to the fork server for one pool (SOCK_SEQPACKET, fs_record
/// messages), or returns an empty fd if `init` has not run.
ipc::unique_fd open_fork_server_channel();

/// Starts the fork server unless it runs (procpool::init); true if this call started it.
/// Throws procpool::error if it cannot be forked.
bool start_fork_server();

/// True once the fork server has been started.
bool fork_server_running() noexcept;

/// Process id of the fork server, or -1.
pid_t fork_server_pid() noexcept;

/// Number of threads the calling process runs now (from /proc/self/status).
int current_thread_count() noexcept;

}  // namespace procpool::process
