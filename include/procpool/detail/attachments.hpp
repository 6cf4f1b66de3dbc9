// What a serialized message carries beside its bytes, as the transport provides it: the wire
// codec and shared arrays reach out-of-band data only through the `attachments` installed
// for the current thread (shm.hpp has the process pool's, and the scope that installs one).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace procpool::detail {

class shm_block;
/// A handle on a shared block (see shm.hpp).
using shm_ref = std::shared_ptr<shm_block>;

/// The out-of-band side of the message being written or read on this thread, supplied by
/// its transport. Ids are the transport's own; the message stores them and gives them back.
class attachments {
public:
    /// Vectors of trivially copyable elements of at least this many bytes travel out of
    /// band (put_bulk/get_bulk) instead of in the byte stream; SIZE_MAX: never. Writer and
    /// reader of a message must agree on it.
    virtual std::size_t bulk_threshold() const noexcept = 0;
    /// Copies `bytes` bytes at `p` out of band; returns the id the message names them by.
    virtual std::uint64_t put_bulk(const void* p, std::size_t bytes) = 0;
    /// The bytes sent as `id`, valid while this message is being read. Throws
    /// serialization_error if `id` is unknown or holds fewer than `bytes` bytes.
    virtual const void* get_bulk(std::uint64_t id, std::size_t bytes) = 0;
    /// The bytes of get_bulk(`id`) have been copied out: their sender may have them back.
    virtual void bulk_copied(std::uint64_t id) noexcept = 0;
    /// As get_bulk, but without waiting for the bytes: a sender may still be copying them
    /// in, front to back (see bulk_in_place). Read only what bulk_arrived says is there.
    virtual const void* arriving_bulk(std::uint64_t id, std::size_t bytes) {
        return get_bulk(id, bytes);
    }
    /// Waits until at least `at_least` bytes of `id` are there; returns how many are
    /// (at least `at_least`; SIZE_MAX once they all are).
    virtual std::size_t bulk_arrived(std::uint64_t /*id*/, std::size_t /*at_least*/) {
        return SIZE_MAX;
    }
    /// Records block `b` as travelling with the message (its read-only twin if
    /// `read_only`, see shm_block::read_only_twin); returns the id the message names it by.
    /// Throws serialization_error if this message cannot carry blocks.
    virtual std::uint64_t attach(const shm_ref& b, bool read_only) = 0;
    /// The block the message names by `id` (never null); throws serialization_error if
    /// it did not come with the message.
    virtual shm_ref resolve(std::uint64_t id) = 0;

protected:
    ~attachments() = default;
};

/// Maps the whole pages inside [p, p + bytes) into this process's page tables in one
/// call (madvise MADV_POPULATE_WRITE, or _READ if `write` is false), so that a copy into
/// (or out of) fresh memory does not take one trap per 4 KiB page; several times cheaper
/// on a VM (docs/architecture.md, "First use"). Only a hint: does nothing where the kernel
/// lacks it, for small ranges, or if it fails. `private_memory`: the range is this
/// process's own (heap) memory: nothing is done if its first and last pages are resident.
/// `malloc_allocation`: the range is one allocation from malloc (a `std::allocator`
/// vector's storage); if it is 32 MiB or more, is written, its first and last pages are
/// not resident, and glibc's chunk header says it mapped the block for this allocation
/// alone, the aligned 2 MiB blocks inside it are first marked for transparent huge pages
/// (MADV_HUGEPAGE), where the system allows them on request.
void populate_pages(const void* p, std::size_t bytes, bool write, bool private_memory = false,
                    bool malloc_allocation = false) noexcept;

/// The attachments installed on this thread (see attachment_scope); null outside any.
attachments* current_attachments() noexcept;

/// Throws the serialization_error for a shared array serialized where no message can
/// carry it.
[[noreturn]] void throw_cannot_attach();
/// Throws the serialization_error for a message naming a shared array, as `id`, that did
/// not come with it.
[[noreturn]] void throw_not_received(std::uint64_t id);

/// While alive, the bytes at `p` on this thread are a task argument's own vector storage,
/// alive until its submit returns: its transport may copy them out of band after the
/// message is sent, while the receiver copies the first pieces out (put_bulk then records
/// the copy instead of making it; see shm_attachments). Set only around a vector saved
/// in place, never around a codec's temporary.
class bulk_in_place {
public:
    explicit bulk_in_place(const void* p) noexcept;
    ~bulk_in_place();
    bulk_in_place(const bulk_in_place&) = delete;
    bulk_in_place& operator=(const bulk_in_place&) = delete;

    /// True on this thread if `p` is the storage a live scope names.
    static bool covers(const void* p) noexcept;

private:
    const void* old_;
};

/// While alive, shared arrays serialized on this thread travel as their read-only twins
/// (see shm_block::read_only_twin). Set around a task argument whose parameter is a span
/// of const elements, so the promise not to write is kept by the worker's mapping.
class read_only_attachments {
public:
    read_only_attachments() noexcept;
    ~read_only_attachments();
    read_only_attachments(const read_only_attachments&) = delete;
    read_only_attachments& operator=(const read_only_attachments&) = delete;

    /// True on this thread while such a scope is alive: passed as attach()'s `read_only`.
    static bool active() noexcept;

private:
    bool old_;
};

}  // namespace procpool::detail
