"""Build the study cohort from the validated population and the outcome, with a documented flow.

Follow-up starts at entry = max(study start + washout, date of reaching `study.min_age`) for persons
alive, resident and free of the outcome at entry, and ends at the first of: the outcome (as defined by
`study.outcome`, see `repurpose.registry.outcome`), death, emigration, reaching `study.max_age`, or study
end. Age is the time scale downstream, so entry and exit are stored exactly as age in whole days since
birth (`*_age_days`).

Birth date: the 15th of the birth month; 1 July of the birth year when the month is missing (the
middle of the possible range, which bounds the age error by half a year and is unbiased on average).

May import `repurpose.registry.outcome` and the shared top-level modules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.registry.outcome import OUTCOME_COLUMNS, OutcomeInputs, outcome_definition, person_outcomes
from repurpose.schemas import COHORT_SCHEMA, DAYS_PER_YEAR
from repurpose.stages import stage

log = logging.getLogger(__name__)


def _offset_years(expr: pl.Expr, years: float) -> pl.Expr:
    """Add whole calendar years (or, for fractional years, days at 365.25 per year) to a date."""
    if float(years).is_integer():
        return expr.dt.offset_by(f"{int(years)}y")
    return expr + pl.duration(days=round(years * DAYS_PER_YEAR))


def with_birth_date(population: pl.LazyFrame) -> pl.LazyFrame:
    """Add `birth_date` (15th of the month, or 1 July when the month is unknown)."""
    month = pl.col("birth_month").fill_null(7)
    day = pl.when(pl.col("birth_month").is_null()).then(1).otherwise(15)
    return population.with_columns(birth_date=pl.date(pl.col("birth_year"), month, day))


def build_cohort(
    population: pl.LazyFrame, outcomes: pl.LazyFrame, study: dict[str, Any]
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Return the cohort (COHORT_SCHEMA) and the flow: counts excluded at each step, events, person-years.

    `outcomes` holds one row per person with an outcome (`OUTCOME_COLUMNS` of `repurpose.registry.outcome`, and
    `outcome_unknown`); a person in it is a case from `outcome_date` and is never followed as outcome-free
    after it; a person whose outcome cannot be dated (`outcome_unknown`) is left out at the first step.
    """
    if "outcome_unknown" not in outcomes.collect_schema().names():
        outcomes = outcomes.with_columns(outcome_unknown=pl.lit(False))
    study_start = date.fromisoformat(study["start"])
    study_end = date.fromisoformat(study["end"])
    earliest_entry = _offset_years(pl.lit(study_start), study["washout_years"])
    persons = (
        with_birth_date(population)
        .join(outcomes.select(*OUTCOME_COLUMNS, "outcome_unknown"), on="person_id", how="left")
        .with_columns(
            entry_date=pl.max_horizontal(
                earliest_entry, _offset_years(pl.col("birth_date"), study["min_age"])
            ),
            max_age_date=(
                _offset_years(pl.col("birth_date"), study["max_age"])
                if study.get("max_age") is not None
                else pl.lit(None, pl.Date)
            ),
        )
        .collect()
    )

    # Exclusion steps in order; each person is counted at the first step that excludes them.
    steps = [
        ("outcome_status_unknown", pl.col("outcome_unknown")),
        (
            "not_of_age_during_study",
            (pl.col("entry_date") > pl.lit(study_end)) | (pl.col("max_age_date") <= pl.col("entry_date")),
        ),
        ("died_before_entry", pl.col("death_date") <= pl.col("entry_date")),
        ("emigrated_before_entry", pl.col("emigration_date") <= pl.col("entry_date")),
        ("prevalent_outcome_at_entry", pl.col("first_outcome_date") <= pl.col("entry_date")),
    ]
    flow: dict[str, Any] = {"persons_in_population": persons.height, "excluded": {}}
    remaining = persons
    for name, condition in steps:
        excluded = remaining.select(condition.fill_null(False).sum()).item()
        flow["excluded"][name] = int(excluded)
        remaining = remaining.filter(~condition.fill_null(False))

    exit_date = pl.min_horizontal(
        "outcome_date", "death_date", "emigration_date", "max_age_date", pl.lit(study_end)
    )
    cohort = (
        remaining.with_columns(exit_date=exit_date)
        .with_columns(event=(pl.col("outcome_date") == pl.col("exit_date")).fill_null(False))
        .with_columns(
            exit_reason=pl.when("event")
            .then(pl.lit("outcome"))
            .when(pl.col("death_date") == pl.col("exit_date"))
            .then(pl.lit("death"))
            .when(pl.col("emigration_date") == pl.col("exit_date"))
            .then(pl.lit("emigration"))
            .when(pl.col("max_age_date") == pl.col("exit_date"))
            .then(pl.lit("max_age"))
            .otherwise(pl.lit("study_end")),
            outcome_source=pl.when("event").then("outcome_source"),
            entry_age_days=(pl.col("entry_date") - pl.col("birth_date")).dt.total_days(),
            exit_age_days=(pl.col("exit_date") - pl.col("birth_date")).dt.total_days(),
        )
        .select(
            [
                pl.col(name).cast(dtype) if name != "person_id" else pl.col(name)
                for name, dtype in COHORT_SCHEMA.items()
            ]
        )
        .sort("person_id")
    )
    followup_days = cohort["exit_age_days"] - cohort["entry_age_days"]
    n_events = int(cohort["event"].sum())
    flow.update(
        {
            "persons_in_cohort": cohort.height,
            "events": n_events,
            "events_by_outcome_source": {
                k: int(v) for k, v in cohort.filter("event").group_by("outcome_source").len().sort("outcome_source").iter_rows()
            },
            "events_by_sex": {
                k: int(v) for k, v in cohort.filter("event").group_by("sex").len().sort("sex").iter_rows()
            },
            "exit_reasons": {
                k: int(v) for k, v in cohort.group_by("exit_reason").len().sort("exit_reason").iter_rows()
            },
            "person_years": round(float(followup_days.sum()) / DAYS_PER_YEAR, 2),
            "median_followup_years": round(float(followup_days.median() or 0) / DAYS_PER_YEAR, 2),
            "entry_age_years_median": round(float(cohort["entry_age_days"].median() or 0) / DAYS_PER_YEAR, 2),
        }
    )
    flow["check"] = (
        flow["persons_in_population"] - sum(flow["excluded"].values()) == flow["persons_in_cohort"]
    )
    return cohort, flow


@stage(reads=("study",))
def run_cohort(
    config: dict[str, Any],
    *,
    population: str | Path,
    ms_registry: str | Path | None,
    cohort: str | Path,
    ms_registry_unusable: str | Path | None = None,
    flow: str | Path,
    diagnoses: str | Path | None = None,
    prescriptions: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Read validated extracts, build the cohort, write cohort Parquet and flow JSON; return the flow.

    The outcome is read from the extract its definition names: the MS registry, the validated diagnosis
    extract (`diagnoses`) or the validated prescription parts (`prescriptions`, for a drug proxy).
    """
    cohort_path, flow_path = cohort, flow
    definition = outcome_definition(config["study"]["outcome"])
    inputs = OutcomeInputs(ms_registry=ms_registry, ms_registry_unusable=ms_registry_unusable, diagnoses=diagnoses,
                           prescriptions=prescriptions)  # fmt: skip
    outcomes, outcome_counts = person_outcomes(definition, inputs, config.get("resources"))
    cohort, flow = build_cohort(pl.scan_parquet(population), outcomes, config["study"])
    flow = {"outcome": {"source": definition.source, "label": definition.display_label}, **flow, **outcome_counts}
    cohort.write_parquet(cohort_path)
    Path(flow_path).write_text(json.dumps(flow, indent=2))
    log.info(
        "cohort: %d persons, %d events (%s), %.0f person-years",
        flow["persons_in_cohort"],
        flow["events"],
        definition.display_label,
        flow["person_years"],
    )
    return flow
