// How a call crosses into a worker process: code addresses as offsets, and the
// type-specific functions that decode arguments in the worker and results in the parent.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/attachments.hpp"
#include "procpool/detail/shm.hpp"
#include "procpool/detail/state.hpp"
#include "procpool/error.hpp"
#include "procpool/wire.hpp"

namespace procpool::detail {

/// What a worker reports for a task (the type of a completion frame).
enum class run_status : std::uint32_t {
    value = 1,          ///< payload: the serialized result
    exception = 2,      ///< payload: type name, what()
    serialization = 3,  ///< payload: message
    cancelled = 4,      ///< skipped before it started; no payload
    init_failed = 5,    ///< the worker's initializer threw: type name, what()
    ready = 6,          ///< the worker is set up and reads requests from now on; no payload
};

/// A function every procpool binary links; code addresses travel as offsets from it so
/// that a worker of the same binary (forked, or one day another MPI rank) finds them.
void code_anchor() noexcept;

inline std::uint64_t code_offset(const void* p) noexcept {
    return static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(p) -
                                      reinterpret_cast<std::uintptr_t>(&code_anchor));
}
inline const void* code_address(std::uint64_t off) noexcept {
    return reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(&code_anchor) + off);
}

/// Writes the exception in flight as (demangled type name, what()).
void encode_current_exception(wire::writer& out);
/// Writes `msg` as an error payload.
void encode_message(wire::writer& out, const std::string& msg);
/// Reads a payload written by encode_current_exception as a remote_exception.
std::exception_ptr decode_exception(wire::reader& in);
/// Reads a payload written by encode_message.
std::string decode_message(wire::reader& in);
/// Demangled name of T, for error messages.
std::string type_name_of(const std::type_info& t);

/// The type an argument travels as: its decayed type, except that C strings travel as
/// std::string (a pointer means nothing in another process).
template <class A>
using wire_arg_t =
    std::conditional_t<std::is_same_v<std::decay_t<A>, const char*> ||
                           std::is_same_v<std::decay_t<A>, char*>,
                       std::string, std::decay_t<A>>;

/// The parameter types of callable `F` as a std::tuple, or void where they cannot be seen
/// (a generic lambda, an overloaded call operator).
template <class F, class = void>
struct params_of {
    using type = void;
};
template <class R, class... P>
struct params_of<R (*)(P...), void> {
    using type = std::tuple<P...>;
};
template <class R, class... P>
struct params_of<R (*)(P...) noexcept, void> {
    using type = std::tuple<P...>;
};
template <class M>
struct call_operator_params {
    using type = void;
};
template <class R, class C, class... P>
struct call_operator_params<R (C::*)(P...) const> {
    using type = std::tuple<P...>;
};
template <class R, class C, class... P>
struct call_operator_params<R (C::*)(P...) const noexcept> {
    using type = std::tuple<P...>;
};
template <class R, class C, class... P>
struct call_operator_params<R (C::*)(P...)> {
    using type = std::tuple<P...>;
};
template <class R, class C, class... P>
struct call_operator_params<R (C::*)(P...) noexcept> {
    using type = std::tuple<P...>;
};
template <class F>
struct params_of<F, std::void_t<decltype(&F::operator())>>
    : call_operator_params<decltype(&F::operator())> {};

/// True for std::span<const T, E>, the type of a `shared_span<const T>` parameter.
template <class P>
struct is_const_span : std::false_type {};
template <class T, std::size_t E>
struct is_const_span<std::span<const T, E>> : std::true_type {};

/// True if parameter `I` of a callable with parameters `Params` (see params_of) is a span
/// of const elements, e.g. `shared_span<const double>`: its shared array may travel
/// read-only.
template <class Params, std::size_t I>
constexpr bool reads_only() noexcept {
    if constexpr (std::is_void_v<Params>) {
        return false;
    } else if constexpr (I >= std::tuple_size_v<Params>) {
        return false;
    } else {
        return is_const_span<std::remove_cvref_t<std::tuple_element_t<I, Params>>>::value;
    }
}

/// True for a std::vector whose elements travel as plain bytes (out of band when big).
template <class T>
struct is_bulk_vector : std::false_type {};
template <class E, class Alloc>
struct is_bulk_vector<std::vector<E, Alloc>> : std::bool_constant<wire::detail::bulk<E>()> {};

/// Saves one task argument; with `ReadOnly`, the shared arrays in it travel read-only.
template <bool ReadOnly, class A>
void save_call_arg(wire::writer& w, A&& a) {
    using T = wire_arg_t<A>;
    // An argument already of its wire type is saved in place; others (C strings) convert.
    const auto save = [&](const T& v) {
        if constexpr (ReadOnly) {
            read_only_attachments scope;
            wire::save(w, v);
        } else {
            wire::save(w, v);
        }
    };
    if constexpr (std::is_same_v<std::remove_cvref_t<A>, T>) {
        if constexpr (is_bulk_vector<T>::value) {
            // The caller's own vector, alive until submit returns: a big one may be
            // copied out of band after the task is sent (see bulk_in_place).
            bulk_in_place in_place(a.data());
            save(a);
        } else {
            save(a);
        }
    } else {
        save(T(std::forward<A>(a)));
    }
}

/// Saves a task's arguments as `wire::save_all` would, except that a shared array bound
/// to a read-only parameter (a span of const) travels as its read-only twin, so the worker
/// maps it read-only. On an exception the buffer is restored.
template <class Fn, class... A>
void save_call_args(wire::writer& w, A&&... args) {
    using P = typename params_of<Fn>::type;
    const std::size_t before = w.size();
    try {
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (save_call_arg<reads_only<P, I>()>(w, std::forward<A>(args)), ...);
        }(std::index_sequence_for<A...>{});
    } catch (...) {
        w.buffer().resize(before);
        throw;
    }
}

/// A callable that can be named in another process: a function pointer, or an empty
/// default-constructible class such as a captureless lambda.
template <class F>
concept remote_callable =
    (std::is_pointer_v<std::decay_t<F>> &&
     std::is_function_v<std::remove_pointer_t<std::decay_t<F>>>) ||
    (std::is_class_v<std::decay_t<F>> && std::is_empty_v<std::decay_t<F>> &&
     std::is_default_constructible_v<std::decay_t<F>>);

template <class F>
std::uint64_t callable_offset(const F& f) noexcept {
    if constexpr (std::is_pointer_v<F>) {
        return code_offset(reinterpret_cast<const void*>(f));
    } else {
        return 0;  // an empty class is rebuilt from its type alone
    }
}

template <class F>
F callable_from(std::uint64_t off) noexcept {
    if constexpr (std::is_pointer_v<F>) {
        return reinterpret_cast<F>(const_cast<void*>(code_address(off)));
    } else {
        return F{};
    }
}

/// Runs in the worker: decode arguments, call, encode the result or the failure.
using invoker_fn = run_status (*)(std::uint64_t fn, wire::reader& in, wire::writer& out);

template <class F, class R, class... Args>
run_status invoke_remote(std::uint64_t fn_off, wire::reader& in, wire::writer& out) {
    std::tuple<Args...>* args = nullptr;
    alignas(std::tuple<Args...>) unsigned char storage[sizeof(std::tuple<Args...>)];
    try {
        args = ::new (static_cast<void*>(storage)) std::tuple<Args...>(wire::load_all<Args...>(in));
    } catch (const std::exception& e) {
        encode_message(out, std::string("could not deserialize the task's arguments: ") + e.what());
        return run_status::serialization;
    }
    struct destroy {
        std::tuple<Args...>* p;
        ~destroy() { p->~tuple(); }
    } guard{args};
    F fn = callable_from<F>(fn_off);
    const std::size_t mark = out.buffer().size();
    if constexpr (std::is_void_v<R>) {
        try {
            std::apply(fn, std::move(*args));
        } catch (...) {
            encode_current_exception(out);
            return run_status::exception;
        }
        return run_status::value;
    } else {
        try {
            R r = std::apply(fn, std::move(*args));
            try {
                wire::save(out, r);
            } catch (const std::exception& e) {
                out.buffer().resize(mark);
                encode_message(out, std::string("could not serialize the task's result: ") +
                                        e.what());
                return run_status::serialization;
            }
        } catch (...) {
            out.buffer().resize(mark);
            encode_current_exception(out);
            return run_status::exception;
        }
        return run_status::value;
    }
}

template <class F, class... Args>
invoker_fn invoker_for() noexcept {
    using R = std::remove_cvref_t<std::invoke_result_t<F&, Args...>>;
    return &invoke_remote<F, R, Args...>;
}

/// The remote function behind process_pool::map: applies the user's function (named by
/// its code offset) to one chunk of items; the first failing item's exception propagates.
template <class Fn, class T, class R>
std::vector<R> map_chunk(std::uint64_t fn_off, std::vector<T> items) {
    Fn fn = callable_from<Fn>(fn_off);
    std::vector<R> out;
    out.reserve(items.size());
    for (auto& x : items) out.push_back(fn(x));
    return out;
}

/// Whether a `map` chunk of `T` to `R` can run in place (`invoke_map_chunk`): both are
/// saved as their bytes (a vector of them is a size and one run of bytes), hold no bool,
/// whose bytes would need checking, and are small: each element and result is copied to
/// the stack, where a struct of megabytes would not fit (the elements then go through a
/// vector, as `map_chunk` does).
template <class T, class R>
inline constexpr bool map_in_place =
    wire::detail::bulk<T>() && wire::detail::bulk<R>() && !wire::detail::holds_bool<T>() &&
    !wire::detail::holds_bool<R>() && sizeof(T) <= 4096 && sizeof(R) <= 4096;

/// The worker's side of a `map` chunk whose elements and results are plain bytes
/// (`map_in_place`): the same message as a call of `map_chunk<Fn, T, R>` (its offset in
/// `fn`; the user's function and the elements as its arguments) and the same reply, but
/// the elements are read where they arrived (the transport's buffer) and each result is
/// written straight into the reply: no decoded vector, no result vector, no second copy.
/// A chunk whose elements or results are big enough to travel in a shared block (the
/// transport's bulk threshold) goes through `map_chunk` itself.
template <class Fn, class T, class R>
run_status invoke_map_chunk(std::uint64_t fn, wire::reader& in, wire::writer& out) {
    using chunk_fn = std::vector<R> (*)(std::uint64_t, std::vector<T>);
    const auto generic = [&] {
        return invoke_remote<chunk_fn, std::vector<R>, std::uint64_t, std::vector<T>>(fn, in, out);
    };
    wire::reader probe = in;
    std::uint64_t fn_off = 0;
    wire::detail::size_prefix n = 0;
    if (probe.remaining() < sizeof fn_off + sizeof n) return generic();
    probe.read_bytes(&fn_off, sizeof fn_off);
    probe.read_bytes(&n, sizeof n);
    if (n > probe.remaining() / sizeof(T)) return generic();  // it reports the bad count
    const std::size_t count = static_cast<std::size_t>(n);
    if (const attachments* a = current_attachments();
        a != nullptr && (count * sizeof(T) >= a->bulk_threshold() ||
                         count > SIZE_MAX / sizeof(R) ||
                         count * sizeof(R) >= a->bulk_threshold())) {
        return generic();
    }
    Fn f = callable_from<Fn>(fn_off);
    const std::byte* src = probe.data();
    const std::size_t mark = out.size();
    try {
        wire::detail::write_size(out, count);
        std::vector<std::byte>& buf = out.buffer();
        const std::size_t at = buf.size();
        buf.resize(at + count * sizeof(R));
        std::byte* dst = buf.data() + at;
        for (std::size_t i = 0; i < count; ++i) {
            // Elements may sit at any offset in the buffer: copied out, not pointed at.
            std::array<std::byte, sizeof(T)> raw;
            std::memcpy(raw.data(), src + i * sizeof(T), sizeof(T));
            T x = std::bit_cast<T>(raw);
            const R r = f(x);
            std::memcpy(dst + i * sizeof(R), &r, sizeof(R));
        }
    } catch (...) {
        out.buffer().resize(mark);
        encode_current_exception(out);
        return run_status::exception;
    }
    return run_status::value;
}

}  // namespace procpool::detail
