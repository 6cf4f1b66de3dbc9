#include "energy.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace wind_farm {

namespace {

/// Length of the overlap of [a0, a1) with [b0, b1) on a circle of 360 degrees (both
/// intervals shorter than a full turn).
double circular_overlap(double a0, double a1, double b0, double b1) {
    double total = 0;
    for (double shift : {-360.0, 0.0, 360.0}) {
        total += std::max(0.0, std::min(a1, b1 + shift) - std::max(a0, b0 + shift));
    }
    return total;
}

/// The sum of the rose's frequencies, checked: the weights used divide by it.
double frequency_sum(const wind_rose& rose) {
    if (rose.sectors.empty()) throw std::invalid_argument("a wind rose needs at least one sector");
    double sum = 0;
    for (const auto& s : rose.sectors) {
        if (!(s.frequency >= 0) || !(s.weibull_a_ms > 0) || !(s.weibull_k > 0)) {
            throw std::invalid_argument("wind rose sectors need frequency >= 0, A > 0, k > 0");
        }
        sum += s.frequency;
    }
    if (!(sum > 0)) throw std::invalid_argument("a wind rose's frequencies must not all be 0");
    return sum;
}

void check_step(int step_deg) {
    if (step_deg < 1 || step_deg > 360 || 360 % step_deg != 0) {
        throw std::invalid_argument("the direction step must divide 360 degrees, got " +
                                    std::to_string(step_deg));
    }
}

/// Weight of sector s in direction bin i: (its frequency share) x (the share of the
/// sector's width that the bin covers), [i * sectors + s].
std::vector<double> sector_weights(const wind_rose& rose, int step_deg) {
    check_step(step_deg);
    const double total = frequency_sum(rose);
    const std::size_t n_dir = static_cast<std::size_t>(360 / step_deg);
    const std::size_t n_sec = rose.sectors.size();
    const double width = 360.0 / static_cast<double>(n_sec);
    std::vector<double> w(n_dir * n_sec);
    for (std::size_t i = 0; i < n_dir; ++i) {
        const double centre = static_cast<double>(i) * step_deg;
        for (std::size_t s = 0; s < n_sec; ++s) {
            const double sc = static_cast<double>(s) * width;
            const double share = circular_overlap(centre - step_deg / 2.0, centre + step_deg / 2.0,
                                                  sc - width / 2, sc + width / 2) /
                                 width;
            w[i * n_sec + s] = rose.sectors[s].frequency / total * share;
        }
    }
    return w;
}

}  // namespace

wind_rose sample_wind_rose() {
    wind_rose r;
    r.name = "sample 12-sector rose (mean 7.8 m/s at 80 m, prevailing W-SW)";
    //            frequency  A (m/s)  k       from
    r.sectors = {{0.050, 7.0, 2.0},   // N
                 {0.045, 6.8, 1.9},   // 30
                 {0.050, 7.0, 2.0},   // 60
                 {0.060, 7.5, 2.1},   // E
                 {0.055, 7.6, 2.2},   // 120
                 {0.060, 7.8, 2.2},   // 150
                 {0.080, 8.6, 2.2},   // S
                 {0.110, 9.4, 2.3},   // 210
                 {0.140, 10.0, 2.4},  // 240
                 {0.150, 10.3, 2.4},  // W
                 {0.110, 9.5, 2.3},   // 300
                 {0.090, 8.2, 2.1}};  // 330
    return r;
}

double weibull_cdf(double a, double k, double u) {
    if (u <= 0) return 0;
    return 1 - std::exp(-std::pow(u / a, k));
}

double weibull_probability(double a, double k, double lo, double hi) {
    if (hi <= lo) return 0;
    return weibull_cdf(a, k, hi) - weibull_cdf(a, k, lo);
}

std::vector<double> direction_probabilities(const wind_rose& rose, int step_deg) {
    const std::vector<double> w = sector_weights(rose, step_deg);
    const std::size_t n_sec = rose.sectors.size();
    std::vector<double> p(w.size() / n_sec, 0.0);
    for (std::size_t i = 0; i < p.size(); ++i) {
        p[i] = std::accumulate(w.begin() + static_cast<std::ptrdiff_t>(i * n_sec),
                               w.begin() + static_cast<std::ptrdiff_t>((i + 1) * n_sec), 0.0);
    }
    return p;
}

std::vector<double> case_probabilities(const wind_rose& rose, int step_deg,
                                       const std::vector<double>& speeds_ms) {
    const std::vector<double> w = sector_weights(rose, step_deg);
    const std::size_t n_sec = rose.sectors.size();
    const std::size_t n_dir = w.size() / n_sec;
    const std::size_t n_spd = speeds_ms.size();
    // Speed bin edges: midpoints, and half a spacing beyond the first and last speeds.
    std::vector<double> edges(n_spd + 1);
    for (std::size_t j = 0; j < n_spd; ++j) {
        if (j > 0 && !(speeds_ms[j] > speeds_ms[j - 1])) {
            throw std::invalid_argument("sweep speeds must increase");
        }
        if (j > 0) edges[j] = (speeds_ms[j - 1] + speeds_ms[j]) / 2;
    }
    if (n_spd == 1) {
        edges[0] = speeds_ms[0] - 0.5, edges[1] = speeds_ms[0] + 0.5;
    } else if (n_spd > 1) {
        edges[0] = speeds_ms[0] - (speeds_ms[1] - speeds_ms[0]) / 2;
        edges[n_spd] = speeds_ms[n_spd - 1] + (speeds_ms[n_spd - 1] - speeds_ms[n_spd - 2]) / 2;
    }
    std::vector<double> p(n_dir * n_spd, 0.0);
    for (std::size_t i = 0; i < n_dir; ++i) {
        for (std::size_t s = 0; s < n_sec; ++s) {
            const double weight = w[i * n_sec + s];
            if (weight == 0) continue;
            const auto& sec = rose.sectors[s];
            for (std::size_t j = 0; j < n_spd; ++j) {
                p[i * n_spd + j] +=
                    weight * weibull_probability(sec.weibull_a_ms, sec.weibull_k, edges[j], edges[j + 1]);
            }
        }
    }
    return p;
}

direction_power power_of(const direction_result& r) {
    return {r.direction_deg, r.turbine_power_kw, r.flow_farm_power_kw};
}

energy_yield annual_energy(const farm& f, const wind_rose& rose, int step_deg,
                           const std::vector<double>& speeds_ms,
                           const std::vector<direction_power>& cases) {
    const std::vector<double> p = case_probabilities(rose, step_deg, speeds_ms);
    const std::size_t n_spd = speeds_ms.size();
    const std::size_t n_dir = static_cast<std::size_t>(360 / step_deg);
    const std::size_t n_tur = f.turbines.size();
    if (cases.size() != n_dir) {
        throw std::invalid_argument("annual_energy: " + std::to_string(cases.size()) +
                                    " cases for " + std::to_string(n_dir) + " directions");
    }
    energy_yield e;
    e.turbine_gwh.assign(n_tur, 0);
    e.direction_frequency = direction_probabilities(rose, step_deg);
    e.direction_mean_power_kw.assign(n_dir, 0);
    double free_kw_mean = 0;  // one turbine's mean power without wakes
    for (std::size_t i = 0; i < n_dir; ++i) {
        const auto& c = cases[i];
        if (c.direction_deg != static_cast<int>(i) * step_deg || c.turbine_power_kw.size() != n_spd * n_tur) {
            throw std::invalid_argument("annual_energy: case " + std::to_string(i) +
                                        " is not direction " + std::to_string(i * static_cast<std::size_t>(step_deg)) +
                                        " with every turbine at every speed");
        }
        double farm_mean = 0;
        for (std::size_t j = 0; j < n_spd; ++j) {
            const double pij = p[i * n_spd + j];
            free_kw_mean += pij * f.turbine.power_at(speeds_ms[j]);
            for (std::size_t t = 0; t < n_tur; ++t) {
                const double kw = c.turbine_power_kw[j * n_tur + t];
                e.turbine_gwh[t] += pij * kw;
                farm_mean += pij * kw;
            }
        }
        if (e.direction_frequency[i] > 0) {
            e.direction_mean_power_kw[i] = farm_mean / e.direction_frequency[i];
        }
    }
    const double kw_to_gwh = hours_per_year / 1e6;  // mean kW over a year -> GWh
    e.free_turbine_gwh = free_kw_mean * kw_to_gwh;
    e.free_farm_gwh = e.free_turbine_gwh * static_cast<double>(n_tur);
    e.turbine_wake_loss.assign(n_tur, 0);
    for (std::size_t t = 0; t < n_tur; ++t) {
        e.turbine_gwh[t] *= kw_to_gwh;
        e.farm_gwh += e.turbine_gwh[t];
        if (e.free_turbine_gwh > 0) e.turbine_wake_loss[t] = 1 - e.turbine_gwh[t] / e.free_turbine_gwh;
    }
    if (e.free_farm_gwh > 0) e.farm_wake_loss = 1 - e.farm_gwh / e.free_farm_gwh;
    const double rated_gwh = f.turbine.rated_power_kw() * static_cast<double>(n_tur) * kw_to_gwh;
    if (rated_gwh > 0) e.capacity_factor = e.farm_gwh / rated_gwh;
    return e;
}

}  // namespace wind_farm
