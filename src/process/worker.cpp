#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ipc/fd.hpp"
#include "ipc/ring.hpp"
#include "process/protocol.hpp"
#include "procpool/detail/remote_call.hpp"
#include "procpool/detail/sync.hpp"

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
extern "C" int __lsan_is_turned_off() { return leak_check_off.load() ? 1 : 0; }
#endif

namespace {

/// Exit code of a worker whose request ring was found damaged.
constexpr int corrupt_exit_code = 76;

class worker {
  public:
    worker(ipc::worker_region* r, int ctl, int evfd, std::size_t threshold)
        : threshold_(threshold),
          r_(r),
          ctl_(ctl),
          evfd_(evfd),
          req_(&r->requests, r->request_data(), r->ring_capacity),
          cmp_(&r->completions, r->completion_data(), r->ring_capacity) {}

    [[noreturn]] void run(const worker_config& cfg) {
        if (cfg.init_invoker != 0) {
            r_->phase.store(ipc::phase_initializer, std::memory_order_seq_cst);
            if (!run_initializer(cfg)) _exit(startup_exit_code);
        }
        r_->phase.store(ipc::phase_serving, std::memory_order_seq_cst);
        // Tells the parent, before any task can run, that start-up is over: from then on a
        // death is a task's doing, not a failed start (the parent keeps that fact itself).
        std::vector<detail::shm_ref> none;
        complete(0, detail::run_status::ready, 0, none);
        std::int32_t done = 0;
        for (;;) {
            ipc::frame_header h{};
            const std::byte* payload = nullptr;
            wait_request(h, payload);
            if (h.type == msg_exit) _exit(0);
            if (h.type == msg_forget) {
                std::uint64_t id = 0;
                std::memcpy(&id, payload, sizeof id);
                cache_.erase(id);
                req_.pop(h);
                continue;
            }
            run_task(h, payload);
            if (cfg.max_tasks > 0 && ++done >= cfg.max_tasks) _exit(0);
        }
    }

  private:
    bool run_initializer(const worker_config& cfg) {
        auto inv = reinterpret_cast<detail::invoker_fn>(
            const_cast<void*>(detail::code_address(cfg.init_invoker)));
        wire::reader in(cfg.init_args.data(), cfg.init_args.size());
        out_.clear();
        wire::writer w(out_);
        const detail::run_status st = inv(cfg.init_fn, in, w);
        if (st == detail::run_status::value) return true;
        if (st == detail::run_status::serialization) {
            // Report it with the same shape as an exception.
            std::vector<std::byte> msg;
            wire::writer mw(msg);
            wire::reader rin(out_.data(), out_.size());
            std::string text = detail::decode_message(rin);
            detail::encode_message(mw, "procpool::serialization_error");
            detail::encode_message(mw, text);
            out_ = std::move(msg);
        }
        std::vector<detail::shm_ref> none;
        complete(0, detail::run_status::init_failed, 0, none);
        return false;
    }

    // True if a request is there; a corrupt request ring means the region was damaged (by
    // a task of ours: the parent only writes well-formed frames), so the worker stops.
    bool next_request(ipc::frame_header& h, const std::byte*& payload) {
        const ipc::peek_result r = req_.peek(h, payload);
        if (r == ipc::peek_result::corrupt) _exit(corrupt_exit_code);
        return r == ipc::peek_result::frame;
    }

    void wait_request(ipc::frame_header& h, const std::byte*& payload) {
        if (detail::spin_until([&] { return next_request(h, payload); })) return;
        auto* ctl = req_.ctl();
        for (;;) {
            const std::uint32_t seen = ctl->data_futex.load(std::memory_order_acquire);
            ctl->consumer_sleeping.store(1, std::memory_order_seq_cst);
            if (next_request(h, payload)) {
                ctl->consumer_sleeping.store(0, std::memory_order_relaxed);
                return;
            }
            detail::futex_wait(&ctl->data_futex, seen, nullptr, true);
            if (next_request(h, payload)) return;
        }
    }

    void run_task(const ipc::frame_header& h, const std::byte* payload) {
        task_header th{};
        std::memcpy(&th, payload, sizeof th);
        // Descriptors of shared arrays come first, in the order the parent sent them.
        if (th.nattach != 0) {
            try {
                receive_attachments(ctl_, th.nattach, cache_, false);
            } catch (...) {  // NOLINT(bugprone-empty-catch)
                // Unknown ids then fail the task's deserialization with a clear message.
            }
        }
        const std::int64_t start = now_ns();
        r_->started_ns.store(start, std::memory_order_relaxed);
        // seq_cst store then seq_cst reads of the cancel words: pairs with the parent,
        // which writes a cancel word and then reads started_seq (see process_pool.cpp).
        r_->started_seq.store(th.seq, std::memory_order_seq_cst);
        out_.clear();
        std::vector<detail::shm_ref> outgoing;
        detail::run_status st = detail::run_status::cancelled;
        if (!r_->is_skipped(th.seq)) {
            detail::attachment_scope scope(&outgoing, &cache_, threshold_);
            wire::writer w(out_);
            auto inv = reinterpret_cast<detail::invoker_fn>(
                const_cast<void*>(detail::code_address(th.invoker)));
            if (h.type == msg_task_oob) {
                std::uint64_t size = 0;
                std::memcpy(&size, payload + sizeof th, sizeof size);
                req_.pop(h);
                st = run_oob(inv, th.fn, size, w);
            } else {
                wire::reader in(payload + sizeof th, h.len - sizeof th);
                st = inv(th.fn, in, w);
                req_.pop(h);
            }
        } else {
            req_.pop(h);
            if (h.type == msg_task_oob) discard_oob();
        }
        complete(th.seq, st, now_ns() - start, outgoing);
    }

    void discard_oob() {
        int fd = -1;
        std::size_t nfds = 0;
        char tag = 0;
        if (ipc::recv_with_fds(ctl_, &tag, 1, std::span<int>(&fd, 1), nfds) > 0 && nfds == 1) {
            ::close(fd);
        }
    }

    detail::run_status run_oob(detail::invoker_fn inv, std::uint64_t fn, std::uint64_t size,
                               wire::writer& w) {
        int fd = -1;
        std::size_t nfds = 0;
        char tag = 0;
        if (ipc::recv_with_fds(ctl_, &tag, 1, std::span<int>(&fd, 1), nfds) <= 0 || nfds != 1) {
            detail::encode_message(w, "worker could not receive the task's arguments");
            return detail::run_status::serialization;
        }
        ipc::unique_fd owned(fd);
        void* p = size == 0 ? nullptr : mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            detail::encode_message(w, "worker could not map the task's arguments");
            return detail::run_status::serialization;
        }
        wire::reader in(static_cast<const std::byte*>(p), size);
        const detail::run_status st = inv(fn, in, w);
        if (p != nullptr) munmap(p, size);
        return st;
    }

    // Publishes one completion from out_ and wakes the parent if it sleeps.
    void complete(std::uint64_t seq, detail::run_status st, std::int64_t run_ns,
                  std::vector<detail::shm_ref>& outgoing) {
        if (!outgoing.empty() && !send_attachments(ctl_, outgoing, false)) {
            outgoing.clear();
            out_.clear();
            wire::writer w(out_);
            detail::encode_message(w, "worker could not send a shared array back");
            st = detail::run_status::serialization;
        }
        const completion_header ch{seq, run_ns, static_cast<std::uint32_t>(outgoing.size()), 0};
        outgoing.clear();
        const std::size_t total = sizeof ch + out_.size();
        std::uint32_t type = static_cast<std::uint32_t>(st);
        std::byte* dst = nullptr;
        if (total > cmp_.max_payload()) {
            if (!send_oob()) {
                out_.clear();
                wire::writer w(out_);
                detail::encode_message(w, "worker could not send a large result");
                type = static_cast<std::uint32_t>(detail::run_status::serialization);
            } else {
                type |= oob_flag;
                const std::uint64_t size = out_.size();
                out_.resize(sizeof size);
                std::memcpy(out_.data(), &size, sizeof size);
            }
        }
        const auto len = static_cast<std::uint32_t>(sizeof ch + out_.size());
        dst = reserve(len);
        std::memcpy(dst, &ch, sizeof ch);
        if (!out_.empty()) std::memcpy(dst + sizeof ch, out_.data(), out_.size());
        cmp_.commit(len, type);
        if (r_->parent_sleeping.load(std::memory_order_seq_cst) != 0 &&
            r_->parent_sleeping.exchange(0, std::memory_order_acq_rel) != 0) {
            const std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(evfd_, &one, sizeof one);
        }
    }

    bool send_oob() {
        ipc::unique_fd fd(memfd_create("procpool-result", MFD_CLOEXEC | MFD_ALLOW_SEALING));
        if (!fd || ftruncate(fd.get(), static_cast<off_t>(out_.size())) != 0) return false;
        std::size_t off = 0;
        while (off < out_.size()) {
            ssize_t n =
                pwrite(fd.get(), out_.data() + off, out_.size() - off, static_cast<off_t>(off));
            if (n <= 0) return false;
            off += static_cast<std::size_t>(n);
        }
        // The parent maps it: sealed, it cannot shrink under that mapping (see check_mappable).
        if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
            return false;
        }
        const char tag = 'R';
        const int f = fd.get();
        return ipc::send_with_fds(ctl_, &tag, 1, std::span<const int>(&f, 1));
    }

    std::byte* reserve(std::uint32_t len) {
        std::byte* p = nullptr;
        const auto room = [&] {
            p = cmp_.try_reserve(len);
            if (cmp_.corrupt()) _exit(corrupt_exit_code);
            return p != nullptr;
        };
        if (detail::spin_until(room)) return p;
        auto* ctl = cmp_.ctl();
        for (;;) {
            const std::uint32_t seen = ctl->space_futex.load(std::memory_order_acquire);
            ctl->producer_sleeping.store(1, std::memory_order_seq_cst);
            if (room()) {
                ctl->producer_sleeping.store(0, std::memory_order_relaxed);
                return p;
            }
            // The parent must drain: make sure it is awake.
            const std::uint64_t one = 1;
            [[maybe_unused]] auto n = ::write(evfd_, &one, sizeof one);
            detail::futex_wait(&ctl->space_futex, seen, nullptr, true);
        }
    }

    std::size_t threshold_;
    ipc::worker_region* r_;
    int ctl_;
    int evfd_;
    ipc::ring req_;
    ipc::ring cmp_;
    std::vector<std::byte> out_;
    detail::shm_table cache_;  // shared arrays this worker has mapped, by the parent's id
};

}  // namespace

bool send_attachments(int sock, const std::vector<detail::shm_ref>& blocks,
                      bool nonblocking) noexcept {
    for (const auto& b : blocks) {
        const attach_msg m{b->id(), b->bytes(), b->writable() ? 1u : 0u, 0};
        const int fd = b->fd();
        if (!ipc::send_with_fds(sock, &m, sizeof m, std::span<const int>(&fd, 1), nonblocking)) {
            return false;
        }
    }
    return true;
}

namespace {
bool is_memfd(int fd) {
    char link[64];
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = readlink(path.c_str(), link, sizeof link - 1);
    return n > 7 && std::memcmp(link, "/memfd:", 7) == 0;
}
}  // namespace

void check_mappable(int fd, std::uint64_t bytes, bool require_memfd) {
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        throw protocol_violation("a descriptor that is not a regular file or memfd");
    }
    if (static_cast<std::uint64_t>(st.st_size) < bytes) {
        throw protocol_violation("a block of " + std::to_string(st.st_size) +
                                 " bytes announced as " + std::to_string(bytes));
    }
    // A memfd can be shrunk by whoever holds it unless sealed; a mapped byte past its end
    // would then kill this process with SIGBUS. A file on disk cannot be sealed at all.
    const bool memfd = is_memfd(fd);
    if (require_memfd && !memfd) throw protocol_violation("a block that is not a memfd");
    if (memfd && (fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK) == 0) {
        throw protocol_violation("a shared block that is not sealed against shrinking");
    }
}

void receive_attachments(int sock, std::uint32_t n, detail::shm_table& table, bool from_worker) {
    if (from_worker && n > max_attachments) {
        throw protocol_violation("a result announcing " + std::to_string(n) + " shared blocks");
    }
    // Every record is taken off the socket before any is judged, so that a refused one
    // leaves the channel in step for the next message.
    std::vector<std::pair<attach_msg, ipc::unique_fd>> got;
    for (std::uint32_t i = 0; i < n; ++i) {
        attach_msg m{};
        int fd = -1;
        std::size_t nfds = 0;
        const long len =
            ipc::recv_with_fds(sock, &m, sizeof m, std::span<int>(&fd, 1), nfds, from_worker);
        ipc::unique_fd owned(nfds == 1 ? fd : -1);
        if (len != static_cast<long>(sizeof m) || nfds != 1) {
            if (from_worker) throw protocol_violation("a shared block's descriptor was missing");
            throw serialization_error("a shared array's descriptor did not arrive");
        }
        got.emplace_back(m, std::move(owned));
    }
    for (auto& [m, fd] : got) {
        if (from_worker) {
            if (!is_memfd(fd.get())) {
                throw serialization_error(
                    "a task returned a file-backed array (mapped_file_array): the task could "
                    "truncate the file under the parent's mapping. Return the file's path and "
                    "open it in the parent instead");
            }
            check_mappable(fd.get(), m.bytes, true);
        }
        table[m.id] = detail::shm_block::adopt(fd.release(), m.bytes, m.writable != 0, from_worker);
    }
}

void startup_failed(int ctl, startup_step step, int err) noexcept {
    const startup_report r{startup_report_tag, static_cast<std::uint32_t>(step), err, 0};
    [[maybe_unused]] auto n = send(ctl, &r, sizeof r, MSG_NOSIGNAL | MSG_DONTWAIT);
    _exit(startup_exit_code);
}

std::string describe_startup(const startup_report& r) {
    std::string what;
    switch (static_cast<startup_step>(r.step)) {
        case startup_step::parent_gone:
            what = "its parent process exited first";
            break;
        case startup_step::wrong_binary:
            what = "it runs a different build of the program than the pool";
            break;
        case startup_step::map_region:
            what = "mapping its shared region failed";
            break;
        case startup_step::bad_region:
            what = "its shared region was not set up";
            break;
        case startup_step::bad_config:
            what = "its configuration could not be decoded";
            break;
        case startup_step::memory_limit:
            what = "setting its memory limit (RLIMIT_AS) failed";
            break;
        default:
            what = "unknown start-up step " + std::to_string(r.step);
    }
    if (r.err != 0) what += std::string(": ") + std::strerror(r.err);
    return what;
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

[[noreturn]] void run_worker(int region_fd, int ctl_fd, int event_fd, pid_t parent,
                             const worker_config& cfg) {
    // Die with whoever forked us (one thread that lives as long as the pool: the fork
    // server, or the pool's supervisor), and catch the race where it died before prctl.
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
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) startup_failed(ctl_fd, startup_step::parent_gone, 0);
    // Its own process group: when it dies, the pool kills the group, so that processes a
    // task started do not outlive the worker (see kill_worker_group).
    setpgid(0, 0);
    reset_signals_for_child();
    close_other_fds({region_fd, ctl_fd, event_fd});
    detail::shm_reseed_ids((static_cast<std::uint64_t>(getpid()) << 32) | 1);
    if (cfg.anchor != reinterpret_cast<std::uintptr_t>(&detail::code_anchor)) {
        startup_failed(ctl_fd, startup_step::wrong_binary, 0);
    }
    for (const auto& [k, v] : cfg.env) setenv(k.c_str(), v.c_str(), 1);
    if (cfg.memory_limit != 0) {
        rlimit rl{cfg.memory_limit, cfg.memory_limit};
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            startup_failed(ctl_fd, startup_step::memory_limit, errno);
    }
    const std::size_t len = ipc::worker_region::mapping_size(cfg.ring_capacity);
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, region_fd, 0);
    if (p == MAP_FAILED) startup_failed(ctl_fd, startup_step::map_region, errno);
    ::close(region_fd);
    auto* region = static_cast<ipc::worker_region*>(p);
    if (region->magic != ipc::worker_region::magic_value) {
        startup_failed(ctl_fd, startup_step::bad_region, 0);
    }
    region->phase.store(ipc::phase_mapped, std::memory_order_seq_cst);
    worker w(region, ctl_fd, event_fd, static_cast<std::size_t>(cfg.shared_threshold));
    w.run(cfg);
}

}  // namespace procpool::process
