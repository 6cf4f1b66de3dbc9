// Helpers shared by the run_in_*, progress and stream tests.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

namespace procpool_test {

/// 0, 1, ..., n-1 as a task list. (Not std::views::iota: clang 14 cannot compile
/// libstdc++ 12's views.)
inline std::vector<int> numbers(int n) {
    std::vector<int> v(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
    return v;
}

/// A one-shot gate that tasks in threads wait on. `wait` gives up after a minute so that
/// a broken implementation fails the test instead of hanging it.
class gate {
public:
    void open() {
        {
            std::lock_guard lock(m_);
            open_ = true;
        }
        cv_.notify_all();
    }
    bool wait() {
        std::unique_lock lock(m_);
        return cv_.wait_for(lock, std::chrono::minutes(1), [this] { return open_; });
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool open_ = false;
};

}  // namespace procpool_test
