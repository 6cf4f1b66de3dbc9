// What waiting costs: tasks of a given length run one at a time (`submit(f).get()`), so
// that both sides sleep between tasks once the task outlasts their spin. The overhead is
// the round trip minus the task's own time. It is printed next to the machine's floor for
// the same pattern, measured in the same run: two bare processes handing a request and a
// reply to each other through shared memory, each sleeping on a futex while the other
// works, exactly two wake-ups per round (one each way). A thread_pool runs the same loop
// as a second reference: two wake-ups as well, within one process.
//
//   bench_waiting [--reps N] [--rounds R] [--lengths us,us,...]
//
// Each row: medians over R rounds of the per-round p50 and p90 of N round trips.
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <procpool/process_pool.hpp>
#include <procpool/thread_pool.hpp>

namespace {

using clk = std::chrono::steady_clock;

// Runs for `us` microseconds of wall time; returns how many clock reads that took.
int busy(int us) {
    const auto end = clk::now() + std::chrono::microseconds(us);
    int n = 0;
    while (clk::now() < end) ++n;
    return n;
}

double percentile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

struct cell {
    double p50 = 0;
    double p90 = 0;
};

// Overheads (round trip minus the task's time, us) of `reps` calls of `once()`.
template <class Once>
cell measure(int reps, int us, Once&& once) {
    std::vector<double> v;
    v.reserve(static_cast<std::size_t>(reps));
    for (int i = 0; i < reps; ++i) {
        const auto t0 = clk::now();
        once();
        v.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count() - us);
    }
    return {percentile(v, 0.5), percentile(v, 0.9)};
}

// ---- the floor: two bare processes, a futex each way ---------------------------------

struct floor_shared {
    std::atomic<std::uint32_t> request{0};  // bumped by the parent; the task length follows
    std::atomic<std::uint32_t> reply{0};    // bumped by the child
    std::atomic<int> us{0};
    std::atomic<int> stop{0};
};

void futex_wait_on(std::atomic<std::uint32_t>* w, std::uint32_t seen) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAIT, seen, nullptr, nullptr, 0);
}
void futex_wake_on(std::atomic<std::uint32_t>* w) {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(w), FUTEX_WAKE, 1, nullptr, nullptr, 0);
}

// A child that sleeps until a request, runs it, replies and wakes the parent. Always
// sleeping (no spin) on both sides: the floor of two wake-ups per round trip.
class floor_pair {
  public:
    floor_pair() {
        void* p = mmap(nullptr, sizeof(floor_shared), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) std::abort();
        s_ = new (p) floor_shared();
        child_ = fork();
        if (child_ == 0) {
            std::uint32_t seen = 0;
            for (;;) {
                while (s_->request.load() == seen) futex_wait_on(&s_->request, seen);
                seen = s_->request.load();
                if (s_->stop.load() != 0) _exit(0);
                busy(s_->us.load());
                s_->reply.fetch_add(1);
                futex_wake_on(&s_->reply);
            }
        }
    }
    floor_pair(const floor_pair&) = delete;
    floor_pair& operator=(const floor_pair&) = delete;
    ~floor_pair() {
        s_->stop.store(1);
        s_->request.fetch_add(1);
        futex_wake_on(&s_->request);
        waitpid(child_, nullptr, 0);
        munmap(s_, sizeof(floor_shared));
    }
    void once(int us) {
        const std::uint32_t seen = s_->reply.load();
        s_->us.store(us);
        s_->request.fetch_add(1);
        futex_wake_on(&s_->request);
        while (s_->reply.load() == seen) futex_wait_on(&s_->reply, seen);
    }

  private:
    floor_shared* s_ = nullptr;
    pid_t child_ = -1;
};

// The seed's task, on tiny sizes below: what is left is the fixed cost of a map.
[[gnu::noinline]] double heavy_calc(long n) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += std::sqrt(static_cast<double>(i));
    return s;
}

// Two plain threads, as bench_process_pool's heavy_calc reference: one made, one joined.
double on_two_threads(long n) {
    double a = 0;
    double b = 0;
    std::thread t([&a, n] { a = heavy_calc(n) + heavy_calc(n); });
    b = heavy_calc(n) + heavy_calc(n);
    t.join();
    return a + b;
}

std::vector<int> parse_lengths(const char* s) {
    std::vector<int> out;
    std::string str(s);
    std::size_t pos = 0;
    while (pos <= str.size()) {
        const std::size_t comma = str.find(',', pos);
        out.push_back(std::atoi(str.substr(pos, comma - pos).c_str()));
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);
    int reps = 300;
    int rounds = 5;
    std::vector<int> lengths{0, 10, 50, 200, 1000, 5000};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--reps") == 0) {
            reps = std::atoi(argv[i + 1]);
        } else if (std::strcmp(argv[i], "--rounds") == 0) {
            rounds = std::atoi(argv[i + 1]);
        } else if (std::strcmp(argv[i], "--lengths") == 0) {
            lengths = parse_lengths(argv[i + 1]);
        } else {
            std::fprintf(stderr, "usage: %s [--reps N] [--rounds R] [--lengths us,us,...]\n",
                         argv[0]);
            return 2;
        }
    }
    if (reps < 1 || rounds < 1 || lengths.empty()) {
        std::fprintf(stderr, "bench_waiting: --reps and --rounds must be at least 1\n");
        return 2;
    }

    procpool::process_pool pool({.workers = 2});
    procpool::thread_pool threads({.workers = 2});
    floor_pair floor;
    for (int i = 0; i < 500; ++i) pool.submit(busy, 0).get();

    std::printf("overhead per task run one at a time: round trip minus the task, us "
                "(medians over %d rounds of the p50 / p90 of %d round trips)\n",
                rounds, reps);
    std::printf("| task | floor: two processes, futex each way | process_pool | thread_pool | "
                "process_pool / floor (p50) |\n|---:|---:|---:|---:|---:|\n");
    for (int us : lengths) {
        const int n = us >= 1000 ? std::max(reps / 4, 1) : reps;
        std::vector<double> f50, f90, p50, p90, t50, t90;
        for (int r = 0; r < rounds; ++r) {  // the three alternate within each round
            const cell f = measure(n, us, [&] { floor.once(us); });
            const cell p = measure(n, us, [&] { pool.submit(busy, us).get(); });
            const cell t = measure(n, us, [&] { threads.submit(busy, us).get(); });
            f50.push_back(f.p50);
            f90.push_back(f.p90);
            p50.push_back(p.p50);
            p90.push_back(p.p90);
            t50.push_back(t.p50);
            t90.push_back(t.p90);
        }
        const double fp = percentile(f50, 0.5);
        const double pp = percentile(p50, 0.5);
        std::printf("| %d us | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f | %.2f |\n", us, fp,
                    percentile(f90, 0.5), pp, percentile(p90, 0.5), percentile(t50, 0.5),
                    percentile(t90, 0.5), fp > 0 ? pp / fp : 0.0);
        std::fflush(stdout);
    }

    // The fixed cost of the seed's map of four tasks, from sleep (everyone idle for 2 ms
    // first, as between the maps of a program that does other work): the tasks are tiny,
    // so the time is the cost of starting them on two cores and getting the results back.
    std::printf("\nfixed cost of four tiny heavy_calc tasks on two cores, from sleep, us "
                "(medians over %d rounds of the p50 of %d)\n| shape | p50 |\n|---|---:|\n",
                rounds, std::max(reps / 4, 1));
    const std::vector<long> tiny(4, 1000);
    std::vector<double> pm;
    std::vector<double> tm;
    for (int r = 0; r < rounds; ++r) {
        std::vector<double> a;
        std::vector<double> b;
        for (int i = 0; i < std::max(reps / 4, 1); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            auto t0 = clk::now();
            auto res = pool.map(heavy_calc, tiny);
            a.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            t0 = clk::now();
            const double v = on_two_threads(1000);
            b.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
            if (res.size() != 4 || v < 0) std::abort();
        }
        pm.push_back(percentile(a, 0.5));
        tm.push_back(percentile(b, 0.5));
    }
    std::printf("| process_pool::map(heavy_calc, 4 x 1000) | %.1f |\n", percentile(pm, 0.5));
    std::printf("| two plain threads, 2 x 1000 each (one made, one joined) | %.1f |\n",
                percentile(tm, 0.5));
    return 0;
}
