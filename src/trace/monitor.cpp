#include "trace/monitor.hpp"

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <string>
#include <utility>

#include "trace/status.hpp"

namespace procpool {

namespace {
thread_local trace::submission_label tl_label;
}  // namespace

void detail::set_trace_label(std::uint64_t id, std::uint32_t attempt) noexcept {
    tl_label = trace::submission_label{true, id, attempt};
}

void detail::clear_trace_label() noexcept { tl_label = trace::submission_label{}; }

namespace trace {

submission_label take_label() noexcept { return std::exchange(tl_label, submission_label{}); }

int histogram::index_of(std::uint64_t v) noexcept {
    if (v < sub) return static_cast<int>(v);
    const int e = std::bit_width(v) - 1;  // >= sub_bits
    const auto m = static_cast<int>((v >> (e - sub_bits)) & (sub - 1));
    return sub + (e - sub_bits) * sub + m;
}

std::uint64_t histogram::midpoint(int index) noexcept {
    if (index < sub) return static_cast<std::uint64_t>(index);
    const int e = (index - sub) / sub + sub_bits;
    const auto m = static_cast<std::uint64_t>((index - sub) % sub);
    const std::uint64_t lo = (std::uint64_t{1} << e) + (m << (e - sub_bits));
    const std::uint64_t width = std::uint64_t{1} << (e - sub_bits);
    return lo + width / 2;
}

void histogram::add(std::int64_t ns) noexcept {
    const auto v = static_cast<std::uint64_t>(std::max<std::int64_t>(ns, 0));
    counts_[static_cast<std::size_t>(index_of(v))].fetch_add(1, std::memory_order_relaxed);
    std::int64_t m = max_.load(std::memory_order_relaxed);
    while (ns > m && !max_.compare_exchange_weak(m, ns, std::memory_order_relaxed)) {
    }
}

void histogram::sum_into(std::array<std::uint64_t, buckets>& into, std::int64_t& max) const noexcept {
    for (std::size_t i = 0; i < into.size(); ++i) {
        into[i] += counts_[i].load(std::memory_order_relaxed);
    }
    max = std::max(max, max_.load(std::memory_order_relaxed));
}

duration_summary histogram::summarize(const std::array<std::uint64_t, buckets>& counts,
                                      std::int64_t max) noexcept {
    duration_summary d;
    for (auto c : counts) d.count += c;
    d.max = std::chrono::nanoseconds(max);
    if (d.count == 0) return d;
    auto percentile = [&](double q) {
        // The smallest value with at least q of the samples at or below it.
        const auto rank = std::max<std::uint64_t>(
            1, static_cast<std::uint64_t>(q * static_cast<double>(d.count) + 0.999999));
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts.size(); ++i) {
            seen += counts[i];
            if (seen >= rank) {
                const auto v = static_cast<std::int64_t>(midpoint(static_cast<int>(i)));
                return std::chrono::nanoseconds(std::min(v, max));
            }
        }
        return std::chrono::nanoseconds(max);
    };
    d.p50 = percentile(0.50);
    d.p99 = percentile(0.99);
    return d;
}

pool_monitor::pool_monitor(std::string name, int workers, std::shared_ptr<trace_recorder> recorder)
    : recorder_(std::move(recorder)), started_ns_(clock_ns()) {
    slots_.reserve(static_cast<std::size_t>(workers) + 1);
    for (int i = 0; i <= workers; ++i) slots_.push_back(std::make_unique<slot>());
    if (recorder_) {
        char host[256] = {};
        if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
        pool_index_ = recorder_->add_pool(pool_trace_info{std::move(name), workers, host});
    }
}

void pool_monitor::finished(const task_done& t, const std::exception_ptr& error) noexcept {
    const bool ran = t.worker >= 0 && t.start_ns != 0 &&
                     static_cast<std::size_t>(t.worker) + 1 < slots_.size();
    slot& s = *slots_[ran ? static_cast<std::size_t>(t.worker) : slots_.size() - 1];
    status_and_message sm;
    try {
        sm = classify(error);
    } catch (...) {  // no memory for the message: the status is still right enough
        sm.status = error ? task_status::failed : task_status::ok;
    }
    s.by_status[static_cast<int>(sm.status)].fetch_add(1, std::memory_order_relaxed);
    if (ran) {
        const std::int64_t run = std::max<std::int64_t>(0, t.end_ns - t.start_ns);
        s.busy_ns.fetch_add(run, std::memory_order_relaxed);
        s.run_time.add(run);
        if (t.submit_ns != 0) s.queue_wait.add(t.start_ns - t.submit_ns);
    }
    if (!recorder_) return;
    try {
        recorder_->record(task_trace{.id = t.id,
                                     .pool = pool_index_,
                                     .worker = ran ? t.worker : -1,
                                     .pid = t.pid,
                                     .submit_ns = t.submit_ns,
                                     .start_ns = ran ? t.start_ns : 0,
                                     .end_ns = t.end_ns,
                                     .status = sm.status,
                                     .attempt = t.attempt,
                                     .bytes_in = t.bytes_in,
                                     .bytes_out = t.bytes_out,
                                     .error = std::move(sm.message)});
    } catch (...) {  // NOLINT(bugprone-empty-catch): a trace without memory loses the event
    }
}

void pool_monitor::worker_started(int worker, int pid, bool replacement) noexcept {
    if (replacement) restarts_.fetch_add(1, std::memory_order_relaxed);
    mark(worker, pid, worker_trace::kind::started, {});
}

void pool_monitor::worker_exited(int worker, int pid, const std::string& reason) noexcept {
    mark(worker, pid, worker_trace::kind::exited, reason);
}

void pool_monitor::mark(int worker, int pid, worker_trace::kind what,
                        const std::string& reason) noexcept {
    if (!recorder_) return;
    try {
        recorder_->record(worker_trace{.pool = pool_index_,
                                       .worker = worker,
                                       .pid = pid,
                                       .time_ns = clock_ns(),
                                       .what = what,
                                       .reason = reason});
    } catch (...) {  // NOLINT(bugprone-empty-catch): a trace without memory loses the mark
    }
}

pool_stats pool_monitor::stats() const {
    pool_stats st;
    const std::int64_t now = clock_ns();
    st.uptime = std::chrono::nanoseconds(now - started_ns_);
    st.submitted = next_id_.load(std::memory_order_relaxed) - rejected_.load(std::memory_order_relaxed);
    st.worker_restarts = restarts_.load(std::memory_order_relaxed);
    std::array<std::uint64_t, histogram::buckets> wait{};
    std::array<std::uint64_t, histogram::buckets> run{};
    std::int64_t wait_max = 0;
    std::int64_t run_max = 0;
    std::uint64_t by[6] = {};
    const double life = static_cast<double>(std::max<std::int64_t>(1, now - started_ns_));
    for (std::size_t i = 0; i < slots_.size(); ++i) {
        const slot& s = *slots_[i];
        for (int k = 0; k < 6; ++k) by[k] += s.by_status[k].load(std::memory_order_relaxed);
        s.queue_wait.sum_into(wait, wait_max);
        s.run_time.sum_into(run, run_max);
        if (i + 1 < slots_.size()) {
            st.busy_fraction.push_back(
                std::min(1.0, static_cast<double>(s.busy_ns.load(std::memory_order_relaxed)) / life));
        }
    }
    st.completed = by[static_cast<int>(task_status::ok)];
    st.exceptions = by[static_cast<int>(task_status::exception)];
    st.worker_died = by[static_cast<int>(task_status::worker_died)];
    st.timeouts = by[static_cast<int>(task_status::timeout)];
    st.cancelled = by[static_cast<int>(task_status::cancelled)];
    st.other_failures = by[static_cast<int>(task_status::failed)];
    st.queue_wait = histogram::summarize(wait, wait_max);
    st.run_time = histogram::summarize(run, run_max);
    return st;
}

}  // namespace trace
}  // namespace procpool
