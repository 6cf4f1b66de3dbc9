#include "procpool/detail/shm.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>

#include "core/thread_end.hpp"
#include "procpool/detail/sync.hpp"
#include "procpool/error.hpp"

namespace procpool::detail {

namespace {

std::atomic<std::uint64_t> next_id{1};
std::atomic<bool> in_worker{false};
std::atomic<bool> keep_result_blocks{true};
thread_local attachments* current = nullptr;
thread_local bool current_read_only = false;
thread_local const void* current_in_place = nullptr;

std::mutex listeners_mutex;
// Never destroyed: a pool with static storage may leave the list at exit, after the
// statics made later than the list are gone. Constant-initialized, as are the caches
// below: a function-local static's guard, copied "in progress" into a worker forked while
// another thread made it, stopped the worker for good in shm_reseed_ids.
constinit never_destroyed<std::vector<shm_listener*>> listener_list;
std::vector<shm_listener*>& listeners() {
    return listener_list.value;
}

// Blocks of big std::vector arguments, kept for reuse once their task is over (see
// shm_block::reusable). A reused block is memory this process and the workers that cached it
// have already touched, so the copy into it runs at memcpy speed instead of paying for
// fresh pages, and the worker's mapping of it is reused too. Idle blocks are bounded in
// number and bytes and freed when the last pool goes away. Never destroyed: a block's last
// handle may let go during static destruction.
struct bulk_cache {
    std::mutex mu;
    std::vector<shm_block*> idle;
    std::size_t idle_bytes = 0;
};
constinit never_destroyed<bulk_cache> bulk_cache_storage;
bulk_cache& bulk_blocks() {
    return bulk_cache_storage.value;
}
constexpr std::size_t bulk_cache_blocks = 4;
constexpr std::size_t bulk_cache_bytes = std::size_t{256} << 20;
// Idle argument blocks (shm_block::reusable) and a worker's kept result blocks
// (returned_by_reader): 256 MiB of vectors, and the page each adds for its count or word.
constexpr std::size_t idle_cache_bytes = bulk_cache_bytes + bulk_cache_blocks * 4096;

// A worker's blocks of big std::vector results (see shm_block::returned_by_reader). Each
// ends in a word the parent sets to `word_free` when it lets go of its mapping (it copied
// the vector out of it by then); until then the block is the parent's to read. Only the
// worker's serving thread makes results, but the lock costs nothing next to the copy.
struct returned_cache {
    std::mutex mu;
    std::vector<shm_ref> blocks;
    std::size_t bytes = 0;
    int pid = 0;  // whose blocks: a process forked from a worker inherits the list, not them
};
constinit never_destroyed<returned_cache> returned_cache_storage;
returned_cache& returned_blocks() {
    return returned_cache_storage.value;
}
constexpr std::size_t return_word_bytes = 64;  // the last cache line of a returnable block
constexpr std::size_t progress_bytes = 64;     // the last cache line of a progressive block
// A progressive block's writer publishes its count after each piece: small enough that
// the reader starts soon (a 1 MiB vector is 8 pieces), large enough that the count's
// cache line moves between cores rarely next to the bytes.
constexpr std::size_t progress_piece = 128 * 1024;
constexpr std::uint32_t word_free = 0;
constexpr std::uint32_t word_with_reader = 1;

[[noreturn]] void fail(const std::string& what, int err) {
    throw error("procpool: " + what + ": " + std::strerror(err));
}

void* map_fd(int fd, std::size_t bytes, bool writable) {
    if (bytes == 0) return nullptr;
    void* p = mmap(nullptr, bytes, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED,
                   fd, 0);
    if (p == MAP_FAILED) return nullptr;
    // A worker started by fork() would otherwise inherit every array this process maps,
    // sent to it or not. Nothing relies on the inheritance: a worker maps what it receives
    // from the descriptor (adopt). It cannot fail on a plain shared mapping; if it did,
    // the only cost would be that inheritance.
    madvise(p, bytes, MADV_DONTFORK);
    return p;
}

// A sanitizer's allocator replaces malloc: its blocks carry no glibc chunk header.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define PROCPOOL_SANITIZER_MALLOC 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define PROCPOOL_SANITIZER_MALLOC 1
#endif
#endif

// Whether [p, p + bytes) is a block glibc's malloc mapped for that allocation alone,
// which it unmaps when the block is freed: the chunk header just before `p` (on the same
// page, so readable) says "mmapped", with a size that fits the request. Anything else (the
// heap, a chunk carved from a big free one, another allocator, a sanitizer's) is not.
bool own_malloc_mapping(const void* p, std::size_t bytes) noexcept {
#if defined(__GLIBC__) && !defined(PROCPOOL_SANITIZER_MALLOC)
    constexpr std::size_t page = 4096;
    constexpr std::size_t header = 2 * sizeof(std::size_t);  // prev_size, size
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    if (at % page != header) return false;
    std::size_t word[2];
    std::memcpy(word, reinterpret_cast<const void*>(at - header), sizeof word);
    constexpr std::size_t is_mmapped = 2;
    const std::size_t size = word[1] & ~std::size_t{7};
    return word[0] == 0 && (word[1] & 7) == is_mmapped && size % page == 0 &&
           size >= bytes + header && size - (bytes + header) < 2 * page;
#else
    (void)p;
    (void)bytes;
    return false;
#endif
}

}  // namespace

void populate_pages(const void* p, std::size_t bytes, bool write, bool private_memory,
                    bool malloc_allocation) noexcept {
    constexpr std::size_t page = 4096;
    constexpr std::size_t worth_it = 64 * 1024;  // below this a few traps cost as much
    if (p == nullptr || bytes < worth_it) return;
    const auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
    const auto hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(page - 1);
    if (hi <= lo) return;
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
    // Heap memory used before (a worker's, reused for the next big vector) has its pages
    // already: walking them again cost as much as the copy. Its first and last pages tell.
    // (Not for shared mappings: there mincore reports the page cache, not this mapping.)
    unsigned char first = 0;
    unsigned char last = 0;
    if (private_memory && mincore(reinterpret_cast<void*>(lo), page, &first) == 0 &&
        (first & 1) != 0 && mincore(reinterpret_cast<void*>(hi - page), page, &last) == 0 &&
        (last & 1) != 0) {
        return;
    }
    // Fresh memory of 32 MiB or more that glibc mapped for this allocation alone (and
    // unmaps when it is freed): asked for huge pages where the system allows them on
    // request. One fault per 2 MiB instead of 512 halved a 64 MiB copy into new memory on
    // the VMs measured (docs/architecture.md, "Huge pages for fresh vectors"). Never heap
    // memory, which a mark would outlive (pages given back would come back 2 MiB at a
    // time, and the heap's mapping would split): so not in a worker without a memory
    // limit, whose big allocations stay on its heap (keep_freed_memory_for_reuse). Only
    // the aligned 2 MiB blocks inside the range: memory outside it is never marked.
    constexpr std::size_t huge = std::size_t{2} << 20;
    constexpr std::size_t own_mapping = std::size_t{32} << 20;  // glibc's mmap threshold cap
    if (malloc_allocation && private_memory && write && bytes >= own_mapping &&
        own_malloc_mapping(p, bytes)) {
        const std::uintptr_t hlo = (lo + huge - 1) & ~(huge - 1);
        const std::uintptr_t hhi = hi & ~(huge - 1);
        if (hhi > hlo) madvise(reinterpret_cast<void*>(hlo), hhi - hlo, MADV_HUGEPAGE);
    }
    madvise(reinterpret_cast<void*>(lo), hi - lo, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
    (void)write;
    (void)private_memory;
    (void)malloc_allocation;
#endif
}

shm_block::shm_block(int fd, void* addr, std::size_t bytes, bool writable, bool notify)
    : fd_(fd),
      addr_(addr),
      bytes_(bytes),
      writable_(writable),
      notify_(notify),
      owner_pid_(static_cast<int>(getpid())),
      id_(next_id.fetch_add(1, std::memory_order_relaxed)) {}

shm_block::~shm_block() {
    if (mark_on_free_) {
        // Our reads of the block happen before the sender may rewrite it.
        std::atomic_ref<std::uint32_t>(*return_word_).store(word_free, std::memory_order_release);
    }
    if (addr_ != nullptr) munmap(addr_, bytes_);
    if (fd_ >= 0) close(fd_);
    // Only the process that made the block tells its pools (in a worker, the pools a task
    // made: the parent's are gone from its list, see shm_reseed_ids).
    if (notify_ && owner_pid_ == static_cast<int>(getpid())) {
        std::lock_guard lock(listeners_mutex);
        for (shm_listener* l : listeners()) l->forget_block(id_);
    }
}

std::shared_ptr<shm_block> shm_block::create(std::size_t bytes) {
    return std::shared_ptr<shm_block>(create_raw(bytes));
}

shm_block* shm_block::create_raw(std::size_t bytes) {
    const int fd = memfd_create("procpool-shared-array", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) fail("memfd_create for a shared array", errno);
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
        const int e = errno;
        close(fd);
        fail("cannot allocate a shared array of " + std::to_string(bytes) + " bytes", e);
    }
    // Every process the block is shared with holds a descriptor: one that shrank it would
    // make the others' next access to the lost pages a SIGBUS. Growing is sealed too, as
    // nothing needs it, and F_SEAL_SEAL keeps a worker from adding seals of its own.
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        const int e = errno;
        close(fd);
        fail("cannot seal a shared array's size", e);
    }
    void* p = map_fd(fd, bytes, true);
    if (bytes != 0 && p == nullptr) {
        const int e = errno;
        close(fd);
        fail("cannot map a shared array of " + std::to_string(bytes) + " bytes", e);
    }
    try {
        return new shm_block(fd, p, bytes, true, true);
    } catch (...) {
        if (p != nullptr) munmap(p, bytes);
        close(fd);
        throw;
    }
}

// Where a reusable block goes when its last handle lets go: back to the idle list if pools
// exist and there is room, else freed.
void shm_block::recycle(shm_block* b) noexcept {
    bulk_cache& c = bulk_blocks();
    bool keep = false;
    if (b->owner_pid_ == static_cast<int>(getpid()) && !in_worker.load(std::memory_order_relaxed)) {
        std::lock_guard listeners_lock(listeners_mutex);  // order: listeners, then cache
        std::lock_guard lock(c.mu);
        if (!listeners().empty() && c.idle.size() < bulk_cache_blocks &&
            c.idle_bytes + b->bytes_ <= idle_cache_bytes) {
            try {
                c.idle.push_back(b);
                c.idle_bytes += b->bytes_;
                keep = true;
            } catch (...) {  // NOLINT(bugprone-empty-catch): no memory: free it instead
            }
        }
    }
    if (!keep) delete b;
}

std::shared_ptr<shm_block> shm_block::reusable(std::size_t bytes) {
    constexpr std::size_t page = 4096;
    if (bytes > SIZE_MAX - progress_bytes - page) {
        throw error("procpool: cannot allocate a shared block of " + std::to_string(bytes) +
                    " bytes");
    }
    shm_block* b = nullptr;
    {
        bulk_cache& c = bulk_blocks();
        std::lock_guard lock(c.mu);
        // A process forked from the one that kept them (a fork() of your own, not a
        // worker) inherits the list but not the mappings (MADV_DONTFORK): they are dropped
        // without touching their memory; only the descriptors, copies made by fork, close.
        std::erase_if(c.idle, [&](shm_block* b) {
            if (b->owner_pid_ == static_cast<int>(getpid())) return false;
            c.idle_bytes -= b->bytes_;
            b->addr_ = nullptr;
            b->progress_ = nullptr;
            b->notify_ = false;
            delete b;
            return true;
        });
        // The smallest idle block that holds `bytes` without wasting more than half of it.
        auto best = c.idle.end();
        for (auto it = c.idle.begin(); it != c.idle.end(); ++it) {
            const std::size_t n = (*it)->usable_bytes();
            if (n < bytes || n / 2 > bytes) continue;
            if (best == c.idle.end() || n < (*best)->usable_bytes()) best = it;
        }
        if (best != c.idle.end()) {
            b = *best;
            c.idle.erase(best);
            c.idle_bytes -= b->bytes_;
        }
    }
    if (b == nullptr) {
        // Whole pages, the last 64 bytes of which are the count.
        b = create_raw((bytes + progress_bytes + page - 1) / page * page);
        b->populate_once(true);  // a new memfd: every page would fault
        b->progress_ = reinterpret_cast<std::uint64_t*>(static_cast<std::byte*>(b->addr_) +
                                                        b->bytes_ - progress_bytes);
    }
    try {
        return std::shared_ptr<shm_block>(b, &shm_block::recycle);
    } catch (...) {
        delete b;
        throw;
    }
}

std::shared_ptr<shm_block> shm_block::returned_by_reader(std::size_t bytes) {
    constexpr std::size_t page = 4096;
    // Whole pages, the last 64 bytes of which are the word.
    // Kept: vectors of up to 256 MiB, in all at most 256 MiB and the page each block adds
    // for its word (as idle argument blocks), so that a 256 MiB result is kept too.
    const std::size_t want = bytes <= bulk_cache_bytes
                                 ? (bytes + return_word_bytes + page - 1) / page * page
                                 : SIZE_MAX;
    if (want == SIZE_MAX || !keep_result_blocks.load(std::memory_order_relaxed)) {
        // Never kept: the blocks kept for smaller results stay.
        std::shared_ptr<shm_block> b = create(bytes);
        b->populate_once(true);  // a new memfd: every page would fault
        return b;
    }
    const auto is_free = [](const shm_ref& b) {
        return std::atomic_ref<std::uint32_t>(*b->return_word_).load(std::memory_order_acquire) ==
               word_free;
    };
    returned_cache& c = returned_blocks();
    std::lock_guard lock(c.mu);
    if (const int self = static_cast<int>(getpid()); c.pid != self) {
        // A worker of a pool made (by fork) inside a worker: the blocks listed are not
        // mapped here (MADV_DONTFORK), so they are dropped without reading or unmapping
        // them (the address range may hold something else by now); their descriptors,
        // copies made by fork, are closed.
        for (shm_ref& b : c.blocks) {
            b->addr_ = nullptr;
            b->return_word_ = nullptr;
        }
        c.blocks.clear();
        c.bytes = 0;
        c.pid = self;
    }
    // The smallest free block that holds `bytes` without wasting more than half of it.
    shm_ref* best = nullptr;
    for (shm_ref& b : c.blocks) {
        const std::size_t usable = b->bytes_ - return_word_bytes;
        if (usable < bytes || usable / 2 > bytes || !is_free(b)) continue;
        if (best == nullptr || b->bytes_ < (*best)->bytes_) best = &b;
    }
    if (best != nullptr) {
        std::atomic_ref<std::uint32_t>(*(*best)->return_word_)
            .store(word_with_reader, std::memory_order_relaxed);
        return *best;
    }
    // Room for a new one: free blocks that do not fit go first.
    while (c.blocks.size() >= bulk_cache_blocks || c.bytes + want > idle_cache_bytes) {
        auto it = std::find_if(c.blocks.begin(), c.blocks.end(), is_free);
        if (it == c.blocks.end()) break;
        c.bytes -= (*it)->bytes_;
        c.blocks.erase(it);
    }
    const bool keep = c.blocks.size() < bulk_cache_blocks && c.bytes + want <= idle_cache_bytes;
    std::shared_ptr<shm_block> b = create(keep ? want : bytes);
    b->populate_once(true);  // a new memfd: every page would fault
    if (keep) {
        b->return_word_ = reinterpret_cast<std::uint32_t*>(static_cast<std::byte*>(b->addr_) +
                                                           want - return_word_bytes);
        std::atomic_ref<std::uint32_t>(*b->return_word_)
            .store(word_with_reader, std::memory_order_relaxed);
        c.blocks.push_back(b);
        c.bytes += want;
    }
    return b;
}

void shm_block::mark_returned_on_free() noexcept {
    if (!writable_ || addr_ == nullptr || bytes_ < return_word_bytes ||
        bytes_ % return_word_bytes != 0) {
        return;
    }
    return_word_ = reinterpret_cast<std::uint32_t*>(static_cast<std::byte*>(addr_) + bytes_ -
                                                    return_word_bytes);
    mark_on_free_ = true;
}

std::size_t shm_block::usable_bytes() const noexcept {
    return progress_ != nullptr ? bytes_ - progress_bytes : bytes_;
}

void shm_block::mark_progressive() noexcept {
    if (addr_ == nullptr || bytes_ < progress_bytes || bytes_ % progress_bytes != 0) return;
    progress_ = reinterpret_cast<std::uint64_t*>(static_cast<std::byte*>(addr_) + bytes_ -
                                                 progress_bytes);
}

void shm_block::restart_progress() noexcept {
    if (progress_ != nullptr) {
        std::atomic_ref<std::uint64_t>(*progress_).store(0, std::memory_order_relaxed);
    }
}

void shm_block::write_in_pieces(const void* src, std::size_t bytes) noexcept {
    auto* dst = static_cast<std::byte*>(addr_);
    const auto* from = static_cast<const std::byte*>(src);
    if (progress_ == nullptr) {
        if (bytes != 0) std::memcpy(dst, from, bytes);
        return;
    }
    std::atomic_ref<std::uint64_t> count(*progress_);
    for (std::size_t done = 0; done < bytes;) {
        const std::size_t n = std::min(progress_piece, bytes - done);
        std::memcpy(dst + done, from + done, n);
        done += n;
        count.store(done, std::memory_order_release);  // the piece before the count
    }
}

std::size_t shm_block::arrived(std::size_t at_least) const noexcept {
    if (progress_ == nullptr) return SIZE_MAX;
    std::atomic_ref<std::uint64_t> count(*progress_);
    std::uint64_t got = count.load(std::memory_order_acquire);
    if (got >= at_least) return static_cast<std::size_t>(got);
    // The writer is copying the piece before it: usually there within microseconds.
    spin_until([&] { return (got = count.load(std::memory_order_acquire)) >= at_least; });
    const auto start = std::chrono::steady_clock::now();
    while (got < at_least) {
        // A writer descheduled (or stopped): yield for a while, then look every 50 us.
        if (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(2)) {
            cpu_yield();
        } else {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
        got = count.load(std::memory_order_acquire);
    }
    return static_cast<std::size_t>(got);
}

void bulk_writes::add(shm_ref b, const void* src, std::size_t bytes) {
    items_.push_back(item{std::move(b), src, bytes});
}

void bulk_writes::finish() noexcept {
    for (const item& i : items_) i.block->write_in_pieces(i.src, i.bytes);
    items_.clear();
}

void shm_block::close_descriptor() noexcept {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
}

void shm_keep_result_blocks(bool on) noexcept {
    keep_result_blocks.store(on, std::memory_order_relaxed);
}

void shm_block::return_now() noexcept {
    if (!mark_on_free_) return;
    mark_on_free_ = false;
    // Our reads of the block happen before the sender may rewrite it.
    std::atomic_ref<std::uint32_t>(*return_word_).store(word_free, std::memory_order_release);
    return_word_ = nullptr;  // not returnable by this process either
}

std::shared_ptr<shm_block> shm_block::open_file(const std::string& path, bool writable,
                                                bool create, std::size_t bytes) {
    int flags = O_CLOEXEC | (writable ? O_RDWR : O_RDONLY);
    if (create) flags |= O_CREAT | O_TRUNC;
    const int fd = ::open(path.c_str(), flags, 0644);
    if (fd < 0) fail("cannot open '" + path + "'", errno);
    if (create) {
        if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
            const int e = errno;
            close(fd);
            fail("cannot size '" + path + "' to " + std::to_string(bytes) + " bytes", e);
        }
    } else {
        struct stat st {};
        if (fstat(fd, &st) != 0) {
            const int e = errno;
            close(fd);
            fail("cannot stat '" + path + "'", e);
        }
        bytes = static_cast<std::size_t>(st.st_size);
    }
    void* p = map_fd(fd, bytes, writable);
    if (bytes != 0 && p == nullptr) {
        const int e = errno;
        close(fd);
        fail("cannot map '" + path + "'", e);
    }
    return std::shared_ptr<shm_block>(new shm_block(fd, p, bytes, writable, true));
}

std::shared_ptr<shm_block> shm_block::adopt(int fd, std::size_t bytes, bool writable,
                                            bool notify_on_free) {
    void* p = map_fd(fd, bytes, writable);
    if (bytes != 0 && p == nullptr) {
        const int e = errno;
        close(fd);
        fail("cannot map a shared array received from another process", e);
    }
    return std::shared_ptr<shm_block>(new shm_block(fd, p, bytes, writable, notify_on_free));
}

std::shared_ptr<shm_block> shm_block::relayed(int fd, std::size_t bytes, bool writable,
                                              std::uint64_t id, bool per_task) {
    std::shared_ptr<shm_block> b;
    if (fd < 0) {
        b.reset(create_raw(bytes));
        b->writable_ = writable;  // its mapping here stays writable: the copy is written in
    } else {
        b = adopt(fd, bytes, writable, true);
    }
    b->id_ = id;
    b->per_task_ = per_task;
    return b;
}

std::shared_ptr<shm_block> shm_block::read_only_twin() {
    if (!writable_) return shared_from_this();
    std::lock_guard lock(twin_mutex_);
    if (!twin_) {
        // Reopening through /proc gives a new open file description with its own access
        // mode; dup() would share this one's O_RDWR.
        const std::string path = "/proc/self/fd/" + std::to_string(fd_);
        const int ro = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (ro < 0) {
            fail("cannot open a read-only descriptor of a shared array (" + path + ")", errno);
        }
        twin_.reset(new shm_block(ro, nullptr, bytes_, false, true));
    }
    return twin_;
}

attachments* current_attachments() noexcept {
    return current;
}

void throw_cannot_attach() {
    throw serialization_error(
        "a shared array can only be serialized as a process_pool task argument or result");
}

void throw_not_received(std::uint64_t id) {
    throw serialization_error("a shared array in this message was not received (id " +
                              std::to_string(id) + ")");
}

bulk_in_place::bulk_in_place(const void* p) noexcept : old_(current_in_place) {
    current_in_place = p;
}

bulk_in_place::~bulk_in_place() {
    current_in_place = old_;
}

bool bulk_in_place::covers(const void* p) noexcept {
    return p != nullptr && p == current_in_place;
}

read_only_attachments::read_only_attachments() noexcept : old_(current_read_only) {
    current_read_only = true;
}

read_only_attachments::~read_only_attachments() {
    current_read_only = old_;
}

bool read_only_attachments::active() noexcept {
    return current_read_only;
}

attachment_scope::attachment_scope(attachments* a) noexcept
    : own_(nullptr, nullptr), old_(current) {
    current = a;
}

attachment_scope::attachment_scope(std::vector<shm_ref>* sink, const shm_table* source,
                                   std::size_t threshold) noexcept
    : own_(sink, source, threshold), old_(current) {
    current = &own_;
}

attachment_scope::attachment_scope(std::vector<shm_ref>* sink, std::size_t threshold,
                                   bulk_writes* later) noexcept
    : own_(sink, nullptr, threshold, false, later), old_(current) {
    current = &own_;
}

attachment_scope::~attachment_scope() {
    current = old_;
}

// Records `b` itself (not a twin) as travelling with the message.
std::uint64_t shm_attachments::record(const shm_ref& b) {
    if (sink_ == nullptr) throw_cannot_attach();
    if (std::none_of(sink_->begin(), sink_->end(),
                     [&](const shm_ref& x) { return x->id() == b->id(); })) {
        sink_->push_back(b);
    }
    return b->id();
}

std::uint64_t shm_attachments::put_bulk(const void* p, std::size_t bytes) {
    // In a worker, a block of a result is read by the parent after the worker let go of
    // it: only the parent (which frees a task's blocks once the worker is done with it)
    // may reuse its blocks.
    if (bytes == 0) return record(shm_block::create(0));
    if (worker_results_) {
        // The parent hands the block back (a word in it) once it has copied the vector out.
        shm_ref b = shm_block::returned_by_reader(bytes);
        std::memcpy(b->data(), p, bytes);
        return record(b);
    }
    if (in_worker.load(std::memory_order_relaxed)) {
        // A pool made inside a worker: its arguments' blocks are not reused.
        shm_ref b = shm_block::create(bytes);
        populate_pages(b->data(), bytes, true);  // a new memfd: every page would fault
        std::memcpy(b->data(), p, bytes);
        return record(b);
    }
    shm_ref b = shm_block::reusable(bytes);
    if (later_ != nullptr && bulk_in_place::covers(p)) {
        // A task argument's own vector, alive until its submit returns: copied in once the
        // task is sent, so that the worker copies each piece out as it arrives.
        b->restart_progress();
        later_->add(b, p, bytes);
    } else {
        b->write_in_pieces(p, bytes);
    }
    // A private copy, read-only parameter or not: a twin would buy nothing.
    return record(b);
}

const void* shm_attachments::arriving_bulk(std::uint64_t id, std::size_t bytes) {
    shm_ref b = resolve(id);
    if (b->usable_bytes() < bytes) {
        throw serialization_error("a shared block is smaller than the vector that names it");
    }
    b->populate_once(false);  // mapped afresh here: read it without a trap per page
    return b->data();
}

std::size_t shm_attachments::bulk_arrived(std::uint64_t id, std::size_t at_least) {
    return resolve(id)->arrived(at_least);
}

const void* shm_attachments::get_bulk(std::uint64_t id, std::size_t bytes) {
    const void* p = arriving_bulk(id, bytes);
    (void)bulk_arrived(id, bytes);
    return p;
}

void shm_attachments::bulk_copied(std::uint64_t id) noexcept {
    if (source_ == nullptr) return;
    auto it = source_->find(id);
    if (it != source_->end()) it->second->return_now();
}

std::uint64_t shm_attachments::attach(const shm_ref& b, bool read_only) {
    // Without a sink record() throws: make no twin for nothing.
    if (read_only && sink_ != nullptr) return record(b->read_only_twin());
    return record(b);
}

shm_ref shm_attachments::resolve(std::uint64_t id) {
    if (source_ != nullptr) {
        auto it = source_->find(id);
        if (it != source_->end()) return it->second;
    }
    throw_not_received(id);
}

void shm_reseed_ids(std::uint64_t base) noexcept {
    next_id.store(base, std::memory_order_relaxed);
    in_worker.store(true, std::memory_order_relaxed);
    // A worker has one thread, forked from a program that may run others: a lock one of
    // them held is copied locked. The listener list names the parent's pools, which do
    // not exist here; a pool a task makes adds itself afresh. The parent's idle blocks
    // are forgotten, not freed: their mappings were not copied (MADV_DONTFORK) and their
    // descriptors are closed, so the addresses and fd numbers may be another's by now.
    new (&listeners_mutex) std::mutex();
    listeners().clear();
    bulk_cache& idle = bulk_blocks();
    new (&idle.mu) std::mutex();
    idle.idle.clear();
    idle.idle_bytes = 0;
    new (&returned_blocks().mu) std::mutex();
}

bool in_worker_process() noexcept {
    return in_worker.load(std::memory_order_relaxed);
}

void add_shm_listener(shm_listener* l) {
    std::lock_guard lock(listeners_mutex);
    listeners().push_back(l);
}

void remove_shm_listener(shm_listener* l) {
    std::vector<shm_block*> freed;
    {
        std::lock_guard lock(listeners_mutex);
        std::erase(listeners(), l);
        if (listeners().empty()) {  // no pool left to send reused blocks to
            bulk_cache& c = bulk_blocks();
            std::lock_guard cache_lock(c.mu);
            freed.swap(c.idle);
            c.idle_bytes = 0;
        }
    }
    for (shm_block* b : freed) delete b;  // outside the locks: ~shm_block takes them
}

std::size_t idle_bulk_blocks() noexcept {
    bulk_cache& c = bulk_blocks();
    std::lock_guard lock(c.mu);
    return c.idle.size();
}

}  // namespace procpool::detail
