// shared_array and mapped_file_array: large data for worker processes without copying.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "procpool/detail/shm.hpp"
#include "procpool/error.hpp"

namespace procpool {

/// A view of a shared array as a task parameter: `void blur(shared_span<float> img)` may
/// write, `double sum(shared_span<const double> xs)` promises only to read. Built from a
/// `shared_array<T>` or `mapped_file_array<T>` argument; valid while the task runs (and
/// while the array it came from lives).
/// A `shared_span<const T>` parameter gets the memory read-only: the worker maps it from
/// a read-only descriptor, so a stray write faults in the worker, and the task cannot
/// truncate or remap the array under the parent. (This needs the parameter types to be
/// visible: a function, or a lambda whose parameters are not `auto`.)
template <class T>
using shared_span = std::span<T>;

namespace detail {

/// What shared_array and mapped_file_array have in common: a typed window on a block.
template <class T>
class shared_storage {
    static_assert(std::is_trivially_copyable_v<T>,
                  "procpool shared arrays hold trivially copyable element types only: the "
                  "bytes are shared between processes as they are");

public:
    using value_type = T;
    using iterator = T*;
    using const_iterator = const T*;

    /// Pointer to the first element (null when empty).
    T* data() const noexcept { return block_ ? static_cast<T*>(block_->data()) : nullptr; }
    /// Number of elements.
    std::size_t size() const noexcept { return size_; }
    /// True if it holds no elements.
    bool empty() const noexcept { return size_ == 0; }
    /// Element `i` (unchecked, like std::vector).
    T& operator[](std::size_t i) const noexcept { return data()[i]; }
    T* begin() const noexcept { return data(); }
    T* end() const noexcept { return data() + size_; }
    /// The elements as a span; also converts implicitly, so a task may take
    /// `shared_span<T>` / `shared_span<const T>`.
    std::span<T> span() const noexcept { return {data(), size_}; }
    operator std::span<T>() const noexcept { return span(); }
    operator std::span<const T>() const noexcept { return {data(), size_}; }

    /// Serialization for process_pool (cereal convention): the block's descriptor travels
    /// beside the message; only its id and the element count go into the bytes.
    template <class Archive>
    void save(Archive& ar) const {
        std::uint64_t id = 0;
        if (block_) {
            attachments* const a = current_attachments();
            if (a == nullptr) throw_cannot_attach();
            id = a->attach(block_, read_only_attachments::active());
        }
        std::uint64_t n = size_;
        ar(id, n);
    }
    template <class Archive>
    void load(Archive& ar) {
        std::uint64_t id = 0;
        std::uint64_t n = 0;
        ar(id, n);
        if (id == 0) {
            block_.reset();
            size_ = 0;
            return;
        }
        attachments* const a = current_attachments();
        if (a == nullptr) throw_not_received(id);
        block_ = a->resolve(id);
        if (n > block_->bytes() / sizeof(T)) {
            throw serialization_error("shared array larger than the memory it names");
        }
        size_ = static_cast<std::size_t>(n);
    }

protected:
    shared_storage() = default;
    shared_storage(shm_ref b, std::size_t n) : block_(std::move(b)), size_(n) {}
    static std::size_t bytes_for(std::size_t n) {
        if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
            throw invalid_argument("procpool: shared array of " + std::to_string(n) +
                                   " elements is larger than the address space");
        }
        return n * sizeof(T);
    }
    shm_ref block_;
    std::size_t size_ = 0;
};

}  // namespace detail

/// A fixed-size array in anonymous shared memory (memfd: nothing in /dev/shm to leak),
/// zero-initialised, that process_pool tasks receive without copying: pass it as an
/// argument and the worker maps the same memory (once; workers cache the mapping).
/// Writes on either side are visible to the other once the task's future resolves.
/// Copies of a shared_array share the memory; it is freed when the last handle, and
/// every task that was given it, let go. A task may also return a shared_array.
/// A child made by fork() does not inherit the mapping (so forked workers see only the
/// arrays they are sent): share it with your own children through a process_pool.
template <class T>
class shared_array : public detail::shared_storage<T> {
public:
    /// An empty array.
    shared_array() = default;
    /// `n` zero-initialised elements. Throws procpool::error if the memory cannot be had.
    explicit shared_array(std::size_t n)
        : detail::shared_storage<T>(detail::shm_block::create(this->bytes_for(n)), n) {}
};

/// How a mapped_file_array opens its file.
enum class file_mode {
    read_only,   ///< map an existing file read-only
    read_write,  ///< map an existing file; writes reach the file
};

/// A file mapped as an array of T (Python's `numpy.memmap`), passable to process_pool
/// tasks like a shared_array: workers map the same file pages, nothing is copied.
/// Like a shared_array's, its mapping is not inherited by fork().
template <class T>
class mapped_file_array : public detail::shared_storage<T> {
public:
    /// An empty array.
    mapped_file_array() = default;
    /// Maps the existing file at `path`; its size must be a multiple of sizeof(T).
    /// Throws procpool::error naming the file if it cannot be opened or mapped.
    explicit mapped_file_array(const std::string& path, file_mode mode = file_mode::read_only)
        : detail::shared_storage<T>(
              detail::shm_block::open_file(path, mode == file_mode::read_write, false, 0), 0) {
        this->size_ = this->block_->bytes() / sizeof(T);
        if (this->size_ * sizeof(T) != this->block_->bytes()) {
            throw invalid_argument("procpool: '" + path + "' has " +
                                   std::to_string(this->block_->bytes()) +
                                   " bytes, not a whole number of elements");
        }
    }
    /// Creates (or truncates) the file at `path` with `n` zero elements, mapped writable.
    static mapped_file_array create(const std::string& path, std::size_t n) {
        mapped_file_array a;
        a.block_ = detail::shm_block::open_file(path, true, true, a.bytes_for(n));
        a.size_ = n;
        return a;
    }
    /// True if writes are allowed.
    bool writable() const noexcept { return this->block_ && this->block_->writable(); }
};

}  // namespace procpool
