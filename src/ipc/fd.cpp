#include "ipc/fd.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "procpool/error.hpp"

namespace procpool::ipc {

namespace {
constexpr std::size_t max_fds = 8;
}

bool send_with_fds(int sock, const void* data, std::size_t len, std::span<const int> fds,
                   bool nonblocking) noexcept {
    if (fds.size() > max_fds) return false;
    iovec iov{const_cast<void*>(data), len};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * max_fds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (!fds.empty()) {
        msg.msg_control = ctrl;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
        if (n >= 0) return static_cast<std::size_t>(n) == len;
        if (errno != EINTR) return false;
    }
}

long recv_with_fds(int sock, void* data, std::size_t cap, std::span<int> fds, std::size_t& nfds,
                   bool nonblocking) noexcept {
    nfds = 0;
    iovec iov{data, cap};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * max_fds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl;
    msg.msg_controllen = sizeof(ctrl);
    ssize_t n;
    bool reset_seen = false;
    for (;;) {
        n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0));
        if (n >= 0 || errno == EINTR) {
            if (n >= 0) break;
            continue;
        }
        // A peer that closed with messages of ours unread sets ECONNRESET on this socket,
        // and recvmsg reports it (once) before the messages the peer sent first: a worker
        // that completed a task and then died would lose that task's descriptors. Look
        // again after it.
        if (errno == ECONNRESET && !reset_seen) {
            reset_seen = true;
            continue;
        }
        return -1;
    }
    const bool truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int* in = reinterpret_cast<const int*>(CMSG_DATA(c));
        for (std::size_t i = 0; i < count; ++i) {
            if (nfds < fds.size()) {
                fds[nfds++] = in[i];
            } else {
                ::close(in[i]);  // more than the caller expects: do not leak them
            }
        }
    }
    if (truncated) {
        for (std::size_t i = 0; i < nfds; ++i) ::close(fds[i]);
        nfds = 0;
        errno = EMSGSIZE;
        return -1;
    }
    return static_cast<long>(n);
}

void throw_errno(const char* what) {
    throw error(std::string("procpool: ") + what + " failed: " + std::strerror(errno));
}

}  // namespace procpool::ipc
