// The message envelope of remote execution, whatever the transport: request and reply
// headers, what a worker needs to start (its configuration) and the start-up handshake
// that makes sure it runs the same binary as the parent. Run statuses are
// detail::run_status (procpool/detail/remote_call.hpp), shared with the task types.
#pragma once

#include <time.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"

namespace procpool::remote {

using detail::run_status;

/// Request kinds (parent -> worker).
enum : std::uint32_t {
    msg_task = 1,    ///< task_header, then the serialized arguments
    msg_exit = 3,    ///< finish: the worker exits
    msg_forget = 4,  ///< payload: u64 id of a shared block the worker may unmap
};

/// CLOCK_MONOTONIC in nanoseconds: the clock parent and workers share for task
/// start times and deadlines.
inline std::int64_t now_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// Fixed part of a task request: then come the serialized arguments.
struct task_header {
    std::uint64_t seq;      ///< the task's sequence number on this worker (from 1)
    std::uint64_t invoker;  ///< code offset of its invoker (see detail::invoker_for)
    std::uint64_t fn;       ///< code offset of its function
    std::uint32_t nattach;  ///< attachments sent with it, ahead of the request
    std::uint32_t reserved;
};

/// Fixed part of a reply (a completion): then the result or error payload. The reply's
/// kind is a run_status.
struct completion_header {
    std::uint64_t seq;      ///< the task it completes (0: a worker message, not a task's)
    std::int64_t run_ns;    ///< how long the task ran, for the pool's window sizing
    std::uint32_t nattach;  ///< attachments sent with it, ahead of the reply
    std::uint32_t reserved;
    std::int64_t end_ns;    ///< when it ended, on the worker's CLOCK_MONOTONIC (traces)
};

/// Why a worker could not start, sent to the parent just before it exits (the way a
/// child reports a failed set-up step through a pipe), so that the parent's error names
/// the step and errno rather than a bare exit code.
enum class startup_step : std::uint32_t {
    parent_gone = 1,   ///< the process that forked it died first
    wrong_binary = 2,  ///< its build id or code addresses differ from the parent's
    map_region = 3,    ///< mapping its shared region failed
    bad_region = 4,    ///< the region lacks the magic number
    bad_config = 5,    ///< its configuration could not be decoded
    memory_limit = 6,  ///< setrlimit(RLIMIT_AS) failed
};
/// A start-up failure report.
struct startup_report {
    std::uint32_t tag;  ///< startup_report_tag
    std::uint32_t step;
    std::int32_t err;  ///< errno of the failing call, or 0
    std::uint32_t reserved;
};
inline constexpr std::uint32_t startup_report_tag = 0x53545550;  // "STUP"
/// Exit code of a worker that could not start (after sending a startup_report).
inline constexpr int startup_exit_code = 70;

/// The message for a report, e.g. "mapping its shared region failed: Cannot allocate memory".
std::string describe_startup(const startup_report& r);

/// What a worker needs to know at start, sent with its spawn request.
struct worker_config {
    std::string build_id;      ///< the parent's program_build_id(): must equal ours
    std::uint64_t anchor = 0;  ///< address of code_anchor in the parent: must equal ours
    std::uint32_t ring_capacity = 0;
    std::int32_t max_tasks = 0;
    std::uint64_t memory_limit = 0;
    std::uint64_t shared_threshold = SIZE_MAX;
    std::vector<std::pair<std::string, std::string>> env;
    std::uint64_t init_invoker = 0;
    std::uint64_t init_fn = 0;
    std::vector<std::byte> init_args;
    /// Captured output kept per stream per task (process_pool_options::output_limit);
    /// 0: output is not captured.
    std::uint64_t output_limit = 0;
};

/// The configuration as bytes, and back (throws serialization_error on bad bytes).
std::vector<std::byte> encode_config(const worker_config& c);
worker_config decode_config(const std::byte* p, std::size_t n);

/// The largest encoded worker_config a spawn request may carry. A spawn request is one
/// SOCK_SEQPACKET message, which AF_UNIX refuses (EMSGSIZE) when it is longer than the
/// sender's send buffer: 212992 bytes by default (net.core.wmem_default). 128 KiB leaves
/// room for the record and the kernel's overhead on a default system.
inline constexpr std::size_t max_config_bytes = std::size_t{128} << 10;

/// An identity of the running program's binary: its GNU build id (the linker's
/// NT_GNU_BUILD_ID note) in hex, or, for a binary linked without one, its file's device,
/// inode, size and modification time. Computed once.
const std::string& program_build_id();

/// The start-up handshake: true if `cfg` comes from a parent running this very binary
/// (same build id) loaded at the same address (same code anchor), so that code offsets
/// sent in requests name the same functions here.
bool same_binary(const worker_config& cfg) noexcept;

}  // namespace procpool::remote
