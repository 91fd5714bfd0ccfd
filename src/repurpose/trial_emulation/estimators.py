"""Weighted estimators on counting-process rows (start, stop] of two arms: Kaplan-Meier, Cox (Efron ties, the
arm as the only covariate) and rates.

The row structure of an outcome is fixed once (`SurvivalRows`: sort orders, event-time codes); each call with
new weights (a bootstrap replicate's refitted weights times its frequencies) is then a few cumulative sums.
A row is at risk at time t when start < t <= stop, as in lifelines' CoxTimeVaryingFitter. Weighted
Kaplan-Meier: S(t) = prod (1 - d_w(u) / n_w(u)) over event times u <= t, d_w and n_w the weighted events and
numbers at risk. Cox: lifelines' weighted Efron partial likelihood, per event time with d tied event rows of
weighted sum W_D: W_D/d x sum_{l<d} log(S_R - l/d S_D). Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COX_MAX_ITER = 50
COX_TOL = 1e-10


@dataclass
class SurvivalRows:
    """Counting-process rows of two arms (arm 1 vs arm 0) with the precomputed structure of the estimators."""

    arm: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    event: np.ndarray
    times: np.ndarray  # unique event times, ascending
    _start_code: np.ndarray  # per row: 2 x (event times <= start) + arm
    _stop_code: np.ndarray  # per row: 2 x (event times <= stop) + arm
    _event_code: np.ndarray  # per row: index into times (events only, else -1)

    @classmethod
    def build(cls, arm: np.ndarray, start: np.ndarray, stop: np.ndarray, event: np.ndarray) -> SurvivalRows:
        """Rows with start < stop; `event` marks an event at `stop`."""
        arm, start, stop, event = (np.asarray(arm).astype(np.int8), np.asarray(start, float), np.asarray(stop, float),
                                   np.asarray(event, bool))  # fmt: skip
        if np.any(stop <= start):
            raise ValueError("survival rows: every row must have start < stop")
        times = np.unique(stop[event])
        code = np.full(len(stop), -1, np.int64)
        code[event] = np.searchsorted(times, stop[event])
        side = 2 * np.searchsorted(times, np.stack([start, stop]), "right") + (arm == 1)
        return cls(arm, start, stop, event, times, side[0], side[1], code)

    def _at_risk(self, w: np.ndarray) -> np.ndarray:
        """Weighted number at risk at each event time per arm (times x arm 0, 1): the sum of w over rows with
        start < t <= stop, i.e. the rows with stop >= t less those with start >= t (sums over the later event
        times' bins: no cancellation against the total)."""
        size = 2 * (len(self.times) + 1)
        later = np.bincount(self._stop_code, weights=w, minlength=size) - np.bincount(self._start_code, weights=w, minlength=size)
        return np.cumsum(later.reshape(-1, 2)[:0:-1], axis=0)[::-1]

    def tables(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per event time and arm (suffix 1, 0): weighted at risk `n`, weighted events `d`, and the number of
        event rows with positive weight `count` (the Efron tie count), both arms together."""
        out = {}
        positive_event = self.event & (weights > 0)
        codes = self._event_code[positive_event]
        at_risk = self._at_risk(weights)
        event_weight, event_arm = weights[positive_event], self.arm[positive_event]
        for a in (0, 1):
            out[f"n{a}"] = at_risk[:, a]
            out[f"d{a}"] = np.bincount(codes, weights=np.where(event_arm == a, event_weight, 0.0), minlength=len(self.times))
        out["count"] = np.bincount(codes, minlength=len(self.times)).astype(float)
        return out


def kaplan_meier(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Weighted Kaplan-Meier survival after each event time (a time with nobody at risk does not step)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(n > 0, 1.0 - d / np.where(n > 0, n, 1.0), 1.0)
    return np.cumprod(np.clip(factor, 0.0, 1.0))  # d = n up to rounding: exactly 0, not -1e-15


def survival_at(times: np.ndarray, survival: np.ndarray, at: float | np.ndarray) -> np.ndarray:
    """The step function S at `at` (S = 1 before the first event time, and everywhere without an event)."""
    if len(survival) == 0:
        return np.ones_like(np.asarray(at, dtype=float))
    index = np.searchsorted(times, at, "right") - 1
    return np.where(index >= 0, survival[np.maximum(index, 0)], 1.0)


@dataclass(frozen=True)
class CoxFit:
    """A weighted Cox fit of one binary covariate: log hazard ratio, convergence and iterations."""

    log_hr: float
    converged: bool
    n_iter: int
    log_likelihood: float


def _efron_terms(tables: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The (event time, l) expansion of the Efron sum: per term the risk-set and tie sums of each arm."""
    count = tables["count"].astype(np.int64)
    keep = count > 0
    k = np.repeat(np.arange(len(count))[keep], count[keep])
    l_index = np.arange(len(k)) - np.repeat(np.cumsum(count[keep]) - count[keep], count[keep])
    fraction = l_index / count[k]
    weight = (tables["d0"][k] + tables["d1"][k]) / count[k]  # W_D / d
    r0, r1 = tables["n0"][k] - fraction * tables["d0"][k], tables["n1"][k] - fraction * tables["d1"][k]
    return r0, r1, weight


def fit_cox(tables: dict[str, np.ndarray], *, max_iter: int = COX_MAX_ITER, tol: float = COX_TOL) -> CoxFit:
    """Newton-Raphson with step halving on lifelines' weighted Efron partial likelihood (module doc)."""
    r0, r1, weight = _efron_terms(tables)
    d1 = float(tables["d1"].sum())

    def evaluate(beta: float) -> tuple[float, float, float]:
        e = np.exp(beta)
        a = r0 + e * r1
        share = e * r1 / a
        loglik = beta * d1 - float(np.sum(weight * np.log(a)))
        return loglik, d1 - float(np.sum(weight * share)), float(np.sum(weight * share * (1 - share)))

    if len(r0) == 0 or d1 <= 0 or float(tables["d0"].sum()) <= 0:
        return CoxFit(np.nan, False, 0, np.nan)
    beta, (loglik, score, info) = 0.0, evaluate(0.0)
    for iteration in range(1, max_iter + 1):
        if info <= 0:
            return CoxFit(np.nan, False, iteration, loglik)
        step = score / info
        for _ in range(30):
            trial = evaluate(beta + step)
            if trial[0] >= loglik - 1e-12 * abs(loglik):
                break
            step /= 2
        beta += step
        loglik, score, info = trial
        if abs(step) < tol:
            return CoxFit(beta, True, iteration, loglik)
    return CoxFit(beta, False, max_iter, loglik)


def weighted_rate(counts: np.ndarray, years: np.ndarray, weights: np.ndarray, arm: np.ndarray) -> tuple[float, float]:
    """Weighted rates per year of arm 1 and arm 0: sum(w x count) / sum(w x years) (Poisson maximum likelihood),
    each sum per arm by one `bincount`."""
    exposure = np.bincount(arm, weights=weights * years, minlength=2)
    events = np.bincount(arm, weights=weights * counts, minlength=2)
    r1, r0 = (float(events[a]) / float(exposure[a]) if exposure[a] > 0 else np.nan for a in (1, 0))
    return r1, r0
