// Annual energy production (AEP) of a swept farm: a wind rose gives the probability of
// each (direction, speed) case, the sweep gives each turbine's power in it. Pure
// computation, like the wake model.
#pragma once

#include <string>
#include <vector>

#include "wake_model.hpp"

namespace wind_farm {

/// One direction sector of a wind rose: how often the wind comes from it, and the
/// Weibull distribution of its hub-height speeds, P(U < u) = 1 - exp(-(u / A)^k).
struct rose_sector {
    double frequency = 0;     ///< Share of the time the wind comes from this sector.
    double weibull_a_ms = 0;  ///< Scale A (m/s).
    double weibull_k = 0;     ///< Shape k.
};

/// A wind rose: `sectors.size()` equal sectors, sector i centred on i * 360 / n degrees
/// (sector 0 on north). Frequencies are normalised to sum to 1 where used.
struct wind_rose {
    std::string name;                  ///< For reports.
    std::vector<rose_sector> sectors;  ///< Clockwise from north.
};

/// The example's site: 12 sectors of 30 degrees at hub height (80 m), prevailing
/// south-westerly to westerly winds with a mean speed of about 8.3 m/s, as on a good
/// inland site in north-western Europe. An illustration, not a measured site.
wind_rose sample_wind_rose();

/// P(U < u) for a Weibull distribution of scale `a` and shape `k` (0 for u <= 0).
double weibull_cdf(double a, double k, double u);

/// P(lo <= U < hi) for a Weibull distribution of scale `a` and shape `k`.
double weibull_probability(double a, double k, double lo, double hi);

/// The probability of each swept direction: direction i (i * `step_deg`, for i below
/// 360 / `step_deg`) stands for the bin [i * step - step / 2, i * step + step / 2).
/// `step_deg` must divide 360 (std::invalid_argument otherwise).
std::vector<double> direction_probabilities(const wind_rose& rose, int step_deg);

/// The probability of each (direction, speed) case, [direction index * speeds + speed
/// index]. Directions as in `direction_probabilities`; speed j stands for the bin between
/// the midpoints to its neighbours (the first and last bins reach half a spacing
/// outwards: 3..25 m/s in steps of 1 covers [2.5, 25.5)). A direction bin that spans
/// several sectors mixes their Weibull distributions by the share of the bin in each.
std::vector<double> case_probabilities(const wind_rose& rose, int step_deg,
                                       const std::vector<double>& speeds_ms);

/// What the energy yield needs from one sweep task: the power of every turbine at every
/// speed, and the farm's power at the flow speed (for the power rose).
struct direction_power {
    int direction_deg = 0;                 ///< The wind comes from here.
    std::vector<double> turbine_power_kw;  ///< [speed index * turbines + turbine].
    double flow_farm_power_kw = 0;         ///< Farm power at the sweep's flow speed.
};

/// The part of `r` the energy yield needs (the flow field and the speeds are left out).
direction_power power_of(const direction_result& r);

/// Hours in a year, for AEP (the usual 365 days).
inline constexpr double hours_per_year = 8760;

/// The annual energy yield of a swept farm, with and without wakes.
struct energy_yield {
    std::vector<double> turbine_gwh;        ///< Each turbine's AEP with wakes.
    double free_turbine_gwh = 0;            ///< One turbine's AEP alone (no wakes).
    std::vector<double> turbine_wake_loss;  ///< 1 - turbine_gwh / free_turbine_gwh.
    double farm_gwh = 0;                    ///< The farm's AEP with wakes.
    double free_farm_gwh = 0;               ///< Turbines x free_turbine_gwh.
    double farm_wake_loss = 0;              ///< 1 - farm_gwh / free_farm_gwh.
    double capacity_factor = 0;             ///< farm_gwh over rated power all year.
    std::vector<double> direction_frequency;      ///< Per swept direction.
    std::vector<double> direction_mean_power_kw;  ///< Farm power given that direction.
};

/// The AEP of `f` for the wind `rose`, from the sweep `cases`: one per direction 0,
/// `step_deg`, 2 * `step_deg`, ... below 360, in that order, each computed at
/// `speeds_ms`. Throws std::invalid_argument if the cases do not match.
energy_yield annual_energy(const farm& f, const wind_rose& rose, int step_deg,
                           const std::vector<double>& speeds_ms,
                           const std::vector<direction_power>& cases);

}  // namespace wind_farm
