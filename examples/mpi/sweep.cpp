// The seed's heavy_calc sweep on one machine or a cluster: the same code with a
// process_pool, or with an mpi_pool when started with --mpi.
//
//   one machine:   ./sweep
//   a cluster:     mpirun --hostfile hosts -np 9 ./sweep --mpi
//   Slurm:         srun -N 3 --ntasks-per-node=3 ./sweep --mpi
#include <procpool/mpi_pool.hpp>
#include <procpool/process_pool.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

/// The seed's CPU-bound task: the sum of square roots below n.
double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

/// Runs the sweep on any procpool executor: nothing here knows where the workers are.
template <class Pool>
double sweep(Pool& pool, const std::vector<long>& sizes) {
    const std::vector<double> results = pool.map(heavy_calc, sizes, 1);
    double total = 0;
    for (double r : results) total += r;
    return total;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::mpi_init(argc, argv);  // with MPI: ranks other than 0 serve from here on
    bool use_mpi = false;
    int tasks = 32;
    long size = 2'000'000;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--mpi") == 0) {
            use_mpi = true;
        } else if (std::strcmp(argv[i], "--tasks") == 0 && i + 1 < argc) {
            tasks = std::stoi(argv[++i]);
        } else if (std::strcmp(argv[i], "--size") == 0 && i + 1 < argc) {
            size = std::stol(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--mpi] [--tasks N] [--size N]\n", argv[0]);
            return 2;
        }
    }
    std::vector<long> sizes;
    for (int i = 0; i < tasks; ++i) sizes.push_back(size + (i % 4) * size / 4);

    const auto t0 = std::chrono::steady_clock::now();
    double total = 0;
    int workers = 0;
    if (use_mpi) {
        procpool::mpi_pool pool;
        workers = pool.workers();
        total = sweep(pool, sizes);
        for (const auto& r : pool.ranks()) {
            std::printf("rank %d on %s: %d workers\n", r.rank, r.host.c_str(), r.workers);
        }
    } else {
        procpool::process_pool pool;
        workers = pool.workers();
        total = sweep(pool, sizes);
    }
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    std::printf("%s: %d tasks on %d workers in %.3f s, total %.6e\n",
                use_mpi ? "mpi_pool" : "process_pool", tasks, workers, dt.count(), total);
    return 0;
}
