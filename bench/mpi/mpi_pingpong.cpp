// The floor for mpi_pool: a raw MPI ping-pong of a small message between ranks 0 and 1
// (other ranks wait in a barrier). Prints one JSON line: {"raw_mpi_rt_p50_us": ...}.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    constexpr int warmup = 2000, rounds = 20000;
    char buf[64] = {};
    std::vector<double> us;
    us.reserve(rounds);
    if (rank <= 1) {
        const int peer = 1 - rank;
        for (int i = 0; i < warmup + rounds; ++i) {
            const auto t0 = std::chrono::steady_clock::now();
            if (rank == 0) {
                MPI_Send(buf, sizeof buf, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
                MPI_Recv(buf, sizeof buf, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(buf, sizeof buf, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, sizeof buf, MPI_BYTE, peer, 0, MPI_COMM_WORLD);
            }
            const std::chrono::duration<double, std::micro> d =
                std::chrono::steady_clock::now() - t0;
            if (i >= warmup) us.push_back(d.count());
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        std::nth_element(us.begin(), us.begin() + rounds / 2, us.end());
        std::printf("{\"raw_mpi_rt_p50_us\": %.3f}\n", us[rounds / 2]);
    }
    MPI_Finalize();
    return 0;
}
