// Recycled memory for futures' shared states (every executor's per-task record): one
// allocation per submit, of a few hundred bytes, that glibc returns to the kernel when a burst of
// them is freed (they merge into the top of the heap and are trimmed), so that the next burst pays
// a page fault per 4 KiB again (11-14 us each on a VM, see docs/architecture.md
// "Task records"). The cache keeps freed blocks for reuse instead.
#pragma once

#include <cstddef>

namespace procpool::detail::record_cache {

/// Most bytes of freed blocks kept for reuse in the shared depot (per-thread caches hold
/// at most 511 blocks per size on top of this). Kept for the life of the process, as an
/// allocator keeps its free lists: giving them back to the heap when the last pool closed
/// made a later `map` 4x slower here (glibc then trimmed the supervisor's arena on every
/// map; see docs/architecture.md "Task records").
inline constexpr std::size_t max_retained_bytes = std::size_t{64} << 20;

/// Blocks above this size are not cached (plain operator new/delete).
inline constexpr std::size_t max_block = 1024;

/// A block of at least `n` bytes, aligned for any fundamental type. Throws std::bad_alloc.
void* allocate(std::size_t n);

/// Returns a block from `allocate(n)` (the same `n`) for reuse. Any thread may call it.
void deallocate(void* p, std::size_t n) noexcept;

/// Returns the depot's blocks to the heap (the calling thread's own lists stay).
void release() noexcept;

/// False in builds where blocks always come from the heap (AddressSanitizer, so that a
/// use of a freed record is still reported).
bool enabled() noexcept;

/// Bytes of blocks in the shared depot now (for tests).
std::size_t retained_bytes() noexcept;

}  // namespace procpool::detail::record_cache
