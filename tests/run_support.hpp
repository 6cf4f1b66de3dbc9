// Helpers shared by the run_in_* and progress tests.
#pragma once

#include <cstddef>
#include <vector>

namespace procpool_test {

/// 0, 1, ..., n-1 as a task list. (Not std::views::iota: clang 14 cannot compile
/// libstdc++ 12's views.)
inline std::vector<int> numbers(int n) {
    std::vector<int> v(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
    return v;
}

}  // namespace procpool_test
