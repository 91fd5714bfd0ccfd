"""Validate the MS registry's clinical extracts (treatments, relapses, EDSS scores) and the sick-leave extract.

The optional extracts `inputs.ms_treatments`, `inputs.ms_relapses`, `inputs.ms_edss` and `inputs.sick_leave`
are read through the data dictionary like the others (`repurpose.registry.reader`) and checked against the
clean population and the clean MS registry. Every row ends in the clean file or in the rejects file with one
reason, counted in the validation report. They are validated by their own stage (`validate_clinical`), after
the registers, so configuring them reruns nothing of the screen.

Rules beyond each column's own (missing, unparseable, after the delivery date, not allowed, out of range, off
the 0.5 EDSS grid, not a level-5 ATC code), in the order they are applied (a row gets the first that holds):

- `unknown_person` (not in the clean population); `not_in_ms_registry` (treatments, relapses and EDSS scores
  of a person without a usable MS registry row; sick leave is not restricted to patients: a sickness benefit
  register covers everyone);
- `<date>_before_birth` (before the earliest possible birth date) and `<date>_after_death` for every date;
  dates after emigration are kept (a registry may record a stop or visit it learns of later);
- `stop_before_start` (treatment stopped before it started; the same day is a one-day treatment, e.g. an
  infusion), `stop_reason_without_stop_date` (a reason says the drug was stopped, the missing date says it
  runs on: counting the episode as ongoing would overstate persistence, and no day can be guessed, so the row
  is rejected and the analyst sees the count), `relapse_before_onset` (a relapse before the MS onset the
  registry records; relapses before the diagnosis are ordinary, and with no onset date the first relapse is
  the onset, so the diagnosis is no bound), `end_before_start` (sick leave);
- across rows, among the rows that passed every rule above: `duplicate_row` (a copy of a row already kept,
  in every column), `conflicting_edss` (two different scores of one person on one day: both rejected, as
  neither can be preferred), `overlaps_earlier_episode` (a treatment episode of a drug that starts before an
  earlier kept episode of the same drug and person has stopped, or while it is ongoing).

Overlapping episodes: the later row is rejected, not merged. The earlier start is the one the registry
recorded first and defines a new user's start; a merge would invent a stop date and a stop reason that no
row records (whose?). The rejected row stays in the rejects file for a study that prefers to merge. An
episode starting on the day the earlier one stopped is a restart, not an overlap.

May import `repurpose.duck`, `repurpose.layout`, `repurpose.lazy`, `repurpose.stages`, `repurpose.registry.dictionary`, `repurpose.registry.reader`
and `repurpose.registry.labelled`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import sql_literal
from repurpose.layout import ResultsLayout
from repurpose.lazy import lazy_module
from repurpose.registry.dictionary import CLINICAL_EXTRACTS, load_extract_spec
from repurpose.registry.labelled import (
    birth_floor,
    check_shared_persons,
    load_clean_population,
    ordered_connection,
    write_extract,
)
from repurpose.registry.reader import Check, ExtractError, ExtractReader, csv_problem
from repurpose.stages import stage

# Imported on first use: a prescription part's job imports this module but validates no clinical extract.
np = lazy_module("numpy")
pa = lazy_module("pyarrow")

log = logging.getLogger(__name__)

# The extracts whose persons must be MS patients (in the clean MS registry).
PATIENT_EXTRACTS = ("ms_treatments", "ms_relapses", "ms_edss")
ONGOING = 2**63 - 1  # the stop day of an ongoing episode (the largest BIGINT)


def configured_clinical_extracts(config: dict[str, Any]) -> list[str]:
    """The clinical extracts the config names (`inputs.<extract>` set), in dictionary order."""
    return [name for name in CLINICAL_EXTRACTS if config["inputs"].get(name)]


def clinical_outputs(paths: ResultsLayout, extracts: list[str]) -> dict[str, str]:
    """The validated file and the rejects file of each extract, named as validate_clinical's outputs."""
    return {
        key: path
        for name in extracts
        for key, path in ((name, paths.validated(name)), (f"{name}_rejects", paths.rejects(name)))
    }


def row_checks(extract: str) -> tuple[list[Check], str]:
    """Rules of one row of a clinical extract beyond its columns' own, with the joins they need: the clean
    population `p` and the MS patients `m` (one row per patient: earliest onset and diagnosis)."""
    spec = load_extract_spec(extract)
    checks = [Check("unknown_person", "p.person_id IS NULL")]
    if extract in PATIENT_EXTRACTS:
        checks.append(Check("not_in_ms_registry", "m.person_id IS NULL"))
    dates = [c.name for c in spec.columns if c.type == "date"]
    checks += [Check(f"{d}_before_birth", f"t.{d} < {birth_floor('p')}") for d in dates]
    checks += [Check(f"{d}_after_death", f"t.{d} > p.death_date") for d in dates]
    if extract == "ms_treatments":
        checks += [
            Check("stop_before_start", "t.stop_date < t.start_date"),
            Check("stop_reason_without_stop_date", "t.stop_reason IS NOT NULL AND t.raw_stop_date IS NULL"),
        ]
    elif extract == "ms_relapses":
        checks.append(Check("relapse_before_onset", "t.relapse_date < m.onset_date"))
    elif extract == "sick_leave":
        checks.append(Check("end_before_start", "t.end_date < t.start_date"))
    joins = (
        "LEFT JOIN clean_population p ON t.person_id = p.person_id "
        "LEFT JOIN ms_patients m ON t.person_id = m.person_id"
    )
    return checks, joins


def _reject_where(con: duckdb.DuckDBPyConnection, table: str, reason: str, rowids_sql: str) -> None:
    con.execute(f"UPDATE {table} SET reject_reason = {sql_literal(reason)} WHERE rowid IN ({rowids_sql})")


def reject_duplicates(con: duckdb.DuckDBPyConnection, extract: str) -> None:
    """Reject every copy but the first of a clean row repeated in all its canonical columns (`duplicate_row`)."""
    table = f"labelled_{extract}"
    columns = ", ".join(c.name for c in load_extract_spec(extract).columns)
    _reject_where(
        con, table, "duplicate_row",
        f"SELECT rid FROM (SELECT rowid AS rid, row_number() OVER (PARTITION BY {columns} ORDER BY rowid) AS copy "
        f"FROM {table} WHERE reject_reason IS NULL) WHERE copy > 1",
    )  # fmt: skip


def reject_conflicting_edss(con: duckdb.DuckDBPyConnection) -> None:
    """Reject all clean scores of a person's day when they differ (`conflicting_edss`): none can be preferred."""
    _reject_where(
        con, "labelled_ms_edss", "conflicting_edss",
        "SELECT rowid FROM labelled_ms_edss WHERE reject_reason IS NULL "
        "QUALIFY min(edss) OVER (PARTITION BY person_id, visit_date) <> max(edss) OVER (PARTITION BY person_id, visit_date)",
    )  # fmt: skip


def overlapping_episodes(group: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Positions of the episodes that start before the last kept episode of their group has stopped.

    The rows are sorted by group and start. Within a group the first episode is kept; each later one is kept
    when it starts on or after the stop day of the last kept one (`ONGOING` for an ongoing episode), else it
    overlaps. Kept episodes never overlap, so the last kept one has the latest stop. Exact, unlike a running
    maximum over all earlier rows, which would let a rejected row reject the rows after it."""
    overlapping = []
    kept_stop, current = 0, None
    for i in range(len(group)):
        if group[i] != current:
            current, kept_stop = group[i], stop[i]
        elif start[i] < kept_stop:
            overlapping.append(i)
        else:
            kept_stop = stop[i]
    return np.asarray(overlapping, dtype=np.int64)


def reject_overlapping_episodes(con: duckdb.DuckDBPyConnection) -> None:
    """Reject the later of two clean treatment episodes of one drug and person that overlap in time."""
    rows = con.execute(
        "SELECT rowid AS rid, dense_rank() OVER (ORDER BY person_id, treatment_atc_code) AS grp, "
        "date_diff('day', DATE '1970-01-01', start_date) AS start_day, "
        f"coalesce(date_diff('day', DATE '1970-01-01', stop_date), {ONGOING}) AS stop_day "
        "FROM labelled_ms_treatments WHERE reject_reason IS NULL "
        "QUALIFY count(*) OVER (PARTITION BY person_id, treatment_atc_code) > 1 "
        "ORDER BY grp, start_day, stop_day, stop_reason NULLS LAST, clinic_id NULLS LAST, rid"
    ).fetchnumpy()
    positions = overlapping_episodes(rows["grp"], rows["start_day"], rows["stop_day"])
    if len(positions) == 0:
        return
    overlapping = pa.table({"rid": pa.array(np.asarray(rows["rid"])[positions], type=pa.int64())})
    con.register("overlapping_rows", overlapping)
    _reject_where(con, "labelled_ms_treatments", "overlaps_earlier_episode", "SELECT rid FROM overlapping_rows")
    con.unregister("overlapping_rows")


def validate_clinical_extract(
    con: duckdb.DuckDBPyConnection,
    config: dict[str, Any],
    extract: str,
    person_id_type: str,
    population_label: str,
    *,
    clean_path: Path,
    rejects_path: Path,
) -> dict[str, Any]:
    """Validate one clinical extract against `clean_population` and `ms_patients` (loaded in `con`); write its
    clean rows and rejects and return its report entry."""
    reader = ExtractReader(con, extract, config["inputs"][extract])
    reader.fail_if_nothing_parses()
    checks, joins = row_checks(extract)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE labelled_{extract} AS {reader.labelled_sql(person_id_type, checks, joins)}")
    except duckdb.Error as error:
        problem = csv_problem(error) if reader.sources.kind == "csv" else str(error).splitlines()[0]
        raise ExtractError(f"{extract}: cannot read {reader.file_label}: {problem}") from error
    check_shared_persons(con, reader, population_label)
    reject_duplicates(con, extract)
    if extract == "ms_edss":
        reject_conflicting_edss(con)
    if extract == "ms_treatments":
        reject_overlapping_episodes(con)
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    entry = write_extract(con, reader, clean_path, rejects_path)
    log.info(
        "%s %s: %d rows read, %d kept, %d rejected %s",
        extract, reader.file_label, entry["rows_read"], entry["rows_kept"], entry["rows_rejected"], entry["rejected_by_reason"],
    )  # fmt: skip
    return entry


def _load_ms_patients(con: duckdb.DuckDBPyConnection, ms_registry: str | Path) -> None:
    """One row per patient of the clean MS registry: the earliest onset and diagnosis of their rows."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ms_patients AS SELECT person_id, min(onset_date) AS onset_date, "
        f"min(diagnosis_date) AS diagnosis_date FROM read_parquet({sql_literal(str(ms_registry))}) GROUP BY person_id"
    )


@stage(reads=tuple(f"inputs.{name}" for name in CLINICAL_EXTRACTS))
def validate_clinical(
    config: dict[str, Any],
    *,
    population: str | Path,
    ms_registry: str | Path,
    registers: str | Path,
    report: str | Path,
    **outputs: str | Path,
) -> dict[str, Any]:
    """Validate each configured clinical extract against the validated population and MS registry; write
    `validated/<extract>.parquet`, its rejects (`<extract>_rejects` in `outputs`) and the report part.

    `outputs` holds `<extract>` and `<extract>_rejects` for exactly the configured extracts."""
    extracts = configured_clinical_extracts(config)
    expected = {key for name in extracts for key in (name, f"{name}_rejects")}
    if set(outputs) != expected:
        raise ValueError(
            f"validate_clinical: the configured clinical extracts {extracts} need the outputs {sorted(expected)}, "
            f"got {sorted(outputs)}"
        )
    con = ordered_connection(config)
    load_clean_population(con, population)
    _load_ms_patients(con, ms_registry)
    person_id_type = json.loads(Path(registers).read_text())["person_id_type"]
    label = f"the validated population ({population})"
    result: dict[str, Any] = {"extracts": {}}
    for name in extracts:
        result["extracts"][name] = validate_clinical_extract(
            con, config, name, person_id_type, label,
            clean_path=Path(outputs[name]), rejects_path=Path(outputs[f"{name}_rejects"]),
        )  # fmt: skip
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(result, indent=2))
    return result
