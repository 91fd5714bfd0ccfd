"""Exactness tests of the aggregated-risk-set Efron Cox engine (repurpose.cox.engine).

References: lifelines CoxTimeVaryingFitter (Efron ties, at risk on start < t <= stop) fitted on the
explicitly split long-format rows, R survival::coxph (stored outputs in tests/data and live when R
is installed) and closed-form hand calculations. Deviations are printed (run ``pytest -s``).
"""

from __future__ import annotations

import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from aggregated_fitter import AggregatedCoxPHFitter, NotFittedError
from lifelines import CoxTimeVaryingFitter
from r_survival import r_survival_missing
from scipy import optimize

from repurpose.cox import engine as coxph
from repurpose.cox.engine import efron_log_likelihood, fit_efron
from repurpose.cox.result import CoxFitResult
from repurpose.cox.risk_set_table import (
    CountingProcessError,
    CoxEngineError,
    RiskSetTable,
    RiskSetTableError,
    aggregate_counting_process,
    factorize,
)

DATA = Path(__file__).parent / "data"
COEF_ABS_TOL = 1e-6
SE_REL_TOL = 1e-5
# lifelines' Newton-Raphson tightened so that its answer is converged far below the tolerances:
# full Newton steps (its default 0.95 damping slows convergence) and a stopping precision of 1e-14
# on the step norm / Newton decrement (default 1e-8 stops ~1e-5 from the optimum in SE units).
LIFELINES_FIT_OPTIONS = {"step_size": 1.0, "precision": 1e-14, "max_steps": 200}


# --------------------------------------------------------------------------------------------------
# Simulated cohorts and references
# --------------------------------------------------------------------------------------------------


def simulate_cohort(
    n_subjects: int,
    seed: int,
    *,
    n_strata: int = 1,
    n_levels: int = 3,
    max_follow_up: int = 30,
    delayed_entry: bool = True,
    p_exposed_at_entry: float = 0.2,
    p_starts_exposure: float = 0.4,
    log_hr_exposed: float = 0.5,
    stratum_without_exposed_events: int | None = None,
) -> pd.DataFrame:
    """Counting-process rows (id, start, stop, event, exposed, level, stratum, level_1..) of a cohort.

    Discrete integer time gives many tied events; entry times are 0..7 (delayed entry); exposure is
    on at entry or switches on during follow-up (the person's row is split there); ``level`` is a
    categorical covariate with dummy columns level_1..; ``stratum_without_exposed_events`` gets no
    events during exposed time.
    """
    rng = np.random.default_rng(seed)
    entry = rng.integers(0, 8, n_subjects) if delayed_entry else np.zeros(n_subjects, dtype=np.int64)
    level = rng.integers(0, n_levels, n_subjects)
    stratum = rng.integers(0, n_strata, n_subjects)
    exposed_at_entry = rng.random(n_subjects) < p_exposed_at_entry
    starts_later = rng.random(n_subjects) < p_starts_exposure
    switch = np.where(exposed_at_entry, entry, np.where(starts_later, entry + rng.integers(1, 15, n_subjects), 10**6))
    censor = entry + rng.integers(1, max_follow_up, n_subjects)
    level_log_hr = np.linspace(0.0, 0.8, n_levels)
    baseline = 0.02 * (1.0 + 0.5 * stratum)

    exit_time = censor.copy()
    event = np.zeros(n_subjects, dtype=np.int64)
    alive = np.ones(n_subjects, dtype=bool)
    for t in range(1, int(censor.max()) + 1):
        at_risk = alive & (t > entry) & (t <= censor)
        exposed_now = t > switch
        multiplier = np.exp(log_hr_exposed * exposed_now + level_log_hr[level])
        if stratum_without_exposed_events is not None:
            multiplier = np.where(exposed_now & (stratum == stratum_without_exposed_events), 0.0, multiplier)
        has_event = at_risk & (rng.random(n_subjects) < 1.0 - np.exp(-baseline * multiplier))
        exit_time[has_event] = t
        event[has_event] = 1
        alive &= ~has_event

    ids = np.arange(n_subjects)
    switches_in_follow_up = switch < exit_time
    unexposed_stop = np.where(switches_in_follow_up, switch, exit_time)
    unexposed = pd.DataFrame({
        "id": ids, "start": entry, "stop": unexposed_stop,
        "event": np.where(switches_in_follow_up, 0, event), "exposed": 0,
    })[(switch > entry) & (unexposed_stop > entry)]
    exposed = pd.DataFrame({
        "id": ids, "start": np.maximum(switch, entry), "stop": exit_time, "event": event, "exposed": 1,
    })[switches_in_follow_up]
    rows = pd.concat([unexposed, exposed]).sort_values(["id", "start"]).reset_index(drop=True)
    rows["level"] = level[rows["id"]]
    rows["stratum"] = stratum[rows["id"]]
    for value in range(1, n_levels):
        rows[f"level_{value}"] = (rows["level"] == value).astype(np.float64)
    rows["start"] = rows["start"].astype(np.float64)
    rows["stop"] = rows["stop"].astype(np.float64)
    return rows


def lifelines_fit(
    rows: pd.DataFrame, covariates: list[str], strata: str | None = None, weights_col: str | None = None
) -> CoxTimeVaryingFitter:
    columns = ["start", "stop", "event", *covariates] + ([strata] if strata else []) + (
        [weights_col] if weights_col else [])
    fitter = CoxTimeVaryingFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitter.fit(rows[columns], event_col="event", start_col="start", stop_col="stop",
                   strata=[strata] if strata else None, weights_col=weights_col, fit_options=LIFELINES_FIT_OPTIONS)
    return fitter


def engine_fit(rows: pd.DataFrame, covariates: list[str], strata: str | None = None) -> CoxFitResult:
    table = aggregate_counting_process(
        rows["start"].to_numpy(), rows["stop"].to_numpy(), rows["event"].to_numpy(),
        rows[covariates].to_numpy(), strata=None if strata is None else rows[strata].to_numpy(),
    )
    return fit_efron(table)


def deviations(result: CoxFitResult, reference: CoxTimeVaryingFitter, fit: int = 0) -> dict[str, float]:
    se = result.se[fit]
    return {
        "coef_abs": float(np.max(np.abs(result.coef[fit] - reference.params_.to_numpy()))),
        "se_rel": float(np.max(np.abs(se - reference.standard_errors_.to_numpy()) / se)),
        "loglik_abs": float(abs(result.loglik[fit] - reference.log_likelihood_)),
        "loglik_null_abs": float(abs(result.loglik_null[fit] - reference._log_likelihood_null)),
    }


def assert_close_to_reference(dev: dict[str, float], label: str) -> None:
    print(f"\n[{label}] max |d coef| = {dev['coef_abs']:.2e}, max |d SE|/SE = {dev['se_rel']:.2e}, "
          f"|d loglik| = {dev['loglik_abs']:.2e}, |d loglik_null| = {dev['loglik_null_abs']:.2e}")
    assert dev["coef_abs"] <= COEF_ABS_TOL
    assert dev["se_rel"] <= SE_REL_TOL
    assert dev["loglik_abs"] <= 1e-6
    assert dev["loglik_null_abs"] <= 1e-6


# --------------------------------------------------------------------------------------------------
# Hand-calculated examples
# --------------------------------------------------------------------------------------------------

# Six subjects, x = exposure. Event times 2 (two tied events) and 4.
#   A (0,2] x=1 event | B (0,2] x=0 event | C (1,4] x=1 censored | D (0,4] x=0 event
#   E (2,5] x=0 censored: enters at 2, so NOT at risk at t=2 | F (0,2] x=1 censored at 2: at risk at t=2
#   G (0,1] x=1 censored before any event: never at risk.
# t=2: at risk x=1: A, C, F (3), x=0: B, D (2); events one per pattern, D=2:
#      S0 = 3e^b + 2, E0 = e^b + 1, Efron terms log S0 + log(S0 - E0/2) = log(3e^b + 2) + log(2.5e^b + 1.5)
# t=4: at risk x=1: C (1), x=0: D, E (2); event D (x=0): S0 = e^b + 2.
TINY = pd.DataFrame({
    "start": [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0],
    "stop": [2.0, 2.0, 4.0, 4.0, 5.0, 2.0, 1.0],
    "event": [1, 1, 0, 1, 0, 0, 0],
    "x": [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0],
}, index=list("ABCDEFG"))


def tiny_loglik(b: float) -> float:
    return b - np.log(3 * np.exp(b) + 2) - np.log(2.5 * np.exp(b) + 1.5) - np.log(np.exp(b) + 2)


def tiny_score(b: float) -> float:
    e = np.exp(b)
    return 1 - 3 * e / (3 * e + 2) - 2.5 * e / (2.5 * e + 1.5) - e / (e + 2)


def tiny_information(b: float) -> float:
    e = np.exp(b)
    return 6 * e / (3 * e + 2) ** 2 + 3.75 * e / (2.5 * e + 1.5) ** 2 + 2 * e / (e + 2) ** 2


def tiny_table() -> RiskSetTable:
    return aggregate_counting_process(TINY["start"], TINY["stop"], TINY["event"], TINY[["x"]].to_numpy())


def test_tiny_example_aggregation_follows_at_risk_convention() -> None:
    table = tiny_table()
    got = pd.DataFrame({"risk_set": table.risk_set_index, "x": table.design[:, 0],
                        "n_at_risk": table.n_at_risk, "n_events": table.n_events})
    expected = pd.DataFrame({"risk_set": [0, 0, 1, 1], "x": [0.0, 1.0, 0.0, 1.0],
                             "n_at_risk": [2.0, 3.0, 2.0, 1.0], "n_events": [1.0, 1.0, 1.0, 0.0]})
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert table.n_fits == 1 and np.all(table.fit_index == 0)


def test_tiny_example_efron_loglik_score_information_by_hand() -> None:
    table = tiny_table()
    for b in (0.0, 0.7, -1.3):
        derivs = efron_log_likelihood(table, [b])
        assert derivs.loglik[0] == pytest.approx(tiny_loglik(b), abs=1e-13)
        assert derivs.score[0, 0] == pytest.approx(tiny_score(b), abs=1e-13)
        assert derivs.information[0, 0, 0] == pytest.approx(tiny_information(b), abs=1e-13)
    # beta = 0 by hand: -log 5 - log 4 - log 3 and score 1 - 3/5 - 2.5/4 - 1/3.
    assert efron_log_likelihood(table).loglik[0] == pytest.approx(-np.log(60.0), abs=1e-14)
    assert efron_log_likelihood(table).score[0, 0] == pytest.approx(1 - 0.6 - 0.625 - 1 / 3, abs=1e-14)


def test_tiny_example_fit_matches_hand_maximum() -> None:
    b_hat = optimize.brentq(tiny_score, -5, 5, xtol=1e-15)
    result = fit_efron(tiny_table())
    assert result.status[0] == "ok" and result.converged[0]
    assert result.coef[0, 0] == pytest.approx(b_hat, abs=1e-10)
    assert result.se[0, 0] == pytest.approx(1 / np.sqrt(tiny_information(b_hat)), rel=1e-10)
    assert result.loglik[0] == pytest.approx(tiny_loglik(b_hat), abs=1e-12)
    assert result.loglik_null[0] == pytest.approx(-np.log(60.0), abs=1e-14)
    reference = lifelines_fit(TINY, ["x"])
    assert_close_to_reference(deviations(result, reference), "tiny example vs lifelines")


def test_efron_with_three_tied_events_by_hand() -> None:
    # One risk set: x=1 has 4 at risk / 2 events, x=0 has 3 at risk / 1 event; D = 3.
    table = RiskSetTable(np.array([0, 0]), np.array([0, 0]), np.array([3.0, 4.0]), np.array([1.0, 2.0]),
                         np.array([[0.0], [1.0]]), 1)
    b = 0.4
    e = np.exp(b)
    s0, e0 = 4 * e + 3, 2 * e + 1
    denominators = [s0 - k / 3 * e0 for k in range(3)]
    s1, e1 = 4 * e, 2 * e
    loglik = 2 * b - sum(np.log(d) for d in denominators)
    score = 2 - sum((s1 - k / 3 * e1) / d for k, d in enumerate(denominators))
    information = sum((s1 - k / 3 * e1) / d - ((s1 - k / 3 * e1) / d) ** 2 for k, d in enumerate(denominators))
    derivs = efron_log_likelihood(table, [b])
    assert derivs.loglik[0] == pytest.approx(loglik, abs=1e-13)
    assert derivs.score[0, 0] == pytest.approx(score, abs=1e-13)
    assert derivs.information[0, 0, 0] == pytest.approx(information, abs=1e-13)


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def brute_force_risk_sets(start, stop, event, design, strata, fit_index) -> pd.DataFrame:
    """Loop over (fit, stratum, event time, pattern): the definition of aggregate_counting_process."""
    records = []
    patterns = np.unique(design, axis=0)
    for fit in np.unique(fit_index):
        for stratum in np.unique(strata[fit_index == fit]):
            group = (fit_index == fit) & (strata == stratum)
            for t in np.unique(stop[group & (event == 1)]):
                for pattern in patterns:
                    same = group & np.all(design == pattern, axis=1)
                    at_risk = np.sum(same & (start < t) & (t <= stop))
                    if at_risk:
                        records.append((fit, stratum, t, *pattern, float(at_risk),
                                        float(np.sum(same & (event == 1) & (stop == t)))))
    columns = ["fit", "stratum", "time", *[f"x{j}" for j in range(design.shape[1])], "n_at_risk", "n_events"]
    return pd.DataFrame.from_records(records, columns=columns)


def test_aggregation_matches_brute_force_definition() -> None:
    rng = np.random.default_rng(7)
    n = 400
    start = rng.integers(0, 6, n).astype(float) + rng.choice([0.0, 0.5], n)
    stop = start + rng.integers(1, 10, n) * 0.5
    event = (rng.random(n) < 0.4).astype(int)
    design = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 3, n)]).astype(float)
    strata = rng.choice(np.array(["men", "women"]), n)
    fit_index = rng.integers(0, 3, n)
    table = aggregate_counting_process(start, stop, event, design, strata=strata, fit_index=fit_index)
    expected = brute_force_risk_sets(start, stop, event, design, strata, fit_index)

    assert np.all(np.diff(table.fit_index) >= 0) and np.all(np.diff(table.risk_set_index) >= 0)
    # Risk-set ids follow (fit, stratum, time); map them back through the brute-force ordering.
    keys = expected[["fit", "stratum", "time"]].drop_duplicates().reset_index(drop=True)
    got = keys.iloc[table.risk_set_index].reset_index(drop=True)
    got[["x0", "x1"]] = table.design
    got["n_at_risk"] = table.n_at_risk
    got["n_events"] = table.n_events
    assert np.array_equal(got["fit"].to_numpy(), table.fit_index)
    order = ["fit", "stratum", "time", "x0", "x1"]
    pd.testing.assert_frame_equal(
        got.sort_values(order).reset_index(drop=True), expected.sort_values(order).reset_index(drop=True),
        check_dtype=False,
    )


def test_aggregation_input_errors_say_what_to_do() -> None:
    with pytest.raises(CountingProcessError, match="start must be <= stop"):
        aggregate_counting_process([2.0], [1.0], [0], [[1.0]])
    with pytest.raises(CountingProcessError, match="not at risk"):
        aggregate_counting_process([1.0, 0.0], [1.0, 2.0], [1, 1], [[1.0], [0.0]])
    with pytest.raises(CountingProcessError, match="0/1"):
        aggregate_counting_process([0.0], [1.0], [2], [[1.0]])
    with pytest.raises(CountingProcessError, match="finite"):
        aggregate_counting_process([0.0], [np.nan], [1], [[1.0]])
    with pytest.raises(CountingProcessError, match="one entry"):
        aggregate_counting_process([0.0, 0.0], [1.0], [1], [[1.0]])


def test_risk_set_table_validation() -> None:
    good = dict(fit_index=np.array([0, 0, 1]), risk_set_index=np.array([0, 0, 1]), n_at_risk=np.array([2.0, 3.0, 1.0]),
                n_events=np.array([1.0, 0.0, 1.0]), design=np.array([[0.0], [1.0], [1.0]]), n_fits=2)
    RiskSetTable(**good)
    with pytest.raises(RiskSetTableError, match="sorted by"):
        RiskSetTable(**{**good, "fit_index": np.array([1, 1, 0])})
    with pytest.raises(RiskSetTableError, match="shared by two fits"):
        RiskSetTable(**{**good, "risk_set_index": np.array([0, 0, 0])})
    with pytest.raises(RiskSetTableError, match="n_events <= n_at_risk"):
        RiskSetTable(**{**good, "n_events": np.array([3.0, 0.0, 1.0])})
    with pytest.raises(RiskSetTableError, match="n_fits"):
        RiskSetTable(**{**good, "n_fits": 1})
    with pytest.raises(RiskSetTableError, match="design"):
        RiskSetTable(**{**good, "design": np.zeros((2, 1))})
    with pytest.raises(CoxEngineError, match="RiskSetTable"):
        fit_efron(good)  # type: ignore[arg-type]


def factored_copy(table: RiskSetTable, seed: int) -> RiskSetTable:
    """`table` with its covariates as patterns (shuffled, one repeated, one unused) and a row index into them."""
    rng = np.random.default_rng(seed)
    distinct, codes = np.unique(table.design, axis=0, return_inverse=True)
    order = rng.permutation(len(distinct))
    patterns = np.vstack([distinct[order], distinct[order[:1]], np.full((1, table.n_covariates), 7.0)])
    position = np.argsort(order)[codes.reshape(-1)]
    position = np.where((position == 0) & (rng.random(len(position)) < 0.5), len(distinct), position)  # the repeat
    return RiskSetTable.factored(table.fit_index, table.risk_set_index, table.n_at_risk, table.n_events, patterns, position, table.n_fits)


def test_factored_table_fits_bit_for_bit_as_its_design() -> None:
    """A table given as patterns and a row index fits to the same numbers, bit for bit, as the same table with
    its (rows, p) design: the engine numbers its patterns in sorted order either way."""
    rows = _many_cohorts(12)
    design = rows[["exposed", "level_1", "level_2"]].to_numpy()
    table = aggregate_counting_process(rows.start, rows.stop, rows.event, design, strata=rows.stratum.to_numpy(),
                                       fit_index=rows.fit.to_numpy())  # fmt: skip
    factored = factored_copy(table, seed=3)
    np.testing.assert_array_equal(factored.row_design(), table.design)
    for j in range(table.n_covariates):
        np.testing.assert_array_equal(factored.column(j), table.design[:, j])
    dense, split = fit_efron(table), fit_efron(factored)
    assert (dense.status == "ok").sum() >= 10
    for name in ("coef", "se", "loglik", "loglik_null", "n_iter"):
        np.testing.assert_array_equal(getattr(split, name), getattr(dense, name), err_msg=name)
    np.testing.assert_array_equal(fit_efron(factored.with_covariates([0, 2])).coef, fit_efron(table.with_covariates([0, 2])).coef)
    with pytest.raises(RiskSetTableError, match="row_pattern must lie"):
        RiskSetTable.factored(table.fit_index, table.risk_set_index, table.n_at_risk, table.n_events,
                              factored.patterns, factored.row_pattern + len(factored.patterns), table.n_fits)  # fmt: skip
    with pytest.raises(RiskSetTableError, match="give the covariates as design, or as patterns"):
        RiskSetTable(table.fit_index, table.risk_set_index, table.n_at_risk, table.n_events, table.design, table.n_fits,
                     factored.patterns, factored.row_pattern)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Exactness against lifelines on simulated cohorts
# --------------------------------------------------------------------------------------------------

SCENARIOS = {
    # ties at integer times, delayed entry, exposure switching on mid-follow-up; the screen's model.
    "ties_delayed_entry_switching_exposure": dict(
        cohort=dict(n_subjects=1500, seed=11, p_exposed_at_entry=0.0, p_starts_exposure=0.5),
        covariates=["exposed"], strata=None),
    # exposure already on at entry + a 3-level categorical covariate.
    "exposed_at_entry_three_levels": dict(
        cohort=dict(n_subjects=1000, seed=12, p_exposed_at_entry=0.4, p_starts_exposure=0.2),
        covariates=["exposed", "level_1", "level_2"], strata=None),
    # strata, a 4-level covariate and one stratum with zero exposed events.
    "strata_with_stratum_without_exposed_events": dict(
        cohort=dict(n_subjects=2000, seed=13, n_strata=3, n_levels=4, stratum_without_exposed_events=1),
        covariates=["exposed", "level_1", "level_2", "level_3"], strata="stratum"),
    # coarse time: up to ~70 events tied at one time.
    "heavy_ties_coarse_time": dict(
        cohort=dict(n_subjects=3000, seed=77, n_strata=2, max_follow_up=4, delayed_entry=False),
        covariates=["exposed", "level_1", "level_2"], strata="stratum"),
    # exposure only, adjustment by stratification only (the main DWAS screen model), no delayed entry.
    "exposure_only_stratified_no_delayed_entry": dict(
        cohort=dict(n_subjects=3000, seed=14, n_strata=4, delayed_entry=False, log_hr_exposed=-0.3),
        covariates=["exposed"], strata="stratum"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_matches_lifelines(name: str) -> None:
    scenario = SCENARIOS[name]
    rows = simulate_cohort(**scenario["cohort"])
    # The scenario really has the features it claims.
    assert rows.groupby(["stratum", "stop"])["event"].sum().max() > 1  # tied events
    if scenario["cohort"].get("delayed_entry", True):
        assert (rows.groupby("id")["start"].min() > 0).any()
    assert (rows.groupby("id")["exposed"].nunique() == 2).any()  # switching exposure
    if "stratum_without_exposed_events" in scenario["cohort"]:
        exposed_events = rows[rows.exposed == 1].groupby("stratum")["event"].sum()
        assert exposed_events.loc[1] == 0 and exposed_events.drop(1).min() > 0

    result = engine_fit(rows, scenario["covariates"], scenario["strata"])
    assert result.status[0] == "ok" and result.converged[0]
    reference = lifelines_fit(rows, scenario["covariates"], scenario["strata"])
    assert_close_to_reference(deviations(result, reference), f"{name} vs lifelines")


def _many_cohorts(n_fits: int) -> pd.DataFrame:
    cohorts = []
    for fit in range(n_fits):
        rows = simulate_cohort(200 + 40 * fit, seed=100 + fit, n_strata=1 + fit % 3,
                               p_exposed_at_entry=0.1 * (fit % 4), log_hr_exposed=0.2 * (fit % 5) - 0.4)
        rows["fit"] = fit
        cohorts.append(rows)
    return pd.concat(cohorts, ignore_index=True)


def test_many_fits_at_once_equal_separate_fits_and_lifelines(monkeypatch: pytest.MonkeyPatch) -> None:
    n_fits = 24
    rows = _many_cohorts(n_fits)
    covariates = ["exposed", "level_1", "level_2"]
    # Fit 5 has no events; fit 9 has no exposed events (separation).
    rows.loc[rows.fit == 5, "event"] = 0
    rows.loc[(rows.fit == 9) & (rows.exposed == 1), "event"] = 0

    table = aggregate_counting_process(rows.start, rows.stop, rows.event, rows[covariates].to_numpy(),
                                       strata=rows.stratum.to_numpy(), fit_index=rows.fit.to_numpy())
    together = fit_efron(table)
    # Small blocks: the block-wise loop must not change anything either.
    monkeypatch.setattr(coxph, "_BLOCK_ROWS", 64)
    in_blocks = fit_efron(table)
    monkeypatch.undo()

    assert together.status[5] == "no_events" and together.status[9] == "separation"
    assert np.sum(together.status == "ok") == n_fits - 2
    worst = 0.0
    for fit in range(n_fits):
        part = rows[rows.fit == fit]
        alone = fit_efron(aggregate_counting_process(part.start, part.stop, part.event, part[covariates].to_numpy(),
                                                     strata=part.stratum.to_numpy()))
        for result in (together, in_blocks):
            assert result.status[fit] == alone.status[0]
            np.testing.assert_array_equal(result.n_iter[fit], alone.n_iter[0])
            np.testing.assert_allclose(result.coef[fit], alone.coef[0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(result.se[fit], alone.se[0], rtol=1e-12)
            np.testing.assert_allclose(result.loglik[fit], alone.loglik[0], rtol=1e-13)
            if alone.status[0] == "ok":
                worst = max(worst, float(np.max(np.abs(result.coef[fit] - alone.coef[0]))))
    print(f"\n[many fits] {n_fits} fits: max |coef(vectorised) - coef(separate)| = {worst:.1e}")
    for fit in (0, 13, 23):
        part = rows[rows.fit == fit]
        reference = lifelines_fit(part, covariates, "stratum")
        assert_close_to_reference(deviations(together, reference, fit), f"many fits, fit {fit} vs lifelines")


def test_one_covariate_fast_path_gives_identical_numbers() -> None:
    rows = simulate_cohort(1500, seed=21, n_strata=2)
    table = aggregate_counting_process(rows.start, rows.stop, rows.event, rows[["exposed"]].to_numpy(),
                                       strata=rows.stratum.to_numpy())
    row_pattern, patterns = coxph._prepare(table)
    workspace = coxph._Workspace(table, row_pattern, patterns, np.arange(table.n_fits))
    for b in (0.0, 0.35, -3.0):
        fast = coxph._evaluate(workspace, np.array([[b]]), fast_path=True)
        general = coxph._evaluate(workspace, np.array([[b]]), fast_path=False)
        for fast_part, general_part in zip(fast, general, strict=True):
            np.testing.assert_array_equal(fast_part, general_part)


def test_non_integer_at_risk_counts_match_lifelines_weights() -> None:
    """Sampling weights on persons without events (case-cohort style) give non-integer n_at_risk."""
    rows = simulate_cohort(1200, seed=31, n_strata=2)
    rng = np.random.default_rng(32)
    ever_event = rows.groupby("id")["event"].transform("max").to_numpy() == 1
    person_weight = rng.uniform(1.2, 4.0, rows["id"].max() + 1)
    rows["w"] = np.where(ever_event, 1.0, person_weight[rows["id"]])
    # One pattern per weighted person (marker column), then scale its counts by the weight.
    marker = np.where(ever_event, -1, rows["id"]).astype(float)
    covariates = ["exposed", "level_1", "level_2"]
    base = aggregate_counting_process(rows.start, rows.stop, rows.event,
                                      np.column_stack([rows[covariates].to_numpy(), marker]),
                                      strata=rows.stratum.to_numpy())
    marker_of_row = base.design[:, -1].astype(int)
    weight = np.where(marker_of_row < 0, 1.0, person_weight[np.maximum(marker_of_row, 0)])
    table = RiskSetTable(base.fit_index, base.risk_set_index, base.n_at_risk * weight, base.n_events,
                         base.design[:, :-1], base.n_fits)
    assert np.any(table.n_at_risk != np.round(table.n_at_risk))
    result = fit_efron(table)
    reference = lifelines_fit(rows, covariates, "stratum", weights_col="w")
    assert_close_to_reference(deviations(result, reference), "non-integer n_at_risk vs lifelines weights")


def test_fractional_event_mass_efron_generalisation() -> None:
    """Non-integer n_events: steps of weight 1 with a fractional last step, continuous in the counts."""
    def table(n_events_exposed: float) -> RiskSetTable:
        return RiskSetTable(np.array([0, 0, 0, 0]), np.array([0, 0, 1, 1]), np.array([5.0, 4.0, 3.5, 2.5]),
                            np.array([1.0, n_events_exposed, 1.0, 0.0]), np.array([[0.0], [1.0], [0.0], [1.0]]), 1)

    b = 0.3
    e = np.exp(b)
    for mass in (0.4, 1.5, 2.0, 2.75):
        total = 1.0 + mass
        s0, e0 = 5 + 4 * e, 1 + mass * e
        steps = np.arange(np.ceil(total))
        weights = np.minimum(total - steps, 1.0)
        expected = mass * b - np.sum(weights * np.log(s0 - steps / total * e0)) - np.log(3.5 + 2.5 * e)
        assert efron_log_likelihood(table(mass), [b]).loglik[0] == pytest.approx(expected, abs=1e-13)
    # Continuous across integer event mass, where the number of steps changes.
    at = efron_log_likelihood(table(2.0), [b]).loglik[0]
    for eps in (1e-7, -1e-7):
        assert abs(efron_log_likelihood(table(2.0 + eps), [b]).loglik[0] - at) < 1e-5
    result = fit_efron(table(1.5))
    assert result.status[0] == "ok" and np.isfinite(result.se[0, 0])


# --------------------------------------------------------------------------------------------------
# Separation, singular information, no events, non-convergence
# --------------------------------------------------------------------------------------------------


def test_separation_no_exposed_events() -> None:
    rows = simulate_cohort(800, seed=41)
    rows.loc[rows.exposed == 1, "event"] = 0
    result = engine_fit(rows, ["exposed"])
    assert result.status[0] == "separation" and not result.converged[0]
    assert result.infinite_coef[0, 0] and result.coef[0, 0] < -8
    assert np.isfinite(result.se[0, 0]) and np.isfinite(result.loglik[0])
    assert result.loglik[0] > result.loglik_null[0]
    # Also flagged when the iterations are cut short (exact check on the data, not on the iterates).
    assert fit_efron(aggregate_counting_process(rows.start, rows.stop, rows.event, rows[["exposed"]].to_numpy()),
                     max_iter=3).status[0] == "separation"
    # lifelines does not flag it: it returns a large negative coefficient (about -47 with the
    # tightened options; about -24 with a "norm(delta) is still high" ConvergenceWarning by default).
    reference = lifelines_fit(rows, ["exposed"])
    assert reference.params_["exposed"] < -15


def test_separation_all_events_exposed_with_other_covariate() -> None:
    rows = simulate_cohort(800, seed=42)
    rows.loc[rows.exposed == 0, "event"] = 0
    result = engine_fit(rows, ["exposed", "level_1", "level_2"])
    assert result.status[0] == "separation" and not result.converged[0]
    np.testing.assert_array_equal(result.infinite_coef[0], [True, False, False])
    assert result.coef[0, 0] > 8 and np.all(np.abs(result.coef[0, 1:]) < 3)


def test_separation_in_a_categorical_level_only() -> None:
    rows = simulate_cohort(1500, seed=43)
    rows.loc[rows.level == 2, "event"] = 0
    result = engine_fit(rows, ["exposed", "level_1", "level_2"])
    assert result.status[0] == "separation"
    np.testing.assert_array_equal(result.infinite_coef[0], [False, False, True])
    assert result.coef[0, 2] < -8


def test_separation_along_a_combination_of_covariates_is_found_numerically() -> None:
    """Monotone along v = (1, -1) but along no single coordinate: the exact coordinate check cannot see
    it, the iterations must (|coef| large and still moving by a full step while loglik is flat)."""
    patterns = {"00": [0.0, 0.0], "10": [1.0, 0.0], "01": [0.0, 1.0], "11": [1.0, 1.0]}
    risk_sets = [  # (pattern with the event, other patterns at risk); x.v is maximal for every event
        ("10", ["00", "01"]), ("00", ["01"]), ("11", ["01"]),
        ("00", ["11"]),  # event has the smaller x1: not monotone along +e1
        ("11", ["00"]),  # event has the larger x2: not monotone along -e2
    ]
    fit_index, risk_set_index, n_at_risk, n_events, design = [], [], [], [], []
    for k, (event_pattern, others) in enumerate(risk_sets):
        for name in [event_pattern, *others]:
            fit_index.append(0)
            risk_set_index.append(k)
            n_at_risk.append(3.0)
            n_events.append(1.0 if name == event_pattern else 0.0)
            design.append(patterns[name])
    table = RiskSetTable(np.array(fit_index), np.array(risk_set_index), np.array(n_at_risk), np.array(n_events),
                         np.array(design), 1)
    assert not coxph._coordinate_separation(
        coxph._Workspace(table, *coxph._prepare(table), np.array([0]))).any()
    result = fit_efron(table)
    assert result.status[0] == "separation" and not result.converged[0]
    np.testing.assert_array_equal(result.infinite_coef[0], [True, True])
    assert result.coef[0, 0] > 8 and result.coef[0, 1] < -8


def test_singular_information_and_no_events_statuses() -> None:
    rows = simulate_cohort(600, seed=44)
    rows["exposed_copy"] = rows["exposed"]
    result = engine_fit(rows, ["exposed", "exposed_copy"])
    assert result.status[0] == "singular_information" and not result.converged[0]
    assert np.all(np.isnan(result.coef[0])) and np.all(np.isnan(result.se[0]))

    rows["never"] = 0.0
    assert engine_fit(rows, ["never"]).status[0] == "singular_information"

    rows["event"] = 0
    table = aggregate_counting_process(rows.start, rows.stop, rows.event, rows[["exposed"]].to_numpy(), n_fits=2)
    result = fit_efron(table)
    assert list(result.status) == ["no_events", "no_events"] and not np.any(result.converged)
    assert np.all(result.loglik == 0) and np.all(np.isnan(result.coef))


def test_not_converged_and_initial_values() -> None:
    rows = simulate_cohort(1000, seed=45)
    table = aggregate_counting_process(rows.start, rows.stop, rows.event, rows[["exposed", "level_1"]].to_numpy())
    assert fit_efron(table, max_iter=1).status[0] == "not_converged"
    full = fit_efron(table)
    warm = fit_efron(table, initial=full.coef[0])
    assert warm.status[0] == "ok" and warm.n_iter[0] <= 2
    np.testing.assert_allclose(warm.coef, full.coef, atol=1e-10)
    np.testing.assert_allclose(warm.loglik_null, full.loglik_null, rtol=1e-14)
    with pytest.raises(CoxEngineError, match="initial"):
        fit_efron(table, initial=[0.0])


# --------------------------------------------------------------------------------------------------
# R survival::coxph
# --------------------------------------------------------------------------------------------------

R_COHORT = DATA / "coxph_r_cohort.csv"
R_SCRIPT = DATA / "coxph_r_reference.R"
R_REFERENCE = DATA / "coxph_r_reference.csv"
R_MODELS = {
    "exposed_only": (["exposed"], None),
    "exposed_strata": (["exposed"], "stratum"),
    "exposed_level_strata": (["exposed", "level_1", "level_2"], "stratum"),
}


def write_r_cohort(path: Path = R_COHORT) -> None:
    """Regenerate the cohort fitted by coxph_r_reference.R (then rerun the R script)."""
    rows = simulate_cohort(600, seed=20240611, n_strata=2, n_levels=3)
    rows[["id", "start", "stop", "event", "exposed", "level", "stratum"]].to_csv(path, index=False)


def compare_with_r(reference: pd.DataFrame, label: str) -> None:
    cohort = pd.read_csv(R_COHORT)
    for value in (1, 2):
        cohort[f"level_{value}"] = (cohort["level"] == value).astype(float)
    for model, (covariates, strata) in R_MODELS.items():
        expected = reference[reference.model == model]
        assert len(expected) == len(covariates)
        result = engine_fit(cohort, covariates, strata)
        coef_dev = np.max(np.abs(result.coef[0] - expected.coef.to_numpy()))
        se_dev = np.max(np.abs(result.se[0] - expected.se.to_numpy()) / result.se[0])
        loglik_dev = max(abs(result.loglik[0] - expected.loglik.iloc[0]),
                         abs(result.loglik_null[0] - expected.loglik_null.iloc[0]))
        print(f"\n[{label}: {model}] max |d coef| = {coef_dev:.2e}, max |d SE|/SE = {se_dev:.2e}, "
              f"|d loglik| = {loglik_dev:.2e}")
        assert coef_dev <= COEF_ABS_TOL and se_dev <= SE_REL_TOL and loglik_dev <= 1e-6


def test_r_cohort_file_matches_its_generator(tmp_path: Path) -> None:
    write_r_cohort(tmp_path / "cohort.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cohort.csv"), pd.read_csv(R_COHORT))


def test_matches_stored_r_survival_results() -> None:
    compare_with_r(pd.read_csv(R_REFERENCE), "stored R survival")


def test_matches_live_r_survival(tmp_path: Path) -> None:
    reason = r_survival_missing()
    if reason:
        pytest.skip(reason)
    output = tmp_path / "reference.csv"
    subprocess.run(["Rscript", str(R_SCRIPT), str(R_COHORT), str(output)], check=True, capture_output=True,
                   timeout=300)
    live = pd.read_csv(output)
    stored = pd.read_csv(R_REFERENCE)
    np.testing.assert_allclose(live[["coef", "se", "loglik"]], stored[["coef", "se", "loglik"]], rtol=1e-9, atol=1e-12)
    compare_with_r(live, "live R survival")


# --------------------------------------------------------------------------------------------------
# Front end
# --------------------------------------------------------------------------------------------------


def test_fitter_summary_and_data_frame_inputs() -> None:
    rows = simulate_cohort(900, seed=51, n_strata=2)
    covariates = ["exposed", "level_1", "level_2"]
    kwargs = dict(start_col="start", stop_col="stop", event_col="event", covariates=covariates, strata="stratum")
    from_pandas = AggregatedCoxPHFitter().fit_counting_process(rows, **kwargs)
    from_polars = AggregatedCoxPHFitter().fit_counting_process(pl.from_pandas(rows), **kwargs)
    pd.testing.assert_frame_equal(from_pandas.summary, from_polars.summary)

    summary = from_pandas.summary
    assert list(summary.columns) == [
        "fit", "covariate", "coef", "exp(coef)", "se(coef)", "z", "p", "exp(coef) lower 95%",
        "exp(coef) upper 95%", "converged", "n_iter", "status",
    ]
    assert list(summary.covariate) == covariates and set(summary.status) == {"ok"}
    assert from_pandas.params_.shape == (1, 3) and list(from_pandas.params_.columns) == covariates
    reference = lifelines_fit(rows, covariates, "stratum")
    ref_summary = reference.summary
    np.testing.assert_allclose(summary["coef"], ref_summary["coef"], atol=COEF_ABS_TOL)
    np.testing.assert_allclose(summary["p"], ref_summary["p"], rtol=1e-5)
    np.testing.assert_allclose(summary["exp(coef) lower 95%"], ref_summary["exp(coef) lower 95%"], rtol=1e-5)
    np.testing.assert_allclose(summary["exp(coef) upper 95%"], ref_summary["exp(coef) upper 95%"], rtol=1e-5)

    ninety = AggregatedCoxPHFitter(alpha=0.1).fit(from_pandas.table_, covariate_names=covariates).summary
    assert "exp(coef) lower 90%" in ninety.columns
    with pytest.raises(NotFittedError, match="fit"):
        _ = AggregatedCoxPHFitter().summary
    with pytest.raises(CountingProcessError, match="not in the data frame"):
        AggregatedCoxPHFitter().fit_counting_process(rows, **{**kwargs, "covariates": ["nope"]})
    with pytest.raises(CoxEngineError, match="covariate_names"):
        AggregatedCoxPHFitter().fit(from_pandas.table_, covariate_names=["a"])


def test_fitter_many_fits_from_fit_column() -> None:
    rows = _many_cohorts(4)
    fitter = AggregatedCoxPHFitter().fit_counting_process(
        rows, start_col="start", stop_col="stop", event_col="event", covariates=["exposed"], strata="stratum",
        fit_col="fit")
    summary = fitter.summary
    assert list(summary.fit) == [0, 1, 2, 3]
    part = rows[rows.fit == 2]
    reference = lifelines_fit(part, ["exposed"], "stratum")
    assert summary.coef.iloc[2] == pytest.approx(reference.params_["exposed"], abs=COEF_ABS_TOL)


def test_timing_prints_only() -> None:
    """Not an assertion: prints the time of a vectorised fit of many synthetic exposure-only models."""
    rng = np.random.default_rng(61)
    n_fits, n_sets = 400, 2000
    n_rows = n_fits * n_sets * 2
    exposed = np.tile([0.0, 1.0], n_fits * n_sets)
    n_at_risk = np.round(np.where(exposed == 1, 50, 1000) * rng.uniform(0.5, 1.5, n_rows)) + 1
    n_events = np.minimum(rng.poisson(np.where(exposed == 1, 0.1, 1.0)), n_at_risk).astype(float)
    n_events[::2] = np.maximum(n_events[::2], 1.0)
    table = RiskSetTable(np.repeat(np.arange(n_fits), n_sets * 2), np.repeat(np.arange(n_fits * n_sets), 2),
                         n_at_risk, n_events, exposed[:, None], n_fits)
    started = time.perf_counter()
    result = fit_efron(table)
    elapsed = time.perf_counter() - started
    statuses = {str(status): int(count) for status, count in zip(*np.unique(result.status, return_counts=True),
                                                                 strict=True)}
    print(f"\n[timing] fit_efron: {n_fits} fits x {n_sets} risk sets x 2 patterns ({n_rows:,} rows) in "
          f"{elapsed:.2f} s; statuses {statuses}")


def test_factorize_codes_are_the_sorted_distinct_rows() -> None:
    """`factorize` (0/1 columns without hashing, mixed-radix keys across columns) numbers the distinct rows in
    sorted order, as hashing every column with pandas and renumbering after each does."""
    rng = np.random.default_rng(5)
    design = rng.integers(0, 2, (5000, 8)).astype(np.float64)
    design[:, 3] = 1.0  # a constant 1 column
    design[:, 5] = rng.integers(0, 7, 5000) * 0.5
    design[:, 6] = rng.normal(size=5000)  # many levels: renumbered before the key range outgrows a table
    design[:10, 0] = -0.0
    for values in (design, design[:, :1], design[:, 3:4], design[:, [0, 6, 1]], design[:0]):
        codes, n_codes = factorize(values)
        uniques, expected = np.unique(values, axis=0, return_inverse=True)
        assert n_codes == uniques.shape[0]
        assert np.array_equal(codes, expected.reshape(-1))
