// The few MPI calls procpool makes, on its own communicator, from one thread per rank
// (MPI_THREAD_SERIALIZED): non-blocking sends whose buffers it keeps until done, and
// probe-then-receive of whole messages.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <deque>
#include <string>
#include <vector>

namespace procpool::mpi_impl {

/// One received message.
struct message {
    int source = -1;
    int tag = 0;
    std::vector<std::byte> body;
};

/// procpool's duplicate of MPI_COMM_WORLD, with its sends in flight.
class comm {
  public:
    explicit comm(MPI_Comm c) noexcept : c_(c) {}
    comm(const comm&) = delete;
    comm& operator=(const comm&) = delete;

    MPI_Comm get() const noexcept { return c_; }

    /// Starts sending `body` to `dest`; the buffer is kept until the send completes. Both
    /// sides only ever send without blocking, so two ranks sending large messages to
    /// each other cannot deadlock.
    void send(int dest, int tag, std::vector<std::byte> body);

    /// Receives one message from `source` (MPI_ANY_SOURCE for any) if one has arrived.
    bool try_receive(int source, message& out);

    /// Completes the sends that can; true if any did. Call it often: MPI progresses in
    /// its calls.
    bool progress_sends();

    /// Sends still in flight.
    std::size_t sends_in_flight() const noexcept { return sends_.size(); }

    /// Blocks until every send has completed.
    void flush();

  private:
    struct pending_send {
        MPI_Request req = MPI_REQUEST_NULL;
        std::vector<std::byte> body;
    };
    MPI_Comm c_;
    std::deque<pending_send> sends_;
};

/// Throws procpool::error naming `what` and MPI's message for `rc` if it is not MPI_SUCCESS.
void check(int rc, const char* what);

/// This host's name.
std::string host_name();

}  // namespace procpool::mpi_impl
