"""Adherence to the strategies after their start: the deviations of the sustained per-protocol estimand and the
time-varying covariates of its censoring models.

Rules (docs/methods.md, "Trial emulation: design and estimation", Sustained strategies), with s the day of the
person's first disease-modifying therapy (days from time zero), for a clone that followed its strategy's start
(its class first, s <= grace_days):

* stop: both arms deviate when every therapy has stopped and none is restarted within `stop_gap_days` of the
  stop; the deviation day is the stop + stop_gap_days (a restart on that day is in time). Coverage is the union
  of the episodes [start_date, stop_date) of any disease-modifying therapy; an episode without a stop date runs on.
* switch (high-efficacy arm): the start of a therapy that is not high-efficacy on a day after s.
* escalation without indication (escalation arm): the first high-efficacy start after s, unless it has an
  indication: a relapse in the `escalation_indication_window_days` up to the start (both days included), or a
  confirmed disability worsening (`outcomes.confirmed_worsening`, from the baseline EDSS) confirmed by a visit on
  or before the start whose first worsened visit lies in that window. An indicated escalation is part of the
  strategy: the clone goes on (and only a stop can end its adherence later).

The first of these is the clone's deviation day. The covariates of the adherence models at each interval start
t: years since time zero (and its square), years on the strategy (t - s), whether a high-efficacy therapy has
been started by t, and whether no therapy covers t (off therapy), besides `cohort.TIME_VARYING`.

Imports numpy, polars, `persistence.newusers` (the year's length) and the package's `trial_emulation.cohort`,
`outcomes` and `protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from repurpose.persistence.newusers import DAYS_PER_YEAR
from repurpose.trial_emulation.cohort import TIME_VARYING, interval_covariates
from repurpose.trial_emulation.outcomes import confirmed_worsening
from repurpose.trial_emulation.protocol import HIGH_EFFICACY, TrialProtocol

ADHERENCE_COVARIATES = ("years_since_time_zero", "years_since_time_zero_sq", "years_on_strategy",
                        "high_efficacy_started", "off_therapy")  # fmt: skip
DEVIATION_COLUMNS = ("person_id", "high_efficacy_deviation_day", "high_efficacy_deviation",
                     "escalation_deviation_day", "escalation_deviation")  # fmt: skip
"""Per baseline person: the day (from time zero; null: none) and kind (stop, switch, unindicated_escalation) of
the high-efficacy and the escalation clone's deviation after the strategy's start (null for a person whose first
therapy is not the arm's)."""
ONGOING = 10**9  # the stop day of an episode without a stop date


@dataclass(frozen=True)
class Adherence:
    """What the sustained clones need: per arm (1 high-efficacy, 0 escalation) the deviation day per person (nan:
    none), the interval bounds, and the covariates per person x interval (TIME_VARYING, ADHERENCE_COVARIATES)."""

    deviation_day: dict[int, np.ndarray]
    bounds: np.ndarray
    varying: np.ndarray  # persons x intervals x TIME_VARYING
    extra: np.ndarray  # persons x intervals x ADHERENCE_COVARIATES


def _episodes(baseline: pl.DataFrame, treatments: pl.DataFrame, protocol: TrialProtocol) -> pl.DataFrame:
    """The baseline persons' treatment episodes in days from time zero: start, stop (ONGOING without a stop
    date) and whether high-efficacy."""
    if "stop_date" not in treatments.columns:
        treatments = treatments.with_columns(pl.lit(None, pl.Date).alias("stop_date"))
    return (
        treatments.select("person_id", pl.col("treatment_atc_code").cast(pl.String).str.strip_chars().str.to_uppercase(),
                          "start_date", "stop_date")
        .join(baseline.select("person_id", "time_zero"), on="person_id")
        .select("person_id", protocol.is_high_efficacy(pl.col("treatment_atc_code")).alias("high"),
                (pl.col("start_date") - pl.col("time_zero")).dt.total_days().alias("start"),
                (pl.col("stop_date") - pl.col("time_zero")).dt.total_days().fill_null(ONGOING).alias("stop"))
    )  # fmt: skip


def deviations(protocol: TrialProtocol, baseline: pl.DataFrame, *, treatments: pl.DataFrame,
               relapses: pl.DataFrame, edss: pl.DataFrame) -> pl.DataFrame:  # fmt: skip
    """DEVIATION_COLUMNS for every baseline person, by the module rules."""
    p = protocol
    people = baseline.select("person_id", "time_zero", "first_start_day", "first_class").filter(
        pl.col("first_start_day") <= p.grace_days
    )
    episodes = _episodes(people, treatments, p).join(people.select("person_id", "first_start_day"), on="person_id")
    # stop: the first gap in coverage longer than stop_gap_days
    covered = episodes.sort("person_id", "start", "stop").with_columns(
        pl.col("stop").cum_max().over("person_id").alias("covered_to"),
        pl.col("start").shift(-1).over("person_id").alias("next_start"),
    )
    gap_end = pl.col("covered_to") + p.stop_gap_days
    stops = (
        covered.filter((pl.col("covered_to") < ONGOING) & (pl.col("next_start").is_null() | (pl.col("next_start") > gap_end)))
        .group_by("person_id").agg(gap_end.min().alias("stop_day"))
    )  # fmt: skip
    later = episodes.filter(pl.col("start") > pl.col("first_start_day"))
    switches = later.filter(~pl.col("high")).group_by("person_id").agg(pl.col("start").min().alias("switch_day"))
    escalations = later.filter(pl.col("high")).group_by("person_id").agg(pl.col("start").min().alias("escalation_day"))
    escalations = escalations.join(people.select("person_id", "time_zero", "first_class"), on="person_id").filter(
        pl.col("first_class") != HIGH_EFFICACY
    )
    indicated = _indicated(escalations, relapses, edss, p)
    out = people.join(stops, on="person_id", how="left").join(switches, on="person_id", how="left").join(
        indicated, on="person_id", how="left"
    )
    high = pl.col("first_class") == HIGH_EFFICACY
    unindicated = pl.when(pl.col("indicated").not_()).then(pl.col("escalation_day"))
    out = out.with_columns(
        pl.when(high).then(pl.min_horizontal("stop_day", "switch_day")).alias("high_efficacy_deviation_day"),
        pl.when(high).then(_kind(("stop_day", "stop"), ("switch_day", "switch"))).alias("high_efficacy_deviation"),
        pl.when(~high).then(pl.min_horizontal(pl.col("stop_day"), unindicated)).alias("escalation_deviation_day"),
        pl.when(~high).then(_kind(("stop_day", "stop"), (unindicated, "unindicated_escalation"))).alias("escalation_deviation"),
    )  # fmt: skip
    return (
        baseline.select("person_id").join(out, on="person_id", how="left", maintain_order="left")
        .select(pl.col(DEVIATION_COLUMNS[0]), *(pl.col(c).cast(pl.Float64) for c in DEVIATION_COLUMNS[1::2]),
                *(pl.col(c).cast(pl.String) for c in DEVIATION_COLUMNS[2::2]))
        .select(DEVIATION_COLUMNS)
    )  # fmt: skip


def _kind(*candidates: tuple[str | pl.Expr, str]) -> pl.Expr:
    """The label of the earliest non-null candidate day (the first listed on a tie); null when none."""
    days = [pl.col(c) if isinstance(c, str) else c for c, _ in candidates]
    first = pl.min_horizontal(*days)
    out = pl.lit(None, pl.String)
    for day, (_, label) in reversed(list(zip(days, candidates, strict=True))):
        out = pl.when(day.is_not_null() & (day == first)).then(pl.lit(label)).otherwise(out)
    return out


def _indicated(escalations: pl.DataFrame, relapses: pl.DataFrame, edss: pl.DataFrame, p: TrialProtocol) -> pl.DataFrame:
    """person_id, escalation_day and whether the escalation had an indication (module doc)."""
    window = p.escalation_indication_window_days
    at = escalations.with_columns((pl.col("time_zero") + pl.duration(days=pl.col("escalation_day"))).alias("at"))
    relapsed = (
        at.join(relapses.select("person_id", "relapse_date"), on="person_id")
        .filter(pl.col("relapse_date").is_between(pl.col("at") - pl.duration(days=window), pl.col("at")))
        .select("person_id").unique().with_columns(pl.lit(True).alias("relapse"))
    )  # fmt: skip
    # visits up to the escalation day (end_date exclusive: the day after it), so the confirmation is known by then
    follow = at.select("person_id", "time_zero", (pl.col("at") + pl.duration(days=1)).alias("end_date"))
    worsened = confirmed_worsening(edss, relapses, follow, confirmation_days=p.confirmation_days,
                                   baseline_window_days=p.baseline_edss_window_days)  # fmt: skip
    worsened = (
        worsened.join(at.select("person_id", "at"), on="person_id")
        .filter(pl.col("event") & (pl.col("worsening_date") >= pl.col("at") - pl.duration(days=window)))
        .select("person_id").with_columns(pl.lit(True).alias("worsening"))
    )  # fmt: skip
    return (
        at.select("person_id", "escalation_day")
        .join(relapsed, on="person_id", how="left").join(worsened, on="person_id", how="left")
        .select("person_id", "escalation_day", (pl.col("relapse").fill_null(False) | pl.col("worsening").fill_null(False)).alias("indicated"))
    )  # fmt: skip


def adherence_covariates(baseline: pl.DataFrame, treatments: pl.DataFrame, protocol: TrialProtocol,
                         starts_days: np.ndarray) -> np.ndarray:  # fmt: skip
    """ADHERENCE_COVARIATES per person x interval start (persons x intervals x 5)."""
    starts = np.asarray(starts_days, float)
    episodes = _episodes(baseline, treatments, protocol)
    grid = pl.DataFrame({"interval": np.arange(len(starts), dtype=np.int32), "t": starts})
    index = baseline.select("person_id").with_row_index("row")
    state = (
        episodes.join(grid, how="cross").filter(pl.col("start") <= pl.col("t"))
        .group_by("person_id", "interval")
        .agg(pl.col("high").any().alias("high_started"), (pl.col("stop") > pl.col("t")).any().alias("covered"))
        .join(index, on="person_id")
    )  # fmt: skip
    n, k = baseline.height, len(starts)
    high = np.zeros((n, k))
    covered = np.zeros((n, k))
    rows, cols = state["row"].to_numpy().astype(np.int64), state["interval"].to_numpy().astype(np.int64)
    high[rows, cols] = state["high_started"].to_numpy()
    covered[rows, cols] = state["covered"].to_numpy()
    first = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    years = np.broadcast_to(starts / DAYS_PER_YEAR, (n, k))
    on_strategy = np.where(np.isnan(first)[:, None], 0.0, np.maximum(starts[None, :] - np.nan_to_num(first)[:, None], 0.0)) / DAYS_PER_YEAR
    return np.stack([years, years**2, on_strategy, high, 1.0 - covered], axis=2)


def adherence(protocol: TrialProtocol, baseline: pl.DataFrame, *, treatments: pl.DataFrame, relapses: pl.DataFrame,
              edss: pl.DataFrame) -> tuple[Adherence, pl.DataFrame]:  # fmt: skip
    """The sustained clones' deviations and covariates on the sustained interval bounds, and the per-person
    deviation table (DEVIATION_COLUMNS, for the counts and the tests)."""
    bounds = protocol.interval_bounds(sustained=True)
    table = deviations(protocol, baseline, treatments=treatments, relapses=relapses, edss=edss)
    varying = interval_covariates(baseline, relapses=relapses, edss=edss, starts_days=bounds[:-1])
    varying = varying.select(TIME_VARYING).to_numpy().astype(float).reshape(baseline.height, len(bounds) - 1, len(TIME_VARYING))
    extra = adherence_covariates(baseline, treatments, protocol, bounds[:-1])
    day = {1: table["high_efficacy_deviation_day"].fill_null(np.nan).to_numpy(),
           0: table["escalation_deviation_day"].fill_null(np.nan).to_numpy()}  # fmt: skip
    return Adherence(day, bounds, varying, extra), table
