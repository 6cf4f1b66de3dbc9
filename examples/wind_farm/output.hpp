// The wind-farm sweep's files: each case's per-turbine results and flow field (CSV), the
// per-turbine energy summary, and the power rose (CSV and SVG). I/O only; a thread pool
// calls these, so they share nothing between calls.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "energy.hpp"
#include "wake_model.hpp"

namespace wind_farm {

/// What writing one case's files produced.
struct written_case {
    direction_power power;   ///< The case's powers, for the energy yield.
    int files = 0;           ///< Files written.
    std::uintmax_t bytes = 0;  ///< Bytes written.
};

/// The name of one case's file of `kind` ("turbines" or "flow"): e.g. turbines_045.csv.
std::string case_file_name(const std::string& kind, int direction_deg);

/// Writes case `r` into folder `dir` (which must exist): turbines_DDD.csv, one row per
/// speed and turbine (turbine, x_m, y_m, free_stream_ms, speed_ms, power_kw,
/// thrust_coefficient), and, if `r` has a flow field, flow_DDD.csv (a matrix: the first
/// row holds the x of each column, the first column the y of each row, the rest the
/// hub-height speed in m/s). With `sync`, each file is flushed to the disk (fdatasync)
/// before this returns. Throws std::runtime_error if a file cannot be written.
written_case write_case_files(const std::filesystem::path& dir, const farm& f,
                              const direction_result& r, bool sync = false);

/// Writes turbines.csv into `dir`: each turbine's position, AEP (GWh) and wake loss (%).
void write_turbine_summary(const std::filesystem::path& dir, const farm& f,
                           const energy_yield& e);

/// Writes power_rose.csv and power_rose.svg into `dir`: per direction, the farm's power
/// at the flow speed (with its wake-free value) and its mean power given the wind comes
/// from there, as a table and as a polar plot. `cases` in direction order, one per
/// `step_deg`.
void write_power_rose(const std::filesystem::path& dir, const farm& f, int step_deg,
                      double flow_speed_ms, const std::vector<direction_power>& cases,
                      const energy_yield& e);

/// Compares two folders' regular files by name and content: an empty string if they
/// hold the same files with the same bytes, else a sentence naming the first difference.
std::string compare_folders(const std::filesystem::path& a, const std::filesystem::path& b);

}  // namespace wind_farm
