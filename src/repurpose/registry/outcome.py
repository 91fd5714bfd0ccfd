"""The study outcome: its definition (`study.outcome`) and each person's outcome date.

Owns the three kinds of outcome definition and the rule of each, written once here:
- `ms_registry`: MS onset or diagnosis from the MS registry (onset falls back to diagnosis). A patient with
  several registry rows is resolved to the earliest onset and the earliest diagnosis across the rows, so a
  duplicated patient stays a case (the rows are counted in the cohort flow).
- `diagnoses`: the first date a person meets a rule in a diagnosis extract (e.g. the patient registry):
  at least `min_records` records, on distinct days, of the listed ICD-10 codes (matched as prefixes, dots
  ignored), the last of them at least `min_days_apart` days after the first; dated at the first.
- `drug_proxy`: at least `min_dispensings` dispensings of the listed ATC codes (prefixes); dated at the first.
  The proxy drugs are then no exposure: `proxy_atc_prefixes` lists them for the exposure stage, which drops
  their dispensings before any exposure window is built.

The old strings `onset` and `diagnosis` stay accepted as shorthand for the MS registry definition.
Per-person outcome frames have the columns of `OUTCOME_COLUMNS`; `first_outcome_date` is the earliest
date that makes a person prevalent at entry (for the MS registry, the earlier of onset and diagnosis).

May import polars (on first use), duckdb and the shared top-level `duck` and `lazy`; nothing else of the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import connect, sql_literal
from repurpose.lazy import lazy_module

# Imported on first use: the validation imports this module for its ICD-10 rules only.
pl = lazy_module("polars")

OUTCOME_SOURCES = ("ms_registry", "diagnoses", "drug_proxy")
MS_REGISTRY_DATES = ("onset", "diagnosis")
DEFINITION_KEYS: dict[str, tuple[str, ...]] = {
    "ms_registry": ("source", "date", "label"),
    "diagnoses": ("source", "codes", "min_records", "min_days_apart", "label"),
    "drug_proxy": ("source", "atc_codes", "min_dispensings", "label"),
}
OUTCOME_COLUMNS = ("person_id", "outcome_date", "outcome_source", "first_outcome_date")
ICD10_CODE_REGEX = "^[A-Z][0-9]{2}[0-9A-Z]{0,4}$"
"""An ICD-10 code once upper-cased and stripped of dots: a letter, two digits and up to four more characters."""


class OutcomeDefinitionError(ValueError):
    """`study.outcome` cannot be used as written; the message names the key and what to write."""


def normalise_icd10(code: str) -> str:
    """ICD-10 code as compared: upper case, no dots or spaces (`g20.0` -> `G200`)."""
    return code.strip().upper().replace(".", "").replace(" ", "")


def normalised_icd10_sql(expr: str) -> str:
    """SQL of `normalise_icd10`, for the validation of the diagnosis extract (which stores codes normalised)."""
    return f"upper(replace(replace(trim({expr}), '.', ''), ' ', ''))"


@dataclass(frozen=True)
class OutcomeDefinition:
    """One outcome definition, normalised from `study.outcome` (defaults equal the config schema's)."""

    source: str = "ms_registry"
    date: str = "onset"
    codes: tuple[str, ...] = ()
    min_records: int = 1
    min_days_apart: int = 0
    atc_codes: tuple[str, ...] = ()
    min_dispensings: int = 1
    label: str | None = None

    @property
    def input_name(self) -> str:
        """The `inputs.<name>` extract the outcome is read from."""
        return {"ms_registry": "ms_registry", "diagnoses": "diagnoses", "drug_proxy": "prescriptions"}[self.source]

    @property
    def display_label(self) -> str:
        """How the report names the outcome: `label`, else MS or the listed codes."""
        if self.label:
            return self.label
        if self.source == "ms_registry":
            return "MS"
        codes = self.codes if self.source == "diagnoses" else self.atc_codes
        return f"{self.source.replace('_', ' ')} {', '.join(codes)}"

    @property
    def proxy_atc_prefixes(self) -> tuple[str, ...]:
        """ATC codes (prefixes) whose dispensings define the outcome, so they must not count as exposure."""
        return self.atc_codes if self.source == "drug_proxy" else ()


def outcome_definition(outcome: str | dict[str, Any]) -> OutcomeDefinition:
    """Normalise `study.outcome` (a shorthand string or a definition object) into an OutcomeDefinition."""
    if isinstance(outcome, str):
        if outcome not in MS_REGISTRY_DATES:
            raise OutcomeDefinitionError(
                f"study.outcome: {outcome!r} is not a shorthand; write one of {list(MS_REGISTRY_DATES)} "
                "or a definition with `source` (one of ms_registry, diagnoses, drug_proxy)"
            )
        return OutcomeDefinition(source="ms_registry", date=outcome)
    source = outcome.get("source")
    if source not in OUTCOME_SOURCES:
        raise OutcomeDefinitionError(f"study.outcome.source: {source!r} is not one of {list(OUTCOME_SOURCES)}")
    foreign = sorted(set(outcome) - set(DEFINITION_KEYS[source]))
    if foreign:
        raise OutcomeDefinitionError(
            f"study.outcome: {foreign} do not apply to source {source}; its keys are {list(DEFINITION_KEYS[source])}"
        )
    label = outcome.get("label")
    defaults = OutcomeDefinition()
    if source == "ms_registry":
        date = outcome.get("date", defaults.date)
        if date not in MS_REGISTRY_DATES:
            raise OutcomeDefinitionError(f"study.outcome.date: {date!r} is not one of {list(MS_REGISTRY_DATES)}")
        return OutcomeDefinition(source=source, date=date, label=label)
    if source == "diagnoses":
        codes = tuple(normalise_icd10(str(code)) for code in outcome.get("codes", ()))
        if not codes:
            raise OutcomeDefinitionError("study.outcome.codes: a diagnoses outcome needs at least one ICD-10 code")
        return OutcomeDefinition(
            source=source,
            codes=codes,
            min_records=int(outcome.get("min_records", defaults.min_records)),
            min_days_apart=int(outcome.get("min_days_apart", defaults.min_days_apart)),
            label=label,
        )
    atc_codes = tuple(str(code).strip().upper() for code in outcome.get("atc_codes", ()))
    if not atc_codes:
        raise OutcomeDefinitionError("study.outcome.atc_codes: a drug_proxy outcome needs at least one ATC code")
    return OutcomeDefinition(
        source=source,
        atc_codes=atc_codes,
        min_dispensings=int(outcome.get("min_dispensings", defaults.min_dispensings)),
        label=label,
    )


def outcome_config_errors(config: dict[str, Any]) -> list[str]:
    """Mistakes between `study.outcome` and `inputs` (checked with the config, before any job runs)."""
    try:
        definition = outcome_definition(config["study"]["outcome"])
    except OutcomeDefinitionError as error:
        return [str(error)]
    if definition.source == "diagnoses" and not config.get("inputs", {}).get("diagnoses"):
        return [
            "config keys `study.outcome.source` and `inputs.diagnoses`: the outcome is read from a diagnosis "
            "extract, but inputs.diagnoses is not set; give its path (inputs.diagnoses.path) or choose another source"
        ]
    return []


# ---------------------------------------------------------------- per-person outcome dates, one rule per source


def ms_registry_outcomes(ms_registry: pl.LazyFrame, date: str) -> pl.LazyFrame:
    """Per MS patient (OUTCOME_COLUMNS plus `n_registry_rows`): onset (falling back to diagnosis) or diagnosis.

    Rows of the same patient are resolved to the earliest onset and the earliest diagnosis, and the onset
    outcome is never later than the diagnosis (each validated row already has onset <= diagnosis).
    """
    resolved = ms_registry.group_by("person_id").agg(
        pl.col("onset_date").min(), pl.col("diagnosis_date").min(), n_registry_rows=pl.len()
    )
    if date == "onset":
        onset_first = pl.col("onset_date").is_not_null() & (
            pl.col("diagnosis_date").is_null() | (pl.col("onset_date") <= pl.col("diagnosis_date"))
        )
        outcome_date = pl.when(onset_first).then("onset_date").otherwise("diagnosis_date")
        source = pl.when(onset_first).then(pl.lit("onset")).otherwise(pl.lit("diagnosis"))
    else:
        outcome_date, source = pl.col("diagnosis_date"), pl.lit("diagnosis")
    return resolved.select(
        "person_id",
        outcome_date=outcome_date,
        outcome_source=source,
        first_outcome_date=pl.min_horizontal("onset_date", "diagnosis_date"),
        n_registry_rows=pl.col("n_registry_rows").cast(pl.Int64),
    )


def icd10_prefix_filter(codes: Sequence[str], column: str = "icd10_code") -> pl.Expr:
    """True where `column` (a normalised ICD-10 code) starts with one of `codes`."""
    matches = [pl.col(column).str.starts_with(normalise_icd10(code)) for code in codes]
    return pl.any_horizontal(matches)


def diagnosis_outcomes(diagnoses: pl.LazyFrame, definition: OutcomeDefinition) -> pl.LazyFrame:
    """Per person meeting the diagnosis rule (see the module docstring): OUTCOME_COLUMNS, dated at the first record.

    A record date qualifies as the first of the rule when at least `min_records` distinct record days fall
    on or after it and the last of them is at least `min_days_apart` days later.
    """
    days = (
        diagnoses.filter(icd10_prefix_filter(definition.codes))
        .select("person_id", "diagnosis_date")
        .unique()
        .sort("person_id", "diagnosis_date")
    )
    per_person = pl.col("person_id")
    qualifying = days.with_columns(
        days_on_or_after=(pl.len().over(per_person) - pl.int_range(pl.len()).over(per_person)),
        last_date=pl.col("diagnosis_date").max().over(per_person),
    ).filter(
        (pl.col("days_on_or_after") >= definition.min_records)
        & ((pl.col("last_date") - pl.col("diagnosis_date")).dt.total_days() >= definition.min_days_apart)
    )
    return (
        qualifying.group_by("person_id")
        .agg(outcome_date=pl.col("diagnosis_date").min())
        .select(
            "person_id",
            "outcome_date",
            outcome_source=pl.lit("diagnoses"),
            first_outcome_date=pl.col("outcome_date"),
        )
    )


def atc_prefix_sql(column: str, prefixes: Sequence[str]) -> str:
    """SQL condition: `column` starts with one of the ATC `prefixes`."""
    return "(" + " OR ".join(f"starts_with({column}, {sql_literal(p)})" for p in prefixes) + ")"


def drug_proxy_outcomes(
    prescription_paths: Sequence[str | Path], definition: OutcomeDefinition, resources: dict[str, Any] | None = None
) -> pl.LazyFrame:
    """Per person with at least `min_dispensings` dispensings of the proxy drugs: OUTCOME_COLUMNS, dated at the first.

    DuckDB scans the validated dispensings once and returns one row per proxy user, so the dispensings are
    never held in Python memory.
    """
    files = "[" + ", ".join(sql_literal(str(p)) for p in prescription_paths) + "]"
    con = connect(resources)
    try:
        table = con.sql(
            f"""SELECT person_id, min(dispense_date) AS outcome_date
                FROM read_parquet({files}, union_by_name = true)
                WHERE {atc_prefix_sql("atc_code", definition.proxy_atc_prefixes)}
                GROUP BY person_id
                HAVING count(*) >= {int(definition.min_dispensings)}
                ORDER BY person_id"""
        ).to_arrow_table()
    except duckdb.Error as error:
        raise OutcomeDefinitionError(
            f"study.outcome (drug_proxy): cannot read the validated prescriptions: {str(error).splitlines()[0]}"
        ) from error
    finally:
        con.close()
    return pl.DataFrame(table).lazy().select(
        "person_id",
        pl.col("outcome_date").cast(pl.Date),
        outcome_source=pl.lit("drug_proxy"),
        first_outcome_date=pl.col("outcome_date").cast(pl.Date),
    )


@dataclass(frozen=True)
class OutcomeInputs:
    """The validated files an outcome may be read from (only the one of the definition's source is used)."""

    ms_registry: str | Path | None = None
    ms_registry_unusable: str | Path | None = None
    diagnoses: str | Path | None = None
    prescriptions: Sequence[str | Path] = ()


def person_outcomes(
    definition: OutcomeDefinition, inputs: OutcomeInputs, resources: dict[str, Any] | None = None
) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """Per-person outcome dates (OUTCOME_COLUMNS plus `outcome_unknown`: a person whose outcome cannot be dated,
    such as an MS patient whose every registry row was rejected) and the counts the flow reports about them."""
    if definition.source == "ms_registry":
        if inputs.ms_registry is None:
            raise OutcomeDefinitionError("study.outcome: the MS registry outcome needs the validated ms_registry")
        resolved = ms_registry_outcomes(pl.scan_parquet(inputs.ms_registry), definition.date).collect()
        duplicated = resolved.filter(pl.col("n_registry_rows") > 1)
        counts = {
            "outcome_registry_duplicates": {
                "persons": duplicated.height,
                "rows": int(duplicated["n_registry_rows"].sum() or 0),
                "rule": "earliest onset and earliest diagnosis across the person's rows",
            }
        }
        outcomes = resolved.select(OUTCOME_COLUMNS).with_columns(outcome_unknown=pl.lit(False))
        if inputs.ms_registry_unusable is not None:
            # Patients whose every registry row was rejected: their outcome cannot be dated, so they are never
            # controls (build_cohort leaves them out at its first step, counted in the flow).
            unusable = pl.read_parquet(inputs.ms_registry_unusable).select("person_id")
            unusable = unusable.join(outcomes, on="person_id", how="anti").with_columns(outcome_unknown=pl.lit(True))
            outcomes = pl.concat([outcomes, unusable], how="diagonal_relaxed")
        return outcomes.lazy(), counts
    if definition.source == "diagnoses":
        if inputs.diagnoses is None:
            raise OutcomeDefinitionError("study.outcome: the diagnoses outcome needs the validated inputs.diagnoses")
        return diagnosis_outcomes(pl.scan_parquet(inputs.diagnoses), definition).with_columns(outcome_unknown=pl.lit(False)), {}
    if not inputs.prescriptions:
        raise OutcomeDefinitionError("study.outcome: the drug_proxy outcome needs the validated prescriptions")
    return drug_proxy_outcomes(inputs.prescriptions, definition, resources).with_columns(outcome_unknown=pl.lit(False)), {}
