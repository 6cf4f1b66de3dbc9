// libFuzzer target for the wire decoder. Any input must either decode or raise
// procpool::serialization_error; a crash, a sanitizer report, a hang or any other
// exception is a bug. A value that decodes must also survive save -> load -> save
// unchanged, so that the decoder never accepts what the encoder could not have written
// in a way the two sides would disagree on.
//
// Build: cmake -DCMAKE_CXX_COMPILER=clang++ -DPROCPOOL_FUZZ=ON; run: fuzz_wire CORPUS_DIR...
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "procpool/detail/remote_call.hpp"
#include "procpool/error.hpp"
#include "procpool/wire.hpp"
#include "wire_fuzz_cases.hpp"

namespace {

namespace wire = procpool::wire;
using bytes = std::vector<std::byte>;

template <class T>
bytes encode(const T& v) {
    bytes b;
    wire::writer w(b);
    wire::save(w, v);
    return b;
}

template <class T>
constexpr bool unordered() {
    return std::is_same_v<T, std::unordered_map<int, std::deque<std::list<std::u16string>>>>;
}

template <class T>
void decode(wire::reader& r) {
    T v;
    try {
        v = wire::load<T>(r);
    } catch (const procpool::serialization_error&) {
        return;
    }
    // What decoded must encode, and its encoding must decode to the same encoding again.
    // Exceptions here are bugs and reach libFuzzer uncaught.
    const bytes once = encode(v);
    wire::reader again(once.data(), once.size());
    const T w = wire::load<T>(again);
    if (again.remaining() != 0) std::abort();
    if constexpr (unordered<T>()) {
        if (!(w == v)) std::abort();  // bucket order may differ between two equal maps
    } else {
        if (encode(w) != once) std::abort();
    }
}

template <std::size_t... I>
void decode_case(std::size_t which, wire::reader& r, std::index_sequence<I...>) {
    using fn = void (*)(wire::reader&);
    static constexpr fn table[] = {&decode<std::tuple_element_t<I, wire_fuzz::values>>...};
    table[which](r);
}

/// A task's arguments as a worker decodes them.
template <class... Ts>
void decode_arguments(wire::reader& r, std::tuple<Ts...>*) {
    (void)wire::load_all<Ts...>(r);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::size_t which = data[0] % wire_fuzz::case_count;
    wire::reader r(reinterpret_cast<const std::byte*>(data + 1), size - 1);
    try {
        if (which < wire_fuzz::value_cases) {
            decode_case(which, r, std::make_index_sequence<wire_fuzz::value_cases>{});
        } else if (which == wire_fuzz::remote_exception_case) {
            // A task's exception as the parent reads it; the result must be a remote_exception.
            const std::exception_ptr e = procpool::detail::decode_exception(r);
            try {
                std::rethrow_exception(e);
            } catch (const procpool::remote_exception&) {
            }
        } else if (which == wire_fuzz::remote_message_case) {
            (void)procpool::detail::decode_message(r);
        } else {
            decode_arguments(r, static_cast<wire_fuzz::arguments*>(nullptr));
        }
    } catch (const procpool::serialization_error&) {
    }
    return 0;
}
