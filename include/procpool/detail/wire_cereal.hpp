// Part of procpool/wire.hpp (include that): the bridge to cereal for user types.
#pragma once

#include <concepts>
#include <cstddef>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include <cereal/cereal.hpp>

#include "procpool/error.hpp"

namespace procpool::wire {

/// The serializer's own archives, handed to user `serialize`/`save`/`load` functions.
///
/// Why not cereal's BinaryOutputArchive: it writes through a `std::ostream`, and making
/// the streams (locale, ios_base) dominates small values. Measured here (g++ -O2): a
/// {string, vector<int>} user type round trip costs ~300-450 ns through BinaryArchive over
/// std::stringstream, ~80-150 ns through these archives, which write straight into the
/// `writer` and send every type wire handles natively (standard containers, strings,
/// arithmetic) through wire's own code, so user types need not include
/// `cereal/types/*.hpp` for the standard members they hold. Everything else stays within
/// cereal's machinery: class versions, `base_class`, `make_nvp`, `binary_data`, and
/// cereal's own serializers (smart pointers) all work. Use `ar(...)`, `ar & x`, `ar << x`
/// or `ar >> x`.
namespace detail {

class output_archive;
class input_archive;

template <class T>
struct is_cereal_wrapper : std::false_type {};
template <class T>
struct is_cereal_wrapper<cereal::base_class<T>> : std::true_type {};
template <class T>
struct is_cereal_wrapper<cereal::virtual_base_class<T>> : std::true_type {};
template <class T>
struct is_cereal_wrapper<cereal::DeferredData<T>> : std::true_type {};
template <class T>
struct is_cereal_wrapper<cereal::NameValuePair<T>> : std::true_type {};
template <class T>
struct is_cereal_wrapper<cereal::SizeTag<T>> : std::true_type {};
template <class T>
struct is_cereal_wrapper<cereal::BinaryData<T>> : std::true_type {};

/// True for an archive argument that cereal itself must process (wrappers and user types).
template <class T>
constexpr bool routes_to_cereal();

/// True for an archive argument whose cereal serializer counts as a level of nesting:
/// every one that cereal processes except its wrappers (names, base classes, sizes), which
/// cannot recurse on their own.
template <class T>
constexpr bool counts_as_level() {
    return routes_to_cereal<T>() && !is_cereal_wrapper<T>::value;
}

/// Out of line and cold: the depth check costs one compare per user object.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_too_deep() {
    throw serialization_error(
        "procpool::wire: the value is nested deeper than the limit of " +
        std::to_string(max_depth) +
        " levels of user types (procpool::wire::max_depth): flatten it, e.g. keep a tree's "
        "nodes in one vector and link them by index");
}

/// One level of user-type nesting on this thread, for as long as it lives. Saving and
/// loading both count, so that neither can recurse deeper than `max_depth`; the guard is
/// RAII so that an exception unwinding out of any level leaves the count right.
class depth_guard {
public:
    depth_guard() {
        if (depth_ >= max_depth) throw_too_deep();
        ++depth_;
    }
    ~depth_guard() { --depth_; }
    depth_guard(const depth_guard&) = delete;
    depth_guard& operator=(const depth_guard&) = delete;

private:
    // Per thread: each thread has its own stack, and values are saved on many at once.
    static inline constinit thread_local std::size_t depth_ = 0;
};

template <class T>
void save_native(writer& w, const T& v);
template <class T>
T load_native(reader& r);

/// Output archive for user types: cereal's dispatch, bytes into a `wire::writer`.
class output_archive
    : public cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision> {
    using base = cereal::OutputArchive<output_archive, cereal::AllowEmptyClassElision>;

public:
    /// Writes through `w`.
    explicit output_archive(writer& w) : base(this), w_(&w) {}

    /// Serializes each argument in order (cereal's primary interface).
    template <class... Ts>
    output_archive& operator()(Ts&&... args) {
        (one(std::forward<Ts>(args)), ...);
        return *this;
    }
    /// Boost-style spelling of `operator()`.
    template <class T>
    output_archive& operator&(T&& arg) {
        return (*this)(std::forward<T>(arg));
    }
    /// Boost-style spelling of `operator()`.
    template <class T>
    output_archive& operator<<(T&& arg) {
        return (*this)(std::forward<T>(arg));
    }
    /// Raw bytes, named as in cereal's binary archive.
    void saveBinary(const void* p, std::size_t n) { w_->write_bytes(p, n); }
    /// The writer underneath, for serializers that want wire's API directly.
    writer& wire_writer() noexcept { return *w_; }

private:
    template <class T>
    void one(T&& arg) {
        using U = std::remove_cvref_t<T>;
        if constexpr (counts_as_level<U>()) {
            // Every user object passes here, whether its parent is a user type or a
            // standard container (codec<T, kind::user> calls the archive too).
            const depth_guard level;
            base::operator()(std::forward<T>(arg));
        } else if constexpr (routes_to_cereal<U>()) {
            base::operator()(std::forward<T>(arg));
        } else {
            save_native(*w_, arg);
        }
    }
    writer* w_;
};

/// Input archive for user types: the mirror of `output_archive`.
class input_archive : public cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision> {
    using base = cereal::InputArchive<input_archive, cereal::AllowEmptyClassElision>;

public:
    /// Reads through `r`.
    explicit input_archive(reader& r) : base(this), r_(&r) {}

    /// Deserializes into each argument in order (cereal's primary interface).
    template <class... Ts>
    input_archive& operator()(Ts&&... args) {
        (one(std::forward<Ts>(args)), ...);
        return *this;
    }
    /// Boost-style spelling of `operator()`.
    template <class T>
    input_archive& operator&(T&& arg) {
        return (*this)(std::forward<T>(arg));
    }
    /// Boost-style spelling of `operator()`.
    template <class T>
    input_archive& operator>>(T&& arg) {
        return (*this)(std::forward<T>(arg));
    }
    /// Raw bytes, named as in cereal's binary archive.
    void loadBinary(void* p, std::size_t n) { r_->read_bytes(p, n); }
    /// The reader underneath, for serializers that want wire's API directly.
    reader& wire_reader() noexcept { return *r_; }
    /// Points the archive at `r` (each user object is read from its own framed range)
    /// and returns the reader it used before.
    reader* exchange_reader(reader* r) noexcept { return std::exchange(r_, r); }

private:
    template <class T>
    void one(T&& arg) {
        using U = std::remove_cvref_t<T>;
        if constexpr (counts_as_level<U>()) {
            const depth_guard level;  // as in output_archive::one
            base::operator()(std::forward<T>(arg));
        } else if constexpr (routes_to_cereal<U>()) {
            base::operator()(std::forward<T>(arg));
        } else {
            static_assert(
                std::is_lvalue_reference_v<T> && !std::is_const_v<std::remove_reference_t<T>>,
                "procpool::wire: an input archive loads into non-const lvalues");
            arg = load_native<U>(*r_);
        }
    }
    reader* r_;
};

}  // namespace detail
}  // namespace procpool::wire

// Pairs the archives for cereal (load_minimal finds the output archive's type through this).
CEREAL_SETUP_ARCHIVE_TRAITS(procpool::wire::detail::input_archive,
                            procpool::wire::detail::output_archive)

namespace procpool::wire {
namespace detail {

// One archive serves a whole top-level value: building one costs about 20 ns (cereal's
// bookkeeping maps), too much to pay per element of a vector of user types. The outermost
// `save`/`load` of a type that holds user types opens a scope; the first user object in it
// makes the archive, and the ones after it (nested or siblings) reuse it. Both sides open
// scopes at the same points, so cereal's per-archive state (class versions written once,
// shared_ptr tracking) stays in step.

/// The active save scope of this thread: its writer and its archive, once made.
struct save_scope {
    explicit save_scope(writer& w) noexcept : w(&w), prev(current) { current = this; }
    ~save_scope() { current = prev; }
    save_scope(const save_scope&) = delete;
    save_scope& operator=(const save_scope&) = delete;
    /// The archive for `w`, made on first use.
    output_archive& archive() {
        if (!ar) ar.emplace(*w);
        return *ar;
    }
    static inline thread_local save_scope* current = nullptr;
    writer* w;
    save_scope* prev;
    std::optional<output_archive> ar;
};

/// The active load scope of this thread; its archive is re-pointed at each object's bytes.
struct load_scope {
    load_scope() noexcept : prev(current) { current = this; }
    ~load_scope() { current = prev; }
    load_scope(const load_scope&) = delete;
    load_scope& operator=(const load_scope&) = delete;
    static inline thread_local load_scope* current = nullptr;
    load_scope* prev;
    std::optional<input_archive> ar;
};

// The overloads cereal finds by ADL for what reaches its own dispatch rather than ours:
// class versions, save_minimal values, and wrappers. As in cereal's binary archive.

/// Arithmetic values reached through cereal's dispatch.
template <class T>
    requires std::is_arithmetic_v<T>
void save(output_archive& ar, const T& v) {
    ar.saveBinary(&v, sizeof v);
}
/// Arithmetic values reached through cereal's dispatch.
template <class T>
    requires std::is_arithmetic_v<T>
void load(input_archive& ar, T& v) {
    v = load_native<T>(ar.wire_reader());
}
/// Strings reached through cereal's dispatch (a `save_minimal` returning a string).
template <class C, class Tr, class A>
void save(output_archive& ar, const std::basic_string<C, Tr, A>& s) {
    save_native(ar.wire_writer(), s);
}
/// Strings reached through cereal's dispatch (a `load_minimal` taking a string).
template <class C, class Tr, class A>
void load(input_archive& ar, std::basic_string<C, Tr, A>& s) {
    s = load_native<std::basic_string<C, Tr, A>>(ar.wire_reader());
}
/// Names mean nothing in a binary format: only the value is written.
template <class Archive, class T>
    requires std::same_as<Archive, output_archive> || std::same_as<Archive, input_archive>
void serialize(Archive& ar, cereal::NameValuePair<T>& nvp) {
    ar(nvp.value);
}
/// Container sizes written by cereal's own `types/*.hpp` serializers.
template <class Archive, class T>
    requires std::same_as<Archive, output_archive> || std::same_as<Archive, input_archive>
void serialize(Archive& ar, cereal::SizeTag<T>& tag) {
    ar(tag.size);
}
/// `cereal::binary_data` payloads.
template <class T>
void save(output_archive& ar, const cereal::BinaryData<T>& bd) {
    ar.saveBinary(bd.data, static_cast<std::size_t>(bd.size));
}
/// `cereal::binary_data` payloads.
template <class T>
void load(input_archive& ar, cereal::BinaryData<T>& bd) {
    ar.loadBinary(bd.data, static_cast<std::size_t>(bd.size));
}

}  // namespace detail
}  // namespace procpool::wire
