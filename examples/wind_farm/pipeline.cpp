#include "pipeline.hpp"

#include <procpool/continuation.hpp>
#include <procpool/progress.hpp>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

#include "output.hpp"

namespace wind_farm {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Collects the written cases in direction order; `get` rethrows the first failure.
sweep_outcome collect(std::vector<procpool::future<written_case>>& written) {
    sweep_outcome out;
    out.cases.reserve(written.size());
    for (auto& w : written) {
        written_case c = std::move(w).get();
        out.files += c.files;
        out.bytes += c.bytes;
        out.cases.push_back(std::move(c.power));
    }
    return out;
}

void check(const sweep_job& job) {
    if (job.site.turbines.empty()) throw std::invalid_argument("the farm has no turbines");
    std::filesystem::create_directories(job.out);
}

}  // namespace

std::vector<int> sweep_directions(int step_deg) {
    if (step_deg < 1 || step_deg > 360 || 360 % step_deg != 0) {
        throw std::invalid_argument("the direction step must divide 360 degrees, got " +
                                    std::to_string(step_deg));
    }
    std::vector<int> d;
    for (int a = 0; a < 360; a += step_deg) d.push_back(a);
    return d;
}

void warm_up(procpool::process_pool& compute, const farm& site) {
    std::vector<procpool::future<direction_result>> tasks;
    for (int i = 0; i < compute.workers(); ++i) {
        tasks.push_back(compute.submit(compute_direction, site, sweep_settings{}, 0));
    }
    for (auto& t : tasks) t.get();
}

sweep_outcome run_pipelined(procpool::process_pool& compute, procpool::thread_pool& io,
                            const sweep_job& job) {
    check(job);
    const std::vector<int> directions = sweep_directions(job.step_deg);
    std::optional<procpool::progress_reporter> progress;
    if (job.show_progress) {
        progress.emplace(directions.size(), compute.workers(),
                         procpool::progress_options{.label = "wind-farm sweep (pipelined)"});
        progress->start();
    }
    const auto t0 = clock_type::now();

    // The whole pattern: the compute future goes to then(), which submits the writer to
    // the I/O pool from the completion callback, so a file is written while the other
    // workers still compute, and each result is freed once its files are on disk. The
    // writer may capture (it runs in this process); the task may not (it runs in a
    // worker process), so it is a free function of serializable arguments.
    std::vector<procpool::future<written_case>> written;
    written.reserve(directions.size());
    for (int d : directions) {
        procpool::future<direction_result> computed =
            compute.submit(compute_direction, job.site, job.settings, d);
        written.push_back(procpool::then(std::move(computed), io, [&job](const direction_result& r) {
            return write_case_files(job.out, job.site, r, job.sync);
        }));
    }
    // The main thread only watches: count each case as its files are written.
    for (const auto& w : procpool::as_completed(written)) {
        if (progress) progress->task_finished(w.exception() == nullptr);
    }
    const double seconds = seconds_since(t0);
    if (progress) progress->finish();

    sweep_outcome out = collect(written);
    out.seconds = seconds;
    return out;
}

sweep_outcome run_compute_then_write(procpool::process_pool& compute, procpool::thread_pool& io,
                                     const sweep_job& job) {
    check(job);
    const std::vector<int> directions = sweep_directions(job.step_deg);
    std::optional<procpool::progress_reporter> progress;
    if (job.show_progress) {
        progress.emplace(directions.size(), compute.workers(),
                         procpool::progress_options{.label = "wind-farm sweep (compute, then write)"});
        progress->start();
    }
    const auto t0 = clock_type::now();

    std::vector<procpool::future<direction_result>> computed;
    computed.reserve(directions.size());
    for (int d : directions) computed.push_back(compute.submit(compute_direction, job.site, job.settings, d));
    std::vector<direction_result> results;
    results.reserve(directions.size());
    for (auto& f : computed) results.push_back(std::move(f).get());  // all held at once
    const double compute_seconds = seconds_since(t0);

    std::vector<procpool::future<written_case>> written;
    written.reserve(results.size());
    for (const auto& r : results) {
        written.push_back(
            io.submit([&job, &r] { return write_case_files(job.out, job.site, r, job.sync); }));
    }
    for (const auto& w : procpool::as_completed(written)) {
        if (progress) progress->task_finished(w.exception() == nullptr);
    }
    const double seconds = seconds_since(t0);
    if (progress) progress->finish();

    sweep_outcome out = collect(written);
    out.seconds = seconds;
    out.compute_seconds = compute_seconds;
    return out;
}

}  // namespace wind_farm
