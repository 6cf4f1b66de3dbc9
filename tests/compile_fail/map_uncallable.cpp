// Must NOT compile: process_pool::map with a function that cannot take the range's
// elements. tests/CMakeLists.txt compiles this with -fsyntax-only and passes only if the
// error is map's own sentence, and fails if the compiler goes on about invoke_result.
#include <string>
#include <vector>

#include "procpool/process_pool.hpp"

int length(std::string s) { return static_cast<int>(s.size()); }

int main() {
    procpool::process_pool pool({.workers = 1});
    std::vector<int> xs{1, 2, 3};
    auto r = pool.map(length, xs);
    return static_cast<int>(r.size());
}
