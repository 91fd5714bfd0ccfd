"""The columns of the files passed between stages (docs/schemas.md), in one place.

Owns: the time unit of every age column (`DAYS_PER_YEAR`), the cohort schema, the exposure table's
columns (dose columns derived from `screen.dose_cutpoints_ddd`), the raw screen part and the released
screen table, the keys of one fit, the count columns that disclosure control treats as persons, and
the drug ranking's columns (lag and dose columns derived from `screen.lags_years` and
`screen.dose_cutpoints_ddd`). A stage that writes or reads one of these files takes its columns from
here. Imports polars only: every stage may import it, it imports no stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import polars as pl

DAYS_PER_YEAR = 365.25
"""Ages are whole days since birth; years are days / DAYS_PER_YEAR (lags, person-years, follow-up)."""

# --------------------------------------------------------------------------------------------------
# cohort -> results/cohort/cohort.parquet
# --------------------------------------------------------------------------------------------------

COHORT_SCHEMA: dict[str, pl.DataType] = {
    "person_id": pl.Int64,  # or String when the registry's identifiers are not integers
    "sex": pl.String,
    "birth_year": pl.Int32,
    "birth_date": pl.Date,
    "education": pl.Int32,
    "entry_date": pl.Date,
    "exit_date": pl.Date,
    "entry_age_days": pl.Int32,
    "exit_age_days": pl.Int32,
    "event": pl.Boolean,
    "exit_reason": pl.String,
    "outcome_source": pl.String,
}

# --------------------------------------------------------------------------------------------------
# exposure -> results/exposure/atc_level_{L}.parquet
# --------------------------------------------------------------------------------------------------


def dose_column(cut_ddd: float) -> str:
    """Column holding the age (days) at which cumulative DDD reaches `cut_ddd`."""
    return f"cumulative_ddd_{cut_ddd:g}_age_days".replace(".", "_")


def exposure_columns(config: dict[str, Any]) -> list[str]:
    """The columns of an exposure table of one ATC level, in order (one dose column per cut point).
    `cohort_row` is the person's row in the cohort table the exposures were built from (0-based): later
    stages index their cohort arrays with it instead of searching the person_id."""
    return [
        "person_id", "cohort_row", "atc_code", "atc_level", "exposure_start_date", "exposure_start_age_days",
        "first_dispense_age_days", "n_dispensings", "total_ddd",
        *[dose_column(float(cut)) for cut in config["screen"]["dose_cutpoints_ddd"]],
    ]  # fmt: skip


SCREEN_EXPOSURE_COLUMNS = ["person_id", "atc_code", "exposure_start_age_days"]
"""The columns of an exposure table the screen and the distributed fits read."""

# --------------------------------------------------------------------------------------------------
# screen -> results/screen/parts/..., results/screen/dwas.parquet
# --------------------------------------------------------------------------------------------------

FIT_KEYS = ["atc_code", "atc_level", "lag_years", "sex"]
"""One fit of the screen: a class at an ATC level, a lag and a sex stratum."""

SCREEN_COUNT_COLUMNS = ["n_persons", "n_exposed", "n_cases", "n_exposed_cases"]
"""Person counts of a screen row (and of a site package's fits): what disclosure control suppresses."""

WALD_COLUMNS = ["hr", "ci_lower", "ci_upper", "log_hr", "se", "p_value"]
"""The estimate of a fit and its Wald summary (`repurpose.cox.result.wald`)."""

SCREEN_PART_SCHEMA: dict[str, pl.DataType] = {
    "atc_code": pl.String,
    "lag_years": pl.Float64,
    "sex": pl.String,
    **{name: pl.Int64 for name in SCREEN_COUNT_COLUMNS},
    "person_years_exposed": pl.Float64,
    **{name: pl.Float64 for name in WALD_COLUMNS},
    "converged": pl.Boolean,
    "n_iter": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
    "atc_level": pl.Int8,
}
"""Columns of a raw screen part (one row per class x lag x sex group; counts not yet disclosure-controlled)."""

SCREEN_COLUMNS = [
    "atc_code", "atc_name", "atc_level", "lag_years", "sex", *SCREEN_COUNT_COLUMNS, "person_years_exposed",
    *WALD_COLUMNS, "q_value", "significant", "converged", "n_iter", "status", "reason",
]  # fmt: skip
"""Columns of the released screen table dwas.parquet / dwas.csv, in order."""

# --------------------------------------------------------------------------------------------------
# candidates -> results/candidates/drug_ranking.csv
# --------------------------------------------------------------------------------------------------

RANKING_COUNT_COLUMNS = ["n_exposed", "n_exposed_cases", "n_active_comparator", "n_active_comparator_cases"]
"""Person counts of a drug-ranking row."""


def lag_label(lag_years: float) -> str:
    """How a lag is written in column names: 2.0 -> "2", 0.5 -> "0.5"."""
    return f"{float(lag_years):g}"


def ranking_lags(lags_years: Iterable[float]) -> list[float]:
    """The lags with an HR column in the drug ranking: lag 0 and every screened lag."""
    return sorted({0.0, *(float(lag) for lag in lags_years)})


EVIDENCE_LINES = (
    "calibrated",
    "lag_robust",
    "dose_response",
    "sex_consistent",
    "class_consistent",
    "confirmed",
    "active_comparator",
    "robust_to_confounding",
    "mechanism",
    "replication",
)
"""The evidence lines of a drug signal: one `evidence_<line>` column each, valued `supported`, `against` or
`not assessed: <why>` (`repurpose.dwas.evidence`)."""


def is_candidate(frame: pl.DataFrame, alpha: float) -> pl.Series:
    """The drug ranking's `candidate` column as booleans, as written or as read back from its CSV (an older
    ranking without the column lists only candidates: q < alpha)."""
    if "candidate" in frame.columns:
        return frame["candidate"].cast(pl.String).str.to_lowercase().is_in(["true", "1", "yes"])
    if "q_value" in frame.columns:
        return (frame["q_value"] < alpha).fill_null(False)
    return pl.Series([True] * frame.height)


def drug_ranking_columns(config: dict[str, Any]) -> list[str]:
    """Columns of drug_ranking.csv, in order (the contract the report reads; docs/schemas.md).

    One row per independent signal (`repurpose.dwas.signals`): rank within direction, whether it passes the
    threshold, the codes it covers, the lag of its estimate, the raw and the shrunken estimate, one column
    per evidence line, the score (supported of assessed) and flags; then the detail: an HR per lag (and its
    separated estimate per lag > 0) and one per cumulative-DDD category (below the first cut point, between
    cut points, above the last).
    """
    lags = ranking_lags(config["screen"]["lags_years"])
    n_dose_categories = len(config["screen"]["dose_cutpoints_ddd"]) + 1
    return [
        "rank", "direction", "candidate", "atc_code", "atc_name", "atc_level", "also_seen_at", "carried_by",
        "lag_years", "hr", "ci_lower", "ci_upper", "p_value", "p_method", "q_value", "tree_q", "tree_rejected",
        "n_exposed", "n_exposed_cases", "hr_shrunken", "ci_lower_shrunken", "ci_upper_shrunken",
        *[f"evidence_{line}" for line in EVIDENCE_LINES], "evidence_supported", "evidence_assessed",
        "flags", "targets",
        "calibrated_p", "calibrated_q", "calibrated_hr", "calibrated_ci_lower", "calibrated_ci_upper",
        *[f"hr_lag{lag_label(lag)}" for lag in lags],
        *[f"hr_separated_lag{lag_label(lag)}" for lag in lags if lag > 0],
        "lag_retained_fraction", "lag_fade_p",
        *[f"hr_dose_{k}" for k in range(1, n_dose_categories + 1)],
        "dose_trend_hr", "dose_trend_p", "hr_F", "hr_M", "sex_heterogeneity_p",
        "n_siblings", "sibling_agreement", "sibling_pooled_hr", "sibling_pooled_p",
        "hr_confirmation", "ci_lower_confirmation", "ci_upper_confirmation", "confirmation_adjusted_for",
        "hr_active_comparator", "ci_lower_active_comparator", "ci_upper_active_comparator",
        "n_active_comparator", "n_active_comparator_cases", "e_value", "e_value_ci",
        "hr_replication", "ci_lower_replication", "ci_upper_replication", "p_replication",
        "evidence_score",
    ]  # fmt: skip
