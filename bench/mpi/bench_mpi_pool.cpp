// mpi_pool against its own floor, in one MPI job (run it with mpirun -np 3; see
// bench/run_mpi_bench.sh): round trip p50, submit throughput with a future per task, and
// map of 1M ints; the same for a local process_pool with as many workers, on rank 0's
// machine. Prints one JSON object.
#include <procpool/mpi_pool.hpp>
#include <procpool/process_pool.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

namespace {

int add(int a, int b) { return a + b; }
int inc(int x) { return x + 1; }

using clk = std::chrono::steady_clock;

template <class Pool>
double rt_p50_us(Pool& pool, int rounds) {
    for (int i = 0; i < 500; ++i) pool.submit(add, i, 1).get();
    std::vector<double> us;
    us.reserve(static_cast<std::size_t>(rounds));
    for (int i = 0; i < rounds; ++i) {
        const auto t0 = clk::now();
        pool.submit(add, i, 1).get();
        us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
    }
    std::nth_element(us.begin(), us.begin() + rounds / 2, us.end());
    return us[static_cast<std::size_t>(rounds / 2)];
}

template <class Pool>
double submit_per_s(Pool& pool, int n) {
    std::vector<procpool::future<int>> fs;
    fs.reserve(static_cast<std::size_t>(n));
    const auto t0 = clk::now();
    for (int i = 0; i < n; ++i) fs.push_back(pool.submit(add, i, 1));
    long sum = 0;
    for (auto& f : fs) sum += f.get();
    const double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (sum == 0) std::puts("");
    return n / s;
}

template <class Pool>
double map_items_per_s(Pool& pool, const std::vector<int>& in) {
    pool.map(inc, in);  // warm
    const auto t0 = clk::now();
    auto out = pool.map(inc, in);
    const double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (out.back() != in.back() + 1) std::puts("wrong");
    return static_cast<double>(in.size()) / s;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::mpi_init(argc, argv);
    std::vector<int> items(1'000'000);
    std::iota(items.begin(), items.end(), 0);
    double mpi_rt = 0, mpi_submit = 0, mpi_map = 0;
    int workers = 0;
    {
        procpool::mpi_pool pool;
        workers = pool.workers();
        mpi_rt = rt_p50_us(pool, 5000);
        mpi_submit = submit_per_s(pool, 100'000);
        mpi_map = map_items_per_s(pool, items);
    }
    double pp_rt = 0, pp_submit = 0, pp_map = 0;
    {
        procpool::process_pool pool({.workers = workers});
        pp_rt = rt_p50_us(pool, 5000);
        pp_submit = submit_per_s(pool, 100'000);
        pp_map = map_items_per_s(pool, items);
    }
    std::printf(
        "{\"ranks\": %d, \"workers\": %d, \"mpi_pool_rt_p50_us\": %.3f, "
        "\"mpi_pool_submit_per_s\": %.0f, \"mpi_pool_map_items_per_s\": %.0f, "
        "\"process_pool_rt_p50_us\": %.3f, \"process_pool_submit_per_s\": %.0f, "
        "\"process_pool_map_items_per_s\": %.0f}\n",
        procpool::mpi_size(), workers, mpi_rt, mpi_submit, mpi_map, pp_rt, pp_submit, pp_map);
    return 0;
}
