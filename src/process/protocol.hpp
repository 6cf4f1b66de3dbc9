// Message layouts shared by the pool, the fork server and workers.
#pragma once

#include <sys/types.h>
#include <time.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "procpool/detail/shm.hpp"

namespace procpool::process {

/// Request frame types (parent -> worker). Completion frames carry a run_status, plus
/// `oob_flag` when the payload travels in a memfd passed over the control socket.
enum : std::uint32_t {
    msg_task = 1,
    msg_task_oob = 2,
    msg_exit = 3,
    msg_forget = 4,  ///< payload: u64 id of a shared block the worker may unmap
};
inline constexpr std::uint32_t oob_flag = 0x100;

/// CLOCK_MONOTONIC in nanoseconds: the clock parent and workers share for task
/// start times and deadlines.
inline std::int64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// Fixed part of a task request: then come the serialized arguments (or, for
/// msg_task_oob, their size as a u64; the bytes come in a memfd).
struct task_header {
    std::uint64_t seq;
    std::uint64_t invoker;
    std::uint64_t fn;
    std::uint32_t nattach;  ///< shared blocks sent on the control socket before this frame
    std::uint32_t reserved;
};

/// A shared block's descriptor on the control socket (SCM_RIGHTS), ahead of the frame
/// whose message refers to it by `id`.
struct attach_msg {
    std::uint64_t id;
    std::uint64_t bytes;
    std::uint32_t writable;
    std::uint32_t reserved;
};

/// Fixed part of a completion: then the result or error payload.
struct completion_header {
    std::uint64_t seq;
    std::int64_t run_ns;    ///< how long the task ran, for the pool's window sizing
    std::uint32_t nattach;  ///< shared blocks sent on the control socket before this frame
    std::uint32_t reserved;
};

/// Why a worker could not start, sent on its control socket just before it exits (the
/// way a child reports a failed set-up step through a pipe), so that the parent's error
/// names the step and errno rather than a bare exit code.
enum class startup_step : std::uint32_t {
    parent_gone = 1,   ///< the process that forked it died first
    wrong_binary = 2,  ///< its code addresses differ from the parent's
    map_region = 3,    ///< mapping its shared region failed
    bad_region = 4,    ///< the region lacks the magic number
    bad_config = 5,    ///< its configuration could not be decoded
    memory_limit = 6,  ///< setrlimit(RLIMIT_AS) failed
};
struct startup_report {
    std::uint32_t tag;  ///< startup_report_tag
    std::uint32_t step;
    std::int32_t err;  ///< errno of the failing call, or 0
    std::uint32_t reserved;
};
inline constexpr std::uint32_t startup_report_tag = 0x53545550;  // "STUP"
/// Exit code of a worker that could not start (after sending a startup_report).
inline constexpr int startup_exit_code = 70;

/// Sends a startup_report on `ctl` (best effort) and exits: a worker that cannot start.
[[noreturn]] void startup_failed(int ctl, startup_step step, int err) noexcept;
/// The message for a report, e.g. "mapping its shared region failed: Cannot allocate memory".
std::string describe_startup(const startup_report& r);

/// Largest number of messages (shared blocks, out-of-band payloads) a task or result may
/// carry on the control socket; more is a malformed message.
inline constexpr std::uint32_t max_attachments = 64;

/// What a worker needs to know at start, sent with its spawn request.
struct worker_config {
    std::uint64_t anchor = 0;  ///< address of code_anchor in the parent: must equal ours
    std::uint32_t ring_capacity = 0;
    std::int32_t max_tasks = 0;
    std::uint64_t memory_limit = 0;
    std::uint64_t shared_threshold = SIZE_MAX;
    std::vector<std::pair<std::string, std::string>> env;
    std::uint64_t init_invoker = 0;
    std::uint64_t init_fn = 0;
    std::vector<std::byte> init_args;
};

std::vector<std::byte> encode_config(const worker_config& c);
worker_config decode_config(const std::byte* p, std::size_t n);

/// The largest encoded worker_config a spawn request may carry (one datagram to the fork
/// server, which reads it into a buffer of this size plus the record).
inline constexpr std::size_t max_config_bytes = std::size_t{1} << 20;

/// Fork-server protocol (pool channel), fixed-size records.
enum : std::uint32_t { fs_spawn = 1, fs_spawned = 2, fs_exited = 3, fs_spawn_failed = 4 };
struct fs_record {
    std::uint32_t type;
    std::int32_t value;   ///< pid (spawned), wait status (exited), errno (spawn_failed)
    std::uint64_t token;  ///< spawn token (spawned, spawn_failed) or pid (exited)
};

/// Becomes a worker: never returns. `region_fd`, `ctl_fd`, `event_fd` are the worker's
/// shared region, its control socket and the write end of its own wake-up pipe to the
/// parent. `parent` is the
/// process that forked it (the worker dies with it).
[[noreturn]] void run_worker(int region_fd, int ctl_fd, int event_fd, pid_t parent,
                             const worker_config& cfg);

/// Sends the descriptors of `blocks` on `sock` as attach_msg records. False on error.
/// `nonblocking`: fail rather than wait for room (the parent, which must never wait on a
/// worker, bounds what it queues instead).
bool send_attachments(int sock, const std::vector<detail::shm_ref>& blocks,
                      bool nonblocking) noexcept;
/// Receives `n` attach_msg records from `sock` into `table` (keyed by the sender's ids).
/// `from_worker`: the sender is not trusted (the parent receiving a worker's result):
/// nothing blocks (the records must already be queued), each descriptor must be a regular
/// file at least as large as claimed, and a memfd must be sealed against shrinking, so that
/// a mapping of it can never fault (SIGBUS) in this process. The blocks are then marked as
/// owned by this process (see shm_block::adopt). Throws protocol_violation on a bad record.
void receive_attachments(int sock, std::uint32_t n, detail::shm_table& table, bool from_worker);

/// A worker broke the protocol (bad frame, count, descriptor or size).
struct protocol_violation : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Checks that `fd` (received from a worker) can be mapped for `bytes` without faulting:
/// a regular file of at least that size; a memfd must carry F_SEAL_SHRINK, and with
/// `require_memfd` nothing else will do (procpool's own payloads are always memfds; a
/// file on disk could be truncated under the mapping). Throws protocol_violation naming
/// what is wrong.
void check_mappable(int fd, std::uint64_t bytes, bool require_memfd);

/// Closes every descriptor except 0, 1, 2 and those in `keep`.
void close_other_fds(std::initializer_list<int> keep) noexcept;

/// Resets signal handlers and mask for a new child; SIGINT is ignored so that Ctrl-C is
/// the parent's to handle.
void reset_signals_for_child() noexcept;

}  // namespace procpool::process
