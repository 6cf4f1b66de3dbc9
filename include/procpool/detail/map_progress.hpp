// Waiting for a map's chunks while a progress line counts their elements.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "procpool/future.hpp"
#include "procpool/progress.hpp"

namespace procpool::detail {

/// Waits for every future in `chunks` (chunk `c` holds `sizes[c]` elements) while
/// `progress` counts elements as chunks finish, in whatever order they do, and redraws at
/// its interval. Everything happens on the calling thread: no pool thread ever writes to
/// the terminal. Ends with `progress.finish()`.
template <class Future>
void wait_counting(const std::vector<Future>& chunks, const std::vector<std::size_t>& sizes,
                   progress_reporter& progress) {
    std::vector<bool> counted(chunks.size(), false);
    std::size_t first = 0;  // chunks before it are all counted
    auto sweep = [&] {
        for (std::size_t c = first; c < chunks.size(); ++c) {
            if (counted[c] || !chunks[c].ready()) continue;
            counted[c] = true;
            progress.tasks_finished(sizes[c], chunks[c].exception() ? sizes[c] : 0);
        }
        while (first < chunks.size() && counted[first]) ++first;
    };
    for (const auto& c : chunks) {
        for (;;) {
            const auto next = progress.next_refresh();
            if (std::chrono::steady_clock::now() >= next) {
                sweep();
                progress.refresh();
            }
            if (next == std::chrono::steady_clock::time_point::max()) {
                c.wait();  // a log, not a terminal: nothing to redraw meanwhile
                break;
            }
            if (c.wait_until(std::max(next, std::chrono::steady_clock::now()))) break;
        }
    }
    sweep();
    progress.finish();
}

}  // namespace procpool::detail
