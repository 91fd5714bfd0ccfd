"""Efron Cox fits of a binary exposure beside categorical covariates, many fits on one grid of risk sets:
the engine of the covariate-adjusted screen.

All fits share the risk sets (each stratum's event times) and the cells (the combinations of the
categorical covariates within a stratum, with design row x_c); a fit is only its exposed counts per cell
and risk set: n1 at risk and d1 with the event (`CellGrid` holds the totals N and D). With cell weights
phi_c = exp(x_c' gamma) and exposed weight e^beta, a risk set's sums are

    S0 = sum_c phi_c (N_c - n1_c + e^beta n1_c),   S1 = (e^beta sum_c phi_c n1_c,  sum_c phi_c x_c (N_c - n1_c + e^beta n1_c)),

i.e. a product of the totals (risk sets x cells, shared) and of the exposed counts (fits x risk sets x
cells) with the (cells x p) matrix [phi, phi x]: per stratum a few batched matrix products per Newton
iteration instead of the general engine's per-row sums over (fit, risk set, cell, exposure) rows. Efron's
tie correction, the log-likelihood, score and information are those of `engine.efron_log_likelihood` on
the equivalent `RiskSetTable` (steps l = 0..D-1 of a tied risk set with denominators S0 - (l/D) E0), and
the Newton rules and statuses are the engine's (`start_newton`, `newton_raphson`, `finish_fits`), which the
tests check on the same data. Imports numpy and the other `repurpose.cox` modules only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from repurpose.cox.engine import (
    EfronDerivatives,
    NewtonArrays,
    finish_fits,
    information_is_singular,
    newton_raphson,
    start_newton,
)
from repurpose.cox.result import CoxFitResult
from repurpose.cox.risk_set_table import (
    CoxEngineError,
    RiskSetTable,
    RiskSetTableError,
    concatenated_ranges,
)

__all__ = ["CellGrid", "covariates_only_coef", "fit_exposure_and_covariates"]


@dataclass(frozen=True)
class CellGrid:
    """The risk sets shared by every fit: one row per (risk set, cell of its stratum), ordered by stratum,
    event time and cell.

    The cells of stratum s are `stratum_cells[s]:stratum_cells[s + 1]` and its rows
    `stratum_rows[s]:stratum_rows[s + 1]`: one block of its cells' rows per event time of the stratum, in
    time order. `design` is (n_cells, q). `from_cell_major` builds it from one row per (cell, event time).
    """

    n_at_risk: np.ndarray
    n_events: np.ndarray
    design: np.ndarray
    stratum_cells: np.ndarray
    stratum_rows: np.ndarray

    def __post_init__(self) -> None:
        cells, rows = np.diff(self.stratum_cells), np.diff(self.stratum_rows)
        if (self.design.shape[0] != self.stratum_cells[-1] or self.stratum_rows[-1] != self.n_rows
                or np.any(rows % np.maximum(cells, 1)) or np.any(rows[cells == 0])):
            raise RiskSetTableError("CellGrid: each stratum needs one row per (event time, cell), and design a row per cell.")
        if np.any(self.n_events > self.n_at_risk) or np.any(self.n_events != np.round(self.n_events)):
            raise RiskSetTableError("CellGrid: events must be whole numbers, at most the number at risk.")

    @classmethod
    def from_cell_major(
        cls, n_at_risk: np.ndarray, n_events: np.ndarray, design: np.ndarray, stratum_cells: np.ndarray,
        cell_rows: np.ndarray,
    ) -> tuple[CellGrid, np.ndarray]:
        """The grid of cell-major rows (cell c's rows `cell_rows[c]:cell_rows[c + 1]`, one per event time of
        its stratum), and the grid row of each cell-major row."""
        order = []
        for first, end in zip(stratum_cells[:-1].tolist(), stratum_cells[1:].tolist(), strict=True):
            n_times = int(cell_rows[first + 1] - cell_rows[first]) if end > first else 0
            order.append(np.arange(cell_rows[first], cell_rows[end]).reshape(end - first, n_times).T.ravel())
        order = np.concatenate(order).astype(np.int64)
        position = np.empty_like(order)
        position[order] = np.arange(order.shape[0])
        stratum_rows = cell_rows[stratum_cells]
        return cls(n_at_risk[order], n_events[order], design, stratum_cells, stratum_rows), position

    @property
    def n_rows(self) -> int:
        return int(self.n_at_risk.shape[0])

    def strata(self) -> list[tuple[int, int, int, int]]:
        """(first cell, end cell, first row, end row) of each stratum."""
        return list(zip(self.stratum_cells[:-1].tolist(), self.stratum_cells[1:].tolist(),
                        self.stratum_rows[:-1].tolist(), self.stratum_rows[1:].tolist(), strict=True))

    @cached_property
    def _blocks(self) -> tuple[list[_Stratum], np.ndarray]:
        """The strata shaped for the fits and the covariates' monotone-likelihood rule (fit-independent), worked
        out once per grid: every fit block of a screen shares them."""
        blocks = _strata(self)
        return blocks, _covariate_separation(self, blocks)

    def to_risk_set_table(self, exposed_at_risk: np.ndarray, exposed_events: np.ndarray) -> RiskSetTable:
        """The fits (`exposed_*` of shape (n_fits, n_rows)) as a general `RiskSetTable` (design: exposure,
        then the covariates); with no fits, the covariates-only model (one fit, design: the covariates)."""
        covariates_only = exposed_at_risk.shape[0] == 0
        n_fits = max(exposed_at_risk.shape[0], 1)
        cell, risk_set, first_set = [], [], 0
        for first, end, first_row, end_row in self.strata():
            n_times = (end_row - first_row) // max(end - first, 1)
            cell.append(np.tile(np.arange(first, end), n_times))
            risk_set.append(np.repeat(np.arange(first_set, first_set + n_times), end - first))
            first_set += n_times
        cell, risk_set = np.concatenate(cell), np.concatenate(risk_set)
        x = self.design[cell]
        parts = []
        for fit in range(n_fits):
            if covariates_only:
                rows = [(self.n_at_risk, self.n_events, x)]
            else:
                n1, d1 = exposed_at_risk[fit], exposed_events[fit]
                rows = [(self.n_at_risk - n1, self.n_events - d1, np.column_stack([np.zeros(len(cell)), x])),
                        (n1, d1, np.column_stack([np.ones(len(cell)), x]))]
            for at_risk, died, design in rows:
                parts.append((np.full(len(cell), fit), risk_set + fit * first_set, at_risk, died, design))
        fit_index, risk_set_index, at_risk, died, design = (np.concatenate(p) for p in zip(*parts, strict=True))
        keep = np.lexsort((risk_set_index, fit_index))
        keep = keep[at_risk[keep] > 0]
        return RiskSetTable(fit_index[keep], risk_set_index[keep], at_risk[keep], died[keep], design[keep], n_fits)


def covariates_only_coef(grid: CellGrid, max_iter: int = 50, tol: float = 1e-9) -> np.ndarray:
    """The covariates-only model's coefficients (q,); zeros where not estimable. With nobody exposed the
    exposure's terms vanish, so its derivatives are the covariates' block of `_derivatives` at exposure 0."""
    q = grid.design.shape[1]
    if q == 0:
        return np.zeros(0)
    strata, _ = grid._blocks
    nobody = _Exposed.of(strata, np.zeros((1, grid.n_rows)), np.zeros((1, grid.n_rows)))

    def at(gamma: np.ndarray) -> EfronDerivatives:
        d = _derivatives(grid, strata, nobody, np.column_stack([np.zeros(gamma.shape[0]), gamma]))
        return EfronDerivatives(d.loglik, d.score[:, 1:], d.information[:, 1:, 1:], d.information_positive_diag[:, 1:])

    start = at(np.zeros((1, q)))
    if information_is_singular(start)[0]:
        return np.zeros(q)
    one = np.zeros(1, dtype=np.int64)
    newton = start_newton(np.zeros((1, q)), start.loglik, start.score, start.information, one)

    def evaluate(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        d = at(newton.trial[active])
        return active, d.loglik, d.score, d.information

    newton_raphson(newton, one, evaluate, max_iter, tol)
    coef = newton.beta[0]
    return coef if newton.converged[0] and np.all(np.isfinite(coef)) else np.zeros(q)


@dataclass(frozen=True)
class _Stratum:
    """One stratum's slice of the grid, shaped (event times, cells), with its tied event times' Efron steps."""

    cells: slice
    rows: slice
    n_times: int
    n_cells: int
    total: np.ndarray  # (R, K)
    events: np.ndarray  # (R, K)
    tied: np.ndarray  # event times with more than one event
    step_tie: np.ndarray  # per Efron step l >= 1 of the tied times: which tied time (step 0 is the untied sum)
    step_frac: np.ndarray  # l / D
    tie_starts: np.ndarray  # first step of each tied time


def _strata(grid: CellGrid) -> list[_Stratum]:
    strata = []
    for first, end, first_row, end_row in grid.strata():
        n_cells = end - first
        n_times = (end_row - first_row) // max(n_cells, 1)
        rows = slice(first_row, end_row)
        total = grid.n_at_risk[rows].reshape(n_times, n_cells)
        events = grid.n_events[rows].reshape(n_times, n_cells)
        per_time = events.sum(axis=1)
        tied = np.flatnonzero(per_time > 1)
        n_steps = per_time[tied].astype(np.int64) - 1
        step_tie = np.repeat(np.arange(tied.shape[0]), n_steps)
        step_l = concatenated_ranges(np.ones_like(n_steps), n_steps).astype(np.float64)
        strata.append(_Stratum(slice(first, end), rows, n_times, n_cells, total, events, tied, step_tie,
                               step_l / per_time[tied][step_tie], np.cumsum(n_steps) - n_steps))
    return strata


@dataclass(frozen=True)
class _Exposed:
    """Fits' exposed counts as `_derivatives` reads them, the point-free parts worked out once per fit block: the
    exposed at risk n1 (F, n_rows), the exposed events per fit, and per stratum the exposed events at its tied
    event times (F, tied times, cells)."""

    n1: np.ndarray
    observed: np.ndarray
    tied_events: list[np.ndarray]

    @classmethod
    def of(cls, strata: list[_Stratum], n1: np.ndarray, d1: np.ndarray) -> _Exposed:
        tied = [d1[:, s.rows].reshape(-1, s.n_times, s.n_cells)[:, s.tied, :] for s in strata]
        return cls(n1, d1.sum(axis=1), tied)

    def subset(self, fits: np.ndarray) -> _Exposed:
        return _Exposed(self.n1[fits], self.observed[fits], [d[fits] for d in self.tied_events])


def _derivatives(grid: CellGrid, strata: list[_Stratum], exposed: _Exposed, theta: np.ndarray) -> EfronDerivatives:
    """Efron log-likelihood, score and information of the fits with exposed counts `exposed` at theta (F, p)."""
    n1 = exposed.n1
    n_fits, p = theta.shape
    design = grid.design
    beta, gamma = theta[:, 0], theta[:, 1:]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        eta_cell = gamma @ design.T
        # Weights divided through by e^shift (<= 1, no overflow); the shift returns in the log-likelihood only.
        shift_cell = eta_cell.max(axis=1) if design.shape[0] else np.zeros(n_fits)
        shift_beta = np.maximum(beta, 0.0)
        phi = np.exp(eta_cell - shift_cell[:, None])
        e1, e0 = np.exp(beta - shift_beta), np.exp(-shift_beta)
        gain = (e1 - e0)[:, None]
        # Per cell, the weights of a person in the sums [S0, S1_exposure, S1_covariates] (F, C, 1 + p): an
        # unexposed person counts e0 phi (1, 0, x), an exposed one e1 phi (1, 1, x). So the sums of a risk
        # set are totals @ unexposed_weights + exposed counts @ (exposed - unexposed weights).
        phi_x = phi[:, :, None] * design[None]
        unexposed_weights = np.concatenate([phi[:, :, None], np.zeros(phi.shape)[:, :, None], phi_x], axis=2)
        unexposed_weights *= e0[:, None, None]
        exposed_extra = np.concatenate([phi[:, :, None], phi[:, :, None], phi_x], axis=2)
        exposed_extra *= gain[:, :, None]
        exposed_extra[:, :, 1] = e1[:, None] * phi
        observed_exposed = exposed.observed
        loglik = beta * observed_exposed + gamma @ _observed_covariates(grid, strata) \
            - grid.n_events.sum() * (shift_cell + shift_beta)
        expected_exposed = np.zeros(phi.shape)
        expected_unexposed = np.zeros(phi.shape)
        information_negative = np.zeros((n_fits, p, p))

        def sums(shared: np.ndarray, exposed_counts: np.ndarray, cells: slice) -> tuple[np.ndarray, np.ndarray]:
            """S0 (F, R) and S1 (F, R, p) of the totals `shared` (R, K) with exposed counts (F, R, K)."""
            both = np.matmul(shared[None], unexposed_weights[:, cells])
            both += np.matmul(exposed_counts, exposed_extra[:, cells])
            return both[:, :, 0], both[:, :, 1:]

        for s, tied_events in zip(strata, exposed.tied_events, strict=True):
            n = n1[:, s.rows].reshape(n_fits, s.n_times, s.n_cells)
            s0, s1 = sums(s.total, n, s.cells)
            a0 = 1.0 / s0
            b0 = a0 / s0
            log_s = np.log(s0)
            if s.tied.size:
                d = tied_events
                tie_events = s.events[s.tied]
                e_0, e_1 = sums(tie_events, d, s.cells)
                denominator = s0[:, s.tied][:, s.step_tie] - s.step_frac * e_0[:, s.step_tie]
                over = 1.0 / denominator
                over2 = over * over
                frac = s.step_frac

                def per_tie(values: np.ndarray) -> np.ndarray:
                    return np.add.reduceat(values, s.tie_starts, axis=1)  # noqa: B023

                # Step l = 0 of a tied time is the untied sum already in a0, b0 and log_s (and adds nothing to
                # the frac-weighted sums): only the steps l >= 1 are added.
                a0[:, s.tied] += per_tie(over)
                a1 = per_tie(frac * over)
                b0[:, s.tied] += per_tie(over2)
                b1, b2 = per_tie(frac * over2), per_tie(frac * frac * over2)
                log_s[:, s.tied] += per_tie(np.log(denominator))
                # Event-weight terms of the expected events and of the information (tied times only).
                sum_a1_d = np.matmul(a1[:, None, :], d)[:, 0, :]  # (F, K)
                expected_exposed[:, s.cells] -= sum_a1_d
                expected_unexposed[:, s.cells] -= a1 @ tie_events - sum_a1_d
                s1_tied = s1[:, s.tied, :]
                # sum b2 e_1 e_1' - b1 (s1 e_1' + e_1 s1'): the cross term once, with its transpose.
                cross = np.matmul(s1_tied.transpose(0, 2, 1), b1[:, :, None] * e_1)
                information_negative += np.matmul(e_1.transpose(0, 2, 1), b2[:, :, None] * e_1)
                information_negative -= cross + cross.transpose(0, 2, 1)
            loglik -= log_s.sum(axis=1)
            sum_a0_n = np.matmul(a0[:, None, :], n)[:, 0, :]  # (F, K)
            expected_exposed[:, s.cells] += sum_a0_n
            expected_unexposed[:, s.cells] += a0 @ s.total - sum_a0_n
            information_negative += np.matmul(s1.transpose(0, 2, 1), b0[:, :, None] * s1)
        expected_exposed *= phi * e1[:, None]
        expected_unexposed *= phi * e0[:, None]
        expected_cell = expected_exposed + expected_unexposed
        score = np.empty((n_fits, p))
        score[:, 0] = observed_exposed - expected_exposed.sum(axis=1)
        score[:, 1:] = _observed_covariates(grid, strata)[None] - expected_cell @ design
        information_positive = np.empty((n_fits, p, p))
        information_positive[:, 0, 0] = expected_exposed.sum(axis=1)
        information_positive[:, 0, 1:] = information_positive[:, 1:, 0] = expected_exposed @ design
        information_positive[:, 1:, 1:] = np.einsum("fc,ci,cj->fij", expected_cell, design, design)
        information = information_positive - information_negative
        information = 0.5 * (information + np.swapaxes(information, 1, 2))
    return EfronDerivatives(loglik, score, information, np.diagonal(information_positive, axis1=1, axis2=2).copy())


def _observed_covariates(grid: CellGrid, strata: list[_Stratum]) -> np.ndarray:
    """Sum of the covariates over all events (q,): the same for every fit."""
    per_cell = np.zeros(grid.design.shape[0])
    for s in strata:
        per_cell[s.cells] = s.events.sum(axis=0)
    return per_cell @ grid.design


def _covariate_separation(grid: CellGrid, strata: list[_Stratum]) -> np.ndarray:
    """(q,) bool: the covariates' part of `_separation`'s rule, which no fit's exposed counts change."""
    q = grid.design.shape[1]
    varies, not_top, not_bottom = np.zeros(q, dtype=bool), np.zeros(q, dtype=bool), np.zeros(q, dtype=bool)
    for s in strata:
        x = grid.design[s.cells][None]  # (1, K, q); the cells' x do not depend on exposure
        at_risk, with_event = (s.total > 0)[:, :, None], (s.events > 0)[:, :, None]
        x_max, x_min = np.where(at_risk, x, -np.inf).max(axis=1), np.where(at_risk, x, np.inf).min(axis=1)
        event_max, event_min = np.where(with_event, x, -np.inf).max(axis=1), np.where(with_event, x, np.inf).min(axis=1)
        varies |= (x_min < x_max).any(axis=0)
        not_top |= (event_min < x_max).any(axis=0)
        not_bottom |= (event_max > x_min).any(axis=0)
    return varies & (~not_top | ~not_bottom)


def _separation(grid: CellGrid, strata: list[_Stratum], covariates: np.ndarray, n1: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """(F, p) bool: the likelihood increases without bound along +e_j or -e_j (exact, data only), by the rule
    of `engine.fit_efron`: x_j varies in some risk set, and every event has the largest x_j of its risk
    set, or every event the smallest. Every grid risk set has events. The covariates' part, the same for
    every fit, is `covariates` (`_covariate_separation`)."""
    n_fits = n1.shape[0]
    varies = np.zeros(n_fits, dtype=bool)
    not_top = np.zeros(n_fits, dtype=bool)
    not_bottom = np.zeros(n_fits, dtype=bool)
    for s in strata:
        # Per risk set: someone exposed (unexposed) at risk, an exposed (unexposed) event, from the sums.
        exposed = n1[:, s.rows].reshape(n_fits, s.n_times, s.n_cells).sum(axis=2)
        exposed_events = d1[:, s.rows].reshape(n_fits, s.n_times, s.n_cells).sum(axis=2)
        any_exposed, any_unexposed = exposed > 0, s.total.sum(axis=1) - exposed > 0
        varies |= (any_exposed & any_unexposed).any(axis=1)
        not_top |= ((s.events.sum(axis=1) - exposed_events > 0) & any_exposed).any(axis=1)
        not_bottom |= ((exposed_events > 0) & any_unexposed).any(axis=1)
    exposure = varies & (~not_top | ~not_bottom)
    return np.column_stack([exposure, np.broadcast_to(covariates, (n_fits, covariates.shape[0]))])


EXPOSURE_START_STEPS = 3
"""Newton steps of the exposure's start refinement (`_exposure_start`); 0 turns it off."""


def _evaluator(
    grid: CellGrid, strata: list[_Stratum], exposed: _Exposed, newton: NewtonArrays
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`newton_raphson`'s evaluation at the trial points of the active fits: the fits' counts are copied only
    when fewer are left (copying the rows left costs less than evaluating the others)."""
    current = {"fits": np.arange(exposed.n1.shape[0]), "exposed": exposed}

    def evaluate(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if active.size < current["fits"].size:
            current.update(fits=active, exposed=exposed.subset(active))
        fits = current["fits"]
        derivs = _derivatives(grid, strata, current["exposed"], newton.trial[fits])
        in_active = np.isin(fits, active, assume_unique=True)
        return fits[in_active], derivs.loglik[in_active], derivs.score[in_active], derivs.information[in_active]

    return evaluate


def _exposure_start(grid: CellGrid, strata: list[_Stratum], exposed: _Exposed, start: np.ndarray) -> np.ndarray:
    """(F,) A start for the exposure nearer the joint maximum than `start`'s (F, 1 + q): the maximum in the
    exposure alone, with the covariates held at `start`'s, of the Breslow likelihood (a start only: the joint
    Newton then reaches the same Efron maximum, in fewer of its costly evaluations). With the covariates held,
    a risk set's sums are S0 = B + (e^beta - 1) A, S1 = e^beta A with A, B the cell weights' sums over its
    exposed and over all at risk: per (fit, risk set), worked out once, so each step costs (fits x risk sets),
    not (fits x risk sets x cells). A fit whose steps run off keeps `start`'s exposure."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        eta = start[:, 1:] @ grid.design.T
        phi = np.exp(eta - eta.max(axis=1, keepdims=True))
        at_risk, total, events = [], [], []
        for s in strata:
            weights = phi[:, s.cells]
            at_risk.append(np.matmul(exposed.n1[:, s.rows].reshape(-1, s.n_times, s.n_cells), weights[:, :, None])[:, :, 0])
            total.append(weights @ s.total.T)
            events.append(s.events.sum(axis=1))
        at_risk, total, events = np.concatenate(at_risk, axis=1), np.concatenate(total, axis=1), np.concatenate(events)
        beta = start[:, 0].copy()
        for _ in range(EXPOSURE_START_STEPS):
            e1 = np.exp(beta)[:, None]
            share = e1 * at_risk / (total + (e1 - 1.0) * at_risk)
            score = exposed.observed - share @ events
            information = (share * (1.0 - share)) @ events
            beta = beta + np.clip(score / information, -1.0, 1.0)
    return np.where(np.isfinite(beta) & (np.abs(beta) < 10.0), beta, start[:, 0])


def fit_exposure_and_covariates(
    grid: CellGrid,
    exposed_at_risk: np.ndarray,
    exposed_events: np.ndarray,
    *,
    initial_covariates: np.ndarray | None = None,
    initial_exposure: np.ndarray | None = None,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> CoxFitResult:
    """Fit every model (exposure, then the grid's covariates) whose exposed counts per grid row are the
    rows of `exposed_at_risk` and `exposed_events` (n_fits, n_rows), by Newton-Raphson with step halving.

    Same likelihood, rules, statuses and result layout as `engine.fit_efron` on
    `grid.to_risk_set_table(exposed_at_risk, exposed_events)`; the status and null log-likelihood come from
    the point 0, and Newton starts from exposure `initial_exposure` (n_fits,) or 0 and covariates
    `initial_covariates` ((q,) or (n_fits, q); e.g. the covariates-only model, `covariates_only_coef`), close
    to most fits' maximum, its exposure first refined by `_exposure_start`: the maximum found does not depend
    on the start (to the tolerance).
    """
    n1 = np.asarray(exposed_at_risk, dtype=np.float64)
    d1 = np.asarray(exposed_events, dtype=np.float64)
    if n1.ndim != 2 or n1.shape[1] != grid.n_rows or d1.shape != n1.shape:
        raise CoxEngineError(f"exposed counts must have shape (n_fits, {grid.n_rows}); got {n1.shape}, {d1.shape}.")
    if np.any(n1 < 0) or np.any(d1 > n1) or np.any(n1 > grid.n_at_risk) or np.any(d1 > grid.n_events):
        raise RiskSetTableError("exposed counts must lie in [0, total] and events at most the exposed at risk.")
    n_fits, p = n1.shape[0], 1 + grid.design.shape[1]
    strata, covariate_separation = grid._blocks
    n_events = np.full(n_fits, float(grid.n_events.sum()))
    status = np.full(n_fits, "ok", dtype="<U20")
    status[~(n_events > 0)] = "no_events"
    fits = np.flatnonzero(n_events > 0)
    zeros = np.zeros((n_fits, p))
    if fits.size == 0:
        newton = start_newton(zeros, np.zeros(n_fits), zeros.copy(), np.zeros((n_fits, p, p)), fits)
        return finish_fits(newton, status, fits, fits, np.zeros((n_fits, p), dtype=bool), np.zeros(n_fits), n_events)
    # At 0 every weight is 1, so the log-likelihood there is that of the totals alone: one evaluation serves
    # every fit. Singular information is judged at the start instead of at 0: the information sums
    # covariances over the risk sets with positive weights, so its null space is the same at every point.
    no_fit = np.zeros((1, grid.n_rows))
    loglik_null = np.full(n_fits, _derivatives(grid, strata, _Exposed.of(strata, no_fit, no_fit), np.zeros((1, p))).loglik[0])
    beta = zeros.copy()
    if initial_covariates is not None and p > 1:
        beta[:, 1:] = initial_covariates
    if initial_exposure is not None:
        beta[:, 0] = initial_exposure
    exposed = _Exposed.of(strata, n1, d1)
    if p > 1 and EXPOSURE_START_STEPS:
        beta[:, 0] = _exposure_start(grid, strata, exposed, beta)
    start = _derivatives(grid, strata, exposed, beta)
    singular = np.flatnonzero(information_is_singular(start))
    status[singular] = "singular_information"
    active = np.setdiff1d(fits, singular)
    newton = start_newton(beta, start.loglik.copy(), start.score.copy(), start.information.copy(), active)
    newton_raphson(newton, active, _evaluator(grid, strata, exposed, newton), max_iter, tol)
    separation = _separation(grid, strata, covariate_separation, n1, d1)
    return finish_fits(newton, status, fits, singular, separation, loglik_null, n_events)
