"""Clone-censor rules on hand-made persons and the inverse-probability-of-censoring weights on a tiny example
worked by hand (docs/methods.md, "Trial emulation: design and estimation")."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest

from repurpose.config import validate_config
from repurpose.trial_emulation.clones import build_clones, censoring_days, fit_censoring_models, weights_from
from repurpose.trial_emulation.cohort import BASELINE_COLUMNS, TIME_VARYING
from repurpose.trial_emulation.protocol import TrialProtocol

INPUTS = {"population": {"path": "p"}, "prescriptions": {"path": "p"}, "ms_registry": {"path": "m"}}


def protocol(**trial) -> TrialProtocol:
    return TrialProtocol.from_config(validate_config({"inputs": INPUTS, "trial_emulation": {"interval_days": 30, **trial}}))


# (first start day, class, follow-up days) of hand-made persons; grace 180 days, intervals of 30
PERSONS = [
    (10, "high_efficacy", 2000),   # 0: HE early: the HE clone complies at 10; the escalation clone is censored at 10
    (100, "moderate", 2000),       # 1: moderate at 100: HE censored at 100; escalation complies
    (None, None, 2000),            # 2: never treated: both censored at the grace end (180)
    (200, "high_efficacy", 2000),  # 3: HE after the grace period: both censored at 180
    (None, None, 50),              # 4: dies untreated at 50: neither censored, both end at 50
    (0, "moderate", 2000),         # 5: moderate on day 0: HE censored at 0; escalation complies at 0
    (180, "high_efficacy", 2000),  # 6: HE on the grace period's last day: complies
]  # fmt: skip


def hand_baseline(persons=PERSONS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A baseline table of identical covariates (so the censoring model is intercept + interval) and its
    grace-period covariates."""
    n = len(persons)
    baseline = pl.DataFrame({
        "person_id": np.arange(1, n + 1), "time_zero": [date(2015, 1, 1)] * n,
        "followup_days": [p[2] for p in persons], "end_date": [date(2020, 1, 1)] * n, "death_day": [None] * n,
        "female": [1.0] * n, "age_years": [30.0] * n, "disease_duration_years": [1.0] * n, "edss": [2.0] * n,
        "relapses_1y": [1] * n, "relapses_2y": [1] * n, "calendar_year": [2015.0] * n, "clinic_id": ["A"] * n,
        "country": ["NO"] * n, "first_start_day": [p[0] for p in persons], "first_class": [p[1] for p in persons],
    }).select(BASELINE_COLUMNS)  # fmt: skip
    grid = baseline.select("person_id").join(pl.DataFrame({"interval": np.arange(6, dtype=np.int32)}), how="cross")
    covariates = grid.with_columns(pl.lit(1).alias("relapses_12m"), pl.lit(1).alias("relapses_24m"), pl.lit(2.0).alias("edss_latest"))
    return baseline, covariates.select("person_id", "interval", *TIME_VARYING)


def test_censoring_rules_on_hand_made_persons():
    first = np.array([np.nan if p[0] is None else p[0] for p in PERSONS], float)
    high = np.array([p[1] == "high_efficacy" for p in PERSONS])
    followup = np.array([p[2] for p in PERSONS], float)
    stop, censored, complies = censoring_days(first, high, followup, 180, high_arm=True)
    assert stop.tolist() == [2000, 100, 180, 180, 50, 0, 2000]
    assert censored.tolist() == [False, True, True, True, False, True, False]
    assert complies.tolist() == [10, np.inf, np.inf, np.inf, np.inf, np.inf, 180]
    stop, censored, complies = censoring_days(first, high, followup, 180, high_arm=False)
    assert stop.tolist() == [10, 2000, 180, 180, 50, 2000, 180]
    assert censored.tolist() == [True, False, True, True, False, False, True]
    assert complies.tolist() == [np.inf, 100, np.inf, np.inf, np.inf, 0, np.inf]


def test_censoring_model_rows_and_estimation_rows():
    baseline, covariates = hand_baseline()
    clones = build_clones(baseline, covariates, protocol())
    n = len(PERSONS)
    assert clones.arm.tolist() == [1] * n + [0] * n

    def model_rows(clone):
        rows = clones.model_clone == clone
        return clones.model_interval[rows].tolist(), clones.model_deviates[rows].astype(int).tolist()

    # high-efficacy clones (0..6)
    assert model_rows(0) == ([0], [0])  # complies in interval 0
    assert model_rows(1) == ([0, 1, 2, 3], [0, 0, 0, 1])  # deviates at day 100 (interval 3)
    assert model_rows(2) == ([0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 1])  # censored at the grace end
    assert model_rows(4) == ([0, 1], [0, 0])  # followed to day 50: intervals 0 and 1, never deviates
    assert model_rows(5) == ([0], [1])  # deviates on day 0
    assert model_rows(6) == ([0, 1, 2, 3, 4, 5], [0] * 6)  # complies on day 180 (last interval)
    # escalation clone of person 1 complies at day 100: interval rows, then its tail
    rows = clones.row_clone == n + 1
    assert clones.row_start[rows].tolist() == [0, 30, 60, 90, 120]
    assert clones.row_stop[rows].tolist() == [30, 60, 90, 120, 2000]
    # no estimation row for the clone censored on day 0, and nothing after a censoring
    assert not np.any(clones.row_clone == 5)
    assert clones.row_stop[clones.row_clone == 1].max() == 100


def test_weights_by_hand():
    baseline, covariates = hand_baseline()
    clones = build_clones(baseline, covariates, protocol())
    n = len(PERSONS)
    p = np.full(len(clones.model_clone), 0.2)
    fit = weights_from(clones, p, 100.0)
    rows = clones.row_clone == n + 1  # escalation clone of person 1: four intervals without deviation, then the tail
    np.testing.assert_allclose(fit.row_weight[rows], [1, 1.25, 1.25**2, 1.25**3, 1.25**4])
    assert fit.final_weight[n + 1] == pytest.approx(1.25**4)
    assert fit.final_weight[4] == pytest.approx(1.25**2)  # followed two intervals
    assert np.isinf(fit.truncation) and fit.n_truncated == 0


def test_pooled_logistic_model_gives_the_interval_proportions_when_covariates_are_equal():
    # With equal covariates the unpenalised model is saturated in the interval: P(deviate in k) = deviations in k /
    # clones at risk in k, per arm. High-efficacy arm: interval 0 has 7 at risk and 1 deviation (person 5);
    # interval 1: persons 1, 2, 3, 4, 6 (5 at risk), none; interval 3: persons 1, 2, 3, 6, one deviation (1);
    # interval 5: persons 2, 3, 6, two deviations.
    baseline, covariates = hand_baseline()
    clones = build_clones(baseline, covariates, protocol())
    p = fit_censoring_models(clones).p_deviate
    he = clones.arm[clones.model_clone] == 1
    for k, expected in ((0, 1 / 7), (1, 0.0), (3, 1 / 4), (5, 2 / 3)):
        got = p[he & (clones.model_interval == k)]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    fit = weights_from(clones, p, 100.0)
    # person 6's HE clone complies on day 180: 1 / ((6/7) x 1 x 1 x (3/4) x 1 x (1/3))
    assert fit.final_weight[6] == pytest.approx(1 / ((6 / 7) * (3 / 4) * (1 / 3)), rel=1e-3)


def test_truncation_caps_the_final_weights_at_the_percentile():
    baseline, covariates = hand_baseline()
    clones = build_clones(baseline, covariates, protocol())
    p = np.where(clones.model_interval == 5, 0.9, 0.1)
    fit = weights_from(clones, p, 50.0)
    kept = ~clones.censored
    assert np.isfinite(fit.truncation)
    assert fit.final_weight[kept].max() == pytest.approx(fit.truncation)
    assert fit.n_truncated >= 1
    assert fit.row_weight.max() <= fit.truncation + 1e-12
