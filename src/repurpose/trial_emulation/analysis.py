"""Estimation of the emulated trial: outcome data on the clones' rows, the estimates of one set of weights, the
naive as-started comparison, and the nonparametric bootstrap.

A bootstrap replicate resamples persons (both clones together) as multinomial frequencies: the censoring models
are refitted with the frequencies as sample weights, and every estimator weights a row by frequency x inverse
probability of censoring, which equals duplicating the drawn persons (the Efron tie count aside: a person drawn
twice is one tied row of weight 2). The row structure and the censoring models' designs are built once
(`TrialData`, `Clones.censoring_models`), so a replicate is four logistic fits (Newton steps started from the
point estimate's coefficients, on the persons drawn) and a few cumulative sums. Replicates run in worker processes
(fork, one BLAS thread each), each with its own random stream `default_rng([seed, replicate])`, so the result
does not depend on the number of workers.

Imports numpy, polars, threadpoolctl (scikit-learn's), and the package's `trial_emulation` modules.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from repurpose.persistence.newusers import DAYS_PER_YEAR
from repurpose.trial_emulation.clones import (
    Clones,
    WeightFit,
    fit_censoring_models,
    same_grace_models,
    weights_from,
)
from repurpose.trial_emulation.estimators import (
    SurvivalRows,
    fit_cox,
    kaplan_meier,
    survival_at,
    weighted_rate,
)
from repurpose.trial_emulation.logistic import WarmStart
from repurpose.trial_emulation.protocol import TrialProtocol

EMULATION = "emulation"
SUSTAINED = "sustained"
NAIVE = "naive"
CURVE_STEP_DAYS = DAYS_PER_YEAR / 12


@dataclass
class TimeToEvent:
    """One time-to-event outcome on the clones' rows (`source`: the estimation row of each survival row) and on
    the naive as-started persons (`naive`, `naive_person`)."""

    rows: SurvivalRows
    source: np.ndarray
    naive: SurvivalRows
    naive_person: np.ndarray


@dataclass
class Rates:
    """Counts (relapses, or sick-leave days) and years per estimation row and per naive person."""

    counts: np.ndarray
    years: np.ndarray
    naive_counts: np.ndarray
    naive_years: np.ndarray


@dataclass
class TrialData:
    """Everything a replicate needs: clones, protocol settings, outcome rows and the naive groups."""

    clones: Clones
    protocol: TrialProtocol
    events: dict[str, TimeToEvent]
    rates: dict[str, Rates]
    naive_person: np.ndarray  # persons who started a therapy within the grace period
    naive_arm: np.ndarray  # 1 = started high-efficacy, per naive person
    analysis: str = EMULATION  # the clones' estimand: EMULATION (the strategies' start) or SUSTAINED
    sustained: TrialData | None = None  # the sustained clones' data beside the emulation's (same persons)

    @cached_property
    def shares_grace_models(self) -> bool:
        """Whether the sustained clones' grace-period censoring models are the emulation's, row for row (they are
        by construction; checked once, so a fit is never reused for a model it does not fit)."""
        return self.sustained is not None and same_grace_models(self.clones, self.sustained.clones)

    @property
    def parts(self) -> list[TrialData]:
        """The estimands' data: the emulation's, then the sustained one's when built."""
        return [self] if self.sustained is None else [self, self.sustained]


def event_rows(clones: Clones, event_day: np.ndarray) -> tuple[SurvivalRows, np.ndarray]:
    """The clones' rows truncated at each person's event day (nan: none): rows from the event on are dropped,
    the row holding it ends there with an event."""
    day = event_day[clones.person[clones.row_clone]]
    keep = ~(day <= clones.row_start)
    has = keep & (day <= clones.row_stop)
    stop = np.where(has, day, clones.row_stop)
    source = np.flatnonzero(keep)
    return SurvivalRows.build(clones.arm[clones.row_clone][keep], clones.row_start[keep], stop[keep], has[keep]), source


def naive_groups(clones: Clones, first_day: np.ndarray, first_high: np.ndarray, grace: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive as-started groups: persons whose first therapy started within the grace period, by its class."""
    started = ~np.isnan(first_day) & (first_day <= grace)
    person = np.flatnonzero(started)
    return person, first_high[person].astype(np.int8)


def build_trial_data(
    clones: Clones,
    protocol: TrialProtocol,
    *,
    followup: np.ndarray,
    first_day: np.ndarray,
    first_high: np.ndarray,
    event_days: Mapping[str, np.ndarray],
    count_days: Mapping[str, tuple[np.ndarray, np.ndarray]],
    daily_counts: Mapping[str, np.ndarray],
    analysis: str = EMULATION,
) -> TrialData:
    """The outcome data of every outcome. `event_days`: per time-to-event outcome, the day of the event per
    person (nan: none in follow-up); `count_days`: per count outcome, (person, day) of every event (relapses);
    `daily_counts`: per amount outcome, a persons x intervals array of amounts (sick-leave days) per
    protocol interval."""
    naive_person, naive_arm = naive_groups(clones, first_day, first_high, protocol.grace_days)
    events = {}
    for name, day in event_days.items():
        rows, source = event_rows(clones, day)
        e = day[naive_person]
        has = e <= followup[naive_person]
        stop = np.where(has, e, followup[naive_person])
        naive = SurvivalRows.build(naive_arm, np.zeros(len(stop)), stop, has)
        events[name] = TimeToEvent(rows, source, naive, naive_person)
    years = (clones.row_stop - clones.row_start) / DAYS_PER_YEAR
    row_person = clones.person[clones.row_clone]
    naive_years = followup[naive_person] / DAYS_PER_YEAR
    rates = {}
    for name, (person, day) in count_days.items():
        counts = _counts_in_rows(person, day, row_person, clones.row_start, clones.row_stop)
        naive_counts = _counts_in_rows(person, day, naive_person, np.zeros(len(naive_person)), followup[naive_person])
        rates[name] = Rates(counts, years, naive_counts, naive_years)
    for name, amounts in daily_counts.items():
        cum = np.hstack([np.zeros((amounts.shape[0], 1)), np.cumsum(amounts, axis=1)])
        counts = _amount(cum, amounts, row_person, clones.row_stop, protocol.interval_days) - _amount(
            cum, amounts, row_person, clones.row_start, protocol.interval_days)  # fmt: skip
        naive_counts = _amount(cum, amounts, naive_person, followup[naive_person], protocol.interval_days)
        rates[name] = Rates(counts, years, naive_counts, naive_years)
    return TrialData(clones, protocol, events, rates, naive_person, naive_arm, analysis)


def _counts_in_rows(person: np.ndarray, day: np.ndarray, row_person: np.ndarray, start: np.ndarray,
                    stop: np.ndarray) -> np.ndarray:  # fmt: skip
    """Events with start < day <= stop of each row's person."""
    scale = float(max(np.max(stop, initial=0), np.max(day, initial=0)) + 2)
    keys = np.sort(person.astype(float) * scale + day)
    base = row_person.astype(float) * scale
    return (np.searchsorted(keys, base + stop, "right") - np.searchsorted(keys, base + start, "right")).astype(float)


def _amount(cum: np.ndarray, amounts: np.ndarray, person: np.ndarray, day: np.ndarray, width: int) -> np.ndarray:
    """Amount accrued on days [0, day) of each person: whole intervals, and the share of the interval holding
    `day` (pro rata)."""
    k = np.minimum(np.floor_divide(day, width).astype(np.int64), amounts.shape[1])
    partial = np.where(k < amounts.shape[1], amounts[person, np.minimum(k, amounts.shape[1] - 1)], 0.0)
    return cum[person, k] + partial * (day - k * width) / width


def estimates(data: TrialData, fit: WeightFit, frequency: np.ndarray | None = None,
              grid_days: np.ndarray | None = None) -> dict[tuple[str, str, str], float | np.ndarray]:  # fmt: skip
    """Every estimate of one set of weights (and bootstrap frequencies): keys (analysis, outcome, measure);
    risks at the horizons and, with `grid_days`, the risk curves (arrays) per strategy. The naive comparison is
    estimated with the emulation's data only."""
    freq = np.ones(data.clones.n_persons) if frequency is None else frequency.astype(float)
    row_w = fit.row_weight * freq[data.clones.person[data.clones.row_clone]]
    out: dict[tuple[str, str, str], float | np.ndarray] = {}
    horizons = [(h, h * DAYS_PER_YEAR) for h in data.protocol.horizons_years]
    for name, ev in data.events.items():
        parts = [(data.analysis, ev.rows, row_w[ev.source])] + ([(NAIVE, ev.naive, freq[ev.naive_person])] if data.analysis == EMULATION else [])
        for analysis, rows, w in parts:
            tables = rows.tables(w)
            surv = {a: kaplan_meier(tables[f"n{a}"], tables[f"d{a}"]) for a in (0, 1)}
            for h, days in horizons:
                r1, r0 = (1.0 - float(survival_at(rows.times, surv[a], days)) for a in (1, 0))
                out[(analysis, name, f"risk_high_efficacy_{h:g}y")] = r1
                out[(analysis, name, f"risk_escalation_{h:g}y")] = r0
                out[(analysis, name, f"risk_difference_{h:g}y")] = r1 - r0
                out[(analysis, name, f"risk_ratio_{h:g}y")] = r1 / r0 if r0 > 0 else np.nan
            cox = fit_cox(tables)
            out[(analysis, name, "hazard_ratio")] = float(np.exp(cox.log_hr)) if cox.converged else np.nan
            if grid_days is not None:
                for a, label in ((1, "curve_high_efficacy"), (0, "curve_escalation")):
                    out[(analysis, name, label)] = 1.0 - survival_at(rows.times, surv[a], grid_days)
    for name, rate in data.rates.items():
        naive_arm = data.naive_arm
        groups = [(data.analysis, rate.counts, rate.years, row_w, data.clones.arm[data.clones.row_clone])]
        if data.analysis == EMULATION:
            groups.append((NAIVE, rate.naive_counts, rate.naive_years, freq[data.naive_person], naive_arm))
        for analysis, counts, years, w, arm in groups:
            r1, r0 = weighted_rate(counts, years, w, arm)
            out[(analysis, name, "per_year_high_efficacy")] = r1
            out[(analysis, name, "per_year_escalation")] = r0
            out[(analysis, name, "rate_ratio")] = r1 / r0 if r0 > 0 else np.nan
            out[(analysis, name, "difference_per_year")] = r1 - r0
    return out


def fit_weights(data: TrialData, frequency: np.ndarray | None = None, start: tuple[np.ndarray | WarmStart | None, ...] = (),
                known: Sequence[tuple[np.ndarray, np.ndarray | None]] = ()) -> WeightFit:  # fmt: skip
    """Censoring models fitted (with bootstrap frequencies, from `start` coefficients; `known`: models fitted
    already, `fit_censoring_models`) and the truncated cumulative weights."""
    fit = fit_censoring_models(data.clones, frequency, start, known)
    return weights_from(data.clones, fit.p_deviate, data.protocol.weight_truncation_percentile, frequency, fit.coefs)


def fit_all(data: TrialData, frequency: np.ndarray | None = None,
            starts: Sequence[tuple[np.ndarray | WarmStart | None, ...]] = ()) -> list[WeightFit]:  # fmt: skip
    """`fit_weights` of every estimand's clones (`TrialData.parts`), from `starts` (one per part). The sustained
    clones' grace-period models are the emulation's (`TrialData.shares_grace_models`): fitted once."""
    fits = [fit_weights(data, frequency, starts[0] if starts else ())]
    for i, part in enumerate(data.parts[1:], start=1):
        known = ([(fits[0].p_deviate[m.rows], fits[0].coefs[j]) for j, m in enumerate(data.clones.censoring_models)]
                 if data.shares_grace_models else [])  # fmt: skip
        fits.append(fit_weights(part, frequency, starts[i] if i < len(starts) else (), known))
    return fits


def estimates_all(data: TrialData, fits: Sequence[WeightFit], frequency: np.ndarray | None = None,
                  grid_days: np.ndarray | None = None) -> dict[tuple[str, str, str], float | np.ndarray]:  # fmt: skip
    """`estimates` of every estimand (`TrialData.parts`) with its weights, in one dictionary."""
    out: dict[tuple[str, str, str], float | np.ndarray] = {}
    for part, fit in zip(data.parts, fits, strict=True):
        out |= estimates(part, fit, frequency, grid_days)
    return out


_WORKER_DATA: TrialData | None = None
_WORKER_GRID: np.ndarray | None = None
_WORKER_START: tuple[tuple[WarmStart | None, ...], ...] = ()


def _replicate(index: int) -> dict:
    """One bootstrap replicate (module doc): persons resampled with the replicate's own random stream."""
    data = _WORKER_DATA
    assert data is not None
    rng = np.random.default_rng([data.protocol.seed, index])
    n = data.clones.n_persons
    frequency = rng.multinomial(n, np.full(n, 1.0 / n))
    with threadpool_limits(1):
        return estimates_all(data, fit_all(data, frequency, _WORKER_START), frequency, _WORKER_GRID)


def _replicates(indices: Sequence[int]) -> list[dict]:
    return [_replicate(i) for i in indices]


def bootstrap(data: TrialData, replicates: int, workers: int, grid_days: np.ndarray | None = None,
              start: Sequence[tuple[np.ndarray | None, ...]] = ()) -> list[dict]:  # fmt: skip
    """`replicates` bootstrap replicates' estimates (every estimand, `TrialData.parts`), in replicate order, over
    `workers` processes (chunks of consecutive replicates; replicate b draws from the stream (seed, b) whichever
    process runs it); the censoring models start from `start` (per part, the point estimate's coefficients: fewer
    Newton steps, the same maximum; the first step from per-person sums, `warm_starts`)."""
    global _WORKER_DATA, _WORKER_GRID, _WORKER_START
    for part in data.parts:
        part.clones.censoring_models  # built once before the fork, shared by every worker  # noqa: B018
        part.clones.layout  # noqa: B018
    data.shares_grace_models  # checked once before the fork too  # noqa: B018
    _WORKER_DATA, _WORKER_GRID, _WORKER_START = data, grid_days, warm_starts(data, start)
    try:
        if workers <= 1 or replicates < 2:
            return _replicates(range(replicates))
        # consecutive chunks of about an eighth of a worker's share, handed to whichever worker is free: on a shared
        # machine a worker slowed by other jobs takes fewer chunks instead of holding up the others at the end
        size = max(1, replicates // (8 * workers))
        chunks = [range(i, min(i + size, replicates)) for i in range(0, replicates, size)]
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return [replicate for part in pool.map(_replicates, chunks) for replicate in part]
    finally:
        _WORKER_DATA, _WORKER_GRID, _WORKER_START = None, None, ()


def warm_starts(data: TrialData, start: Sequence[tuple[np.ndarray | None, ...]]) -> tuple[tuple[WarmStart | None, ...], ...]:
    """Per part and censoring model, the `WarmStart` of its `start` coefficients (None: no logistic fit, or a model
    fitted once for both parts, `fit_all`), built once before the bootstrap's fork."""
    out = []
    for i, (part, coefs) in enumerate(zip(data.parts, start, strict=False)):
        shared = len(data.clones.censoring_models) if i > 0 and data.shares_grace_models else 0
        out.append(tuple(WarmStart.at(model.design, model.deviates, coef) if coef is not None and j >= shared else None
                         for j, (model, coef) in enumerate(zip(part.clones.censoring_models, coefs, strict=True))))  # fmt: skip
    return tuple(out)


def percentile_intervals(point: Mapping, replicates: Sequence[Mapping], level: float = 0.95) -> dict:
    """(lower, upper) percentile bootstrap interval of every scalar or curve estimate (nan-ignoring; nan when
    fewer than half the replicates give a value). Every estimate's replicates as columns of one matrix: one
    quantile call for the columns without nan, one for the others."""
    alpha = (1 - level) / 2
    shapes = {key: np.shape(value) for key, value in point.items()}
    if not replicates:
        return {key: (np.full_like(np.asarray(value, float), np.nan),) * 2 for key, value in point.items()}
    values = np.array([np.concatenate([np.ravel(np.asarray(r[key], float)) for key in point]) for r in replicates])
    missing = np.isnan(values)
    ok = np.sum(~missing, axis=0) >= len(replicates) / 2
    bounds = np.full((2, values.shape[1]), np.nan)
    clean = ~missing.any(axis=0)
    bounds[:, clean] = np.quantile(values[:, clean], [alpha, 1 - alpha], axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-nan column: no interval, said by nan
        bounds[:, ~clean] = np.nanquantile(values[:, ~clean], [alpha, 1 - alpha], axis=0)
    bounds[:, ~ok] = np.nan
    out, offset = {}, 0
    for key, shape in shapes.items():
        size = int(np.prod(shape))
        out[key] = tuple(b[offset:offset + size].reshape(shape) for b in bounds)
        offset += size
    return out


def estimates_frame(point: Mapping, intervals: Mapping) -> pl.DataFrame:
    """The scalar estimates as a table: analysis, outcome, measure, estimate, lower, upper."""
    rows = [(a, o, m, float(v), float(intervals[(a, o, m)][0]), float(intervals[(a, o, m)][1]))
            for (a, o, m), v in point.items() if np.ndim(v) == 0]  # fmt: skip
    schema = {"analysis": pl.String, "outcome": pl.String, "measure": pl.String, "estimate": pl.Float64,
              "lower": pl.Float64, "upper": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(
        pl.col(c).fill_nan(None) for c in ("estimate", "lower", "upper")
    )
