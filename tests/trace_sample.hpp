// Hand-built traces (no pools) that the export tests and tests/trace_sample.cpp share, with
// the counts their exports must show.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "procpool/trace.hpp"

namespace procpool_test {

/// A steady-clock reading far from zero, so that "relative to the earliest" shows.
inline constexpr std::int64_t trace_base_ns = 1'000'000'000'000;
/// `ms` milliseconds after `trace_base_ns`.
inline constexpr std::int64_t at_ms(double ms) {
    return trace_base_ns + static_cast<std::int64_t>(ms * 1e6);
}

/// An error message no exporter may pass through raw.
inline const std::string hostile_error = "std::runtime_error: <script>alert(1)</script>&\"'";
/// Control characters (to drop in SVG) and invalid UTF-8 (to replace).
inline const std::string control_error = std::string("bad\x01\x02 wire\x7f\nline 2\t\xff\xfe end");
inline const std::string truncated_utf8_error = std::string("cut \xe2\x82 here, caf\xc3\xa9");

/// What `fill_sample` records.
struct sample_counts {
    static constexpr std::size_t tasks = 10;
    static constexpr std::size_t started = 9;        // "X" events, SVG bars of started tasks
    static constexpr std::size_t never_started = 1;  // "i" events on a queue lane
    static constexpr std::size_t worker_events = 5;  // "i" events on worker lanes
    static constexpr std::size_t pools = 2;
    static constexpr std::size_t lanes = 5;  // pool 0: queue, w0, w1, w2; pool 1: w0
    static constexpr std::size_t worker_exits = 4;
};

/// Two pools, every status, a retry, worker exits (a crash and its replacement) and hostile
/// error strings and pool names. Timestamps are fixed: the exports are the same every run.
inline void fill_sample(procpool::trace_recorder& r) {
    using procpool::task_status;
    using procpool::task_trace;
    using procpool::worker_trace;
    const auto p0 = r.add_pool({"process_pool", 3, "node-a"});
    const auto p1 = r.add_pool({"thread_pool <&> 'x'", 1, "node-a"});
    const auto task = [&](std::uint32_t pool, std::uint64_t id, int worker, int pid, double submit,
                          double start, double end, task_status st, std::uint32_t attempt = 1,
                          std::string err = {}) {
        task_trace t;
        t.id = id;
        t.pool = pool;
        t.worker = worker;
        t.pid = pid;
        t.submit_ns = at_ms(submit);
        t.start_ns = start < 0 ? 0 : at_ms(start);
        t.end_ns = at_ms(end);
        t.status = st;
        t.attempt = attempt;
        t.bytes_in = 100 * id;
        t.bytes_out = 10 * id;
        t.error = std::move(err);
        r.record(std::move(t));
    };
    const auto event = [&](std::uint32_t pool, int worker, int pid, double at,
                           worker_trace::kind what, std::string reason = {}) {
        r.record(worker_trace{pool, worker, pid, at_ms(at), what, std::move(reason)});
    };
    task(p0, 1, 0, 101, 0, 1, 5, task_status::ok);
    task(p0, 2, 1, 102, 0, 1, 3, task_status::exception, 1, hostile_error);
    task(p0, 3, 0, 101, 0.5, 5, 9, task_status::worker_died, 1, "killed by SIGSEGV");
    event(p0, 0, 101, 9, worker_trace::kind::exited, "killed by SIGSEGV");
    event(p0, 0, 103, 9.5, worker_trace::kind::started);
    task(p0, 3, 0, 103, 9, 10, 12, task_status::ok, 2);  // the retry
    task(p0, 5, 1, 102, 1, 3, 13, task_status::timeout, 1, "task_timeout: ran past 10 ms");
    event(p0, 1, 102, 13, worker_trace::kind::exited, "killed after a timeout");
    task(p0, 6, -1, 0, 2, -1, 14, task_status::cancelled, 1, "task_cancelled: cancelled");
    task(p0, 7, 1, 104, 2, 14, 15, task_status::failed, 1, control_error);
    task(p0, 8, 2, 105, 2, 4, 4.5, task_status::ok);
    event(p0, 2, 105, 16, worker_trace::kind::exited);
    task(p1, 1, 0, 100, 0, 2, 8, task_status::ok);
    task(p1, 2, 0, 100, 0, 8, 11, task_status::exception, 1, truncated_utf8_error);
    event(p1, 0, 100, 17, worker_trace::kind::exited, "shut down");
}

/// What `fill_many` records.
struct many_counts {
    static constexpr std::size_t tasks = 5000;
    static constexpr std::size_t workers = 4;
    static constexpr std::size_t failed = 10;  // every 500th task threw
};

/// 5000 tasks of 2 us each on 4 workers (with 0.5 us between them), far narrower than a
/// pixel at any sensible width; every 500th throws.
inline void fill_many(procpool::trace_recorder& r) {
    const auto p = r.add_pool({"process_pool", static_cast<int>(many_counts::workers), "node-a"});
    for (std::size_t i = 0; i < many_counts::tasks; ++i) {
        procpool::task_trace t;
        t.id = i + 1;
        t.pool = p;
        t.worker = static_cast<int>(i % many_counts::workers);
        t.pid = 200 + t.worker;
        const auto slot = static_cast<std::int64_t>(i / many_counts::workers);
        t.submit_ns = trace_base_ns;
        t.start_ns = trace_base_ns + slot * 2500;
        t.end_ns = t.start_ns + 2000;
        if ((i + 1) % 500 == 0) {
            t.status = procpool::task_status::exception;
            t.error = "task " + std::to_string(i + 1) + " threw";
        }
        r.record(std::move(t));
    }
}

}  // namespace procpool_test
