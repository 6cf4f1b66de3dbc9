#include "output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <numbers>
#include <utility>
#include <stdexcept>

namespace wind_farm {

namespace fs = std::filesystem;

namespace {

/// Appends printf-formatted text to `out` (the C locale's decimal point, whatever the
/// user's locale: the files are data).
[[gnu::format(printf, 2, 3)]] void appendf(std::string& out, const char* fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0) throw std::runtime_error("formatting failed");
    if (static_cast<std::size_t>(n) < sizeof buf) {
        out.append(buf, static_cast<std::size_t>(n));
        return;
    }
    std::string big(static_cast<std::size_t>(n) + 1, '\0');
    va_start(ap, fmt);
    std::vsnprintf(big.data(), big.size(), fmt, ap);
    va_end(ap);
    big.resize(static_cast<std::size_t>(n));
    out += big;
}

/// Writes `content` to `path` in one go; returns its size. With `sync`, waits until the
/// disk has it (fdatasync), as a result that must survive a crash would.
std::uintmax_t write_file(const fs::path& path, const std::string& content, bool sync) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot create " + path.string() + ": " + std::strerror(errno));
    const char* p = content.data();
    std::size_t left = content.size();
    int err = 0;
    while (left > 0 && err == 0) {
        const ssize_t n = ::write(fd, p, left);
        if (n > 0) {
            p += n;
            left -= static_cast<std::size_t>(n);
        } else if (n < 0 && errno != EINTR) {
            err = errno;
        }
    }
    if (err == 0 && sync && ::fdatasync(fd) != 0) err = errno;
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err != 0) throw std::runtime_error("cannot write " + path.string() + ": " + std::strerror(err));
    return content.size();
}

/// Appends `x` with `decimals` digits after the point, as printf's %.Nf would, without
/// printf's per-call cost: a flow field is tens of thousands of numbers.
void append_fixed(std::string& out, double x, int decimals) {
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::fixed, decimals);
    if (ec != std::errc()) throw std::runtime_error("formatting failed");
    out.append(buf, end);
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The smallest of 1, 2, 5 x 10^n at or above `x` (> 0): a round top for a plot's scale.
double nice_ceiling(double x) {
    const double p = std::pow(10.0, std::floor(std::log10(x)));
    for (double m : {1.0, 2.0, 5.0, 10.0}) {
        if (m * p >= x * (1 - 1e-12)) return m * p;
    }
    return 10 * p;
}

}  // namespace

std::string case_file_name(const std::string& kind, int direction_deg) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "_%03d.csv", direction_deg);
    return kind + buf;
}

written_case write_case_files(const fs::path& dir, const farm& f, const direction_result& r,
                              bool sync) {
    written_case w;
    w.power = power_of(r);

    const std::size_t n = f.turbines.size();
    std::string t = "turbine,x_m,y_m,free_stream_ms,speed_ms,power_kw,thrust_coefficient\n";
    t.reserve(t.size() + 64 * n * r.speeds_ms.size());
    for (std::size_t j = 0; j < r.speeds_ms.size(); ++j) {
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t k = j * n + i;
            t += std::to_string(i);
            for (auto [x, decimals] : {std::pair{f.turbines[i].x_m, 1}, {f.turbines[i].y_m, 1},
                                       {r.speeds_ms[j], 2}, {r.turbine_speed_ms[k], 3},
                                       {r.turbine_power_kw[k], 1}, {r.turbine_ct[k], 3}}) {
                t += ',';
                append_fixed(t, x, decimals);
            }
            t += '\n';
        }
    }
    w.bytes += write_file(dir / case_file_name("turbines", r.direction_deg), t, sync);
    ++w.files;

    const flow_field& g = r.flow;
    if (g.nx > 0 && g.ny > 0) {
        std::string m = "y_m/x_m";
        m.reserve(static_cast<std::size_t>(g.nx + 1) * static_cast<std::size_t>(g.ny + 1) * 6);
        for (int c = 0; c < g.nx; ++c) {
            m += ',';
            append_fixed(m, g.x0_m + c * g.cell_m, 1);
        }
        m += '\n';
        for (int row = 0; row < g.ny; ++row) {
            append_fixed(m, g.y0_m + row * g.cell_m, 1);
            const float* speeds =
                g.speed_ms.data() + static_cast<std::size_t>(row) * static_cast<std::size_t>(g.nx);
            for (int c = 0; c < g.nx; ++c) {
                m += ',';
                append_fixed(m, static_cast<double>(speeds[c]), 2);
            }
            m += '\n';
        }
        w.bytes += write_file(dir / case_file_name("flow", r.direction_deg), m, sync);
        ++w.files;
    }
    return w;
}

void write_turbine_summary(const fs::path& dir, const farm& f, const energy_yield& e) {
    std::string s = "turbine,x_m,y_m,aep_gwh,wake_loss_percent\n";
    for (std::size_t i = 0; i < f.turbines.size(); ++i) {
        appendf(s, "%zu,%.1f,%.1f,%.4f,%.2f\n", i, f.turbines[i].x_m, f.turbines[i].y_m,
                e.turbine_gwh[i], 100 * e.turbine_wake_loss[i]);
    }
    write_file(dir / "turbines.csv", s, false);
}

void write_power_rose(const fs::path& dir, const farm& f, int step_deg, double flow_speed_ms,
                      const std::vector<direction_power>& cases, const energy_yield& e) {
    const double n = static_cast<double>(f.turbines.size());
    const double free_kw = n * f.turbine.power_at(flow_speed_ms);

    std::string csv;
    appendf(csv,
            "direction_deg,frequency,farm_power_kw_at_%gms,wake_free_power_kw_at_%gms,"
            "mean_farm_power_kw\n",
            flow_speed_ms, flow_speed_ms);
    for (std::size_t i = 0; i < cases.size(); ++i) {
        appendf(csv, "%d,%.5f,%.1f,%.1f,%.1f\n", cases[i].direction_deg, e.direction_frequency[i],
                cases[i].flow_farm_power_kw, free_kw, e.direction_mean_power_kw[i]);
    }
    write_file(dir / "power_rose.csv", csv, false);

    // The polar plot: the compass direction the wind comes from, power outwards (MW).
    double top_kw = free_kw;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        top_kw = std::max({top_kw, cases[i].flow_farm_power_kw, e.direction_mean_power_kw[i]});
    }
    const double top_mw = nice_ceiling(std::max(top_kw, 1.0) / 1000);
    const double cx = 330, cy = 380, radius = 250;
    auto point = [&](double deg, double kw, std::string& out) {
        const double rad = deg * std::numbers::pi / 180, r = radius * kw / 1000 / top_mw;
        appendf(out, "%.1f,%.1f ", cx + r * std::sin(rad), cy - r * std::cos(rad));
    };

    std::string svg;
    appendf(svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"660\" height=\"760\" "
            "viewBox=\"0 0 660 760\" font-family=\"sans-serif\" font-size=\"13\">\n"
            "<rect width=\"660\" height=\"760\" fill=\"white\"/>\n"
            "<text x=\"330\" y=\"30\" text-anchor=\"middle\" font-size=\"17\">Farm power by "
            "wind direction: %zu turbines, Jensen wakes (k = %g)</text>\n"
            "<text x=\"330\" y=\"52\" text-anchor=\"middle\" fill=\"#555\">%s</text>\n"
            "<text x=\"330\" y=\"70\" text-anchor=\"middle\" fill=\"#555\">directions the wind "
            "comes from, every %d&#176;; AEP %.1f GWh/year, wake loss %.1f %%</text>\n",
            f.turbines.size(), f.wake_decay, f.turbine.name.c_str(), step_deg, e.farm_gwh,
            100 * e.farm_wake_loss);
    for (int ring = 1; ring <= 4; ++ring) {
        const double r = radius * ring / 4;
        appendf(svg,
                "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"none\" stroke=\"#ddd\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" fill=\"#888\" font-size=\"11\">%g MW</text>\n",
                cx, cy, r, cx + 4, cy - r - 3, top_mw * ring / 4);
    }
    const char* names[] = {"N", "30", "60", "E", "120", "150", "S", "210", "240", "W", "300", "330"};
    for (int k = 0; k < 12; ++k) {
        const double rad = k * 30 * std::numbers::pi / 180;
        appendf(svg,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" dominant-baseline=\"middle\">"
                "%s</text>\n",
                cx, cy, cx + radius * std::sin(rad), cy - radius * std::cos(rad),
                cx + (radius + 18) * std::sin(rad), cy - (radius + 18) * std::cos(rad), names[k]);
    }
    appendf(svg,
            "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"none\" stroke=\"#777\" "
            "stroke-dasharray=\"6 4\"/>\n",
            cx, cy, radius * free_kw / 1000 / top_mw);
    std::string at_speed, mean;
    for (std::size_t i = 0; i < cases.size(); ++i) {
        point(cases[i].direction_deg, cases[i].flow_farm_power_kw, at_speed);
        point(cases[i].direction_deg, e.direction_mean_power_kw[i], mean);
    }
    appendf(svg,
            "<polygon points=\"%s\" fill=\"#1f77b4\" fill-opacity=\"0.15\" stroke=\"#1f77b4\" "
            "stroke-width=\"1.5\"/>\n"
            "<polygon points=\"%s\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\"/>\n",
            at_speed.c_str(), mean.c_str());
    appendf(svg,
            "<line x1=\"60\" y1=\"672\" x2=\"90\" y2=\"672\" stroke=\"#1f77b4\" stroke-width=\"3\"/>"
            "<text x=\"98\" y=\"676\">farm power at %g m/s free stream</text>\n"
            "<line x1=\"60\" y1=\"696\" x2=\"90\" y2=\"696\" stroke=\"#777\" stroke-dasharray=\"6 4\"/>"
            "<text x=\"98\" y=\"700\">the same without wakes (%.1f MW)</text>\n"
            "<line x1=\"60\" y1=\"720\" x2=\"90\" y2=\"720\" stroke=\"#d62728\" stroke-width=\"3\"/>"
            "<text x=\"98\" y=\"724\">mean farm power when the wind comes from there "
            "(the sector's Weibull speeds)</text>\n</svg>\n",
            flow_speed_ms, free_kw / 1000);
    write_file(dir / "power_rose.svg", svg, false);
}

std::string compare_folders(const fs::path& a, const fs::path& b) {
    auto names = [](const fs::path& dir) {
        std::vector<std::string> v;
        for (const auto& entry : fs::directory_iterator(dir)) {
            if (entry.is_regular_file()) v.push_back(entry.path().filename().string());
        }
        std::sort(v.begin(), v.end());
        return v;
    };
    const auto na = names(a), nb = names(b);
    if (na != nb) {
        return a.string() + " holds " + std::to_string(na.size()) + " files, " + b.string() +
               " holds " + std::to_string(nb.size()) + (na.size() == nb.size() ? " with other names" : "");
    }
    for (const auto& name : na) {
        if (read_file(a / name) != read_file(b / name)) return name + " differs";
    }
    return {};
}

}  // namespace wind_farm
