"""Validate the registry extracts against the data dictionary and write clean Parquet.

Each extract is read through DuckDB (streaming, never wholly in Python memory), its columns renamed
to the canonical names of the data dictionary, typed, and checked row by row. Every row ends up in
exactly one place: the clean output or the rejects file with a reason. Problems with a whole
extract (missing file or column, wrong encoding, nothing parseable, no persons shared with the
population) stop the run with one message naming the file, the column and example values.

Outputs (see `docs/schemas.md`):
  validated/population.parquet, validated/ms_registry.parquet, validated/diagnoses.parquet (when configured),
  validated/prescriptions/<part>.parquet (one per source file, e.g. per delivery year; with dispense_year),
  validation/rejects/<extract>.parquet and rejects/prescriptions/<part>.parquet,
  validation/parts/*.json (per-job entries), validation/report.json, validation/report.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import connect, execute_with_progress, sql_literal
from repurpose.registry.dictionary import ColumnSpec, ExtractSpec, load_extract_spec
from repurpose.registry.outcome import ICD10_CODE_REGEX, normalised_icd10_sql

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".parquet", ".csv", ".txt", ".tsv")
ATC_LEVEL5_REGEX = "^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"


class ExtractError(ValueError):
    """An extract cannot be used as a whole; the message names file, column and example values."""


@dataclass(frozen=True)
class SourceFiles:
    """The files of one extract and how to read them."""

    extract: str
    files: tuple[Path, ...]
    kind: str  # "parquet" or "csv"
    sep: str | None
    encoding: str | None


def list_source_files(extract: str, path: str | Path) -> list[Path]:
    """The data files of an extract: the file itself, or every data file below a directory."""
    path = Path(path)
    if not path.exists():
        raise ExtractError(
            f"{extract}: input {path} does not exist (set inputs.{extract}.path in the config)"
        )
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES)
    if not files:
        raise ExtractError(
            f"{extract}: directory {path} holds no data files (expected *.parquet or *.csv parts)"
        )
    return files


def _sniff_separator(first_line: bytes) -> str:
    counts = {sep: first_line.count(sep.encode()) for sep in (";", ",", "\t", "|")}
    return max(counts, key=lambda sep: counts[sep])


def _file_kind(extract: str, path: str | Path, files: list[Path]) -> str:
    """"parquet" or "csv"; raise ExtractError when an extract mixes both."""
    kinds = {"parquet" if f.suffix.lower() == ".parquet" else "csv" for f in files}
    if len(kinds) > 1:
        raise ExtractError(
            f"{extract}: {path} mixes Parquet and CSV files "
            f"(e.g. {files[0].name}, {files[-1].name}); deliver one format per extract"
        )
    return kinds.pop()


def prescription_parts(input_config: dict[str, Any]) -> dict[str, Path]:
    """Part name -> file of the prescription extract. Each part (typically one yearly file) is validated
    by its own job, so a new yearly delivery is validated alone; names are the file names without suffix."""
    files = list_source_files("prescriptions", input_config["path"])
    _file_kind("prescriptions", input_config["path"], files)
    parts: dict[str, Path] = {}
    for file in files:
        name = file.name[: -len(file.suffix)] if file.suffix else file.name
        if name in parts:
            raise ExtractError(
                f"prescriptions: {parts[name]} and {file} have the same part name {name!r}; "
                "give the files of the extract distinct names"
            )
        parts[name] = file
    return parts


def describe_sources(
    extract: str, input_config: dict[str, Any], files: list[Path] | None = None
) -> SourceFiles:
    """Find the files of an extract (or take `files`) and decide the CSV separator; raise ExtractError if mixed."""
    if files is None:
        files = list_source_files(extract, input_config["path"])
    kind = _file_kind(extract, input_config["path"], files)
    sep = input_config.get("sep")
    if kind == "csv" and sep is None:
        with open(files[0], "rb") as handle:
            sep = _sniff_separator(handle.readline())
    return SourceFiles(extract, tuple(files), kind, sep, input_config.get("encoding"))


def _read_relation(con: duckdb.DuckDBPyConnection, sources: SourceFiles) -> str:
    """SQL of a relation reading all source files (CSV columns as text, Parquet with its own types)."""
    file_list = "[" + ", ".join(sql_literal(str(f)) for f in sources.files) + "]"
    if sources.kind == "parquet":
        return f"read_parquet({file_list}, union_by_name=true)"
    encodings = [sources.encoding] if sources.encoding else ["utf-8", "latin-1"]
    last_error: Exception | None = None
    for encoding in encodings:
        relation = (
            f"read_csv({file_list}, delim={sql_literal(sources.sep or ',')}, header=true, all_varchar=true, "
            f"encoding={sql_literal(encoding)}, union_by_name=true)"
        )
        try:
            if sources.encoding:
                # A declared encoding is trusted: the single labelling scan reports a file it cannot decode.
                con.execute(f"SELECT * FROM {relation} LIMIT 1").fetchall()
            else:
                # Guessing needs a full scan: encoding errors can sit anywhere, not only in the sniffed sample.
                con.execute(f"SELECT count(*) FROM {relation}").fetchone()
            return relation
        except duckdb.Error as error:
            last_error = error
    names = ", ".join(f.name for f in sources.files[:3])
    hint = (
        "set inputs.<extract>.encoding to latin-1"
        if sources.encoding == "utf-8"
        else "check the file is a delimited text file"
    )
    raise ExtractError(
        f"{sources.extract}: cannot read {names} as CSV with encoding {'/'.join(encodings)} "
        f"and separator {sources.sep!r} ({hint}): {str(last_error).splitlines()[0]}"
    )


def _mask(value: Any) -> str:
    """Show an identifier's shape without revealing it (never log person identifiers)."""
    text = str(value)
    return f"{text[:2]}…(length {len(text)})" if len(text) > 2 else "…"


def _examples(con: duckdb.DuckDBPyConnection, sql: str, column_type: str, n: int = 3) -> str:
    rows = [r[0] for r in con.execute(f"{sql} LIMIT {n}").fetchall()]
    shown = [_mask(v) if column_type == "id" else repr(v) for v in rows]
    return ", ".join(shown) if shown else "(no values)"


def _source_columns(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {row[0]: row[1] for row in described}


def map_columns(
    spec: ExtractSpec, source_columns: dict[str, str], column_map: dict[str, str], files: tuple[Path, ...]
) -> dict[str, str | None]:
    """Canonical name -> source name; raise ExtractError for a missing required column."""
    unknown = sorted(set(column_map) - {c.name for c in spec.columns})
    if unknown:
        raise ExtractError(
            f"{spec.extract}: the column map names {unknown}, which are not columns of the "
            f"{spec.extract} extract; canonical columns are {[c.name for c in spec.columns]}"
        )
    mapping: dict[str, str | None] = {}
    for column in spec.columns:
        source = column_map.get(column.name, column.name)
        if source in source_columns:
            mapping[column.name] = source
        elif column.required:
            raise ExtractError(
                f"{spec.extract}: required column `{column.name}` (source name `{source}`) is missing "
                f"from {files[0]}; the file has columns {sorted(source_columns)}. Map it with "
                f"inputs.{spec.extract}.columns.{column.name}: <source name>"
            )
        else:
            mapping[column.name] = None
    return mapping


def _as_text(expr: str) -> str:
    return f"NULLIF(trim(CAST({expr} AS VARCHAR)), '')"


def _typed_expression(column: ColumnSpec, raw: str, raw_type: str | None, date_format: str) -> str:
    """SQL turning a raw source column into its canonical type (NULL when unparseable)."""
    text = _as_text(raw)
    if column.type == "date":
        if raw_type == "DATE":
            return raw
        if raw_type and raw_type.startswith("TIMESTAMP"):
            return f"CAST({raw} AS DATE)"
        return f"CAST(TRY_STRPTIME({text}, {sql_literal(date_format)}) AS DATE)"
    if column.type == "int":
        return f"TRY_CAST(TRY_CAST({text} AS DOUBLE) AS INTEGER)"
    if column.type == "float":
        return f"TRY_CAST(replace({text}, ',', '.') AS DOUBLE)"
    if column.type == "sex":
        cases = " ".join(f"WHEN {sql_literal(k)} THEN {sql_literal(v)}" for k, v in column.codes.items())
        return f"(CASE regexp_replace({text}, '\\.0$', '') {cases} ELSE NULL END)"
    if column.type in ("category", "atc5"):
        return f"upper({text})"
    return text  # id (typed later, consistently across extracts) and plain strings


@dataclass(frozen=True)
class Check:
    """One row-level rejection rule: `reason` applies where `condition` (SQL on the labelled row) is true."""

    reason: str
    condition: str


def column_checks(column: ColumnSpec) -> list[Check]:
    """Rejection rules that follow from a column's dictionary entry, on typed `t.<name>` and text `t.raw_<name>`."""
    name, typed, raw_text = column.name, f"t.{column.name}", f"t.raw_{column.name}"
    checks: list[Check] = []
    if column.required:
        checks.append(Check(f"missing_{name}", f"{raw_text} IS NULL"))
    if column.type in ("date", "int", "float", "sex", "id"):
        checks.append(Check(f"unparseable_{name}", f"{raw_text} IS NOT NULL AND {typed} IS NULL"))
    if column.type == "category" and column.allowed:
        allowed = ", ".join(sql_literal(a) for a in column.allowed)
        checks.append(Check(f"invalid_{name}", f"{typed} IS NOT NULL AND {typed} NOT IN ({allowed})"))
    if column.type == "atc5":
        checks.append(
            Check(
                f"malformed_{name}",
                f"{typed} IS NOT NULL AND NOT regexp_full_match({typed}, '{ATC_LEVEL5_REGEX}')",
            )
        )
    if column.min is not None and column.type in ("int", "float"):
        reason = f"negative_{name}" if column.min == 0 else f"{name}_out_of_range"
        checks.append(Check(reason, f"{typed} < {column.min}"))
    if column.max is not None and column.type in ("int", "float"):
        checks.append(Check(f"{name}_out_of_range", f"{typed} > {column.max}"))
    if column.step is not None:
        checks.append(Check(f"{name}_not_in_steps_of_{column.step:g}", f"{typed} % {column.step} <> 0"))
    return checks


class ExtractReader:
    """Reads one extract through the data dictionary: source files, column map and typed columns."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        extract: str,
        input_config: dict[str, Any],
        files: list[Path] | None = None,
    ):
        self.con = con
        self.extract = extract
        self.spec = load_extract_spec(extract)
        self.date_format = input_config.get("date_format", "%Y-%m-%d")
        self.sources = describe_sources(extract, input_config, files)
        self.relation = _read_relation(con, self.sources)
        self.source_types = _source_columns(con, self.relation)
        self.mapping = map_columns(
            self.spec, self.source_types, input_config.get("columns", {}), self.sources.files
        )
        self.view = f"raw_{extract}"
        con.execute(f"CREATE OR REPLACE TEMP VIEW {self.view} AS SELECT * FROM {self.relation}")

    @property
    def file_label(self) -> str:
        files = self.sources.files
        return str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"

    def raw(self, name: str) -> str:
        source = self.mapping[name]
        return "CAST(NULL AS VARCHAR)" if source is None else f'"{source}"'

    def typed(self, name: str) -> str:
        source = self.mapping[name]
        raw_type = None if source is None else self.source_types[source]
        return _typed_expression(self.spec.column(name), self.raw(name), raw_type, self.date_format)

    def fail_if_nothing_parses(self, sample_rows: int = 100_000) -> None:
        """Stop when a present column parses for no row of a leading sample: a wrong map or format, not bad rows.

        One query over the first `sample_rows` rows checks every typed column (a full scan per column would
        cost minutes on a national prescription extract); bad rows further on are rejected row by row.
        """
        columns = [c for c in self.spec.columns if self.mapping[c.name] is not None and c.type not in ("id", "string")]
        if not columns:
            return
        counts = ", ".join(
            f"count(*) FILTER (WHERE {_as_text(self.raw(c.name))} IS NOT NULL), count({self.typed(c.name)})" for c in columns
        )
        sample = f"(SELECT * FROM {self.view} LIMIT {sample_rows})"
        row = self.con.execute(f"SELECT {counts} FROM {sample}").fetchone()
        for i, column in enumerate(columns):
            n_present, n_parsed = row[2 * i], row[2 * i + 1]
            if n_present > 0 and n_parsed == 0:
                text = _as_text(self.raw(column.name))
                examples = _examples(self.con, f"SELECT DISTINCT {text} FROM {sample} WHERE {text} IS NOT NULL", column.type)
                fmt = f" with date_format {self.date_format!r}" if column.type == "date" else ""
                raise ExtractError(
                    f"{self.extract}: no value of column `{column.name}` (source `{self.mapping[column.name]}`) "
                    f"in {self.file_label} can be read as {column.type}{fmt}; examples: {examples}"
                )

    def person_id_is_integer(self) -> bool:
        text = _as_text(self.raw("person_id"))
        return self.con.execute(
            f"SELECT count(*) = 0 FROM {self.view} WHERE {text} IS NOT NULL AND TRY_CAST({text} AS BIGINT) IS NULL"
        ).fetchone()[0]

    def labelled_sql(self, person_id_type: str, extra_checks: list[Check], joins: str = "") -> str:
        """SELECT of every row: typed canonical columns, trimmed raw text (`raw_*`) and `reject_reason`."""
        typed_cols = [f"TRY_CAST({_as_text(self.raw('person_id'))} AS {person_id_type}) AS person_id"]
        typed_cols += [
            f"{self.typed(c.name)} AS {c.name}" for c in self.spec.columns if c.name != "person_id"
        ]
        raw_cols = [f"{_as_text(self.raw(c.name))} AS raw_{c.name}" for c in self.spec.columns]
        checks = [check for c in self.spec.columns if self.mapping[c.name] for check in column_checks(c)]
        checks += extra_checks
        reason = (
            "CASE " + " ".join(f"WHEN {c.condition} THEN {sql_literal(c.reason)}" for c in checks) + " END"
        )
        inner = f"SELECT {', '.join(typed_cols + raw_cols)} FROM {self.view}"
        return f"SELECT t.*, {reason} AS reject_reason FROM ({inner}) t {joins}"


def _birth_floor(alias: str) -> str:
    """Earliest possible birth date of a population row (SQL)."""
    return f"make_date({alias}.birth_year, coalesce({alias}.birth_month, 1), 1)"


def extract_checks(
    extract: str, study: dict[str, Any], validation: dict[str, Any]
) -> tuple[list[Check], str]:
    """Cross-column and cross-extract rules of an extract, with the joins they need (to clean population `p`)."""
    end = sql_literal(study["end"])
    if extract == "population":
        return [
            Check("duplicate_person_id", "count(*) OVER (PARTITION BY t.person_id) > 1"),
            Check("birth_year_after_study_end", f"t.birth_year > year(DATE {end})"),
            Check("death_before_birth", f"t.death_date < {_birth_floor('t')}"),
            Check("emigration_before_birth", f"t.emigration_date < {_birth_floor('t')}"),
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
            Check("dispensed_before_birth", f"t.dispense_date < {_birth_floor('p')}"),
            Check("dispensed_after_death", "t.dispense_date > p.death_date"),
        ], join
    # Several rows of one patient are kept: the cohort resolves them (repurpose.registry.outcome), so a
    # duplicated patient stays a case; they are counted in the report (`registry_duplicates`).
    return [
        Check("unknown_person", "p.person_id IS NULL"),
        Check("diagnosis_before_birth", f"t.diagnosis_date < {_birth_floor('p')}"),
        Check("onset_before_birth", f"t.onset_date < {_birth_floor('p')}"),
        Check("onset_after_diagnosis", "t.onset_date > t.diagnosis_date"),
    ], join


def _write_extract(
    con: duckdb.DuckDBPyConnection,
    reader: ExtractReader,
    clean_path: Path,
    rejects_path: Path,
    progress_seconds: float = 30.0,
) -> dict[str, Any]:
    """Write the clean and rejected rows of the labelled view of one extract; return its report entry."""
    canonical = ", ".join(c.name for c in reader.spec.columns)
    labelled = f"labelled_{reader.extract}"
    if reader.extract == "prescriptions":
        n_kept = execute_with_progress(
            con,
            f"COPY (SELECT {canonical}, year(dispense_date) AS dispense_year FROM {labelled} WHERE reject_reason IS NULL) "
            f"TO {sql_literal(str(clean_path))} (FORMAT parquet, COMPRESSION zstd)",
            f"validating prescriptions {reader.file_label}",
            interval_seconds=progress_seconds,
        )[0][0]
    else:
        n_kept = con.execute(
            f"COPY (SELECT {canonical} FROM {labelled} WHERE reject_reason IS NULL ORDER BY person_id) "
            f"TO {sql_literal(str(clean_path))} (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()[0]
    raw_columns = ", ".join(f"raw_{c.name} AS {c.name}" for c in reader.spec.columns)
    con.execute(
        f"COPY (SELECT reject_reason, {raw_columns} FROM {labelled} WHERE reject_reason IS NOT NULL) "
        f"TO {sql_literal(str(rejects_path))} (FORMAT parquet)"
    )
    by_reason = dict(
        con.execute(
            f"SELECT reject_reason, count(*) FROM read_parquet({sql_literal(str(rejects_path))}) GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    )
    n_rejected = int(sum(by_reason.values()))
    ignored = sorted(set(reader.source_types) - {s for s in reader.mapping.values() if s})
    return {
        "files": [{"name": f.name, "bytes": f.stat().st_size} for f in reader.sources.files],
        "format": reader.sources.kind,
        "column_map": {k: v for k, v in reader.mapping.items() if v is not None},
        "missing_optional_columns": [k for k, v in reader.mapping.items() if v is None],
        "ignored_source_columns": ignored,
        "rows_read": int(n_kept) + n_rejected,
        "rows_kept": int(n_kept),
        "rows_rejected": n_rejected,
        "rejected_by_reason": {k: int(v) for k, v in by_reason.items()},
    }


def _check_overlap(
    con: duckdb.DuckDBPyConnection, reader: ExtractReader, population_label: str, sample_rows: int = 100_000
) -> None:
    """Stop when no row of an extract's leading sample matches a person of the population: a wrong id
    column or extract (a sample, so a national yearly file is not read once more just for this check)."""
    n_rows, n_matched = con.execute(
        f"SELECT count(*), count(p.person_id) FROM (SELECT person_id FROM labelled_{reader.extract} LIMIT {sample_rows}) t "
        f"LEFT JOIN clean_population p ON t.person_id = p.person_id"
    ).fetchone()
    if n_rows > 0 and n_matched == 0:
        ours = _examples(
            con, f"SELECT raw_person_id FROM labelled_{reader.extract} WHERE raw_person_id IS NOT NULL", "id"
        )
        theirs = _examples(con, "SELECT person_id FROM clean_population", "id")
        raise ExtractError(
            f"{reader.extract}: no person in {reader.file_label} (column `{reader.mapping['person_id']}`) is in the "
            f"population extract {population_label}; check inputs.{reader.extract}.columns.person_id and that "
            f"both extracts come from the same linkage. Examples (masked): {ours} vs population {theirs}"
        )


def _person_id_type(population: ExtractReader) -> str:
    return "BIGINT" if population.person_id_is_integer() else "VARCHAR"


def _load_clean_population(con: duckdb.DuckDBPyConnection, population_path: str | Path) -> None:
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE clean_population AS SELECT * FROM read_parquet({sql_literal(str(population_path))})"
    )


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
    # The rows are read and labelled once into a temporary table (spilled to resources.tmpdir beyond
    # resources.memory_gb); the clean and the rejected rows are then written from it.
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE labelled_{name} AS {reader.labelled_sql(person_id_type, checks, joins)}"
        )
    except duckdb.Error as error:
        raise ExtractError(
            f"{name}: cannot read {reader.file_label}"
            f"{f' with encoding {reader.sources.encoding}' if reader.sources.encoding else ''}: "
            f"{str(error).splitlines()[0]}"
        ) from error
    if name != "population":
        _check_overlap(con, reader, population_label)
    log.info("validating %s from %s", name, reader.file_label)
    started = time.perf_counter()
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    entry = _write_extract(con, reader, clean_path, rejects_path, config.get("resources", {}).get("progress_seconds", 30))
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


def validate_registers(
    config: dict[str, Any], validated_dir: str | Path, validation_dir: str | Path
) -> dict[str, Any]:
    """Validate the population and MS registry extracts (and the diagnosis extract when configured); write them,
    their rejects and `parts/registers.json`.

    The registers come first: every prescription part is checked against the clean population and uses
    the person_id type decided here.
    """
    validated_dir, validation_dir = Path(validated_dir), Path(validation_dir)
    con = connect(config.get("resources"))
    inputs = config["inputs"]
    population = ExtractReader(con, "population", inputs["population"])
    ms_registry = ExtractReader(con, "ms_registry", inputs["ms_registry"])
    for reader in (population, ms_registry):
        reader.fail_if_nothing_parses()
    person_id_type = _person_id_type(population)
    log.info("person_id is stored as %s", person_id_type)
    report: dict[str, Any] = {"person_id_type": person_id_type, "extracts": {}}
    population_path = validated_dir / "population.parquet"
    entry = _validate_one(
        con, population, config, person_id_type, population_path, validation_dir / "rejects" / "population.parquet"
    )
    if entry["rows_kept"] == 0:
        raise ExtractError(f"population: no valid row in {population.file_label}; see {validation_dir / 'rejects'}")
    report["extracts"]["population"] = entry
    _load_clean_population(con, population_path)
    report["extracts"]["ms_registry"] = _validate_one(
        con,
        ms_registry,
        config,
        person_id_type,
        validated_dir / "ms_registry.parquet",
        validation_dir / "rejects" / "ms_registry.parquet",
        population.file_label,
    )
    report["extracts"]["ms_registry"]["registry_duplicates"] = registry_duplicates(con, validated_dir / "ms_registry.parquet")
    if inputs.get("diagnoses"):
        report["extracts"]["diagnoses"] = validate_diagnoses(
            con,
            config,
            person_id_type,
            population.file_label,
            clean_path=validated_dir / "diagnoses.parquet",
            rejects_path=validation_dir / "rejects" / "diagnoses.parquet",
        )
    registers_path = validation_dir / "parts" / "registers.json"
    registers_path.parent.mkdir(parents=True, exist_ok=True)
    registers_path.write_text(json.dumps(report, indent=2))
    return report


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
            f"t.diagnosis_date < {_birth_floor('p')} OR t.diagnosis_date > DATE {end}",
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
    _check_overlap(con, reader, population_label)
    clean_path.parent.mkdir(parents=True, exist_ok=True)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    entry = _write_extract(con, reader, clean_path, rejects_path)
    log.info(
        "diagnoses %s: %d rows read, %d kept, %d rejected %s",
        reader.file_label, entry["rows_read"], entry["rows_kept"], entry["rows_rejected"], entry["rejected_by_reason"],
    )  # fmt: skip
    return entry


def validate_prescription_part(
    config: dict[str, Any],
    part_path: str | Path,
    population_path: str | Path,
    registers_report_path: str | Path,
    clean_path: str | Path,
    rejects_path: str | Path,
    part_report_path: str | Path,
) -> dict[str, Any]:
    """Validate one file of the prescription extract against the clean population; write its report entry."""
    registers = json.loads(Path(registers_report_path).read_text())
    con = connect(config.get("resources"))
    _load_clean_population(con, population_path)
    reader = ExtractReader(con, "prescriptions", config["inputs"]["prescriptions"], [Path(part_path)])
    reader.fail_if_nothing_parses()
    population_label = f"{config['inputs']['population']['path']} (validated: {population_path})"
    entry = _validate_one(
        con, reader, config, registers["person_id_type"], Path(clean_path), Path(rejects_path), population_label
    )
    Path(part_report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(part_report_path).write_text(json.dumps(entry, indent=2))
    return entry


def merge_validation_reports(
    registers_report_path: str | Path,
    part_report_paths: list[str] | list[Path],
    report_path: str | Path,
    summary_path: str | Path,
) -> dict[str, Any]:
    """One validation report: the registers' entries and the prescription parts summed (with a per-part list)."""
    report = json.loads(Path(registers_report_path).read_text())
    parts = [json.loads(Path(p).read_text()) for p in part_report_paths]
    by_reason: dict[str, int] = {}
    for part in parts:
        for reason, n in part["rejected_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    first = parts[0] if parts else {"format": None, "column_map": {}, "missing_optional_columns": [], "ignored_source_columns": []}
    report["extracts"]["prescriptions"] = {
        "files": [f for part in parts for f in part["files"]],
        "format": first["format"],
        "column_map": first["column_map"],
        "missing_optional_columns": first["missing_optional_columns"],
        "ignored_source_columns": sorted({c for part in parts for c in part["ignored_source_columns"]}),
        "rows_read": sum(part["rows_read"] for part in parts),
        "rows_kept": sum(part["rows_kept"] for part in parts),
        "rows_rejected": sum(part["rows_rejected"] for part in parts),
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda item: -item[1])),
        "parts": [
            {
                "files": [f["name"] for f in part["files"]],
                **{k: part[k] for k in ("rows_read", "rows_kept", "rows_rejected")},
            }
            for part in parts
        ],
    }
    Path(report_path).write_text(json.dumps(report, indent=2))
    Path(summary_path).write_text(render_report_markdown(report))
    return report


def validate_extracts(
    config: dict[str, Any], validated_dir: str | Path, validation_dir: str | Path
) -> dict[str, Any]:
    """Validate the three extracts of `config['inputs']` in one call (the DAG runs the same steps as jobs):
    registers, then each prescription part, then the merged report."""
    validated_dir, validation_dir = Path(validated_dir), Path(validation_dir)
    for stale in (validated_dir / "prescriptions", validation_dir / "rejects" / "prescriptions"):
        if stale.exists():
            shutil.rmtree(stale)
    validate_registers(config, validated_dir, validation_dir)
    part_reports = []
    for name, file in prescription_parts(config["inputs"]["prescriptions"]).items():
        part_report = validation_dir / "parts" / f"prescriptions_{name}.json"
        validate_prescription_part(
            config,
            file,
            validated_dir / "population.parquet",
            validation_dir / "parts" / "registers.json",
            validated_dir / "prescriptions" / f"{name}.parquet",
            validation_dir / "rejects" / "prescriptions" / f"{name}.parquet",
            part_report,
        )
        part_reports.append(part_report)
    return merge_validation_reports(
        validation_dir / "parts" / "registers.json", part_reports, validation_dir / "report.json", validation_dir / "report.md"
    )


def render_report_markdown(report: dict[str, Any]) -> str:
    """A readable summary of the validation report."""
    lines = ["# Validation report", "", f"person_id stored as {report['person_id_type']}.", ""]
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
        if entry["missing_optional_columns"]:
            lines.append(f"Optional columns absent: {', '.join(entry['missing_optional_columns'])}")
        if entry["rejected_by_reason"]:
            lines += ["", "| reason | rows |", "|---|---:|"]
            lines += [f"| {reason} | {n:,} |" for reason, n in entry["rejected_by_reason"].items()]
    return "\n".join(lines) + "\n"
