// The worker side of remote execution, written once: receive one request, run it, send
// one reply. A transport (shared-memory rings; an in-process queue in the tests; later
// MPI) implements worker_transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "procpool/detail/attachments.hpp"
#include "remote/envelope.hpp"

namespace procpool::remote {

/// One request as a transport hands it to serve().
struct request {
    /// msg_task or msg_exit (a transport handles its own housekeeping messages itself).
    std::uint32_t kind = msg_exit;
    task_header task{};               ///< for msg_task
    const std::byte* args = nullptr;  ///< the serialized arguments
    std::size_t args_len = 0;
    /// Set if the transport could not deliver the arguments (e.g. map them): the task then
    /// fails with serialization_error and this message, without running.
    std::string failure;
    /// When serve() started the task (CLOCK_MONOTONIC ns; set before `begin`), for a
    /// transport that publishes it: one clock read serves both.
    std::int64_t start_ns = 0;
};

/// Where serve() is in its start-up, for a parent diagnosing a worker that dies starting.
enum class serve_phase : std::uint32_t { initializer = 2, serving = 3 };

/// The worker's end of a transport.
class worker_transport {
  public:
    /// Waits for the next request. Its bytes stay valid until `release()`.
    virtual request next() = 0;
    /// Done with the bytes of the request `next()` returned last.
    virtual void release() noexcept = 0;
    /// The task of request `r` is about to start (the transport may publish that, for the
    /// parent's deadlines and cancellation). True: run it; a transport that delivers large
    /// arguments lazily fills `r.args` (or `r.failure`) now. False: it was cancelled before
    /// it started, and is skipped (replied to as cancelled).
    virtual bool begin(request& r) noexcept = 0;
    /// The attachments the current request's arguments are read with and its reply is
    /// written with (shared arrays, out-of-band vectors).
    virtual detail::attachments* attachments() noexcept = 0;
    /// Sends one reply: `status` and `payload`, plus whatever the reply's encoding gave to
    /// attachments(). `seq` 0 is a worker message (ready, initializer failed), with
    /// `run_ns` and `end_ns` 0. `end_ns`: when the task ended (CLOCK_MONOTONIC ns).
    virtual void reply(std::uint64_t seq, run_status status, std::int64_t run_ns,
                       std::int64_t end_ns, std::vector<std::byte>& payload) = 0;
    /// Start-up progress (a transport may publish it for the parent). Default: nothing.
    virtual void phase(serve_phase) noexcept {}

  protected:
    ~worker_transport() = default;
};

/// How serve() ended.
enum class serve_end {
    exit_requested,     ///< the parent sent msg_exit
    max_tasks,          ///< the worker ran cfg.max_tasks tasks and retires
    initializer_failed  ///< the pool's initializer failed (reported to the parent)
};

/// Runs the pool's initializer (if `cfg` has one), reports ready, then serves requests
/// until told to exit or `cfg.max_tasks` is reached. A task's failure is a reply, never
/// an exception out of here.
serve_end serve(worker_transport& t, const worker_config& cfg);

}  // namespace procpool::remote
