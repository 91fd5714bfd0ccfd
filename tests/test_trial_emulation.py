"""The trial emulation's bootstrap, release and stage: reproducible by seed whatever the number of workers,
disclosure control of the released tables, and the stage on a small simulated registry."""

from __future__ import annotations

import warnings
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression

from repurpose.config import validate_config
from repurpose.layout import TRIAL_EMULATION_TABLES
from repurpose.release.policy import DisclosurePolicy
from repurpose.simulate import simulate_registries
from repurpose.trial_emulation import run_trial_emulation
from repurpose.trial_emulation.analysis import (
    NAIVE,
    bootstrap,
    build_trial_data,
    estimates,
    fit_weights,
    percentile_intervals,
)
from repurpose.trial_emulation.clones import build_clones, weights_from
from repurpose.trial_emulation.cohort import BASELINE_COLUMNS, TIME_VARYING
from repurpose.trial_emulation.protocol import TrialProtocol
from repurpose.trial_emulation.release import HIDDEN_NOTE, coarsened_steps, release_counts_table, release_flow
from repurpose.trial_emulation.study import (
    emulate,
    hidden_outcomes,
    read_validated,
    release_all,
    unavailable_outcomes,
)

INPUTS = {"population": {"path": "p"}, "prescriptions": {"path": "p"}, "ms_registry": {"path": "m"}}


def protocol(**trial) -> TrialProtocol:
    return TrialProtocol.from_config(validate_config({"inputs": INPUTS, "trial_emulation": trial}))


def synthetic_trial(n: int, seed: int, p: TrialProtocol):
    """Persons with an activity score that raises both the chance of a high-efficacy first therapy and the
    outcome hazard (confounding by indication); start days spread over and beyond the grace period."""
    baseline, covariates, outcome = synthetic_inputs(n, seed, p)
    return build_trial_data(build_clones(baseline, covariates, p), p, **outcome)


def synthetic_inputs(n: int, seed: int, p: TrialProtocol) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """The synthetic trial's baseline, grace-period covariates and outcome arguments of `build_trial_data`."""
    rng = np.random.default_rng(seed)
    activity = rng.poisson(0.6, n)
    start = np.where(rng.random(n) < 0.85, rng.exponential(110, n).round(), np.nan)
    high = rng.random(n) < 1 / (1 + np.exp(-(-1.0 + 0.8 * activity)))
    followup = rng.integers(400, 3650, n)
    baseline = pl.DataFrame({
        "person_id": np.arange(n) + 1, "time_zero": [date(2015, 1, 1)] * n, "followup_days": followup,
        "end_date": [date(2025, 1, 1)] * n, "death_day": [None] * n, "female": rng.integers(0, 2, n).astype(float),
        "age_years": rng.uniform(18, 60, n), "disease_duration_years": rng.exponential(1, n), "edss": rng.integers(0, 8, n) / 2,
        "relapses_1y": activity, "relapses_2y": activity + rng.poisson(0.3, n), "calendar_year": rng.integers(2008, 2020, n).astype(float),
        "clinic_id": rng.choice(["A", "B", "C"], n), "country": "NO",
        "first_start_day": pl.Series(start).fill_nan(None), "first_class": np.where(np.isnan(start), None, np.where(high, "high_efficacy", "moderate")),
    }).with_columns(pl.col("first_start_day").cast(pl.Int64)).select(BASELINE_COLUMNS)  # fmt: skip
    grid = baseline.select("person_id", "relapses_1y", "edss").join(
        pl.DataFrame({"interval": np.arange(p.n_grace_intervals, dtype=np.int32)}), how="cross")
    covariates = grid.select("person_id", "interval", pl.col("relapses_1y").alias("relapses_12m"),
                             pl.col("relapses_1y").alias("relapses_24m"), pl.col("edss").alias("edss_latest"))  # fmt: skip
    hazard = 0.0004 * np.exp(0.5 * activity) * np.where(high & (start <= p.grace_days), 0.6, 1.0)
    event = rng.exponential(1 / hazard)
    event = np.where(event <= followup, np.ceil(event), np.nan)
    relapse_person = np.repeat(np.arange(n), 3)
    relapse_day = rng.uniform(1, 3000, 3 * n).round()
    keep = relapse_day < followup[relapse_person]
    first_day = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    outcome = dict(
        followup=followup.astype(float), first_day=first_day, first_high=high & ~np.isnan(start),
        event_days={"confirmed_worsening": event}, count_days={"relapse_rate": (relapse_person[keep], relapse_day[keep])},
        daily_counts={"sick_leave": rng.exponential(0.5, (n, -(-p.max_days // p.interval_days)))},
    )  # fmt: skip
    return baseline, covariates.select("person_id", "interval", *TIME_VARYING), outcome


def test_bootstrap_is_reproducible_by_seed_whatever_the_number_of_workers():
    p = protocol(seed=5)
    data = synthetic_trial(400, 1, p)
    grid = np.array([0.0, 365.0, 730.0])
    one = bootstrap(data, 4, workers=1, grid_days=grid)
    two = bootstrap(data, 4, workers=2, grid_days=grid)
    key = ("emulation", "confirmed_worsening", "risk_difference_5y")
    assert [r[key] for r in one] == [r[key] for r in two]
    np.testing.assert_array_equal(one[3][("emulation", "confirmed_worsening", "curve_high_efficacy")],
                                  two[3][("emulation", "confirmed_worsening", "curve_high_efficacy")])  # fmt: skip
    other = bootstrap(synthetic_trial(400, 1, protocol(seed=6)), 4, workers=1)
    assert [r[key] for r in other] != [r[key] for r in one]
    assert len({r[key] for r in one}) == 4  # the replicates differ from each other


def sklearn_censoring_probabilities(clones, frequency=None, **solver) -> np.ndarray:
    """The censoring models as fitted before the Newton path: scikit-learn's unpenalised logistic model per arm and
    part of the grace period, the frequencies as sample weights (zeros included)."""
    p = np.zeros(len(clones.model_clone))
    arm, person = clones.arm[clones.model_clone], clones.person[clones.model_clone]
    last = clones.model_interval == clones.n_intervals - 1
    for a in (0, 1):
        for part in (~last, last):
            rows = (arm == a) & part
            w = None if frequency is None else frequency[person[rows]].astype(float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # newton-cg's line search at the optimum
                model = LogisticRegression(C=np.inf, **solver).fit(clones.model_x[rows], clones.model_deviates[rows], sample_weight=w)
            p[rows] = model.predict_proba(clones.model_x[rows])[:, 1]
    return p


def assert_same_estimates(got: dict, expected: dict, atol: float) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=atol, err_msg=str(key))


def test_the_newton_path_and_its_warm_started_replicates_equal_the_scikit_learn_fits():
    p = protocol(seed=5)
    data = synthetic_trial(400, 1, p)
    grid = np.array([0.0, 365.0, 730.0, 1826.0])
    fit = fit_weights(data)
    point = estimates(data, fit, grid_days=grid)
    converged = {"solver": "newton-cg", "tol": 1e-12, "max_iter": 1000}
    shipped = {"solver": "lbfgs", "tol": 1e-8, "max_iter": 500}  # the settings before: stops at gradient 1e-8
    reference = weights_from(data.clones, sklearn_censoring_probabilities(data.clones, **converged), p.weight_truncation_percentile)
    assert_same_estimates(point, estimates(data, reference, grid_days=grid), 1e-8)
    replicates = bootstrap(data, 3, workers=1, grid_days=grid, start=[fit.coefs])
    n = data.clones.n_persons
    for b, replicate in enumerate(replicates):
        frequency = np.random.default_rng([p.seed, b]).multinomial(n, np.full(n, 1.0 / n))
        before = weights_from(data.clones, sklearn_censoring_probabilities(data.clones, frequency, **shipped),
                              p.weight_truncation_percentile, frequency)  # fmt: skip
        assert_same_estimates(replicate, estimates(data, before, frequency, grid), 1e-6)


def test_point_estimates_and_percentile_intervals_are_consistent():
    p = protocol()
    data = synthetic_trial(600, 2, p)
    fit = fit_weights(data)
    point = estimates(data, fit)
    for outcome in ("confirmed_worsening",):
        high, low = point[("emulation", outcome, "risk_high_efficacy_5y")], point[("emulation", outcome, "risk_escalation_5y")]
        assert point[("emulation", outcome, "risk_difference_5y")] == pytest.approx(high - low)
        assert 0 < low < 1 and 0 < high < 1
    rate = point[("emulation", "relapse_rate", "rate_ratio")]
    assert rate == pytest.approx(point[("emulation", "relapse_rate", "per_year_high_efficacy")] / point[("emulation", "relapse_rate", "per_year_escalation")])
    replicates = bootstrap(data, 20, workers=1)
    intervals = percentile_intervals(point, replicates)
    lower, upper = intervals[("emulation", "confirmed_worsening", "hazard_ratio")]
    assert lower < upper
    values = np.array([r[("emulation", "confirmed_worsening", "hazard_ratio")] for r in replicates])
    assert lower == pytest.approx(np.quantile(values, 0.025)) and upper == pytest.approx(np.quantile(values, 0.975))


def test_curves_move_only_in_steps_of_min_cell_events():
    risk = np.array([0.0, 0.01, 0.02, 0.05, 0.06, 0.10])
    events = np.array([0, 2, 4, 7, 8, 13])
    shown = coarsened_steps(risk, events, 5)
    # 7 events by index 3 (>= 5 since 0) -> shown; index 4 has 1 new -> repeats index 3; index 5 has 6 new -> shown
    assert shown.tolist() == [0, 0, 0, 3, 3, 5]


def test_small_counts_are_hidden_and_the_rest_rounded():
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    counts = pl.DataFrame({"analysis": ["emulation"] * 3, "strategy": ["high_efficacy", "escalation", "escalation"],
                           "outcome": ["death"] * 3, "n_persons": [1203, 1203, 3], "n_censored_deviation": [0, 4, 17],
                           "n_events": [3, 12, 0]})  # fmt: skip
    released = release_counts_table(counts, policy)
    assert released["n_persons"].to_list() == [1205, 1205, None]
    assert released["n_censored_deviation"].to_list() == [0, None, 15]
    assert released["n_events"].to_list() == [None, 10, 0]
    flow = release_flow([("a", 100), ("b", 98), ("c", 2)], policy)
    assert flow["n_persons"].to_list() == [100, 100, None]


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trial_registry")
    simulate_registries(folder, n_persons=20_000, seed=3)
    return folder


def test_the_stage_writes_released_tables_and_the_page(small_registry, tmp_path):
    names = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss", "sick_leave")
    config = validate_config({"inputs": INPUTS, "trial_emulation": {"bootstrap_replicates": 8, "diagnosis_from": "2006-09-01"}})
    outputs = {f"{n}_csv" if n in ("estimates", "positivity") else n: str(tmp_path / f"{n}.csv") for n in TRIAL_EMULATION_TABLES}
    result = run_trial_emulation(
        config, **{n: str(small_registry / f"{n}.parquet") for n in names}, cohort=str(tmp_path / "cohort.parquet"),
        html=str(tmp_path / "trial_emulation.html"), **outputs,
    )  # fmt: skip
    assert result["n_eligible"] > 100
    estimates_table = pl.read_csv(tmp_path / "estimates.csv")
    primary = estimates_table.filter((pl.col("analysis") == "emulation") & (pl.col("outcome") == "confirmed_worsening")
                                     & (pl.col("measure") == "hazard_ratio")).row(0, named=True)  # fmt: skip
    assert primary["status"] == "shown" and primary["lower"] < primary["estimate"] < primary["upper"]
    assert set(estimates_table["outcome"]) >= {"confirmed_worsening", "first_relapse", "relapse_rate", "sick_leave", "death"}
    # the safety outcome is configured (the default) but the diagnosis extract is not given: listed, not dropped
    missing = estimates_table.filter(pl.col("outcome") == "serious_infection")
    assert missing.rows() == [(None, "serious_infection", None, None, None, None, "not available: inputs.diagnoses is not configured")]
    target = pl.read_csv(tmp_path / "target_trial.csv")
    assert target["component"][0] == "Eligibility"
    assert "serious_infection not available: inputs.diagnoses is not configured" in target.filter(pl.col("component") == "Outcomes")["emulation"][0]
    assert pl.read_csv(tmp_path / "flow.csv")["n_persons"][-1] % 5 == 0
    page = (tmp_path / "trial_emulation.html").read_text()
    assert "The target trial and its emulation" in page and "<img" in page
    # released counts are rounded and never in [1, min_cell); no person identifier in any released file
    counts = pl.read_csv(tmp_path / "counts.csv")
    for column in ("n_persons", "n_censored_deviation", "n_events"):
        values = counts[column].drop_nulls().to_list()
        assert all(v == 0 or (v >= 5 and v % 5 == 0) for v in values)
    ids = {str(i) for i in pl.read_parquet(tmp_path / "cohort.parquet")["person_id"].to_list()}
    for name in TRIAL_EMULATION_TABLES:
        text = (tmp_path / f"{name}.csv").read_text()
        assert not any(f",{i}," in text or text.startswith(f"{i},") for i in list(ids)[:200])
    curves = pl.read_csv(tmp_path / "curves.csv")
    assert curves.filter(pl.col("n_at_risk").is_not_null())["n_at_risk"].min() >= 5
    # the sustained per-protocol estimand beside the start-only one, in every table and on the page
    assert set(estimates_table["analysis"].drop_nulls()) == {"emulation", "naive", "sustained"}
    assert set(curves["analysis"]) == {"emulation", "naive", "sustained"}
    assert set(pl.read_csv(tmp_path / "weights.csv")["analysis"]) == {"emulation", "sustained"}
    assert set(counts["analysis"]) == {"emulation", "naive", "sustained"}
    adherence = target.filter(pl.col("component") == "Adherence (sustained strategies)")["emulation"][0]
    assert "within 180 days" in adherence and "in the 365 days before" in adherence
    assert "sustained per-protocol analysis" in page


def test_the_safety_outcome_through_the_emulation_on_a_simulated_registry(small_registry):
    """serious_infection from the simulated diagnosis extract: events counted as a plain count over the raw
    records says, finite estimates, and released tables under disclosure control."""
    names = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss")
    frames = {n: read_validated(n, small_registry / f"{n}.parquet") for n in names}
    p = protocol(bootstrap_replicates=4, diagnosis_from="2006-09-01", outcomes=["first_relapse", "serious_infection"])
    result = emulate(p, frames, None, diagnoses=pl.scan_parquet(small_registry / "diagnoses.parquet"))
    assert result["unavailable"] == {}
    # the naive groups' events by a loop over the raw records: a default-list code strictly after time zero and
    # before end_date, on a day <= the person's follow-up days
    baseline = result["baseline"]
    records = pl.read_parquet(small_registry / "diagnoses.parquet").filter(pl.col("person_id").is_in(baseline["person_id"].implode()))
    by_person: dict[int, list[int]] = {}
    zero = dict(zip(baseline["person_id"], baseline["time_zero"], strict=True))
    end = dict(zip(baseline["person_id"], baseline["end_date"], strict=True))
    for person, when, code in records.iter_rows():
        if code.startswith(p.serious_infection_codes) and zero[person] < when < end[person]:
            by_person.setdefault(person, []).append((when - zero[person]).days)
    expected = {"high_efficacy": 0, "escalation": 0}
    for person, start, cls, followup in baseline.select("person_id", "first_start_day", "first_class", "followup_days").iter_rows():
        if start is not None and start <= p.grace_days and min(by_person.get(person, [10**9])) <= followup:
            expected["high_efficacy" if cls == "high_efficacy" else "escalation"] += 1
    counts = result["counts"].filter((pl.col("outcome") == "serious_infection") & (pl.col("analysis") == NAIVE))
    assert dict(zip(counts["strategy"], counts["n_events"], strict=True)) == expected
    assert sum(expected.values()) > 0
    for analysis in ("emulation", "naive"):
        for measure in ("hazard_ratio", "risk_high_efficacy_5y", "risk_escalation_5y", "risk_difference_5y"):
            assert np.isfinite(result["point"][(analysis, "serious_infection", measure)]), (analysis, measure)
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    released = release_all(result, p, policy)
    hidden = hidden_outcomes(result["counts"], policy)
    shown = released["estimates"].filter(pl.col("outcome") == "serious_infection")
    for (analysis,), part in shown.group_by("analysis"):
        if (analysis, "serious_infection") in hidden:
            assert (part["status"] == HIDDEN_NOTE).all() and part["estimate"].null_count() == part.height
        else:
            assert (part["status"] == "shown").all() and part["estimate"].is_not_null().all()
    released_counts = released["counts"].filter(pl.col("outcome") == "serious_infection")
    for column in ("n_persons", "n_censored_deviation", "n_events"):
        assert all(v == 0 or (v >= 5 and v % 5 == 0) for v in released_counts[column].drop_nulls().to_list())
    curves = released["curves"].filter(pl.col("outcome") == "serious_infection")
    assert curves.filter(pl.col("n_at_risk").is_not_null())["n_at_risk"].min() >= 5


def test_an_outcome_without_its_extract_is_listed_as_not_available_only_when_configured():
    p = protocol(outcomes=["first_relapse", "sick_leave", "serious_infection"])
    assert unavailable_outcomes(p, {"sick_leave": None, "diagnoses": None}) == {
        "sick_leave": "not available: inputs.sick_leave is not configured",
        "serious_infection": "not available: inputs.diagnoses is not configured",
    }
    assert unavailable_outcomes(p, {"sick_leave": pl.DataFrame(), "diagnoses": pl.LazyFrame()}) == {}
    assert unavailable_outcomes(protocol(outcomes=["first_relapse"]), {}) == {}


def confounded_trial(n: int, seed: int, p: TrialProtocol) -> tuple[float, object]:
    """A trial with a known answer: activity A (measured, the relapse covariates) raises both the chance of a
    high-efficacy first therapy and the outcome hazard; the start day is independent of everything; the class
    started changes the hazard after the grace period (HR 0.5 high-efficacy, 1 moderate). Returns the true 5-year
    risk difference (the same persons' outcomes simulated with every first therapy forced into each class) and
    the emulation's data."""
    rng = np.random.default_rng(seed)
    activity = rng.poisson(0.8, n)
    start = np.where(rng.random(n) < 0.85, np.ceil(rng.exponential(110, n)), np.nan)
    high = rng.random(n) < 1 / (1 + np.exp(-(-1.0 + 0.9 * activity)))
    followup = np.full(n, 1830)
    horizon = 5 * 365.25

    def outcome(class_high: np.ndarray, treated: np.ndarray) -> np.ndarray:
        base = 0.0003 * np.exp(0.5 * activity)
        hr = np.where(treated, np.where(class_high, 0.5, 1.0), 1.0)
        unit = rng.exponential(1, n)
        day = np.where(unit / base <= 180, unit / base, 180 + (unit - base * 180) / (base * hr))
        return np.where(day <= followup, np.ceil(day), np.nan)

    observed = outcome(high, ~np.isnan(start))
    truth = np.mean(outcome(np.ones(n, bool), np.ones(n, bool)) <= horizon) - np.mean(
        outcome(np.zeros(n, bool), np.ones(n, bool)) <= horizon)  # fmt: skip
    classes = pl.Series(np.where(np.isnan(start), "none", np.where(high, "high_efficacy", "moderate"))).replace("none", None)
    baseline = pl.DataFrame({
        "person_id": np.arange(n) + 1, "time_zero": [date(2015, 1, 1)] * n, "followup_days": followup,
        "end_date": [date(2025, 1, 1)] * n, "death_day": [None] * n, "female": rng.integers(0, 2, n).astype(float),
        "age_years": rng.uniform(18, 60, n), "disease_duration_years": rng.exponential(1, n), "edss": rng.integers(0, 8, n) / 2,
        "relapses_1y": activity, "relapses_2y": activity, "calendar_year": rng.integers(2008, 2020, n).astype(float),
        "clinic_id": "A", "country": "NO", "first_start_day": pl.Series(start).fill_nan(None), "first_class": classes,
    }).with_columns(pl.col("first_start_day").cast(pl.Int64)).select(BASELINE_COLUMNS)  # fmt: skip
    grid = baseline.select("person_id", "relapses_1y", "edss").join(
        pl.DataFrame({"interval": np.arange(p.n_grace_intervals, dtype=np.int32)}), how="cross")
    covariates = grid.select("person_id", "interval", pl.col("relapses_1y").alias("relapses_12m"),
                             pl.col("relapses_1y").alias("relapses_24m"), pl.col("edss").alias("edss_latest"))  # fmt: skip
    clones = build_clones(baseline, covariates.select("person_id", "interval", *TIME_VARYING), p)
    data = build_trial_data(clones, p, followup=followup.astype(float), first_day=start,
                            first_high=high & ~np.isnan(start), event_days={"outcome": observed}, count_days={},
                            daily_counts={})  # fmt: skip
    return float(truth), data


@pytest.mark.parametrize("seed", [1, 2])
def test_the_emulation_recovers_a_known_effect_under_confounding_by_indication_and_the_naive_comparison_does_not(seed):
    # untruncated weights (truncation trades bias for variance); tolerance 0.04 on the 5-year risk difference
    # (the weights' effective sample is small: the late starters of the grace period carry large weights)
    p = protocol(max_years=5, horizons_years=[5], weight_truncation_percentile=100)
    truth, data = confounded_trial(30_000, seed, p)
    point = estimates(data, fit_weights(data))
    emulated = point[("emulation", "outcome", "risk_difference_5y")]
    naive = point[("naive", "outcome", "risk_difference_5y")]
    print(f"seed {seed}: true RD {truth:+.4f}, emulation {emulated:+.4f}, naive {naive:+.4f}")
    assert abs(emulated - truth) < 0.04
    assert abs(naive - truth) > 0.06
