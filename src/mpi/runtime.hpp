// This process's MPI state: whether MPI is in use, its communicator, the engine on rank 0.
#pragma once

#include <memory>

namespace procpool::mpi_impl {

class engine;

/// The MPI state set up by mpi_init, as the rest of the component sees it.
struct runtime {
    /// True on a rank that serves (never true on rank 0 or without MPI).
    static bool serving() noexcept;
    /// True once rank 0 has called mpi_finalize (never without MPI).
    static bool finalized();
    /// Rank 0's engine, started on first use; null without MPI, without serving ranks or
    /// after mpi_finalize. Pools share it: it outlives mpi_finalize (stopped) while one
    /// that was open still holds it.
    static std::shared_ptr<engine> engine_or_null();
    /// Prints, once per program, that mpi_pools run on a local process pool.
    static void notice_local(int workers);
};

}  // namespace procpool::mpi_impl
