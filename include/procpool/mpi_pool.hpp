// mpi_pool: the process pool's futures on many machines, over MPI. Rank 0 runs the
// program; every other rank serves its tasks in local worker processes.
//
// Part of the optional `procpool::mpi` component (built where Open MPI is found):
//   find_package(procpool COMPONENTS mpi)  ...  target_link_libraries(app procpool::mpi)
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "procpool/detail/remote_executor.hpp"
#include "procpool/detail/remote_task.hpp"
#include "procpool/executor.hpp"
#include "procpool/future.hpp"
#include "procpool/process_pool.hpp"

namespace procpool {

/// The start-up call of an MPI program, in place of `procpool::init`: first thing in
/// `main`, before any thread or pool exists. It starts procpool's fork server (so worker
/// processes are never forked from an MPI process), then initialises MPI and checks that
/// every rank runs the same binary (a mismatch ends every rank with one message naming the
/// ranks and hosts, exit status 2).
///
/// On rank 0 it returns and the program runs as usual. On every other rank it never
/// returns: the rank serves rank 0's `mpi_pool`s in local worker processes and exits with
/// status 0 when rank 0's program ends (or calls `mpi_finalize`).
///
/// Started without `mpirun`/`srun`, it does not initialise MPI: `mpi_pool`s then run
/// their tasks on a local process pool (one notice line on stderr), so the same binary
/// works on a laptop.
void mpi_init(int argc, char** argv);

/// Ends MPI on rank 0 and lets the serving ranks exit. Called automatically when the
/// program exits; call it earlier only once every `mpi_pool` is gone. Harmless if MPI is
/// not in use or already finalised.
void mpi_finalize();

/// This process's rank in MPI_COMM_WORLD (0 without MPI).
int mpi_rank() noexcept;

/// The number of ranks (1 without MPI).
int mpi_size() noexcept;

/// Options for an `mpi_pool`, set with designated initializers: `{.task_timeout = 10s}`.
struct mpi_pool_options {
    /// Worker processes on each serving rank; 0: one per core the rank owns (its CPU
    /// affinity, shared with the other ranks on its node).
    int workers_per_rank = 0;
    /// Tasks sent ahead to a rank, per worker, so a worker finishing one finds the next
    /// one waiting; the rest wait on rank 0, where they can be cancelled cheaply and go to
    /// whichever rank frees up first. 0: adaptive, about a millisecond of the rank's
    /// throughput, between 2 and 64 per worker (many for tiny tasks, 2 for long ones).
    int in_flight_per_worker = 0;
    /// Default per-task deadline, enforced on the serving rank (kills the worker).
    std::optional<std::chrono::milliseconds> task_timeout{};
    /// As process_pool_options: tasks per worker before it is replaced (0: unlimited).
    int max_tasks_per_child = 0;
    /// As process_pool_options: address-space limit per worker in bytes (0: none).
    std::size_t memory_limit = 0;
    /// Environment variables set in every worker.
    std::vector<std::pair<std::string, std::string>> env = default_worker_env();
    /// Runs once in every worker, on every rank, before its first task.
    worker_initializer initializer{};
};

/// Where an mpi_pool runs its tasks.
struct mpi_rank_info {
    int rank = 0;       ///< rank in MPI_COMM_WORLD
    std::string host;   ///< its host name
    int workers = 0;    ///< its local worker processes
};

namespace detail {

/// An mpi_pool task as rank 0 tracks it.
class mpi_task_base : public remote_task_base {
  public:
    using remote_task_base::remote_task_base;

    std::uint64_t id = 0;          ///< unique among this program's mpi_pool tasks
    std::uint32_t pool_id = 0;     ///< its pool's id
    int rank = -1;                 ///< the serving rank it was sent to; -1 while queued
    std::int64_t queued_ns = 0;    ///< when rank 0's engine queued it (steady clock)
    std::vector<std::byte> args;   ///< its encoded arguments until sent
    void* pool = nullptr;          ///< the mpi_pool's engine side
    std::shared_ptr<void> local;   ///< single-rank mode: the local pool's future

  protected:
    ~mpi_task_base() = default;
};

}  // namespace detail

/// A pool whose workers are processes on the serving ranks of an MPI job: the same
/// `submit`, `map`, futures, errors, timeouts and cancellation as `process_pool`.
///
/// Tasks are queued on rank 0 and sent to the rank with the most free room (each rank
/// holds a bounded window of them, see `in_flight_per_worker`), so uneven task lengths keep every
/// remote worker busy. A task that crashes, exits or times out on a remote node fails only
/// its own future (`worker_died`, `task_timeout`, naming the host and rank); that rank
/// replaces the worker and keeps serving; a rank that stops answering has its tasks
/// failed and gets no new ones until it answers again. Arguments and results travel by
/// value over MPI; `shared_array` arguments are shared without copying with ranks on rank
/// 0's node and copied to others, the task's writes coming back (see the guide). Use only
/// on rank 0, after `mpi_init`.
class mpi_pool : public detail::remote_executor<mpi_pool, detail::mpi_task_base> {
  public:
    /// Opens the pool on every serving rank (each starts its workers) and returns once all
    /// are ready. Throws `invalid_argument` for bad options, `error` if a rank cannot
    /// start its workers (naming it) or if called on a serving rank.
    explicit mpi_pool(mpi_pool_options opts = {});
    /// Waits for every task, then closes the pool on every rank.
    ~mpi_pool();
    mpi_pool(const mpi_pool&) = delete;
    mpi_pool& operator=(const mpi_pool&) = delete;
    mpi_pool(mpi_pool&&) = delete;
    mpi_pool& operator=(mpi_pool&&) = delete;

    // submit(f, args...), submit(task_options, f, args...) and map(f, items, chunksize)
    // come from remote_executor (see procpool/detail/remote_executor.hpp).

    /// Stops accepting work; as process_pool::shutdown.
    void shutdown(shutdown_options opts = {});

    /// Worker processes over all serving ranks.
    int workers() const noexcept;

    /// The serving ranks and their workers (one entry with rank 0 in single-rank mode).
    const std::vector<mpi_rank_info>& ranks() const noexcept;

  private:
    friend class detail::remote_executor<mpi_pool, detail::mpi_task_base>;
    std::size_t auto_chunksize(std::size_t n) const noexcept;
    void enqueue(detail::mpi_task_base& t, const std::vector<std::byte>& args);

    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace procpool
