// Part of procpool/wire.hpp (include that): the fields of a trivially copyable aggregate,
// found without reflection, so that loading one can check the bools inside it.
//
// Why: rule 6 copies such a struct byte for byte, and a `bool` whose byte is neither 0 nor
// 1 is undefined behaviour the moment it is read. For an aggregate, the fields can be
// named with a structured binding once their number is known; the number comes from
// probing which brace initializers compile (the technique Boost.PFR popularised, written
// here for this one use). Anything the probes cannot count for certain (a base class, a
// union member, a member with an explicit constructor, more than 32 fields) is left
// unchecked, never miscounted: a wrong count would be a compile error in the user's code.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "procpool/error.hpp"

namespace procpool::wire::detail {

namespace fields {

// Probes: objects that convert to (nearly) anything, declared only for use inside
// requires-expressions. Their conversions are defined, never called, so that no compiler
// warns about an inline function used but not defined.

/// Converts to anything; used where a probe must fit every possible field.
struct any_value {
    template <class U>
    operator U() const {
        std::abort();
    }
};

/// Converts to scalars and aggregates only: what "a value" means for the test below.
template <bool Const>
struct plain_value;
template <>
struct plain_value<true> {
    template <class U>
        requires(std::is_scalar_v<U> || std::is_aggregate_v<U>)
    operator U() const {
        std::abort();
    }
};
template <>
struct plain_value<false> {
    template <class U>
        requires(std::is_scalar_v<U> || std::is_aggregate_v<U>)
    operator U() {
        std::abort();
    }
};

/// A probe that list-initializes one field, `{field_value{}}`, without ambiguity: it
/// converts to a class only if that class cannot be made from a plain value (else the
/// class's own constructor from a value is used, e.g. `std::complex<double>(double)`). The
/// const variant fits most classes; the non-const one fits those whose converting
/// constructor template asks for a conversion from const (std::chrono::duration).
template <bool Const>
struct field_value;
template <>
struct field_value<true> {
    template <class U>
        requires(std::is_scalar_v<U> || std::is_aggregate_v<U> ||
                 (std::is_class_v<U> && !std::is_constructible_v<U, plain_value<true>>))
    operator U() const {
        std::abort();
    }
};
template <>
struct field_value<false> {
    template <class U>
        requires(std::is_scalar_v<U> || std::is_aggregate_v<U> ||
                 (std::is_class_v<U> && !std::is_constructible_v<U, plain_value<false>>))
    operator U() {
        std::abort();
    }
};

/// Converts only to proper base classes of T (an aggregate's bases come first).
template <class T>
struct base_value {
    template <class U>
        requires(std::is_base_of_v<U, T> && !std::is_same_v<U, T>)
    operator U() const {
        std::abort();
    }
};

/// Converts only to unions (named or anonymous members alike).
struct union_value {
    template <class U>
        requires std::is_union_v<U>
    operator U() const {
        std::abort();
    }
};

/// Probe P, once per index of a pack (so that `probe<P, I>{}...` repeats it).
template <class P, std::size_t>
using probe = P;

/// `T{{p}, ... N times}` compiles: the first N fields take one braced value each.
template <class T, class P, std::size_t... I>
constexpr bool takes(std::index_sequence<I...>) {
    return requires { T{{probe<P, I>{}}...}; };
}
/// `T{{p}, ... N times, any}` compiles: a field N exists. Sound because `any_value`, not
/// braced, initializes a field of every type (an array through its first element), so
/// if this fails after `takes<N>` succeeded there is no field N: T has exactly N fields.
template <class T, class P, std::size_t... I>
constexpr bool takes_one_more(std::index_sequence<I...>) {
    return requires { T{{probe<P, I>{}}..., any_value{}}; };
}

/// The most fields we name; a bigger struct is left unchecked.
inline constexpr std::size_t max_fields = 32;
/// What `count` answers for a type whose fields it cannot name for certain.
inline constexpr std::size_t unknown = static_cast<std::size_t>(-1);

/// T's number of fields as counted with probe P, or `unknown`.
template <class T, class P, std::size_t N = 0>
consteval std::size_t count_with() {
    if constexpr (N > max_fields) {
        return unknown;
    } else if constexpr (takes<T, P>(std::make_index_sequence<N>{}) &&
                         !takes_one_more<T, P>(std::make_index_sequence<N>{})) {
        return N;
    } else {
        return count_with<T, P, N + 1>();
    }
}

/// `T{{p}..., union, {p}...}` compiles: the field after the first pack is a union.
template <class T, class P, std::size_t... I, std::size_t... J>
constexpr bool union_between(std::index_sequence<I...>, std::index_sequence<J...>) {
    return requires { T{{probe<P, I>{}}..., union_value{}, {probe<P, J>{}}...}; };
}
/// True if any of T's N fields is a union (a structured binding cannot name the members
/// of an anonymous one, and a union's bools cannot be checked without knowing which
/// member is active).
template <class T, class P, std::size_t N, std::size_t... At>
constexpr bool has_union(std::index_sequence<At...>) {
    return (union_between<T, P>(std::make_index_sequence<At>{},
                                std::make_index_sequence<N - 1 - At>{}) ||
            ...);
}

/// True if T's first field is a base class (a structured binding names only members).
template <class T, class P, std::size_t... I>
constexpr bool first_is_base(std::index_sequence<I...>) {
    return requires { T{base_value<T>{}, {probe<P, I>{}}...}; };
}

/// T's fields counted with probe P, or `unknown` if they cannot all be bound by name.
template <class T, class P>
consteval std::size_t bindable_with() {
    constexpr std::size_t n = count_with<T, P>();
    if constexpr (n == unknown || n == 0) {
        return n;
    } else if constexpr (first_is_base<T, P>(std::make_index_sequence<n - 1>{}) ||
                         has_union<T, P, n>(std::make_index_sequence<n>{})) {
        return unknown;
    } else {
        return n;
    }
}

/// The number of fields a structured binding of T names, or `unknown` if T is not an
/// aggregate whose fields can be counted for certain.
template <class T>
consteval std::size_t count() {
    if constexpr (!std::is_class_v<T> || std::is_union_v<T> || !std::is_aggregate_v<T>) {
        return unknown;
    } else if constexpr (constexpr std::size_t n = bindable_with<T, field_value<true>>();
                         n != unknown) {
        return n;
    } else {
        return bindable_with<T, field_value<false>>();
    }
}

// One rung of `apply`'s ladder: bind exactly n fields by name, hand them to f.
#define PROCPOOL_WIRE_BIND_FIELDS(n, ...) \
    if constexpr (N == n) {               \
        const auto& [__VA_ARGS__] = t;    \
        return f(__VA_ARGS__);            \
    } else

/// Calls `f` with (const references to) the fields of `t`, in declaration order. A
/// bit-field cannot be referred to, so `f` receives a temporary copy of it instead.
template <class T, class F, std::size_t N = count<T>()>
    requires(N != unknown)
constexpr decltype(auto) apply(const T& t, F&& f) {
    PROCPOOL_WIRE_BIND_FIELDS(32, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28,
                              f29, f30, f31)
    PROCPOOL_WIRE_BIND_FIELDS(31, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28,
                              f29, f30)
    PROCPOOL_WIRE_BIND_FIELDS(30, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28,
                              f29)
    PROCPOOL_WIRE_BIND_FIELDS(29, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27, f28)
    PROCPOOL_WIRE_BIND_FIELDS(28, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26, f27)
    PROCPOOL_WIRE_BIND_FIELDS(27, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25, f26)
    PROCPOOL_WIRE_BIND_FIELDS(26, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24, f25)
    PROCPOOL_WIRE_BIND_FIELDS(25, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23, f24)
    PROCPOOL_WIRE_BIND_FIELDS(24, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22, f23)
    PROCPOOL_WIRE_BIND_FIELDS(23, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21, f22)
    PROCPOOL_WIRE_BIND_FIELDS(22, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20, f21)
    PROCPOOL_WIRE_BIND_FIELDS(21, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19, f20)
    PROCPOOL_WIRE_BIND_FIELDS(20, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18, f19)
    PROCPOOL_WIRE_BIND_FIELDS(19, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17, f18)
    PROCPOOL_WIRE_BIND_FIELDS(18, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16, f17)
    PROCPOOL_WIRE_BIND_FIELDS(17, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15, f16)
    PROCPOOL_WIRE_BIND_FIELDS(16, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14,
                              f15)
    PROCPOOL_WIRE_BIND_FIELDS(15, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14)
    PROCPOOL_WIRE_BIND_FIELDS(14, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13)
    PROCPOOL_WIRE_BIND_FIELDS(13, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12)
    PROCPOOL_WIRE_BIND_FIELDS(12, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11)
    PROCPOOL_WIRE_BIND_FIELDS(11, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10)
    PROCPOOL_WIRE_BIND_FIELDS(10, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9)
    PROCPOOL_WIRE_BIND_FIELDS(9, f0, f1, f2, f3, f4, f5, f6, f7, f8)
    PROCPOOL_WIRE_BIND_FIELDS(8, f0, f1, f2, f3, f4, f5, f6, f7)
    PROCPOOL_WIRE_BIND_FIELDS(7, f0, f1, f2, f3, f4, f5, f6)
    PROCPOOL_WIRE_BIND_FIELDS(6, f0, f1, f2, f3, f4, f5)
    PROCPOOL_WIRE_BIND_FIELDS(5, f0, f1, f2, f3, f4)
    PROCPOOL_WIRE_BIND_FIELDS(4, f0, f1, f2, f3)
    PROCPOOL_WIRE_BIND_FIELDS(3, f0, f1, f2)
    PROCPOOL_WIRE_BIND_FIELDS(2, f0, f1)
    PROCPOOL_WIRE_BIND_FIELDS(1, f0)
    return f();  // no fields
}

#undef PROCPOOL_WIRE_BIND_FIELDS

}  // namespace fields

/// `bool`, or an enum whose values are bools: types with bytes that are not values.
template <class T>
constexpr bool is_boolish() {
    if constexpr (std::is_enum_v<T>) {
        return std::is_same_v<std::underlying_type_t<T>, bool>;
    } else {
        return std::is_same_v<T, bool>;
    }
}

/// The element type of a `std::array`, `void` for anything else.
template <class T>
struct std_array_element {
    using type = void;
};
template <class T, std::size_t N>
struct std_array_element<std::array<T, N>> {
    using type = T;
};

/// Lists the type of each field of an aggregate (see `fields::apply`).
struct field_type_list {
    template <class... Fs>
    struct list {};
    template <class... Fs>
    constexpr auto operator()(const Fs&...) const {
        return list<std::remove_cv_t<Fs>...>{};
    }
};

template <class T>
consteval bool holds_bool();

/// True if any of the listed field types holds a bool.
template <class... Fs>
consteval bool any_holds_bool(field_type_list::list<Fs...>) {
    return (holds_bool<Fs>() || ...);
}

/// True if a T copied in bitwise may hold a bool that must be checked: a bool itself, or
/// one inside arrays and aggregates whose fields can be named (see `fields::count`). Only
/// class types that are aggregates are introspected, which keeps the compile-time cost
/// to the structs that load through rule 6.
template <class T>
consteval bool holds_bool() {
    if constexpr (is_boolish<T>()) {
        return true;
    } else if constexpr (std::is_array_v<T>) {
        return holds_bool<std::remove_cv_t<std::remove_all_extents_t<T>>>();
    } else if constexpr (!std::is_void_v<typename std_array_element<T>::type>) {
        return holds_bool<std::remove_cv_t<typename std_array_element<T>::type>>();
    } else if constexpr (fields::count<T>() == fields::unknown) {
        return false;
    } else {
        using list = decltype(fields::apply(std::declval<const T&>(), field_type_list{}));
        return any_holds_bool(list{});
    }
}

/// Out of line and cold, like `throw_truncated`: the check costs one compare per bool.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_bool() {
    throw serialization_error("procpool::wire: corrupt input: a bool that is neither 0 nor 1");
}

/// Checks every bool in `m`, which lies in the bytes [lo, hi), without reading any bool as
/// a bool (only its byte). Anything outside that range is a temporary made for a
/// bit-field, whose single bit is always a valid bool.
template <class M>
void check_bools_in(const M& m, std::uintptr_t lo, std::uintptr_t hi) {
    if constexpr (!holds_bool<M>()) {
        return;
    } else if constexpr (is_boolish<M>()) {
        const auto at = reinterpret_cast<std::uintptr_t>(&m);
        if (at < lo || at >= hi) return;
        unsigned char byte;
        std::memcpy(&byte, &m, 1);
        if (byte > 1) throw_bad_bool();
    } else if constexpr (std::is_array_v<M> ||
                         !std::is_void_v<typename std_array_element<M>::type>) {
        for (const auto& e : m) check_bools_in(e, lo, hi);
    } else {
        fields::apply(m, [&](const auto&... f) { (check_bools_in(f, lo, hi), ...); });
    }
}

/// Throws `serialization_error` if any of the `n` objects at `p`, just copied in from
/// bytes, holds a bool that is neither 0 nor 1. Costs nothing for types without bools.
template <class T>
void check_bools(const T* p, std::size_t n) {
    if constexpr (holds_bool<T>()) {
        const auto lo = reinterpret_cast<std::uintptr_t>(p);
        const auto hi = reinterpret_cast<std::uintptr_t>(p + n);
        for (std::size_t i = 0; i < n; ++i) check_bools_in(p[i], lo, hi);
    } else {
        static_cast<void>(p);
        static_cast<void>(n);
    }
}

}  // namespace procpool::wire::detail
