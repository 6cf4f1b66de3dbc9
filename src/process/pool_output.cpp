// Captured output (capture_output), the pool's part: taking a task's output from its
// completion, and keeping what a task writes past the limit from piling up in memory.
// The mechanics of both ends are in output.cpp.
#include <atomic>
#include <cstdint>
#include <memory>

#include "process/channel.hpp"
#include "process/output.hpp"
#include "process/pool_core.hpp"

namespace procpool::process {

namespace {
// While the pool holds tasks, each worker's files are looked at this often...
constexpr std::int64_t output_check_ns = 50'000'000;
// ... and this often while some task writes past the limit fast enough to be freed.
constexpr std::int64_t output_hurry_ns = 5'000'000;
// A file past the limit while the pool is idle: a process some task started writes on.
constexpr std::int64_t output_linger_ns = 1'000'000'000;
}  // namespace

// The output that travels with a completion of type `type`: parsed from the front of the
// payload (advancing `data`/`size`) if the worker sent any; the empty output for a task
// that ran and wrote nothing; null if the pool does not capture or the task was skipped.
std::shared_ptr<const task_output> pool_core::completion_output(std::uint32_t type,
                                                                run_status status,
                                                                const std::byte*& data,
                                                                std::size_t& size) {
    if ((type & output_flag) != 0) {
        if (!opts.capture_output) {
            throw protocol_violation("captured output from a pool that does not capture it");
        }
        return parse_output(data, size, opts.output_limit);
    }
    if (opts.capture_output && status != run_status::cancelled) return empty_output();
    return nullptr;
}

// Supervisor: frees what the workers' files hold past the limit, when due. Returns when
// it is next due (INT64_MAX: not while the pool holds no task; enqueue then wakes a
// sleeping supervisor through wake_for_output). Two fstat calls per worker and check;
// a fallocate only for a file more than a MiB past the limit.
std::int64_t pool_core::bound_output() noexcept {
    if (!opts.capture_output) return INT64_MAX;
    const std::int64_t now = now_ns();
    if (output_next == INT64_MAX) {
        // Announce, then look (the Dekker pair with wake_for_output).
        output_idle.store(true, std::memory_order_seq_cst);
        if (outstanding.load(std::memory_order_seq_cst) == 0) return INT64_MAX;
        output_idle.store(false, std::memory_order_relaxed);
        output_next = now + output_check_ns;
        return output_next;
    }
    if (now < output_next) return output_next;
    bool punched = false;
    bool over = false;
    // The slots never change; their files are replaced only on this thread (spawn and
    // release_slot run on the supervisor once the pool has started).
    for (auto& s : slots) {
        if (!s->output) continue;
        const bound_result r = process::bound_output(s->output, opts.output_limit);
        punched = punched || r.punched;
        over = over || r.over_limit;
    }
    if (punched) {
        output_next = now + output_hurry_ns;
    } else if (outstanding.load(std::memory_order_acquire) != 0) {
        output_next = now + output_check_ns;
    } else if (over) {
        output_next = now + output_linger_ns;
    } else {
        output_next = INT64_MAX;
    }
    return output_next;
}

// A task was added: a supervisor asleep without watching the files must start to.
void pool_core::wake_for_output() noexcept {
    if (!opts.capture_output) return;
    // After enqueue's seq_cst increment of outstanding; bound_output stores output_idle,
    // then loads outstanding: one of the two sees the other.
    if (output_idle.load(std::memory_order_seq_cst) &&
        supervisor_asleep.load(std::memory_order_seq_cst)) {
        wake_supervisor();
    }
}

}  // namespace procpool::process
