// Single-producer single-consumer byte ring in shared memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "procpool/detail/sync.hpp"

namespace procpool::ipc {

/// Control words of one SPSC ring. Producer and consumer indices sit on separate cache
/// lines so the two processes do not false-share.
struct ring_ctl {
    alignas(64) std::atomic<std::uint64_t> head{0};  ///< bytes published (producer)
    alignas(64) std::atomic<std::uint64_t> tail{0};  ///< bytes consumed (consumer)
    /// The consumer sleeps here for data; the producer rings it after publishing.
    alignas(64) detail::doorbell data;
    /// The producer sleeps here for space; the consumer rings it after releasing a frame.
    detail::doorbell space;
    /// The secret the frames' stamps are made with (see ring::stamp_of): written by whoever
    /// creates the ring before either side makes its view, which keeps a copy.
    std::uint64_t stamp_key = 0;
};

/// A fresh random key for ring_ctl::stamp_key (getrandom, or the clock and addresses mixed
/// where the kernel has none to give).
std::uint64_t random_stamp_key() noexcept;

/// One message in a ring: a 16-byte header (payload length, type, stamp) then the
/// payload, the whole padded to a multiple of 64 bytes (ring::frame_align). A `pad` frame
/// fills the end of the buffer when a frame would wrap. The stamp, written last, says the
/// frame is published (see ring::stamp_of).
struct frame_header {
    std::uint32_t len;
    std::uint32_t type;
    std::uint64_t stamp = 0;
};
static_assert(sizeof(frame_header) == 16);
inline constexpr std::uint32_t frame_pad = 0;

/// What `ring::peek` found.
enum class peek_result {
    empty,    ///< nothing published
    frame,    ///< a frame, checked to lie wholly inside the buffer (and, unless stamped,
              ///< inside the bytes the producer's index says are published)
    corrupt,  ///< the other side broke the ring's invariants (a hostile or broken peer)
};

/// A view of a ring: control block plus data area, both in a shared mapping.
/// The producer side and the consumer side are each used by one thread only.
///
/// The two processes need not trust each other: each side keeps its own index in private
/// memory and only publishes it, and every value read from the shared mapping (the other
/// side's index, frame headers) is checked before it is used, so a peer that scribbles on
/// the mapping can make this side see `corrupt`, never read or write out of bounds or loop.
class ring {
  public:
    ring() = default;
    ring(ring_ctl* ctl, std::byte* data, std::uint32_t capacity) noexcept
        : ctl_(ctl), data_(data), cap_(capacity), key_(ctl->stamp_key | 1) {}

    /// Frames start and end on cache-line boundaries: a frame of up to 48 payload bytes
    /// (a no-op task's request, a small result) is one line, which crosses between the
    /// cores once; at 16-byte granularity three of four such requests straddled two lines,
    /// and the consumer paid a second transfer for the second (docs/architecture.md).
    static constexpr std::uint64_t frame_align = 64;
    /// Bytes a frame with a `len`-byte payload occupies (64-bit: no wrap for any `len`).
    static constexpr std::uint64_t frame_size(std::uint64_t len) noexcept {
        return (sizeof(frame_header) + len + (frame_align - 1)) & ~(frame_align - 1);
    }
    /// The stamp of a frame published at ring position `pos`: the consumer finds the next
    /// frame published by reading its stamp, on the frame's own cache line, instead of the
    /// producer's index, on a line of its own. Positions never repeat, and the ring's
    /// random key (ring_ctl::stamp_key) keeps what an earlier frame left there (a payload
    /// the user chose, say) from passing for one: data cannot be made to match a key it
    /// does not know. Odd, so zeroed memory never matches.
    std::uint64_t stamp_of(std::uint64_t pos) const noexcept { return (pos ^ key_) | 1; }
    /// The largest payload one frame may carry.
    std::uint32_t max_payload() const noexcept { return cap_ / 4; }

    /// Producer: room for a `len`-byte payload, or nullptr if the ring is too full now
    /// (or `corrupt()`). Nothing is visible to the consumer until `commit`.
    std::byte* try_reserve(std::uint32_t len) noexcept {
        const std::uint64_t need = frame_size(len);
        const auto pos = static_cast<std::uint32_t>(head_ % cap_);
        const std::uint32_t to_end = cap_ - pos;
        const std::uint32_t pad = to_end < need ? to_end : 0;
        if (head_ + pad + need - tail_seen_ > cap_ || head_ >= check_at_) {
            // No room as far as this side last looked: read the consumer's index again.
            // While there is room it is not read at all, so the consumer's line stays in
            // the consumer's cache (one cache-line transfer fewer per frame).
            // seq_cst: with the sleeper's announcement, the Dekker pair of `doorbell` (this
            // is the ready check of a producer waiting for space).
            const std::uint64_t tail = ctl_->tail.load(std::memory_order_seq_cst);
            if (tail > head_ || head_ - tail > cap_) {
                corrupt_ = true;
                return nullptr;
            }
            tail_seen_ = tail;
            // Looked at again after half a ring's worth of frames at the latest, so that a
            // consumer that forges its index is caught within that much.
            check_at_ = head_ + cap_ / 2;
            if (head_ + pad + need - tail > cap_) return nullptr;
        }
        if (pad != 0) {
            // Field by field: the consumer may be reading the stamp word (atomically). The
            // pad is stamped by `commit`, with the frame after it.
            header_at(pos).len = to_end - static_cast<std::uint32_t>(sizeof(frame_header));
            header_at(pos).type = frame_pad;
        }
        reserved_at_ = head_ + pad;
        return data_ + (reserved_at_ % cap_) + sizeof(frame_header);
    }
    /// Producer: publishes the frame reserved last, with its final payload length.
    /// Returns the ring position of the payload (for reading it back later).
    std::uint64_t commit(std::uint32_t len, std::uint32_t type) noexcept {
        const auto pos = static_cast<std::uint32_t>(reserved_at_ % cap_);
        header_at(pos).len = len;
        header_at(pos).type = type;
        // After the payload and the header; the frame before a pad it needed, so that a
        // consumer that sees the pad and skips it finds the frame stamped.
        publish_stamp(pos, reserved_at_);
        if (reserved_at_ != head_) publish_stamp(static_cast<std::uint32_t>(head_ % cap_), head_);
        head_ = reserved_at_ + frame_size(len);
        // seq_cst: pairs with the consumer's seq_cst announcement that it sleeps.
        ctl_->head.store(head_, std::memory_order_seq_cst);
        return reserved_at_ + sizeof(frame_header);
    }

    /// Consumer: the next frame, skipping padding. `h` is a private copy of the header;
    /// `payload` points at `h.len` bytes inside the ring (the producer cannot publish over
    /// them until `pop`, though a hostile one may still change them: read each once).
    /// With `read_index`, a look that finds no stamped frame reads the producer's index (a
    /// sequentially consistent load: the check after a sleeper's announcement, or a look
    /// that must see every frame published). Without it, such a look says `empty` and
    /// reads the index only every `quiet_looks_per_index` such looks: a consumer polling
    /// an empty ring then keeps off the index's line, so the producer's store of it does not
    /// wait for that line to come back (the frames of a peer that stores its index without
    /// stamping are still found, that many looks later).
    peek_result peek(frame_header& h, const std::byte*& payload, bool read_index = true) noexcept {
        for (;;) {
            const auto at = static_cast<std::uint32_t>(tail_ % cap_);
            if (stamp_at(at) == stamp_of(tail_)) {
                // Published (the stamp is stored last, with release): its header and
                // payload are there. Checked against the buffer, as the producer's index is
                // not read; a peer that stamps a frame it did not publish only moves this
                // side's index past its own, which it sees as `corrupt` when it reads it.
                std::memcpy(&h, data_ + at, sizeof h);
                if (bad_frame(h, at)) return peek_result::corrupt;
                if (h.type == frame_pad) {
                    std::atomic_ref<std::uint64_t>(tail_).store(tail_ + frame_size(h.len),
                                                                std::memory_order_relaxed);
                    ctl_->tail.store(tail_, std::memory_order_release);
                    continue;
                }
                payload = data_ + at + sizeof(frame_header);
                return peek_result::frame;
            }
            // Not stamped: nothing published yet, or a frame from a peer that does not
            // stamp (checked against the producer's index, as before stamps).
            if (head_seen_ <= tail_) {
                if (!read_index && (++quiet_looks_ % quiet_looks_per_index) != 0) {
                    return peek_result::empty;
                }
                // Everything seen so far is consumed: read the producer's index again.
                // Frames it published together are then read without reading it again.
                // seq_cst: with the sleeper's announcement, the Dekker pair of `doorbell`.
                const std::uint64_t head = ctl_->head.load(std::memory_order_seq_cst);
                // Behind this side's index: the frames taken by their stamps are published
                // before the producer's index says so (it stores the index after the
                // stamp), so "nothing more yet".
                if (head <= tail_) return peek_result::empty;
                if (head - tail_ > cap_) return peek_result::corrupt;
                head_seen_ = head;
            }
            const std::uint64_t head = head_seen_;
            const auto pos = static_cast<std::uint32_t>(tail_ % cap_);
            std::memcpy(&h, data_ + pos, sizeof h);
            const std::uint64_t size = frame_size(h.len);
            if (bad_frame(h, pos)) return peek_result::corrupt;
            if (size > head - tail_) return peek_result::corrupt;
            if (h.type == frame_pad) {
                std::atomic_ref<std::uint64_t>(tail_).store(tail_ + size,
                                                             std::memory_order_relaxed);
                ctl_->tail.store(tail_, std::memory_order_release);
                continue;
            }
            payload = data_ + pos + sizeof(frame_header);
            return peek_result::frame;
        }
    }
    /// Consumer: releases the frame returned by the last `peek`.
    void pop(const frame_header& h) noexcept {
        const std::uint64_t tail = tail_ + frame_size(h.len);
        // Atomic (relaxed) because empty() may be asked from another thread as a hint.
        std::atomic_ref<std::uint64_t>(tail_).store(tail, std::memory_order_relaxed);
        ctl_->tail.store(tail, std::memory_order_seq_cst);
    }
    /// Consumer: true if the producer's index says nothing is published beyond what this
    /// side has consumed. Any thread may ask (a hint: the answer may be stale by the time
    /// it is used, and a frame stamped a moment before its index is stored is not seen).
    bool empty() const noexcept {
        const std::uint64_t tail =
            std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(tail_))
                .load(std::memory_order_relaxed);
        // At or behind this side's index: frames taken by their stamps may be ahead of
        // the producer's index for a moment (see peek).
        return ctl_->head.load(std::memory_order_seq_cst) <= tail;
    }
    /// Producer: bytes published so far (pads included).
    std::uint64_t published() const noexcept { return head_; }
    /// Producer: bytes published and not yet released by the consumer (as it claims).
    std::uint64_t unconsumed() const noexcept {
        const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
        return tail <= head_ ? head_ - tail : 0;
    }
    /// Producer: true if the frame that started at ring position `pos` may have been
    /// written over since (a lap's worth or more was published after it): only a consumer
    /// that forged its index lets that happen.
    bool overwritten(std::uint64_t pos) const noexcept { return head_ > pos + cap_; }
    /// Producer: true once the consumer's published index broke the ring's invariants.
    bool corrupt() const noexcept { return corrupt_; }
    /// Bytes at ring position `pos` (from `commit`), valid while not overwritten.
    const std::byte* at(std::uint64_t pos) const noexcept { return data_ + pos % cap_; }

    ring_ctl* ctl() const noexcept { return ctl_; }

  private:
    // A header at buffer offset `pos` that no honest producer writes: a pad frame fills
    // exactly the rest of the buffer, and never the whole of it (at offset 0 every frame
    // fits: payloads are at most a quarter of the buffer), so a consumer skips at most one
    // pad per frame it takes; any other frame fits before the end.
    bool bad_frame(const frame_header& h, std::uint32_t pos) const noexcept {
        const std::uint64_t size = frame_size(h.len);
        const std::uint64_t to_end = cap_ - pos;
        return h.type == frame_pad ? size != to_end || pos == 0 : size > to_end;
    }
    frame_header& header_at(std::uint32_t pos) noexcept {
        return *reinterpret_cast<frame_header*>(data_ + pos);
    }
    // The stamp word of the header at buffer offset `pos` (16-byte aligned).
    std::uint64_t* stamp_word(std::uint32_t pos) const noexcept {
        return reinterpret_cast<std::uint64_t*>(data_ + pos + offsetof(frame_header, stamp));
    }
    void publish_stamp(std::uint32_t pos, std::uint64_t at) noexcept {
        std::atomic_ref<std::uint64_t>(*stamp_word(pos))
            .store(stamp_of(at), std::memory_order_release);
    }
    std::uint64_t stamp_at(std::uint32_t pos) const noexcept {
        return std::atomic_ref<std::uint64_t>(*stamp_word(pos)).load(std::memory_order_acquire);
    }
    ring_ctl* ctl_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint32_t cap_ = 0;
    std::uint64_t key_ = 1;  ///< this side's copy of ring_ctl::stamp_key, made odd
    bool corrupt_ = false;
    std::uint64_t head_ = 0;  ///< producer's own index: what it has published
    /// Producer: the consumer's index when last read and checked (at most its true value,
    /// so the room computed from it is never more than there is).
    std::uint64_t tail_seen_ = 0;
    std::uint64_t check_at_ = 0;         ///< producer: read the consumer's index by this head_
    alignas(8) std::uint64_t tail_ = 0;  ///< consumer's own index: what it has consumed
    /// Consumer: the producer's index when last read and checked (at most its true value;
    /// behind tail_ once frames taken by their stamps pass it).
    std::uint64_t head_seen_ = 0;
    std::uint64_t reserved_at_ = 0;
    /// Consumer: looks without `read_index` that found nothing stamped (see peek).
    std::uint32_t quiet_looks_ = 0;
    static constexpr std::uint32_t quiet_looks_per_index = 256;
};

}  // namespace procpool::ipc
