"""Writing one validated extract: its labelled rows (typed columns, raw values, `reject_reason`) split into the
clean Parquet file and the rejects file with their reasons (raw values as text), its report entry, and the checks every extract
after the population shares (persons known to the clean population, the earliest possible birth date).

Shared by `repurpose.registry.ingest` (population, MS registry, diagnoses, prescriptions) and
`repurpose.registry.clinical_ingest` (the MS registry's clinical extracts). May import `repurpose.duck` and
`repurpose.registry.reader`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb

from repurpose.duck import connect, execute_with_progress, sql_literal
from repurpose.registry.reader import ExtractError, ExtractReader, masked_examples

log = logging.getLogger(__name__)
# The validated dispensings' compression: zstd at level 1 writes a national yearly part with a fifth less CPU
# than the default level 3, for files 3.3% larger (401 -> 414 MB over the 20 parts of 1,000,000 persons).
DISPENSINGS_COMPRESSION = "COMPRESSION zstd, COMPRESSION_LEVEL 1"


def birth_floor(alias: str) -> str:
    """Earliest possible birth date of a population row (SQL)."""
    return f"make_date({alias}.birth_year, coalesce({alias}.birth_month, 1), 1)"


def write_extract(
    con: duckdb.DuckDBPyConnection,
    reader: ExtractReader,
    clean_path: Path,
    rejects_path: Path,
    progress_seconds: float = 30.0,
    *,
    rows_in_source: int | None = None,
) -> dict[str, Any]:
    """Write the clean and rejected rows of the labelled table or view of one extract; return its report entry.

    Every file comes out in the same row order run after run: the registers and all rejects sorted by every
    column (small), the dispensings in the order of their source file when the connection has one thread, as
    the DAG's part jobs have (with more, DuckDB interleaves a national part's row groups across threads; a
    sort of a national yearly file would cost more than the validation itself). `rows_in_source`
    (the source's row count when known without reading it) ends the pass for rejects at the last rejected row.
    """
    canonical = ", ".join(c.name for c in reader.spec.columns)
    labelled = f"labelled_{reader.extract}"
    if reader.extract == "prescriptions":
        n_kept = execute_with_progress(
            con,
            f"COPY (SELECT {canonical}, year(dispense_date) AS dispense_year FROM {labelled} WHERE reject_reason IS NULL) "
            f"TO {sql_literal(str(clean_path))} (FORMAT parquet, {DISPENSINGS_COMPRESSION})",
            f"validating prescriptions {reader.file_label}",
            interval_seconds=progress_seconds,
        )[0][0]
    else:
        n_kept = con.execute(
            f"COPY (SELECT {canonical} FROM {labelled} WHERE reject_reason IS NULL ORDER BY ALL) "
            f"TO {sql_literal(str(clean_path))} (FORMAT parquet, COMPRESSION zstd)"
        ).fetchone()[0]
    raw_columns = ", ".join(f"CAST(raw_{c.name} AS VARCHAR) AS {c.name}" for c in reader.spec.columns)
    # Every row is kept or rejected: knowing the source's rows, the pass for rejects stops at the last of them
    # (at once when there is none).
    limit = "" if rows_in_source is None else f" LIMIT {rows_in_source - int(n_kept)}"
    con.execute(
        f"COPY (SELECT * FROM (SELECT reject_reason, {raw_columns} FROM {labelled} WHERE reject_reason IS NOT NULL"
        f"{limit}) ORDER BY ALL) TO {sql_literal(str(rejects_path))} (FORMAT parquet)"
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


def check_shared_persons(
    con: duckdb.DuckDBPyConnection, reader: ExtractReader, population_label: str, sample_rows: int = 100_000
) -> None:
    """Stop when no row of an extract's leading sample matches a person of the population: a wrong id
    column or extract (a sample, so a national yearly file is not read once more just for this check)."""
    n_rows, n_matched = con.execute(
        f"SELECT count(*), count(p.person_id) FROM (SELECT person_id FROM labelled_{reader.extract} LIMIT {sample_rows}) t "
        f"LEFT JOIN clean_population p ON t.person_id = p.person_id"
    ).fetchone()
    if n_rows > 0 and n_matched == 0:
        ours = masked_examples(
            con, f"SELECT raw_person_id FROM labelled_{reader.extract} WHERE raw_person_id IS NOT NULL", "id"
        )
        theirs = masked_examples(con, "SELECT person_id FROM clean_population", "id")
        raise ExtractError(
            f"{reader.extract}: no person in {reader.file_label} (column `{reader.mapping['person_id']}`) is in the "
            f"population extract {population_label}; check inputs.{reader.extract}.columns.person_id and that "
            f"both extracts come from the same linkage. Examples (masked): {ours} vs population {theirs}"
        )


def ordered_connection(config: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that keeps the source order of rows, so a validated part is the same bytes every run."""
    con = connect(config.get("resources"))
    con.execute("SET preserve_insertion_order = true")
    return con


def load_clean_population(con: duckdb.DuckDBPyConnection, population_path: str | Path) -> None:
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE clean_population AS SELECT * FROM read_parquet({sql_literal(str(population_path))})"
    )
