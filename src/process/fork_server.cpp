#include "process/fork_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "process/protocol.hpp"
#include "process/spawn.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/process_pool.hpp"

namespace procpool::process {

namespace {

std::mutex server_mutex;
ipc::unique_fd server_sock;
ipc::unique_fd server_pidfd;  // of server_pid; empty without pidfd_open
pid_t server_pid = -1;

std::vector<std::string> dropped_env_prefixes;  // under server_mutex

constexpr std::size_t max_request = max_config_bytes + sizeof(fs_record);
// Spares kept once pools are in use: a pool of two starts without waiting for a fork, and
// a replacement for a dead worker usually finds one.
constexpr std::size_t max_spares = 2;
constexpr int spare_after_ms = 20;

// The fork server's event loop. Single-threaded by construction: it was forked from a
// program that had not started threads (or, if it had, only this thread was copied).
//
// It does not use PR_SET_PDEATHSIG: that signal follows the *thread* that forked, so a
// server started by init() on a thread that later exits would die with that thread. It
// ends instead when the program's end of `sock` closes (every descriptor closes when a
// process dies, SIGKILL included), and, in case a forked child of the program still
// holds that end, when it finds itself re-parented.
// In a new fork server (single-threaded, so setenv is safe): removes the variables
// drop_env_in_workers named.
void drop_env(const std::vector<std::string>& prefixes) {
    if (prefixes.empty()) return;
    std::vector<std::string> names;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        const std::string_view entry(*e);
        for (const auto& p : prefixes) {
            if (entry.starts_with(p)) {
                names.emplace_back(entry.substr(0, entry.find('=')));
                break;
            }
        }
    }
    for (const auto& n : names) unsetenv(n.c_str());
}

[[noreturn]] void serve(int sock, pid_t parent) {
    if (getppid() != parent) _exit(0);
    prctl(PR_SET_NAME, "procpool-forksrv");
    reset_signals_for_child();
    close_other_fds({sock});
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, nullptr);
    const int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) _exit(1);

    std::vector<int> channels;   // open pool channels
    std::map<pid_t, int> owner;  // worker pid -> channel fd (-1 once closed)
    std::vector<std::byte> buf(max_request);

    // Spares: children forked ahead of need, set up as far as a worker can be without a
    // pool, each waiting on its own socket for a spawn request (see fork_spare). A request
    // then costs a message instead of a fork. None exist until the first request (a program
    // that makes no process pool forks none); they are made while no request waits.
    struct spare {
        pid_t pid;
        int sock;
    };
    std::vector<spare> spares;
    std::size_t want_spares = 0;
    auto make_spare = [&] {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            want_spares = spares.size();  // no more tries until the next request
            return;
        }
        const pid_t pid = fork_spare(sv[1]);
        close(sv[1]);
        if (pid < 0) {
            close(sv[0]);
            want_spares = spares.size();
            return;
        }
        spares.push_back({pid, sv[0]});
    };
    // Hands a spawn request to a spare; its pid, or -1 if none took it.
    auto assign_spare = [&](const std::byte* msg, std::size_t len, std::span<const int> fds) {
        while (!spares.empty()) {
            const spare s = spares.back();
            if (ipc::send_with_fds(s.sock, msg, len, fds)) {
                spares.pop_back();
                close(s.sock);
                return s.pid;
            }
            // The message, not the spare: keep it and fork for this request instead.
            if (errno == EMSGSIZE || errno == ENOBUFS || errno == ENOMEM) return pid_t{-1};
            spares.pop_back();
            close(s.sock);
            kill(s.pid, SIGKILL);  // gone or stuck: reaped below like any child
        }
        return pid_t{-1};
    };

    // A worker leads its own process group: killing the group takes whatever its tasks
    // started along with it.
    auto kill_workers_of = [&](int ch) {
        for (auto& [pid, c] : owner) {
            if (c == ch) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                c = -1;
            }
        }
    };
    auto kill_all_and_exit = [&] {
        for (auto& [pid, c] : owner) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
        }
        for (const spare& sp : spares) kill(sp.pid, SIGKILL);
        _exit(0);
    };

    for (;;) {
        std::vector<pollfd> pfds;
        pfds.push_back({sock, POLLIN, 0});
        pfds.push_back({sigfd, POLLIN, 0});
        for (int ch : channels) pfds.push_back({ch, POLLIN, 0});
        // Short of spares: make them once nothing has happened for spare_after_ms, so that
        // forking does not compete for the CPUs with the workers just started (nor delay
        // the exit notices a pool's shutdown waits for).
        const bool short_of_spares = spares.size() < want_spares;
        const int ready = poll(pfds.data(), pfds.size(), short_of_spares ? spare_after_ms : 1000);
        if (ready < 0) {
            if (errno == EINTR) continue;
            kill_all_and_exit();
        }
        if (getppid() != parent) kill_all_and_exit();
        if (ready == 0) {
            // Every missing spare, one after another while nothing arrives: a pool of two
            // made after a pause then finds both (not one and a fork on its critical
            // path), and a request or exit notice that comes meanwhile waits for one fork
            // at most (a fork takes longer the more memory this process has).
            while (spares.size() < want_spares) {
                make_spare();
                if (spares.size() < want_spares && poll(pfds.data(), pfds.size(), 0) != 0) break;
            }
            continue;
        }
        if (pfds[0].revents != 0) {
            int fd = -1;
            std::size_t nfds = 0;
            char tag = 0;
            long n = ipc::recv_with_fds(sock, &tag, 1, std::span<int>(&fd, 1), nfds);
            if (n <= 0) kill_all_and_exit();  // the program is gone: take its workers along
            if (nfds == 1) channels.push_back(fd);
        }
        if (pfds[1].revents != 0) {
            signalfd_siginfo si;
            while (read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
            }
            int status = 0;
            pid_t pid;
            for (;;) {
                // Look before reaping: while the worker is a zombie its pid cannot be
                // reused, so killing its process group reaches only what it left behind.
                siginfo_t si{};
                if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0) {
                    break;
                }
                kill(-si.si_pid, SIGKILL);
                pid = waitpid(si.si_pid, &status, WNOHANG);
                if (pid <= 0) break;
                auto it = owner.find(pid);
                if (it == owner.end()) {
                    // A spare that died before its request (killed from outside).
                    for (auto sp = spares.begin(); sp != spares.end(); ++sp) {
                        if (sp->pid != pid) continue;
                        close(sp->sock);
                        spares.erase(sp);
                        break;
                    }
                    continue;
                }
                if (it->second >= 0) {
                    fs_record r{fs_exited, status, static_cast<std::uint64_t>(pid)};
                    send(it->second, &r, sizeof r, MSG_NOSIGNAL);
                }
                owner.erase(it);
            }
        }
        for (std::size_t i = 2; i < pfds.size(); ++i) {
            if (pfds[i].revents == 0) continue;
            const int ch = pfds[i].fd;
            // region, control socket, wake-up pipe; with capture_output, stdout and stderr
            std::array<int, 5> fds{-1, -1, -1, -1, -1};
            std::size_t nfds = 0;
            long n = ipc::recv_with_fds(ch, buf.data(), buf.size(), fds, nfds);
            if (n <= 0) {
                kill_workers_of(ch);
                close(ch);
                std::erase(channels, ch);
                continue;
            }
            fs_record req{};
            if (static_cast<std::size_t>(n) < sizeof req || (nfds != 3 && nfds != 5)) {
                for (std::size_t k = 0; k < nfds; ++k) close(fds[k]);
                continue;
            }
            std::memcpy(&req, buf.data(), sizeof req);
            fs_record reply{fs_spawned, 0, req.token};
            want_spares = max_spares;
            pid_t child = assign_spare(buf.data(), static_cast<std::size_t>(n),
                                       std::span<const int>(fds.data(), nfds));
            if (child < 0) {
                child = fork_worker({fds[0], fds[1], fds[2], fds[3], fds[4]},
                                    buf.data() + sizeof req,
                                    static_cast<std::size_t>(n) - sizeof req);
            }
            for (std::size_t k = 0; k < nfds; ++k) close(fds[k]);
            if (child < 0) {
                reply = fs_record{fs_spawn_failed, errno, req.token};
            } else {
                reply.value = child;
                owner[child] = ch;
            }
            send(ch, &reply, sizeof reply, MSG_NOSIGNAL);
        }
    }
}

}  // namespace

int current_thread_count() noexcept {
    FILE* f = std::fopen("/proc/self/status", "re");
    if (f == nullptr) return 1;
    char line[256];
    int n = 1;
    while (std::fgets(line, sizeof line, f) != nullptr) {
        if (std::strncmp(line, "Threads:", 8) == 0) {
            n = std::atoi(line + 8);
            break;
        }
    }
    std::fclose(f);
    return n;
}

namespace {

// Forks a new fork server from this process. Called with server_mutex held.
void start_server_locked() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        ipc::throw_errno("socketpair for the fork server");
    }
    // Unflushed stdio buffers would otherwise be written again by every worker.
    std::fflush(nullptr);
    // Computed here, once, so that the server's workers inherit it: a worker forked from a
    // server that copied a threaded program must not call into the dynamic loader.
    static_cast<void>(remote::program_build_id());
    const pid_t parent = getpid();
    const pid_t pid = fork_signals_blocked();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        ipc::throw_errno("fork of the procpool fork server");
    }
    if (pid == 0) {
        close(sv[0]);
        drop_env(dropped_env_prefixes);
        serve(sv[1], parent);
    }
    close(sv[1]);
    server_sock.reset(sv[0]);
    server_pid = pid;
    server_pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
}

// Sends the server a new pool channel; false if the server is gone.
bool send_channel_locked(int theirs) noexcept {
    const char tag = 'C';
    return ipc::send_with_fds(server_sock.get(), &tag, 1, std::span<const int>(&theirs, 1));
}

}  // namespace

bool process_exited(int pidfd) noexcept {
    if (pidfd < 0) return false;
    pollfd p{pidfd, POLLIN, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

fork_server_link open_fork_server_channel() {
    std::lock_guard lock(server_mutex);
    if (!server_sock) return {};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        ipc::throw_errno("socketpair for the fork server");
    }
    ipc::unique_fd mine(sv[0]);
    ipc::unique_fd theirs(sv[1]);
    auto link = [&] {
        fork_server_link l;
        l.channel = std::move(mine);
        if (server_pidfd) l.pidfd.reset(fcntl(server_pidfd.get(), F_DUPFD_CLOEXEC, 0));
        return l;
    };
    // A server that has exited may still seem to take the channel, if a process it forked
    // holds its end of the socket (see fork_server_link): ask its pidfd first.
    if (!process_exited(server_pidfd.get()) && send_channel_locked(theirs.get())) return link();
    // The server is gone (killed from outside): reap it and start another. This program
    // may run threads by now, so the new server copies their state as the fork start
    // method does; say so once.
    const pid_t old = server_pid;
    if (old > 0) {
        // It is exiting (its socket is gone, or its pidfd says so); reap it once it has,
        // or it stays a zombie of this program. Bounded: a server that lives on (stopped,
        // say) is left as it is.
        if (server_pidfd) {
            pollfd p{server_pidfd.get(), POLLIN, 0};
            poll(&p, 1, 1000);
        }
        waitpid(old, nullptr, WNOHANG);
    }
    server_sock.reset();
    server_pidfd.reset();
    server_pid = -1;
    start_server_locked();
    std::fprintf(stderr,
                 "procpool: the fork server (pid %d) was gone; started a new one (pid %d)%s\n",
                 static_cast<int>(old), static_cast<int>(server_pid),
                 current_thread_count() > 1
                     ? " from a multi-threaded program: locks other threads held then stay "
                       "locked in its workers"
                     : "");
    if (!send_channel_locked(theirs.get())) {
        throw error(
            "procpool: the fork server was gone and a new one did not answer; "
            "use start_method::fork or restart the program");
    }
    return link();
}

bool start_fork_server() {
    std::lock_guard lock(server_mutex);
    if (server_sock) return false;
    start_server_locked();
    return true;
}

void drop_env_in_workers(std::vector<std::string> prefixes) {
    std::lock_guard lock(server_mutex);
    dropped_env_prefixes = std::move(prefixes);
}

void forget_fork_server_in_worker() noexcept {
    // Copied locked into every worker of the fork server (forked while this file's
    // start_server_locked held it), and perhaps held by another thread of the parent when
    // a fork-started worker was forked: the worker has one thread, so a fresh one is safe.
    new (&server_mutex) std::mutex();
    static_cast<void>(server_sock.release());   // closed already, with the other fds
    static_cast<void>(server_pidfd.release());
    server_pid = -1;
}

bool is_worker_process() noexcept {
    return detail::in_worker_process();  // one flag, set by shm_reseed_ids in finish_worker
}

bool fork_server_running() noexcept {
    std::lock_guard lock(server_mutex);
    return static_cast<bool>(server_sock);
}

pid_t fork_server_pid() noexcept {
    std::lock_guard lock(server_mutex);
    return server_pid;
}

}  // namespace procpool::process
