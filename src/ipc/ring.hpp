// Single-producer single-consumer byte ring in shared memory, and the per-worker region.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace procpool::ipc {

/// Control words of one SPSC ring. Producer and consumer indices sit on separate cache
/// lines so the two processes do not false-share.
struct ring_ctl {
    alignas(64) std::atomic<std::uint64_t> head{0};  ///< bytes published (producer)
    alignas(64) std::atomic<std::uint64_t> tail{0};  ///< bytes consumed (consumer)
    /// Consumer parked on `data_futex` (set by the consumer, cleared by the producer).
    alignas(64) std::atomic<std::uint32_t> consumer_sleeping{0};
    std::atomic<std::uint32_t> data_futex{0};
    /// Producer parked on `space_futex`, waiting for the consumer to free space.
    std::atomic<std::uint32_t> producer_sleeping{0};
    std::atomic<std::uint32_t> space_futex{0};
};

/// One message in a ring: an 8-byte header (payload length, type) then the payload,
/// padded to 8 bytes. A `pad` frame fills the end of the buffer when a frame would wrap.
struct frame_header {
    std::uint32_t len;
    std::uint32_t type;
};
inline constexpr std::uint32_t frame_pad = 0;

/// A view of a ring: control block plus data area, both in a shared mapping.
/// The producer side and the consumer side are each used by one thread only.
class ring {
public:
    ring() = default;
    ring(ring_ctl* ctl, std::byte* data, std::uint32_t capacity) noexcept
        : ctl_(ctl), data_(data), cap_(capacity) {}

    static constexpr std::uint32_t frame_size(std::uint32_t len) noexcept {
        return static_cast<std::uint32_t>(sizeof(frame_header)) + ((len + 7u) & ~7u);
    }
    /// The largest payload one frame may carry.
    std::uint32_t max_payload() const noexcept { return cap_ / 4; }

    /// Producer: room for a `len`-byte payload, or nullptr if the ring is too full now.
    /// Nothing is visible to the consumer until `commit`.
    std::byte* try_reserve(std::uint32_t len) noexcept {
        const std::uint64_t head = ctl_->head.load(std::memory_order_relaxed);
        const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
        const std::uint32_t need = frame_size(len);
        const std::uint32_t pos = static_cast<std::uint32_t>(head % cap_);
        const std::uint32_t to_end = cap_ - pos;
        const std::uint32_t pad = to_end < need ? to_end : 0;
        if (head + pad + need - tail > cap_) return nullptr;
        if (pad != 0) {
            header_at(pos) = frame_header{to_end - static_cast<std::uint32_t>(sizeof(frame_header)),
                                          frame_pad};
        }
        reserved_at_ = head + pad;
        return data_ + (reserved_at_ % cap_) + sizeof(frame_header);
    }
    /// Producer: publishes the frame reserved last, with its final payload length.
    /// Returns the ring position of the payload (for reading it back later).
    std::uint64_t commit(std::uint32_t len, std::uint32_t type) noexcept {
        header_at(static_cast<std::uint32_t>(reserved_at_ % cap_)) = frame_header{len, type};
        // seq_cst: pairs with the consumer's seq_cst announcement that it sleeps.
        ctl_->head.store(reserved_at_ + frame_size(len), std::memory_order_seq_cst);
        return reserved_at_ + sizeof(frame_header);
    }

    /// Consumer: the next frame, skipping padding; false if the ring is empty.
    bool peek(frame_header& h, const std::byte*& payload) noexcept {
        for (;;) {
            const std::uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);
            if (ctl_->head.load(std::memory_order_acquire) == tail) return false;
            const std::uint32_t pos = static_cast<std::uint32_t>(tail % cap_);
            h = header_at(pos);
            if (h.type == frame_pad) {
                ctl_->tail.store(tail + frame_size(h.len), std::memory_order_release);
                continue;
            }
            payload = data_ + pos + sizeof(frame_header);
            return true;
        }
    }
    /// Consumer: releases the frame returned by the last `peek`.
    void pop(const frame_header& h) noexcept {
        const std::uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);
        ctl_->tail.store(tail + frame_size(h.len), std::memory_order_seq_cst);
    }
    bool empty() const noexcept {
        return ctl_->head.load(std::memory_order_seq_cst) ==
               ctl_->tail.load(std::memory_order_relaxed);
    }
    /// Bytes at ring position `pos` (from `commit`), valid while not overwritten.
    const std::byte* at(std::uint64_t pos) const noexcept { return data_ + pos % cap_; }

    ring_ctl* ctl() const noexcept { return ctl_; }

private:
    frame_header& header_at(std::uint32_t pos) noexcept {
        return *reinterpret_cast<frame_header*>(data_ + pos);
    }
    ring_ctl* ctl_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint32_t cap_ = 0;
    std::uint64_t reserved_at_ = 0;
};

/// Everything a parent and one worker share: two rings and the words used to run,
/// watch and steer tasks. Lives at the start of a memfd mapping; ring data follows.
struct worker_region {
    static constexpr std::uint64_t magic_value = 0x6c6f6f70636f7270ull;  // "procpool"
    std::uint64_t magic = magic_value;
    std::uint32_t ring_capacity = 0;
    std::uint32_t reserved = 0;
    ring_ctl requests;     ///< parent -> worker
    ring_ctl completions;  ///< worker -> parent
    /// The parent sleeps in epoll: after a completion the worker must write the eventfd.
    alignas(64) std::atomic<std::uint32_t> parent_sleeping{0};
    /// Sequence number of the task the worker started last, and when (CLOCK_MONOTONIC ns).
    alignas(64) std::atomic<std::uint64_t> started_seq{0};
    std::atomic<std::int64_t> started_ns{0};
    /// Tasks with a sequence number below this are skipped (shutdown with cancel_pending).
    alignas(64) std::atomic<std::uint64_t> skip_below{0};
    /// Individually cancelled, not-yet-started tasks (future::cancel on a dispatched task).
    static constexpr std::uint32_t max_cancels = 32;
    std::atomic<std::uint32_t> ncancels{0};
    std::atomic<std::uint64_t> cancels[max_cancels]{};

    std::byte* request_data() noexcept {
        return reinterpret_cast<std::byte*>(this) + data_offset();
    }
    std::byte* completion_data() noexcept { return request_data() + ring_capacity; }
    static constexpr std::size_t data_offset() noexcept {
        return (sizeof(worker_region) + 4095) & ~std::size_t{4095};
    }
    static std::size_t mapping_size(std::uint32_t cap) noexcept {
        return data_offset() + 2 * static_cast<std::size_t>(cap);
    }
    bool is_skipped(std::uint64_t seq) const noexcept {
        if (seq < skip_below.load(std::memory_order_seq_cst)) return true;
        const std::uint32_t n = ncancels.load(std::memory_order_seq_cst);
        for (std::uint32_t i = 0; i < n && i < max_cancels; ++i) {
            if (cancels[i].load(std::memory_order_relaxed) == seq) return true;
        }
        return false;
    }
};

}  // namespace procpool::ipc
