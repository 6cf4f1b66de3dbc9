#include "wake_model.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <numeric>
#include <stdexcept>

namespace wind_farm {

namespace {

/// Linear interpolation in a table (`xs` increasing), clamped to its ends.
double interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x) {
    if (xs.empty()) return 0;
    if (x <= xs.front()) return ys.front();
    if (x >= xs.back()) return ys.back();
    const auto hi = static_cast<std::size_t>(std::upper_bound(xs.begin(), xs.end(), x) - xs.begin());
    const std::size_t lo = hi - 1;
    const double t = (x - xs[lo]) / (xs[hi] - xs[lo]);
    return ys[lo] + t * (ys[hi] - ys[lo]);
}

/// sin and cos of an angle in degrees, exact at multiples of 90 degrees: a wind exactly
/// across a row must not wake it through a rounding error of 1e-16.
void sin_cos_deg(double deg, double& s, double& c) {
    const double q = std::fmod(deg, 360.0);
    const double a = q < 0 ? q + 360.0 : q;
    if (a == 0) {
        s = 0, c = 1;
    } else if (a == 90) {
        s = 1, c = 0;
    } else if (a == 180) {
        s = 0, c = -1;
    } else if (a == 270) {
        s = -1, c = 0;
    } else {
        const double r = a * std::numbers::pi / 180.0;
        s = std::sin(r);
        c = std::cos(r);
    }
}

/// Below this distance along the wind (metres), two turbines count as level: neither is in
/// the other's wake.
constexpr double level_m = 1e-6;

/// point_speed with the wind's direction vector already worked out (the flow field asks
/// for thousands of points per direction).
double point_speed_along(const farm& f, const farm_state& s, direction_vector d, double u0,
                         double x_m, double y_m) {
    const double radius = f.turbine.radius_m();
    double sum_sq = 0;
    for (std::size_t j = 0; j < f.turbines.size(); ++j) {
        const double dx = x_m - f.turbines[j].x_m;
        const double dy = y_m - f.turbines[j].y_m;
        const double along = dx * d.x + dy * d.y;
        if (along <= level_m) continue;
        const double across = std::abs(dx * d.y - dy * d.x);
        if (across >= radius + f.wake_decay * along) continue;  // outside the top-hat
        const double deficit = s.speed_ms[j] * jensen_deficit(s.thrust_coefficient[j],
                                                              f.wake_decay, radius, along);
        sum_sq += deficit * deficit;
    }
    return std::max(0.0, u0 - std::sqrt(sum_sq));
}

}  // namespace

double turbine_model::power_at(double u) const {
    if (u < cut_in_ms || u > cut_out_ms) return 0;
    return interpolate(speed_ms, power_kw, u);
}

double turbine_model::ct_at(double u) const {
    if (u < cut_in_ms || u > cut_out_ms) return 0;
    return interpolate(speed_ms, thrust_coefficient, u);
}

double turbine_model::rated_power_kw() const {
    return power_kw.empty() ? 0 : *std::max_element(power_kw.begin(), power_kw.end());
}

turbine_model generic_2mw() {
    turbine_model t;
    t.name = "generic 2 MW, 90 m rotor, 80 m hub";
    t.rotor_diameter_m = 90;
    t.hub_height_m = 80;
    t.cut_in_ms = 3;
    t.cut_out_ms = 25;
    for (int u = 3; u <= 25; ++u) t.speed_ms.push_back(u);
    // Power (kW) at 3..25 m/s: a power coefficient of about 0.43 from 7 to 10 m/s (air
    // density 1.225 kg/m^3), flattening into rated power at 12 m/s.
    t.power_kw = {25,   90,   190,  340,  570,  860,  1240, 1640, 1930, 2000, 2000, 2000,
                  2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000};
    // Thrust coefficient at 3..25 m/s: near the ideal rotor's 8/9 below rated, then the
    // blades pitch out and the thrust falls with the power coefficient, about as 1/u^3.
    t.thrust_coefficient = {0.82, 0.81, 0.80, 0.80, 0.79, 0.78, 0.76, 0.72,
                            0.64, 0.50, 0.39, 0.31, 0.26, 0.21, 0.18, 0.15,
                            0.13, 0.11, 0.09, 0.08, 0.07, 0.06, 0.05};
    return t;
}

farm grid_farm(const turbine_model& t, int rows, int cols, double spacing_x_d,
               double spacing_y_d, double wake_decay) {
    if (rows < 1 || cols < 1) throw std::invalid_argument("a farm needs at least one turbine");
    if (!(spacing_x_d >= 1) || !(spacing_y_d >= 1)) {
        throw std::invalid_argument("turbines must stand at least one rotor diameter apart");
    }
    farm f;
    f.turbine = t;
    f.wake_decay = wake_decay;
    for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
            f.turbines.push_back({c * spacing_x_d * t.rotor_diameter_m,
                                  r * spacing_y_d * t.rotor_diameter_m});
        }
    }
    return f;
}

direction_vector downwind(double direction_deg) {
    double s = 0, c = 0;
    sin_cos_deg(direction_deg, s, c);
    // From the north (0) the wind blows towards the south: (0, -1).
    return {-s, -c};
}

double jensen_deficit(double ct, double wake_decay, double rotor_radius_m, double downstream_m) {
    if (downstream_m <= 0 || ct <= 0) return 0;
    const double expansion = 1 + wake_decay * downstream_m / rotor_radius_m;
    return (1 - std::sqrt(1 - std::min(ct, 1.0))) / (expansion * expansion);
}

double overlap_fraction(double rotor_radius_m, double wake_radius_m, double centre_distance_m) {
    const double r = rotor_radius_m, w = wake_radius_m, d = std::abs(centre_distance_m);
    if (r <= 0 || w <= 0 || d >= r + w) return 0;
    if (d <= std::abs(w - r)) return w >= r ? 1.0 : (w * w) / (r * r);  // one inside the other
    // The lens where the circles intersect: two circular segments.
    const double alpha = std::acos(std::clamp((d * d + r * r - w * w) / (2 * d * r), -1.0, 1.0));
    const double beta = std::acos(std::clamp((d * d + w * w - r * r) / (2 * d * w), -1.0, 1.0));
    const double k = (-d + r + w) * (d + r - w) * (d - r + w) * (d + r + w);
    const double lens = r * r * alpha + w * w * beta - 0.5 * std::sqrt(std::max(0.0, k));
    return std::clamp(lens / (std::numbers::pi * r * r), 0.0, 1.0);
}

farm_state solve(const farm& f, double direction_deg, double free_stream_ms) {
    const std::size_t n = f.turbines.size();
    const direction_vector d = downwind(direction_deg);
    const double radius = f.turbine.radius_m();

    // Upstream first: a turbine's wake depends on its own inflow, so every turbine that
    // can shade turbine i is solved before i.
    std::vector<double> along(n);
    for (std::size_t i = 0; i < n; ++i) along[i] = f.turbines[i].x_m * d.x + f.turbines[i].y_m * d.y;
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return along[a] < along[b]; });

    farm_state s;
    s.speed_ms.assign(n, free_stream_ms);
    s.power_kw.assign(n, 0);
    s.thrust_coefficient.assign(n, 0);
    for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = order[k];
        double sum_sq = 0;
        for (std::size_t m = 0; m < k; ++m) {
            const std::size_t j = order[m];
            const double x = along[i] - along[j];
            if (x <= level_m || s.thrust_coefficient[j] <= 0) continue;
            const double dx = f.turbines[i].x_m - f.turbines[j].x_m;
            const double dy = f.turbines[i].y_m - f.turbines[j].y_m;
            const double across = std::abs(dx * d.y - dy * d.x);
            const double overlap =
                overlap_fraction(radius, radius + f.wake_decay * x, across);
            if (overlap <= 0) continue;
            const double deficit = s.speed_ms[j] *
                                   jensen_deficit(s.thrust_coefficient[j], f.wake_decay, radius, x) *
                                   overlap;
            sum_sq += deficit * deficit;
        }
        s.speed_ms[i] = std::max(0.0, free_stream_ms - std::sqrt(sum_sq));
        s.power_kw[i] = f.turbine.power_at(s.speed_ms[i]);
        s.thrust_coefficient[i] = f.turbine.ct_at(s.speed_ms[i]);
    }
    return s;
}

double point_speed(const farm& f, const farm_state& s, double direction_deg,
                   double free_stream_ms, double x_m, double y_m) {
    return point_speed_along(f, s, downwind(direction_deg), free_stream_ms, x_m, y_m);
}

std::vector<double> standard_speeds() {
    std::vector<double> v;
    for (int u = 3; u <= 25; ++u) v.push_back(u);
    return v;
}

flow_field flow_grid(const farm& f, int cells) {
    if (cells < 1) throw std::invalid_argument("a flow field needs at least one cell");
    if (f.turbines.empty()) throw std::invalid_argument("a farm needs at least one turbine");
    double x_lo = f.turbines[0].x_m, x_hi = x_lo, y_lo = f.turbines[0].y_m, y_hi = y_lo;
    for (const auto& p : f.turbines) {
        x_lo = std::min(x_lo, p.x_m), x_hi = std::max(x_hi, p.x_m);
        y_lo = std::min(y_lo, p.y_m), y_hi = std::max(y_hi, p.y_m);
    }
    const double margin = 5 * f.turbine.rotor_diameter_m;
    const double width = x_hi - x_lo + 2 * margin, height = y_hi - y_lo + 2 * margin;
    flow_field g;
    g.cell_m = std::max(width, height) / cells;
    g.x0_m = x_lo - margin;
    g.y0_m = y_lo - margin;
    g.nx = static_cast<int>(std::lround(width / g.cell_m)) + 1;
    g.ny = static_cast<int>(std::lround(height / g.cell_m)) + 1;
    return g;
}

direction_result compute_direction(const farm& f, const sweep_settings& s, int direction_deg) {
    direction_result r;
    r.direction_deg = direction_deg;
    r.speeds_ms = s.speeds_ms;
    const std::size_t n = f.turbines.size();
    r.turbine_speed_ms.reserve(n * s.speeds_ms.size());
    r.turbine_power_kw.reserve(n * s.speeds_ms.size());
    r.turbine_ct.reserve(n * s.speeds_ms.size());
    for (double u : s.speeds_ms) {
        const farm_state st = solve(f, direction_deg, u);
        r.turbine_speed_ms.insert(r.turbine_speed_ms.end(), st.speed_ms.begin(), st.speed_ms.end());
        r.turbine_power_kw.insert(r.turbine_power_kw.end(), st.power_kw.begin(), st.power_kw.end());
        r.turbine_ct.insert(r.turbine_ct.end(), st.thrust_coefficient.begin(),
                            st.thrust_coefficient.end());
    }

    const farm_state ref = solve(f, direction_deg, s.flow_speed_ms);
    r.flow_speed_ms = s.flow_speed_ms;
    r.flow_farm_power_kw = std::accumulate(ref.power_kw.begin(), ref.power_kw.end(), 0.0);
    if (s.flow_cells > 0) {
        r.flow = flow_grid(f, s.flow_cells);
        const direction_vector d = downwind(direction_deg);
        r.flow.speed_ms.resize(static_cast<std::size_t>(r.flow.nx) * static_cast<std::size_t>(r.flow.ny));
        for (int row = 0; row < r.flow.ny; ++row) {
            const double y = r.flow.y0_m + row * r.flow.cell_m;
            for (int col = 0; col < r.flow.nx; ++col) {
                const double x = r.flow.x0_m + col * r.flow.cell_m;
                r.flow.speed_ms[static_cast<std::size_t>(row) * static_cast<std::size_t>(r.flow.nx) +
                                static_cast<std::size_t>(col)] =
                    static_cast<float>(point_speed_along(f, ref, d, s.flow_speed_ms, x, y));
            }
        }
    }
    return r;
}

}  // namespace wind_farm
