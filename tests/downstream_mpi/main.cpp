// Uses the installed procpool::mpi component: mpi_init, an mpi_pool, a map.
#include <procpool/mpi_pool.hpp>

#include <cstdio>
#include <vector>

int twice(int x) { return 2 * x; }

int main(int argc, char** argv) {
    procpool::mpi_init(argc, argv);
    procpool::mpi_pool pool;
    const std::vector<int> in = {1, 2, 3};
    if (pool.map(twice, in) != std::vector<int>{2, 4, 6}) return 1;
    std::puts("downstream ok");
    return 0;
}
