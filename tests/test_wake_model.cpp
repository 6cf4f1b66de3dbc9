// The wind-farm example's Jensen wake model and energy yield (examples/wind_farm), checked
// against numbers worked out by hand, plus one sweep task sent through a process pool.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "energy.hpp"
#include "procpool/process_pool.hpp"
#include "wake_model.hpp"

namespace wf = wind_farm;

namespace {

/// A turbine with round numbers for hand computation: D = 100 m (R = 50 m), Ct = 0.8 at
/// every speed it runs at (3..25 m/s), power 100 kW per m/s above 2 m/s up to 1100 kW at
/// 13 m/s, then flat.
wf::turbine_model round_turbine() {
    wf::turbine_model t;
    t.name = "round";
    t.rotor_diameter_m = 100;
    t.hub_height_m = 100;
    t.cut_in_ms = 3;
    t.cut_out_ms = 25;
    t.speed_ms = {3, 13, 25};
    t.power_kw = {100, 1100, 1100};
    t.thrust_coefficient = {0.8, 0.8, 0.8};
    return t;
}

/// The round turbine at the given points, k = 0.075.
wf::farm farm_at(std::vector<wf::site_point> points) {
    wf::farm f;
    f.turbine = round_turbine();
    f.turbines = std::move(points);
    f.wake_decay = 0.075;
    return f;
}

constexpr double from_west = 270;  // blows towards east (+x)

// Hand computation shared by the in-line tests (Ct = 0.8, k = 0.075, R = 50 m, U0 = 8):
//   1 - sqrt(1 - 0.8) = 1 - 0.4472136 = 0.5527864
//   5D = 500 m: 1 + k x / R = 1 + 0.075 * 500 / 50 = 1.75,  1.75^2 = 3.0625
//               a = 0.5527864 / 3.0625 = 0.1805017,  u = 8 * (1 - a) = 6.5559865 m/s
//   7D = 700 m: 1 + 0.075 * 700 / 50 = 2.05,  2.05^2 = 4.2025
//               a = 0.5527864 / 4.2025 = 0.1315375,  u = 8 * (1 - a) = 6.9476999 m/s
//   10D = 1000 m: 1 + 0.075 * 1000 / 50 = 2.5,  2.5^2 = 6.25,  a = 0.0884458
// The wake radius at 5D is 50 + 0.075 * 500 = 87.5 m > R, so a rotor straight behind is
// entirely inside it (overlap 1).
constexpr double a_5d = 0.180501683;
constexpr double u_5d = 6.555986535;
constexpr double a_7d = 0.131537514;
constexpr double u_7d = 6.947699884;

}  // namespace

TEST(WakeModel, JensenDeficitMatchesTheHandComputation) {
    EXPECT_NEAR(wf::jensen_deficit(0.8, 0.075, 50, 500), a_5d, 1e-9);
    EXPECT_NEAR(wf::jensen_deficit(0.8, 0.075, 50, 700), a_7d, 1e-9);
    EXPECT_NEAR(wf::jensen_deficit(0.8, 0.075, 50, 1000), 0.088445825, 1e-9);
    // Just behind the rotor: the ideal far-wake deficit 1 - sqrt(1 - Ct).
    EXPECT_NEAR(wf::jensen_deficit(0.8, 0.075, 50, 1e-9), 1 - std::sqrt(0.2), 1e-9);
    EXPECT_EQ(wf::jensen_deficit(0.8, 0.075, 50, 0), 0);     // not behind: no wake
    EXPECT_EQ(wf::jensen_deficit(0.8, 0.075, 50, -500), 0);  // in front
    EXPECT_EQ(wf::jensen_deficit(0.0, 0.075, 50, 500), 0);   // a stopped rotor
}

TEST(WakeModel, DownwindIsWhereTheWindBlowsTo) {
    const auto w = wf::downwind(from_west);
    EXPECT_EQ(w.x, 1.0);
    EXPECT_EQ(w.y, 0.0);
    const auto n = wf::downwind(0);  // from the north, towards the south
    EXPECT_EQ(n.x, 0.0);
    EXPECT_EQ(n.y, -1.0);
    const auto ne = wf::downwind(45);  // from the north-east, towards the south-west
    EXPECT_NEAR(ne.x, -std::sqrt(0.5), 1e-15);
    EXPECT_NEAR(ne.y, -std::sqrt(0.5), 1e-15);
}

TEST(WakeModel, TwoTurbinesInLineAtFiveDiameters) {
    const auto f = farm_at({{0, 0}, {500, 0}});
    const auto s = wf::solve(f, from_west, 8);
    EXPECT_DOUBLE_EQ(s.speed_ms[0], 8);  // upstream: the free stream
    EXPECT_NEAR(s.speed_ms[1], u_5d, 1e-8);
    EXPECT_NEAR(s.power_kw[0], 600, 1e-9);  // 100 * (8 - 2)
    EXPECT_NEAR(s.power_kw[1], 100 * (u_5d - 2), 1e-6);
    EXPECT_NEAR(s.thrust_coefficient[1], 0.8, 1e-12);

    // From the east the roles swap.
    const auto e = wf::solve(f, 90, 8);
    EXPECT_NEAR(e.speed_ms[0], u_5d, 1e-8);
    EXPECT_DOUBLE_EQ(e.speed_ms[1], 8);
}

TEST(WakeModel, TwoTurbinesInLineAtSevenDiameters) {
    const auto s = wf::solve(farm_at({{0, 0}, {700, 0}}), from_west, 8);
    EXPECT_DOUBLE_EQ(s.speed_ms[0], 8);
    EXPECT_NEAR(s.speed_ms[1], u_7d, 1e-8);
}

TEST(WakeModel, ThreeInLineAddDeficitsAsRootSumOfSquares) {
    // Turbine 2 at 10D sees turbine 0's wake (inflow 8 m/s, x = 1000 m) and turbine 1's
    // (inflow u_5d, x = 500 m), each deficit relative to that turbine's own inflow:
    //   from 0: 8 * 0.0884458 = 0.7075666
    //   from 1: 6.5559865 * 0.1805017 = 1.1833666
    //   u = 8 - sqrt(0.7075666^2 + 1.1833666^2) = 8 - 1.3787701 = 6.6212299 m/s
    // (a plain sum of the deficits would give 6.109; a sum of squares is milder.)
    const auto s = wf::solve(farm_at({{0, 0}, {500, 0}, {1000, 0}}), from_west, 8);
    EXPECT_NEAR(s.speed_ms[1], u_5d, 1e-8);
    EXPECT_NEAR(s.speed_ms[2], 6.621229892, 1e-8);
}

TEST(WakeModel, WindAcrossTheRowMakesNoWake) {
    const auto f = farm_at({{0, 0}, {500, 0}});  // a row from west to east
    for (double from : {0.0, 180.0, 360.0}) {
        const auto s = wf::solve(f, from, 8);
        EXPECT_DOUBLE_EQ(s.speed_ms[0], 8) << "from " << from;
        EXPECT_DOUBLE_EQ(s.speed_ms[1], 8) << "from " << from;
    }
    // The same for a row from south to north and a wind from the east.
    const auto g = wf::solve(farm_at({{0, 0}, {0, 300}}), 90, 10);
    EXPECT_DOUBLE_EQ(g.speed_ms[0], 10);
    EXPECT_DOUBLE_EQ(g.speed_ms[1], 10);
}

TEST(WakeModel, StoppedTurbinesMakeNoWake) {
    const auto f = farm_at({{0, 0}, {500, 0}});
    const auto below = wf::solve(f, from_west, 2.5);  // below cut-in
    EXPECT_DOUBLE_EQ(below.speed_ms[1], 2.5);
    EXPECT_EQ(below.power_kw[0], 0);
    const auto above = wf::solve(f, from_west, 26);  // above cut-out
    EXPECT_DOUBLE_EQ(above.speed_ms[1], 26);
    EXPECT_EQ(above.power_kw[1], 0);
}

TEST(WakeModel, OverlapFractionOfCircles) {
    EXPECT_DOUBLE_EQ(wf::overlap_fraction(50, 87.5, 0), 1);     // concentric
    EXPECT_DOUBLE_EQ(wf::overlap_fraction(50, 87.5, 37.5), 1);  // touching inside
    EXPECT_EQ(wf::overlap_fraction(50, 87.5, 137.5), 0);        // touching outside
    EXPECT_EQ(wf::overlap_fraction(50, 87.5, 500), 0);
    // A wake narrower than the rotor, inside it: (30 / 50)^2 of the rotor.
    EXPECT_NEAR(wf::overlap_fraction(50, 30, 10), 0.36, 1e-12);
    // Two circles of radius r whose centres are r apart: the lens is two segments of
    // 120 degrees, area r^2 (2 pi / 3 - sqrt(3) / 2), i.e. 0.3910022 of a circle.
    EXPECT_NEAR(wf::overlap_fraction(50, 50, 50), 0.391002219, 1e-9);
    EXPECT_NEAR(wf::overlap_fraction(1, 1, 1), (2 * std::numbers::pi / 3 - std::sqrt(3.0) / 2) /
                                                   std::numbers::pi,
                1e-12);
    // Monotonic: moving the rotor out of the wake never uncovers more of it.
    double last = 1;
    for (double d = 0; d <= 140; d += 0.5) {
        const double now = wf::overlap_fraction(50, 87.5, d);
        EXPECT_LE(now, last + 1e-12) << "d = " << d;
        EXPECT_GE(now, 0);
        last = now;
    }
}

TEST(WakeModel, PartialOverlapRecoversMonotonicallyWithLateralOffset) {
    // Turbine 1 at 7D downstream, moved sideways: the wake radius there is
    // 50 + 0.075 * 700 = 102.5 m, so the rotor is fully waked up to 102.5 - 50 = 52.5 m
    // off the axis, partly waked up to 102.5 + 50 = 152.5 m, and free beyond.
    double last = 0;
    for (double off = 0; off <= 200; off += 2.5) {
        const auto s = wf::solve(farm_at({{0, 0}, {700, off}}), from_west, 8);
        const double u = s.speed_ms[1];
        EXPECT_GE(u, last - 1e-12) << "offset " << off;
        if (off <= 52.5) {
            EXPECT_NEAR(u, u_7d, 1e-8) << "offset " << off;
        }
        if (off > 60 && off < 145) {
            EXPECT_GT(u, u_7d + 1e-3) << "offset " << off;
            EXPECT_LT(u, 8 - 1e-3) << "offset " << off;
        }
        if (off >= 152.5) {
            EXPECT_DOUBLE_EQ(u, 8) << "offset " << off;
        }
        last = u;
    }
}

TEST(WakeModel, PointSpeedIsATopHat) {
    const auto f = farm_at({{0, 0}});
    const auto s = wf::solve(f, from_west, 8);
    EXPECT_NEAR(wf::point_speed(f, s, from_west, 8, 500, 0), u_5d, 1e-8);
    EXPECT_NEAR(wf::point_speed(f, s, from_west, 8, 500, 87), u_5d, 1e-8);  // inside 87.5 m
    EXPECT_DOUBLE_EQ(wf::point_speed(f, s, from_west, 8, 500, 88), 8);      // outside
    EXPECT_DOUBLE_EQ(wf::point_speed(f, s, from_west, 8, -500, 0), 8);      // upstream
}

TEST(WakeModel, Generic2MwCurves) {
    const auto t = wf::generic_2mw();
    EXPECT_EQ(t.power_at(2.99), 0);  // below cut-in
    EXPECT_DOUBLE_EQ(t.power_at(3), 25);
    EXPECT_DOUBLE_EQ(t.power_at(7.5), (570.0 + 860.0) / 2);  // halfway between 7 and 8 m/s
    EXPECT_DOUBLE_EQ(t.power_at(12), 2000);
    EXPECT_DOUBLE_EQ(t.power_at(25), 2000);
    EXPECT_EQ(t.power_at(25.01), 0);  // cut out
    EXPECT_DOUBLE_EQ(t.rated_power_kw(), 2000);
    EXPECT_NEAR(t.ct_at(7.5), 0.785, 1e-12);
    EXPECT_EQ(t.ct_at(30), 0);
    double last = 1;
    for (double u = 3; u <= 25; u += 0.25) {  // thrust never rises with the wind speed
        EXPECT_LE(t.ct_at(u), last) << u;
        last = t.ct_at(u);
    }
}

TEST(WakeModel, GridFarmNumbersRowByRowFromTheSouthWest) {
    const auto f = wf::grid_farm(wf::generic_2mw(), 2, 3, 7, 5, 0.075);
    ASSERT_EQ(f.turbines.size(), 6u);
    EXPECT_DOUBLE_EQ(f.turbines[4].x_m, 630);  // row 1, column 1: 7 x 90 m east
    EXPECT_DOUBLE_EQ(f.turbines[4].y_m, 450);  // 5 x 90 m north
    EXPECT_THROW(wf::grid_farm(wf::generic_2mw(), 0, 3, 7, 5, 0.075), std::invalid_argument);
    EXPECT_THROW(wf::grid_farm(wf::generic_2mw(), 2, 3, 0.5, 5, 0.075), std::invalid_argument);
}

TEST(Energy, WeibullProbabilities) {
    EXPECT_NEAR(wf::weibull_probability(8, 2, 0, 1e6), 1, 1e-15);
    // Rayleigh (k = 2): P(U < A) = 1 - exp(-1) = 0.6321206.
    EXPECT_NEAR(wf::weibull_cdf(8, 2, 8), 0.632120559, 1e-9);
    EXPECT_EQ(wf::weibull_cdf(8, 2, 0), 0);
    EXPECT_EQ(wf::weibull_probability(8, 2, 5, 5), 0);
}

TEST(Energy, DirectionProbabilitiesFollowTheRose) {
    const auto rose = wf::sample_wind_rose();
    // 30-degree steps match the rose's sectors one for one.
    const auto p30 = wf::direction_probabilities(rose, 30);
    ASSERT_EQ(p30.size(), 12u);
    for (std::size_t i = 0; i < 12; ++i) EXPECT_NEAR(p30[i], rose.sectors[i].frequency, 1e-12);
    // Any step that divides 360 spreads the same total over its bins. The 45-degree bin
    // centred on 45, [22.5, 67.5), covers 22.5 of sector 30's 30 degrees ([15, 45)) and
    // 22.5 of sector 60's ([45, 75)): 0.75 * 0.045 + 0.75 * 0.050 = 0.07125.
    for (int step : {1, 5, 45, 360}) {
        const auto p = wf::direction_probabilities(rose, step);
        double sum = 0;
        for (double x : p) sum += x;
        EXPECT_NEAR(sum, 1, 1e-12) << "step " << step;
    }
    EXPECT_NEAR(wf::direction_probabilities(rose, 45)[1], 0.07125, 1e-12);
    EXPECT_THROW(wf::direction_probabilities(rose, 7), std::invalid_argument);
}

TEST(Energy, SingleTurbineYieldMatchesTheHandSum) {
    // One sector (the whole circle), Weibull A = 8 m/s, k = 2, the round turbine:
    //   AEP = 8760 h * sum over u = 3..25 of P(u - 0.5 <= U < u + 0.5) * P(u)
    //       = 8760 h * 497.62087 kW (the mean power) = 4.3591588 GWh
    const wf::wind_rose rose{"one sector", {{1.0, 8, 2}}};
    const auto f = farm_at({{0, 0}});
    const wf::sweep_settings settings{wf::standard_speeds(), 8, 0};
    std::vector<wf::direction_power> cases;
    for (int d : {0, 90, 180, 270}) cases.push_back(wf::power_of(wf::compute_direction(f, settings, d)));
    const auto e = wf::annual_energy(f, rose, 90, settings.speeds_ms, cases);
    EXPECT_NEAR(e.free_turbine_gwh, 4.359158822, 1e-8);
    EXPECT_NEAR(e.farm_gwh, 4.359158822, 1e-8);
    EXPECT_NEAR(e.farm_wake_loss, 0, 1e-12);
    EXPECT_NEAR(e.capacity_factor, 4.359158822 / (1100 * 8760 / 1e6), 1e-9);
    // Cases that do not match the directions are refused.
    cases.pop_back();
    EXPECT_THROW(wf::annual_energy(f, rose, 90, settings.speeds_ms, cases), std::invalid_argument);
}

TEST(Energy, OnlyTheDownstreamTurbineLosesToWakes) {
    // Four sectors, all the wind from the west one ([225, 315)): turbine 0 (west) is never
    // in turbine 1's wake, turbine 1 often is in turbine 0's.
    const wf::wind_rose rose{"west only", {{0, 8, 2}, {0, 8, 2}, {0, 8, 2}, {1, 8, 2}}};
    const auto f = farm_at({{0, 0}, {500, 0}});
    const wf::sweep_settings settings{wf::standard_speeds(), 8, 0};
    std::vector<wf::direction_power> cases;
    for (int d = 0; d < 360; d += 5) cases.push_back(wf::power_of(wf::compute_direction(f, settings, d)));
    const auto e = wf::annual_energy(f, rose, 5, settings.speeds_ms, cases);
    EXPECT_NEAR(e.turbine_wake_loss[0], 0, 1e-12);
    EXPECT_GT(e.turbine_wake_loss[1], 0.05);
    EXPECT_LT(e.turbine_wake_loss[1], 0.5);
    EXPECT_NEAR(e.farm_gwh, e.turbine_gwh[0] + e.turbine_gwh[1], 1e-9);
    EXPECT_LT(e.farm_gwh, e.free_farm_gwh);
}

TEST(Sweep, FlowFieldShowsTheWakes) {
    const auto f = wf::grid_farm(wf::generic_2mw(), 1, 2, 7, 5, 0.075);  // 2 turbines W-E
    const wf::sweep_settings settings{wf::standard_speeds(), 8, 40};
    const auto r = wf::compute_direction(f, settings, 270);
    ASSERT_GT(r.flow.nx, 0);
    ASSERT_EQ(r.flow.speed_ms.size(), static_cast<std::size_t>(r.flow.nx * r.flow.ny));
    float lo = 100, hi = 0;
    for (float u : r.flow.speed_ms) lo = std::min(lo, u), hi = std::max(hi, u);
    EXPECT_FLOAT_EQ(hi, 8.0f);  // outside every wake
    EXPECT_LT(lo, 7.0f);        // behind a rotor
    EXPECT_EQ(r.turbine_power_kw.size(), f.turbines.size() * settings.speeds_ms.size());
    EXPECT_NEAR(r.flow_farm_power_kw, wf::solve(f, 270, 8).power_kw[0] + wf::solve(f, 270, 8).power_kw[1], 1e-9);
}

TEST(Sweep, TaskGivesTheSameResultInAWorkerProcess) {
    // The farm, the settings and the result cross the process boundary through their
    // serialize members; the numbers must come back bit for bit.
    const auto f = wf::grid_farm(wf::generic_2mw(), 3, 3, 7, 5, 0.075);
    const wf::sweep_settings settings{wf::standard_speeds(), 8, 16};
    procpool::process_pool pool({.workers = 1});
    const auto remote = pool.submit(wf::compute_direction, f, settings, 250).get();
    const auto local = wf::compute_direction(f, settings, 250);
    EXPECT_EQ(remote.direction_deg, 250);
    EXPECT_EQ(remote.turbine_speed_ms, local.turbine_speed_ms);
    EXPECT_EQ(remote.turbine_power_kw, local.turbine_power_kw);
    EXPECT_EQ(remote.turbine_ct, local.turbine_ct);
    EXPECT_EQ(remote.flow.speed_ms, local.flow.speed_ms);
    EXPECT_EQ(remote.flow.nx, local.flow.nx);
    EXPECT_EQ(remote.flow_farm_power_kw, local.flow_farm_power_kw);
}
