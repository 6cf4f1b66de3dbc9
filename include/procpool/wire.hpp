// Wire: what can cross a process boundary, and the bytes it crosses as.
//
// Parent and workers run the same binary on the same machine, so the format has no
// versioning, no endianness and no ABI concerns: values are laid down in native
// representation, and `save`/`load` of the same type always agree. What the format does
// guard against is bad input: every read is bounds-checked and every length is checked
// against the bytes that remain before anything is allocated, so truncated or corrupt
// data raises `procpool::serialization_error` rather than crashing.
//
// How each type crosses (first matching rule wins):
//   1. raw pointers, `std::nullptr_t`, member pointers, `std::string_view`, `std::span`,
//      `std::reference_wrapper` and C arrays are rejected at compile time;
//   2. arithmetic and enum types: their bytes (`bool`, and enums whose underlying type is
//      `bool`, are checked to be 0 or 1 on load);
//   3. standard types, natively: `std::basic_string`, `vector` (and `vector<bool>`,
//      bit-packed), `array`, `pair`, `tuple`, `optional`, `variant`, `deque`, `list`,
//      `(unordered_)(multi)set`, `(unordered_)(multi)map`. Sizes are 64-bit prefixes;
//      runs of trivially copyable elements are copied in one `write_contiguous`;
//   4. types with a cereal serializer (member or free `serialize`, a `save`/`load` pair,
//      `save_minimal`/`load_minimal`, or cereal's own, e.g. smart pointers once
//      `<cereal/types/memory.hpp>` is included) go through cereal, with wire's archive
//      classes (see detail/wire_cereal.hpp for why not cereal's binary archive). This wins
//      over rule 6: a `serialize` states what the author wants sent;
//   5. smart pointers without cereal's support are rejected, as in rule 1;
//   6. other trivially copyable types: their bytes (`write_contiguous`). The bools inside
//      an aggregate (also in nested aggregates, `std::array`s and C arrays) are checked
//      to be 0 or 1 on load, since any other byte in a bool is undefined behaviour;
//   7. anything else fails to compile, naming `procpool::wire::cannot_serialize<T>`.
//
// Rule 6 does not know what a member means: a trivially copyable struct with a pointer, a
// `string_view` or a reference member is copied byte for byte, and that address means
// nothing in the other process. Give such a type a `serialize` member that sends what
// the pointer refers to.
//
// Rule 6 checks bools only where it can name them: in aggregates (no constructors, all
// members public) of at most 32 fields, without base classes or union members, whose
// members take a brace initializer (`std::complex` and `std::chrono::duration` do; a
// member with only an explicit constructor does not). It cannot see into a class with
// private members or a union, so a `bool` there, or a `std::optional` (whose engaged
// flag is a bool), is copied unchecked, and corrupt input can make it hold a byte that is
// no bool. For such a type that may receive untrusted bytes, write a `serialize` member:
// rule 4 then sends the fields one by one, and each bool is checked.
//
// Each top-level value is self-contained: `save_all(w, a, b)` writes exactly what
// `save(w, a); save(w, b)` writes, and either can be read back with `load`/`load_all`.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "procpool/error.hpp"

namespace procpool::wire {

/// Appends serialized bytes to a buffer the caller owns (existing content is kept).
///
/// The writer holds a reference: the buffer must outlive it. Growth is the vector's own
/// (geometric), so a reused buffer stops allocating once it has reached its peak size.
class writer {
public:
    /// Appends to `buf`, after whatever it already holds.
    explicit writer(std::vector<std::byte>& buf) noexcept : buf_(&buf) {}

    /// Appends `n` bytes copied from `p`.
    void write_bytes(const void* p, std::size_t n) {
        if (n == 0) return;  // `p` may be null for an empty range; memcpy must not see it
        const std::size_t old = buf_->size();
        if (n >= 256) {
            // One copy: resize() would first zero the new bytes (a memset as long as the
            // copy). Small writes keep resize + memcpy: cheaper for a few bytes.
            const auto* b = static_cast<const std::byte*>(p);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
            // g++ 12, after inlining insert's growth path, reports copies out of bounds that
            // cannot happen (e.g. a string's bytes read past its 16-byte local buffer).
#pragma GCC diagnostic ignored "-Wstringop-overflow"
#pragma GCC diagnostic ignored "-Warray-bounds"
#pragma GCC diagnostic ignored "-Wstringop-overread"
#endif
            buf_->insert(buf_->end(), b, b + n);
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
            return;
        }
        buf_->resize(old + n);
        std::memcpy(buf_->data() + old, p, n);
    }

    /// Appends `count` objects of a trivially copyable `T` starting at `p`.
    ///
    /// Every contiguous run of trivially copyable data (vector and array elements, string
    /// characters, whole trivially copyable structs) goes through this one function, so
    /// that large payloads can later be sent through shared memory instead of the byte
    /// stream. `reader::read_contiguous` mirrors it; any such routing must depend only on
    /// the byte total `count * sizeof(T)`, which both sides know.
    template <class T>
    void write_contiguous(const T* p, std::size_t count) {
        static_assert(std::is_trivially_copyable_v<T>,
                      "procpool::wire::writer::write_contiguous needs a trivially copyable T");
        write_bytes(p, count * sizeof(T));
    }

    /// The buffer being appended to.
    std::vector<std::byte>& buffer() noexcept { return *buf_; }

    /// Bytes in the buffer, including what it held before this writer.
    std::size_t size() const noexcept { return buf_->size(); }

private:
    std::vector<std::byte>* buf_;
};

namespace detail {
/// Out of line and cold so that the bounds checks cost one compare on the hot path.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_truncated(std::size_t wanted,
                                                                   std::size_t left) {
    throw serialization_error("procpool::wire: truncated input: needed " + std::to_string(wanted) +
                              " more bytes, only " + std::to_string(left) + " left");
}
}  // namespace detail

/// Reads serialized bytes from a range the caller owns; every read is bounds-checked.
class reader {
public:
    /// Reads the `n` bytes at `p` (which must stay valid while reading).
    reader(const std::byte* p, std::size_t n) noexcept : cur_(p), end_(p + n) {}

    /// Reads the bytes of `s`.
    explicit reader(std::span<const std::byte> s) noexcept : reader(s.data(), s.size()) {}

    /// Copies the next `n` bytes to `p`. Throws `serialization_error` if fewer remain
    /// (and then consumes nothing).
    void read_bytes(void* p, std::size_t n) {
        if (n > remaining()) detail::throw_truncated(n, remaining());
        if (n != 0) std::memcpy(p, cur_, n);
        cur_ += n;
    }

    /// Reads `count` objects of a trivially copyable `T` into `p`: the mirror of
    /// `writer::write_contiguous`. Throws `serialization_error` if too few bytes remain.
    template <class T>
    void read_contiguous(T* p, std::size_t count) {
        static_assert(std::is_trivially_copyable_v<T>,
                      "procpool::wire::reader::read_contiguous needs a trivially copyable T");
        if (count > remaining() / sizeof(T))
            detail::throw_truncated(count * sizeof(T), remaining());
        read_bytes(p, count * sizeof(T));
    }

    /// Skips the next `n` bytes. Throws `serialization_error` if fewer remain.
    void skip(std::size_t n) {
        if (n > remaining()) detail::throw_truncated(n, remaining());
        cur_ += n;
    }

    /// Bytes not read yet.
    std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - cur_); }

    /// The next unread byte.
    const std::byte* data() const noexcept { return cur_; }

private:
    const std::byte* cur_;
    const std::byte* end_;
};

/// How deeply user types (those sent through a cereal serializer) may nest in one value:
/// a `Node` holding a `std::vector<Node>` nested `max_depth + 1` deep fails to save, and
/// input claiming such nesting fails to load, with `serialization_error`.
///
/// Why a limit: cereal serializers recurse, one set of stack frames per level, so without
/// one a deep value would overflow the stack, and corrupt input could make the decoder do
/// so on purpose. Each cereal serializer on the path counts as a level (a `unique_ptr<Node>`
/// link counts three: the pointer, cereal's pointer wrapper, the node); standard
/// containers and trivially copyable types nest only as deep as their type does and do
/// not count. Stack per level when loading such a `Node` (g++ 12, measured by
/// tests/test_wire.cpp, NestedUserTypes_AtMaxDepth_RoundTrip_OnAnOrdinaryStack): 768 bytes
/// at -O3, 2,976 under ASan+UBSan at -O2 and 2,480 under ASan+UBSan at -O0. So 1000
/// levels take under 3 MiB even under ASan, leaving most of an 8 MiB thread stack to the
/// caller and to user serializers with large locals.
inline constexpr std::size_t max_depth = 1000;

/// Instantiated (by `save`/`load`) for a type that cannot cross a process boundary; its
/// static assertions say why and what to do. Seeing `cannot_serialize<T>` in a compiler
/// error names the offending `T`, innermost first (e.g. the element, not the vector).
template <class T>
struct cannot_serialize;

/// Serializes `v` at the end of `w`'s buffer. On an exception the buffer is restored to
/// its size before the call. Errors: `serialization_error` (a user serializer threw, its
/// message is wrapped as "serializing T failed: ..."), or `std::bad_alloc`.
/// Unsupported `T` is a compile error naming `procpool::wire::cannot_serialize<T>`.
template <class T>
void save(writer& w, const T& v);

/// Deserializes a `T` saved by `save<T>`. Throws `serialization_error` on truncated or
/// corrupt input (never reads out of bounds, never allocates more than the input could
/// describe).
template <class T>
T load(reader& r);

}  // namespace procpool::wire

#include "procpool/detail/wire_cereal.hpp"
#include "procpool/detail/wire_codec.hpp"

namespace procpool::wire {

/// The cereal archive a user type's `serialize`/`save` receives when wire sends it. It
/// supports cereal's whole interface (`ar(...)`, `ar & x`, `make_nvp`, `base_class`,
/// versions, `binary_data`, smart pointers with `cereal/types/memory.hpp`); standard types
/// inside need no `cereal/types/*.hpp`, wire sends them natively.
using output_archive = detail::output_archive;
/// The cereal archive a user type's `serialize`/`load` receives; the mirror of `output_archive`.
using input_archive = detail::input_archive;

template <class Q>
struct cannot_serialize {
    using T = std::remove_cv_t<Q>;
    static_assert(detail::kind_of<T>() != detail::kind::pointer,
                  "procpool::wire: a pointer cannot cross a process boundary (its address means "
                  "nothing in the other process): send the value it points to instead (for "
                  "std::unique_ptr/shared_ptr, #include <cereal/types/memory.hpp> sends the "
                  "pointee)");
    static_assert(detail::kind_of<T>() != detail::kind::view,
                  "procpool::wire: std::string_view, std::span and std::reference_wrapper refer "
                  "to memory of this process: send an owning type (std::string, std::vector, the "
                  "value itself) instead");
    static_assert(detail::kind_of<T>() != detail::kind::c_array,
                  "procpool::wire: C arrays cannot be passed or returned by value: use std::array");
    static_assert(detail::kind_of<T>() != detail::kind::none,
                  "procpool::wire: this type cannot be serialized: add a `template <class Archive> "
                  "void serialize(Archive&)` member (cereal convention) or make it trivially "
                  "copyable");
};

/// True if `T` can be saved and loaded (checked recursively through standard containers;
/// a user type counts if it has exactly one cereal serializer per direction and a default
/// constructor).
template <class T>
inline constexpr bool is_serializable_v = detail::codec<std::remove_cv_t<T>>::ok;

/// Types that can cross a process boundary; see `is_serializable_v`.
template <class T>
concept serializable = is_serializable_v<T>;

namespace detail {
/// One top-level value: a scope if it holds user types (see `save_scope`).
template <class T>
void save_top(writer& w, const T& v) {
    if constexpr (codec<T>::has_user) {
        save_scope scope(w);
        codec<T>::save(w, v);
    } else {
        codec<T>::save(w, v);
    }
}
template <class T>
T load_top(reader& r) {
    static_assert(std::is_same_v<T, std::remove_cvref_t<T>>,
                  "procpool::wire::load<T> returns by value: name T without const or &");
    if constexpr (codec<T>::has_user) {
        load_scope scope;
        return codec<T>::load(r);
    } else {
        return codec<T>::load(r);
    }
}
}  // namespace detail

template <class T>
void save(writer& w, const T& v) {
    using U = std::remove_cv_t<T>;
    constexpr detail::kind k = detail::kind_of<U>();
    if constexpr (k == detail::kind::arithmetic || k == detail::kind::bitwise) {
        detail::codec<U>::save(w, v);  // one write: it either happens or throws bad_alloc
    } else {
        const std::size_t before = w.size();
        try {
            detail::save_top<U>(w, v);
        } catch (...) {
            w.buffer().resize(before);
            throw;
        }
    }
}

template <class T>
T load(reader& r) {
    return detail::load_top<T>(r);
}

/// Saves each value in order, exactly as consecutive `save` calls would (each value is
/// self-contained); on an exception the buffer is restored to its size before the call.
template <class... Ts>
void save_all(writer& w, const Ts&... vs) {
    const std::size_t before = w.size();
    try {
        (detail::save_top<std::remove_cv_t<Ts>>(w, vs), ...);
    } catch (...) {
        w.buffer().resize(before);
        throw;
    }
}

/// Loads what `save_all` saved (or consecutive `save` calls), in order, as a tuple.
template <class... Ts>
std::tuple<Ts...> load_all(reader& r) {
    return std::tuple<Ts...>{detail::load_top<Ts>(r)...};  // braced: evaluated left to right
}

}  // namespace procpool::wire
