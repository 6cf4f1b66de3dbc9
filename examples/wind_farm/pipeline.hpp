// The wind-farm sweep run two ways, so that they can be timed against each other:
// - pipelined: each direction's task runs in a process pool, and the moment it finishes
//   `procpool::then` hands its result to a thread pool that writes its files; computing
//   and writing overlap, and no thread waits in between;
// - compute-then-write: every task is computed first, then every file is written (by the
//   same thread pool), as a program would that collects all results before saving them.
// Both write the same files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include <procpool/process_pool.hpp>
#include <procpool/thread_pool.hpp>

#include "energy.hpp"
#include "wake_model.hpp"

namespace wind_farm {

/// What to sweep and where to write it.
struct sweep_job {
    farm site;                    ///< The farm.
    sweep_settings settings;      ///< Speeds and flow field of each task.
    int step_deg = 5;             ///< Directions 0, step, 2 step, ... below 360.
    std::filesystem::path out;    ///< Folder for the case files (created if missing).
    bool show_progress = false;   ///< Report progress on stderr (procpool::progress_reporter).
    /// Flush each file to the disk (fdatasync) before counting it written: the writers
    /// then wait on the disk, as they would for results that must survive a crash or
    /// that go to a network file system.
    bool sync = false;
};

/// The directions a job sweeps: 0, step, 2 step, ... below 360.
std::vector<int> sweep_directions(int step_deg);

/// What a run of the sweep produced.
struct sweep_outcome {
    std::vector<direction_power> cases;  ///< One per direction, in direction order.
    int files = 0;                       ///< Files written.
    std::uintmax_t bytes = 0;            ///< Bytes written.
    double seconds = 0;                  ///< Wall time from the first submit to the last file.
    /// Compute-then-write only: wall time until the last result arrived (the rest of
    /// `seconds` is the writing).
    double compute_seconds = 0;
};

/// Runs one small task per worker of `compute` and waits for them, so that the workers
/// have started and run the model once before anything is timed.
void warm_up(procpool::process_pool& compute, const farm& site);

/// Runs `job` pipelined: compute in `compute`, and each result's files written by `io`
/// through `procpool::then` as soon as it arrives. Rethrows the first failure (in
/// direction order) after every task has finished.
sweep_outcome run_pipelined(procpool::process_pool& compute, procpool::thread_pool& io,
                            const sweep_job& job);

/// Runs `job` in two phases: every direction computed in `compute` and collected, then
/// every case's files written by `io`. Rethrows the first failure, as `run_pipelined`.
sweep_outcome run_compute_then_write(procpool::process_pool& compute, procpool::thread_pool& io,
                                     const sweep_job& job);

}  // namespace wind_farm
