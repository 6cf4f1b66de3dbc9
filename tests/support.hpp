// Helpers shared by the tests: gates that hold workers still so that tests control
// the order of events without sleeping.
#pragma once

#include <latch>

#include "procpool/thread_pool.hpp"

namespace procpool_test {

/// Occupies one worker of a pool until `open()`: `started` tells the test the worker
/// really is inside the task, so everything submitted afterwards stays queued.
class blocker {
public:
    /// Submits the blocking task and returns once a worker runs it.
    explicit blocker(procpool::thread_pool& pool)
        : done_(pool.submit([this] {
              started_.count_down();
              gate_.wait();
              return 42;
          })) {
        started_.wait();
    }
    blocker(const blocker&) = delete;
    blocker& operator=(const blocker&) = delete;
    /// Opens the gate if the test did not, so a failing test cannot hang the pool.
    ~blocker() {
        open();
        done_.wait();
    }

    /// Lets the blocked worker go on.
    void open() {
        if (!opened_) {
            opened_ = true;
            gate_.count_down();
        }
    }
    /// The blocking task's future (resolves with 42 once opened).
    const procpool::future<int>& task() const { return done_; }

private:
    std::latch started_{1};
    std::latch gate_{1};
    bool opened_ = false;
    procpool::future<int> done_;
};

}  // namespace procpool_test
