"""Efron Cox fits of one binary exposure and nothing else, many fits at once: the screen's fast path.

With a single 0/1 covariate and no other, a risk set is fully described by four counts: exposed and
unexposed at risk (n1, n0) and exposed and unexposed events (d1, d0). Efron's tie correction splits a
risk set with D = d1 + d0 > 1 events into D steps l = 0..D-1 whose at-risk counts are reduced by the
fraction l/D of the events: n1 - (l/D) d1 exposed and n0 - (l/D) d0 unexposed. Each step is then a
two-group comparison with exposed share p = a e^b / (u + a e^b) (a, u: the step's exposed and unexposed
counts), so per fit

    log L(b) = b sum(d1) - sum_steps log(u + a e^b),   score = sum(d1) - sum_steps p,
    information = sum_steps p (1 - p).

That is a handful of array passes per Newton iteration instead of the general engine's pattern sums,
with the same model, the same Newton-Raphson rule (`coxph.accept_or_halve`) and the same status rules
as `coxph.fit_efron`, which the tests check it against (to rounding) on the equivalent `RiskSetTable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repurpose.cox.engine import SINGULAR_RELATIVE_TOL, finish_fits, newton_raphson, start_newton
from repurpose.cox.result import CoxFitResult
from repurpose.cox.risk_set_table import (
    CoxEngineError,
    RiskSetTable,
    RiskSetTableError,
    concatenated_ranges,
    segment_sums,
)

__all__ = ["BinaryRiskSets", "fit_binary_efron"]


@dataclass(frozen=True)
class BinaryRiskSets:
    """Risk sets of many Cox fits of one binary exposure: one row per (fit, stratum, event time).

    Rows are sorted by `fit_index`; counts are whole numbers of persons (Efron steps need integer ties).
    """

    fit_index: np.ndarray  # int64, non-decreasing
    n_exposed_at_risk: np.ndarray
    n_unexposed_at_risk: np.ndarray
    n_exposed_events: np.ndarray
    n_unexposed_events: np.ndarray
    n_fits: int

    def __post_init__(self) -> None:
        fit_index = np.asarray(self.fit_index, dtype=np.int64)
        n_rows = fit_index.shape[0]
        counts = {}
        for name in ("n_exposed_at_risk", "n_unexposed_at_risk", "n_exposed_events", "n_unexposed_events"):
            values = np.asarray(getattr(self, name))
            if values.dtype.kind not in "iuf":  # whole-number arrays stay as they are (no copy)
                values = values.astype(np.float64)
            if values.shape != (n_rows,):
                raise RiskSetTableError(f"{name} must have one entry per row ({n_rows}); got shape {values.shape}.")
            if n_rows and values.min() < 0:
                raise RiskSetTableError(f"{name} must hold non-negative numbers of persons.")
            if n_rows and name.endswith("_events") and values.dtype.kind == "f" and np.any(values != np.round(values)):
                raise RiskSetTableError(f"{name} must hold whole numbers (Efron steps split tied events).")
            counts[name] = values
        if n_rows:
            if fit_index[0] < 0 or fit_index[-1] >= self.n_fits or not (fit_index[1:] >= fit_index[:-1]).all():
                raise RiskSetTableError(f"fit_index must be sorted and lie in [0, n_fits={self.n_fits}).")
            if np.any(counts["n_exposed_events"] > counts["n_exposed_at_risk"]) or np.any(
                counts["n_unexposed_events"] > counts["n_unexposed_at_risk"]
            ):
                raise RiskSetTableError("events exceed the number at risk in some row (at risk is start < t <= stop).")
        object.__setattr__(self, "fit_index", fit_index)
        for name, values in counts.items():
            object.__setattr__(self, name, values)

    @property
    def n_rows(self) -> int:
        return int(self.fit_index.shape[0])

    def fit_bounds(self) -> np.ndarray:
        """Row bounds of the fits: fit f has rows fit_bounds()[f]:fit_bounds()[f + 1]."""
        return np.searchsorted(self.fit_index, np.arange(self.n_fits + 1), "left")

    def to_risk_set_table(self) -> RiskSetTable:
        """The same risk sets as a general `RiskSetTable` (an unexposed and an exposed row per risk set)."""
        n = self.n_rows
        n_at_risk = np.empty(2 * n)
        n_at_risk[0::2], n_at_risk[1::2] = self.n_unexposed_at_risk, self.n_exposed_at_risk
        n_events = np.empty(2 * n)
        n_events[0::2], n_events[1::2] = self.n_unexposed_events, self.n_exposed_events
        design = np.tile([0.0, 1.0], n)[:, None]
        keep = n_at_risk > 0
        return RiskSetTable(
            fit_index=np.repeat(self.fit_index, 2)[keep],
            risk_set_index=np.repeat(np.arange(n, dtype=np.int64), 2)[keep],
            n_at_risk=n_at_risk[keep],
            n_events=n_events[keep],
            design=design[keep],
            n_fits=self.n_fits,
        )


@dataclass
class _Steps:
    """Efron steps of the risk sets with events of a subset of fits (`fits`), indexed 0..len(fits)-1.

    Every such risk set has a first step (l = 0) with its full counts: those are the risk sets themselves
    (`exposed`, `unexposed`; each local fit's contiguous run of `steps_per_fit` from `first_step`, summed
    per fit by `np.add.reduceat`, several times faster than `bincount`), so without filtering they are
    views of the table. The further steps l = 1..D-1 of tied risk sets are kept apart (`tie_*`, few).
    """

    fits: np.ndarray
    first_step: np.ndarray
    steps_per_fit: np.ndarray
    exposed: np.ndarray  # a: exposed at risk in the step
    unexposed: np.ndarray  # u: unexposed at risk in the step
    tie_fit: np.ndarray  # local fit of each further step of a tied risk set
    tie_exposed: np.ndarray
    tie_unexposed: np.ndarray
    exposed_events: np.ndarray  # per local fit: sum d1

    def subset(self, keep_local: np.ndarray) -> _Steps:
        """Steps of the local fits `keep_local` (sorted), renumbered."""
        if keep_local.shape[0] == self.fits.shape[0]:
            return self
        lengths = self.steps_per_fit[keep_local]
        rows = concatenated_ranges(self.first_step[keep_local], lengths)
        new_local = np.full(self.fits.shape[0], -1)
        new_local[keep_local] = np.arange(keep_local.shape[0])
        tie_fit = new_local[self.tie_fit]
        ties = tie_fit >= 0
        return _Steps(
            self.fits[keep_local],
            np.cumsum(lengths) - lengths,
            lengths,
            self.exposed[rows],
            self.unexposed[rows],
            tie_fit[ties],
            self.tie_exposed[ties],
            self.tie_unexposed[ties],
            self.exposed_events[keep_local],
        )

    def per_fit(self, values: np.ndarray, tie_values: np.ndarray) -> np.ndarray:
        """Per local fit, the sum of a per-step quantity (first steps, then further tie steps)."""
        n_fits = self.fits.shape[0]
        sums = np.add.reduceat(values, self.first_step) if n_fits else np.zeros(0)
        if tie_values.shape[0]:
            sums += np.bincount(self.tie_fit, weights=tie_values, minlength=n_fits)
        return sums


def _efron_steps(table: BinaryRiskSets, fits: np.ndarray) -> _Steps:
    """The Efron steps of `fits` (the fits with events); risk sets without events carry nothing."""
    exposed, unexposed = table.n_exposed_at_risk, table.n_unexposed_at_risk
    exposed_events, fit_index = table.n_exposed_events, table.fit_index
    events = exposed_events + table.n_unexposed_events
    row_bounds = table.fit_bounds()
    if np.any(events == 0):  # only risk sets with events are steps
        with_events = events > 0
        row_bounds = np.searchsorted(np.flatnonzero(with_events), row_bounds)
        exposed, unexposed, exposed_events, fit_index, events = (
            values[with_events] for values in (exposed, unexposed, exposed_events, fit_index, events)
        )
    local_of_fit = np.full(table.n_fits, -1)
    local_of_fit[fits] = np.arange(fits.shape[0])
    tied = np.flatnonzero(events > 1)
    further = (events[tied] - 1).astype(np.int64)  # step l of a set with D tied events removes l / D of them
    tie_of_step = np.repeat(np.arange(tied.shape[0]), further)
    rows = tied[tie_of_step]
    fraction = (np.arange(tie_of_step.shape[0]) - (np.cumsum(further) - further)[tie_of_step] + 1) / events[rows]
    return _Steps(
        fits,
        row_bounds[fits],
        np.diff(row_bounds)[fits],
        exposed,
        unexposed,
        local_of_fit[fit_index[rows]],
        exposed[rows] - fraction * exposed_events[rows],
        unexposed[rows] - fraction * (events[rows] - exposed_events[rows]),
        segment_sums(table.n_exposed_events, table.fit_bounds())[fits],
    )


def _derivatives(steps: _Steps, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Log-likelihood, score, information and expected exposed events of every local fit at `beta`."""
    n_local = steps.fits.shape[0]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # Divide through by e^max(b, 0) so that no exp() overflows; the weights are per fit.
        shift = np.maximum(beta, 0.0)
        exposed_weight, unexposed_weight = np.exp(beta - shift), np.exp(-shift)
        first = _step_terms(steps.exposed, steps.unexposed, exposed_weight, unexposed_weight, steps.steps_per_fit)
        ties = _step_terms(
            steps.tie_exposed, steps.tie_unexposed, exposed_weight[steps.tie_fit], unexposed_weight[steps.tie_fit]
        )
    log_total, share, information = (steps.per_fit(f, t) for f, t in zip(first, ties, strict=True))
    n_steps = steps.steps_per_fit + np.bincount(steps.tie_fit, minlength=n_local)
    log_total += n_steps * shift
    return beta * steps.exposed_events - log_total, steps.exposed_events - share, information, share


def _step_terms(
    exposed: np.ndarray,
    unexposed: np.ndarray,
    exposed_weight: np.ndarray,
    unexposed_weight: np.ndarray,
    steps_per_fit: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: log(u w0 + a w1), the exposed share p = a w1 / (u w0 + a w1) and p (1 - p), with the
    weights given per fit (`steps_per_fit` steps each, contiguous) or per step."""
    if steps_per_fit is not None:
        exposed_weight = np.repeat(exposed_weight, steps_per_fit)
        unexposed_weight = np.repeat(unexposed_weight, steps_per_fit)
    share = exposed_weight
    share *= exposed
    total = unexposed_weight
    total *= unexposed
    total += share
    share /= total
    np.log(total, out=total)
    variance = 1.0 - share
    variance *= share
    return total, share, variance


def _separation(table: BinaryRiskSets) -> np.ndarray:
    """Per fit: the likelihood increases without bound as the coefficient goes to +inf or -inf (data only).

    As in `coxph`: exposure varies in a risk set with events, and either every such event is exposed
    wherever someone exposed is at risk, or every one is unexposed wherever someone unexposed is.
    """
    n1, n0 = table.n_exposed_at_risk, table.n_unexposed_at_risk
    d1, d0 = table.n_exposed_events, table.n_unexposed_events
    has_events = (d1 + d0) > 0
    row_bounds = table.fit_bounds()

    def any_per_fit(flags: np.ndarray) -> np.ndarray:
        return segment_sums(flags, row_bounds) > 0

    varies = any_per_fit(has_events & (n1 > 0) & (n0 > 0))
    not_top = any_per_fit((d0 > 0) & (n1 > 0))
    not_bottom = any_per_fit((d1 > 0) & (n0 > 0))
    return varies & (~not_top | ~not_bottom)


def fit_binary_efron(table: BinaryRiskSets, *, max_iter: int = 50, tol: float = 1e-9) -> CoxFitResult:
    """Fit every model of `table` (one binary covariate) by Newton-Raphson with step halving, Efron ties.

    Same rules, statuses and result layout as `coxph.fit_efron` on `table.to_risk_set_table()`.
    """
    if not isinstance(table, BinaryRiskSets):
        raise CoxEngineError(f"fit_binary_efron needs a BinaryRiskSets; got {type(table)}.")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise CoxEngineError(f"max_iter must be a non-negative integer; got {max_iter!r}.")
    if not (tol > 0):
        raise CoxEngineError(f"tol must be positive; got {tol!r}.")
    n_fits = table.n_fits
    n_events = segment_sums(table.n_exposed_events + table.n_unexposed_events, table.fit_bounds()).astype(np.float64)
    status = np.full(n_fits, "ok", dtype="<U20")
    status[~(n_events > 0)] = "no_events"
    loglik = np.zeros(n_fits)
    loglik_null = np.zeros(n_fits)
    score = np.zeros((n_fits, 1))
    information = np.zeros((n_fits, 1, 1))

    fits = np.flatnonzero(n_events > 0)
    steps = _efron_steps(table, fits)
    null_loglik, null_score, null_info, null_expected = _derivatives(steps, np.zeros(fits.shape[0]))
    loglik_null[fits] = loglik[fits] = null_loglik
    score[fits, 0], information[fits, 0, 0] = null_score, null_info
    singular_local = ~(null_info > SINGULAR_RELATIVE_TOL * null_expected) | ~(null_expected > 0)
    singular = fits[singular_local]
    status[singular] = "singular_information"
    exact_separation = _separation(table)

    steps = steps.subset(np.flatnonzero(~singular_local))
    active = steps.fits
    newton = start_newton(np.zeros((n_fits, 1)), loglik, score, information, active)

    def evaluate(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nonlocal steps
        if active.size < 0.5 * steps.fits.shape[0]:
            steps = steps.subset(np.flatnonzero(np.isin(steps.fits, active, assume_unique=True)))
        new_loglik, new_score, new_info, _ = _derivatives(steps, newton.trial[steps.fits, 0])
        in_active = np.isin(steps.fits, active, assume_unique=True)
        evaluated = steps.fits[in_active]
        return evaluated, new_loglik[in_active], new_score[in_active, None], new_info[in_active, None, None]

    newton_raphson(newton, active, evaluate, max_iter, tol)
    return finish_fits(newton, status, fits, singular, exact_separation[:, None], loglik_null, n_events)
