// A second MPI program for the tests that need a whole job: the single-rank fallback
// (run alone), the same-binary check (launched beside test_mpi, MPMD) and the loss of a
// serving rank (--kill-a-rank).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "procpool/mpi_pool.hpp"

namespace {

int triple(int x) { return 3 * x; }

/// Runs in a worker, whose parent is its rank's fork server, whose parent is the serving
/// rank itself: kills that rank as an outside kill -9 would.
int kill_my_rank(int) {
    std::ifstream stat("/proc/" + std::to_string(getppid()) + "/stat");
    std::string pid, comm, state;
    long rank_pid = 0;
    stat >> pid >> comm >> state >> rank_pid;
    if (rank_pid > 1) kill(static_cast<pid_t>(rank_pid), SIGKILL);
    pause();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::mpi_init(argc, argv);
    const bool kill = argc > 1 && std::strcmp(argv[1], "--kill-a-rank") == 0;
    procpool::mpi_pool pool;
    if (kill) {
        std::printf("probe: killing a serving rank\n");
        std::fflush(stdout);
        pool.submit(kill_my_rank, 0).get();  // never returns: the job ends
        return 0;
    }
    const int v = pool.submit(triple, 14).get();
    std::printf("probe: ok %d ranks=%zu size=%d\n", v, pool.ranks().size(), procpool::mpi_size());
    return v == 42 ? 0 : 1;
}
