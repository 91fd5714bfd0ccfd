"""Clone, censor, weight: each eligible person cloned into both strategies, censored at deviation, and weighted
by the inverse probability of remaining uncensored (pooled logistic models per interval and arm).

Rules (docs/methods.md, "Trial emulation: design and estimation"), with s the day of the first disease-modifying
therapy (days from time zero) and g the grace period:

* high-efficacy clone: censored at s when the first therapy is moderate-efficacy and s <= g; at g when no therapy
  started by then; never when the first therapy is high-efficacy with s <= g (it complies from s on);
* escalation clone: the same with the classes swapped;
* a clone whose follow-up ends (death, emigration, study end) before it is censored is not censored.

The censoring model's long format has one row per clone and grace interval k while the clone is still at risk
of censoring (neither censored nor complying before the interval starts): interval k covers days
[b_k, b_{k+1}) with b_k = min(k x interval_days, g), the last one [b_{K-1}, g]. The row's outcome is deviation
within the interval. The cumulative weight after interval k is W_k = prod_{j<=k} 1 / P(no deviation in j);
a clone's time in (b_k, b_{k+1}] carries W_{k-1} (W_{-1} = 1), and its time after it stopped being at risk of
censoring carries its last W. So the estimation rows are at most K + 1 per clone.

Sustained strategies (with an `adherence.Adherence`): a clone that followed its strategy's start stays at risk
of deviating after it, on one interval layout with the grace period (`TrialProtocol.interval_bounds`: the grace
intervals, then adherence_interval_days ones to the end of follow-up). Its rows after the interval holding the
start are adherence rows (`model_phase` 1), modelled per arm by one pooled logistic model with the baseline and
time-varying covariates and `adherence.ADHERENCE_COVARIATES`; a deviation before the end of the start's interval
counts at that end (at most interval_days later). The weights are the same cumulative products over a clone's
rows, times a stabilising numerator per arm and interval (`stabiliser`), then truncated as above; the estimation
rows are still one per interval at risk, so a clone has at most one row per interval of follow-up.

Imports numpy, polars and the package's `trial_emulation.adherence` (the Adherence type), `cohort`, `logistic`
and `protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl

from repurpose.trial_emulation.adherence import Adherence
from repurpose.trial_emulation.cohort import COVARIATES, TIME_VARYING
from repurpose.trial_emulation.logistic import PersonDesign, WarmStart, fit_logistic, with_intercept
from repurpose.trial_emulation.protocol import ESCALATION, HIGH_EFFICACY, STRATEGIES, TrialProtocol

MIN_CLINIC_PERSONS = 50
"""A clinic with fewer eligible persons enters the censoring model as its country (too few for its own term)."""
NEVER = np.inf


@dataclass
class Clones:
    """Both clones of every person: arrays indexed by clone (arm 1 = high-efficacy, 0 = escalation; clone c of
    arm a belongs to person c mod n), the censoring model's long format and the estimation rows."""

    n_persons: int
    n_intervals: int  # intervals of the grace period (the last one ends on its last day)
    arm: np.ndarray  # per clone
    person: np.ndarray  # per clone
    stop: np.ndarray  # per clone: day the clone's follow-up ends (censoring or end of follow-up)
    censored: np.ndarray  # per clone: censored at `stop` for deviating from its strategy
    # censoring model long format (rows = clone x interval at risk of censoring)
    model_clone: np.ndarray
    model_interval: np.ndarray
    model_deviates: np.ndarray
    model_x: np.ndarray  # design matrix (standardised covariates, interval dummies)
    # estimation rows: (start, stop] of a clone with the cumulative weight of model row `weight_row` (-1: 1)
    row_clone: np.ndarray
    row_start: np.ndarray
    row_stop: np.ndarray
    row_weight_row: np.ndarray
    final_weight_row: np.ndarray  # per clone: the model row of its last weight (-1: never at risk)
    # sustained clones only: per model row 0 (grace period, the start) or 1 (adherence after the start), and the
    # adherence models' extra covariates (adherence.ADHERENCE_COVARIATES)
    model_phase: np.ndarray | None = None
    model_extra: np.ndarray | None = None

    @property
    def n_clones(self) -> int:
        return len(self.arm)

    @cached_property
    def censoring_models(self) -> tuple[CensoringModel, ...]:
        """The censoring models' rows and designs (built on first use, then shared by every bootstrap replicate)."""
        return censoring_models(self)

    @cached_property
    def layout(self) -> WeightLayout:
        """The index arrays `weights_from` needs (built on first use, then shared by every bootstrap replicate)."""
        return WeightLayout.of(self)


@dataclass(frozen=True)
class WeightLayout:
    """What `weights_from` reads of the clones' structure, computed once: per model row the row before its clone's
    first, per estimation row and per clone the model row of its weight, all plus 1 (0: none; indices into arrays
    with a leading 0 or 1), and for sustained clones the stabiliser's bound and arm per estimation row and per
    clone and the adherence rows per arm (person, interval, deviates)."""

    before_index: np.ndarray
    row_index: np.ndarray
    final_index: np.ndarray
    row_bound: np.ndarray | None = None
    row_arm: np.ndarray | None = None
    final_bound: np.ndarray | None = None
    adherence: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] = ()

    @classmethod
    def of(cls, clones: Clones) -> WeightLayout:
        n = len(clones.model_clone)
        starts = np.r_[True, clones.model_clone[1:] != clones.model_clone[:-1]] if n else np.zeros(0, bool)
        offset = np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, np.int64)
        indices = (np.where(offset > 0, offset, 0), clones.row_weight_row + 1, clones.final_weight_row + 1)
        if clones.model_phase is None:
            return cls(*indices)
        adherent = clones.model_phase == 1
        model_arm = clones.arm[clones.model_clone]
        adherence = []
        for a in (0, 1):
            rows = adherent & (model_arm == a)
            adherence.append((clones.person[clones.model_clone[rows]], clones.model_interval[rows], clones.model_deviates[rows]))
        return cls(*indices, _bound_of(clones, clones.row_weight_row), clones.arm[clones.row_clone],
                   _bound_of(clones, clones.final_weight_row), tuple(adherence))  # fmt: skip


def censoring_days(first_day: np.ndarray, first_high: np.ndarray, followup: np.ndarray, grace: int,
                   high_arm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Per person, for the clone of one arm: (stop day, censored, complying day or inf) under the module rules.
    `first_day` is nan for persons never treated in follow-up."""
    started = ~np.isnan(first_day) & (first_day <= grace)
    own = started & (first_high == high_arm)
    other = started & (first_high != high_arm)
    censor = np.where(other, first_day, np.where(own, NEVER, float(grace)))
    complies = np.where(own, first_day, NEVER)
    censored = censor < followup
    stop = np.where(censored, censor, followup).astype(float)
    return stop, censored, complies


def interval_of(day: np.ndarray, interval_days: int, n_intervals: int) -> np.ndarray:
    """The grace interval holding a day (the last interval holds the grace period's last day)."""
    return np.minimum(np.floor_divide(day, interval_days), n_intervals - 1).astype(np.int64)


def build_clones(baseline: pl.DataFrame, grace_covariates: pl.DataFrame, protocol: TrialProtocol,
                 adherence: Adherence | None = None) -> Clones:  # fmt: skip
    """Clones, their censoring, the censoring model's rows and the estimation rows (module doc); with
    `adherence` the sustained clones (module doc, Sustained strategies)."""
    n, grace, width, k_max = baseline.height, protocol.grace_days, protocol.interval_days, protocol.n_grace_intervals
    followup = baseline["followup_days"].to_numpy().astype(float)
    first_day = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    first_high = (baseline["first_class"] == HIGH_EFFICACY).fill_null(False).to_numpy()
    base_x = baseline_design(baseline)
    if adherence is None:
        varying = grace_covariates.sort("person_id", "interval").select(TIME_VARYING).to_numpy().astype(float)
        varying, bounds = _filled(varying.reshape(n, k_max, len(TIME_VARYING)), k_max), protocol.interval_bounds()
    else:
        varying, bounds = _filled(adherence.varying, k_max), adherence.bounds
    arms, persons, stops, censored_all = [], [], [], []
    m_clone, m_k, m_dev, m_phase, e_clone, e_start, e_stop, e_wrow, final_row = [], [], [], [], [], [], [], [], []
    n_model = 0
    for a, strategy in enumerate(STRATEGIES):
        high = strategy == HIGH_EFFICACY
        arm_value = 1 if high else 0
        stop, censored, complies = censoring_days(first_day, first_high, followup, grace, high)
        clone = np.arange(n) + a * n
        # intervals at risk of censoring: k = 0 .. last (inclusive)
        end_risk = np.minimum(np.where(censored, stop, np.minimum(complies, followup)), followup)
        last = interval_of(np.maximum(np.where(censored | (complies <= followup), end_risk, end_risk - 1), 0), width, k_max)
        at_risk_any = (end_risk > 0) | censored | (complies == 0)
        last = np.where(at_risk_any, last, -1)
        last_grace = last
        if adherence is not None:
            stop, censored, last = _adherence_rows(adherence.deviation_day[arm_value], bounds, stop, censored, complies,
                                                   followup, last)  # fmt: skip
        counts = last + 1
        rows_person = np.repeat(np.arange(n), counts)
        rows_k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        deviates = censored[rows_person] & (rows_k == last[rows_person])
        m_clone.append(clone[rows_person])
        m_k.append(rows_k)
        m_dev.append(deviates)
        m_phase.append((rows_k > last_grace[rows_person]).astype(np.int8))
        model_index = n_model + np.arange(counts.sum())
        first_model_row = n_model + np.cumsum(counts) - counts
        n_model += int(counts.sum())
        # estimation rows: interval k (b_k, b_{k+1}] carries W_{k-1}; after the last at-risk interval, W_last
        k_rows = rows_k
        start = bounds[k_rows]
        stop_k = np.minimum(bounds[k_rows + 1], stop[rows_person])
        keep = stop_k > start
        e_clone.append(clone[rows_person][keep])
        e_start.append(start[keep])
        e_stop.append(stop_k[keep])
        e_wrow.append(np.where(k_rows == 0, -1, model_index - 1)[keep])
        tail_start = np.where(last >= 0, bounds[np.maximum(last, 0) + 1], 0.0)
        tail = stop > tail_start
        e_clone.append(clone[tail])
        e_start.append(tail_start[tail])
        e_stop.append(stop[tail])
        last_row = np.where(last >= 0, first_model_row + last, -1)
        e_wrow.append(last_row[tail])
        final_row.append(last_row)
        arms.append(np.full(n, arm_value, np.int8))
        persons.append(np.arange(n))
        stops.append(stop)
        censored_all.append(censored)
    model_clone = np.concatenate(m_clone)
    model_k = np.concatenate(m_k)
    model_person = model_clone % n
    phase = np.concatenate(m_phase)
    dummies = _dummies(model_k, k_max) * (phase == 0)[:, None]
    x = np.hstack([base_x[model_person], varying[model_person, model_k], dummies])
    order = np.lexsort((np.concatenate(e_start), np.concatenate(e_clone)))
    return Clones(
        n_persons=n, n_intervals=k_max, arm=np.concatenate(arms), person=np.concatenate(persons), stop=np.concatenate(stops),
        censored=np.concatenate(censored_all), model_clone=model_clone, model_interval=model_k,
        model_deviates=np.concatenate(m_dev), model_x=x, row_clone=np.concatenate(e_clone)[order],
        row_start=np.concatenate(e_start)[order], row_stop=np.concatenate(e_stop)[order],
        row_weight_row=np.concatenate(e_wrow)[order], final_weight_row=np.concatenate(final_row),
        model_phase=phase if adherence is not None else None,
        model_extra=adherence.extra[model_person, model_k] if adherence is not None else None,
    )  # fmt: skip


def _filled(varying: np.ndarray, n_grace: int) -> np.ndarray:
    """The time-varying covariates (persons x intervals x TIME_VARYING) with a missing latest EDSS (none yet) set
    to the mean of the known ones of the grace intervals (the first `n_grace`)."""
    out = varying.copy()
    edss = out[..., TIME_VARYING.index("edss_latest")]
    known = edss[:, :n_grace][~np.isnan(edss[:, :n_grace])]
    edss[np.isnan(edss)] = known.mean() if known.size else 0.0
    return out


def _adherence_rows(deviation_day: np.ndarray, bounds: np.ndarray, stop: np.ndarray, censored: np.ndarray,
                    complies: np.ndarray, followup: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, ...]:  # fmt: skip
    """(stop, censored, last interval at risk) of one arm's sustained clones: a clone that followed its strategy's
    start stays at risk of deviating from the interval after the one holding the start, to its deviation (moved
    to that interval's start when earlier) or the end of follow-up."""
    n_intervals = len(bounds) - 1
    follows = ~censored & (complies <= followup) & (last >= 0)
    first = np.minimum(last + 1, n_intervals - 1)
    deviation = np.maximum(deviation_day, bounds[last + 1])
    deviates = follows & ~np.isnan(deviation_day) & (deviation < followup)
    end = np.where(deviates, deviation, followup - 1)
    last_adherent = np.minimum(np.searchsorted(bounds, end, "right") - 1, n_intervals - 1)
    extends = follows & (last_adherent >= first) & (followup > bounds[last + 1])
    stop = np.where(deviates & extends, deviation, stop)
    censored = censored | (deviates & extends)
    return stop, censored, np.where(extends, last_adherent, last)


def _dummies(k: np.ndarray, n_levels: int) -> np.ndarray:
    """Indicators of levels 1 .. n_levels - 1 (level 0 the reference)."""
    return (k[:, None] == np.arange(1, n_levels)[None, :]).astype(float)


def clinic_groups(baseline: pl.DataFrame) -> pl.Series:
    """The clinic term of the censoring model: the clinic, or its country when the clinic has fewer than
    MIN_CLINIC_PERSONS eligible persons."""
    sizes = baseline.group_by("clinic_id").len()
    big = set(sizes.filter(pl.col("len") >= MIN_CLINIC_PERSONS)["clinic_id"].to_list())
    return baseline.select(pl.when(pl.col("clinic_id").is_in(list(big))).then(pl.col("clinic_id"))
                           .otherwise(pl.lit("country ") + pl.col("country"))).to_series()  # fmt: skip


def baseline_design(baseline: pl.DataFrame) -> np.ndarray:
    """Baseline covariates (COVARIATES, standardised) and clinic-group indicators (the largest group the
    reference), one row per person."""
    x = baseline.select(COVARIATES).to_numpy().astype(float)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    groups = clinic_groups(baseline)
    levels = groups.value_counts(sort=True)[groups.name].to_list()
    codes = groups.replace_strict({g: i for i, g in enumerate(levels)}, return_dtype=pl.Int64).to_numpy()
    return np.hstack([x, _dummies(codes, len(levels))])


@dataclass
class WeightFit:
    """The censoring models' fitted probabilities and the resulting weights."""

    p_deviate: np.ndarray  # per model row
    cumulative: np.ndarray  # per model row: W_k, truncated
    row_weight: np.ndarray  # per estimation row
    final_weight: np.ndarray  # per clone (1 for clones never at risk of censoring)
    truncation: float  # the cap applied (inf = none)
    n_truncated: int  # clones whose final weight was capped
    coefs: tuple[np.ndarray | None, ...] = field(default=())  # the censoring models' (a bootstrap's warm start)


@dataclass(frozen=True)
class CensoringModel:
    """The rows of one censoring model (arm x part of the grace period) with their fixed design, built once."""

    rows: np.ndarray  # model rows (indices into the long format)
    person: np.ndarray  # per row: the person (whose bootstrap frequency weights it)
    design: PersonDesign  # design with the intercept column, stored per person and row pattern
    deviates: np.ndarray


@dataclass(frozen=True)
class CensoringFit:
    """P(deviation in the interval) per model row and each model's coefficients (None: not a logistic fit)."""

    p_deviate: np.ndarray
    coefs: tuple[np.ndarray | None, ...]


def censoring_models(clones: Clones) -> tuple[CensoringModel, ...]:
    """Per arm (0, 1) the model of the intervals before the last and the model of the last interval (see
    `fit_censoring_models`); for sustained clones then per arm the adherence model of the rows after the start
    (baseline and time-varying covariates and adherence.ADHERENCE_COVARIATES, no interval indicators)."""
    arm = clones.arm[clones.model_clone]
    last = clones.model_interval == clones.n_intervals - 1
    grace = np.ones(len(arm), bool) if clones.model_phase is None else clones.model_phase == 0
    models = []
    for a in (0, 1):
        for part in (~last, last):
            rows = np.flatnonzero((arm == a) & part & grace)
            person = clones.person[clones.model_clone[rows]]
            models.append(CensoringModel(rows, person, PersonDesign.build(with_intercept(clones.model_x[rows]), person),
                                         clones.model_deviates[rows]))  # fmt: skip
    if clones.model_extra is not None:
        n_shared = clones.model_x.shape[1] - (clones.n_intervals - 1)  # without the grace interval indicators
        for a in (0, 1):
            rows = np.flatnonzero((arm == a) & ~grace)
            x = np.hstack([clones.model_x[rows, :n_shared], clones.model_extra[rows]])
            person = clones.person[clones.model_clone[rows]]
            models.append(CensoringModel(rows, person, PersonDesign.build(with_intercept(x), person), clones.model_deviates[rows]))
    return tuple(models)


def fit_censoring_models(clones: Clones, frequency: np.ndarray | None = None,
                         start: tuple[np.ndarray | WarmStart | None, ...] = (),
                         known: Sequence[tuple[np.ndarray, np.ndarray | None]] = ()) -> CensoringFit:  # fmt: skip
    """P(deviation in the interval) for every model row, rows weighted by the person's frequency (bootstrap; 1
    otherwise). Per arm two unpenalised pooled logistic models: one of the intervals before the last (deviation
    = the other strategy's therapy started first) and one of the last interval (deviation = the strategy not
    started by the end of the grace period), as the two events differ and so may their covariate effects.
    Fitted by Newton-Raphson (`trial_emulation.logistic`) from `start` (the point estimate's coefficients in a
    bootstrap replicate; a `WarmStart` of them: the first step from per-person sums) on the rows of positive
    frequency (the rows of frequency 0, which weigh 0 in every estimate, keep probability 0). `known`: per model
    (in order), the fitted probabilities of its rows and its coefficients when the same model was fitted already
    (the sustained clones' grace-period models are the start-only clones' ones, row for row: `same_grace_models`)."""
    p = np.zeros(len(clones.model_clone))
    coefs: list[np.ndarray | None] = []
    for j, model in enumerate(clones.censoring_models):
        if j < len(known):
            p[model.rows], coef = known[j]
            coefs.append(coef)
            continue
        y = model.deviates
        w = np.ones(len(y)) if frequency is None else frequency[model.person].astype(float)
        used = y[w > 0]
        if used.size == 0 or used.all() or not used.any():
            p[model.rows] = float(np.average(y, weights=w)) if used.size else 0.0
            coefs.append(None)
            continue
        keep = w > 0
        design = model.design if keep.all() else model.design.rows_of(keep)
        first, at_start = start[j] if j < len(start) else None, None
        if isinstance(first, WarmStart):
            first, at_start = first.coef, first.at_frequencies(model.design, w[model.design.person_row])
        fit = fit_logistic(design, y[keep], w[keep], first, at_start=at_start)
        p[model.rows[keep]] = fit.fitted  # rows of persons not drawn weigh 0 in every estimate: left at 0
        coefs.append(fit.coef)
    return CensoringFit(p, tuple(coefs))


def same_grace_models(one: Clones, other: Clones) -> bool:
    """Whether two clone sets have the same grace-period censoring models (persons, designs and outcomes, row for
    row), so that one fit serves both."""
    pairs = zip(one.censoring_models[:4], other.censoring_models[:4], strict=True)
    return all(np.array_equal(a.person, b.person) and np.array_equal(a.deviates, b.deviates) and a.design.same_as(b.design)
               for a, b in pairs)  # fmt: skip


def weights_from(clones: Clones, p_deviate: np.ndarray, percentile: float, frequency: np.ndarray | None = None,
                 coefs: tuple[np.ndarray | None, ...] = ()) -> WeightFit:  # fmt: skip
    """Cumulative inverse-probability-of-censoring weights from the fitted deviation probabilities, stabilised
    for sustained clones (`stabiliser`), truncated at `percentile` of the final weights of the clones never
    censored (frequency-weighted in a bootstrap)."""
    layout = clones.layout
    log_inv = -np.log(np.clip(1.0 - p_deviate, 1e-12, None))
    cum = np.concatenate([[0.0], np.cumsum(log_inv)])  # a leading 0: the sum before a clone's first row
    cumulative = np.exp(cum[1:] - cum[layout.before_index])
    with_one = np.concatenate([[1.0], cumulative])  # a leading 1: the weight before any model row
    final, row_weight = with_one[layout.final_index], with_one[layout.row_index]
    freq = np.ones(clones.n_persons) if frequency is None else frequency.astype(float)
    if clones.model_phase is not None:
        numerator = stabiliser(clones, freq)
        row_weight = row_weight * numerator[layout.row_arm, layout.row_bound]
        final = final * numerator[clones.arm, layout.final_bound]
    cap, n_capped = np.inf, 0
    if percentile < 100:
        kept = ~clones.censored
        cap = weighted_percentile(final[kept], freq[clones.person[kept]], percentile)
        n_capped = int(np.sum(kept & (final > cap)))
        cumulative = np.minimum(cumulative, cap)
        final = np.minimum(final, cap)
        row_weight = np.minimum(row_weight, cap)
    return WeightFit(p_deviate, cumulative, row_weight, final, cap, n_capped, coefs)


def stabiliser(clones: Clones, frequency: np.ndarray) -> np.ndarray:
    """The numerator of the sustained clones' stabilised weights, per arm (row) and interval bound k (column):
    prod over intervals j < k of (1 - q_j), q_j the arm's share (frequency-weighted) of the adherence rows in
    interval j that deviate. A function of arm and time only, so it is the same factor for every clone of an arm
    at a time: it leaves the weighted Kaplan-Meier risks unchanged and narrows the weights (Cox: the weights of
    a marginal structural model, Hernan, Brumback and Robins 2000)."""
    n_bounds = int(clones.model_interval.max(initial=0)) + 2
    out = np.ones((2, n_bounds))
    for a, (person, k, deviates) in enumerate(clones.layout.adherence):
        w = frequency[person]
        at_risk = np.bincount(k, weights=w, minlength=n_bounds - 1)
        deviating = np.bincount(k, weights=w * deviates, minlength=n_bounds - 1)
        share = np.divide(deviating, at_risk, out=np.zeros_like(at_risk), where=at_risk > 0)
        out[a, 1:] = np.cumprod(1.0 - share)
    return out


def _bound_of(clones: Clones, weight_row: np.ndarray) -> np.ndarray:
    """The stabiliser's bound (column of `stabiliser`) of time that carries the cumulative weight of model row
    `weight_row` (-1: before the first interval): the end of that row's interval."""
    if not len(clones.model_interval):
        return np.zeros(len(weight_row), np.int64)
    return np.where(weight_row >= 0, clones.model_interval[np.maximum(weight_row, 0)] + 1, 0)


def weighted_percentile(values: np.ndarray, weights: np.ndarray, percentile: float) -> float:
    """The smallest value whose weighted cumulative share reaches `percentile` / 100 (inverted CDF)."""
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    if values.size == 0:
        return np.inf
    order = np.argsort(values, kind="stable")
    share = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(np.searchsorted(share, percentile / 100.0 - 1e-12), len(values) - 1)])


def strategy_label(arm: int) -> str:
    """The strategy of an arm code (1 high-efficacy, 0 escalation)."""
    return HIGH_EFFICACY if arm == 1 else ESCALATION
