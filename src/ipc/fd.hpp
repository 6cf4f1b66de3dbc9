// File descriptor ownership and fd passing over Unix sockets.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <span>
#include <utility>

namespace procpool::ipc {

/// Owns one file descriptor; closes it on destruction.
class unique_fd {
  public:
    unique_fd() = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        reset(std::exchange(o.fd_, -1));
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

  private:
    int fd_ = -1;
};

/// Sends `len` bytes plus the descriptors in `fds` as one datagram (SCM_RIGHTS).
/// Returns false on error (errno set). `nonblocking`: fail with EAGAIN rather than wait
/// for room (a peer that does not read must not block the sender).
bool send_with_fds(int sock, const void* data, std::size_t len, std::span<const int> fds,
                   bool nonblocking = false) noexcept;

/// Receives one datagram of at most `cap` bytes and up to `fds.size()` descriptors.
/// Returns the byte count (0 on orderly shutdown, -1 on error); `nfds` gets the number of
/// descriptors received, which the caller then owns. `nonblocking`: return -1 (EAGAIN)
/// at once if nothing is queued. A datagram longer than `cap` is an error (-1, EMSGSIZE).
long recv_with_fds(int sock, void* data, std::size_t cap, std::span<int> fds, std::size_t& nfds,
                   bool nonblocking = false) noexcept;

/// Throws procpool::error naming `what` and errno's text.
[[noreturn]] void throw_errno(const char* what);

}  // namespace procpool::ipc
