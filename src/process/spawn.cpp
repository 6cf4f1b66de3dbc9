// Creating worker processes: one fork path for both start methods, and the set-up a new
// worker does before it serves (process group, signals, descriptors, limits, its region).
#include "process/spawn.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "ipc/fd.hpp"
#include "ipc/ring.hpp"
#include "process/fork_server.hpp"
#include "process/region.hpp"
#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/detail/state.hpp"

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

// The first steps of every new child that becomes a worker (at once, or later as a spare):
// _exit on exit(), die with whoever forked it, its own process group, default signals.
// False if that parent is already gone.
bool prepare_child(pid_t parent) noexcept {
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
    if (getppid() != parent) return false;
    // Its own process group: when it dies, the pool kills the group, so that processes a
    // task started do not outlive the worker (see kill_worker_group). A worker of a pool
    // that a task made stays in the group of the worker that made it: when that worker
    // dies, its pool's kill reaches this one's task processes too (which a group of their
    // own would take out of reach); they then outlive this worker until that one ends.
    if (!is_worker_process()) setpgid(0, 0);
    reset_signals_for_child();
    return true;
}

// A worker's big std::vector arguments are decoded into new vectors, freed after their
// task. glibc maps every allocation of 32 MiB or more afresh from the kernel and unmaps
// it when freed, so each such argument landed in pages never touched before: on a VM
// ~40x a memcpy into touched memory (docs/architecture.md, "First use"). Workers take
// all memory from the heap instead and keep up to 256 MiB of free memory at its top
// (more is given back when freed); the next big vector reuses the touched pages. Free
// memory below live allocations stays with the process, as glibc keeps it below 32 MiB.
// Not under a memory limit (see finish_worker). Without effect under a sanitizer's
// allocator.
void keep_freed_memory_for_reuse() noexcept {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

// The rest of a worker's start, once it has its descriptors and configuration: map the
// region, serve.
[[noreturn]] void finish_worker(const worker_fds& fds, const worker_config& cfg) {
    detail::shm_reseed_ids((static_cast<std::uint64_t>(getpid()) << 32) | 1);
    forget_fork_server_in_worker();
    detail::cancel_hook::forget_other_threads();
    // Under a memory limit the address space is what is counted: memory kept for reuse
    // would be taken from what the next task may allocate or map.
    if (cfg.memory_limit == 0) {
        keep_freed_memory_for_reuse();
    } else {
        detail::shm_keep_result_blocks(false);
    }
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

// The child's side of fork_worker: set up the process, map the region, serve.
[[noreturn]] void become_worker(const worker_fds& fds, pid_t parent, const worker_config& cfg) {
    if (!prepare_child(parent)) startup_failed(fds.ctl, startup_step::parent_gone, 0);
    close_other_fds({fds.region, fds.ctl, fds.wake, fds.out, fds.err});
    finish_worker(fds, cfg);
}

// A spare's life: set up all that does not depend on a pool, then wait on `sock` for one
// spawn request (the fork server forwards it as the pool sent it: fs_record, configuration,
// and 3 or 5 descriptors) and become that worker. Ends quietly if `sock` closes first.
[[noreturn]] void be_spare(int sock, pid_t parent) {
    if (!prepare_child(parent)) _exit(0);
    close_other_fds({sock});
    // Not zeroed: only the pages the request lands in are touched (each first touch is a
    // page fault, ~10 us on a VM; zeroing the whole MiB cost a spare ~2.5 ms).
    constexpr std::size_t cap = sizeof(fs_record) + max_config_bytes;
    std::unique_ptr<std::byte[]> buf(new (std::nothrow) std::byte[cap]);
    if (!buf) _exit(0);
    std::array<int, 5> fds{-1, -1, -1, -1, -1};
    std::size_t nfds = 0;
    long n = -1;
    do {
        n = ipc::recv_with_fds(sock, buf.get(), cap, fds, nfds);
    } while (n < 0 && errno == EINTR);
    if (n < static_cast<long>(sizeof(fs_record)) || (nfds != 3 && nfds != 5)) _exit(0);
    const worker_fds wf{fds[0], fds[1], fds[2], fds[3], fds[4]};
    close_other_fds({wf.region, wf.ctl, wf.wake, wf.out, wf.err});  // its socket too
    worker_config cfg;
    try {
        cfg = decode_config(buf.get() + sizeof(fs_record),
                            static_cast<std::size_t>(n) - sizeof(fs_record));
    } catch (...) {
        startup_failed(wf.ctl, startup_step::bad_config, 0);
    }
    buf.reset();
    finish_worker(wf, cfg);
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

pid_t fork_spare(int sock) noexcept {
    const pid_t parent = getpid();
    const pid_t pid = fork_signals_blocked();
    if (pid != 0) return pid;
    be_spare(sock, parent);
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
