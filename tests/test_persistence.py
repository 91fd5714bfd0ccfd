"""The persistence study's pieces against hand calculations and lifelines (tolerance 1e-6 where stated)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import AalenJohansenFitter, CoxPHFitter, KaplanMeierFitter
from scipy import stats

from repurpose.config import cross_key_mistakes
from repurpose.persistence.clinics import (
    OTHER_CLINICS,
    between_clinic_variance,
    disclosed_clinics,
    funnel_limits,
    funnel_table,
    overdispersion,
    q_profile_ci,
    robust_overdispersion,
)
from repurpose.persistence.dispensing import agreement_rows, cohen_kappa, gap_rule_stops
from repurpose.persistence.newusers import new_users
from repurpose.persistence.study import agreement_table, reason_table, release_breakdowns
from repurpose.persistence.survival import (
    aalen_johansen,
    cif_at,
    expected_stops,
    fit_cox,
    fit_status,
    kaplan_meier,
    km_curve,
    released_curve,
)
from repurpose.release.policy import DisclosurePolicy
from repurpose.study_config import load_config

D = date


def _gap(dispensings: list[tuple[int, date, float]], users: list[tuple[int, date, date]], **kw) -> dict:
    frame = pl.DataFrame(dispensings, schema={"person_id": pl.Int64, "dispense_date": pl.Date, "ddd": pl.Float64},
                         orient="row").with_columns(pl.lit("L04AX07").alias("atc_code"))  # fmt: skip
    people = pl.DataFrame(users, schema={"person_id": pl.Int64, "start_date": pl.Date, "censor_date": pl.Date}, orient="row")
    settings = {"grace_days": 60, "ddd_per_day": {}, "lookback_days": 30} | kw
    out = gap_rule_stops(people, frame, **settings)
    return {row["person_id"]: row for row in out.iter_rows(named=True)}


def test_gap_rule_hand_calculations():
    start, end = D(2020, 1, 1), D(2023, 12, 31)
    result = _gap(
        [
            # 1: overlapping supplies carried forward: 100 DDD on day 0 and 100 on day 50 -> supply to day 200;
            #    the next dispensing on day 255 is 55 days later (within the grace): on to day 355, then none
            (1, D(2020, 1, 1), 100), (1, D(2020, 2, 20), 100), (1, D(2020, 9, 12), 100),
            # 2: a gap of 61 days after 30 days' supply: stops at the end of that supply (day 30)
            (2, D(2020, 1, 1), 30), (2, D(2020, 4, 1), 30),
            # 3: the last dispensing's supply plus the grace reaches past the end of follow-up: ongoing
            (3, D(2020, 1, 1), 90),
            # 4: exactly 60 days' gap is within the grace; the last supply ends day 120 and follow-up runs on
            (4, D(2020, 1, 1), 30), (4, D(2020, 3, 31), 30),
            # 6: a dispensing 20 days before the registry start counts (lookback), one 40 days before does not
            (6, D(2019, 11, 22), 500), (6, D(2019, 12, 12), 50),
        ],  # fmt: skip
        [(1, start, end), (2, start, end), (3, start, D(2020, 4, 15)), (4, start, end), (5, start, end), (6, start, end)],
    )
    assert result[1]["dispensing_stop_date"] == D(2020, 1, 1) + pd.Timedelta(days=355).to_pytimedelta()
    assert result[1]["dispensing_time_days"] == 355 and result[1]["n_dispensings"] == 3
    assert result[2]["dispensing_stopped"] == 1 and result[2]["dispensing_time_days"] == 30
    assert result[3]["dispensing_stopped"] == 0 and result[3]["dispensing_time_days"] == (D(2020, 4, 15) - start).days
    # person 4: day 0 +30 -> 30; next on day 90 (gap 60 = grace: not a stop) -> supply to 120; stop at 120
    assert result[4]["dispensing_stopped"] == 1 and result[4]["dispensing_time_days"] == 120
    assert result[5]["n_dispensings"] == 0 and result[5]["dispensing_stopped"] is None
    # person 6: only the dispensing of 12 Dec counts (50 days) -> supply ends 31 Jan, 30 days after time zero
    assert result[6]["n_dispensings"] == 1 and result[6]["dispensing_time_days"] == 30


def test_gap_rule_ddd_per_day_and_grace():
    start, end = D(2020, 1, 1), D(2023, 12, 31)
    dispensings = [(1, D(2020, 1, 1), 60), (1, D(2020, 3, 1), 60)]
    # 2 DDD a day: each 60 DDD lasts 30 days; the second comes on day 60, 30 days after the supply ran out
    loose = _gap(dispensings, [(1, start, end)], ddd_per_day={"L04AX07": 2.0})
    assert loose[1]["dispensing_time_days"] == 60 + 30
    strict = _gap(dispensings, [(1, start, end)], ddd_per_day={"L04AX07": 2.0}, grace_days=20)
    assert strict[1]["dispensing_time_days"] == 30


def test_cohen_kappa_by_hand():
    a = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    b = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    # observed 6/8; expected 0.5*0.5 + 0.5*0.5 = 0.5; kappa = (0.75 - 0.5) / 0.5
    assert cohen_kappa(a, b) == pytest.approx(0.5, abs=1e-12)


def _survival_data(seed: int = 3, n: int = 400, ties: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    times = rng.exponential(20, n)
    if ties:
        times = np.ceil(times)
    censor = rng.uniform(0, 40, n)
    cause = np.where(times <= censor, rng.integers(1, 4, n), 0)
    return np.minimum(times, censor), cause, rng.normal(size=(n, 2))


def test_kaplan_meier_equals_lifelines():
    months, cause, _ = _survival_data(ties=True)
    stopped = (cause > 0).astype(int)
    summary, fitter = kaplan_meier("all", months, stopped, [12, 24])
    reference = KaplanMeierFitter().fit(months, stopped)
    for h in (12, 24):
        expected = float(reference.survival_function_at_times(h).iloc[0])
        assert summary.persistence[h][0] == pytest.approx(expected, abs=1e-6)
        ci = reference.confidence_interval_survival_function_
        assert summary.persistence[h][1] == pytest.approx(float(ci[ci.index <= h].iloc[-1, 0]), abs=1e-6)
        assert summary.persistence[h][2] == pytest.approx(float(ci[ci.index <= h].iloc[-1, 1]), abs=1e-6)
    curve = km_curve(fitter, [0.0, 6.0, 12.0])
    assert curve["n_at_risk"].to_list() == [int(np.sum(months >= t)) for t in (0.0, 6.0, 12.0)]
    assert curve["persistence"][2] == pytest.approx(float(reference.survival_function_at_times(12.0).iloc[0]), abs=1e-6)
    assert summary.median_months == pytest.approx(float(reference.median_survival_time_), abs=1e-6)
    assert summary.n_stopped == stopped.sum()


def test_aalen_johansen_equals_lifelines_on_untied_times():
    months, cause, _ = _survival_data()
    times, cif = aalen_johansen(months, cause, [1, 2, 3])
    for k in (1, 2, 3):
        reference = AalenJohansenFitter(calculate_variance=False).fit(months, cause, event_of_interest=k)
        curve = reference.cumulative_density_
        for t in (5.0, 12.0, 24.0, 35.0):
            expected = float(curve[curve.index <= t].iloc[-1, 0])
            assert cif_at(times, cif, t)[k - 1] == pytest.approx(expected, abs=1e-6)


def test_aalen_johansen_sums_to_one_minus_kaplan_meier_with_ties():
    months, cause, _ = _survival_data(ties=True)
    times, cif = aalen_johansen(months, cause, [1, 2, 3])
    km = KaplanMeierFitter().fit(months, cause > 0)
    for t in (3.0, 10.0, 30.0):
        assert cif_at(times, cif, t).sum() == pytest.approx(1 - float(km.survival_function_at_times(t).iloc[0]), abs=1e-9)


def test_expected_stops_equal_lifelines_cumulative_hazard_and_sum_to_observed():
    months, cause, x = _survival_data(ties=True)
    stopped = (cause > 0).astype(int)
    design = pd.DataFrame({"a": x[:, 0], "b": x[:, 1]})
    fitter = fit_cox(design, months, stopped)
    reference = CoxPHFitter().fit(design.assign(t=months, e=stopped), "t", "e")
    assert np.allclose(fitter.params_.to_numpy(), reference.params_.to_numpy(), atol=1e-6)
    horizon = 24.0
    expected = expected_stops(fitter, design, months, horizon)
    observed = ((stopped == 1) & (months <= horizon)).sum()
    assert expected.sum() == pytest.approx(observed, abs=1e-6)
    clipped = np.minimum(months, horizon)
    for i in (0, 7, 123):
        cumulative = reference.predict_cumulative_hazard(design.iloc[[i]], times=[clipped[i]])
        assert expected[i] == pytest.approx(float(cumulative.iloc[0, 0]), abs=1e-6)


def test_funnel_limits_and_overdispersion_by_hand():
    observed = np.array([10.0, 30.0, 25.0, 60.0, 12.0, 45.0, 20.0, 33.0, 70.0, 8.0])
    expected = np.array([12.0, 25.0, 25.0, 40.0, 15.0, 50.0, 22.0, 30.0, 55.0, 10.0])
    z = (observed - expected) / np.sqrt(expected)
    low, high = np.quantile(z, [0.1, 0.9])
    phi = np.mean(np.clip(z, low, high) ** 2)
    tau2 = max(0.0, (10 * phi - 9) / (expected.sum() - (expected**2).sum() / expected.sum()))
    spread = overdispersion(observed, expected, "additive")
    assert spread.phi == pytest.approx(phi, rel=1e-12) and spread.tau2 == pytest.approx(tau2, rel=1e-12)
    assert tau2 > 0
    lower, upper = funnel_limits(np.array([40.0]), 0.998, spread)
    half = 3.090232306167813 * np.sqrt(1 / 40 + tau2)
    assert lower[0] == pytest.approx(1 - half, abs=1e-9) and upper[0] == pytest.approx(1 + half, abs=1e-9)
    multiplicative = overdispersion(observed, expected, "multiplicative")
    lower, upper = funnel_limits(np.array([40.0]), 0.95, multiplicative)
    assert upper[0] == pytest.approx(1 + 1.959963984540054 * np.sqrt(phi / 40), abs=1e-9)
    table, _ = funnel_table([f"c{i}" for i in range(10)], observed, expected, "none")
    flags = dict(zip(table["clinic_id"], table["funnel"], strict=True))
    # Poisson limits at E = 40: 1 +/- 3.09 / sqrt(40) = [0.511, 1.489]; O/E = 1.5 lies outside
    assert flags["c3"] == "outlier"
    # O/E = 70/55 = 1.27, z = 2.02: beyond the 95% limits only
    assert flags["c8"] == "alert" and flags["c0"] == "in control"


def test_q_profile_ci_by_definition():
    rng = np.random.default_rng(5)
    se = rng.uniform(0.1, 0.3, 30)
    y = rng.normal(0, np.sqrt(se**2 + 0.09))
    lower, upper = q_profile_ci(y, se)

    def q(t):
        w = 1 / (se**2 + t)
        return float(np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2))

    assert q(upper) == pytest.approx(stats.chi2.ppf(0.025, 29), abs=1e-6)
    assert lower == 0.0 or q(lower) == pytest.approx(stats.chi2.ppf(0.975, 29), abs=1e-6)
    assert lower < 0.09 < upper


def test_small_clinics_merge_so_no_small_count_is_recoverable():
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    # two small clinics of 1 and 2 patients: together 3 < min_cell, so the smallest shown clinic joins them
    groups = disclosed_clinics({"a": 1, "b": 2, "c": 12, "d": 30}, 10, policy)
    assert groups == {"a": OTHER_CLINICS, "b": OTHER_CLINICS, "c": OTHER_CLINICS, "d": "d"}
    groups = disclosed_clinics({"a": 6, "b": 40}, 10, policy)
    assert groups == {"a": OTHER_CLINICS, "b": "b"}
    # min_clinic_size below min_cell is raised to min_cell
    assert disclosed_clinics({"a": 4, "b": 7, "c": 3}, 2, policy) == {"a": OTHER_CLINICS, "b": "b", "c": OTHER_CLINICS}


def test_new_users_case_mix_and_registry_stop():
    treatments = pl.DataFrame({
        "person_id": [1, 1, 2, 3],
        "treatment_atc_code": ["L03AB07", "l04ax07", "L04AX07", "L04AX07"],
        "start_date": [D(2015, 1, 1), D(2018, 1, 1), D(2019, 6, 1), D(2024, 6, 1)],
        "stop_date": [D(2017, 12, 1), D(2019, 1, 1), None, None],
        "stop_reason": ["lack_of_efficacy", "adverse_event", None, None],
        "clinic_id": ["A", "A", None, "B"],
    })  # fmt: skip
    registry = pl.DataFrame({"person_id": [1, 2, 3], "onset_date": [D(2010, 1, 1), D(2018, 6, 1), D(2020, 1, 1)],
                             "diagnosis_date": [D(2011, 1, 1), None, None], "clinic_id": ["A", "B", "B"],
                             "country": ["NO", None, "DK"]})  # fmt: skip
    population = pl.DataFrame({"person_id": [1, 2, 3], "sex": ["F", "M", "F"], "birth_year": [1980, 1990, 1985],
                               "birth_month": [1, None, 3], "death_date": [None, D(2020, 6, 1), None],
                               "emigration_date": [None, None, None]}, schema_overrides={"emigration_date": pl.Date})  # fmt: skip
    edss = pl.DataFrame({"person_id": [1, 1, 1, 2], "visit_date": [D(2016, 12, 1), D(2017, 6, 1), D(2018, 2, 1), D(2019, 6, 1)],
                         "edss": [2.0, 3.5, 6.0, 1.0]})  # fmt: skip
    relapses = pl.DataFrame({"person_id": [1, 1, 1], "relapse_date": [D(2016, 12, 31), D(2017, 1, 1), D(2018, 1, 1)]})
    out = new_users(treatments, registry, population, relapses, edss, ["L04AX07"], D(2023, 12, 31))
    rows = {r["person_id"]: r for r in out.iter_rows(named=True)}
    assert set(rows) == {1, 2}  # person 3 starts after study end
    one, two = rows[1], rows[2]
    assert one["prior_dmt"] == "interferon beta" and two["prior_dmt"] == "naive"
    assert one["stopped"] == 1 and one["stop_reason"] == "adverse_event" and one["time_days"] == 365
    assert one["edss"] == 3.5  # the visit after start does not count; the last within the year before does
    assert one["relapses_prior_year"] == 1  # 1 Jan 2017 is within the year; 31 Dec 2016 is not; start day is not
    assert one["age_years"] == pytest.approx((D(2018, 1, 1) - D(1980, 1, 15)).days / 365.25)
    assert one["disease_duration_years"] == pytest.approx((D(2018, 1, 1) - D(2010, 1, 1)).days / 365.25)
    assert two["stopped"] == 0 and two["end_date"] == D(2020, 6, 1)  # censored at death
    assert two["clinic_id"] == "B" and two["country"] == "unknown" and two["edss"] == 1.0
    assert two["age_years"] == pytest.approx((D(2019, 6, 1) - D(1990, 7, 1)).days / 365.25)


def test_robust_overdispersion_is_the_moment_estimate_of_the_clinics_in_control():
    rng = np.random.default_rng(9)
    expected = rng.uniform(20, 120, 30)
    observed = rng.poisson(expected * np.exp(rng.normal(0, 0.2, 30))).astype(float)
    observed[:2] = expected[:2] * 3  # two gross outliers
    spread, outside = robust_overdispersion(observed, expected, "additive")
    assert outside[:2].all() and outside.sum() < 5
    inside = ~outside
    centre = observed[inside].sum() / expected[inside].sum()  # the clinics in control about their own O/E
    z = (observed[inside] - centre * expected[inside]) / np.sqrt(centre * expected[inside])
    k, w = inside.sum(), centre * expected[inside]
    tau2 = max(0.0, (k * np.mean(z**2) - (k - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    assert spread.tau2 == pytest.approx(tau2, rel=1e-12)
    lower, upper = funnel_limits(expected, 0.998, spread)
    ratio = observed / expected
    assert np.array_equal(outside, (ratio < lower) | (ratio > upper))


def test_reason_table_hides_a_second_reason_when_one_is_small():
    counts = {"adverse_event": 100, "lack_of_efficacy": 50, "pregnancy": 3, "patient_wish": 20, "other": 10, "unknown": 7}
    reasons = [r for r, n in counts.items() for _ in range(n)] + [None] * 60
    rng = np.random.default_rng(1)
    users = pl.DataFrame({"stopped": [int(r is not None) for r in reasons], "stop_reason": reasons})
    table = reason_table(users, rng.uniform(0, 24, len(reasons)), [24], DisclosurePolicy(5, 5))
    at = dict(table.filter(pl.col("month") == 24.0).select("stop_reason", "n_stopped").iter_rows())
    # pregnancy (3) is small; all stops (190) minus the other shown reasons would reveal it: the smallest other goes
    assert at["pregnancy"] is None and at["unknown"] is None
    assert at["any reason"] == 190 and at["adverse_event"] == 100 and at["other"] == 10
    hidden = table.filter(pl.col("n_stopped").is_null())
    assert hidden["cumulative_incidence"].null_count() == hidden.height


def test_reason_table_hides_a_reason_with_few_new_stops_since_the_previous_horizon():
    # adverse events: 40 by 12 months, 3 more by 24 (the 24-month value minus the 12-month one would show 3)
    months = np.array([6.0] * 40 + [18.0] * 3 + [6.0] * 30 + [18.0] * 30 + [30.0] * 20)
    reasons = ["adverse_event"] * 43 + ["patient_wish"] * 60 + [None] * 20
    users = pl.DataFrame({"stopped": [int(r is not None) for r in reasons], "stop_reason": reasons})
    table = reason_table(users, months, [12, 24], DisclosurePolicy(5, 5))
    value = {(r, m): (n, ci) for r, n, m, ci in table.select("stop_reason", "n_stopped", "month", "cumulative_incidence").iter_rows()}
    assert value[("adverse_event", 12.0)][0] == 40 and value[("adverse_event", 24.0)] == (None, None)
    assert value[("patient_wish", 12.0)][0] == 30 and value[("any reason", 24.0)][0] == 105  # 103 rounded to 5
    # with adverse events hidden, patient wish (all stops minus it) would give them by subtraction: hidden too
    assert value[("patient_wish", 24.0)] == (None, None)


def test_released_curve_moves_only_in_steps_of_the_minimum_cell():
    months = np.array([1.5, 2.5, 2.5, 3.5, 5.5, 6.5, 6.5, 7.5, 8.5, 9.5, 12.0] + [20.0] * 30)
    stopped = np.array([1] * 10 + [0] * 31)
    _, fitter = kaplan_meier("all", months, stopped, [12])
    exact = km_curve(fitter, np.arange(0, 13, 1.0))
    released = released_curve(exact, months[stopped == 1], 5)
    # 5 stops by month 6 (the first step), 10 by month 10: the curve is 1 before, then the exact value at each step
    assert released["persistence"].to_list()[:6] == [1.0] * 6
    assert released["persistence"][6] == exact["persistence"][6] == released["persistence"][9] != exact["persistence"][9]
    assert released["persistence"][10] == exact["persistence"][10] == released["persistence"][12]
    steps = np.flatnonzero(np.diff(released["persistence"].to_numpy()) != 0) + 1
    assert steps.tolist() == [6, 10]


def test_breakdowns_are_released_with_the_overall_row_as_their_total():
    frame = pl.DataFrame({
        "group_type": ["overall", "country", "country", "country", "clinic", "clinic"],
        "group": ["all clinics", "NO", "DK", "SE", "A", "B"],
        "n_new_users": [120, 60, 57, 3, 70, 50],
        "estimate": [0.5, 0.4, 0.6, 0.9, 0.5, 0.5],
    })  # fmt: skip
    out = release_breakdowns(frame, ["n_new_users"], DisclosurePolicy(5, 1), by=("group_type",),
                             derived={"estimate": ["n_new_users"]})  # fmt: skip
    shown = {(t, g): n for t, g, n, _ in out.iter_rows()}
    # SE (3) is small; overall - NO - DK would reveal it, so DK (the smaller other) is hidden too
    assert shown[("country", "SE")] is None and shown[("country", "DK")] is None and shown[("country", "NO")] == 60
    assert shown[("overall", "all clinics")] == 120 and shown[("clinic", "A")] == 70
    assert out.filter(pl.col("group") == "DK")["estimate"].item() is None


def test_config_defaults_and_the_min_clinic_size_check():
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    assert config["persistence"]["drug"] == ["L04AX07"] and config["persistence"]["horizons_months"] == [12, 24]
    assert not [m for m in cross_key_mistakes(config) if "min_clinic_size" in m]
    config["persistence"]["min_clinic_size"] = config["disclosure"]["min_cell"] - 1
    assert [m for m in cross_key_mistakes(config) if "persistence.min_clinic_size" in m]


def test_a_clinic_without_stops_gets_a_penalised_fit_with_its_status():
    months, cause, x = _survival_data(seed=8)
    stopped = (cause > 0).astype(int)
    clinic = (np.arange(len(months)) < 30).astype(float)
    stopped[clinic == 1] = 0  # the first clinic never stops: its unpenalised coefficient diverges
    design = pd.DataFrame({"a": x[:, 0], "clinic=X": clinic})
    fitter = fit_cox(design, months, stopped)
    assert fit_status(fitter).startswith("converged with ridge penalty")
    assert fitter.params_["clinic=X"] < -2 and np.isfinite(fitter.params_).all()
    assert fit_status(fit_cox(design[["a"]], months, stopped)) == "converged"


def test_agreement_table_by_hand_and_its_small_cells():
    # 40 users with dispensings: 20 stopped by both, 12 by neither, 6 by the registry only, 2 by dispensings only
    stopped = [1] * 20 + [0] * 12 + [1] * 6 + [0] * 2
    dispensing = [1] * 20 + [0] * 12 + [0] * 6 + [1] * 2
    users = pl.DataFrame({
        "n_dispensings": [3] * 40, "stopped": stopped, "time_days": [100.0] * 40,
        "dispensing_stopped": dispensing, "dispensing_time_days": [100.0 + 10 * (i % 20) for i in range(40)],
    })  # fmt: skip
    table = dict(agreement_table(users, 730.0, 90, DisclosurePolicy(5, 1)).iter_rows())
    # observed agreement 32/40; expected 26/40 * 22/40 + 14/40 * 18/40; dispensings-only (2) is small, so the
    # smallest other cell (registry only, 6) is hidden with it and the kappa with them
    assert table["n_stopped_dispensing_only"] == "<5" and table["n_stopped_registry_only"] == "<5"
    assert table["n_stopped_both"] == "20" and table["kappa_stopped_within_horizon"] == "hidden"
    rows = dict(agreement_rows(users, horizon_days=730.0, within_days=90))
    expected = 26 / 40 * 22 / 40 + 14 / 40 * 18 / 40
    assert rows["kappa_stopped_within_horizon"] == pytest.approx((32 / 40 - expected) / (1 - expected), abs=1e-12)
    # both stopped: differences 0, 10, ..., 190 days (the first 20); within 90 days: 10 of 20
    assert rows["share_stop_dates_within_days"] == pytest.approx(0.5)
    assert rows["median_difference_days_dispensing_minus_registry"] == pytest.approx(95.0)


@pytest.mark.parametrize("n_clinics", [0, 1, 2])
def test_too_few_clinics_are_shown_but_not_judged(n_clinics):
    observed, expected = np.array([12.0, 30.0][:n_clinics]), np.array([10.0, 20.0][:n_clinics])
    frame, spread = funnel_table([f"C{i}" for i in range(n_clinics)], observed, expected, "additive")
    assert frame.height == n_clinics and np.isnan(spread.tau2)
    assert all(flag.startswith("not assessed") for flag in frame["funnel"].to_list())
    variance = between_clinic_variance(observed, expected)
    assert variance["k_clinics"] == n_clinics and (np.isnan(variance["tau2"]) if n_clinics < 2 else variance["tau2"] >= 0)
