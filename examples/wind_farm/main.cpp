// The seed article's announced sequel: a wind-farm computation that mixes a process pool
// and a thread pool. Worker processes compute the flow (a Jensen wake model of a turbine
// grid, one task per wind direction, every speed from cut-in to cut-out) while threads
// write each direction's result files as soon as it is done. At the end: the annual
// energy yield from a wind rose, each turbine's wake loss, and a power rose (SVG).
//
//   Python:  fut = process_pool.submit(compute_direction, farm, settings, d)
//            fut.add_done_callback(lambda f: io_pool.submit(write_case_files, f.result()))
//   C++:     auto fut = compute.submit(compute_direction, farm, settings, d);
//            auto written = procpool::then(fut, io, write_case_files_for_this_run);
//
// The program also runs the same sweep compute-then-write (collect every result, then
// write every file) and prints both wall times; both must produce identical files.
#include <procpool/process_pool.hpp>
#include <procpool/thread_pool.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "energy.hpp"
#include "output.hpp"
#include "pipeline.hpp"
#include "wake_model.hpp"

namespace {

namespace fs = std::filesystem;

/// The command line.
struct options {
    int rows = 4;
    int cols = 4;
    double spacing_x = 7;
    double spacing_y = 5;
    double wake_decay = 0.075;
    int step = 1;
    int flow_cells = 100;
    double flow_speed = 8;
    int workers = procpool::default_worker_count();
    int io_threads = 4;
    std::string out = (fs::temp_directory_path() / "procpool-wind-farm").string();
    bool quick = false;
    bool compare = true;
    bool sync = false;
};

/// Parses the command line; returns an exit code if the program should stop now.
std::optional<int> parse(int argc, char** argv, options& o) {
    CLI::App app{
        "wind_farm: Jensen wake model of a turbine grid swept over every wind direction "
        "and speed in a process pool, each direction's files written by a thread pool as "
        "soon as it is computed (procpool::then); prints the annual energy yield, wake "
        "losses and both pipelined and compute-then-write wall times, and writes a power "
        "rose (SVG)."};
    app.add_option("--rows", o.rows, "Turbine rows (south to north)")
        ->check(CLI::Range(1, 50))
        ->capture_default_str();
    app.add_option("--cols", o.cols, "Turbine columns (west to east)")
        ->check(CLI::Range(1, 50))
        ->capture_default_str();
    app.add_option("--spacing-x", o.spacing_x, "Column spacing, rotor diameters")
        ->check(CLI::Range(1.0, 100.0))
        ->capture_default_str();
    app.add_option("--spacing-y", o.spacing_y, "Row spacing, rotor diameters")
        ->check(CLI::Range(1.0, 100.0))
        ->capture_default_str();
    app.add_option("-k,--wake-decay", o.wake_decay,
                   "Wake decay constant k (0.075 onshore, 0.04-0.05 offshore)")
        ->check(CLI::Range(0.001, 1.0))
        ->capture_default_str();
    app.add_option("--step", o.step, "Direction step in degrees; must divide 360")
        ->check(CLI::Range(1, 360))
        ->capture_default_str();
    app.add_option("--flow-cells", o.flow_cells,
                   "Flow-field cells along the site's longer side (0: no flow files)")
        ->check(CLI::Range(0, 2000))
        ->capture_default_str();
    app.add_option("--flow-speed", o.flow_speed,
                   "Free-stream speed (m/s) of the flow fields and the power rose")
        ->check(CLI::Range(3.0, 25.0))
        ->capture_default_str();
    app.add_option("-w,--workers", o.workers, "Worker processes computing the cases")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_option("--io-threads", o.io_threads, "Threads writing the files")
        ->check(CLI::Range(1, 64))
        ->capture_default_str();
    app.add_option("-o,--out", o.out, "Output folder")->capture_default_str();
    app.add_flag("--sync", o.sync,
                 "Flush each case file to the disk (fdatasync) before counting it written, so "
                 "the writers wait on the disk as for results that must survive a crash");
    app.add_flag("--quick", o.quick,
                 "A small sweep for tests: 30-degree steps and 24 flow cells (unless given)");
    app.add_flag("!--no-compare", o.compare,
                 "Skip the compute-then-write run (and its timing and file comparison)");
    try {
        app.parse(argc, argv);
        if (360 % o.step != 0) {
            throw CLI::ValidationError("--step", "--step " + std::to_string(o.step) +
                                                     " does not divide 360");
        }
    } catch (const CLI::Success& e) {  // --help
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::cerr << "wind_farm: " << e.what() << "\nRun 'wind_farm --help' for the options.\n";
        return 2;
    }
    if (o.quick) {
        if (app.count("--step") == 0) o.step = 30;
        if (app.count("--flow-cells") == 0) o.flow_cells = 24;
    }
    return std::nullopt;
}

void print_summary(const wind_farm::farm& f, const wind_farm::energy_yield& e) {
    std::printf("\n    turbine      x (m)      y (m)   AEP (GWh)   wake loss\n");
    constexpr std::size_t shown = 100;  // a bigger farm's table is in turbines.csv
    for (std::size_t i = 0; i < f.turbines.size() && i < shown; ++i) {
        std::printf("    %7zu %10.0f %10.0f %11.2f %9.1f %%\n", i, f.turbines[i].x_m,
                    f.turbines[i].y_m, e.turbine_gwh[i], 100 * e.turbine_wake_loss[i]);
    }
    if (f.turbines.size() > shown) {
        std::printf("    ... and %zu more in turbines.csv\n", f.turbines.size() - shown);
    }
    std::printf("\n    farm AEP %.1f GWh/year with wakes, %.1f without: wake loss %.1f %%, "
                "capacity factor %.1f %%\n",
                e.farm_gwh, e.free_farm_gwh, 100 * e.farm_wake_loss, 100 * e.capacity_factor);
}

}  // namespace

int main(int argc, char** argv) {
    procpool::init(argc, argv);  // first, like the seed's `if __name__ == "__main__":`

    options o;
    if (auto code = parse(argc, argv, o)) return *code;

    try {
        const wind_farm::farm site =
            wind_farm::grid_farm(wind_farm::generic_2mw(), o.rows, o.cols, o.spacing_x,
                                 o.spacing_y, o.wake_decay);
        const wind_farm::wind_rose rose = wind_farm::sample_wind_rose();
        const fs::path out = o.out;
        // Member by member: g++ 12 misreads a nested designated initializer inside a try
        // block as leaving the vector uninitialised (-Wmaybe-uninitialized).
        wind_farm::sweep_job job;
        job.site = site;
        job.settings.speeds_ms = wind_farm::standard_speeds();
        job.settings.flow_speed_ms = o.flow_speed;
        job.settings.flow_cells = o.flow_cells;
        job.step_deg = o.step;
        job.out = out / "cases";
        job.show_progress = true;
        job.sync = o.sync;
        const auto directions = wind_farm::sweep_directions(o.step);
        std::printf("wind_farm: %d x %d turbines (%s), %g D x %g D apart, k = %g\n"
                    "    %zu directions x %zu speeds (%g-%g m/s), wind rose: %s\n"
                    "    %d worker processes compute, %d threads write%s, into %s\n\n",
                    o.rows, o.cols, site.turbine.name.c_str(), o.spacing_x, o.spacing_y,
                    o.wake_decay, directions.size(), job.settings.speeds_ms.size(),
                    job.settings.speeds_ms.front(), job.settings.speeds_ms.back(),
                    rose.name.c_str(), o.workers, o.io_threads,
                    o.sync ? " (each file flushed to the disk)" : "", out.c_str());
        std::fflush(stdout);  // before the progress lines on stderr

        fs::remove_all(job.out);  // only what this program writes: --out may hold more
        procpool::process_pool compute({.workers = o.workers});
        procpool::thread_pool io({.workers = o.io_threads});
        wind_farm::warm_up(compute, site);  // neither run should pay for process start-up

        // The pipelined run goes first: if either run gains from a warmer machine, it is
        // the second one.
        const wind_farm::sweep_outcome piped = wind_farm::run_pipelined(compute, io, job);
        std::optional<wind_farm::sweep_outcome> serial;
        std::string difference;
        if (o.compare) {
            wind_farm::sweep_job second = job;
            second.out = out / "compare";
            serial = wind_farm::run_compute_then_write(compute, io, second);
            difference = wind_farm::compare_folders(job.out, second.out);
            fs::remove_all(second.out);
        }

        const wind_farm::energy_yield e = wind_farm::annual_energy(
            site, rose, o.step, job.settings.speeds_ms, piped.cases);
        wind_farm::write_turbine_summary(out, site, e);
        wind_farm::write_power_rose(out, site, o.step, o.flow_speed, piped.cases, e);
        print_summary(site, e);

        std::printf("\n    pipelined (then):      %7.3f s   %d files, %.1f MB in %s\n",
                    piped.seconds, piped.files, static_cast<double>(piped.bytes) / 1e6,
                    job.out.c_str());
        if (serial) {
            std::printf("    compute, then write:   %7.3f s   (%.3f s computing, then %.3f s writing), %s\n",
                        serial->seconds, serial->compute_seconds,
                        serial->seconds - serial->compute_seconds,
                        difference.empty() ? "the same files" : ("DIFFERENT: " + difference).c_str());
        }
        std::printf("    summary: %s, %s, %s\n", (out / "turbines.csv").c_str(),
                    (out / "power_rose.csv").c_str(), (out / "power_rose.svg").c_str());

        // The checks that make this program a test: every case written once, both runs
        // alike, and energy figures that mean something.
        const int files_per_case = o.flow_cells > 0 ? 2 : 1;
        std::vector<std::string> problems;
        if (piped.files != static_cast<int>(directions.size()) * files_per_case) {
            problems.push_back("wrote " + std::to_string(piped.files) + " case files");
        }
        if (serial && (!difference.empty() || serial->files != piped.files)) {
            problems.push_back("the two runs wrote different files");
        }
        if (!(e.farm_gwh > 0) || !(e.farm_gwh <= e.free_farm_gwh) || !(e.farm_wake_loss < 0.5)) {
            problems.push_back("implausible energy figures");
        }
        if (!fs::exists(out / "power_rose.svg")) problems.push_back("no power rose");
        for (const auto& p : problems) std::fprintf(stderr, "wind_farm: %s\n", p.c_str());
        return problems.empty() ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "wind_farm: " << e.what() << '\n';
        return 1;
    }
}
