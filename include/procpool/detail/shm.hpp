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

#include "procpool/detail/attachments.hpp"

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
    /// As `create`, for the block of a big std::vector argument: an idle block from an
    /// earlier one is reused if one fits (its memory already touched here and mapped by the
    /// workers that had it), and this one goes back to the idle list when its last handle
    /// lets go (bounded; emptied when the last pool goes away). For the parent's blocks
    /// only: a block is rewritten as soon as it is reused. The block is `progressive`:
    /// at least `bytes` usable bytes, written with write_in_pieces.
    static std::shared_ptr<shm_block> reusable(std::size_t bytes);
    /// As `create`, for the block of a big std::vector *result* in a worker: the block
    /// goes back to the worker once the parent has read it (the parent marks its last
    /// 64 bytes when it lets go of the block, see returnable()), so the next big result
    /// is copied into memory already touched. At least `bytes` usable bytes; bounded
    /// (4 blocks, 256 MiB per worker), a plain block when the bound is reached.
    static std::shared_ptr<shm_block> returned_by_reader(std::size_t bytes);
    /// Maps `path`. `create` makes (or truncates) it to `bytes`; otherwise its size is used.
    static std::shared_ptr<shm_block> open_file(const std::string& path, bool writable,
                                                bool create, std::size_t bytes);
    /// Maps a descriptor received from another process (takes ownership of `fd`).
    static std::shared_ptr<shm_block> adopt(int fd, std::size_t bytes, bool writable,
                                            bool notify_on_free);

    /// A block relayed under the id another process gave it: an mpi_pool serving rank
    /// passes rank 0's shared arrays to its workers under rank 0's ids, the ids the task's
    /// bytes name. `fd` >= 0: maps that descriptor (takes ownership); -1: a new
    /// zero-filled block of `bytes`, mapped writable here whatever `writable` says (which
    /// is how workers map it). `per_task`: a private copy for one task: pools send it to
    /// a worker every time (never taking it for one the worker has under the same id) and
    /// have the worker drop it after that task.
    static std::shared_ptr<shm_block> relayed(int fd, std::size_t bytes, bool writable,
                                              std::uint64_t id, bool per_task);

    shm_block(const shm_block&) = delete;
    shm_block& operator=(const shm_block&) = delete;
    ~shm_block();

    void* data() const noexcept { return addr_; }
    std::size_t bytes() const noexcept { return bytes_; }
    int fd() const noexcept { return fd_; }
    bool writable() const noexcept { return writable_; }
    /// See relayed(): a private copy for one task, not to be cached by workers.
    bool per_task() const noexcept { return per_task_; }
    /// A block of returned_by_reader(): the receiver is told so (attach_msg's flags) and
    /// marks it free when it lets go (mark_returned_on_free).
    bool returnable() const noexcept { return return_word_ != nullptr && !mark_on_free_; }
    /// Receiver: when this block's last handle lets go, mark the word in its last 64 bytes
    /// "read" so that its sender may reuse it. Ignored for read-only or tiny mappings.
    void mark_returned_on_free() noexcept;
    /// Receiver: marks it "read" now, not when it is freed; nothing is read from it after.
    void return_now() noexcept;
    /// Receiver: whether mark_returned_on_free took (a writable mapping of whole lines).
    bool returnable_mapping() const noexcept { return mark_on_free_; }

    /// A block whose last 64 bytes count the bytes its writer has copied in so far
    /// (`reusable`'s, or one received with that flag: mark_progressive), so that a reader
    /// copies the first pieces out while the rest are still going in.
    bool progressive() const noexcept { return progress_ != nullptr; }
    /// The bytes a message may use: bytes(), less the count's line if progressive.
    std::size_t usable_bytes() const noexcept;
    /// Receiver: the block's sender counts its bytes in (see progressive). Ignored for a
    /// mapping that is not of whole lines.
    void mark_progressive() noexcept;
    /// Writer: sets the count to 0; before the message naming the block is published.
    void restart_progress() noexcept;
    /// Writer: copies `bytes` bytes from `src` to the block's start, publishing the count
    /// (release) after each piece. For a block that is not progressive: one memcpy.
    void write_in_pieces(const void* src, std::size_t bytes) noexcept;
    /// Reader: waits until at least `at_least` bytes have been written and returns the
    /// count (acquire: those bytes may be read). SIZE_MAX if the block is not progressive.
    /// Spins, then yields, then polls every 50 us: the writer is a memcpy under way.
    std::size_t arrived(std::size_t at_least) const noexcept;
    /// Closes the descriptor, keeping the mapping: for a block only read here and never
    /// passed on (a worker's result block the parent keeps mapped), so that kept mappings
    /// cost no descriptors. fd() is -1 after.
    void close_descriptor() noexcept;
    /// Process-unique identity; workers cache mappings by it.
    std::uint64_t id() const noexcept { return id_; }
    /// Maps this block's pages into this process's page tables in one call, the first time
    /// only (see populate_pages); not thread-safe (one reader of a message calls it).
    void populate_once(bool write) noexcept {
        if (populated_) return;
        populated_ = true;
        populate_pages(addr_, bytes_, write);
    }

    /// What a task that only reads this block is sent: the block itself if it is
    /// read-only, else its read-only twin: the same memory under its own id, with a
    /// descriptor opened O_RDONLY, so the worker can neither map it writable nor truncate
    /// it. The twin has no mapping in this process (its data() is null); it is made on
    /// first use and kept as long as this block, so a worker maps it once.
    /// Throws procpool::error if the descriptor cannot be reopened (no /proc).
    std::shared_ptr<shm_block> read_only_twin();

private:
    shm_block(int fd, void* addr, std::size_t bytes, bool writable, bool notify);
    static shm_block* create_raw(std::size_t bytes);
    static void recycle(shm_block* b) noexcept;
    int fd_;
    void* addr_;
    std::size_t bytes_;
    bool writable_;
    bool notify_;
    int owner_pid_;
    std::uint64_t id_;
    bool populated_ = false;
    bool per_task_ = false;
    bool mark_on_free_ = false;
    std::uint32_t* return_word_ = nullptr;  // in the mapping's last 64 bytes
    std::uint64_t* progress_ = nullptr;     // in the mapping's last 64 bytes
    std::mutex twin_mutex_;
    std::shared_ptr<shm_block> twin_;
};

/// Blocks a message refers to, by the id written in the message.
using shm_table = std::unordered_map<std::uint64_t, shm_ref>;

/// Big vectors a message being written put in progressive blocks without copying them
/// (see bulk_in_place): finish() copies them in once the message is sent, so that the
/// receiver copies each piece out as it arrives instead of waiting for the whole. The
/// destructor finishes what is left: a block is always written in the end.
class bulk_writes {
public:
    bulk_writes() = default;
    ~bulk_writes() { finish(); }
    bulk_writes(const bulk_writes&) = delete;
    bulk_writes& operator=(const bulk_writes&) = delete;

    /// Records that `bytes` bytes at `src` go into `b` (progress restarted by the caller).
    void add(shm_ref b, const void* src, std::size_t bytes);
    /// Copies every recorded vector into its block, in order, and forgets them.
    void finish() noexcept;

private:
    struct item {
        shm_ref block;
        const void* src;
        std::size_t bytes;
    };
    std::vector<item> items_;
};

/// The process pool's attachments: blocks travel as memfd descriptors beside the message.
/// Blocks a message being written sends are recorded in `sink` (each once); blocks a
/// message being read names are looked up in `source`, the ones received with it. Big
/// vectors get a block of their own.
class shm_attachments final : public attachments {
public:
    /// `sink`: where blocks sent are recorded (null: writing a shared array throws);
    /// `source`: the blocks received (null: none); `threshold`: see bulk_threshold (both
    /// sides use the pool's setting).
    /// `worker_results`: the messages written are a worker's results to its parent, whose
    /// big vectors go into blocks the parent hands back (shm_block::returned_by_reader).
    /// `later`: where big vectors that are a task argument's own storage (bulk_in_place)
    /// are recorded instead of copied; null: copied at once.
    shm_attachments(std::vector<shm_ref>* sink, const shm_table* source,
                    std::size_t threshold = SIZE_MAX, bool worker_results = false,
                    bulk_writes* later = nullptr) noexcept
        : sink_(sink),
          source_(source),
          threshold_(threshold),
          worker_results_(worker_results),
          later_(later) {}

    /// The threshold given to the constructor.
    std::size_t bulk_threshold() const noexcept override { return threshold_; }
    /// Copies the bytes into a new block of their own, sent with the message.
    std::uint64_t put_bulk(const void* p, std::size_t bytes) override;
    /// The memory of received block `id`, checked to hold `bytes`, once they are all there.
    const void* get_bulk(std::uint64_t id, std::size_t bytes) override;
    /// As get_bulk, without waiting for the bytes (see shm_block::arrived).
    const void* arriving_bulk(std::uint64_t id, std::size_t bytes) override;
    /// shm_block::arrived of block `id`.
    std::size_t bulk_arrived(std::uint64_t id, std::size_t at_least) override;
    /// Hands a worker's result block back to it now (see shm_block::mark_returned_on_free).
    void bulk_copied(std::uint64_t id) noexcept override;
    /// Records `b` (or its read-only twin) in the sink; its id is the block's own.
    std::uint64_t attach(const shm_ref& b, bool read_only) override;
    /// Looks `id` up in the source table.
    shm_ref resolve(std::uint64_t id) override;

private:
    std::uint64_t record(const shm_ref& b);
    std::vector<shm_ref>* sink_;
    const shm_table* source_;
    std::size_t threshold_;
    bool worker_results_;
    bulk_writes* later_;
};

/// While alive, makes `a` (or the shm_attachments it owns) this thread's attachments
/// (current_attachments()); the previous ones come back when it ends.
class attachment_scope {
public:
    /// Installs `a`, which must outlive the scope; null: none (shared arrays cannot cross,
    /// every vector goes in the byte stream).
    explicit attachment_scope(attachments* a) noexcept;
    /// Installs shm_attachments(sink, source, threshold), owned by the scope.
    attachment_scope(std::vector<shm_ref>* sink, const shm_table* source,
                     std::size_t threshold = SIZE_MAX) noexcept;
    /// Installs shm_attachments(sink, nullptr, threshold, false, later): a task's
    /// arguments, whose own big vectors `later` copies in once the task is sent.
    attachment_scope(std::vector<shm_ref>* sink, std::size_t threshold,
                     bulk_writes* later) noexcept;
    ~attachment_scope();
    attachment_scope(const attachment_scope&) = delete;
    attachment_scope& operator=(const attachment_scope&) = delete;

private:
    shm_attachments own_;
    attachments* old_;
};

/// Pools register here so that freeing a block can drop workers' cached mappings.
class shm_listener {
public:
    virtual void forget_block(std::uint64_t id) noexcept = 0;

protected:
    ~shm_listener() = default;
};
void add_shm_listener(shm_listener* l);
/// Called once in a new worker: its blocks get ids that cannot collide with the parent's.
/// From then on in_worker_process() is true in that process.
void shm_reseed_ids(std::uint64_t base) noexcept;
/// True in a worker process of any pool (once shm_reseed_ids ran there).
bool in_worker_process() noexcept;
/// In a worker: whether big results go into blocks the worker keeps for reuse
/// (shm_block::returned_by_reader; default on). Off under a memory limit, where kept
/// blocks would count against the address space the next task may use.
void shm_keep_result_blocks(bool on) noexcept;
void remove_shm_listener(shm_listener* l);
/// Blocks of big vector arguments kept idle for reuse (see shm_block::reusable); for tests.
std::size_t idle_bulk_blocks() noexcept;

}  // namespace procpool::detail
