// Part of procpool/wire.hpp (include that): how each kind of type is laid down and read back.
#pragma once

#include "procpool/detail/attachments.hpp"
#include "procpool/detail/wire_fields.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include <cereal/cereal.hpp>

#include "procpool/error.hpp"

namespace procpool::wire {
namespace detail {

// ---- classification ------------------------------------------------------------------

/// How a type crosses; see the rules at the top of this file.
enum class kind { cv_qualified, pointer, view, c_array, arithmetic, native, user, bitwise, none };

template <class T>
struct is_view : std::false_type {};
template <class C, class Tr>
struct is_view<std::basic_string_view<C, Tr>> : std::true_type {};
template <class T, std::size_t N>
struct is_view<std::span<T, N>> : std::true_type {};
template <class T>
struct is_view<std::reference_wrapper<T>> : std::true_type {};

template <class T>
struct is_smart_pointer : std::false_type {};
template <class T, class D>
struct is_smart_pointer<std::unique_ptr<T, D>> : std::true_type {};
template <class T>
struct is_smart_pointer<std::shared_ptr<T>> : std::true_type {};
template <class T>
struct is_smart_pointer<std::weak_ptr<T>> : std::true_type {};

/// Serializer for standard types handled natively; specialized below, one per template.
template <class T>
struct std_codec {
    static constexpr bool is_native = false;
};

/// True if T has any cereal serialization function usable with our archives.
template <class T>
constexpr bool has_user_serializer() {
    return cereal::traits::detail::count_output_serializers<T, output_archive>::value > 0 ||
           cereal::traits::detail::count_input_serializers<T, input_archive>::value > 0;
}

template <class T>
consteval kind kind_of() {
    if constexpr (!std::is_same_v<T, std::remove_cv_t<T>>) {
        return kind::cv_qualified;  // tuple<const int>: sent as the unqualified type
    } else if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T> ||
                  std::is_null_pointer_v<T>) {
        return kind::pointer;
    } else if constexpr (is_view<T>::value) {
        return kind::view;
    } else if constexpr (std::is_array_v<T>) {
        return kind::c_array;
    } else if constexpr (std::is_arithmetic_v<T> || std::is_enum_v<T>) {
        return kind::arithmetic;
    } else if constexpr (std_codec<T>::is_native) {
        return kind::native;
    } else if constexpr (std::is_class_v<T> && has_user_serializer<T>()) {
        return kind::user;  // smart pointers too, once <cereal/types/memory.hpp> is included
    } else if constexpr (is_smart_pointer<T>::value) {
        return kind::pointer;
    } else if constexpr (std::is_trivially_copyable_v<T> && std::is_object_v<T>) {
        return kind::bitwise;
    } else {
        return kind::none;
    }
}

template <class T, kind K = kind_of<T>()>
struct codec;

template <class T>
constexpr bool routes_to_cereal() {
    return is_cereal_wrapper<T>::value || kind_of<T>() == kind::user;
}

/// Smallest number of bytes any value of T occupies on the wire (at least 1), so that a
/// claimed element count can be checked against the bytes left before allocating.
template <class T>
inline constexpr std::size_t min_size = codec<T>::min_size;

/// True if a run of T can be copied with one memcpy (and loaded into default-made Ts).
template <class T>
constexpr bool bulk();

template <class T>
std::string type_name_of();

using size_prefix = std::uint64_t;

inline void write_size(writer& w, std::size_t n) {
    const size_prefix v = n;
    w.write_bytes(&v, sizeof v);
}

[[noreturn, gnu::cold, gnu::noinline]] inline void throw_bad_count(std::uint64_t n,
                                                                   std::size_t elem,
                                                                   std::size_t left) {
    throw serialization_error("procpool::wire: corrupt input: a length of " + std::to_string(n) +
                              " elements of at least " + std::to_string(elem) +
                              " bytes each, but only " + std::to_string(left) + " bytes left");
}

/// Reads an element count and checks that `count * min_elem` bytes can still follow.
inline std::size_t read_count(reader& r, std::size_t min_elem) {
    size_prefix n;
    r.read_bytes(&n, sizeof n);
    if (n > r.remaining() / min_elem) throw_bad_count(n, min_elem, r.remaining());
    return static_cast<std::size_t>(n);
}

template <class T>
void save_native(writer& w, const T& v) {
    codec<T>::save(w, v);
}
template <class T>
T load_native(reader& r) {
    return codec<T>::load(r);
}

// ---- codecs by kind ------------------------------------------------------------------

/// Unsupported types: using them instantiates `cannot_serialize<T>`, whose assertions
/// explain. `ok` stays usable for `is_serializable_v` without triggering them.
template <class T, kind K>
struct codec {
    static constexpr bool ok = false;
    static constexpr bool has_user = false;
    static constexpr std::size_t min_size = 1;
    static void save(writer&, const T&) { static_cast<void>(sizeof(cannot_serialize<T>)); }
    template <class U = T>  // a template, so that no `T load()` is declared for T = int[3]
    static U load(reader&) {
        static_cast<void>(sizeof(cannot_serialize<T>));
        std::terminate();
    }
};

template <class T>
struct codec<T, kind::cv_qualified> : codec<std::remove_cv_t<T>> {};

template <class T>
struct codec<T, kind::arithmetic> {
    static constexpr bool ok = true;
    static constexpr bool has_user = false;
    static constexpr std::size_t min_size = sizeof(T);
    static void save(writer& w, const T& v) { w.write_bytes(&v, sizeof v); }
    static T load(reader& r) {
        if constexpr (is_boolish<T>()) {
            // A bool holding any byte but 0 or 1 is undefined behaviour: check first.
            std::uint8_t b;
            r.read_bytes(&b, 1);
            if (b > 1) throw_bad_bool();
            return static_cast<T>(b != 0);
        } else {
            T v;
            r.read_bytes(&v, sizeof v);
            return v;
        }
    }
};

template <class T>
struct codec<T, kind::bitwise> {
    static constexpr bool ok = true;
    static constexpr bool has_user = false;
    static constexpr std::size_t min_size = sizeof(T);
    static void save(writer& w, const T& v) {
        if constexpr (std::is_empty_v<T>) {
            // An empty type's one byte holds no value and is never written by its
            // constructor: send a zero, so that equal values always encode the same.
            const std::uint8_t zero = 0;
            w.write_bytes(&zero, 1);
        } else {
            w.write_contiguous(&v, 1);
        }
    }
    static T load(reader& r) {
        if constexpr (std::is_empty_v<T> && std::is_default_constructible_v<T>) {
            r.skip(1);
            return T{};
        } else if constexpr (std::is_default_constructible_v<T>) {
            T v;
            r.read_contiguous(&v, 1);
            check_bools(&v, 1);  // reads bool bytes, never a bool, until they are checked
            return v;
        } else {
            alignas(T) std::array<std::byte, sizeof(T)> raw;
            r.read_contiguous(raw.data(), raw.size());
            if constexpr (holds_bool<T>()) {
                // memcpy (inside read_contiguous) created a T in `raw` (T is an aggregate,
                // an implicit-lifetime type): check its bool bytes before bit_cast reads them.
                check_bools(std::launder(reinterpret_cast<const T*>(raw.data())), 1);
            }
            return std::bit_cast<T>(raw);
        }
    }
};

template <class T>
struct codec<T, kind::native> : std_codec<T> {
    static constexpr std::size_t min_size = std_codec<T>::min_bytes;
};

/// User types go through cereal, framed by a byte count: loading checks that `load`
/// consumed exactly what `save` wrote, so a serializer whose two halves disagree fails
/// there, with its type named, instead of garbling everything after it.
template <class T>
struct codec<T, kind::user> {
    static constexpr int outputs =
        cereal::traits::detail::count_output_serializers<T, output_archive>::value;
    static constexpr int inputs =
        cereal::traits::detail::count_input_serializers<T, input_archive>::value;
    static constexpr bool ok = outputs == 1 && inputs == 1 && std::is_default_constructible_v<T>;
    static constexpr bool has_user = true;
    static constexpr std::size_t min_size = sizeof(size_prefix);

    static void save(writer& w, const T& v) {
        const std::size_t at = w.size();
        write_size(w, 0);  // patched below, once the length is known
        try {
            std::optional<save_scope> own;
            if (save_scope::current == nullptr || save_scope::current->w != &w) own.emplace(w);
            save_scope::current->archive()(v);
        } catch (const serialization_error&) {
            throw;
        } catch (const std::exception& e) {
            throw serialization_error("serializing " + type_name_of<T>() + " failed: " + e.what());
        } catch (...) {
            throw serialization_error("serializing " + type_name_of<T>() +
                                      " failed: an exception not derived from std::exception");
        }
        const size_prefix len = w.size() - at - sizeof(size_prefix);
        std::memcpy(w.buffer().data() + at, &len, sizeof len);
    }

    static T load(reader& r) {
        static_assert(inputs > 0,
                      "procpool::wire: this type has a cereal save() but no load(); "
                      "add the matching load(Archive&) to receive it");
        static_assert(std::is_default_constructible_v<T>,
                      "procpool::wire: a type loaded through its cereal serializer needs a "
                      "public default constructor");
        size_prefix len;
        r.read_bytes(&len, sizeof len);
        if (len > r.remaining())
            detail::throw_truncated(static_cast<std::size_t>(len), r.remaining());
        reader body(r.data(), static_cast<std::size_t>(len));
        T v{};
        try {
            std::optional<load_scope> own;
            if (load_scope::current == nullptr) own.emplace();
            load_scope& scope = *load_scope::current;
            if (!scope.ar) scope.ar.emplace(body);
            // Nested objects re-point the archive at their own bytes; put ours back after.
            struct restore {
                input_archive& ar;
                reader* prev;
                ~restore() { ar.exchange_reader(prev); }
            } guard{*scope.ar, scope.ar->exchange_reader(&body)};
            (*scope.ar)(v);
        } catch (const serialization_error&) {
            throw;
        } catch (const std::exception& e) {
            throw serialization_error("deserializing " + type_name_of<T>() +
                                      " failed: " + e.what());
        } catch (...) {
            throw serialization_error("deserializing " + type_name_of<T>() +
                                      " failed: an exception not derived from std::exception");
        }
        if (body.remaining() != 0) {
            throw serialization_error(
                "deserializing " + type_name_of<T>() + " failed: its load read " +
                std::to_string(len - body.remaining()) + " of the " + std::to_string(len) +
                " bytes its save wrote (save and load disagree)");
        }
        r.skip(static_cast<std::size_t>(len));
        return v;
    }
};

template <class T>
struct is_std_array : std::false_type {};
template <class T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {
    using element = T;
    static constexpr std::size_t size = N;
};

template <class T>
constexpr bool bulk() {
    constexpr kind k = kind_of<T>();
    if constexpr (k == kind::bitwise) {
        return std::is_default_constructible_v<T> && !std::is_empty_v<T>;  // see codec<bitwise>
    } else if constexpr (k == kind::arithmetic) {
        return !is_boolish<T>();  // bools are checked on load, one by one
    } else if constexpr (is_std_array<T>::value) {
        // vector<array<float, 3>>: one memcpy, as its saved form is exactly its bytes.
        using a = is_std_array<T>;
        return a::size != 0 && bulk<typename a::element>() &&
               sizeof(T) == a::size * sizeof(typename a::element);
    } else {
        return false;
    }
}

// ---- standard types ------------------------------------------------------------------

/// Writes `n` elements at `p` exactly as `std::vector<T>` with those elements is written,
/// without needing the vector (process_pool::map sends slices of its input this way).
template <class T>
void save_vector_of(writer& w, const T* p, std::size_t n) {
    write_size(w, n);
    if constexpr (bulk<T>()) {
        // Inside a message whose transport takes big vectors out of band (a process pool's:
        // a shared block of their own), one copy in, one copy out, nothing in the stream.
        if (::procpool::detail::attachments* a = ::procpool::detail::current_attachments();
            a != nullptr && n * sizeof(T) >= a->bulk_threshold()) {
            const std::uint64_t id = a->put_bulk(p, n * sizeof(T));
            w.write_bytes(&id, sizeof id);
            return;
        }
        w.write_contiguous(p, n);
    } else {
        for (std::size_t i = 0; i < n; ++i) codec<T>::save(w, p[i]);
    }
}

/// Sequences loaded by appending (vector, deque, list).
template <class C, class T>
struct sequence_codec {
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<T>::ok;
    static constexpr bool has_user = codec<T>::has_user;
    static constexpr std::size_t min_bytes = sizeof(size_prefix);
    static void save(writer& w, const C& c) {
        if constexpr (bulk<T>() && std::is_same_v<C, std::vector<T, typename C::allocator_type>>) {
            save_vector_of(w, c.data(), c.size());
        } else {
            write_size(w, c.size());
            for (const auto& e : c) codec<T>::save(w, e);
        }
    }
    static C load(reader& r) {
        if constexpr (bulk<T>() && std::is_same_v<C, std::vector<T, typename C::allocator_type>>) {
            size_prefix raw;
            r.read_bytes(&raw, sizeof raw);
            ::procpool::detail::attachments* const a = ::procpool::detail::current_attachments();
            if (a != nullptr && raw <= SIZE_MAX / sizeof(T) &&
                raw * sizeof(T) >= a->bulk_threshold()) {
                std::uint64_t id;
                r.read_bytes(&id, sizeof id);
                const auto n = static_cast<std::size_t>(raw);
                // Elements read whole (below) wait for every byte; the others go piece
                // by piece as the sender copies them in.
                constexpr bool whole = !std::is_copy_assignable_v<T> || holds_bool<T>();
                const void* p = whole ? a->get_bulk(id, n * sizeof(T))
                                      : a->arriving_bulk(id, n * sizeof(T));
                if constexpr (!std::is_copy_assignable_v<T>) {
                    // A const member: the vector can only be constructed from the block
                    // (mapped at a page boundary, so aligned for T).
                    C c(static_cast<const T*>(p), static_cast<const T*>(p) + n);
                    a->bulk_copied(id);
                    check_bools(c.data(), n);
                    return c;
                } else if constexpr (holds_bool<T>()) {
                    C c(n);
                    if (n != 0) std::memcpy(c.data(), p, n * sizeof(T));
                    a->bulk_copied(id);
                    check_bools(c.data(), n);
                    return c;
                } else {
                    // Fresh memory for a big vector: its pages mapped in one call, then
                    // one copy (a page-by-page fault costs ~10x more on a VM), piece by
                    // piece as the sender copies them in (attachments::bulk_arrived).
                    C c;
                    c.reserve(n);
                    ::procpool::detail::populate_pages(
                        c.data(), n * sizeof(T), true, true,
                        std::is_same_v<typename C::allocator_type, std::allocator<T>>);
                    const T* const src = static_cast<const T*>(p);
                    for (std::size_t done = 0; done < n;) {
                        const std::size_t ready =
                            std::min(n, a->bulk_arrived(id, (done + 1) * sizeof(T)) / sizeof(T));
                        c.insert(c.end(), src + done, src + ready);
                        done = ready;
                    }
                    a->bulk_copied(id);
                    return c;
                }
            }
            if (raw > r.remaining() / min_size<T>) throw_bad_count(raw, min_size<T>, r.remaining());
            const auto n = static_cast<std::size_t>(raw);
            if (n > r.remaining() / sizeof(T)) throw_bad_count(raw, sizeof(T), r.remaining());
            if (n != 0 && reinterpret_cast<std::uintptr_t>(r.data()) % alignof(T) == 0) {
                // One copy: `C c(n)` would first zero the elements (a memset as long as
                // the copy). The bytes were written from T objects (`write_contiguous`).
                // Constructed from the range, not assigned: T may have const members.
                const T* first = reinterpret_cast<const T*>(r.data());
                C c(first, first + n);
                r.skip(n * sizeof(T));
                check_bools(c.data(), n);  // only the bool bytes are looked at
                return c;
            }
            C c(n);
            r.read_contiguous(c.data(), n);
            check_bools(c.data(), n);  // one memcpy, then only the bool bytes are looked at
            return c;
        } else {
            const std::size_t n = read_count(r, min_size<T>);
            C c;
            if constexpr (requires { c.reserve(n); }) c.reserve(n);
            for (std::size_t i = 0; i < n; ++i) c.push_back(codec<T>::load(r));
            return c;
        }
    }
};

template <class T, class A>
struct std_codec<std::vector<T, A>> : sequence_codec<std::vector<T, A>, T> {};
template <class T, class A>
struct std_codec<std::deque<T, A>> : sequence_codec<std::deque<T, A>, T> {};
template <class T, class A>
struct std_codec<std::list<T, A>> : sequence_codec<std::list<T, A>, T> {};

/// `vector<bool>` is bit-packed (it has no contiguous `bool`s to copy).
template <class A>
struct std_codec<std::vector<bool, A>> {
    using C = std::vector<bool, A>;
    static constexpr bool is_native = true;
    static constexpr bool ok = true;
    static constexpr bool has_user = false;
    static constexpr std::size_t min_bytes = sizeof(size_prefix);
    static void save(writer& w, const C& c) {
        write_size(w, c.size());
        std::array<std::uint8_t, 256> chunk;
        std::size_t i = 0;
        while (i < c.size()) {
            chunk.fill(0);
            std::size_t used = 0;
            for (; i < c.size() && used < chunk.size() * 8; ++i, ++used) {
                if (c[i])
                    chunk[used / 8] =
                        static_cast<std::uint8_t>(chunk[used / 8] | (1u << (used % 8)));
            }
            w.write_contiguous(chunk.data(), (used + 7) / 8);
        }
    }
    static C load(reader& r) {
        size_prefix n;
        r.read_bytes(&n, sizeof n);
        const std::uint64_t bytes = n / 8 + (n % 8 != 0);
        if (bytes > r.remaining()) {
            throw serialization_error("procpool::wire: corrupt input: a vector<bool> of " +
                                      std::to_string(n) + " bits, but only " +
                                      std::to_string(r.remaining()) + " bytes left");
        }
        C c(static_cast<std::size_t>(n));
        std::array<std::uint8_t, 256> chunk;
        for (std::size_t i = 0; i < c.size();) {
            const std::size_t take = std::min<std::size_t>(chunk.size(), (c.size() - i + 7) / 8);
            r.read_contiguous(chunk.data(), take);
            for (std::size_t bit = 0; bit < take * 8 && i < c.size(); ++bit, ++i) {
                c[i] = (chunk[bit / 8] >> (bit % 8)) & 1u;
            }
        }
        return c;
    }
};

template <class C, class Tr, class A>
struct std_codec<std::basic_string<C, Tr, A>> {
    using S = std::basic_string<C, Tr, A>;
    static constexpr bool is_native = true;
    static constexpr bool ok = true;
    static constexpr bool has_user = false;
    static constexpr std::size_t min_bytes = sizeof(size_prefix);
    static void save(writer& w, const S& s) {
        write_size(w, s.size());
        w.write_contiguous(s.data(), s.size());
    }
    static S load(reader& r) {
        const std::size_t n = read_count(r, sizeof(C));
        S s;
        s.resize(n);
        r.read_contiguous(s.data(), n);
        return s;
    }
};

template <class T, std::size_t N>
struct std_codec<std::array<T, N>> {
    using A = std::array<T, N>;
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<T>::ok;
    static constexpr bool has_user = codec<T>::has_user;
    // An empty array still writes one byte, so that a container of them is bounded too.
    static constexpr std::size_t min_bytes = N == 0 ? 1 : N * min_size<T>;
    static void save(writer& w, const A& a) {
        if constexpr (N == 0) {
            const std::uint8_t zero = 0;
            w.write_bytes(&zero, 1);
        } else if constexpr (bulk<T>()) {
            w.write_contiguous(a.data(), N);
        } else {
            for (const auto& e : a) codec<T>::save(w, e);
        }
    }
    static A load(reader& r) {
        if constexpr (N == 0) {
            r.skip(1);
            return A{};
        } else if constexpr (bulk<T>()) {
            A a;
            r.read_contiguous(a.data(), N);
            check_bools(a.data(), N);
            return a;
        } else if constexpr (std::is_default_constructible_v<T> && !std::is_const_v<T>) {
            A a;
            for (auto& e : a) e = codec<T>::load(r);
            return a;
        } else {
            // Braced initialisers run left to right, matching the save order.
            return [&]<std::size_t... I>(std::index_sequence<I...>) {
                return A{((void)I, codec<T>::load(r))...};
            }
            (std::make_index_sequence<N>{});
        }
    }
};

template <class A, class B>
struct std_codec<std::pair<A, B>> {
    using P = std::pair<A, B>;
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<A>::ok && codec<B>::ok;
    static constexpr bool has_user = codec<A>::has_user || codec<B>::has_user;
    static constexpr std::size_t min_bytes = min_size<A> + min_size<B>;
    static void save(writer& w, const P& p) {
        codec<A>::save(w, p.first);
        codec<B>::save(w, p.second);
    }
    static P load(reader& r) { return P{codec<A>::load(r), codec<B>::load(r)}; }
};

template <class... Ts>
struct std_codec<std::tuple<Ts...>> {
    using Tu = std::tuple<Ts...>;
    static constexpr bool is_native = true;
    static constexpr bool ok = (codec<Ts>::ok && ...);
    static constexpr bool has_user = (codec<Ts>::has_user || ...);
    static constexpr std::size_t min_bytes =
        sizeof...(Ts) == 0 ? 1 : (std::size_t{0} + ... + min_size<Ts>);
    static void save(writer& w, const Tu& t) {
        if constexpr (sizeof...(Ts) == 0) {
            const std::uint8_t zero = 0;
            w.write_bytes(&zero, 1);
        } else {
            std::apply([&](const Ts&... e) { (codec<Ts>::save(w, e), ...); }, t);
        }
    }
    static Tu load(reader& r) {
        if constexpr (sizeof...(Ts) == 0) {
            r.skip(1);
            return Tu{};
        } else {
            return Tu{codec<Ts>::load(r)...};
        }
    }
};

template <class T>
struct std_codec<std::optional<T>> {
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<T>::ok;
    static constexpr bool has_user = codec<T>::has_user;
    static constexpr std::size_t min_bytes = 1;
    static void save(writer& w, const std::optional<T>& o) {
        const std::uint8_t has = o.has_value() ? 1 : 0;
        w.write_bytes(&has, 1);
        if (o) codec<T>::save(w, *o);
    }
    static std::optional<T> load(reader& r) {
        std::uint8_t has;
        r.read_bytes(&has, 1);
        if (has > 1)
            throw serialization_error("procpool::wire: corrupt input: bad std::optional flag");
        if (has == 0) return std::nullopt;
        return std::optional<T>(codec<T>::load(r));
    }
};

template <class... Ts>
struct std_codec<std::variant<Ts...>> {
    using V = std::variant<Ts...>;
    using index_type = std::conditional_t<(sizeof...(Ts) < 256), std::uint8_t, std::uint32_t>;
    static constexpr bool is_native = true;
    static constexpr bool ok = (codec<Ts>::ok && ...);
    static constexpr bool has_user = (codec<Ts>::has_user || ...);
    static constexpr std::size_t min_bytes = sizeof(index_type);
    static void save(writer& w, const V& v) {
        if (v.valueless_by_exception()) {
            throw serialization_error("procpool::wire: cannot serialize a valueless std::variant");
        }
        const auto i = static_cast<index_type>(v.index());
        w.write_bytes(&i, sizeof i);
        std::visit([&]<class X>(const X& x) { codec<X>::save(w, x); }, v);
    }
    static V load(reader& r) {
        index_type i;
        r.read_bytes(&i, sizeof i);
        if (i >= sizeof...(Ts))
            throw serialization_error("procpool::wire: corrupt input: bad std::variant index");
        return load_at(r, i, std::index_sequence_for<Ts...>{});
    }

private:
    template <std::size_t... I>
    static V load_at(reader& r, std::size_t i, std::index_sequence<I...>) {
        using loader = V (*)(reader&);
        static constexpr loader table[] = {+[](reader& rr) -> V {
            using X = std::variant_alternative_t<I, V>;
            return V(std::in_place_index<I>, codec<X>::load(rr));
        }...};
        return table[i](r);
    }
};

/// Sets: keys in iteration order; loaded with an end hint (linear for sorted input).
template <class C, class K>
struct set_codec {
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<K>::ok;
    static constexpr bool has_user = codec<K>::has_user;
    static constexpr std::size_t min_bytes = sizeof(size_prefix);
    static void save(writer& w, const C& c) {
        write_size(w, c.size());
        for (const auto& k : c) codec<K>::save(w, k);
    }
    static C load(reader& r) {
        const std::size_t n = read_count(r, min_size<K>);
        C c;
        if constexpr (requires { c.reserve(n); }) c.reserve(n);
        for (std::size_t i = 0; i < n; ++i) c.emplace_hint(c.end(), codec<K>::load(r));
        return c;
    }
};

/// Maps: (key, value) pairs in iteration order.
template <class C, class K, class V>
struct map_codec {
    static constexpr bool is_native = true;
    static constexpr bool ok = codec<K>::ok && codec<V>::ok;
    static constexpr bool has_user = codec<K>::has_user || codec<V>::has_user;
    static constexpr std::size_t min_bytes = sizeof(size_prefix);
    static void save(writer& w, const C& c) {
        write_size(w, c.size());
        for (const auto& [k, v] : c) {
            codec<K>::save(w, k);
            codec<V>::save(w, v);
        }
    }
    static C load(reader& r) {
        const std::size_t n = read_count(r, min_size<K> + min_size<V>);
        C c;
        if constexpr (requires { c.reserve(n); }) c.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            K k = codec<K>::load(r);
            c.emplace_hint(c.end(), std::move(k), codec<V>::load(r));
        }
        return c;
    }
};

template <class K, class Cmp, class A>
struct std_codec<std::set<K, Cmp, A>> : set_codec<std::set<K, Cmp, A>, K> {};
template <class K, class Cmp, class A>
struct std_codec<std::multiset<K, Cmp, A>> : set_codec<std::multiset<K, Cmp, A>, K> {};
template <class K, class H, class E, class A>
struct std_codec<std::unordered_set<K, H, E, A>> : set_codec<std::unordered_set<K, H, E, A>, K> {};
template <class K, class H, class E, class A>
struct std_codec<std::unordered_multiset<K, H, E, A>>
    : set_codec<std::unordered_multiset<K, H, E, A>, K> {};
template <class K, class V, class Cmp, class A>
struct std_codec<std::map<K, V, Cmp, A>> : map_codec<std::map<K, V, Cmp, A>, K, V> {};
template <class K, class V, class Cmp, class A>
struct std_codec<std::multimap<K, V, Cmp, A>> : map_codec<std::multimap<K, V, Cmp, A>, K, V> {};
template <class K, class V, class H, class E, class A>
struct std_codec<std::unordered_map<K, V, H, E, A>>
    : map_codec<std::unordered_map<K, V, H, E, A>, K, V> {};
template <class K, class V, class H, class E, class A>
struct std_codec<std::unordered_multimap<K, V, H, E, A>>
    : map_codec<std::unordered_multimap<K, V, H, E, A>, K, V> {};

/// The type's name as the compiler spells it, for error messages (no RTTI needed).
template <class T>
constexpr std::string_view raw_type_name() noexcept {
    // GCC: "... [with T = X; std::string_view = ...]"; Clang: "... [T = X]".
    constexpr std::string_view f = __PRETTY_FUNCTION__;
    constexpr std::size_t b = f.find("T = ");
    if constexpr (b == std::string_view::npos) {
        return "this type";
    } else {
        constexpr std::size_t semi = f.find(';', b);
        constexpr std::size_t e = semi != std::string_view::npos ? semi : f.rfind(']');
        return f.substr(b + 4, e - (b + 4));
    }
}

template <class T>
std::string type_name_of() {
    return std::string(raw_type_name<T>());
}

}  // namespace detail
}  // namespace procpool::wire
