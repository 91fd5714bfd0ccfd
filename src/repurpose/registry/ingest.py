"""Validate the registry extracts against the data dictionary and write clean Parquet.

Each extract is read through DuckDB (streaming, never wholly in Python memory), its columns renamed
to the canonical names of the data dictionary, typed, and checked row by row. Every row ends up in
exactly one place: the clean output or the rejects file with a reason. Problems with a whole
extract (missing file or column, wrong encoding, nothing parseable, no persons shared with the
population) stop the run with one message naming the file, the column and the line where known;
values are shown only where they cannot be identifiers, and identifiers only by their shape.

Nothing is guessed: person identifiers are compared as delivered (`0123` and `123` are two people): as text,
or as integers when the population extract delivers them in an integer column (as the simulator does);
CSV files are read with a declared dialect (the header line, the separator and RFC 4180 quoting), never
sniffed from the first rows; a decimal mark that could be a thousands separator is rejected unless
`inputs.<extract>.decimal` declares it.

May import `repurpose.duck` and `repurpose.registry.dictionary`.

Outputs (see `docs/schemas.md`):
  validated/population.parquet, validated/ms_registry.parquet,
  validated/prescriptions/<part>.parquet (one per source file, e.g. per delivery year; with dispense_year),
  validation/rejects/<extract>.parquet and rejects/prescriptions/<part>.parquet,
  validation/parts/*.json (per-job entries), validation/report.json, validation/report.md.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import connect, execute_with_progress, sql_literal
from repurpose.layout import results_layout
from repurpose.registry.dictionary import ColumnSpec, ExtractSpec, load_extract_spec
from repurpose.stages import stage

log = logging.getLogger(__name__)

SOURCE_SUFFIXES = (".parquet", ".csv", ".txt", ".tsv")
# Stored type of each dictionary type but `id` (the run's person_id type); `year()` of a date is BIGINT.
SQL_TYPES = {"date": "DATE", "int": "INTEGER", "float": "DOUBLE", "sex": "VARCHAR",
             "category": "VARCHAR", "atc5": "VARCHAR", "string": "VARCHAR"}
# The population's integer identifier columns that are kept as integers (BIGINT holds them all).
INTEGER_ID_SOURCE_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
# A text identifier links to an integer one only when it is that integer's own decimal text.
CANONICAL_INTEGER_REGEX = "-?[1-9][0-9]*|0"
ATC_LEVEL5_REGEX = "^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"
CSV_QUOTE = '"'  # RFC 4180: fields may be quoted anywhere in a file, a quote inside one is doubled
NUMERIC_SOURCE_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                        "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")
INTEGER_SOURCE_TYPES = NUMERIC_SOURCE_TYPES[:9]


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


def _csv_header(sources: SourceFiles, path: Path, encoding: str) -> list[str] | None:
    """The column names of a CSV file's first line (None for an empty file); UnicodeDecodeError if the
    line is not in `encoding`. A first line whose fields hold no letter is data, not a header: refused
    without showing it (it could hold an identifier)."""
    with open(path, "rb") as handle:
        first = handle.readline()
    if not first.strip():
        return None
    text = first.decode("utf-8-sig" if encoding == "utf-8" else encoding).rstrip("\r\n")
    fields = [field.strip() for field in next(csv.reader([text], delimiter=sources.sep or ",", quotechar=CSV_QUOTE))]
    no_letter = [i + 1 for i, field in enumerate(fields) if field and not re.search(r"[^\W\d_]", field)]
    if no_letter:
        raise ExtractError(
            f"{sources.extract}: the first line of {path} is not a header (field {no_letter[0]} of "
            f"{len(fields)} holds no letter: a date, number or identifier); the file needs a header row "
            "naming its columns"
        )
    names = [field or f"unnamed_{i + 1}" for i, field in enumerate(fields)]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExtractError(f"{sources.extract}: the header of {path} names {repeated} more than once")
    return names


def _csv_problem(error: Exception) -> str:
    """What is wrong with a CSV file, and on which line, without the line's content (it may hold identifiers)."""
    text = str(error)
    line = re.search(r"CSV Error on Line: (\d+)", text)
    where = f"line {line.group(1)}" if line else "a line"
    columns = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if columns:
        return f"{where} has {columns.group(2)} fields where the header has {columns.group(1)}"
    if "unterminated quote" in text:
        return f"{where} opens a quoted field that is never closed"
    if "Invalid unicode" in text:
        return f"{where} is not valid in this encoding"
    return f"{where}: {text.splitlines()[0]}" if line else text.splitlines()[0]


def _parquet_relation(con: duckdb.DuckDBPyConnection, sources: SourceFiles) -> str:
    """read_parquet of all files, after checking each file's footer, so a truncated or corrupt file is named."""
    for file in sources.files:
        if file.stat().st_size == 0:
            raise ExtractError(f"{sources.extract}: {file} is empty (0 bytes)")
        try:
            con.execute(f"DESCRIBE SELECT * FROM read_parquet({sql_literal(str(file))})").fetchall()
        except duckdb.Error as error:
            raise ExtractError(
                f"{sources.extract}: {file} is not a readable Parquet file (truncated or corrupt?): "
                f"{str(error).splitlines()[0]}"
            ) from error
    file_list = "[" + ", ".join(sql_literal(str(f)) for f in sources.files) + "]"
    return f"read_parquet({file_list}, union_by_name=true)"


def _csv_relation(sources: SourceFiles, encoding: str) -> str:
    """read_csv of every file with a declared dialect (header, separator, quote, all columns text), so no
    file is read with a dialect guessed from its first rows; several files are united by column name."""
    relations = []
    for file in sources.files:
        header = _csv_header(sources, file, encoding)
        if header is None:
            raise ExtractError(f"{sources.extract}: {file} is empty (0 bytes or a blank first line)")
        columns = "{" + ", ".join(f"{sql_literal(name)}: 'VARCHAR'" for name in header) + "}"
        relations.append(
            f"read_csv({sql_literal(str(file))}, delim={sql_literal(sources.sep or ',')}, quote='{CSV_QUOTE}', "
            f"escape='{CSV_QUOTE}', header=true, auto_detect=false, columns={columns}, "
            f"encoding={sql_literal(encoding)})"
        )
    if len(relations) == 1:
        return relations[0]
    return "(" + " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in relations) + ")"


def _read_relation(con: duckdb.DuckDBPyConnection, sources: SourceFiles) -> str:
    """SQL of a relation reading all source files (CSV columns as text, Parquet with its own types)."""
    if sources.kind == "parquet":
        return _parquet_relation(con, sources)
    encodings = [sources.encoding] if sources.encoding else ["utf-8", "latin-1"]
    problem = ""
    for encoding in encodings:
        try:
            relation = _csv_relation(sources, encoding)
        except UnicodeDecodeError:
            problem = "the header line is not valid in this encoding"
            continue
        try:
            if sources.encoding:
                # A declared encoding is trusted: the single labelling scan reports a file it cannot decode.
                con.execute(f"SELECT * FROM {relation} LIMIT 1").fetchall()
            else:
                # Guessing needs a full scan: encoding errors can sit anywhere, not only in the sniffed sample.
                con.execute(f"SELECT count(*) FROM {relation}").fetchone()
            return relation
        except duckdb.Error as error:
            problem = _csv_problem(error)
            if "Invalid unicode" not in str(error):
                raise ExtractError(
                    f"{sources.extract}: cannot read {_files_label(sources)} as CSV with separator "
                    f"{sources.sep!r}: {problem}"
                ) from error
    hint = (
        "set inputs.<extract>.encoding to latin-1"
        if sources.encoding == "utf-8"
        else "check the file is a delimited text file"
    )
    raise ExtractError(
        f"{sources.extract}: cannot read {_files_label(sources)} as CSV with encoding {'/'.join(encodings)} "
        f"and separator {sources.sep!r} ({hint}): {problem}"
    )


def _files_label(sources: SourceFiles) -> str:
    names = ", ".join(f.name for f in sources.files[:3])
    return names + (" …" if len(sources.files) > 3 else "")


def id_shape(value: Any) -> str:
    """An identifier's shape without any of its characters (never log person identifiers): its length, which
    kinds of characters it holds and its leading zeros, enough to see why two extracts do not link."""
    text = str(value)
    kinds = "digits" if text.isdigit() else "letters and digits" if text.isalnum() else "mixed characters"
    zeros = len(text) - len(text.lstrip("0"))
    return f"<{len(text)} characters, {kinds}" + (f", {zeros} leading zeros>" if zeros else ">")


def _safe_example(value: Any) -> str:
    """A value shown in an error message, masked when it could be an identifier (a long run of digits)."""
    return id_shape(value) if re.search(r"\d{6,}", str(value)) else repr(value)


def _examples(con: duckdb.DuckDBPyConnection, sql: str, column_type: str, n: int = 3) -> str:
    rows = [r[0] for r in con.execute(f"{sql} LIMIT {n}").fetchall()]
    shown = [id_shape(v) if column_type == "id" else _safe_example(v) for v in rows]
    return ", ".join(shown) if shown else "(no values)"


def _source_columns(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {row[0]: row[1] for row in described}


def map_columns(
    spec: ExtractSpec, source_columns: dict[str, str], column_map: dict[str, str], files: tuple[Path, ...]
) -> dict[str, str | None]:
    """Canonical name -> source name; raise ExtractError for a missing required column or a column the map
    names that is not in the file (an optional column is absent only when the map does not name it)."""
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
        elif column.name in column_map:
            raise ExtractError(
                f"{spec.extract}: the column map sets `{column.name}` to source column `{source}` "
                f"(inputs.{spec.extract}.columns.{column.name}), which is missing from {files[0]}; "
                f"the file has columns {sorted(source_columns)}"
            )
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


def _number_pattern(decimal: str | None) -> str:
    """Regex of a plain decimal number in text: digits with at most one decimal mark (the declared one, or
    either when undeclared); no exponent, no thousands separator, no inf or NaN."""
    mark = {".": "[.]", ",": "[,]", None: "[.,]"}[decimal]
    return f"[+-]?([0-9]+({mark}[0-9]*)?|{mark}[0-9]+)"


# A number whose only mark is followed by exactly three digits after 1-3 leading digits (not 0): `1,234`
# is one thousand and a bit with a thousands separator, or about one with a decimal comma.
AMBIGUOUS_DECIMAL_REGEX = "[+-]?[1-9][0-9]{0,2}[.,][0-9]{3}"


def _typed_expression(
    column: ColumnSpec, raw: str, raw_type: str | None, date_format: str, decimal: str | None = None
) -> str:
    """SQL turning a raw source column into its canonical type (NULL when unparseable, never rounded or guessed)."""
    text = _as_text(raw)
    native_number = raw_type is not None and raw_type.startswith(NUMERIC_SOURCE_TYPES)
    if column.type == "date":
        if raw_type == "DATE":
            return raw
        if raw_type and raw_type.startswith("TIMESTAMP"):
            return f"CAST({raw} AS DATE)"
        return f"CAST(TRY_STRPTIME({text}, {sql_literal(date_format)}) AS DATE)"
    if column.type == "int":
        if raw_type is not None and raw_type.startswith(INTEGER_SOURCE_TYPES):
            return f"TRY_CAST({raw} AS INTEGER)"
        if native_number:
            return f"(CASE WHEN {raw} = round({raw}) THEN TRY_CAST({raw} AS INTEGER) END)"
        # "3.0" is a whole number written by a tool that stores integers as floats; "1980.6" is not.
        return f"(CASE WHEN regexp_full_match({text}, '[+-]?[0-9]+([.,]0+)?') THEN TRY_CAST(regexp_replace({text}, '[.,]0+$', '') AS INTEGER) END)"
    if column.type == "float":
        if native_number:
            return f"CAST({raw} AS DOUBLE)"
        return (
            f"(CASE WHEN regexp_full_match({text}, {sql_literal(_number_pattern(decimal))}) "
            f"THEN TRY_CAST(replace({text}, ',', '.') AS DOUBLE) END)"
        )
    if column.type == "sex":
        cases = " ".join(f"WHEN {sql_literal(k)} THEN {sql_literal(v)}" for k, v in column.codes.items())
        return f"(CASE regexp_replace({text}, '\\.0$', '') {cases} ELSE NULL END)"
    if column.type in ("category", "atc5"):
        return f"upper({text})"
    return text  # plain strings (identifiers: ExtractReader.person_id)


@dataclass(frozen=True)
class Check:
    """One row-level rejection rule: `reason` applies where `condition` (SQL on the labelled row) is true."""

    reason: str
    condition: str


def column_checks(
    column: ColumnSpec, *, text_source: bool = True, decimal: str | None = None, delivery_date: date | None = None
) -> list[Check]:
    """Rejection rules that follow from a column's dictionary entry, on typed `t.<name>` and text `t.raw_<name>`:
    missing, unparseable, ambiguous decimal mark (text sources without a declared `decimal`), not finite,
    out of the dictionary's range or steps, dated after the extract's delivery."""
    name, typed, raw_text = column.name, f"t.{column.name}", f"t.raw_{column.name}"
    checks: list[Check] = []
    if column.required:
        checks.append(Check(f"missing_{name}", f"{raw_text} IS NULL"))
    if column.type == "float" and text_source and decimal is None:
        checks.append(
            Check(f"ambiguous_decimal_mark_{name}", f"regexp_full_match({raw_text}, '{AMBIGUOUS_DECIMAL_REGEX}')")
        )
    if column.type in ("date", "int", "float", "sex"):
        checks.append(Check(f"unparseable_{name}", f"{raw_text} IS NOT NULL AND {typed} IS NULL"))
    if column.type == "float":
        checks.append(Check(f"non_finite_{name}", f"{typed} IS NOT NULL AND NOT isfinite({typed})"))
    if column.type == "date" and delivery_date is not None:
        checks.append(Check(f"{name}_after_delivery_date", f"{typed} > DATE '{delivery_date.isoformat()}'"))
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


def delivery_date_of(input_config: dict[str, Any]) -> date:
    """`inputs.<extract>.delivery_date`, or the day of the run (UTC) when not declared."""
    declared = input_config.get("delivery_date")
    return date.fromisoformat(declared) if declared else datetime.now(UTC).date()


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
        self.decimal = input_config.get("decimal")
        self.delivery_date = delivery_date_of(input_config)
        self.sources = describe_sources(extract, input_config, files)
        self.relation = _read_relation(con, self.sources)
        self.source_types = _source_columns(con, self.relation)
        self.mapping = map_columns(
            self.spec, self.source_types, input_config.get("columns", {}), self.sources.files
        )
        id_type = self.source_types[self.mapping["person_id"]]
        if id_type.startswith(NUMERIC_SOURCE_TYPES) and not id_type.startswith(INTEGER_SOURCE_TYPES):
            raise ExtractError(
                f"{extract}: column `person_id` of {self.file_label} (source `{self.mapping['person_id']}`) is "
                f"floating point ({id_type}), which may have rounded identifiers; deliver identifiers as text or integers"
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
        return _typed_expression(self.spec.column(name), self.raw(name), raw_type, self.date_format, self.decimal)

    def checks(self, name: str) -> list[Check]:
        """The dictionary's rejection rules of one present column, with this extract's number format and delivery."""
        source = self.mapping[name]
        text_source = self.source_types[source] == "VARCHAR"
        return column_checks(
            self.spec.column(name), text_source=text_source, decimal=self.decimal, delivery_date=self.delivery_date
        )

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

    def person_id_type(self) -> str:
        """BIGINT when this (population) extract delivers identifiers in an integer column, else VARCHAR.

        Decided by the column's declared type, never by its values: a text column of digits stays text, so
        `0123` and `123` remain two people."""
        source_type = self.source_types[self.mapping["person_id"]]
        return "BIGINT" if source_type.startswith(INTEGER_ID_SOURCE_TYPES) else "VARCHAR"

    def person_id(self, person_id_type: str) -> str:
        """SQL of the identifier in the run's type: text as delivered (trimmed); integers as they are; a text
        identifier in an integer run only when it is an integer's own decimal text (`00123` is no integer's
        text, so it links to no one and is rejected as unknown_person)."""
        source_type = self.source_types[self.mapping["person_id"]]
        text = _as_text(self.raw("person_id"))
        if person_id_type == "VARCHAR":
            return text
        if source_type.startswith(INTEGER_ID_SOURCE_TYPES):
            return f"TRY_CAST({self.raw('person_id')} AS BIGINT)"
        return f"(CASE WHEN regexp_full_match({text}, '{CANONICAL_INTEGER_REGEX}') THEN TRY_CAST({text} AS BIGINT) END)"

    def labelled_sql(self, person_id_type: str, extra_checks: list[Check], joins: str = "") -> str:
        """SELECT of every row: typed canonical columns, trimmed raw text (`raw_*`) and `reject_reason`."""
        typed_cols = [f"{self.person_id(person_id_type)} AS person_id"]
        typed_cols += [f"{self.typed(c.name)} AS {c.name}" for c in self.spec.columns if c.name != "person_id"]
        raw_cols = [f"{_as_text(self.raw(c.name))} AS raw_{c.name}" for c in self.spec.columns]
        checks = [check for c in self.spec.columns if self.mapping[c.name] for check in self.checks(c.name)]
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
    return [
        Check("unknown_person", "p.person_id IS NULL"),
        Check("duplicate_person_id", "count(*) OVER (PARTITION BY t.person_id) > 1"),
        Check("diagnosis_before_birth", f"t.diagnosis_date < {_birth_floor('p')}"),
        Check("onset_before_birth", f"t.onset_date < {_birth_floor('p')}"),
        Check("onset_after_diagnosis", "t.onset_date > t.diagnosis_date"),
        Check("onset_after_death", "t.onset_date > p.death_date"),
        Check("diagnosis_after_death", "t.diagnosis_date > p.death_date"),
    ], join


def _write_extract(
    con: duckdb.DuckDBPyConnection,
    reader: ExtractReader,
    clean_path: Path,
    rejects_path: Path,
    progress_seconds: float = 30.0,
) -> dict[str, Any]:
    """Write the clean and rejected rows of the labelled view of one extract; return its report entry.

    Every file comes out in the same row order run after run: the registers and all rejects sorted by every
    column (small), the dispensings in the order of their source file (the connection preserves insertion
    order; a sort of a national yearly file would cost more than the validation itself)."""
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
            f"COPY (SELECT {canonical} FROM {labelled} WHERE reject_reason IS NULL ORDER BY ALL) "
            f"TO {sql_literal(str(clean_path))} (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()[0]
    raw_columns = ", ".join(f"raw_{c.name} AS {c.name}" for c in reader.spec.columns)
    con.execute(
        f"COPY (SELECT reject_reason, {raw_columns} FROM {labelled} WHERE reject_reason IS NOT NULL ORDER BY ALL) "
        f"TO {sql_literal(str(rejects_path))} (FORMAT parquet)"
    )
    by_reason = dict(
        con.execute(
            f"SELECT reject_reason, count(*) FROM read_parquet({sql_literal(str(rejects_path))}) GROUP BY 1 ORDER BY 2 DESC, 1"
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


def _patients_only_rejected(con: duckdb.DuckDBPyConnection) -> int:
    """Persons of the clean population whose every MS registry row was rejected: MS patients the cohort
    would otherwise follow as MS-free (counted so that this is never silent)."""
    return int(
        con.execute(
            "SELECT count(*) FROM (SELECT t.person_id FROM labelled_ms_registry t "
            "SEMI JOIN clean_population p ON t.person_id = p.person_id "
            "GROUP BY t.person_id HAVING bool_and(t.reject_reason IS NOT NULL))"
        ).fetchone()[0]
    )


def _ordered_connection(config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that keeps the source order of rows, so a validated part is the same bytes every run."""
    con = connect(config.get("resources"))
    con.execute("SET preserve_insertion_order = true")
    return con


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
            f"{_csv_problem(error) if reader.sources.kind == 'csv' else str(error).splitlines()[0]}"
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


@stage(reads=("inputs.population", "inputs.ms_registry", "study", "validation"))
def validate_registers(
    config: dict[str, Any],
    *,
    population: str | Path,
    ms_registry: str | Path,
    population_rejects: str | Path,
    ms_registry_rejects: str | Path,
    report: str | Path,
) -> dict[str, Any]:
    """Validate the population and MS registry extracts; write them, their rejects and `parts/registers.json`.

    The registers come first: every prescription part is checked against the clean population. An MS
    registry without a usable row stops the run (every person would be followed as MS-free).
    """
    population_path, registers_path = Path(population), Path(report)
    con = _ordered_connection(config)
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
    _load_clean_population(con, population_path)
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
    entry["patients_only_rejected"] = _patients_only_rejected(con)
    if entry["patients_only_rejected"]:
        log.warning(
            "ms_registry: %d persons of the population have only rejected registry rows; unless the cohort "
            "excludes them they are followed as MS-free",
            entry["patients_only_rejected"],
        )
    result["extracts"]["ms_registry"] = entry
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
        f"TO {sql_literal(str(clean_path))} (FORMAT parquet, COMPRESSION zstd)"
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
    con = _ordered_connection(config)
    _load_clean_population(con, population)
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
) -> dict[str, Any]:
    """One validation report: the registers' entries and the prescription parts summed (with a per-part list)."""
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
    Path(report_path).write_text(json.dumps(report, indent=2))
    Path(summary_path).write_text(render_report_markdown(report))
    return report


def validate_extracts(config: dict[str, Any], *, results_dir: str | Path) -> dict[str, Any]:
    """Validate the extracts of `config['inputs']` in one call, into `results_dir` laid out as the DAG's
    (the DAG runs the same steps as jobs): registers, then each prescription part, then the merged report."""
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
        report=paths.registers_report(),
    )
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
    return merge_validation_reports(
        config,
        registers=paths.registers_report(),
        parts=part_reports,
        report=paths.validation_report(),
        summary=paths.validation_summary(),
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
                "(MS patients with unusable rows: followed as MS-free unless the cohort excludes them)"
            )
        if entry.get("empty_parts"):
            lines.append(f"Empty parts: {', '.join(entry['empty_parts'])}")
        if entry["missing_optional_columns"]:
            lines.append(f"Optional columns absent: {', '.join(entry['missing_optional_columns'])}")
        if entry["rejected_by_reason"]:
            lines += ["", "| reason | rows |", "|---|---:|"]
            lines += [f"| {reason} | {n:,} |" for reason, n in entry["rejected_by_reason"].items()]
    return "\n".join(lines) + "\n"
