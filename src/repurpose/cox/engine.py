"""Exact Cox proportional-hazards fits (Efron ties) on aggregated risk sets, many fits at once.

Owns: the Efron partial likelihood, score and information of every fit of a `RiskSetTable`
(`efron_log_likelihood`) and their maximisation by vectorised Newton-Raphson with step halving
(`fit_efron`), with the Newton rules shared by the binary fast path (`repurpose.cox.binary`), the
exposure-and-categorical-covariates path (`repurpose.cox.categorical`) and the coordinator of the
distributed fit (`NewtonArrays`, `accept_or_halve`, `start_newton`, `newton_raphson`,
`information_is_singular`, `finish_fits`). The table is built by `repurpose.cox.risk_set_table`; the fit result and its Wald summary
are `repurpose.cox.result`. Imports numpy, scipy.sparse (on first use) and the other `repurpose.cox` modules
only. See
``docs/cox_engine.md`` for the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from repurpose.cox.result import CoxFitResult, cox_fit_result, scaled_eigh
from repurpose.cox.risk_set_table import (
    CoxEngineError,
    RiskSetTable,
    RiskSetTableError,
    concatenated_ranges,
    dense_codes,
    factorize,
    run_starts,
)
from repurpose.lazy import lazy_module

sparse = lazy_module("scipy.sparse")

# A coefficient is reported as diverging (monotone likelihood) when, at the point where the
# log-likelihood stopped improving, its Newton step is still at least this large ...
SEPARATION_MIN_STEP = 0.1
# ... in the direction of an already large coefficient (|coef| >= this; exp(8) ~ 3000).
SEPARATION_MIN_ABS_COEF = 8.0
# Information is singular when a diagonal entry is lost to cancellation at this relative level,
# or when the correlation-scaled information has an eigenvalue below it.
SINGULAR_RELATIVE_TOL = 1e-10
MAX_STEP_HALVINGS = 30
# A trial point whose log-likelihood is lower by at most this fraction of |log L| is not a decrease
# (rounding of sums over tens of thousands of risk sets; without it Newton stalls at national scale).
LOGLIK_ROUNDING_SLACK = 1e-12
# fit_efron works on blocks of fits of about this many rows: small enough to stay in cache.
_BLOCK_ROWS = 1 << 17


# --------------------------------------------------------------------------------------------------
# Efron partial likelihood, vectorised across fits
# --------------------------------------------------------------------------------------------------


class _Workspace:
    """Index structures of the rows of a subset of fits, built once and reused every iteration.

    Efron's tie correction is expanded into "steps": a risk set with event mass D > 1 has ceil(D)
    steps l = 0, 1, ... with denominator S0 - (l/D) E0 and weight min(1, D - l) (1 for integer D).
    Risk sets with D <= 1 (the common case) have the single term D log S0 and need no expansion.
    """

    def __init__(
        self, table: RiskSetTable, row_pattern: np.ndarray, patterns: np.ndarray, fits: np.ndarray
    ) -> None:
        fits = np.asarray(fits, dtype=np.int64)
        first_row = np.searchsorted(table.fit_index, fits, side="left")
        rows_per_fit = np.searchsorted(table.fit_index, fits, side="right") - first_row
        if np.any(rows_per_fit == 0):
            raise RiskSetTableError("internal: a workspace fit has no rows.")
        n_fits = fits.shape[0]
        rows: slice | np.ndarray
        if int(rows_per_fit.sum()) == table.n_rows:
            rows = slice(None)  # all rows: use the table's arrays without copying
        else:
            rows = concatenated_ranges(first_row, rows_per_fit)
        self.fits = fits
        self.n_fits = n_fits
        self.p = table.n_covariates
        fit_of_row = np.repeat(np.arange(n_fits, dtype=np.int64), rows_per_fit)
        self.n_at_risk = table.n_at_risk[rows]
        self.row_pattern = row_pattern[rows]
        self.patterns = patterns
        n_events = table.n_events[rows]
        n_rows = self.n_at_risk.shape[0]

        rs_starts = run_starts(table.risk_set_index[rows])
        self.rs_starts = rs_starts
        self.n_risk_sets = rs_starts.shape[0]
        is_new_set = np.zeros(n_rows, dtype=np.int64)
        is_new_set[rs_starts] = 1
        self.rs_of_row = np.cumsum(is_new_set) - 1
        self.rs_fit = fit_of_row[rs_starts]
        self.fit_rs_starts = np.searchsorted(self.rs_fit, np.arange(n_fits))
        self.rs_events = np.bincount(self.rs_of_row, weights=n_events, minlength=self.n_risk_sets)
        self.fit_events = np.bincount(self.rs_fit, weights=self.rs_events, minlength=n_fits)

        self.tie_sets = np.flatnonzero(self.rs_events > 1)
        tie_events = self.rs_events[self.tie_sets]
        n_steps = np.ceil(tie_events).astype(np.int64)
        self.step_tie = np.repeat(np.arange(self.tie_sets.shape[0], dtype=np.int64), n_steps)
        step_l = concatenated_ranges(np.zeros_like(n_steps), n_steps).astype(np.float64)
        self.step_weight = np.minimum(tie_events[self.step_tie] - step_l, 1.0)
        self.step_frac = step_l / tie_events[self.step_tie]

        # Fit-pattern cells: the linear predictor and the pattern-level sums live there.
        n_patterns = max(patterns.shape[0], 1)
        self.fp_of_row, fp_keys = dense_codes(
            fit_of_row * n_patterns + row_pattern[rows], n_fits * n_patterns
        )
        self.fp_fit = fp_keys // n_patterns
        self.fp_design = patterns[fp_keys % n_patterns]
        self.fp_starts = np.searchsorted(self.fp_fit, np.arange(n_fits))
        self.fp_events = np.bincount(self.fp_of_row, weights=n_events, minlength=fp_keys.shape[0])

        # Event rows are usually a small share of the rows; event sums run over them only.
        event_rows = np.flatnonzero(n_events > 0)
        self.ev_count = n_events[event_rows]
        self.ev_rs = self.rs_of_row[event_rows]
        self.ev_fp = self.fp_of_row[event_rows]
        self.ev_pattern = self.row_pattern[event_rows]

    @cached_property
    def risk_set_sum(self) -> sparse.csr_matrix:
        """Sums rows' patterns into their risk set (`_run_sum_matrix`): the p > 1 per-risk-set sums."""
        return _run_sum_matrix(self.rs_of_row, self.n_risk_sets, self.row_pattern, self.patterns.shape[0])

    @cached_property
    def event_set_sum(self) -> sparse.csr_matrix:
        """Sums event rows' patterns into their risk set (`_run_sum_matrix`)."""
        return _run_sum_matrix(self.ev_rs, self.n_risk_sets, self.ev_pattern, self.patterns.shape[0])

    def column(self, j: int) -> np.ndarray:
        """Per row the value of covariate ``j``."""
        return self.patterns[self.row_pattern, j]


class EfronDerivatives(NamedTuple):
    """Efron log partial likelihood, score and observed information per fit."""

    loglik: np.ndarray  # (n_fits,)
    score: np.ndarray  # (n_fits, p)
    information: np.ndarray  # (n_fits, p, p)
    information_positive_diag: np.ndarray  # (n_fits, p): sum of the positive parts; detects cancellation


def _weighted_run_sum(runs: sparse.csr_matrix, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per group of `runs` (`_run_sum_matrix`) the sum of ``weights * values[pattern]`` over its rows: the
    weights ride in the sparse matrix, so no (n, p) product is formed; each term is the same product, summed
    in the same order."""
    weighted = sparse.csr_matrix((weights, runs.indices, runs.indptr), shape=runs.shape, copy=False)
    return np.asarray(weighted @ values)


def _segment_outer_sum(left: np.ndarray, right: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (rows from ``starts``), the sum of outer products ``left_i right_i^T``; loops over p only."""
    n_cov = left.shape[1]
    out = np.empty((starts.shape[0], n_cov, n_cov))
    for j in range(n_cov):
        out[:, j, :] = np.add.reduceat(left[:, j, None] * right, starts, axis=0)
    return out


def _run_sum_matrix(group: np.ndarray, n_groups: int, pattern: np.ndarray, n_patterns: int) -> sparse.csr_matrix:
    """The (n_groups, n_patterns) matrix with a 1 per row (at its group, its pattern), for a non-decreasing
    ``group``; the entries of one group are its rows in order (a pattern may repeat: entries are not merged).

    Its product with the (n_patterns, p) patterns sums each group's rows' covariates in row order from 0, as
    one ``np.bincount`` per column of the rows' design does (the same numbers, bit for bit), in one pass over
    the rows instead of p strided ones and without the (rows, p) design.
    """
    indptr = np.searchsorted(group, np.arange(n_groups + 1), side="left")
    return sparse.csr_matrix((np.ones(group.shape[0]), pattern, indptr), shape=(n_groups, n_patterns))


def _evaluate(ws: _Workspace, beta: np.ndarray, *, fast_path: bool = True) -> EfronDerivatives:
    """Efron log-likelihood, score and information of every workspace fit at ``beta`` (n_fits, p).

    The 1-covariate fast path uses 1-D arrays but the same operations in the same order as the
    general path, so both give the same numbers.
    """
    one_covariate = ws.p == 1 and fast_path
    n_risk_sets = ws.n_risk_sets
    n_fp = ws.fp_fit.shape[0]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if ws.p == 1:
            eta_fp = ws.fp_design[:, 0] * beta[ws.fp_fit, 0]
        else:
            eta_fp = np.einsum("fp,fp->f", ws.fp_design, beta[ws.fp_fit])
        # A shift per fit keeps exp() <= 1; it cancels from everything but the log-likelihood.
        shift = np.maximum.reduceat(eta_fp, ws.fp_starts)
        phi_fp = np.exp(eta_fp - shift[ws.fp_fit])
        w_risk = ws.n_at_risk * phi_fp[ws.fp_of_row]
        w_event = ws.ev_count * phi_fp[ws.ev_fp]
        s0 = np.bincount(ws.rs_of_row, weights=w_risk, minlength=n_risk_sets)
        e0 = np.bincount(ws.ev_rs, weights=w_event, minlength=n_risk_sets)

        # Per risk set: A_m = sum_l a_l c_l^m / d_l, B_m = sum_l a_l c_l^m / d_l^2 and L = sum_l a_l log d_l
        # over the Efron steps (d_l = S0 - c_l E0, c_l = l / D). With D <= 1 there is one step, c = 0.
        a0 = ws.rs_events / s0
        b0 = a0 / s0
        a1 = np.zeros(n_risk_sets)
        b1 = np.zeros(n_risk_sets)
        b2 = np.zeros(n_risk_sets)
        log_terms = ws.rs_events * np.log(s0)
        if ws.tie_sets.size:
            n_ties = ws.tie_sets.shape[0]
            denom = s0[ws.tie_sets][ws.step_tie] - ws.step_frac * e0[ws.tie_sets][ws.step_tie]
            a_over_d = ws.step_weight / denom
            a_over_d2 = a_over_d / denom
            c_a_over_d2 = ws.step_frac * a_over_d2
            a0[ws.tie_sets] = np.bincount(ws.step_tie, weights=a_over_d, minlength=n_ties)
            a1[ws.tie_sets] = np.bincount(ws.step_tie, weights=ws.step_frac * a_over_d, minlength=n_ties)
            b0[ws.tie_sets] = np.bincount(ws.step_tie, weights=a_over_d2, minlength=n_ties)
            b1[ws.tie_sets] = np.bincount(ws.step_tie, weights=c_a_over_d2, minlength=n_ties)
            b2[ws.tie_sets] = np.bincount(ws.step_tie, weights=ws.step_frac * c_a_over_d2, minlength=n_ties)
            log_terms[ws.tie_sets] = np.bincount(
                ws.step_tie, weights=ws.step_weight * np.log(denom), minlength=n_ties
            )

        loglik = (
            np.bincount(ws.fp_fit, weights=ws.fp_events * eta_fp, minlength=ws.n_fits)
            - np.bincount(ws.rs_fit, weights=log_terms, minlength=ws.n_fits)
            - ws.fit_events * shift
        )
        # Expected events per row, w_risk A0 - w_event A1, summed per fit-pattern cell.
        q_fp = np.bincount(ws.fp_of_row, weights=w_risk * a0[ws.rs_of_row], minlength=n_fp) - np.bincount(
            ws.ev_fp, weights=w_event * a1[ws.ev_rs], minlength=n_fp
        )
        residual_fp = ws.fp_events - q_fp

        if one_covariate:
            x_fp = ws.fp_design[:, 0]
            score = np.add.reduceat(residual_fp * x_fp, ws.fp_starts)[:, None]
            info_pos = np.add.reduceat(q_fp * x_fp * x_fp, ws.fp_starts)
            s1 = np.bincount(ws.rs_of_row, weights=w_risk * ws.column(0), minlength=n_risk_sets)
            e1 = np.bincount(ws.ev_rs, weights=w_event * ws.patterns[ws.ev_pattern, 0], minlength=n_risk_sets)
            u = b0 * s1 - b1 * e1
            v = b2 * e1 - b1 * s1
            info_neg = np.add.reduceat(s1 * u, ws.fit_rs_starts) + np.add.reduceat(e1 * v, ws.fit_rs_starts)
            information = (info_pos - info_neg)[:, None, None]
            info_pos_diag = info_pos[:, None]
        else:
            score = np.add.reduceat(residual_fp[:, None] * ws.fp_design, ws.fp_starts, axis=0)
            info_pos = _segment_outer_sum(q_fp[:, None] * ws.fp_design, ws.fp_design, ws.fp_starts)
            s1 = _weighted_run_sum(ws.risk_set_sum, w_risk, ws.patterns)
            e1 = _weighted_run_sum(ws.event_set_sum, w_event, ws.patterns)
            u = b0[:, None] * s1 - b1[:, None] * e1
            v = b2[:, None] * e1 - b1[:, None] * s1
            info_neg = _segment_outer_sum(s1, u, ws.fit_rs_starts) + _segment_outer_sum(
                e1, v, ws.fit_rs_starts
            )
            information = info_pos - info_neg
            information = 0.5 * (information + np.swapaxes(information, 1, 2))
            info_pos_diag = np.diagonal(info_pos, axis1=1, axis2=2).copy()
    return EfronDerivatives(loglik, score, information, info_pos_diag)


def _prepare(table: RiskSetTable) -> tuple[np.ndarray, np.ndarray]:
    """Global pattern id per row and the pattern matrix (computed once per table): the distinct covariate rows
    in sorted order, so a factored table (`RiskSetTable.factored`, its patterns factorized, not its rows)
    gets the same ids as the same table with its design."""
    if table.n_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, table.n_covariates))
    if table.design is None:
        pattern_codes, n_codes = factorize(table.patterns)
        codes, present = dense_codes(pattern_codes[table.row_pattern], n_codes)
        representative = np.empty(n_codes, dtype=np.int64)
        representative[pattern_codes] = np.arange(pattern_codes.shape[0])
        return codes, table.patterns[representative[present]]
    codes, n_patterns = factorize(table.design)
    patterns = np.empty((n_patterns, table.n_covariates))
    patterns[codes] = table.design
    return codes, patterns


def _broadcast_beta(beta: np.ndarray | Sequence[float] | None, n_fits: int, p: int, name: str) -> np.ndarray:
    if beta is None:
        return np.zeros((n_fits, p))
    arr = np.asarray(beta, dtype=np.float64)
    if arr.shape == (p,):
        arr = np.broadcast_to(arr, (n_fits, p))
    if arr.shape != (n_fits, p):
        raise CoxEngineError(
            f"{name} must have shape (p,) = ({p},) or (n_fits, p) = ({n_fits}, {p}); got {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise CoxEngineError(f"{name} must be finite.")
    return np.array(arr)


def efron_evaluator(table: RiskSetTable) -> Callable[..., EfronDerivatives]:
    """`efron_log_likelihood` of ``table`` as a function of ``beta``, the table's index structures built once:
    for many evaluations of one table (a profile likelihood), the same numbers as separate calls."""
    n_fits, p = table.n_fits, table.n_covariates
    fit_events = np.bincount(table.fit_index, weights=table.n_events, minlength=n_fits)
    fits = np.flatnonzero(fit_events > 0)
    ws = _Workspace(table, *_prepare(table), fits) if fits.size else None

    def evaluate(beta: np.ndarray | Sequence[float] | None = None) -> EfronDerivatives:
        beta_arr = _broadcast_beta(beta, n_fits, p, "beta")
        loglik = np.zeros(n_fits)
        score = np.zeros((n_fits, p))
        information = np.zeros((n_fits, p, p))
        info_pos = np.zeros((n_fits, p))
        if ws is not None:
            derivs = _evaluate(ws, beta_arr[fits])
            loglik[fits], score[fits], information[fits], info_pos[fits] = derivs
        return EfronDerivatives(loglik, score, information, info_pos)

    return evaluate


def efron_log_likelihood(
    table: RiskSetTable, beta: np.ndarray | Sequence[float] | None = None
) -> EfronDerivatives:
    """Efron log partial likelihood, score and observed information of every fit at ``beta``.

    ``beta`` has shape (p,) (same for all fits) or (n_fits, p); default 0 (gives score tests).
    Fits without events get log-likelihood 0, zero score and zero information.
    """
    return efron_evaluator(table)(beta)


def newton_step(information: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Newton step information^{-1} score per fit; near-null directions are damped instead of exploding."""
    if information.shape[1] == 1:
        info = information[:, 0, 0]
        step = np.zeros_like(score)
        np.divide(score[:, 0], info, out=step[:, 0], where=info > 0)
        return step
    scale, eigenvalues, eigenvectors = scaled_eigh(information)
    floor = 1e-13 * np.maximum(eigenvalues[:, -1:], 1.0)
    eigenvalues = np.maximum(eigenvalues, floor)
    scaled_score = np.nan_to_num(score * scale, nan=0.0, posinf=0.0, neginf=0.0)
    coords = np.einsum("fji,fj->fi", eigenvectors, scaled_score) / eigenvalues
    return np.einsum("fij,fj->fi", eigenvectors, coords) * scale


def information_is_singular(derivs: EfronDerivatives) -> np.ndarray:
    """Information singular whatever beta: a covariate never varies within a risk set, or collinearity."""
    diag = np.diagonal(derivs.information, axis1=1, axis2=2)
    lost = ~(diag > SINGULAR_RELATIVE_TOL * derivs.information_positive_diag) | ~(
        derivs.information_positive_diag > 0
    )
    singular = np.any(lost, axis=1)
    if derivs.information.shape[1] > 1:
        ok = ~singular
        if np.any(ok):
            _, eigenvalues, _ = scaled_eigh(derivs.information[ok])
            singular[ok] = eigenvalues[:, 0] <= SINGULAR_RELATIVE_TOL
    return singular


def _coordinate_separation(ws: _Workspace) -> np.ndarray:
    """(n_fits, p) bool: the likelihood increases without bound along +e_j or -e_j (exact, data only).

    Along +e_j the log-likelihood is non-decreasing iff every event sits in a pattern with the largest
    x_j of its risk set, and strictly increasing iff x_j also varies within some risk set with events.
    """
    at_risk = ws.n_at_risk > 0
    all_at_risk = bool(np.all(at_risk))
    x_max, x_min = np.empty((ws.n_risk_sets, ws.p)), np.empty((ws.n_risk_sets, ws.p))
    for j in range(ws.p):  # a column at a time: the rows' (n, p) design is never formed
        x = ws.column(j)
        x_max[:, j] = np.maximum.reduceat(x if all_at_risk else np.where(at_risk, x, -np.inf), ws.rs_starts)
        x_min[:, j] = np.minimum.reduceat(x if all_at_risk else np.where(at_risk, x, np.inf), ws.rs_starts)
    event_x_max = np.full_like(x_max, -np.inf)
    event_x_min = np.full_like(x_min, np.inf)
    if ws.ev_rs.size:
        event_starts = run_starts(ws.ev_rs)
        sets_with_events = ws.ev_rs[event_starts]
        ev_design = ws.patterns[ws.ev_pattern]
        event_x_max[sets_with_events] = np.maximum.reduceat(ev_design, event_starts, axis=0)
        event_x_min[sets_with_events] = np.minimum.reduceat(ev_design, event_starts, axis=0)
    set_has_events = (ws.rs_events > 0)[:, None]
    varies = set_has_events & (x_min < x_max)
    not_top = set_has_events & (event_x_min < x_max)
    not_bottom = set_has_events & (event_x_max > x_min)

    def any_per_fit(flags: np.ndarray) -> np.ndarray:
        return np.add.reduceat(flags.astype(np.int64), ws.fit_rs_starts, axis=0) > 0

    return any_per_fit(varies) & (~any_per_fit(not_top) | ~any_per_fit(not_bottom))


def fit_efron(
    table: RiskSetTable,
    *,
    max_iter: int = 50,
    tol: float = 1e-9,
    initial: np.ndarray | Sequence[float] | None = None,
) -> CoxFitResult:
    """Fit every Cox model of ``table`` by Newton-Raphson with step halving on the Efron partial likelihood.

    All fits iterate together (in blocks of about ``_BLOCK_ROWS`` rows, for cache efficiency); a fit
    stops when the full Newton step it just took had predicted log-likelihood gain
    ``score' I^-1 score / 2 <= tol`` (its coefficients are then quadratically close to the maximum)
    and the estimates, log-likelihood and variance at the new point are kept.
    Status per fit: ``ok``, ``no_events``, ``singular_information`` (not identifiable: coefficients NaN),
    ``separation`` (monotone likelihood; last iterate kept, ``infinite_coef`` marks diverging
    coefficients) or ``not_converged``. ``initial`` has shape (p,) or (n_fits, p); default 0.
    """
    if not isinstance(table, RiskSetTable):
        raise CoxEngineError(
            f"fit_efron needs a RiskSetTable (see aggregate_counting_process); got {type(table)}."
        )
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise CoxEngineError(f"max_iter must be a non-negative integer; got {max_iter!r}.")
    if not (tol > 0):
        raise CoxEngineError(f"tol must be positive; got {tol!r}.")
    n_fits, p = table.n_fits, table.n_covariates
    beta = _broadcast_beta(initial, n_fits, p, "initial")
    rows_per_fit = np.bincount(table.fit_index, minlength=n_fits)
    last_row_of_fit = np.cumsum(rows_per_fit)
    block_of_fit = np.maximum(last_row_of_fit - 1, 0) // _BLOCK_ROWS
    block_starts = np.append(run_starts(block_of_fit), n_fits)
    blocks = []
    for first_fit, end_fit in zip(block_starts[:-1], block_starts[1:], strict=True):
        lo, hi = last_row_of_fit[first_fit] - rows_per_fit[first_fit], last_row_of_fit[end_fit - 1]
        block = _unchecked_table(table, slice(lo, hi), first_fit, end_fit - first_fit)
        blocks.append(_fit_block(block, beta[first_fit:end_fit], int(max_iter), float(tol)))
    if not blocks:
        return _fit_block(table, beta, int(max_iter), float(tol))
    return CoxFitResult.concatenate(blocks)


def _unchecked_table(table: RiskSetTable, rows: slice, first_fit: int, n_fits: int) -> RiskSetTable:
    """Rows ``rows`` of a validated table holding fits first_fit.. as a table of its own (no re-validation)."""
    block = object.__new__(RiskSetTable)
    object.__setattr__(block, "fit_index", table.fit_index[rows] - first_fit)
    object.__setattr__(block, "risk_set_index", table.risk_set_index[rows])
    object.__setattr__(block, "n_at_risk", table.n_at_risk[rows])
    object.__setattr__(block, "n_events", table.n_events[rows])
    object.__setattr__(block, "design", None if table.design is None else table.design[rows])
    object.__setattr__(block, "n_fits", int(n_fits))
    object.__setattr__(block, "patterns", table.patterns)
    object.__setattr__(block, "row_pattern", None if table.row_pattern is None else table.row_pattern[rows])
    return block


@dataclass
class NewtonArrays:
    """Per-fit Newton-Raphson state (rows = fits), updated in place by :func:`accept_or_halve`.

    Shared by :func:`fit_efron` and the coordinator of the distributed fit (`repurpose.federation.distributed`), so
    both follow exactly the same rules.
    """

    beta: np.ndarray  # (n_fits, p) last accepted point
    trial: np.ndarray  # (n_fits, p) point being evaluated
    step: np.ndarray  # (n_fits, p) full Newton step from beta
    last_step: np.ndarray  # (n_fits, p) step that led to beta
    loglik: np.ndarray  # (n_fits,) at beta
    score: np.ndarray  # (n_fits, p) at beta
    information: np.ndarray  # (n_fits, p, p) at beta
    decrement: np.ndarray  # (n_fits,) score' step: twice the predicted gain of the full step
    halvings: np.ndarray  # (n_fits,) step halvings since the last accepted point
    converged: np.ndarray  # (n_fits,) bool
    n_iter: np.ndarray  # (n_fits,) evaluations of trial points


def accept_or_halve(
    state: NewtonArrays,
    idx: np.ndarray,
    new_loglik: np.ndarray,
    new_score: np.ndarray,
    new_info: np.ndarray,
    tol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Take the evaluated trial points of fits `idx`: accept (and take the next Newton step) or halve the step.

    A trial point is accepted when finite and the log-likelihood did not decrease, or when the step's
    predicted gain was already negligible (then the fit has converged at the new point). Returns the
    masks over `idx` of fits converged now, and the indices of fits that took a new full step.
    """
    state.n_iter[idx] += 1
    finite = (
        np.isfinite(new_loglik)
        & np.all(np.isfinite(new_score), axis=1)
        & np.all(np.isfinite(new_info), axis=(1, 2))
    )
    negligible = (state.halvings[idx] == 0) & (0.5 * state.decrement[idx] <= tol)
    # A log-likelihood summed over many risk sets carries rounding error of about 1e-16 x its terms: a
    # step that changes it by less than that is not a decrease, or Newton would stall near the maximum.
    slack = LOGLIK_ROUNDING_SLACK * np.maximum(np.abs(state.loglik[idx]), 1.0)
    accept = finite & ((new_loglik >= state.loglik[idx] - slack) | negligible)
    done_now = accept & negligible

    acc = idx[accept]
    state.last_step[acc] = state.trial[acc] - state.beta[acc]
    state.beta[acc] = state.trial[acc]
    state.loglik[acc] = new_loglik[accept]
    state.score[acc] = new_score[accept]
    state.information[acc] = new_info[accept]
    state.converged[idx[done_now]] = True

    moving = idx[accept & ~done_now]
    if moving.size:
        state.step[moving] = newton_step(state.information[moving], state.score[moving])
        state.decrement[moving] = np.einsum("fp,fp->f", state.score[moving], state.step[moving])
        state.halvings[moving] = 0
        state.trial[moving] = state.beta[moving] + state.step[moving]

    rejected = idx[~accept]
    state.halvings[rejected] += 1
    state.trial[rejected] = state.beta[rejected] + state.step[rejected] * 0.5 ** state.halvings[rejected, None]
    return done_now, moving


def start_newton(
    beta: np.ndarray, loglik: np.ndarray, score: np.ndarray, information: np.ndarray, active: np.ndarray
) -> NewtonArrays:
    """Newton-Raphson state at the starting point `beta` (its log-likelihood, score and information
    given): the full Newton step of each `active` fit is its first trial point; other fits stay put."""
    n_fits, p = beta.shape
    step = np.zeros((n_fits, p))
    decrement = np.zeros(n_fits)
    if active.size:
        step[active] = newton_step(information[active], score[active])
        decrement[active] = np.einsum("fp,fp->f", score[active], step[active])
    return NewtonArrays(
        beta=beta,
        trial=beta + step,
        step=step,
        last_step=np.zeros((n_fits, p)),
        loglik=loglik,
        score=score,
        information=information,
        decrement=decrement,
        halvings=np.zeros(n_fits, dtype=np.int64),
        converged=np.zeros(n_fits, dtype=bool),
        n_iter=np.zeros(n_fits, dtype=np.int64),
    )


def newton_raphson(
    newton: NewtonArrays,
    active: np.ndarray,
    evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    max_iter: int,
    tol: float,
) -> None:
    """Accept-or-halve iterations until every active fit has converged or used `max_iter` evaluations or
    `MAX_STEP_HALVINGS` halvings. `evaluate(active)` returns (fits, log L, score, information) at the
    trial points of the active fits (in any order); `newton` is updated in place."""
    if max_iter == 0:
        return
    while active.size:
        fits, new_loglik, new_score, new_info = evaluate(active)
        done_now, _ = accept_or_halve(newton, fits, new_loglik, new_score, new_info, tol)
        finished = done_now | (newton.n_iter[fits] >= max_iter) | (newton.halvings[fits] > MAX_STEP_HALVINGS)
        active = fits[~finished]


def _fit_block(table: RiskSetTable, beta: np.ndarray, max_iter: int, tol: float) -> CoxFitResult:
    """:func:`fit_efron` on one block of fits, all vectorised together."""
    n_fits, p = table.n_fits, table.n_covariates
    beta = beta.copy()
    n_events = np.bincount(table.fit_index, weights=table.n_events, minlength=n_fits)

    status = np.full(n_fits, "ok", dtype="<U20")
    status[~(n_events > 0)] = "no_events"
    loglik = np.zeros(n_fits)
    loglik_null = np.zeros(n_fits)
    score = np.zeros((n_fits, p))
    information = np.zeros((n_fits, p, p))

    fits = np.flatnonzero(n_events > 0)
    if fits.size == 0:
        return cox_fit_result(
            beta * np.nan,
            information,
            loglik,
            loglik_null,
            np.zeros(n_fits, dtype=np.int64),
            np.zeros(n_fits, dtype=bool),
            status,
            n_events,
            np.zeros((n_fits, p), dtype=bool),
        )
    row_pattern, patterns = _prepare(table)
    ws = _Workspace(table, row_pattern, patterns, fits)

    at_zero = _evaluate(ws, np.zeros((fits.size, p)))
    loglik_null[fits] = at_zero.loglik
    singular = fits[information_is_singular(at_zero)]
    status[singular] = "singular_information"
    exact_separation = np.zeros((n_fits, p), dtype=bool)
    exact_separation[fits] = _coordinate_separation(ws)

    start = at_zero if not np.any(beta[fits]) else _evaluate(ws, beta[fits])
    loglik[fits], score[fits], information[fits] = start.loglik, start.score, start.information
    active = np.setdiff1d(fits, singular)
    newton = start_newton(beta, loglik, score, information, active)

    def evaluate(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nonlocal ws
        if active.size < 0.5 * ws.n_fits:
            ws = _Workspace(table, row_pattern, patterns, active)
        derivs = _evaluate(ws, newton.trial[ws.fits])
        in_active = np.isin(ws.fits, active, assume_unique=True)
        return ws.fits[in_active], derivs.loglik[in_active], derivs.score[in_active], derivs.information[in_active]

    newton_raphson(newton, active, evaluate, max_iter, tol)
    return finish_fits(newton, status, fits, singular, exact_separation, loglik_null, n_events)


def finish_fits(
    newton: NewtonArrays,
    status: np.ndarray,
    fits: np.ndarray,
    singular: np.ndarray,
    exact_separation: np.ndarray,
    loglik_null: np.ndarray,
    n_events: np.ndarray,
) -> CoxFitResult:
    """After Newton-Raphson stopped: mark fits not converged or separated, blank unidentifiable ones, and
    build the result (shared by `fit_efron` and `binary_cox.fit_binary_efron`).

    `fits` are the fits with events, `singular` those with singular information at 0, `exact_separation`
    (n_fits, p) the directions of monotone likelihood found from the data.
    """
    beta, converged, information, loglik = newton.beta, newton.converged, newton.information, newton.loglik
    stopped = np.setdiff1d(fits, singular)
    status[stopped[~converged[stopped]]] = "not_converged"
    # Monotone likelihood seen numerically: a large coefficient still moving by a sizeable step
    # while the likelihood no longer changes (converged), or still heading outwards (not converged).
    moving_step = np.where(converged[:, None], newton.last_step, newton.step)
    numeric_separation = (
        (np.abs(moving_step) >= SEPARATION_MIN_STEP)
        & (np.abs(beta) >= SEPARATION_MIN_ABS_COEF)
        & (moving_step * beta > 0)
    )
    infinite_coef = np.zeros(beta.shape, dtype=bool)
    infinite_coef[stopped] = exact_separation[stopped] | numeric_separation[stopped]
    separated = stopped[np.any(infinite_coef[stopped], axis=1)]
    status[separated] = "separation"
    converged[separated] = False

    beta[singular] = np.nan
    loglik[singular] = loglik_null[singular]
    information[singular] = np.nan
    beta[status == "no_events"] = np.nan
    return cox_fit_result(
        beta, information, loglik, loglik_null, newton.n_iter, converged, status, n_events, infinite_coef
    )
