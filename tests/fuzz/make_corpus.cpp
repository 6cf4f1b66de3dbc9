// Writes the wire fuzzer's seed corpus: one valid encoding per case (and a few more),
// each file a case byte followed by what that case decodes. Run it after changing
// wire_fuzz_cases.hpp:  make_fuzz_corpus tests/fuzz/corpus
#include <cstdio>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "procpool/detail/remote_call.hpp"
#include "wire_fuzz_cases.hpp"

namespace {

namespace wire = procpool::wire;
using namespace wire_fuzz;

struct corpus {
    std::string dir;
    int written = 0;

    /// One seed: the case byte, then whatever `fill` writes.
    template <class F>
    void seed(const std::string& name, std::size_t which, F fill) {
        std::vector<std::byte> b{static_cast<std::byte>(which)};
        wire::writer w(b);
        fill(w);
        std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
        if (!out) throw std::runtime_error("cannot write " + dir + "/" + name);
        ++written;
    }
    /// A seed holding one value of the case type at `I`.
    template <std::size_t I>
    void value(const std::string& name, const std::tuple_element_t<I, values>& v) {
        seed(name, I, [&](wire::writer& w) { wire::save(w, v); });
    }
};

tree_node small_tree() {
    tree_node root{1, {}};
    root.kids = {tree_node{2, {}}, tree_node{3, {tree_node{4, {}}}}};
    return root;
}

tree_node chain(std::size_t depth) {
    tree_node root;
    tree_node* at = &root;
    for (std::size_t i = 1; i < depth; ++i) {
        at->kids.emplace_back();
        at = &at->kids.back();
        at->value = static_cast<int>(i);
    }
    return root;
}

flagged_deep deep(double x) {
    return flagged_deep{x, {1, true, false}, {{{2, false, true}, {3, true, true}}}, toggle::on,
                        true, 7};
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: make_fuzz_corpus DIR\n";
        return 2;
    }
    corpus c{argv[1]};
    c.value<0>("00-string", "hello wire");
    c.value<1>("01-vector-int", {1, 2, 3, -4});
    c.value<2>("02-map-string-vector-double", {{"a", {1.5, 2.5}}, {"b", {}}});
    c.value<3>("03-tuple-optional-variant-pair", {7, std::string("text"), {-3, {1, 2, 3}}});
    c.value<4>("04-vector-bool", {true, false, true, true, false, false, true, false, true});
    c.value<5>("05-tree", small_tree());
    // Deep enough to make deeper mutants likely, small enough to keep inputs fast (a chain
    // at wire::max_depth is 20 KB, and libFuzzer would then grow every input towards it).
    c.value<5>("05-tree-deep", chain(100));
    c.value<6>("06-flagged", flagged{5, true, false});
    c.value<7>("07-vector-flagged-deep", {deep(0.5), deep(-1)});
    c.value<8>("08-array-flagged-deep", {deep(1), deep(2)});
    c.value<9>("09-vector-toggle", {toggle::on, toggle::off, toggle::on});
    drawing d;
    d.name = "sketch";
    d.first = std::make_shared<tree_node>(small_tree());
    d.second = d.first;
    d.caption = std::make_unique<std::string>("caption");
    d.mark = flagged{9, false, true};
    c.value<10>("10-drawing-shared-pointers", d);
    c.value<11>("11-unordered-map", {{1, {{u"x", u"yz"}, {}}}, {-2, {}}});
    c.value<12>("12-optional-variant-multimap",
                std::variant<std::vector<std::uint16_t>, std::multimap<int, bool>,
                             std::array<std::string, 3>>(std::multimap<int, bool>{
                    {1, true}, {1, false}, {2, true}}));
    c.seed("13-remote-exception", remote_exception_case, [](wire::writer& w) {
        try {
            throw std::out_of_range("index 7 is past the end");
        } catch (...) {
            procpool::detail::encode_current_exception(w);
        }
    });
    c.seed("14-remote-message", remote_message_case, [](wire::writer& w) {
        procpool::detail::encode_message(w, "could not deserialize the task's arguments");
    });
    c.seed("15-arguments", arguments_case, [](wire::writer& w) {
        wire::save_all(w, 42, std::string("arg"), small_tree(),
                       std::vector<flagged>{{1, true, false}, {2, false, false}});
    });
    std::cout << "wrote " << c.written << " seeds to " << c.dir << "\n";
}
