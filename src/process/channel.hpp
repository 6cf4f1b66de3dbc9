// The channel between a pool and one worker beside the rings: shared blocks and
// out-of-band payloads travel as descriptors on the worker's control socket. Both ends
// are here; the parent's end trusts nothing the worker sends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "procpool/detail/shm.hpp"

namespace procpool::process {

/// A worker broke the protocol (bad frame, count, descriptor or size).
struct protocol_violation : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Largest number of messages (shared blocks, out-of-band payloads) a task or result may
/// carry on the control socket; more is a malformed message.
inline constexpr std::uint32_t max_attachments = 64;

/// A shared block's descriptor on the control socket (SCM_RIGHTS), ahead of the frame
/// whose message refers to it by `id`.
struct attach_msg {
    std::uint64_t id;
    std::uint64_t bytes;
    std::uint32_t writable;
    std::uint32_t flags;  // attach_returnable, attach_progressive or 0
};

/// attach_msg flag: a worker's result block the parent hands back when it lets go of it
/// (shm_block::returned_by_reader, mark_returned_on_free).
constexpr std::uint32_t attach_returnable = 1;
/// attach_msg flag: a block of the parent's whose last 64 bytes count the bytes written
/// in so far (shm_block::progressive). Honoured only from the parent: the parent never
/// waits on a count a worker writes.
constexpr std::uint32_t attach_progressive = 2;

/// Sends the descriptors of `blocks` on `sock` as attach_msg records. False on error.
/// `nonblocking`: fail rather than wait for room (the parent, which must never wait on a
/// worker, bounds what it queues instead).
bool send_attachments(int sock, const std::vector<detail::shm_ref>& blocks,
                      bool nonblocking) noexcept;

/// Receives `n` attach_msg records from `sock` into `table` (keyed by the sender's ids).
/// `from_worker`: the sender is not trusted (the parent receiving a worker's result):
/// nothing blocks (the records must already be queued), each descriptor must be a sealed
/// memfd at least as large as claimed, so that a mapping of it can never fault (SIGBUS) in
/// this process. The blocks are then marked as owned by this process (see
/// shm_block::adopt). Throws protocol_violation on a bad record.
/// Otherwise (a worker receiving a task's blocks): every record is read even if one fails;
/// a block that could not be taken (its descriptor dropped for want of descriptors, a
/// mapping refused) is removed from `table`, so that a mapping kept under its id from
/// before is never read in its place; then the first failure is thrown.
/// `kept` (the parent, from one worker): the mappings of that worker's returnable result
/// blocks (attach_returnable), kept across results: a block that comes back under an id
/// and size already mapped is read through the same mapping (its pages' first touch in a
/// new mapping is what a big result cost, see docs/architecture.md "First use"); the new
/// descriptor is only closed. At most 4 mappings and 256 MiB, as the worker keeps.
void receive_attachments(int sock, std::uint32_t n, detail::shm_table& table, bool from_worker,
                         detail::shm_table* kept = nullptr);

/// Checks that `fd` (received from a worker) can be mapped for `bytes` without faulting:
/// a regular file of at least that size; a memfd must carry F_SEAL_SHRINK, and with
/// `require_memfd` nothing else will do (procpool's own payloads are always memfds; a
/// file on disk could be truncated under the mapping). Throws protocol_violation naming
/// what is wrong.
void check_mappable(int fd, std::uint64_t bytes, bool require_memfd);

/// Sends `n` bytes at `p` as a memfd on `sock` with a one-byte `tag`, sealed against
/// resizing if `seal` (a receiver that does not trust us maps it: see check_mappable).
/// False on error. `nonblocking` as for send_attachments.
bool send_payload(int sock, char tag, const std::byte* p, std::size_t n, bool seal,
                  bool nonblocking) noexcept;

/// A payload received by receive_payload: mapped read-only for as long as this lives.
class mapped_payload {
  public:
    mapped_payload() = default;
    mapped_payload(const mapped_payload&) = delete;
    mapped_payload& operator=(const mapped_payload&) = delete;
    ~mapped_payload();
    /// Unmaps it (if mapped): empty again.
    void reset() noexcept;
    const std::byte* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }

  private:
    friend void receive_payload(int, char, std::uint64_t, bool, mapped_payload&);
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Receives the memfd sent by send_payload with `tag` and maps its `size` bytes into
/// `out`. `from_worker`: do not block, and check the memfd (sealed, large enough).
/// Throws protocol_violation if it is missing, of the wrong kind, or cannot be mapped.
void receive_payload(int sock, char tag, std::uint64_t size, bool from_worker, mapped_payload& out);

/// Receives and closes the memfd of a payload that is not wanted (a skipped task).
void discard_payload(int sock) noexcept;

}  // namespace procpool::process
