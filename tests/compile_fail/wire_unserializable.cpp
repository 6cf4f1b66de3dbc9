// Must NOT compile: saving a type wire cannot send. tests/CMakeLists.txt compiles this
// with -fsyntax-only and passes only if the error names procpool::wire::cannot_serialize<T>
// and says what to do. WIRE_CASE picks the offending type.
#include <cstddef>
#include <memory>
#include <vector>

#include "procpool/wire.hpp"

struct Holder {  // neither trivially copyable nor cereal-serializable
    std::unique_ptr<int> p;
};

int main() {
    std::vector<std::byte> buf;
    procpool::wire::writer w(buf);
#if WIRE_CASE == 1
    procpool::wire::save(w, Holder{});
#elif WIRE_CASE == 2
    int x = 0;
    procpool::wire::save(w, std::vector<int*>{&x});  // the pointer inside is named, not the vector
#elif WIRE_CASE == 3
    procpool::wire::save(w, std::make_unique<int>(1));  // without <cereal/types/memory.hpp>
#endif
}
