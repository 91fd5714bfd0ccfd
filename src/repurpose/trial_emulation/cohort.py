"""The emulated trial's cohort: eligible persons, time zero, follow-up, baseline covariates, the first therapy,
and the time-varying covariates at the start of each interval of the grace period.

Eligibility and time zero follow the protocol (`protocol.TrialProtocol`); the case-mix columns come from
`repurpose.case_mix` (shared with the persistence study). Imports polars, `case_mix`, `persistence.newusers`
(the missing-clinic labels) and `protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from repurpose.case_mix import birth_date, with_last_edss, with_relapse_count
from repurpose.persistence.newusers import DAYS_PER_YEAR, NO_CLINIC, NO_COUNTRY
from repurpose.trial_emulation.protocol import HIGH_EFFICACY, TrialProtocol

MODERATE = "moderate"
BASELINE_COLUMNS = (
    "person_id", "time_zero", "followup_days", "end_date", "death_day", "female", "age_years", "disease_duration_years",
    "edss", "relapses_1y", "relapses_2y", "calendar_year", "clinic_id", "country", "first_start_day", "first_class",
)  # fmt: skip
"""Columns of the baseline table: `followup_days` = days from time zero to the end of follow-up (death, emigration,
the day after study end, or max_years; an outcome on day d counts when 0 < d <= followup_days); `end_date` = the
first day not followed in the registry (death, emigration, the day after study end; not cut at max_years), the end
the outcome definitions see, so that a worsening before the end of follow-up may be confirmed at a visit after it; `death_day` = days to death when it ends follow-up; `first_start_day` = days from time
zero to the first disease-modifying therapy (null: none in follow-up); `first_class` high_efficacy or moderate."""
COVARIATES = ("female", "age_years", "disease_duration_years", "edss", "relapses_1y", "relapses_2y", "calendar_year")
TIME_VARYING = ("relapses_12m", "relapses_24m", "edss_latest")


def _strings(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    return frame.with_columns([pl.col(c).cast(pl.String) for c in columns if c in frame.columns])


def eligible_cohort(
    protocol: TrialProtocol,
    *,
    registry: pl.DataFrame,
    population: pl.DataFrame,
    treatments: pl.DataFrame,
    edss: pl.DataFrame,
    relapses: pl.DataFrame,
) -> tuple[pl.DataFrame, list[tuple[str, int]]]:
    """The baseline table (BASELINE_COLUMNS, sorted by person_id) and the flow: (step, persons left) per
    eligibility criterion, in order."""
    p = protocol
    registry = _strings(registry, ("clinic_id", "country", "ms_course_at_diagnosis"))
    treatments = _strings(treatments, ("treatment_atc_code",)).with_columns(
        pl.col("treatment_atc_code").str.strip_chars().str.to_uppercase()
    )
    population = _strings(population, ("sex",))
    for column, dtype in (("onset_date", pl.Date), ("clinic_id", pl.String), ("country", pl.String),
                          ("ms_course_at_diagnosis", pl.String)):  # fmt: skip
        if column not in registry.columns:
            registry = registry.with_columns(pl.lit(None, dtype).alias(column))
    for column, dtype in (("birth_month", pl.Int64), ("death_date", pl.Date), ("emigration_date", pl.Date)):
        if column not in population.columns:
            population = population.with_columns(pl.lit(None, dtype).alias(column))
    flow: list[tuple[str, int]] = []
    people = registry.filter(pl.col("diagnosis_date").is_not_null()).unique("person_id", keep="first")
    flow.append(("MS registry patients with a diagnosis date", people.height))
    people = people.filter(pl.col("diagnosis_date").is_between(p.diagnosis_from, p.diagnosis_to))
    flow.append((f"diagnosed {p.diagnosis_from} to {p.diagnosis_to}", people.height))
    people = people.filter(pl.col("ms_course_at_diagnosis").is_in(list(p.courses)))
    flow.append((f"course at diagnosis {', '.join(p.courses)}", people.height))
    people = people.join(population.select("person_id", "sex", "birth_year", "birth_month", "death_date", "emigration_date"),
                         on="person_id", how="inner")  # fmt: skip
    people = _with_time_zero(people, edss, p)
    flow.append(("time zero assigned" if p.time_zero == "diagnosis" else "an EDSS-scored visit within the grace period",
                 people.height))  # fmt: skip
    people = people.with_columns(((pl.col("time_zero") - birth_date()).dt.total_days() / DAYS_PER_YEAR).alias("age_years"))
    people = people.filter((pl.col("age_years") >= p.min_age) & (pl.col("age_years") < p.max_age))
    flow.append((f"aged {p.min_age:g} to under {p.max_age:g} at time zero", people.height))
    ends = pl.min_horizontal("death_date", "emigration_date", pl.lit(p.study_end + timedelta(days=1)))
    people = people.with_columns(pl.min_horizontal((ends - pl.col("time_zero")).dt.total_days(), pl.lit(p.max_days))
                                 .alias("followup_days")).filter(pl.col("followup_days") > 0)  # fmt: skip
    flow.append(("alive and resident after time zero", people.height))
    first = _first_therapy(treatments, people.select("person_id", "time_zero"), p)
    people = people.join(first, on="person_id", how="left")
    people = people.filter(pl.col("first_start_day").is_null() | (pl.col("first_start_day") >= 0))
    flow.append(("no disease-modifying therapy before time zero", people.height))
    people = with_last_edss(people, edss, at="time_zero", window_days=p.baseline_edss_window_days + 1)
    people = people.filter(pl.col("edss").is_not_null())
    flow.append((f"an EDSS score within {p.baseline_edss_window_days} days before time zero", people.height))
    people = with_relapse_count(people, relapses, at="time_zero", window_days=365, name="relapses_1y")
    people = with_relapse_count(people, relapses, at="time_zero", window_days=730, name="relapses_2y")
    death_day = (pl.col("death_date") - pl.col("time_zero")).dt.total_days()
    out = people.with_columns(
        ends.alias("end_date"),
        pl.when(death_day <= pl.col("followup_days")).then(death_day).otherwise(None).alias("death_day"),
        (pl.col("sex") == "F").cast(pl.Float64).alias("female"),
        ((pl.col("time_zero") - pl.coalesce("onset_date", "diagnosis_date")).dt.total_days() / DAYS_PER_YEAR)
        .clip(lower_bound=0).alias("disease_duration_years"),
        pl.col("time_zero").dt.year().cast(pl.Float64).alias("calendar_year"),
        pl.col("clinic_id").fill_null(NO_CLINIC),
        pl.col("country").fill_null(NO_COUNTRY),
    )  # fmt: skip
    # The first start beyond follow-up is not seen in the registry
    out = out.with_columns(
        pl.when(pl.col("first_start_day") <= pl.col("followup_days")).then(pl.col("first_start_day")).alias("first_start_day"),
        pl.when(pl.col("first_start_day") <= pl.col("followup_days")).then(pl.col("first_class")).alias("first_class"),
    )
    return out.select(BASELINE_COLUMNS).sort("person_id"), flow


def _with_time_zero(people: pl.DataFrame, edss: pl.DataFrame, p: TrialProtocol) -> pl.DataFrame:
    """`time_zero`: the diagnosis date, or the first EDSS-scored visit on or after diagnosis within the grace
    period (persons without one leave)."""
    if p.time_zero == "diagnosis":
        return people.with_columns(pl.col("diagnosis_date").alias("time_zero"))
    visits = (
        edss.select("person_id", "visit_date").join(people.select("person_id", "diagnosis_date"), on="person_id")
        .filter(pl.col("visit_date").is_between(pl.col("diagnosis_date"), pl.col("diagnosis_date") + pl.duration(days=p.grace_days)))
        .group_by("person_id").agg(pl.col("visit_date").min().alias("time_zero"))
    )  # fmt: skip
    return people.join(visits, on="person_id", how="inner")


def _first_therapy(treatments: pl.DataFrame, zero: pl.DataFrame, p: TrialProtocol) -> pl.DataFrame:
    """Per treated person: days from time zero to the first start (negative = before time zero) and its class;
    two starts on the first day are high-efficacy if either is."""
    starts = treatments.join(zero, on="person_id").with_columns(
        p.is_high_efficacy(pl.col("treatment_atc_code")).alias("high"),
        (pl.col("start_date") - pl.col("time_zero")).dt.total_days().alias("day"),
    )
    return (
        starts.group_by("person_id")
        .agg(pl.col("day").min().alias("first_start_day"), pl.col("high").filter(pl.col("day") == pl.col("day").min()).any().alias("high"))
        .select("person_id", "first_start_day", pl.when(pl.col("high")).then(pl.lit(HIGH_EFFICACY)).otherwise(pl.lit(MODERATE)).alias("first_class"))
    )  # fmt: skip


def grace_covariates(
    baseline: pl.DataFrame, *, relapses: pl.DataFrame, edss: pl.DataFrame, n_intervals: int, interval_days: int
) -> pl.DataFrame:
    """The time-varying covariates at the start of each grace interval k (day k x interval_days from time zero):
    relapses in the 12 and 24 months before it and the latest EDSS score up to it. One row per person x k."""
    return interval_covariates(baseline, relapses=relapses, edss=edss, starts_days=[k * interval_days for k in range(n_intervals)])


def interval_covariates(
    baseline: pl.DataFrame, *, relapses: pl.DataFrame, edss: pl.DataFrame, starts_days: Sequence[float]
) -> pl.DataFrame:
    """TIME_VARYING at each interval start (days from time zero, `starts_days`, interval k the k-th): relapses in
    the 12 and 24 months before it and the latest EDSS score up to it. One row per person x interval."""
    starts = pl.DataFrame({"interval": pl.arange(0, len(starts_days), eager=True).cast(pl.Int32),
                           "start_day": [int(d) for d in starts_days]})  # fmt: skip
    grid = baseline.select("person_id", "time_zero").join(starts, how="cross").with_columns(
        (pl.col("time_zero") + pl.duration(days=pl.col("start_day"))).alias("at")
    )
    grid = with_relapse_count(grid, relapses, at="at", window_days=365, name="relapses_12m")
    grid = with_relapse_count(grid, relapses, at="at", window_days=730, name="relapses_24m")
    grid = with_last_edss(grid, edss, at="at", window_days=None, name="edss_latest")
    return grid.select("person_id", "interval", *TIME_VARYING).sort("person_id", "interval")
