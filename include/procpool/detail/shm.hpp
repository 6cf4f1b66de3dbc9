// Shared-memory blocks behind shared_array and mapped_file_array, and the side channel
// that carries their descriptors next to a serialized message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace procpool::detail {

/// One mapping of a memfd or a file, shared with worker processes by passing its
/// descriptor. Freed (unmapped and closed) when the last handle lets go; the process
/// that created it then tells pools to drop the workers' cached mappings.
/// Mappings made here are not inherited by fork(): a worker forked from this process
/// sees only the blocks it is sent.
class shm_block : public std::enable_shared_from_this<shm_block> {
public:
    /// A zero-filled anonymous block of `bytes` (memfd: no name in /dev/shm), sealed
    /// against resizing so that no process it is shared with can shrink it under the
    /// others' mappings (they would die of SIGBUS). Throws procpool::error if it cannot be
    /// created (too large, out of memory).
    static std::shared_ptr<shm_block> create(std::size_t bytes);
    /// Maps `path`. `create` makes (or truncates) it to `bytes`; otherwise its size is used.
    static std::shared_ptr<shm_block> open_file(const std::string& path, bool writable,
                                                bool create, std::size_t bytes);
    /// Maps a descriptor received from another process (takes ownership of `fd`).
    static std::shared_ptr<shm_block> adopt(int fd, std::size_t bytes, bool writable,
                                            bool notify_on_free);

    shm_block(const shm_block&) = delete;
    shm_block& operator=(const shm_block&) = delete;
    ~shm_block();

    void* data() const noexcept { return addr_; }
    std::size_t bytes() const noexcept { return bytes_; }
    int fd() const noexcept { return fd_; }
    bool writable() const noexcept { return writable_; }
    /// Process-unique identity; workers cache mappings by it.
    std::uint64_t id() const noexcept { return id_; }

    /// What a task that only reads this block is sent: the block itself if it is
    /// read-only, else its read-only twin: the same memory under its own id, with a
    /// descriptor opened O_RDONLY, so the worker can neither map it writable nor truncate
    /// it. The twin has no mapping in this process (its data() is null); it is made on
    /// first use and kept as long as this block, so a worker maps it once.
    /// Throws procpool::error if the descriptor cannot be reopened (no /proc).
    std::shared_ptr<shm_block> read_only_twin();

private:
    shm_block(int fd, void* addr, std::size_t bytes, bool writable, bool notify);
    int fd_;
    void* addr_;
    std::size_t bytes_;
    bool writable_;
    bool notify_;
    int owner_pid_;
    std::uint64_t id_;
    std::mutex twin_mutex_;
    std::shared_ptr<shm_block> twin_;
};

using shm_ref = std::shared_ptr<shm_block>;
/// Blocks a message refers to, by the id written in the message.
using shm_table = std::unordered_map<std::uint64_t, shm_ref>;

/// While alive, shared arrays serialized on this thread are recorded in `sink`
/// (so their descriptors can travel with the message) and shared arrays deserialized on
/// this thread are looked up in `source`.
/// `threshold`: trivially copyable vectors of at least this many bytes travel in a shared
/// block of their own instead of the byte stream (both sides use the pool's setting).
class attachment_scope {
public:
    attachment_scope(std::vector<shm_ref>* sink, const shm_table* source,
                     std::size_t threshold = SIZE_MAX) noexcept;
    ~attachment_scope();
    attachment_scope(const attachment_scope&) = delete;
    attachment_scope& operator=(const attachment_scope&) = delete;

private:
    std::vector<shm_ref>* old_sink_;
    const shm_table* old_source_;
    std::size_t old_threshold_;
};

/// The vector size in bytes from which the current message uses shared blocks
/// (SIZE_MAX outside a process-pool message).
std::size_t shared_threshold() noexcept;
/// Copies `bytes` from `p` into a new shared block attached to the current message;
/// returns its id.
std::uint64_t share_copy(const void* p, std::size_t bytes);
/// The memory of block `id` in the current message, checked to hold `bytes`.
const void* shared_bytes(std::uint64_t id, std::size_t bytes);

/// Records `b` as travelling with the message being serialized and returns the id the
/// message must name: `b`'s own, or its read-only twin's inside a read_only_attachments
/// scope. Throws serialization_error if no process-pool message is being written.
std::uint64_t attach(const shm_ref& b);

/// While alive, shared arrays serialized on this thread travel as their read-only twins
/// (see shm_block::read_only_twin). Set around a task argument whose parameter is a span
/// of const elements, so the promise not to write is kept by the worker's mapping.
class read_only_attachments {
public:
    read_only_attachments() noexcept;
    ~read_only_attachments();
    read_only_attachments(const read_only_attachments&) = delete;
    read_only_attachments& operator=(const read_only_attachments&) = delete;

private:
    bool old_;
};

/// The block a message refers to by `id`; throws serialization_error if unknown.
shm_ref resolve_attachment(std::uint64_t id);

/// Pools register here so that freeing a block can drop workers' cached mappings.
class shm_listener {
public:
    virtual void forget_block(std::uint64_t id) noexcept = 0;

protected:
    ~shm_listener() = default;
};
void add_shm_listener(shm_listener* l);
/// Called once in a new worker: its blocks get ids that cannot collide with the parent's.
void shm_reseed_ids(std::uint64_t base) noexcept;
void remove_shm_listener(shm_listener* l);

}  // namespace procpool::detail
