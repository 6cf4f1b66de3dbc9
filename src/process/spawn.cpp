// Creating worker processes: one fork path for both start methods, and the set-up a new
// worker does before it serves (process group, signals, descriptors, limits, its region).
#include "process/spawn.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ipc/ring.hpp"
#include "process/region.hpp"
#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/shm.hpp"

namespace procpool::process {

// Sanitizer builds: a worker is a copy of its parent's heap, forked perhaps from a thread
// other than main, where LeakSanitizer cannot find the forking thread's stack; its leak
// check at exit (a task may call exit()) then reports the parent's live objects and turns
// the exit status into its own. Workers opt out through LSan's documented hook.
#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_LSAN 1
#endif
#endif
#ifdef PROCPOOL_LSAN
namespace {
std::atomic<bool> leak_check_off{false};
}  // namespace
extern "C" int __lsan_is_turned_off() {
    return leak_check_off.load() ? 1 : 0;
}
#endif

namespace {

// The child's side of fork_worker: set up the process, map the region, serve.
[[noreturn]] void become_worker(const worker_fds& fds, pid_t parent, const worker_config& cfg) {
#ifdef PROCPOOL_LSAN
    leak_check_off.store(true);
#endif
    // A task that calls exit() ends the worker with that status at once: the atexit
    // handlers and static destructors belong to the parent's program (run in a copy of
    // it, they may wait for threads or locks that do not exist here and hang the worker).
    // Registered last, this handler runs first.
    on_exit(
        [](int status, void*) {
            std::fflush(stdout);
            std::fflush(stderr);
            _exit(status);
        },
        nullptr);
    // Die with whoever forked us (one thread that lives as long as the pool: the fork
    // server, or the pool's supervisor), and catch the race where it died before prctl.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) startup_failed(fds.ctl, startup_step::parent_gone, 0);
    // Its own process group: when it dies, the pool kills the group, so that processes a
    // task started do not outlive the worker (see kill_worker_group).
    setpgid(0, 0);
    reset_signals_for_child();
    close_other_fds({fds.region, fds.ctl, fds.wake, fds.out, fds.err});
    detail::shm_reseed_ids((static_cast<std::uint64_t>(getpid()) << 32) | 1);
    if (!same_binary(cfg)) startup_failed(fds.ctl, startup_step::wrong_binary, 0);
    for (const auto& [k, v] : cfg.env) setenv(k.c_str(), v.c_str(), 1);
    if (cfg.memory_limit != 0) {
        rlimit rl{cfg.memory_limit, cfg.memory_limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            startup_failed(fds.ctl, startup_step::memory_limit, errno);
    }
    const std::size_t len = worker_region::mapping_size(cfg.ring_capacity);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fds.region, 0);
    if (p == MAP_FAILED) startup_failed(fds.ctl, startup_step::map_region, errno);
    ::close(fds.region);
    auto* region = static_cast<worker_region*>(p);
    if (region->magic != worker_region::magic_value) {
        startup_failed(fds.ctl, startup_step::bad_region, 0);
    }
    region->phase.store(phase_mapped, std::memory_order_seq_cst);
    serve_ring(region, fds.ctl, fds.wake, fds.out, fds.err, cfg);
}

}  // namespace

pid_t fork_signals_blocked() noexcept {
    sigset_t all;
    sigset_t old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const pid_t pid = fork();
    const int err = errno;
    if (pid != 0) pthread_sigmask(SIG_SETMASK, &old, nullptr);  // the child resets its own
    errno = err;
    return pid;
}

pid_t fork_worker(const worker_fds& fds, const std::byte* config, std::size_t config_len) noexcept {
    const pid_t parent = getpid();
    const pid_t pid = fork_signals_blocked();
    if (pid != 0) return pid;
    worker_config cfg;
    try {
        cfg = decode_config(config, config_len);
    } catch (...) {
        startup_failed(fds.ctl, startup_step::bad_config, 0);
    }
    become_worker(fds, parent, cfg);
}

void startup_failed(int ctl, startup_step step, int err) noexcept {
    const startup_report r{startup_report_tag, static_cast<std::uint32_t>(step), err, 0};
    [[maybe_unused]] auto n = send(ctl, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT);
    _exit(startup_exit_code);
}

void close_other_fds(std::initializer_list<int> keep) noexcept {
    std::vector<int> k(keep);
    std::sort(k.begin(), k.end());
    unsigned lo = 3;
    for (int fd : k) {
        if (fd < 3) continue;
        if (static_cast<unsigned>(fd) > lo) close_range(lo, static_cast<unsigned>(fd) - 1, 0);
        lo = static_cast<unsigned>(fd) + 1;
    }
    close_range(lo, ~0u, 0);
}

void reset_signals_for_child() noexcept {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        sigaction(s, &dfl, nullptr);
    }
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, nullptr);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
}

}  // namespace procpool::process
