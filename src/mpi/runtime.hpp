// This process's MPI state: whether MPI is in use, its communicator, the engine on rank 0.
#pragma once

namespace procpool::mpi_impl {

class engine;

/// The MPI state set up by mpi_init, as the rest of the component sees it.
struct runtime {
    /// True on a rank that serves (never true on rank 0 or without MPI).
    static bool serving() noexcept;
    /// Rank 0's engine, started on first use; null without MPI or without serving ranks.
    static engine* engine_or_null();
    /// Prints, once per program, that mpi_pools run on a local process pool.
    static void notice_local(int workers);
};

}  // namespace procpool::mpi_impl
