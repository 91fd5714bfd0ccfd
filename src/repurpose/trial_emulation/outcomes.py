"""Outcomes of the emulated trial from the MS registry's clinical extracts, each defined once here.

Why: the emulation (issue 17) and the simulator's planted strategy effect (computed by the tests on the
counterfactual registries) must use the same outcome definitions, so both call these functions.

Follow-up of a person is given by `baseline` (person_id, time_zero, end_date) and is the half-open span
[time_zero, end_date): `end_date` is the first day no longer followed (exclusive), so a record on
end_date does not count. Events (relapses, EDSS visits that start or confirm a worsening) count strictly
after time_zero; sick leave counts from time_zero itself (day 0 of the first interval).

* `confirmed_worsening`: 24-week confirmed disability worsening from EDSS visits (rule in the function's
  docstring and docs/methods.md, "Trial emulation: outcomes").
* `first_relapse`, `relapse_times`: the first relapse, and every relapse (for rates).
* `sick_leave_days`: benefit-weighted sick-leave days per follow-up interval.
* `first_diagnosis`: the first diagnosis whose ICD-10 code starts with one of a list of prefixes (the safety
  outcome, serious infection, from the diagnosis extract), read lazily so the extract need not fit in memory.

All vectorised in polars (no loop over persons). Imports `registry.outcome` (the ICD-10 normalisation) only.
"""

from __future__ import annotations

import polars as pl

from repurpose.registry.outcome import normalise_icd10

FOLLOW_UP_COLUMNS = ("person_id", "time_zero", "end_date")
WORSENING_COLUMNS = ("person_id", "baseline_edss", "worsening_date", "event")
FIRST_RELAPSE_COLUMNS = ("person_id", "relapse_date", "event")
FIRST_DIAGNOSIS_COLUMNS = ("person_id", "diagnosis_date", "icd10_code", "event")
RELAPSE_TIME_COLUMNS = ("person_id", "days_from_time_zero")
SICK_LEAVE_COLUMNS = ("person_id", "interval", "sick_leave_days")


def _require(frame: pl.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Fail naming the table and its missing columns (a caller's wiring mistake, not a data value)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; it has {frame.columns}")


def _follow_up(baseline: pl.DataFrame) -> pl.DataFrame:
    """person_id, time_zero, end_date of the baseline table, checked: one row per person."""
    _require(baseline, FOLLOW_UP_COLUMNS, "baseline")
    follow = baseline.select(FOLLOW_UP_COLUMNS)
    if follow.get_column("person_id").is_duplicated().any():
        raise ValueError("baseline: person_id must be unique (one row per person), found repeated persons")
    return follow


def worsening_threshold(reference: pl.Expr) -> pl.Expr:
    """The lowest EDSS that is a worsening from `reference`: +1.5 from 0, +1.0 from 0.5 to 5.5, +0.5 from 6.0.

    (EDSS 0.5 does not exist on the Kurtzke scale but the data dictionary admits it; it takes the +1.0 band,
    the band of every score above 0 and below 6.)"""
    return (
        pl.when(reference == 0)
        .then(reference + 1.5)
        .when(reference < 6.0)
        .then(reference + 1.0)
        .otherwise(reference + 0.5)
    )


def _valid_visits(edss: pl.DataFrame, relapses: pl.DataFrame, relapse_exclusion_days: int) -> pl.DataFrame:
    """The EDSS visits that are not within `relapse_exclusion_days` after a relapse (relapse day included),
    one per person and day (the higher score when a day has two)."""
    visits = (
        edss.select("person_id", "visit_date", pl.col("edss").cast(pl.Float64))
        .filter(pl.col("edss").is_not_null() & pl.col("visit_date").is_not_null())
        .group_by("person_id", "visit_date")
        .agg(pl.col("edss").max())
    )
    near = (
        visits.select("person_id", "visit_date")
        .join(relapses.select("person_id", "relapse_date"), on="person_id")
        .filter(
            (pl.col("visit_date") >= pl.col("relapse_date"))
            & ((pl.col("visit_date") - pl.col("relapse_date")).dt.total_days() <= relapse_exclusion_days)
        )
        .select("person_id", "visit_date")
        .unique()
    )
    return visits.join(near, on=["person_id", "visit_date"], how="anti")


def confirmed_worsening(
    edss: pl.DataFrame,
    relapses: pl.DataFrame,
    baseline: pl.DataFrame,
    *,
    confirmation_days: int = 168,
    relapse_exclusion_days: int = 30,
    baseline_window_days: int = 365,
    roving: bool = False,
) -> pl.DataFrame:
    """Confirmed disability worsening (CDW) after time zero: one row per baseline person with
    person_id, baseline_edss (null when no baseline visit), worsening_date (the first visit of the first
    confirmed worsening, null if none) and event (bool).

    The rule, exactly:

    1. Valid visits: an EDSS visit on the day of a relapse or up to `relapse_exclusion_days` after it
       (any relapse, also before time zero) is ignored everywhere: it is no baseline, cannot start or
       confirm a worsening and does not break one.
    2. Baseline EDSS: the last valid visit in [time_zero - baseline_window_days, time_zero] (both days
       included). None: no event can be assessed (baseline_edss null, event false).
    3. Follow-up visits: valid visits strictly after time_zero and strictly before end_date.
    4. Reference: the baseline EDSS (fixed, the default). With `roving=True` the reference moves down to a
       lower score confirmed at the next follow-up visit: after follow-up visits j and j+1 the reference is
       min(reference, max(EDSS_j, EDSS_{j+1})). (Re-baselining after a confirmed worsening, the other half
       of a roving reference, matters only for later events; this function returns the first.)
    5. Worsening at a follow-up visit v: EDSS_v >= threshold(reference at v), threshold = reference + 1.5
       when the reference is 0, + 1.0 when it is 0.5-5.5, + 0.5 when it is 6.0 or more.
    6. Confirmed: a later follow-up visit c with date_c - date_v >= confirmation_days, and every follow-up
       visit from v to c (both included) at or above v's threshold (sustained: a visit in between that
       falls below it breaks the worsening, and v is not confirmed by anything after the fall).
    7. worsening_date = the date of the earliest confirmed v; event = a confirmed v exists.
    """
    _require(edss, ("person_id", "visit_date", "edss"), "edss")
    _require(relapses, ("person_id", "relapse_date"), "relapses")
    follow = _follow_up(baseline)
    persons = follow.select("person_id")  # the baseline persons' visits and relapses only: a visit's validity is per person
    edss, relapses = (frame.join(persons, on="person_id", how="semi") for frame in (edss, relapses))
    visits = _valid_visits(edss, relapses, relapse_exclusion_days).join(follow, on="person_id")
    baseline_edss = (
        visits.filter(
            (pl.col("visit_date") <= pl.col("time_zero"))
            & ((pl.col("time_zero") - pl.col("visit_date")).dt.total_days() <= baseline_window_days)
        )
        .group_by("person_id")
        .agg(pl.col("edss").sort_by("visit_date").last().alias("baseline_edss"))
    )
    later = (
        visits.filter(
            (pl.col("visit_date") > pl.col("time_zero")) & (pl.col("visit_date") < pl.col("end_date"))
        )
        .join(baseline_edss, on="person_id")
        .sort("person_id", "visit_date")
    )
    if roving:
        # a lower score confirmed at the next visit: max of the visit and the next; it applies after the next
        later = later.with_columns(
            pl.max_horizontal("edss", pl.col("edss").shift(-1).over("person_id")).alias("confirmed_lower")
        ).with_columns(pl.col("confirmed_lower").cum_min().over("person_id").alias("lowest"))
        later = later.with_columns(
            pl.min_horizontal("baseline_edss", pl.col("lowest").shift(2).over("person_id")).alias("reference")
        )
    else:
        later = later.with_columns(pl.col("baseline_edss").alias("reference"))
    later = later.with_columns(worsening_threshold(pl.col("reference")).alias("threshold"))
    starts = later.filter(pl.col("edss") >= pl.col("threshold")).select(
        "person_id", pl.col("visit_date").alias("start_date"), "threshold"
    )
    # every start against its later visits in date order: the span is sustained until the first visit
    # below the start's threshold; confirmed when its last sustained visit is confirmation_days or more later
    span = ["person_id", "start_date"]
    pairs = (
        starts.join(later.select("person_id", "visit_date", "edss"), on="person_id")
        .filter(pl.col("visit_date") > pl.col("start_date"))
        .sort("person_id", "start_date", "visit_date")
        .with_columns(
            (pl.col("edss") < pl.col("threshold")).cast(pl.Int32).cum_sum().over(span).alias("falls")
        )
    )
    worsening = (
        pairs.filter(pl.col("falls") == 0)
        .group_by(span)
        .agg(pl.col("visit_date").max().alias("last_sustained"))
        .filter((pl.col("last_sustained") - pl.col("start_date")).dt.total_days() >= confirmation_days)
        .group_by("person_id")
        .agg(pl.col("start_date").min().alias("worsening_date"))
    )
    return (
        follow.select("person_id")
        .join(baseline_edss, on="person_id", how="left", maintain_order="left")
        .join(worsening, on="person_id", how="left", maintain_order="left")
        .with_columns(pl.col("worsening_date").is_not_null().alias("event"))
        .select(WORSENING_COLUMNS)
    )


def _in_follow_up(frame: pl.DataFrame, follow: pl.DataFrame, column: str) -> pl.DataFrame:
    """Rows of `frame` whose `column` date is strictly after time_zero and strictly before end_date."""
    return frame.join(follow, on="person_id").filter(
        (pl.col(column) > pl.col("time_zero")) & (pl.col(column) < pl.col("end_date"))
    )


def _relapses_in_follow_up(relapses: pl.DataFrame, baseline: pl.DataFrame) -> pl.DataFrame:
    _require(relapses, ("person_id", "relapse_date"), "relapses")
    return _in_follow_up(relapses.select("person_id", "relapse_date"), _follow_up(baseline), "relapse_date")


def _first_event(baseline: pl.DataFrame, first: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """One row per baseline person (its order) with the person's first event of `first` (nulls: none)."""
    date = columns[1]
    return (
        baseline.select("person_id")
        .join(first, on="person_id", how="left", maintain_order="left")
        .with_columns(pl.col(date).is_not_null().alias("event"))
        .select(columns)
    )


def first_relapse(relapses: pl.DataFrame, baseline: pl.DataFrame) -> pl.DataFrame:
    """One row per baseline person: person_id, relapse_date (the first relapse strictly after time_zero and
    strictly before end_date, or null), event (bool)."""
    first = _relapses_in_follow_up(relapses, baseline).group_by("person_id").agg(pl.col("relapse_date").min())
    return _first_event(baseline, first, FIRST_RELAPSE_COLUMNS)


def normalised_codes(prefixes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """ICD-10 code prefixes as the validated diagnosis extract stores codes: upper case, without dots."""
    codes = tuple(sorted({normalise_icd10(str(c)) for c in prefixes}))
    if not codes or any(not c for c in codes):
        raise ValueError(f"ICD-10 code prefixes must be non-empty strings, got {list(prefixes)}")
    return codes


def first_diagnosis(
    diagnoses: pl.DataFrame | pl.LazyFrame, baseline: pl.DataFrame, prefixes: tuple[str, ...] | list[str]
) -> pl.DataFrame:
    """One row per baseline person: person_id, diagnosis_date and icd10_code of the first diagnosis strictly
    after time_zero and strictly before end_date whose code starts with one of `prefixes` (null if none; of two
    matching codes on that day the first in alphabetical order), event (bool). Prefixes may be written with or
    without dots, in any case: "a81.2" matches the extract's normalised codes A812 and A8120.

    `diagnoses` (person_id, diagnosis_date, icd10_code; the validated extract) may be a LazyFrame: only the
    rows of the baseline persons with a matching code are collected."""
    follow = _follow_up(baseline)
    lazy = diagnoses.lazy()
    _require(pl.DataFrame(schema=lazy.collect_schema()), ("person_id", "diagnosis_date", "icd10_code"), "diagnoses")
    codes = normalised_codes(prefixes)
    matching = (
        lazy.select("person_id", "diagnosis_date", "icd10_code")
        .filter(pl.any_horizontal([pl.col("icd10_code").str.starts_with(c) for c in codes]))
        .join(follow.lazy().select("person_id"), on="person_id", how="semi")
        .collect()
    )
    first = (
        _in_follow_up(matching, follow, "diagnosis_date")
        .sort("person_id", "diagnosis_date", "icd10_code")
        .group_by("person_id", maintain_order=True)
        .agg(pl.col("diagnosis_date").first(), pl.col("icd10_code").first())
    )
    return _first_event(baseline, first, FIRST_DIAGNOSIS_COLUMNS)


def relapse_times(relapses: pl.DataFrame, baseline: pl.DataFrame) -> pl.DataFrame:
    """Every relapse strictly after time_zero and strictly before end_date: person_id, days_from_time_zero
    (Int64, >= 1), sorted by person and time; a relapse recorded twice on one day counts once. For relapse
    rates (person-time from the baseline table)."""
    return (
        _relapses_in_follow_up(relapses, baseline)
        .select(
            "person_id",
            (pl.col("relapse_date") - pl.col("time_zero"))
            .dt.total_days()
            .cast(pl.Int64)
            .alias("days_from_time_zero"),
        )
        .unique()
        .sort("person_id", "days_from_time_zero")
    )


def sick_leave_days(
    sick_leave: pl.DataFrame, baseline: pl.DataFrame, *, interval_days: int = 30, horizon_days: int
) -> pl.DataFrame:
    """Benefit-weighted sick-leave days per person and follow-up interval: person_id, interval (Int64),
    sick_leave_days (Float64).

    Day t of follow-up is time_zero + t; interval k holds days [k * interval_days, (k + 1) * interval_days),
    up to the end of follow-up min(end_date - time_zero, horizon_days) (exclusive), so the last interval
    may be partial (its length is that end minus k * interval_days). Every interval of every baseline
    person with follow-up gets a row (0 when no leave), so rows are person-time too. A spell runs from
    start_date to end_date (both included) at `percent` percent; a day counts sum(percent) / 100 of the
    spells covering it, capped at 1 (overlapping spells never make more than one day per day).
    """
    if interval_days < 1 or horizon_days < 0:
        raise ValueError(
            f"interval_days must be >= 1 and horizon_days >= 0, got {interval_days}, {horizon_days}"
        )
    _require(sick_leave, ("person_id", "start_date", "end_date", "percent"), "sick_leave")
    follow = _follow_up(baseline).with_columns(
        pl.min_horizontal((pl.col("end_date") - pl.col("time_zero")).dt.total_days(), pl.lit(horizon_days))
        .cast(pl.Int64)
        .alias("stop")
    )
    intervals = (
        follow.filter(pl.col("stop") > 0)
        .select(
            "person_id",
            pl.int_ranges(0, (pl.col("stop") + interval_days - 1) // interval_days).alias("interval"),
        )
        .explode("interval")
        .with_columns(pl.col("interval").cast(pl.Int64))
    )
    # spells in days from time zero, clipped to follow-up; +percent from the first day, -percent after the last
    spells = (
        sick_leave.select(
            "person_id",
            pl.col("start_date").alias("spell_start"),
            pl.col("end_date").alias("spell_end"),
            pl.col("percent").cast(pl.Float64),
        )
        .join(follow.select("person_id", "time_zero", "stop"), on="person_id")
        .select(
            "person_id",
            "percent",
            pl.max_horizontal((pl.col("spell_start") - pl.col("time_zero")).dt.total_days(), pl.lit(0))
            .cast(pl.Int64)
            .alias("a"),
            pl.min_horizontal((pl.col("spell_end") - pl.col("time_zero")).dt.total_days() + 1, pl.col("stop"))
            .cast(pl.Int64)
            .alias("b"),
        )
        .filter(pl.col("b") > pl.col("a"))
    )
    # the interval boundaries inside a spell cut it, so each segment below lies in one interval
    cuts = (
        spells.select(
            "person_id",
            (
                pl.int_ranges(pl.col("a") // interval_days + 1, (pl.col("b") - 1) // interval_days + 1)
                * interval_days
            ).alias("day"),
        )
        .explode("day")
        .drop_nulls("day")
        .select("person_id", pl.col("day").cast(pl.Int64), pl.lit(0.0).alias("change"))
    )
    changes = pl.concat(
        [
            spells.select("person_id", pl.col("a").alias("day"), pl.col("percent").alias("change")),
            spells.select("person_id", pl.col("b").alias("day"), (-pl.col("percent")).alias("change")),
            cuts,
        ]
    )
    segments = (
        changes.group_by("person_id", "day")
        .agg(pl.col("change").sum())
        .sort("person_id", "day")
        .with_columns(
            pl.col("change").cum_sum().over("person_id").alias("level"),
            (pl.col("day").shift(-1).over("person_id") - pl.col("day")).alias("length"),
        )
        .filter(pl.col("length").is_not_null() & (pl.col("level") > 1e-9))
        .select(
            "person_id",
            (pl.col("day") // interval_days).cast(pl.Int64).alias("interval"),
            (pl.min_horizontal(pl.col("level") / 100.0, pl.lit(1.0)) * pl.col("length")).alias(
                "sick_leave_days"
            ),
        )
        .group_by("person_id", "interval")
        .agg(pl.col("sick_leave_days").sum())
    )
    return (
        intervals.join(segments, on=["person_id", "interval"], how="left", maintain_order="left")
        .with_columns(pl.col("sick_leave_days").fill_null(0.0).cast(pl.Float64))
        .select(SICK_LEAVE_COLUMNS)
    )
