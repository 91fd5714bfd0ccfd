"""Validate the registry extracts against the data dictionary and write clean Parquet.

Each extract is read through DuckDB (streaming, never wholly in Python memory), its columns renamed
to the canonical names of the data dictionary, typed, and checked row by row. Every row ends up in
exactly one place: the clean output or the rejects file with a reason. Problems with a whole
extract (missing file or column, wrong encoding, nothing parseable, no persons shared with the
population) stop the run with one message naming the file, the column and the line where known;
values are shown only where they cannot be identifiers, and identifiers only by their shape.

Reading an extract (source files, CSV dialect, column map, typed columns, column checks) is
`repurpose.registry.reader`; this module owns the checks across columns and extracts, the clean and rejects
files, the stage functions and the validation report.

May import `repurpose.duck`, `repurpose.layout`, `repurpose.stages`, `repurpose.registry.dictionary`,
`repurpose.registry.reader`, `repurpose.registry.labelled`, `repurpose.registry.clinical_ingest` and
`repurpose.registry.outcome`.

Outputs (see `docs/schemas.md`):
  validated/population.parquet, validated/ms_registry.parquet, validated/diagnoses.parquet (when configured),
  validated/prescriptions/<part>.parquet (one per source file, e.g. per delivery year; with dispense_year),
  validated/<clinical extract>.parquet (when configured; repurpose.registry.clinical_ingest),
  validation/rejects/<extract>.parquet and rejects/prescriptions/<part>.parquet,
  validation/parts/*.json (per-job entries), validation/report.json, validation/report.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import sql_literal
from repurpose.layout import results_layout
from repurpose.registry.clinical_ingest import (
    clinical_outputs,
    configured_clinical_extracts,
    validate_clinical,
)
from repurpose.registry.dictionary import load_extract_spec
from repurpose.registry.labelled import (
    DISPENSINGS_COMPRESSION,
    birth_floor,
    check_shared_persons,
    load_clean_population,
    ordered_connection,
    write_extract,
)
from repurpose.registry.outcome import ICD10_CODE_REGEX, normalised_icd10_sql
from repurpose.registry.reader import (
    SQL_TYPES,
    Check,
    ExtractError,
    ExtractReader,
    csv_problem,
    prescription_parts,
)
from repurpose.stages import stage

log = logging.getLogger(__name__)


def extract_checks(
    extract: str, study: dict[str, Any], validation: dict[str, Any]
) -> tuple[list[Check], str]:
    """Cross-column and cross-extract rules of an extract, with the joins they need (to clean population `p`)."""
    end = sql_literal(study["end"])
    if extract == "population":
        return [
            Check("duplicate_person_id", "count(*) OVER (PARTITION BY t.person_id) > 1"),
            Check("birth_year_after_study_end", f"t.birth_year > year(DATE {end})"),
            Check("death_before_birth", f"t.death_date < {birth_floor('t')}"),
            Check("emigration_before_birth", f"t.emigration_date < {birth_floor('t')}"),
        ], ""
    join = "LEFT JOIN clean_population p ON t.person_id = p.person_id"
    if extract == "prescriptions":
        start = sql_literal(validation["dispensings_from"])
        return [
            Check("unknown_person", "p.person_id IS NULL"),
            Check(
                "dispense_date_out_of_window",
                f"t.dispense_date < DATE {start} OR t.dispense_date > DATE {end}",
            ),
            Check("dispensed_before_birth", f"t.dispense_date < {birth_floor('p')}"),
            Check("dispensed_after_death", "t.dispense_date > p.death_date"),
        ], join
    # Several rows of one patient are kept: the cohort resolves them (repurpose.registry.outcome), so a
    # duplicated patient stays a case; they are counted in the report (`registry_duplicates`).
    return [
        Check("unknown_person", "p.person_id IS NULL"),
        Check("diagnosis_before_birth", f"t.diagnosis_date < {birth_floor('p')}"),
        Check("onset_before_birth", f"t.onset_date < {birth_floor('p')}"),
        Check("onset_after_diagnosis", "t.onset_date > t.diagnosis_date"),
        Check("onset_after_death", "t.onset_date > p.death_date"),
        Check("diagnosis_after_death", "t.diagnosis_date > p.death_date"),
    ], join


def write_unusable_registry_persons(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Write (sorted `person_id`) the persons of the clean population whose every MS registry row was rejected:
    patients whose outcome cannot be dated. The cohort leaves them out (counted in its flow), so an MS patient
    with unusable rows is never followed as MS-free. Returns their number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"COPY (SELECT t.person_id FROM labelled_ms_registry t SEMI JOIN clean_population p ON t.person_id = p.person_id "
        "GROUP BY t.person_id HAVING bool_and(t.reject_reason IS NOT NULL) ORDER BY t.person_id) "
        f"TO {sql_literal(str(path))} (FORMAT parquet)"
    )
    return int(con.execute(f"SELECT count(*) FROM read_parquet({sql_literal(str(path))})").fetchone()[0])


@contextlib.contextmanager
def _reading(reader: ExtractReader) -> Iterator[None]:
    """Turn a DuckDB error while reading an extract's source into an ExtractError naming its file (and, for a
    CSV file, the line and what is wrong with it, never its content)."""
    try:
        yield
    except duckdb.Error as error:
        raise ExtractError(
            f"{reader.extract}: cannot read {reader.file_label}"
            f"{f' with encoding {reader.sources.encoding}' if reader.sources.encoding else ''}: "
            f"{csv_problem(error) if reader.sources.kind == 'csv' else str(error).splitlines()[0]}"
        ) from error


def _validate_one(
    con: duckdb.DuckDBPyConnection,
    reader: ExtractReader,
    config: dict[str, Any],
    person_id_type: str,
    clean_path: Path,
    rejects_path: Path,
    population_label: str = "",
) -> dict[str, Any]:
    """Label every row of one extract (or part) with its reject reason and write clean rows and rejects."""
    name = reader.extract
    checks, joins = extract_checks(name, config["study"], config["validation"])
    # The registers and CSV files are labelled once into a temporary table (spilled to resources.tmpdir beyond
    # resources.memory_gb) and written from it. A Parquet prescription part is labelled on the fly (a view):
    # its clean rows stream from the source to the Parquet file in one pass, and its rejected rows (a few) are
    # found by a second, filtered pass, skipped when the clean rows are all the source's rows (counted from the
    # Parquet footers); materialising a national yearly file first cost more than labelling and writing it.
    streamed = name == "prescriptions" and reader.sources.kind == "parquet"
    labelled = reader.labelled_sql(person_id_type, checks, joins)
    started = time.perf_counter()
    with _reading(reader):
        con.execute(f"CREATE OR REPLACE TEMP {'VIEW' if streamed else 'TABLE'} labelled_{name} AS {labelled}")
    with _reading(reader) if streamed else contextlib.nullcontext():
        if name != "population":
            check_shared_persons(con, reader, population_label)
        log.info("validating %s from %s", name, reader.file_label)
        clean_path.parent.mkdir(parents=True, exist_ok=True)
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
        entry = write_extract(
            con, reader, clean_path, rejects_path, config.get("resources", {}).get("progress_seconds", 30),
            rows_in_source=reader.parquet_rows() if streamed else None,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    log.info(
        "%s %s: %d rows read, %d kept, %d rejected in %.1f s (%.0f rows/s) %s",
        name,
        reader.file_label,
        entry["rows_read"],
        entry["rows_kept"],
        entry["rows_rejected"],
        seconds,
        entry["rows_read"] / max(seconds, 1e-9),
        entry["rejected_by_reason"],
    )
    return entry


@stage(reads=("inputs.population", "inputs.ms_registry", "inputs.diagnoses", "study", "validation"))
def validate_registers(
    config: dict[str, Any],
    *,
    population: str | Path,
    ms_registry: str | Path,
    population_rejects: str | Path,
    ms_registry_rejects: str | Path,
    ms_registry_unusable: str | Path,
    report: str | Path,
    diagnoses: str | Path | None = None,
    diagnoses_rejects: str | Path | None = None,
) -> dict[str, Any]:
    """Validate the population and MS registry extracts (and the diagnosis extract when configured); write them,
    their rejects and `parts/registers.json`.

    The registers come first: every prescription part is checked against the clean population. An MS
    registry without a usable row stops the run (every person would be followed as MS-free).
    """
    population_path, registers_path = Path(population), Path(report)
    con = ordered_connection(config)
    inputs = config["inputs"]
    population_reader = ExtractReader(con, "population", inputs["population"])
    registry_reader = ExtractReader(con, "ms_registry", inputs["ms_registry"])
    for reader in (population_reader, registry_reader):
        reader.fail_if_nothing_parses()
    person_id_type = population_reader.person_id_type()
    log.info("person_id is stored as %s (the population's identifier column)", person_id_type)
    result: dict[str, Any] = {"person_id_type": person_id_type, "extracts": {}}
    entry = _validate_one(con, population_reader, config, person_id_type, population_path, Path(population_rejects))
    if entry["rows_kept"] == 0:
        raise ExtractError(f"population: no valid row in {population_reader.file_label}; see {population_rejects}")
    result["extracts"]["population"] = entry
    load_clean_population(con, population_path)
    entry = _validate_one(
        con, registry_reader, config, person_id_type, Path(ms_registry), Path(ms_registry_rejects),
        population_reader.file_label,
    )
    if entry["rows_kept"] == 0:
        raise ExtractError(
            f"ms_registry: no usable row in {registry_reader.file_label} ({entry['rows_read']} rows read, rejected "
            f"by reason {entry['rejected_by_reason']}); without MS patients every person would be followed "
            f"as MS-free. See {ms_registry_rejects}"
        )
    entry["patients_only_rejected"] = write_unusable_registry_persons(con, Path(ms_registry_unusable))
    if entry["patients_only_rejected"]:
        log.warning(
            "ms_registry: %d persons of the population have only rejected registry rows: the cohort leaves them "
            "out (their outcome cannot be dated), counted in its flow",
            entry["patients_only_rejected"],
        )
    entry["registry_duplicates"] = registry_duplicates(con, Path(ms_registry))
    result["extracts"]["ms_registry"] = entry
    if inputs.get("diagnoses"):
        if diagnoses is None or diagnoses_rejects is None:
            raise ValueError("inputs.diagnoses is set: validate_registers needs the diagnoses and diagnoses_rejects paths")
        result["extracts"]["diagnoses"] = validate_diagnoses(
            con, config, person_id_type, population_reader.file_label,
            clean_path=Path(diagnoses), rejects_path=Path(diagnoses_rejects),
        )  # fmt: skip
    registers_path.parent.mkdir(parents=True, exist_ok=True)
    registers_path.write_text(json.dumps(result, indent=2))
    return result


def _write_empty_part(
    con: duckdb.DuckDBPyConnection, part_path: Path, clean_path: Path, rejects_path: Path, person_id_type: str
) -> dict[str, Any]:
    """Clean and rejects files with no row (the columns and types of a non-empty part) for a 0-byte file,
    and its report entry, so an empty yearly delivery is counted, not a stop."""
    spec = load_extract_spec("prescriptions")
    typed = ", ".join(
        f"CAST(NULL AS {person_id_type if c.type == 'id' else SQL_TYPES[c.type]}) AS {c.name}" for c in spec.columns
    )
    raw = ", ".join(f"CAST(NULL AS VARCHAR) AS {c.name}" for c in spec.columns)
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"COPY (SELECT {typed}, CAST(NULL AS BIGINT) AS dispense_year LIMIT 0) "
        f"TO {sql_literal(str(clean_path))} (FORMAT parquet, {DISPENSINGS_COMPRESSION})"
    )
    con.execute(f"COPY (SELECT CAST(NULL AS VARCHAR) AS reject_reason, {raw} LIMIT 0) TO {sql_literal(str(rejects_path))} (FORMAT parquet)")
    return {
        "files": [{"name": part_path.name, "bytes": 0}],
        "format": "parquet" if part_path.suffix.lower() == ".parquet" else "csv",
        "empty": True,
        "column_map": {},
        "missing_optional_columns": [],
        "ignored_source_columns": [],
        "rows_read": 0,
        "rows_kept": 0,
        "rows_rejected": 0,
        "rejected_by_reason": {},
    }


def registry_duplicates(con: duckdb.DuckDBPyConnection, clean_path: Path) -> dict[str, int]:
    """Patients with several rows in the validated MS registry, and their rows (resolved by the cohort)."""
    persons, rows = con.execute(
        f"SELECT count(*), coalesce(sum(n), 0) FROM (SELECT count(*) AS n FROM read_parquet({sql_literal(str(clean_path))}) "
        "GROUP BY person_id HAVING count(*) > 1)"
    ).fetchone()
    return {"persons": int(persons), "rows": int(rows)}


def diagnosis_checks(study: dict[str, Any]) -> tuple[list[Check], str]:
    """Row rules of the diagnosis extract beyond its columns' own, with the join to the clean population `p`."""
    end = sql_literal(study["end"])
    return [
        Check("unknown_person", "p.person_id IS NULL"),
        Check(
            "diagnosis_date_out_of_range",
            f"t.diagnosis_date < {birth_floor('p')} OR t.diagnosis_date > DATE {end}",
        ),
        Check(
            "malformed_icd10_code",
            f"t.icd10_code IS NOT NULL AND NOT regexp_full_match({normalised_icd10_sql('t.icd10_code')}, "
            f"{sql_literal(ICD10_CODE_REGEX)})",
        ),
    ], "LEFT JOIN clean_population p ON t.person_id = p.person_id"


def validate_diagnoses(
    con: duckdb.DuckDBPyConnection,
    config: dict[str, Any],
    person_id_type: str,
    population_label: str,
    *,
    clean_path: Path,
    rejects_path: Path,
) -> dict[str, Any]:
    """Validate the optional diagnosis extract (`inputs.diagnoses`) against the clean population (loaded in `con`).

    Rejection reasons: missing or unknown person, missing or unparseable date, date before birth or after the
    study end (`diagnosis_date_out_of_range`), missing or malformed ICD-10 code. Codes are stored normalised
    (upper case, no dots). Writes the clean rows to `clean_path` and the rejected rows to `rejects_path`.
    """
    reader = ExtractReader(con, "diagnoses", config["inputs"]["diagnoses"])
    reader.fail_if_nothing_parses()
    checks, joins = diagnosis_checks(config["study"])
    labelled = reader.labelled_sql(person_id_type, checks, joins)
    normalised = f"SELECT * REPLACE ({normalised_icd10_sql('icd10_code')} AS icd10_code) FROM ({labelled})"
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE labelled_diagnoses AS {normalised}")
    except duckdb.Error as error:
        raise ExtractError(f"diagnoses: cannot read {reader.file_label}: {str(error).splitlines()[0]}") from error
    check_shared_persons(con, reader, population_label)
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    entry = write_extract(con, reader, clean_path, rejects_path)
    log.info(
        "diagnoses %s: %d rows read, %d kept, %d rejected %s",
        reader.file_label, entry["rows_read"], entry["rows_kept"], entry["rows_rejected"], entry["rejected_by_reason"],
    )  # fmt: skip
    return entry


@stage(reads=("inputs.prescriptions", "study", "validation"), drop=("inputs.prescriptions.path",))
def validate_prescription_part(
    config: dict[str, Any],
    *,
    part: str | Path,
    population: str | Path,
    registers: str | Path,
    clean: str | Path,
    rejects: str | Path,
    report: str | Path,
) -> dict[str, Any]:
    """Validate one file of the prescription extract against the clean population; write its report entry."""
    con = ordered_connection(config)
    load_clean_population(con, population)
    part_path = Path(part)
    person_id_type = json.loads(Path(registers).read_text())["person_id_type"]
    if part_path.stat().st_size == 0:
        log.warning("prescriptions: %s is empty (0 bytes): counted as an empty part", part_path)
        entry = _write_empty_part(con, part_path, Path(clean), Path(rejects), person_id_type)
    else:
        prescriptions = {**config["inputs"]["prescriptions"], "path": str(part_path)}
        reader = ExtractReader(con, "prescriptions", prescriptions, [part_path])
        reader.fail_if_nothing_parses()
        population_label = f"the validated population ({population})"
        entry = _validate_one(con, reader, config, person_id_type, Path(clean), Path(rejects), population_label)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(json.dumps(entry, indent=2))
    return entry


@stage(reads=())
def merge_validation_reports(
    config: dict[str, Any],
    *,
    registers: str | Path,
    parts: list[str] | list[Path],
    report: str | Path,
    summary: str | Path,
    clinical: str | Path | None = None,
) -> dict[str, Any]:
    """One validation report: the registers' entries, the prescription parts summed (with a per-part list) and
    the clinical extracts' entries when any is configured (`clinical`, the report part of validate_clinical)."""
    report_path, summary_path = report, summary
    report = json.loads(Path(registers).read_text())
    parts = [json.loads(Path(p).read_text()) for p in parts]
    by_reason: dict[str, int] = {}
    for part in parts:
        for reason, n in part["rejected_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    non_empty = [part for part in parts if not part.get("empty")]
    first = non_empty[0] if non_empty else {"format": None, "column_map": {}, "missing_optional_columns": [], "ignored_source_columns": []}
    report["extracts"]["prescriptions"] = {
        "files": [f for part in parts for f in part["files"]],
        "format": first["format"],
        "column_map": first["column_map"],
        "missing_optional_columns": first["missing_optional_columns"],
        "ignored_source_columns": sorted({c for part in parts for c in part["ignored_source_columns"]}),
        "empty_parts": [f["name"] for part in parts if part.get("empty") for f in part["files"]],
        "rows_read": sum(part["rows_read"] for part in parts),
        "rows_kept": sum(part["rows_kept"] for part in parts),
        "rows_rejected": sum(part["rows_rejected"] for part in parts),
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))),
        "parts": [
            {
                "files": [f["name"] for f in part["files"]],
                **{k: part[k] for k in ("rows_read", "rows_kept", "rows_rejected")},
            }
            for part in parts
        ],
    }
    if clinical is not None:
        report["extracts"].update(json.loads(Path(clinical).read_text())["extracts"])
    Path(report_path).write_text(json.dumps(report, indent=2))
    Path(summary_path).write_text(render_report_markdown(report))
    return report


def validate_extracts(config: dict[str, Any], *, results_dir: str | Path) -> dict[str, Any]:
    """Validate the extracts of `config['inputs']` in one call, into `results_dir` laid out as the DAG's
    (the DAG runs the same steps as jobs): registers, then each prescription part, then the clinical extracts
    when any is configured, then the merged report."""
    paths = results_layout(results_dir)
    for stale in (Path(paths.validated_prescriptions("x")).parent, Path(paths.prescription_rejects("x")).parent):
        if stale.exists():
            shutil.rmtree(stale)
    validate_registers(
        config,
        population=paths.validated("population"),
        ms_registry=paths.validated("ms_registry"),
        population_rejects=paths.rejects("population"),
        ms_registry_rejects=paths.rejects("ms_registry"),
        ms_registry_unusable=paths.unusable_registry_persons(),
        report=paths.registers_report(),
        **({"diagnoses": paths.validated("diagnoses"), "diagnoses_rejects": paths.rejects("diagnoses")}
           if config["inputs"].get("diagnoses") else {}),
    )  # fmt: skip
    part_reports = []
    for name, file in prescription_parts(config["inputs"]["prescriptions"]).items():
        validate_prescription_part(
            config,
            part=file,
            population=paths.validated("population"),
            registers=paths.registers_report(),
            clean=paths.validated_prescriptions(name),
            rejects=paths.prescription_rejects(name),
            report=paths.prescriptions_report(name),
        )
        part_reports.append(paths.prescriptions_report(name))
    clinical = configured_clinical_extracts(config)
    if clinical:
        validate_clinical(
            config,
            population=paths.validated("population"),
            ms_registry=paths.validated("ms_registry"),
            registers=paths.registers_report(),
            report=paths.clinical_report(),
            **clinical_outputs(paths, clinical),
        )
    return merge_validation_reports(
        config,
        registers=paths.registers_report(),
        parts=part_reports,
        report=paths.validation_report(),
        summary=paths.validation_summary(),
        clinical=paths.clinical_report() if clinical else None,
    )


def render_report_markdown(report: dict[str, Any]) -> str:
    """A readable summary of the validation report."""
    lines = ["# Validation report", "", f"person_id stored as {report['person_id_type']} (as delivered).", ""]
    lines += ["| extract | rows read | kept | rejected |", "|---|---:|---:|---:|"]
    for name, entry in report["extracts"].items():
        lines.append(
            f"| {name} | {entry['rows_read']:,} | {entry['rows_kept']:,} | {entry['rows_rejected']:,} |"
        )
    for name, entry in report["extracts"].items():
        lines += [
            "",
            f"## {name}",
            "",
            f"Files: {', '.join(f['name'] for f in entry['files'][:5])}"
            + (" …" if len(entry["files"]) > 5 else ""),
        ]
        if entry["ignored_source_columns"]:
            lines.append(f"Source columns not used: {', '.join(entry['ignored_source_columns'])}")
        if entry.get("patients_only_rejected"):
            lines.append(
                f"Persons of the population whose every registry row was rejected: {entry['patients_only_rejected']:,} "
                "(MS patients whose outcome cannot be dated: left out of the cohort, counted in its flow)"
            )
        if entry.get("empty_parts"):
            lines.append(f"Empty parts: {', '.join(entry['empty_parts'])}")
        if entry["missing_optional_columns"]:
            lines.append(f"Optional columns absent: {', '.join(entry['missing_optional_columns'])}")
        if entry["rejected_by_reason"]:
            lines += ["", "| reason | rows |", "|---|---:|"]
            lines += [f"| {reason} | {n:,} |" for reason, n in entry["rejected_by_reason"].items()]
    return "\n".join(lines) + "\n"
