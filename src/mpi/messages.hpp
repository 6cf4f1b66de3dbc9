// What rank 0 and the serving ranks say to each other. Every message is one MPI message
// whose tag is its kind; bodies are wire-encoded (the same codec as task arguments).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"

namespace procpool::mpi_impl {

/// MPI tags, one per message kind.
enum tag : int {
    tag_open = 101,    ///< rank 0 → servers: open a pool (open_msg)
    tag_opened = 102,  ///< server → rank 0: the pool is ready, or why not (opened_msg)
    tag_task = 103,    ///< rank 0 → server: run a task (task_msg)
    tag_reply = 104,   ///< server → rank 0: a task's outcome (reply_msg)
    tag_cancel = 105,  ///< rank 0 → server: cancel a task (its id)
    tag_close = 106,   ///< rank 0 → servers: close a pool (its id)
    tag_stop = 107,    ///< rank 0 → servers: exit
    tag_cancel_pending = 108,    ///< rank 0 → servers: cancel a pool's tasks not started (its id)
    tag_pending_cancelled = 109, ///< server → rank 0: done (the pool's id)
    tag_cancel_task_pending = 110,  ///< rank 0 → server: cancel a task if it has not started
    tag_ping = 111,  ///< rank 0 → server: are you running? (empty)
    tag_pong = 112,  ///< server → rank 0: yes (empty), sent at once by its serving loop
};

/// The options a serving rank opens its local process pool with.
struct open_msg {
    std::uint32_t pool = 0;
    std::int32_t workers = 0;  ///< 0: the rank's default
    std::int32_t max_tasks_per_child = 0;
    std::uint64_t memory_limit = 0;
    std::vector<std::pair<std::string, std::string>> env;
    std::uint64_t init_invoker = 0;
    std::uint64_t init_fn = 0;
    std::vector<std::byte> init_args;
};

/// A serving rank's answer to open_msg.
struct opened_msg {
    std::uint32_t pool = 0;
    std::int32_t workers = 0;  ///< its workers; 0 if it failed
    std::string host;
    std::string error;  ///< why the pool could not start; empty on success
};

/// A task: everything the serving rank's worker needs. A tag_task message holds one or
/// more records, each a header followed by its `args_len` bytes of arguments: tasks
/// dispatched together to one rank travel in one MPI message.
struct task_msg {
    std::uint64_t id = 0;
    std::uint32_t pool = 0;
    std::uint32_t arrays = 0;  ///< shared arrays: a section of as many blocks (arrays.hpp) precedes the arguments
    std::uint64_t invoker = 0;
    std::uint64_t fn = 0;
    std::int64_t timeout_ns = -1;  ///< -1: none
    std::uint64_t args_len = 0;
};

/// How a task ended on its serving rank.
enum class outcome_kind : std::uint32_t {
    relayed = 1,        ///< the worker replied: `status` and the payload as it wrote them
    worker_died = 2,    ///< `signal`, `exit_code`, `text`
    timeout = 3,        ///< `text`
    cancelled = 4,      ///< `text`
    protocol = 5,       ///< the worker sent a malformed message: `text`
    serialization = 6,  ///< `text`
    shut_down = 7,      ///< the rank's pool was closed: `text`
    other = 8,          ///< any other error: `text`
};

/// A task's outcome. A tag_reply message holds one or more records, each a header
/// followed by its `body_len` bytes (the payload, or the error's text).
struct reply_msg {
    std::uint64_t id = 0;
    outcome_kind kind = outcome_kind::relayed;
    detail::run_status status = detail::run_status::value;
    std::int32_t signal = 0;
    std::int32_t exit_code = 0;
    std::uint64_t body_len = 0;
    std::uint32_t changes = 0;  ///< changed ranges of by-value shared arrays (arrays.hpp) that precede the body
    std::uint32_t reserved = 0;
};

/// Appends one record (header, with its length field set to `n`, then `n` bytes).
void append(std::vector<std::byte>& out, task_msg h, const std::byte* body, std::size_t n);
void append(std::vector<std::byte>& out, reply_msg h, const std::byte* body, std::size_t n);

/// Calls `f(header, body, body_len)` for each record of a batch message. Throws
/// serialization_error if a record runs past the end.
template <class H, class F>
void for_each_record(const std::byte* p, std::size_t n, F&& f);

std::vector<std::byte> encode(const open_msg& m);
open_msg decode_open(const std::byte* p, std::size_t n);
std::vector<std::byte> encode(const opened_msg& m);
opened_msg decode_opened(const std::byte* p, std::size_t n);

/// Reads a header of type H from the front of `p`. Throws serialization_error if `n` is
/// shorter than the header.
template <class H>
H read_header(const std::byte* p, std::size_t n);

std::vector<std::byte> encode_u64(std::uint64_t v);
std::uint64_t decode_u64(const std::byte* p, std::size_t n);

/// The length field of a record header.
inline std::uint64_t body_length(const task_msg& h) noexcept { return h.args_len; }
inline std::uint64_t body_length(const reply_msg& h) noexcept { return h.body_len; }

[[noreturn]] void throw_bad_batch(std::size_t at, std::size_t n);

template <class H, class F>
void for_each_record(const std::byte* p, std::size_t n, F&& f) {
    std::size_t at = 0;
    while (at < n) {
        const H h = read_header<H>(p + at, n - at);
        at += sizeof h;
        const std::uint64_t len = body_length(h);
        if (len > n - at) throw_bad_batch(at, n);
        f(h, p + at, static_cast<std::size_t>(len));
        at += static_cast<std::size_t>(len);
    }
}

}  // namespace procpool::mpi_impl
