// shared_array arguments of mpi_pool tasks. To a serving rank that can open rank 0's
// memory (same node, same process namespace: the start-up handshake tries) a block travels
// as a reference the rank opens through /proc: the same memory, no copy. To any other rank
// it travels by value, and what the task changed comes back: the byte ranges of the
// rank's copy that differ from what was sent are written into rank 0's block before the
// future resolves, so tasks filling disjoint parts of one array work as they do on one
// machine.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "procpool/detail/shm.hpp"

namespace procpool::mpi_impl {

/// One block in a task message's array section (its count is task_msg::arrays).
struct array_header {
    std::uint64_t id = 0;     ///< the id the task's bytes name it by (rank 0's block id)
    std::uint64_t bytes = 0;  ///< its size
    std::uint32_t writable = 0;
    std::uint32_t by_value = 0;  ///< 1: `bytes` bytes follow; 0: open /proc/<pid>/fd/<fd>
    std::int32_t pid = 0;        ///< rank 0's process id (by reference)
    std::int32_t fd = -1;        ///< the block's descriptor there (by reference)
    std::uint64_t dev = 0;       ///< its file's device and inode (by reference): what the
    std::uint64_t ino = 0;       ///< rank opens must be that file, not a reused number
};

/// One record of a reply's write-back section (its count is reply_msg::changes): a run of
/// changed bytes, or a page with many changes as a bit mask of the changed bytes and the
/// page's bytes (so the section never grows past ~1.13× the array, however scattered the
/// changes).
struct change_header {
    std::uint32_t block = 0;  ///< index in the task's blocks
    std::uint32_t masked = 0;  ///< 0: `len` bytes follow; 1: (len + 7) / 8 mask bytes, then `len` bytes
    std::uint64_t offset = 0;
    std::uint64_t len = 0;
};

/// Rank 0: appends the array section for `blocks` (by reference if `same_node`). Throws
/// procpool::error if a block cannot be read, serialization_error past `limit` bytes.
void append_arrays(std::vector<std::byte>& out, const std::vector<detail::shm_ref>& blocks,
                   bool same_node, std::size_t limit);

/// A serving rank's side of a task's arrays.
struct received_arrays {
    std::vector<detail::shm_ref> blocks;  ///< for its local pool, in the section's order
    /// Per block: its bytes as they arrived, for by-value writable blocks (the changes are
    /// found against them); empty otherwise.
    std::vector<std::vector<std::byte>> sent;
};

/// Blocks a serving rank opened by reference, by id: tasks naming the same block share
/// one mapping (and workers their cached one) while any of them runs.
using linked_blocks = std::unordered_map<std::uint64_t, std::weak_ptr<detail::shm_block>>;

/// Serving rank: reads `count` blocks from the front of [p, p + n); returns the bytes read.
/// Throws procpool::error (or serialization_error) naming what failed.
std::size_t read_arrays(const std::byte* p, std::size_t n, std::uint32_t count,
                        linked_blocks& linked, received_arrays& out);

/// Serving rank: appends the changed ranges of its by-value writable blocks; returns how
/// many it appended.
std::uint32_t append_changes(std::vector<std::byte>& out, const received_arrays& a);

/// Rank 0: writes `count` changed ranges from the front of [p, p + n) into `blocks`;
/// returns the bytes read. Throws serialization_error if one does not fit its block.
std::size_t apply_changes(const std::byte* p, std::size_t n, std::uint32_t count,
                          const std::vector<detail::shm_ref>& blocks);

/// Rank 0's side of the start-up probe: a small block whose descriptor other ranks try to
/// open through /proc. True for a rank that read `token` through (pid, fd).
bool can_open_remote_fd(pid_t pid, int fd, std::uint64_t token) noexcept;

}  // namespace procpool::mpi_impl
