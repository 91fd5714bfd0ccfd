"""The exposure-and-categorical-covariates engine (`repurpose.cox.categorical`) equals the general engine
(`fit_efron`) on the same risk sets: estimates, standard errors, log-likelihoods and statuses."""

from __future__ import annotations

import numpy as np
import pytest

from repurpose.cox import categorical
from repurpose.cox.categorical import CellGrid, covariates_only_coef, fit_exposure_and_covariates
from repurpose.cox.engine import fit_efron
from repurpose.cox.risk_set_table import RiskSetTableError


def random_grid(seed: int, cells: list[int], times: list[int], n_fits: int, q: int = 2) -> tuple[CellGrid, np.ndarray, np.ndarray]:
    """A grid of strata with `cells[s]` cells and `times[s]` event times (tied events common), and exposed
    counts of `n_fits` fits consistent with the totals (unexposed events at most the unexposed at risk)."""
    rng = np.random.default_rng(seed)
    design = rng.integers(0, 2, (sum(cells), q)).astype(float)
    total, events = [], []
    for n_cells, n_times in zip(cells, times, strict=True):
        block_events = rng.integers(0, 3, (n_cells, n_times))
        block_events[0] = np.maximum(block_events[0], 1)  # every event time of the stratum has an event
        for c in range(n_cells):
            total.append(rng.integers(4, 40, n_times) + block_events[c])
            events.append(block_events[c])
    total, events = np.concatenate(total).astype(float), np.concatenate(events).astype(float)
    exposed = np.floor(rng.random((n_fits, total.size)) * (total + 1))
    low, high = np.maximum(0, events - (total - exposed)), np.minimum(events, exposed)
    exposed_events = np.minimum(low + np.floor(rng.random((n_fits, total.size)) * (high - low + 1)), high)
    grid, position = CellGrid.from_cell_major(total, events, design, np.r_[0, np.cumsum(cells)],
                                              np.r_[0, np.cumsum(np.repeat(times, cells))])
    order = np.argsort(position)
    return grid, exposed[:, order], exposed_events[:, order]


def assert_same_fits(grid: CellGrid, exposed: np.ndarray, exposed_events: np.ndarray) -> None:
    ours = fit_exposure_and_covariates(grid, exposed, exposed_events, initial_covariates=covariates_only_coef(grid))
    reference = fit_efron(grid.to_risk_set_table(exposed, exposed_events))
    assert ours.status.tolist() == reference.status.tolist()
    ok = ours.status == "ok"
    np.testing.assert_allclose(ours.coef[ok], reference.coef[ok], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.se[ok], reference.se[ok], rtol=1e-9)
    np.testing.assert_allclose(ours.loglik[ok], reference.loglik[ok], rtol=1e-12)
    np.testing.assert_allclose(ours.loglik_null, reference.loglik_null, rtol=1e-12)


@pytest.mark.parametrize(("seed", "cells", "times"), [(1, [3, 4], [7, 5]), (2, [6], [30]), (3, [2, 2, 5], [4, 9, 1])])
def test_equals_general_engine_with_ties_and_strata(seed, cells, times):
    grid, exposed, exposed_events = random_grid(seed, cells, times, n_fits=6)
    assert np.any(grid.n_events > 1)  # tied events in a cell, and across the cells of a risk set
    assert_same_fits(grid, exposed, exposed_events)


@pytest.mark.parametrize(("seed", "cells", "times"), [(1, [3, 4], [7, 5]), (2, [6], [30]), (3, [2, 2, 5], [4, 9, 1])])
def test_covariates_only_model_equals_general_engine(seed, cells, times):
    grid, _, _ = random_grid(seed, cells, times, n_fits=1)
    reference = fit_efron(grid.to_risk_set_table(np.zeros((0, grid.n_rows)), np.zeros((0, grid.n_rows))))
    assert reference.status.tolist() == ["ok"]
    np.testing.assert_allclose(covariates_only_coef(grid), reference.coef[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("seed", "status"), [(4, "ok"), (5, "singular_information")])
def test_start_points_change_no_estimate_or_status(seed, status):
    """Singular information is judged at the start: its null space does not depend on the point."""
    grid, exposed, exposed_events = random_grid(seed, [3, 4], [9, 6], n_fits=5)
    base = fit_exposure_and_covariates(grid, exposed, exposed_events)
    rng = np.random.default_rng(0)
    moved = fit_exposure_and_covariates(grid, exposed, exposed_events, initial_exposure=rng.normal(0, 0.5, 5),
                                        initial_covariates=rng.normal(0, 0.5, (5, grid.design.shape[1])))
    assert moved.status.tolist() == base.status.tolist() == [status] * 5
    assert base.status.tolist() == fit_efron(grid.to_risk_set_table(exposed, exposed_events)).status.tolist()
    np.testing.assert_allclose(moved.coef, base.coef, rtol=0, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(moved.loglik_null, base.loglik_null, rtol=1e-14)


def test_exposure_start_refinement_changes_no_estimate_and_saves_newton_steps(monkeypatch):
    """The exposure's start (`_exposure_start`, Breslow with the covariates held) only moves where Newton
    starts: the same statuses and estimates as without it, in fewer joint evaluations."""
    grid, exposed, exposed_events = random_grid(6, [4, 5], [25, 30], n_fits=8)
    start = covariates_only_coef(grid)
    refined = fit_exposure_and_covariates(grid, exposed, exposed_events, initial_covariates=start)
    monkeypatch.setattr(categorical, "EXPOSURE_START_STEPS", 0)
    plain = fit_exposure_and_covariates(grid, exposed, exposed_events, initial_covariates=start)
    assert refined.status.tolist() == plain.status.tolist() == ["ok"] * 8
    np.testing.assert_allclose(refined.coef, plain.coef, rtol=0, atol=1e-9)
    np.testing.assert_allclose(refined.se, plain.se, rtol=1e-9)
    assert refined.n_iter.sum() < plain.n_iter.sum()


def test_without_covariates_it_is_the_exposure_only_model():
    grid, exposed, exposed_events = random_grid(4, [3, 2], [6, 8], n_fits=4, q=0)
    assert_same_fits(grid, exposed, exposed_events)


def test_separation_and_singular_fits_get_the_engines_status():
    grid, exposed, exposed_events = random_grid(7, [3, 3], [8, 6], n_fits=3)
    exposed_events[0] = 0  # no exposed event anywhere: the exposure's coefficient goes to -infinity
    exposed[0] = np.minimum(exposed[0], grid.n_at_risk - grid.n_events)
    exposed[1] = exposed_events[1] = 0  # nobody exposed: not identifiable
    ours = fit_exposure_and_covariates(grid, exposed, exposed_events)
    reference = fit_efron(grid.to_risk_set_table(exposed, exposed_events))
    assert ours.status.tolist() == reference.status.tolist() == ["separation", "singular_information", "ok"]
    assert ours.infinite_coef[0, 0] and not ours.infinite_coef[0, 1:].any()
    assert_same_fits(grid, exposed[2:], exposed_events[2:])


def test_counts_beyond_the_totals_are_refused():
    grid, exposed, exposed_events = random_grid(6, [2], [5], n_fits=1)
    with pytest.raises(RiskSetTableError, match="exposed counts"):
        fit_exposure_and_covariates(grid, exposed + grid.n_at_risk, exposed_events)
