// Recycled task-record memory: per-thread lists of free blocks by size, and a shared depot
// that takes and gives whole batches, so a thread touches the depot's lock once per
// `batch` allocations or frees. See docs/architecture.md "Task records".
#include "procpool/detail/record_cache.hpp"

#include <pthread.h>

#include <cstdint>
#include <mutex>
#include <new>
#include <type_traits>
#include <utility>

// Under AddressSanitizer every record comes from the heap as before, so that a use of a
// freed record is still reported.
#if defined(__SANITIZE_ADDRESS__)
#define PROCPOOL_RECORD_CACHE_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROCPOOL_RECORD_CACHE_OFF 1
#endif
#endif

namespace procpool::detail::record_cache {

namespace {

#ifdef PROCPOOL_RECORD_CACHE_OFF
constexpr bool cache_on = false;
#else
constexpr bool cache_on = true;
#endif

constexpr std::size_t granule = 32;
constexpr std::size_t classes = max_block / granule;
constexpr std::uint32_t batch = 256;  // blocks a thread hands to or takes from the depot

// A free block, seen as a list node. The batch fields are valid in a batch's first block.
struct node {
    node* next;
    node* next_batch;
    std::uint32_t count;
};
static_assert(sizeof(node) <= granule, "a free block must hold its list node");

std::size_t class_of(std::size_t n) noexcept {
    return (n + granule - 1) / granule - 1;
}
std::size_t class_size(std::size_t c) noexcept {
    return (c + 1) * granule;
}

void free_list(node* head) noexcept {
    while (head != nullptr) ::operator delete(std::exchange(head, head->next));
}

// Batches of free blocks shared by all threads.
struct depot_t {
    std::mutex mu;
    node* batches[classes] = {};
    std::size_t bytes = 0;

    // Takes a batch of `count` blocks of class c (linked through next), or frees them
    // when the depot is full.
    void put(std::size_t c, node* head, std::uint32_t count) noexcept {
        {
            std::lock_guard lock(mu);
            const std::size_t add = count * class_size(c);
            if (bytes + add <= max_retained_bytes) {
                head->count = count;
                head->next_batch = batches[c];
                batches[c] = head;
                bytes += add;
                return;
            }
        }
        free_list(head);
    }

    // A batch of class c, or null.
    node* take(std::size_t c) noexcept {
        std::lock_guard lock(mu);
        node* b = batches[c];
        if (b != nullptr) {
            batches[c] = b->next_batch;
            bytes -= b->count * class_size(c);
        }
        return b;
    }
};

// Constant-initialized and trivially destructible: usable before any constructor ran and
// after every destructor, and with no initialization guard that a fork could copy half
// done (a child forked while another thread initialized a function-local static waited
// on its guard for ever). A fork (a worker forked from the pool's supervisor, or any fork
// of the user's) holds the lock across it, as glibc does for malloc's, so that the child
// never starts with it locked by a thread that does not exist there.
constinit depot_t the_depot;
static_assert(std::is_trivially_destructible_v<depot_t>,
              "the depot must outlive every thread that may free a record");
depot_t& depot() noexcept {
    return the_depot;
}
[[maybe_unused]] const int fork_handlers_registered = pthread_atfork(
    [] { the_depot.mu.lock(); }, [] { the_depot.mu.unlock(); }, [] { the_depot.mu.unlock(); });

// A thread's free blocks of one class: `head` (fewer than `batch`) and at most one full
// batch `full` ready to hand over whole, so a list is never walked to be split.
struct bin {
    node* head = nullptr;
    std::uint32_t count = 0;
    node* full = nullptr;
};

struct thread_cache {
    bin bins[classes];
    thread_cache() = default;
    thread_cache(const thread_cache&) = delete;
    thread_cache& operator=(const thread_cache&) = delete;
    ~thread_cache();
};

constinit thread_local bool cache_gone = false;  // trivial: readable after destruction

thread_cache::~thread_cache() {
    cache_gone = true;
    for (std::size_t c = 0; c < classes; ++c) {
        bin& b = bins[c];
        if (b.full != nullptr) depot().put(c, b.full, batch);
        if (b.head != nullptr) depot().put(c, b.head, b.count);
    }
}

// The calling thread's cache; null once its thread_local objects are destroyed.
thread_cache* local() noexcept {
    if (cache_gone) return nullptr;
    thread_local thread_cache cache;
    return &cache;
}

}  // namespace

void* allocate(std::size_t n) {
    if (cache_on && n != 0 && n <= max_block) {
        const std::size_t c = class_of(n);
        thread_cache* tc = local();
        if (tc == nullptr) return ::operator new(class_size(c));
        bin& b = tc->bins[c];
        if (b.head == nullptr) {
            if (b.full != nullptr) {
                b.head = std::exchange(b.full, nullptr);
                b.count = batch;
            } else if (node* got = depot().take(c); got != nullptr) {
                b.head = got;
                b.count = got->count;
            } else {
                return ::operator new(class_size(c));
            }
        }
        node* p = b.head;
        b.head = p->next;
        --b.count;
        return p;
    }
    return ::operator new(n);
}

void deallocate(void* p, std::size_t n) noexcept {
    if (cache_on && n != 0 && n <= max_block) {
        thread_cache* tc = local();
        if (tc == nullptr) {
            ::operator delete(p);
            return;
        }
        const std::size_t c = class_of(n);
        bin& b = tc->bins[c];
        auto* x = static_cast<node*>(p);
        x->next = b.head;
        b.head = x;
        if (++b.count == batch) {
            if (b.full != nullptr) depot().put(c, b.full, batch);
            b.full = std::exchange(b.head, nullptr);
            b.count = 0;
        }
        return;
    }
    ::operator delete(p);
}

void release() noexcept {
    node* drop[classes] = {};
    {
        depot_t& d = depot();
        std::lock_guard lock(d.mu);
        for (std::size_t c = 0; c < classes; ++c) drop[c] = std::exchange(d.batches[c], nullptr);
        d.bytes = 0;
    }
    for (node* b : drop) {
        while (b != nullptr) {
            node* next = b->next_batch;
            free_list(b);
            b = next;
        }
    }
}

bool enabled() noexcept {
    return cache_on;
}

std::size_t retained_bytes() noexcept {
    std::lock_guard lock(depot().mu);
    return depot().bytes;
}

}  // namespace procpool::detail::record_cache
