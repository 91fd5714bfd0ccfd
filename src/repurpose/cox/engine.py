"""Exact Cox proportional-hazards fits (Efron ties) on aggregated risk sets, many fits at once.

With categorical covariates only, the Efron partial likelihood depends on the data only through,
for each (fit, stratum, event time), the number at risk and the number of events per covariate
pattern. :func:`aggregate_counting_process` builds that table from counting-process rows
``(start, stop]`` and :func:`fit_efron` maximises the partial likelihood of thousands of independent
fits simultaneously with vectorised Newton-Raphson. See ``docs/cox_engine.md`` for the method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "FIT_STATUSES",
    "NewtonArrays",
    "accept_or_halve",
    "AggregatedCoxPHFitter",
    "CountingProcessError",
    "CoxEngineError",
    "CoxFitResult",
    "EfronDerivatives",
    "NotFittedError",
    "RiskSetTable",
    "RiskSetTableError",
    "aggregate_counting_process",
    "efron_log_likelihood",
    "finish_fits",
    "fit_efron",
    "newton_raphson",
    "start_newton",
]

FIT_STATUSES = ("ok", "no_events", "separation", "singular_information", "not_converged")

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


class CoxEngineError(ValueError):
    """Base class of the errors raised by the aggregated Cox engine."""


class RiskSetTableError(CoxEngineError):
    """A :class:`RiskSetTable` is inconsistent (unsorted rows, bad shapes, invalid counts)."""


class CountingProcessError(CoxEngineError):
    """Counting-process input (start, stop, event, design, strata) is invalid."""


class NotFittedError(CoxEngineError, AttributeError):
    """A fitted attribute was requested before calling ``fit``."""


# --------------------------------------------------------------------------------------------------
# Risk-set table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskSetTable:
    """Aggregated risk sets for many independent Cox fits.

    One row per (fit, risk set, covariate pattern). A risk set is one (fit, stratum, event time).
    Counts may be non-integer (weights); ``n_events <= n_at_risk`` must hold row-wise.
    """

    fit_index: np.ndarray  # int64, per row: which fit (0..n_fits-1)
    risk_set_index: np.ndarray  # int64, per row: id of the (fit, stratum, event time) risk set
    n_at_risk: np.ndarray  # float64, persons at risk with this pattern just before the event time
    n_events: np.ndarray  # float64, events at this event time with this pattern
    design: np.ndarray  # float64 (rows, p): covariate pattern
    n_fits: int

    def __post_init__(self) -> None:
        fit_index = _as_array(self.fit_index, np.int64, "fit_index")
        risk_set_index = _as_array(self.risk_set_index, np.int64, "risk_set_index")
        n_at_risk = _as_array(self.n_at_risk, np.float64, "n_at_risk")
        n_events = _as_array(self.n_events, np.float64, "n_events")
        design = _as_array(self.design, np.float64, "design")
        if design.ndim == 1:
            design = design[:, None]
        n_rows = fit_index.shape[0]
        for name, arr in (
            ("fit_index", fit_index),
            ("risk_set_index", risk_set_index),
            ("n_at_risk", n_at_risk),
            ("n_events", n_events),
        ):
            if arr.ndim != 1 or arr.shape[0] != n_rows:
                raise RiskSetTableError(
                    f"{name} must be 1-D with one entry per row ({n_rows} rows, as fit_index); "
                    f"got shape {arr.shape}."
                )
        if design.ndim != 2 or design.shape[0] != n_rows or design.shape[1] < 1:
            raise RiskSetTableError(
                f"design must be 2-D (rows, p) with p >= 1 and {n_rows} rows; got shape {design.shape}."
            )
        try:
            n_fits = int(self.n_fits)
        except (TypeError, ValueError) as exc:
            raise RiskSetTableError(f"n_fits must be a non-negative integer; got {self.n_fits!r}.") from exc
        if n_fits < 0 or n_fits != self.n_fits:
            raise RiskSetTableError(f"n_fits must be a non-negative integer; got {self.n_fits!r}.")
        if n_rows:
            if fit_index.min() < 0 or fit_index.max() >= n_fits:
                raise RiskSetTableError(
                    f"fit_index must lie in [0, n_fits={n_fits}); got range "
                    f"[{fit_index.min()}, {fit_index.max()}]. Pass n_fits = number of fits."
                )
            fit_step = np.diff(fit_index)
            set_step = np.diff(risk_set_index)
            if np.any(fit_step < 0) or np.any(set_step < 0):
                raise RiskSetTableError(
                    "rows must be sorted by (fit_index, risk_set_index) with non-decreasing risk-set ids; "
                    "sort with np.lexsort((risk_set_index, fit_index)) and renumber risk sets in that order."
                )
            if np.any((set_step == 0) & (fit_step != 0)):
                raise RiskSetTableError(
                    "a risk_set_index is shared by two fits; give every (fit, stratum, event time) its own id."
                )
            if not (
                np.all(np.isfinite(n_at_risk))
                and np.all(np.isfinite(n_events))
                and np.all(np.isfinite(design))
            ):
                raise RiskSetTableError("n_at_risk, n_events and design must be finite (no NaN or inf).")
            if np.any(n_events < 0) or np.any(n_events > n_at_risk):
                raise RiskSetTableError(
                    "counts must satisfy 0 <= n_events <= n_at_risk on every row: persons with an event "
                    "at t are at risk just before t; check the at-risk convention start < t <= stop."
                )
            starts = run_starts(risk_set_index)
            if np.any(np.add.reduceat(n_at_risk, starts) <= 0):
                raise RiskSetTableError(
                    "every risk set needs a positive total n_at_risk; drop empty risk sets."
                )
        object.__setattr__(self, "fit_index", fit_index)
        object.__setattr__(self, "risk_set_index", risk_set_index)
        object.__setattr__(self, "n_at_risk", n_at_risk)
        object.__setattr__(self, "n_events", n_events)
        object.__setattr__(self, "design", design)
        object.__setattr__(self, "n_fits", n_fits)

    @property
    def n_rows(self) -> int:
        """Number of (fit, risk set, pattern) rows."""
        return int(self.fit_index.shape[0])

    @property
    def n_covariates(self) -> int:
        """Number of covariates p (columns of ``design``)."""
        return int(self.design.shape[1])


def _as_array(values: Any, dtype: type, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
        if dtype is np.int64 and arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.asarray(arr, dtype=np.float64) == np.round(np.asarray(arr, dtype=np.float64))):
                raise RiskSetTableError(f"{name} must hold integers.")
        return np.ascontiguousarray(arr, dtype=dtype)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, RiskSetTableError):
            raise
        raise RiskSetTableError(f"{name} could not be converted to {np.dtype(dtype).name}: {exc}") from exc


def run_starts(sorted_ids: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a 1-D array (first element always starts a run)."""
    if sorted_ids.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(sorted_ids.shape[0], dtype=bool)
    change[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=change[1:])
    return np.flatnonzero(change)


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """``np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])`` without a loop
    (`dtype` int32 halves the memory where the values fit)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=dtype) + np.repeat((np.asarray(starts, dtype=np.int64) - offsets).astype(dtype), lengths)


def segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of `values[bounds[i]:bounds[i + 1]]` for consecutive segments (empty ones sum to 0).

    One `np.add.reduceat` pass over contiguous segments, several times faster than `np.bincount` with
    weights. Integers and booleans sum as int64.
    """
    dtype = np.float64 if values.dtype.kind == "f" else np.int64
    lengths = np.diff(bounds)
    sums = np.zeros(lengths.shape[0], dtype=dtype)
    nonempty = lengths > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(values[: bounds[-1]], bounds[:-1][nonempty], dtype=dtype)
    return sums


def _factorize(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes 0..k-1 (in sorted order of the values) for a 1-D or 2-D (rows) array; hash-based."""
    if values.ndim == 1:
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
        return np.asarray(codes, dtype=np.int64), int(len(uniques))
    codes = np.zeros(values.shape[0], dtype=np.int64)
    n_codes = 1
    for column in values.T:
        column_codes, n_column = _factorize(column)
        codes, n_codes = _combine_codes(codes, n_codes, column_codes, n_column)
    return codes, n_codes


def _combine_codes(
    major: np.ndarray, n_major: int, minor: np.ndarray, n_minor: int
) -> tuple[np.ndarray, int]:
    """Codes of the pairs (major, minor), ordered by major then minor, renumbered densely."""
    if n_major * n_minor < 2**62:
        codes, present = _dense_codes(major * n_minor + minor, n_major * n_minor)
        return codes, int(present.shape[0])
    uniques, codes = np.unique(np.stack([major, minor], axis=1), axis=0, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), int(uniques.shape[0])


def _dense_codes(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber int keys in [0, n_keys) to 0..m-1 in key order; returns (codes, the m distinct keys).

    Uses a presence table (no sort) when ``n_keys`` is not much larger than the number of keys.
    """
    if n_keys <= max(4 * keys.shape[0], 1 << 20):
        present = np.zeros(n_keys, dtype=bool)
        present[keys] = True
        code_of_key = np.cumsum(present, dtype=np.int64) - 1
        return code_of_key[keys], np.flatnonzero(present)
    uniques, codes = np.unique(keys, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), uniques


# --------------------------------------------------------------------------------------------------
# Aggregation of counting-process data
# --------------------------------------------------------------------------------------------------


def aggregate_counting_process(
    start: np.ndarray,
    stop: np.ndarray,
    event: np.ndarray,
    design: np.ndarray,
    strata: np.ndarray | None = None,
    fit_index: np.ndarray | None = None,
    *,
    n_fits: int | None = None,
) -> RiskSetTable:
    """Aggregate counting-process rows ``(start, stop]`` (event at ``stop``) into a :class:`RiskSetTable`.

    For each fit, stratum and distinct event time t of that (fit, stratum) and each covariate pattern:
    ``n_at_risk = #{rows: start < t <= stop}`` and ``n_events = #{rows: event == 1 and stop == t}``.
    Patterns with ``n_at_risk == 0`` are dropped. ``strata`` may be 1-D labels or 2-D (one column per
    stratification variable); ``n_fits`` defaults to ``max(fit_index) + 1``.
    Exact for categorical covariates: the Efron partial likelihood depends only on these counts.
    """
    start_arr = np.asarray(start, dtype=np.float64).reshape(-1)
    stop_arr = np.asarray(stop, dtype=np.float64).reshape(-1)
    n = start_arr.shape[0]
    event_raw = np.asarray(event).reshape(-1)
    design_arr = np.asarray(design, dtype=np.float64)
    if design_arr.ndim == 1:
        design_arr = design_arr[:, None]
    if stop_arr.shape[0] != n or event_raw.shape[0] != n or design_arr.shape[0] != n or design_arr.ndim != 2:
        raise CountingProcessError(
            f"start, stop, event and design need one entry (row) each; got lengths {n}, {stop_arr.shape[0]}, "
            f"{event_raw.shape[0]} and design shape {design_arr.shape}."
        )
    if not np.all(np.isin(event_raw, (0, 1))):
        raise CountingProcessError("event must be 0/1 (or boolean); recode other event indicators first.")
    event_arr = event_raw.astype(bool)
    if not (
        np.all(np.isfinite(start_arr)) and np.all(np.isfinite(stop_arr)) and np.all(np.isfinite(design_arr))
    ):
        raise CountingProcessError(
            "start, stop and design must be finite (no NaN or inf); drop or impute first."
        )
    if np.any(start_arr > stop_arr):
        raise CountingProcessError("start must be <= stop on every row (intervals are (start, stop]).")
    if np.any(event_arr & (start_arr >= stop_arr)):
        raise CountingProcessError(
            "an event row has start >= stop, so the person is not at risk at the event time; "
            "use intervals with start < stop for events."
        )
    if fit_index is None:
        fit_arr = np.zeros(n, dtype=np.int64)
    else:
        fit_arr = np.asarray(fit_index).reshape(-1)
        if fit_arr.shape[0] != n or (n and not np.issubdtype(fit_arr.dtype, np.integer)):
            raise CountingProcessError("fit_index must be an integer array with one entry per row.")
        fit_arr = fit_arr.astype(np.int64)
        if n and fit_arr.min() < 0:
            raise CountingProcessError("fit_index must be non-negative.")
    total_fits = int(fit_arr.max()) + 1 if n else 0
    if n_fits is not None:
        if n_fits < total_fits:
            raise CountingProcessError(f"n_fits={n_fits} but fit_index goes up to {total_fits - 1}.")
        total_fits = int(n_fits)
    n_covariates = design_arr.shape[1]
    if n == 0 or not event_arr.any():
        return _empty_table(total_fits, n_covariates)

    if strata is None:
        stratum_codes, n_strata = np.zeros(n, dtype=np.int64), 1
    else:
        strata_arr = np.asarray(strata)
        if strata_arr.shape[0] != n or strata_arr.ndim > 2:
            raise CountingProcessError("strata must be 1-D or 2-D with one entry (row) per input row.")
        stratum_codes, n_strata = _factorize(strata_arr)
    group, group_keys = _dense_codes(fit_arr * n_strata + stratum_codes, total_fits * n_strata)
    group_fit = group_keys // n_strata

    pattern, n_patterns = _factorize(design_arr)
    patterns = np.empty((n_patterns, n_covariates))
    patterns[pattern] = design_arr

    # (group, pattern) cells, numbered in (group, pattern) order.
    cell, cell_keys = _dense_codes(group * n_patterns + pattern, group_fit.shape[0] * n_patterns)
    cell_group = cell_keys // n_patterns
    cell_pattern = cell_keys % n_patterns
    n_groups = group_fit.shape[0]
    cells_per_group = np.bincount(cell_group, minlength=n_groups)
    first_cell_of_group = np.cumsum(cells_per_group) - cells_per_group

    # Time ranks turn (cell, time) into a single sortable int64 key.
    times = np.unique(np.concatenate([start_arr, stop_arr]))
    n_time_keys = times.shape[0] + 1
    start_rank = np.searchsorted(times, start_arr)
    stop_rank = np.searchsorted(times, stop_arr)

    # Risk sets: distinct (group, event time), in (fit, stratum, time) order.
    risk_keys = np.unique(group[event_arr] * n_time_keys + stop_rank[event_arr])
    risk_group = risk_keys // n_time_keys
    risk_time = risk_keys % n_time_keys

    # Every risk set is paired with every cell (pattern) of its group.
    rows_per_risk_set = cells_per_group[risk_group]
    query_risk_set = np.repeat(np.arange(risk_keys.shape[0], dtype=np.int64), rows_per_risk_set)
    query_cell = concatenated_ranges(first_cell_of_group[risk_group], rows_per_risk_set)
    query_key = query_cell * n_time_keys + risk_time[query_risk_set]

    # Rows with start < t minus rows with stop < t (the latter are a subset) = rows at risk at t.
    start_keys = np.sort(cell * n_time_keys + start_rank)
    stop_keys = np.sort(cell * n_time_keys + stop_rank)
    event_keys = np.sort(cell[event_arr] * n_time_keys + stop_rank[event_arr])
    at_risk = np.searchsorted(start_keys, query_key, side="left") - np.searchsorted(
        stop_keys, query_key, side="left"
    )
    events = np.searchsorted(event_keys, query_key, side="right") - np.searchsorted(
        event_keys, query_key, side="left"
    )

    keep = at_risk > 0
    return RiskSetTable(
        fit_index=group_fit[risk_group[query_risk_set[keep]]],
        risk_set_index=query_risk_set[keep],
        n_at_risk=at_risk[keep].astype(np.float64),
        n_events=events[keep].astype(np.float64),
        design=patterns[cell_pattern[query_cell[keep]]],
        n_fits=total_fits,
    )


def _empty_table(n_fits: int, n_covariates: int) -> RiskSetTable:
    return RiskSetTable(
        fit_index=np.zeros(0, dtype=np.int64),
        risk_set_index=np.zeros(0, dtype=np.int64),
        n_at_risk=np.zeros(0),
        n_events=np.zeros(0),
        design=np.zeros((0, n_covariates)),
        n_fits=n_fits,
    )


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
        self.design = table.design[rows]
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
        self.fp_of_row, fp_keys = _dense_codes(
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
        self.ev_design = self.design[event_rows]


class EfronDerivatives(NamedTuple):
    """Efron log partial likelihood, score and observed information per fit."""

    loglik: np.ndarray  # (n_fits,)
    score: np.ndarray  # (n_fits, p)
    information: np.ndarray  # (n_fits, p, p)
    information_positive_diag: np.ndarray  # (n_fits, p): sum of the positive parts; detects cancellation


def _segment_outer_sum(left: np.ndarray, right: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment (rows from ``starts``), the sum of outer products ``left_i right_i^T``; loops over p only."""
    n_cov = left.shape[1]
    out = np.empty((starts.shape[0], n_cov, n_cov))
    for j in range(n_cov):
        out[:, j, :] = np.add.reduceat(left[:, j, None] * right, starts, axis=0)
    return out


def _group_sum(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of ``values`` (n,) or (n, p) per group id; bincount is much faster than reduceat on short groups."""
    if values.ndim == 1:
        return np.bincount(group, weights=values, minlength=n_groups)
    return np.stack(
        [np.bincount(group, weights=values[:, j], minlength=n_groups) for j in range(values.shape[1])], axis=1
    )


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
            s1 = np.bincount(ws.rs_of_row, weights=w_risk * ws.design[:, 0], minlength=n_risk_sets)
            e1 = np.bincount(ws.ev_rs, weights=w_event * ws.ev_design[:, 0], minlength=n_risk_sets)
            u = b0 * s1 - b1 * e1
            v = b2 * e1 - b1 * s1
            info_neg = np.add.reduceat(s1 * u, ws.fit_rs_starts) + np.add.reduceat(e1 * v, ws.fit_rs_starts)
            information = (info_pos - info_neg)[:, None, None]
            info_pos_diag = info_pos[:, None]
        else:
            score = np.add.reduceat(residual_fp[:, None] * ws.fp_design, ws.fp_starts, axis=0)
            info_pos = _segment_outer_sum(q_fp[:, None] * ws.fp_design, ws.fp_design, ws.fp_starts)
            s1 = _group_sum(ws.rs_of_row, w_risk[:, None] * ws.design, n_risk_sets)
            e1 = _group_sum(ws.ev_rs, w_event[:, None] * ws.ev_design, n_risk_sets)
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
    """Global pattern id per row and the pattern matrix (computed once per table)."""
    if table.n_rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, table.n_covariates))
    codes, n_patterns = _factorize(table.design)
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


def efron_log_likelihood(
    table: RiskSetTable, beta: np.ndarray | Sequence[float] | None = None
) -> EfronDerivatives:
    """Efron log partial likelihood, score and observed information of every fit at ``beta``.

    ``beta`` has shape (p,) (same for all fits) or (n_fits, p); default 0 (gives score tests).
    Fits without events get log-likelihood 0, zero score and zero information.
    """
    n_fits, p = table.n_fits, table.n_covariates
    beta_arr = _broadcast_beta(beta, n_fits, p, "beta")
    loglik = np.zeros(n_fits)
    score = np.zeros((n_fits, p))
    information = np.zeros((n_fits, p, p))
    info_pos = np.zeros((n_fits, p))
    fit_events = np.bincount(table.fit_index, weights=table.n_events, minlength=n_fits)
    fits = np.flatnonzero(fit_events > 0)
    if fits.size:
        row_pattern, patterns = _prepare(table)
        ws = _Workspace(table, row_pattern, patterns, fits)
        derivs = _evaluate(ws, beta_arr[fits])
        loglik[fits], score[fits], information[fits], info_pos[fits] = derivs
    return EfronDerivatives(loglik, score, information, info_pos)


# --------------------------------------------------------------------------------------------------
# Newton-Raphson across fits
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoxFitResult:
    """Results of many Efron Cox fits; arrays are indexed by fit (and covariate)."""

    coef: np.ndarray  # (n_fits, p)
    se: np.ndarray  # (n_fits, p)
    variance: np.ndarray  # (n_fits, p, p), inverse observed information at coef
    loglik: np.ndarray  # (n_fits,) log partial likelihood at coef
    loglik_null: np.ndarray  # (n_fits,) at beta = 0
    n_iter: np.ndarray  # (n_fits,) likelihood evaluations after the start (incl. step halvings)
    converged: np.ndarray  # (n_fits,) bool
    status: np.ndarray  # (n_fits,) str, one of FIT_STATUSES
    n_events: np.ndarray  # (n_fits,) total (weighted) events
    infinite_coef: np.ndarray  # (n_fits, p) bool: coefficient diverges (monotone likelihood)

    @property
    def n_fits(self) -> int:
        return int(self.coef.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[CoxFitResult]) -> CoxFitResult:
        """The results of consecutive groups of fits as one result, in order."""
        return cls(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in cls.__dataclass_fields__})


def scaled_eigh(information: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-decomposition of the correlation-scaled information: returns (scale, eigenvalues, eigenvectors)."""
    diag = np.diagonal(information, axis1=1, axis2=2)
    scale = np.zeros_like(diag)
    np.divide(1.0, np.sqrt(diag), out=scale, where=diag > 0)
    scaled = information * scale[:, :, None] * scale[:, None, :]
    scaled[~np.isfinite(scaled)] = 0.0
    eigenvalues, eigenvectors = np.linalg.eigh(scaled)
    return scale, eigenvalues, eigenvectors


def inverse_information(information: np.ndarray) -> np.ndarray:
    """Inverse of each information matrix; NaN where it is not positive definite."""
    if information.shape[0] == 0:
        return information.copy()
    if information.shape[1] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / information
        inv[~(information > 0)] = np.nan
        return inv
    scale, eigenvalues, eigenvectors = scaled_eigh(information)
    positive = np.all(eigenvalues > 0, axis=1) & np.all(scale > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scaled = np.einsum("fij,fj,fkj->fik", eigenvectors, 1.0 / eigenvalues, eigenvectors)
    inv = inv_scaled * scale[:, :, None] * scale[:, None, :]
    inv[~positive] = np.nan
    return inv


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


def _is_singular(derivs: EfronDerivatives) -> np.ndarray:
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
    x = ws.design
    at_risk = ws.n_at_risk > 0
    all_at_risk = bool(np.all(at_risk))
    x_max = np.maximum.reduceat(
        x if all_at_risk else np.where(at_risk[:, None], x, -np.inf), ws.rs_starts, axis=0
    )
    x_min = np.minimum.reduceat(
        x if all_at_risk else np.where(at_risk[:, None], x, np.inf), ws.rs_starts, axis=0
    )
    event_x_max = np.full_like(x_max, -np.inf)
    event_x_min = np.full_like(x_min, np.inf)
    if ws.ev_rs.size:
        event_starts = run_starts(ws.ev_rs)
        sets_with_events = ws.ev_rs[event_starts]
        event_x_max[sets_with_events] = np.maximum.reduceat(ws.ev_design, event_starts, axis=0)
        event_x_min[sets_with_events] = np.minimum.reduceat(ws.ev_design, event_starts, axis=0)
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
    object.__setattr__(block, "design", table.design[rows])
    object.__setattr__(block, "n_fits", int(n_fits))
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
    singular = fits[_is_singular(at_zero)]
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


def cox_fit_result(
    beta: np.ndarray,
    information: np.ndarray,
    loglik: np.ndarray,
    loglik_null: np.ndarray,
    n_iter: np.ndarray,
    converged: np.ndarray,
    status: np.ndarray,
    n_events: np.ndarray,
    infinite_coef: np.ndarray,
) -> CoxFitResult:
    n_fits, p = beta.shape
    variance = np.full((n_fits, p, p), np.nan)
    computable = np.all(np.isfinite(information), axis=(1, 2)) & np.isin(
        status, ("ok", "separation", "not_converged")
    )
    variance[computable] = inverse_information(information[computable])
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diagonal(variance, axis1=1, axis2=2))
    # Converged, but the information is not positive definite there: no usable variance.
    not_definite = (status == "ok") & ~np.all(np.isfinite(se), axis=1)
    status[not_definite] = "singular_information"
    converged[not_definite] = False
    return CoxFitResult(
        coef=beta,
        se=se,
        variance=variance,
        loglik=loglik,
        loglik_null=loglik_null,
        n_iter=n_iter,
        converged=converged,
        status=status,
        n_events=n_events,
        infinite_coef=infinite_coef,
    )


# --------------------------------------------------------------------------------------------------
# lifelines / scikit-learn style front end
# --------------------------------------------------------------------------------------------------


class AggregatedCoxPHFitter:
    """Cox PH fits (Efron ties) of many models at once from a :class:`RiskSetTable`.

    Settings are keyword-only; fitted attributes end in ``_``. ``params_`` and ``standard_errors_``
    are DataFrames (one row per fit, one column per covariate); ``summary`` has one row per
    (fit, covariate).
    """

    def __init__(self, *, alpha: float = 0.05, max_iter: int = 50, tol: float = 1e-9) -> None:
        if not 0 < alpha < 1:
            raise CoxEngineError(f"alpha must be in (0, 1); got {alpha!r}.")
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, table: RiskSetTable, covariate_names: Sequence[str] | None = None) -> AggregatedCoxPHFitter:
        """Fit all models of ``table``; ``covariate_names`` label the design columns."""
        p = table.n_covariates
        names = (
            [f"x{j}" for j in range(p)]
            if covariate_names is None
            else [str(name) for name in covariate_names]
        )
        if len(names) != p:
            raise CoxEngineError(f"covariate_names has {len(names)} names but the design has {p} columns.")
        result = fit_efron(table, max_iter=self.max_iter, tol=self.tol)
        fit_ids = pd.RangeIndex(table.n_fits, name="fit")
        columns = pd.Index(names, name="covariate")
        self.result_ = result
        self.covariate_names_ = names
        self.params_ = pd.DataFrame(result.coef, index=fit_ids, columns=columns)
        self.standard_errors_ = pd.DataFrame(result.se, index=fit_ids, columns=columns)
        self.table_ = table
        return self

    def fit_counting_process(
        self,
        df: Any,
        *,
        start_col: str,
        stop_col: str,
        event_col: str,
        covariates: Sequence[str],
        strata: str | Sequence[str] | None = None,
        fit_col: str | None = None,
    ) -> AggregatedCoxPHFitter:
        """Aggregate a pandas or polars counting-process frame and fit it.

        Categorical covariates must already be numeric dummy columns. ``strata`` names one or more
        stratification columns; ``fit_col`` (optional, integer) splits the rows into independent fits.
        """
        columns = list(df.columns)
        strata_cols = [] if strata is None else ([strata] if isinstance(strata, str) else list(strata))
        needed = [start_col, stop_col, event_col, *covariates, *strata_cols] + ([fit_col] if fit_col else [])
        missing = [col for col in needed if col not in columns]
        if missing:
            raise CountingProcessError(f"columns {missing} are not in the data frame (has {columns}).")
        if not covariates:
            raise CountingProcessError("give at least one covariate column.")

        def column(name: str) -> np.ndarray:
            return np.asarray(df[name].to_numpy())

        design = np.column_stack([column(name).astype(np.float64) for name in covariates])
        strata_values = None
        if strata_cols:
            codes = [_factorize(column(name))[0] for name in strata_cols]
            strata_values = np.column_stack(codes) if len(codes) > 1 else codes[0]
        table = aggregate_counting_process(
            column(start_col),
            column(stop_col),
            column(event_col),
            design,
            strata=strata_values,
            fit_index=None if fit_col is None else column(fit_col).astype(np.int64),
        )
        return self.fit(table, covariate_names=list(covariates))

    def _check_fitted(self) -> None:
        if not hasattr(self, "result_"):
            raise NotFittedError("this AggregatedCoxPHFitter is not fitted yet; call fit(table) first.")

    @property
    def summary(self) -> pd.DataFrame:
        """One row per (fit, covariate): coefficient, hazard ratio, SE, Wald z and p, CI and fit status."""
        self._check_fitted()
        result = self.result_
        n_fits, p = result.coef.shape
        level = 100 * (1 - self.alpha)
        z_crit = stats.norm.ppf(1 - self.alpha / 2)
        coef = result.coef.reshape(-1)
        se = result.se.reshape(-1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            z = coef / se
            frame = pd.DataFrame(
                {
                    "fit": np.repeat(np.arange(n_fits), p),
                    "covariate": np.tile(np.asarray(self.covariate_names_, dtype=object), n_fits),
                    "coef": coef,
                    "exp(coef)": np.exp(coef),
                    "se(coef)": se,
                    "z": z,
                    "p": 2 * stats.norm.sf(np.abs(z)),
                    f"exp(coef) lower {level:g}%": np.exp(coef - z_crit * se),
                    f"exp(coef) upper {level:g}%": np.exp(coef + z_crit * se),
                    "converged": np.repeat(result.converged, p),
                    "n_iter": np.repeat(result.n_iter, p),
                    "status": np.repeat(result.status, p),
                }
            )
        return frame
