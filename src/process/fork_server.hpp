// The fork server started by procpool::init: a single-threaded child that forks workers.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "ipc/fd.hpp"

namespace procpool::process {

/// A pool's link to the fork server: its private channel (SOCK_SEQPACKET, fs_record
/// messages) and a pidfd of that server process (readable once it has exited; empty where
/// the kernel has no pidfd_open). The channel alone cannot tell that the server died if
/// another process still holds the server's end, e.g. a child stopped between its fork and
/// closing the server's descriptors: the pool watches the pidfd too.
struct fork_server_link {
    ipc::unique_fd channel;
    ipc::unique_fd pidfd;
};

/// Opens a private channel to the fork server for one pool, starting a new server first if
/// the one running has exited; both fds empty if `init` has not run.
fork_server_link open_fork_server_channel();

/// True if `pidfd` (from a fork_server_link) says its process has exited.
bool process_exited(int pidfd) noexcept;

/// Starts the fork server unless it runs (procpool::init); true if this call started it.
/// Throws procpool::error if it cannot be forked.
bool start_fork_server();

/// In a worker, after its other descriptors are closed: the fork server belongs to the
/// program, not to the worker, so a pool a task makes starts its workers with fork.
void forget_fork_server_in_worker() noexcept;

/// True in a worker process of any pool (detail::in_worker_process: set as it starts).
bool is_worker_process() noexcept;

/// True once the fork server has been started.
bool fork_server_running() noexcept;

/// Process id of the fork server, or -1.
pid_t fork_server_pid() noexcept;

/// Environment variables whose names start with one of `prefixes` are removed in fork
/// servers started from now on, so none of their workers sees them. mpi_init uses it for
/// the launcher's variables (OMPI_*, PMIX_*, ...): a worker is no MPI rank.
void drop_env_in_workers(std::vector<std::string> prefixes);

/// Number of threads the calling process runs now (from /proc/self/status).
int current_thread_count() noexcept;

}  // namespace procpool::process
