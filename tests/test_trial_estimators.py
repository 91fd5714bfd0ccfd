"""The trial emulation's weighted estimators against lifelines on the same weighted counting-process data
(tolerance 1e-6, the issue's), and by hand on a tiny example."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxTimeVaryingFitter, KaplanMeierFitter

from repurpose.trial_emulation.estimators import (
    SurvivalRows,
    fit_cox,
    kaplan_meier,
    survival_at,
    weighted_rate,
)


def _random_rows(seed: int, n: int = 400) -> pd.DataFrame:
    """Persons split into up to three rows at x.5 boundaries (so no entry time equals an event time: lifelines'
    KaplanMeierFitter counts an entry at t as at risk at t), integer event days with many ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for person in range(n):
        arm = int(rng.random() < 0.45)
        end = float(rng.integers(1, 60))
        event = bool(rng.random() < 0.6)
        cuts = sorted(set(rng.choice([10.5, 20.5, 30.5], size=rng.integers(0, 3), replace=False)) - {end})
        bounds = [0.0, *[c for c in cuts if c < end], end]
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rows.append({"id": person, "arm": arm, "start": a, "stop": b, "event": event and k == len(bounds) - 2,
                         "w": float(rng.uniform(0.5, 3.0))})
    # one long censored person per arm: lifelines' weighted curve does not reach 0 where everyone at risk dies
    rows += [{"id": n + a, "arm": a, "start": 0.0, "stop": 61.0, "event": False, "w": 1.0} for a in (0, 1)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.filterwarnings("ignore::lifelines.exceptions.StatisticalWarning")
def test_weighted_kaplan_meier_matches_lifelines(seed):
    frame = _random_rows(seed)
    rows = SurvivalRows.build(frame["arm"], frame["start"], frame["stop"], frame["event"])
    tables = rows.tables(frame["w"].to_numpy())
    for a in (0, 1):
        ours = kaplan_meier(tables[f"n{a}"], tables[f"d{a}"])
        part = frame[frame["arm"] == a]
        km = KaplanMeierFitter().fit(part["stop"], part["event"], entry=part["start"], weights=part["w"])
        # lifelines' survival_function_ (its survival_function_at_times disagrees with it when entry is given)
        curve = km.survival_function_["KM_estimate"]
        grid = curve.index.to_numpy()
        np.testing.assert_allclose(survival_at(rows.times, ours, grid), curve.to_numpy(), atol=1e-6)
        assert len(grid) > 30


@pytest.mark.parametrize("seed", [3, 4])
def test_weighted_cox_matches_lifelines_time_varying(seed):
    frame = _random_rows(seed)
    rows = SurvivalRows.build(frame["arm"], frame["start"], frame["stop"], frame["event"])
    fit = fit_cox(rows.tables(frame["w"].to_numpy()))
    ctv = CoxTimeVaryingFitter().fit(frame, id_col="id", event_col="event", start_col="start", stop_col="stop",
                                     weights_col="w")
    assert fit.converged
    assert fit.log_hr == pytest.approx(float(ctv.params_["arm"]), abs=1e-6)
    assert fit.log_likelihood == pytest.approx(float(ctv.log_likelihood_), abs=1e-6)


def test_kaplan_meier_and_rates_by_hand():
    # arm 1: rows (0,2] w=2 event, (0,3] w=1, (1,4] w=1 event (entered late). At t=2: n = 2+1+1 = 4, d = 2 ->
    # S = 0.5; at t=4: only (1,4] at risk, n = 1, d = 1 -> S = 0. Arm 0: (0,5] w=3 event -> S(5) = 0.
    rows = SurvivalRows.build([1, 1, 1, 0], [0, 0, 1, 0], [2, 3, 4, 5], [True, False, True, True])
    tables = rows.tables(np.array([2.0, 1.0, 1.0, 3.0]))
    np.testing.assert_allclose(rows.times, [2, 4, 5])
    np.testing.assert_allclose(tables["n1"], [4, 1, 0])
    np.testing.assert_allclose(kaplan_meier(tables["n1"], tables["d1"]), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(survival_at(rows.times, kaplan_meier(tables["n0"], tables["d0"]), [1, 4.9, 5]), [1, 1, 0])
    # rates: arm 1 two relapses over 2 years at weight 2 and none over 1 year at weight 1: 4 / 5
    high, low = weighted_rate(np.array([2, 0, 1]), np.array([2.0, 1.0, 4.0]), np.array([2.0, 1.0, 1.0]), np.array([1, 1, 0]))
    assert high == pytest.approx(4 / 5)
    assert low == pytest.approx(1 / 4)


def test_cox_without_events_in_an_arm_is_flagged_not_nan_silently():
    rows = SurvivalRows.build([1, 0, 0], [0, 0, 0], [2, 3, 4], [False, True, True])
    fit = fit_cox(rows.tables(np.ones(3)))
    assert not fit.converged and np.isnan(fit.log_hr)


def test_survival_without_any_event_is_one():
    """A small registry where an outcome never happens: S = 1 at every time (not an index error)."""
    assert survival_at(np.array([]), np.array([]), 365.0) == 1.0
    assert (survival_at(np.array([]), np.array([]), np.array([0.0, 730.0])) == 1.0).all()
