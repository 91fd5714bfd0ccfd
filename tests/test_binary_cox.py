"""The binary-exposure Efron engine (repurpose.cox.binary) against the general engine and hand calculations."""

from __future__ import annotations

import numpy as np
import pytest

from repurpose.cox.binary import BinaryRiskSets, fit_binary_efron
from repurpose.cox.engine import fit_efron
from repurpose.cox.risk_set_table import CoxEngineError, RiskSetTableError


def random_risk_sets(seed: int, n_fits: int = 40, log_hr: float = 0.4) -> BinaryRiskSets:
    """Fits with 5-60 risk sets each; ties (up to 4 events), risk sets without events, rare and common
    exposure, planted log HRs."""
    rng = np.random.default_rng(seed)
    rows = []
    for fit in range(n_fits):
        n_sets = int(rng.integers(5, 60))
        exposed = rng.integers(0, rng.choice([3, 30, 300]), size=n_sets)
        unexposed = rng.integers(1, 2_000, size=n_sets)
        events = rng.choice([0, 1, 1, 1, 2, 3, 4], size=n_sets)
        events = np.minimum(events, exposed + unexposed)
        share = exposed * np.exp(log_hr * (fit % 5 - 2)) / (unexposed + exposed * np.exp(log_hr * (fit % 5 - 2)))
        exposed_events = np.minimum(rng.binomial(events, share), exposed)
        unexposed_events = np.minimum(events - exposed_events, unexposed)
        rows.append(np.column_stack([np.full(n_sets, fit), exposed, unexposed, exposed_events, unexposed_events]))
    data = np.concatenate(rows)
    return BinaryRiskSets(data[:, 0], data[:, 1], data[:, 2], data[:, 3], data[:, 4], n_fits)


def assert_same_as_general(table: BinaryRiskSets) -> None:
    fast = fit_binary_efron(table)
    general = fit_efron(table.to_risk_set_table())
    np.testing.assert_array_equal(fast.status, general.status)
    np.testing.assert_array_equal(fast.converged, general.converged)
    np.testing.assert_array_equal(fast.infinite_coef, general.infinite_coef)
    ok = general.status == "ok"
    np.testing.assert_allclose(fast.coef[ok], general.coef[ok], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.se[ok], general.se[ok], rtol=1e-9)
    np.testing.assert_allclose(fast.loglik, general.loglik, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(fast.loglik_null, general.loglik_null, rtol=1e-10, atol=1e-8)
    np.testing.assert_array_equal(fast.n_iter[ok], general.n_iter[ok])
    np.testing.assert_allclose(fast.n_events, general.n_events)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_general_engine_with_ties(seed: int) -> None:
    table = random_risk_sets(seed)
    events = table.n_exposed_events + table.n_unexposed_events
    assert (events > 1).any() and (events == 0).any()  # Efron ties and event-free risk sets are exercised
    assert_same_as_general(table)
    statuses = fit_binary_efron(table).status
    assert (statuses == "ok").sum() >= 15 and (statuses == "separation").any()


def test_statuses_match_general_engine() -> None:
    # fit 0: no events; 1: exposure never varies (nobody unexposed); 2: all events exposed (+inf);
    # 3: no exposed events (-inf); 4: ordinary.
    fit = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4])
    n1 = np.array([3, 4, 5, 6, 3, 2, 7, 8, 10, 12, 9])
    n0 = np.array([9, 9, 0, 0, 20, 30, 40, 50, 50, 60, 70])
    d1 = np.array([0, 0, 1, 1, 1, 2, 0, 0, 1, 0, 1])
    d0 = np.array([0, 0, 0, 0, 0, 0, 1, 2, 1, 1, 0])
    table = BinaryRiskSets(fit, n1, n0, d1, d0, 5)
    result = fit_binary_efron(table)
    assert list(result.status) == ["no_events", "singular_information", "separation", "separation", "ok"]
    assert result.infinite_coef[2, 0] and result.infinite_coef[3, 0]
    assert result.coef[2, 0] > 8 and result.coef[3, 0] < -8
    assert_same_as_general(table)


def test_single_risk_set_by_hand() -> None:
    # Two risk sets of 4 exposed and 16 unexposed, no ties; the event is exposed in the first, unexposed in
    # the second: log L(b) = b - 2 log(16 + 4 e^b).
    table = BinaryRiskSets([0, 0], [4, 4], [16, 16], [1, 0], [0, 1], 1)
    result = fit_binary_efron(table)
    # Score: 1 - 2 p(b) = 0 with p = 4 e^b / (16 + 4 e^b) -> e^b = 4: b = log 4.
    assert result.coef[0, 0] == pytest.approx(np.log(4.0), abs=1e-10)
    # Information 2 p (1 - p) at p = 1/2 -> 1/2, so se = sqrt(2).
    assert result.se[0, 0] == pytest.approx(np.sqrt(2.0), rel=1e-9)


def test_efron_ties_by_hand() -> None:
    # One risk set with 2 tied events (1 exposed, 1 unexposed), 2 exposed and 3 unexposed at risk, beside a
    # set that keeps the MLE finite. Efron: log(2e^b + 3) + log(1.5 e^b + 2.5) at the tied set.
    table = BinaryRiskSets([0, 0], [2, 5], [3, 5], [1, 0], [1, 1], 1)
    result = fit_binary_efron(table)
    b = result.coef[0, 0]
    score = 1 - (2 * np.exp(b) / (2 * np.exp(b) + 3) + 1.5 * np.exp(b) / (1.5 * np.exp(b) + 2.5)) - (
        5 * np.exp(b) / (5 * np.exp(b) + 5)
    )
    assert score == pytest.approx(0.0, abs=1e-8)  # converged: predicted gain <= 1e-9
    loglik = b - np.log(2 * np.exp(b) + 3) - np.log(1.5 * np.exp(b) + 2.5) - np.log(5 * np.exp(b) + 5)
    assert result.loglik[0] == pytest.approx(loglik, rel=1e-12)


def test_bad_input_is_refused() -> None:
    with pytest.raises(RiskSetTableError, match="sorted"):
        BinaryRiskSets([1, 0], [1, 1], [1, 1], [0, 0], [1, 1], 2)
    with pytest.raises(RiskSetTableError, match="lie in"):
        BinaryRiskSets([0, 2], [1, 1], [1, 1], [0, 0], [1, 1], 2)
    with pytest.raises(RiskSetTableError, match="exceed"):
        BinaryRiskSets([0], [1], [1], [2], [0], 1)
    with pytest.raises(RiskSetTableError, match="whole numbers"):
        BinaryRiskSets([0], [2], [1], [0.5], [1], 1)
    with pytest.raises(RiskSetTableError, match="non-negative"):
        BinaryRiskSets([0], [-1], [1], [0], [1], 1)
    with pytest.raises(CoxEngineError, match="BinaryRiskSets"):
        fit_binary_efron("not a table")  # type: ignore[arg-type]


def test_no_stall_at_national_scale_risk_sets() -> None:
    """40,000 risk sets of ~1 M persons per fit: log L ~ -5e5, so a last Newton step's true gain (~1e-9) is
    below the rounding of log L. Such a step must not be taken for a decrease (halving until giving up):
    every fit converges in a handful of iterations. (Without the rounding slack one fit took 23.)"""
    rng = np.random.default_rng(1)
    n_fits, n_sets = 20, 40_000
    n1 = rng.integers(100, 3000, n_fits * n_sets).astype(float)
    n0 = rng.integers(500_000, 2_000_000, n_fits * n_sets).astype(float)
    d1 = (rng.random(n_fits * n_sets) < n1 / (n0 + n1)).astype(float)
    table = BinaryRiskSets(np.repeat(np.arange(n_fits), n_sets), n1, n0, d1, 1 - d1, n_fits)
    result = fit_binary_efron(table)
    assert (result.status == "ok").all()
    assert result.n_iter.max() <= 6
    score = d1.reshape(n_fits, n_sets).sum(axis=1) - (
        n1 * np.exp(np.repeat(result.coef[:, 0], n_sets)) / (n0 + n1 * np.exp(np.repeat(result.coef[:, 0], n_sets)))
    ).reshape(n_fits, n_sets).sum(axis=1)
    assert np.abs(score / np.sqrt(result.se[:, 0] ** -2)).max() < 1e-3  # within 0.001 SE of the root
