// mpi_pool against its own floor, in one MPI job (run it with mpirun -np 3; see
// bench/run_mpi_bench.sh): round trip p50, submit throughput with a future per task, and
// map of 1M ints; the same for a local process_pool with as many workers, on rank 0's
// machine; and a 64 MiB shared_array handed to one task that writes one int in 4096 (by
// reference, or by value with PROCPOOL_MPI_COPY_SHARED_ARRAYS=1), beside a memcpy of as
// much. Prints one JSON object.
#include <procpool/mpi_pool.hpp>
#include <procpool/process_pool.hpp>
#include <procpool/shared_array.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

namespace {

int add(int a, int b) { return a + b; }
int inc(int x) { return x + 1; }

using clk = std::chrono::steady_clock;

// Writes one int in every 4096 (one per 16 KiB): the by-value path sends the array, and
// gets back only those bytes.
std::size_t touch_sparse(procpool::shared_array<int> a) {
    for (std::size_t i = 0; i < a.size(); i += 4096) a[i] += 1;
    return a.size();
}

double median(std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
    return v[v.size() / 2];
}

// Milliseconds for one task given a 64 MiB shared_array, p50 of `rounds`.
double array_task_ms(procpool::mpi_pool& pool, int rounds) {
    procpool::shared_array<int> a(std::size_t{16} << 20);
    pool.submit(touch_sparse, a).get();  // warm: the rank maps (or copies) it once
    std::vector<double> ms;
    for (int i = 0; i < rounds; ++i) {
        const auto t0 = clk::now();
        pool.submit(touch_sparse, a).get();
        ms.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
    }
    if (a[0] != rounds + 1) std::puts("wrong");
    return median(ms);
}

double memcpy_64mib_ms(int rounds) {
    std::vector<char> from(std::size_t{64} << 20, 'x'), to(from.size());
    std::memcpy(to.data(), from.data(), from.size());
    std::vector<double> ms;
    for (int i = 0; i < rounds; ++i) {
        const auto t0 = clk::now();
        std::memcpy(to.data(), from.data(), from.size());
        ms.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
    }
    if (to[12345] != 'x') std::puts("wrong");
    return median(ms);
}


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
    double mpi_rt = 0, mpi_submit = 0, mpi_map = 0, array_ms = 0;
    int workers = 0;
    {
        procpool::mpi_pool pool;
        workers = pool.workers();
        mpi_rt = rt_p50_us(pool, 5000);
        mpi_submit = submit_per_s(pool, 100'000);
        mpi_map = map_items_per_s(pool, items);
        array_ms = array_task_ms(pool, 9);
    }
    const char* copy = std::getenv("PROCPOOL_MPI_COPY_SHARED_ARRAYS");
    const std::string array_key = copy != nullptr && std::string(copy) == "1"
                                      ? "mpi_pool_array64_by_value_ms"
                                      : "mpi_pool_array64_by_reference_ms";
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
        "\"process_pool_map_items_per_s\": %.0f, \"%s\": %.3f, \"memcpy_64mib_ms\": %.3f}\n",
        procpool::mpi_size(), workers, mpi_rt, mpi_submit, mpi_map, pp_rt, pp_submit, pp_map,
        array_key.c_str(), array_ms, memcpy_64mib_ms(9));
    return 0;
}
