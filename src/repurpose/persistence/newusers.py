"""New users of the studied drug(s) and the registry definition of stopping.

A new user is a person's first start of one of the studied ATC codes in the MS registry's treatment table
(`ms_treatments`). Time zero is that start date. The registry definition of stopping is the episode's
`stop_date` (with its `stop_reason`); an episode without a stop date is ongoing and censored at the earliest
of study end, death and emigration. The case mix at time zero (age, sex, disease duration, EDSS as the last
score within a year before start, relapses in the year before start, calendar year, prior disease-modifying
therapy, clinic, country) comes from the registry tables and the population register.

Imports `repurpose.case_mix` (the case-mix columns it shares with the trial emulation).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from repurpose.case_mix import birth_date, with_last_edss, with_relapse_count

DAYS_PER_MONTH = 365.25 / 12
DAYS_PER_YEAR = 365.25
NO_CLINIC = "unknown clinic"
NO_COUNTRY = "unknown"
STOP_REASONS = ("adverse_event", "lack_of_efficacy", "pregnancy", "patient_wish", "other", "unknown")

# Names of the disease-modifying therapy classes by ATC prefix (old and 2024 codes), for the prior-treatment
# history; an unlisted code is named by its level-4 ATC group.
DMT_CLASSES: tuple[tuple[str, str], ...] = (
    ("L03AB", "interferon beta"),
    ("L03AX13", "glatiramer"),
    ("L04AA31", "teriflunomide"),
    ("L04AK02", "teriflunomide"),
    ("L04AX07", "dimethyl fumarate"),
    ("L04AX09", "diroximel fumarate"),
    ("L04AA27", "S1P modulator"),
    ("L04AE", "S1P modulator"),
    ("L04AA23", "natalizumab"),
    ("L04AG03", "natalizumab"),
    ("L04AA34", "alemtuzumab"),
    ("L04AG06", "alemtuzumab"),
    ("L04AA36", "anti-CD20"),
    ("L04AG08", "anti-CD20"),
    ("L04AA52", "anti-CD20"),
    ("L04AG12", "anti-CD20"),
    ("L01XC02", "anti-CD20"),
    ("L01FA01", "anti-CD20"),
    ("L04AA40", "cladribine"),
    ("L01BB04", "cladribine"),
)

NEW_USER_COLUMNS = (
    "person_id", "atc_code", "start_date", "stop_date", "stop_reason", "censor_date", "end_date", "time_days", "stopped",
    "clinic_id", "country", "sex", "age_years", "disease_duration_years", "edss", "relapses_prior_year",
    "calendar_year", "prior_dmt",
)  # fmt: skip


def dmt_class(code: str | None) -> str:
    """The therapy class of an ATC code (module table), or its level-4 group when unlisted."""
    if code is None:
        return "unknown"
    for prefix, name in DMT_CLASSES:
        if code.startswith(prefix):
            return name
    return code[:5]


def as_codes(drug: str | Sequence[str]) -> list[str]:
    """`persistence.drug` (one code or a list) as a sorted list of upper-case codes."""
    codes = [drug] if isinstance(drug, str) else list(drug)
    return sorted({str(c).strip().upper() for c in codes})


def new_users(
    treatments: pl.DataFrame,
    registry: pl.DataFrame,
    population: pl.DataFrame,
    relapses: pl.DataFrame | None,
    edss: pl.DataFrame | None,
    codes: Sequence[str],
    study_end: date,
) -> pl.DataFrame:
    """One row per new user of `codes` (module doc): time zero, the registry stop, follow-up and case mix.

    `time_days` runs from start to the stop (stopped = 1) or to censoring (ongoing, death, emigration or
    study end; stopped = 0). A stop date after the end of follow-up is censored there. Starts after
    `study_end` or at or after death/emigration are left out (no follow-up)."""
    codes = list(codes)
    # text columns as plain strings whatever the validated dtype (categorical, large_string)
    treatments = treatments.with_columns(
        pl.col("treatment_atc_code").cast(pl.String).str.strip_chars().str.to_uppercase(),
        *[pl.col(c).cast(pl.String) for c in ("stop_reason", "clinic_id") if c in treatments.columns],
    )
    registry = registry.with_columns([pl.col(c).cast(pl.String) for c in ("clinic_id", "country") if c in registry.columns])
    population = population.with_columns(pl.col("sex").cast(pl.String))
    first = (
        treatments.filter(pl.col("treatment_atc_code").is_in(codes))
        .sort("person_id", "start_date", "treatment_atc_code")
        .group_by("person_id", maintain_order=True)
        .first()
        .rename({"treatment_atc_code": "atc_code"})
    )
    if "clinic_id" not in first.columns:
        first = first.with_columns(pl.lit(None, pl.String).alias("clinic_id"))
    if "stop_reason" not in first.columns:
        first = first.with_columns(pl.lit(None, pl.String).alias("stop_reason"))
    prior = (
        treatments.join(first.select("person_id", pl.col("start_date").alias("t0")), on="person_id")
        .filter(pl.col("start_date") < pl.col("t0"))
        .sort("person_id", "start_date")
        .group_by("person_id", maintain_order=True)
        .last()
        .select("person_id", pl.col("treatment_atc_code").alias("prior_code"))
    )
    reg_columns = [c for c in ("clinic_id", "country", "onset_date", "diagnosis_date") if c in registry.columns]
    reg = registry.select("person_id", *reg_columns).unique("person_id", keep="first")
    reg = reg.rename({"clinic_id": "registry_clinic_id"}) if "clinic_id" in reg.columns else reg
    pop_columns = [c for c in ("sex", "birth_year", "birth_month", "death_date", "emigration_date") if c in population.columns]
    out = first.join(prior, on="person_id", how="left").join(reg, on="person_id", how="left")
    out = out.join(population.select("person_id", *pop_columns), on="person_id", how="inner")
    for column, dtype in (("country", pl.String), ("onset_date", pl.Date), ("diagnosis_date", pl.Date),
                          ("registry_clinic_id", pl.String), ("birth_month", pl.Int64), ("death_date", pl.Date),
                          ("emigration_date", pl.Date)):  # fmt: skip
        if column not in out.columns:
            out = out.with_columns(pl.lit(None, dtype).alias(column))
    censor = pl.min_horizontal(pl.lit(study_end), "death_date", "emigration_date")
    out = out.with_columns(censor.alias("censor_date")).filter(pl.col("start_date") < pl.col("censor_date"))
    stopped = pl.col("stop_date").is_not_null() & (pl.col("stop_date") <= pl.col("censor_date"))
    end = pl.when(stopped).then(pl.col("stop_date")).otherwise(pl.col("censor_date"))
    onset = pl.coalesce("onset_date", "diagnosis_date")
    out = out.with_columns(
        end.alias("end_date"),
        stopped.cast(pl.Int8).alias("stopped"),
        pl.when(stopped).then(pl.col("stop_reason").fill_null("unknown")).otherwise(None).alias("stop_reason"),
        pl.coalesce("clinic_id", "registry_clinic_id").fill_null(NO_CLINIC).alias("clinic_id"),
        pl.col("country").fill_null(NO_COUNTRY),
        ((pl.col("start_date") - birth_date()).dt.total_days() / DAYS_PER_YEAR).alias("age_years"),
        ((pl.col("start_date") - onset).dt.total_days() / DAYS_PER_YEAR).alias("disease_duration_years"),
        pl.col("start_date").dt.year().alias("calendar_year"),
        pl.col("prior_code").map_elements(dmt_class, return_dtype=pl.String).fill_null("naive").alias("prior_dmt"),
    ).with_columns(
        # a stop on the start day is a stop at half a day (a zero time is not a duration)
        pl.max_horizontal((pl.col("end_date") - pl.col("start_date")).dt.total_days().cast(pl.Float64), pl.lit(0.5))
        .alias("time_days")
    )
    out = with_last_edss(out, edss, at="start_date", window_days=365)  # the last score within a year before start
    out = with_relapse_count(out, relapses, at="start_date", window_days=365, name="relapses_prior_year")
    return out.select(NEW_USER_COLUMNS).sort("start_date", "person_id")
