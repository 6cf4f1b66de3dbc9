// A second MPI program for the tests that need a whole job: the single-rank fallback
// (run alone), the same-binary check (launched beside test_mpi, MPMD), the loss of a
// serving rank (--kill-a-rank), a serving rank that stops and never answers again
// (--freeze-a-rank), and mpi_init / mpi_finalize misuse: called twice
// (--init-twice), after the program's own MPI_Init (--mpi-init-first), a pool alive at exit (--global-pool) or at mpi_finalize (--finalize-early),
// and a pool's initializer or a task's result too large for one MPI message
// (--over-2gib: needs about 8 GiB).
#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "procpool/mpi_pool.hpp"

namespace {

int triple(int x) { return 3 * x; }

std::vector<char> bytes(std::size_t n) { return std::vector<char>(n, 'x'); }

void init_with(std::vector<char> blob) { static_cast<void>(blob); }

/// Runs in a worker, whose parent is its rank's fork server, whose parent is the serving
/// rank itself: kills that rank as an outside kill -9 would.
int signal_my_rank(int sig) {
    std::ifstream stat("/proc/" + std::to_string(getppid()) + "/stat");
    std::string pid, comm, state;
    long rank_pid = 0;
    stat >> pid >> comm >> state >> rank_pid;
    if (rank_pid > 1) kill(static_cast<pid_t>(rank_pid), sig);
    pause();
    return 0;
}

/// A pool that outlives main (--global-pool): destroyed after the at-exit mpi_finalize.
std::unique_ptr<procpool::mpi_pool> global_pool;

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "--mpi-init-first") == 0) {
        MPI_Init(&argc, &argv);  // misuse: mpi_init must replace it
    }
    procpool::mpi_init(argc, argv);
    if (argc > 1 && std::strcmp(argv[1], "--init-twice") == 0) {
        procpool::mpi_init(argc, argv);
        {
            procpool::mpi_pool pool;
            std::printf("probe: init-twice %d\n", pool.submit(triple, 2).get());
        }
        procpool::mpi_finalize();
        procpool::mpi_finalize();
        std::printf("probe: finalized twice\n");
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--global-pool") == 0) {
        global_pool = std::make_unique<procpool::mpi_pool>();
        std::printf("probe: global %d\n", global_pool->submit(triple, 5).get());
        std::fflush(stdout);
        static_cast<void>(global_pool->submit(triple, 6));  // may still be running at exit
        return 0;  // the pool is destroyed after procpool's at-exit mpi_finalize
    }
    if (argc > 1 && std::strcmp(argv[1], "--finalize-early") == 0) {
        procpool::mpi_pool pool;
        std::printf("probe: before %d\n", pool.submit(triple, 1).get());
        std::fflush(stdout);
        procpool::mpi_finalize();  // misuse: a pool is alive
        try {
            auto f = pool.submit(triple, 2);
            std::printf("probe: submit after finalize accepted\n");
            std::fflush(stdout);
            f.wait();  // must resolve, whatever it holds
        } catch (const procpool::pool_shut_down& e) {
            std::printf("probe: submit after finalize refused: %s\n", e.what());
        }
        try {
            procpool::mpi_pool another;
            std::printf("probe: pool created after finalize\n");
        } catch (const procpool::error& e) {
            std::printf("probe: new pool after finalize refused: %s\n", e.what());
        }
        std::fflush(stdout);
        return 0;  // the pool's destructor runs after mpi_finalize
    }
    if (argc > 1 && std::strcmp(argv[1], "--over-2gib") == 0) {
        try {
            procpool::mpi_pool big({.initializer = procpool::worker_initializer(
                                        init_with, std::vector<char>(std::size_t{1} << 31))});
            std::printf("probe: a pool with a 2 GiB initializer started\n");
        } catch (const procpool::error& e) {
            std::printf("probe: initializer too large: %s\n", e.what());
        }
        std::fflush(stdout);
        procpool::mpi_pool pool({.workers_per_rank = 1});
        try {
            const auto v = pool.submit(bytes, std::size_t{1} << 31).get();
            std::printf("probe: a result of %zu bytes arrived\n", v.size());
        } catch (const procpool::serialization_error& e) {
            std::printf("probe: too large: %s\n", e.what());
        }
        std::printf("probe: then %d\n", pool.submit(triple, 14).get());
        return 0;
    }
    const bool kill = argc > 1 && std::strcmp(argv[1], "--kill-a-rank") == 0;
    procpool::mpi_pool pool;
    if (kill) {
        std::printf("probe: killing a serving rank\n");
        std::fflush(stdout);
        pool.submit(signal_my_rank, SIGKILL).get();  // never returns: the job ends
        return 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "--freeze-a-rank") == 0) {
        // The task stops its rank for good: its timeout still ends it, and at exit the job
        // ends (MPI_Finalize would wait for the stopped rank forever).
        try {
            pool.submit(procpool::task_options{.timeout = std::chrono::seconds(1)}, signal_my_rank,
                        SIGSTOP).get();
            std::printf("probe: the frozen task returned\n");
        } catch (const procpool::task_timeout& e) {
            std::printf("probe: frozen task: %s\n", e.what());
        }
        std::printf("probe: then %d\n", pool.submit(triple, 14).get());
        std::fflush(stdout);
        return 0;
    }
    const int v = pool.submit(triple, 14).get();
    std::printf("probe: ok %d ranks=%zu size=%d\n", v, pool.ranks().size(), procpool::mpi_size());
    return v == 42 ? 0 : 1;
}
