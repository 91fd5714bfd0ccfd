"""Reading one registry extract through the data dictionary: its source files (CSV with a declared dialect, or
Parquet), the column map to canonical names, typed columns and the checks of each column.

Nothing is guessed: person identifiers are compared as delivered (`0123` and `123` are two people): as text,
or as integers when the population extract delivers them in an integer column; CSV files are read with a
declared dialect (the header line, the separator and RFC 4180 quoting), never sniffed from the first rows;
a decimal mark that could be a thousands separator is rejected unless `inputs.<extract>.decimal` declares
it. Messages show values only where they cannot be identifiers, and identifiers only by their shape.

May import `repurpose.duck` and `repurpose.registry.dictionary`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import sql_literal
from repurpose.registry.dictionary import ColumnSpec, ExtractSpec, load_extract_spec

SOURCE_SUFFIXES = (".parquet", ".csv", ".txt", ".tsv")
# Stored type of each dictionary type but `id` (the run's person_id type); `year()` of a date is BIGINT.
SQL_TYPES = {"date": "DATE", "int": "INTEGER", "float": "DOUBLE", "sex": "VARCHAR",
             "category": "VARCHAR", "atc5": "VARCHAR", "country": "VARCHAR", "string": "VARCHAR"}
# The population's integer identifier columns that are kept as integers (BIGINT holds them all).
INTEGER_ID_SOURCE_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
# A text identifier links to an integer one only when it is that integer's own decimal text.
CANONICAL_INTEGER_REGEX = "-?[1-9][0-9]*|0"
ATC_LEVEL5_REGEX = "^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$"
# Beyond this many distinct malformed ATC codes in an extract, the check matches every row's code instead.
MAX_LISTED_MALFORMED = 1000
CSV_QUOTE = '"'  # RFC 4180: fields may be quoted anywhere in a file, a quote inside one is doubled
NUMERIC_SOURCE_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                        "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL")
INTEGER_SOURCE_TYPES = NUMERIC_SOURCE_TYPES[:9]
# Source types whose values are never empty as text: their `raw_*` value stays typed until a reject is written.
TYPED_SOURCE_TYPES = (*NUMERIC_SOURCE_TYPES, "DATE", "TIMESTAMP")


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


def csv_problem(error: Exception) -> str:
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
            problem = csv_problem(error)
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


def masked_examples(con: duckdb.DuckDBPyConnection, sql: str, column_type: str, n: int = 3) -> str:
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
    column_map = _renamed_keys(spec, column_map)
    unknown = sorted(set(column_map) - {c.name for c in spec.columns})
    if unknown:
        raise ExtractError(
            f"{spec.extract}: the column map names {unknown}, which are not columns of the "
            f"{spec.extract} extract; canonical columns are {[c.name for c in spec.columns]}"
        )
    mapping: dict[str, str | None] = {}
    for column in spec.columns:
        source = column_map.get(column.name, column.name)
        if source not in source_columns and column.name not in column_map:
            # An extract written before a rename names the column by its former canonical name.
            source = next((name for name in column.former_names if name in source_columns), source)
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


def _renamed_keys(spec: ExtractSpec, column_map: dict[str, str]) -> dict[str, str]:
    """The column map with keys that are a column's former canonical name (`ms_course`) under its new name."""
    renamed = {former: c.name for c in spec.columns for former in c.former_names}
    out: dict[str, str] = {}
    for key, source in column_map.items():
        name = renamed.get(key, key)
        if name in out:
            raise ExtractError(
                f"{spec.extract}: the column map sets `{name}` twice (inputs.{spec.extract}.columns.{name} and its "
                f"former name); keep only `{name}`"
            )
        out[name] = source
    return out


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
    if column.type == "category" and any(value != value.upper() for value in column.allowed):
        # Read case-insensitively, stored in the dictionary's spelling (`Adverse_Event` -> adverse_event).
        cases = " ".join(f"WHEN {sql_literal(a.upper())} THEN {sql_literal(a)}" for a in column.allowed)
        return f"(CASE upper({text}) {cases} ELSE upper({text}) END)"
    if column.type in ("category", "atc5", "country"):
        return f"upper({text})"
    return text  # plain strings (identifiers: ExtractReader.person_id)


@dataclass(frozen=True)
class Check:
    """One row-level rejection rule: `reason` applies where `condition` (SQL on the labelled row) is true."""

    reason: str
    condition: str


def malformed_atc_code(typed: str) -> str:
    """SQL: a present ATC code that is not a level-5 code (`typed`: the upper-cased, trimmed code)."""
    return f"{typed} IS NOT NULL AND NOT regexp_full_match({typed}, '{ATC_LEVEL5_REGEX}')"


def column_checks(
    column: ColumnSpec,
    *,
    text_source: bool = True,
    decimal: str | None = None,
    delivery_date: date | None = None,
    malformed_values: list[str] | None = None,
) -> list[Check]:
    """Rejection rules that follow from a column's dictionary entry, on typed `t.<name>` and text `t.raw_<name>`:
    missing, unparseable, ambiguous decimal mark (text sources without a declared `decimal`), not finite,
    out of the dictionary's range or steps, dated after the extract's delivery. `malformed_values`, when given,
    are the extract's distinct malformed ATC codes (`ExtractReader.malformed_atc_codes`): the check is then
    membership in them, the same rows as the regular expression at a fraction of its cost per row."""
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
    if column.type == "country":
        checks.append(Check(f"invalid_{name}", f"{typed} IS NOT NULL AND NOT regexp_full_match({typed}, '[A-Z]{{2}}')"))
    if column.type == "atc5":
        if malformed_values is None:
            condition = malformed_atc_code(typed)
        elif malformed_values:
            condition = f"{typed} IN ({', '.join(sql_literal(v) for v in malformed_values)})"
        else:
            condition = "false"
        checks.append(Check(f"malformed_{name}", condition))
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

    def raw_value(self, name: str) -> str:
        """SQL of a column's `raw_*` value in the labelled rows: the trimmed text of a text source, the value
        itself of a number, date or timestamp source. Such a value never prints as empty text, so the checks
        (`IS NULL`) read the same, and the rejects file turns it into text for the few rejected rows only;
        casting every dispensing's numbers and dates to text cost a fifth of a national part's validation."""
        source = self.mapping[name]
        if source is not None and self.source_types[source].startswith(TYPED_SOURCE_TYPES):
            return self.raw(name)
        return _as_text(self.raw(name))

    def typed(self, name: str) -> str:
        source = self.mapping[name]
        raw_type = None if source is None else self.source_types[source]
        return _typed_expression(self.spec.column(name), self.raw(name), raw_type, self.date_format, self.decimal)

    def checks(self, name: str) -> list[Check]:
        """The dictionary's rejection rules of one present column, with this extract's number format and delivery."""
        source = self.mapping[name]
        text_source = self.source_types[source] == "VARCHAR"
        column = self.spec.column(name)
        return column_checks(
            column, text_source=text_source, decimal=self.decimal, delivery_date=self.delivery_date,
            malformed_values=self.malformed_atc_codes(name) if column.type == "atc5" else None,
        )  # fmt: skip

    def malformed_atc_codes(self, name: str) -> list[str] | None:
        """The distinct malformed codes of an ATC column of a Parquet extract (sorted), or None (the check then
        applies the regular expression to every row): for a CSV extract, whose every read parses the files, or
        when they are too many to list. Found from the column's distinct source values (a few thousand codes
        at most; Parquet keeps them in dictionaries), where matching every dispensing's code against the
        regular expression cost a seventh of a national yearly part's validation."""
        if self.sources.kind != "parquet":
            return None
        typed = self.typed(name)
        found = self.con.execute(
            f"SELECT code FROM (SELECT DISTINCT {typed} AS code FROM (SELECT {self.raw(name)} FROM {self.view} "
            f"GROUP BY ALL)) WHERE {malformed_atc_code('code')} ORDER BY code LIMIT {MAX_LISTED_MALFORMED + 1}"
        ).fetchall()
        return None if len(found) > MAX_LISTED_MALFORMED else [code for (code,) in found]

    def parquet_rows(self) -> int:
        """Rows of a Parquet extract, from the files' footers (no data is read)."""
        if self.sources.kind != "parquet":
            raise ValueError(f"{self.extract}: parquet_rows needs a Parquet extract, not {self.sources.kind}")
        files = "[" + ", ".join(sql_literal(str(f)) for f in self.sources.files) + "]"
        return int(self.con.execute(f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata({files})").fetchone()[0])

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
                examples = masked_examples(self.con, f"SELECT DISTINCT {text} FROM {sample} WHERE {text} IS NOT NULL", column.type)
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
        """SELECT of every row: typed canonical columns, raw values (`raw_*`, see `raw_value`) and `reject_reason`."""
        typed_cols = [f"{self.person_id(person_id_type)} AS person_id"]
        typed_cols += [f"{self.typed(c.name)} AS {c.name}" for c in self.spec.columns if c.name != "person_id"]
        raw_cols = [f"{self.raw_value(c.name)} AS raw_{c.name}" for c in self.spec.columns]
        checks = [check for c in self.spec.columns if self.mapping[c.name] for check in self.checks(c.name)]
        checks += extra_checks
        reason = (
            "CASE " + " ".join(f"WHEN {c.condition} THEN {sql_literal(c.reason)}" for c in checks) + " END"
        )
        inner = f"SELECT {', '.join(typed_cols + raw_cols)} FROM {self.view}"
        return f"SELECT t.*, {reason} AS reject_reason FROM ({inner}) t {joins}"


