// The values the wire fuzzer decodes, shared by the fuzzer (tests/fuzz/fuzz_wire.cpp) and
// the seed-corpus writer (tests/fuzz/make_corpus.cpp). An input's first byte picks a case;
// the rest is what that case's decoder reads.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include <cereal/types/memory.hpp>

#include "procpool/wire.hpp"

namespace wire_fuzz {

/// A recursive cereal type: each level is a user serializer, so depth is bounded.
struct tree_node {
    int value = 0;
    std::vector<tree_node> kids;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(value, kids);
    }
};

/// Trivially copyable with bools, nested and in arrays; no padding, so that a value
/// decoded and saved again gives the same bytes.
struct flagged {
    std::int16_t count;
    bool on;
    bool off;
};
enum class toggle : bool { off, on };
struct flagged_deep {
    double x;
    flagged inner;
    std::array<flagged, 2> pair;
    toggle t;
    bool last;
    std::uint16_t tail;
};
static_assert(sizeof(flagged) == 4 && sizeof(flagged_deep) == 24, "no padding");

/// cereal's smart pointers (shared ones are tracked by id), a base class, a version.
struct shape {
    std::string name;
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name);
    }
};
struct drawing : shape {
    std::shared_ptr<tree_node> first;
    std::shared_ptr<tree_node> second;
    std::unique_ptr<std::string> caption;
    std::optional<flagged> mark;
    template <class Archive>
    void serialize(Archive& ar, std::uint32_t /*version*/) {
        ar(cereal::base_class<shape>(this), first, second, caption, mark);
    }
};

/// Every case's type, in the order of the first byte (modulo the count).
using values = std::tuple<
    std::string, std::vector<int>, std::map<std::string, std::vector<double>>,
    std::tuple<std::optional<int>, std::variant<std::monostate, double, std::string>,
               std::pair<std::int8_t, std::set<long>>>,
    std::vector<bool>, tree_node, flagged, std::vector<flagged_deep>,
    std::array<flagged_deep, 2>, std::vector<toggle>, drawing,
    std::unordered_map<int, std::deque<std::list<std::u16string>>>,
    std::optional<std::variant<std::vector<std::uint16_t>, std::multimap<int, bool>,
                               std::array<std::string, 3>>>>;

inline constexpr std::size_t value_cases = std::tuple_size_v<values>;
/// After the value cases: the process pool's error payloads, then a call's arguments.
inline constexpr std::size_t remote_exception_case = value_cases;
inline constexpr std::size_t remote_message_case = value_cases + 1;
inline constexpr std::size_t arguments_case = value_cases + 2;
inline constexpr std::size_t case_count = value_cases + 3;

/// A task's arguments as a worker decodes them (`wire::load_all`).
using arguments = std::tuple<int, std::string, tree_node, std::vector<flagged>>;

}  // namespace wire_fuzz

CEREAL_CLASS_VERSION(wire_fuzz::drawing, 2)
