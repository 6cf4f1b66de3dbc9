// The machine's cost of touching a page of shared memory for the first time, the floor
// under a new pool's first use (docs/architecture.md, "First use"). For a fresh 1 MiB
// memfd, per 4 KiB page (medians over --reps, microseconds):
//   new_write      first write of new memory through its first mapping
//   again_write    the same pages written again (the steady state)
//   remap_read     the same, now resident, pages read through a second, new mapping
//   populated_write a third new mapping populated with madvise(MADV_POPULATE_WRITE), then written
//
//   bench_page_touch [--reps N]        (default 9); prints one JSON line
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

using clk = std::chrono::steady_clock;
constexpr std::size_t kBytes = 1 << 20;
constexpr std::size_t kPage = 4096;
constexpr double kPages = kBytes / kPage;

double per_page_us(clk::time_point a, clk::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count() / kPages;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

char* map_shared(int fd) {
    void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        std::perror("mmap");
        std::exit(1);
    }
    return static_cast<char*>(p);
}

}  // namespace

int main(int argc, char** argv) {
    int reps = 9;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = std::max(1, std::atoi(argv[++i]));
        } else {
            std::fprintf(stderr, "usage: %s [--reps N]\n", argv[0]);
            return 2;
        }
    }
    std::vector<double> fresh, again, remap, populated;
    for (int r = 0; r < reps; ++r) {
        const int fd = memfd_create("bench-page-touch", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, kBytes) != 0) {
            std::perror("memfd");
            return 1;
        }
        char* a = map_shared(fd);
        auto t0 = clk::now();
        for (std::size_t i = 0; i < kBytes; i += kPage) a[i] = 1;
        auto t1 = clk::now();
        for (std::size_t i = 0; i < kBytes; i += kPage) a[i] = 2;
        auto t2 = clk::now();
        fresh.push_back(per_page_us(t0, t1));
        again.push_back(per_page_us(t1, t2));

        char* b = map_shared(fd);
        unsigned sum = 0;
        t0 = clk::now();
        for (std::size_t i = 0; i < kBytes; i += kPage) sum += static_cast<unsigned char>(b[i]);
        t1 = clk::now();
        remap.push_back(per_page_us(t0, t1));
        if (sum != 2 * kPages) return 1;

        char* c = map_shared(fd);
#ifdef MADV_POPULATE_WRITE
        if (madvise(c, kBytes, MADV_POPULATE_WRITE) != 0) {
            std::perror("madvise(MADV_POPULATE_WRITE): the populated column would be wrong");
            return 1;
        }
#else
        std::fprintf(stderr, "bench_page_touch: built without MADV_POPULATE_WRITE\n");
        return 1;
#endif
        t0 = clk::now();
        for (std::size_t i = 0; i < kBytes; i += kPage) c[i] = 3;
        t1 = clk::now();
        populated.push_back(per_page_us(t0, t1));

        munmap(a, kBytes);
        munmap(b, kBytes);
        munmap(c, kBytes);
        close(fd);
    }
    std::printf(
        "{\"reps\": %d, \"new_write_us\": %.2f, \"again_write_us\": %.3f, \"remap_read_us\": %.2f, "
        "\"populated_write_us\": %.2f}\n",
        reps, median(fresh), median(again), median(remap), median(populated));
    return 0;
}
