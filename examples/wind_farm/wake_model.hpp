// The Jensen (Park) wake model of a wind farm, and the task a process pool runs with it:
// every turbine's inflow, power and thrust for one wind direction and a range of speeds,
// plus the hub-height flow field. Pure computation: no files, no threads, no procpool, so
// tests can check it against hand-computed numbers.
//
// The model (N. O. Jensen 1983; I. Katić, J. Højstrup, N. O. Jensen 1986):
// - behind a rotor of radius R with thrust coefficient Ct, the wake is a top-hat whose
//   radius grows linearly, R_w(x) = R + k x, with the wake decay constant k (0.075 is the
//   usual onshore value, 0.04-0.05 offshore, where the air is less turbulent);
// - the velocity deficit in it, relative to the rotor's own inflow u_j, is
//   a(x) = (1 - sqrt(1 - Ct)) / (1 + k x / R)^2;
// - a rotor partly inside a wake sees the deficit times the fraction of its area inside;
// - several wakes add as the root-sum-of-squares of their velocity deficits:
//   u_i = U0 - sqrt(sum_j (u_j a_j(x_ij) overlap_ij)^2).
// Every turbine has the same hub height, so wakes and rotors are compared in the
// horizontal plane at hub height.
#pragma once

#include <string>
#include <vector>

namespace wind_farm {

/// A wind turbine: its rotor, hub height, and power and thrust curves tabulated against
/// the wind speed at hub height (linear interpolation between the points). Outside
/// [cut_in_ms, cut_out_ms] the turbine is stopped: no power and, the model assumes, no
/// wake.
struct turbine_model {
    std::string name;                        ///< For reports.
    double rotor_diameter_m = 0;             ///< D.
    double hub_height_m = 0;                 ///< The height the wind speeds refer to.
    double cut_in_ms = 0;                    ///< Lowest speed it runs at.
    double cut_out_ms = 0;                   ///< Highest speed it runs at.
    std::vector<double> speed_ms;            ///< Table speeds, increasing.
    std::vector<double> power_kw;            ///< Electrical power at each table speed.
    std::vector<double> thrust_coefficient;  ///< Ct at each table speed.

    /// R, half the rotor diameter.
    double radius_m() const noexcept { return rotor_diameter_m / 2; }
    /// Power at hub-height speed `u` (kW): the table interpolated, 0 when stopped.
    double power_at(double u) const;
    /// Thrust coefficient at hub-height speed `u`: the table interpolated, 0 when stopped.
    double ct_at(double u) const;
    /// The highest power in the table (kW).
    double rated_power_kw() const;

    /// The cereal convention, so that a turbine can be sent to a worker process.
    template <class Archive>
    void serialize(Archive& ar) {
        ar(name, rotor_diameter_m, hub_height_m, cut_in_ms, cut_out_ms, speed_ms, power_kw,
           thrust_coefficient);
    }
};

/// A generic 2 MW onshore turbine of the 90 m rotor class (80 m hub): cut-in 3 m/s,
/// rated 2000 kW from 12 m/s, cut-out 25 m/s, and the thrust curve of a pitch-regulated
/// rotor (Ct about 0.8 below rated, falling roughly as 1/u^3 above it). Representative
/// numbers for this class of machine, not one manufacturer's certified curve.
turbine_model generic_2mw();

/// A point on the site's ground plan, in metres: x towards east, y towards north.
struct site_point {
    double x_m = 0;  ///< Metres east of the origin.
    double y_m = 0;  ///< Metres north of the origin.
};

/// A wind farm: one turbine model at several positions, and the wake decay constant.
struct farm {
    turbine_model turbine;             ///< Every turbine is this model.
    std::vector<site_point> turbines;  ///< Where each turbine stands; its index is its id.
    double wake_decay = 0.075;         ///< k of the Jensen model.

    /// The cereal convention, so that a farm can be sent to a worker process.
    template <class Archive>
    void serialize(Archive& ar) {
        ar(turbine, turbines, wake_decay);
    }
};

/// A farm of `rows` x `cols` turbines on a rectangular grid, columns `spacing_x_d` rotor
/// diameters apart towards east and rows `spacing_y_d` apart towards north, numbered row
/// by row from the south-west corner (turbine 0 at the origin). Throws
/// std::invalid_argument for an empty grid or a spacing below one diameter.
farm grid_farm(const turbine_model& t, int rows, int cols, double spacing_x_d,
               double spacing_y_d, double wake_decay);

/// A direction on the ground plan, as a unit vector.
struct direction_vector {
    double x = 0;  ///< East component.
    double y = 0;  ///< North component.
};

/// The unit vector the wind blows towards when it comes from `direction_deg`
/// (meteorological convention: 0 = from north, 90 = from east, 270 = from west).
direction_vector downwind(double direction_deg);

/// The Jensen velocity deficit a(x), as a fraction of the upstream rotor's inflow, at
/// `downstream_m` behind a rotor of radius `rotor_radius_m` working at thrust coefficient
/// `ct`: (1 - sqrt(1 - ct)) / (1 + k x / R)^2. Zero at or in front of the rotor (x <= 0)
/// and for ct <= 0.
double jensen_deficit(double ct, double wake_decay, double rotor_radius_m, double downstream_m);

/// The fraction (0..1) of a rotor disc of radius `rotor_radius_m` that lies inside a wake
/// of radius `wake_radius_m` whose centre is `centre_distance_m` away from the rotor's
/// centre: the area of the two circles' intersection over the rotor's area.
double overlap_fraction(double rotor_radius_m, double wake_radius_m, double centre_distance_m);

/// Every turbine's state for one free-stream wind (per turbine, in turbine order).
struct farm_state {
    std::vector<double> speed_ms;            ///< Effective hub-height inflow.
    std::vector<double> power_kw;            ///< Power at that inflow.
    std::vector<double> thrust_coefficient;  ///< Ct at that inflow (0 when stopped).
};

/// Solves the farm for a free-stream wind of `free_stream_ms` from `direction_deg`.
/// Turbines are visited from upstream to downstream, so each one's wake is computed with
/// its own (possibly waked) inflow and thrust. Turbines level with each other across the
/// wind do not wake each other.
farm_state solve(const farm& f, double direction_deg, double free_stream_ms);

/// The hub-height wind speed at point (`x_m`, `y_m`) of a solved farm: the free stream
/// less every wake the point lies in (top-hat wakes, root-sum-of-squares), never below 0.
double point_speed(const farm& f, const farm_state& s, double direction_deg,
                   double free_stream_ms, double x_m, double y_m);

/// What one sweep task computes besides the directions themselves.
struct sweep_settings {
    std::vector<double> speeds_ms;  ///< Free-stream speeds of the sweep.
    double flow_speed_ms = 8;       ///< Free-stream speed of the flow field and power rose.
    int flow_cells = 0;  ///< Flow-field cells along the site's longer side; 0: none.

    /// The cereal convention, so that the settings can be sent to a worker process.
    template <class Archive>
    void serialize(Archive& ar) {
        ar(speeds_ms, flow_speed_ms, flow_cells);
    }
};

/// The speeds 3, 4, ..., 25 m/s: the usual 1 m/s bins of a power curve.
std::vector<double> standard_speeds();

/// A hub-height wind-speed field on a regular grid of points, row by row from the south.
struct flow_field {
    double x0_m = 0;               ///< x of the first column.
    double y0_m = 0;               ///< y of the first row.
    double cell_m = 0;             ///< Distance between neighbouring points.
    int nx = 0;                    ///< Points per row.
    int ny = 0;                    ///< Rows.
    std::vector<float> speed_ms;   ///< nx * ny speeds; [row * nx + column].

    /// The cereal convention, so that a field can come back from a worker process.
    template <class Archive>
    void serialize(Archive& ar) {
        ar(x0_m, y0_m, cell_m, nx, ny, speed_ms);
    }
};

/// The grid (no speeds yet) a flow field of `cells` cells along the longer side covers:
/// the farm's bounding box and five rotor diameters around it, the same for every
/// direction so that fields can be compared.
flow_field flow_grid(const farm& f, int cells);

/// One sweep task's result: a wind direction, every turbine at every speed, and the flow
/// field at the settings' flow speed.
struct direction_result {
    int direction_deg = 0;                  ///< The wind comes from here.
    std::vector<double> speeds_ms;          ///< The free-stream speeds, as in the settings.
    std::vector<double> turbine_speed_ms;   ///< [speed index * turbines + turbine].
    std::vector<double> turbine_power_kw;   ///< [speed index * turbines + turbine].
    std::vector<double> turbine_ct;         ///< [speed index * turbines + turbine].
    double flow_speed_ms = 0;               ///< Free-stream speed of the flow field.
    double flow_farm_power_kw = 0;          ///< Farm power at that speed: the power rose.
    flow_field flow;                        ///< Empty (nx = ny = 0) when not asked for.

    /// The cereal convention, so that a result can come back from a worker process.
    template <class Archive>
    void serialize(Archive& ar) {
        ar(direction_deg, speeds_ms, turbine_speed_ms, turbine_power_kw, turbine_ct,
           flow_speed_ms, flow_farm_power_kw, flow);
    }
};

/// The sweep task: solves `f` for a wind from `direction_deg` at every speed of `s`, and
/// computes the flow field if `s.flow_cells` > 0. A free function of serializable
/// arguments, so a process pool can run it.
direction_result compute_direction(const farm& f, const sweep_settings& s, int direction_deg);

}  // namespace wind_farm
