"""The export folder: the only files meant to leave the secure server, with a manifest of checksums.

`export_results` copies aggregate outputs (the screen, the candidate rankings, the report and its
summary tables) from `results/` to `results/export/`. The gate reads content, not only names; it refuses,
with an error naming the file (and the column or row), and nothing is written:

1. person-level files the layout declares (validated extracts, rejects, cohort, exposure, screen parts);
2. a column whose name (case-insensitively) is an identifier or date column of the data dictionary or any
   of their aliases (`person_id`, `pasient_lopenr`, `id`, `death_date`, `dodsdato`, ...; see
   `identifier_and_date_names`), including the birth-date parts `birth_year`/`birth_month`;
3. a column of dates or datetimes: by dtype, or a text column with a value that parses as an ISO date;
4. a table with a row per person, by content (names can be changed, values cannot; see
   `per_person_reason`): a column of which at least `min_cell` distinct values, and 90% of all its distinct
   values, are person ids of the current cohort (when ids are too dense in their range to tell from
   ordinary integers, this rule cannot be applied and says so in the log), or a table with at least half
   as many rows as the cohort has persons and a non-float column whose values are all distinct;
5. a file not produced by the current run (`current_run_files`): the run is the one whose report wrote
   `report/provenance.json` (its `run_id` is stamped in the manifest); a file the report read must have the
   checksum the report recorded; a file written by the report job must be no older than that job; a file
   written by the same job as one the report read (`screen/dwas.csv` with `screen/dwas.parquet`, ...) must
   have been written within `SAME_JOB_SECONDS` of it; any other file is not an output of the run's DAG;
6. a count left from 1 to min_cell - 1 after `repurpose.release.disclosure.suppress_small_counts`.

The export is built in a temporary folder beside `export/` and renamed at the end, so a refused or failed
export leaves no half-written folder (and no earlier export that could pass for this run's), and an earlier
export never survives beside a new one.
`manifest.csv` lists file, SHA-256, bytes, rows, the run id and how each file's provenance was verified.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.layout import (
    AGGREGATE_OUTPUTS,
    PERSISTENCE_TABLES,
    PERSON_LEVEL,
    TRIAL_EMULATION_TABLES,
    results_layout,
)
from repurpose.registry.dictionary import EXTRACTS, load_extract_spec
from repurpose.release.disclosure import (
    SCREEN_RULES,
    for_display,
    parse_display,
    person_count_columns,
    small_counts_left,
    suppress_small_counts,
)
from repurpose.release.provenance import sha256_file
from repurpose.stages import stage

log = logging.getLogger(__name__)

# Dictionary column types that identify a person or date an event; names that are parts of a birth date.
REFUSED_TYPES = ("id", "date")
BIRTH_DATE_PARTS = ("birth_year", "birth_month")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
PERSON_ID_SHARE = 0.9  # of a column's distinct values that are cohort person ids: an identifier column
PER_PERSON_ROW_SHARE = 0.5  # of the cohort size: a table this long with a distinct-valued column is per person
DENSE_IDS = 0.05  # ids filling more than this share of their integer range cannot be told from other integers
SAME_JOB_SECONDS = 120.0  # files written by one job lie within this of each other
CLOCK_SLACK_SECONDS = 5.0  # file-system time resolution and rounding of created_utc


class ExportRefused(ValueError):
    """A file asked for export is person-level, stale or still holds a disclosive value; nothing was exported."""


@cache
def identifier_and_date_names() -> frozenset[str]:
    """Lower-cased names and aliases of every identifier or date column of the data dictionary, plus the
    birth-date parts: none of these may appear as a column of an exported table."""
    names: set[str] = {"person_id", *BIRTH_DATE_PARTS}
    for extract in EXTRACTS:
        for spec in load_extract_spec(extract).columns:
            if spec.type in REFUSED_TYPES or spec.name in BIRTH_DATE_PARTS:
                names.update(n.lower() for n in (spec.name, *spec.aliases))
    return frozenset(names)


# Kept for callers that check names only (site packages): the same set.
IDENTIFIER_COLUMNS = identifier_and_date_names()


def relative_name(path: Path, results_dir: Path) -> str:
    """The path relative to the results directory (or the file name when outside it)."""
    try:
        return path.resolve().relative_to(results_dir.resolve()).as_posix()
    except ValueError:
        return path.name


def is_person_level(name: str) -> bool:
    """True for a results-relative path the pipeline knows to be person-level."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in PERSON_LEVEL)


def _read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema_length=10_000, null_values=["", "NA"])


# --------------------------------------------------------------------------------------------------
# Content checks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    """What the content checks need of the current cohort: its size and its person ids (as text)."""

    n_persons: int
    ids: frozenset[str]
    ids_dense: bool  # integer ids filling their range: any integer column would look like ids

    @classmethod
    def read(cls, path: str | Path | None) -> Cohort | None:
        """The cohort at `path`, or None when there is none (a pooled run has no persons)."""
        if path is None or not Path(path).is_file():
            return None
        ids = pl.read_parquet(path, columns=["person_id"])["person_id"]
        dense = False
        if ids.dtype.is_integer() and ids.len():
            span = float(ids.max()) - float(ids.min()) + 1  # type: ignore[arg-type]
            dense = ids.n_unique() / span > DENSE_IDS
        return cls(n_persons=ids.len(), ids=frozenset(ids.cast(pl.String).to_list()), ids_dense=dense)


def named_refusals(columns: list[str]) -> list[str]:
    """Columns whose name is an identifier or date column (or alias) of the data dictionary."""
    refused = identifier_and_date_names()
    return [c for c in columns if c.strip().lower() in refused]


def date_columns(frame: pl.DataFrame) -> list[str]:
    """Columns of dates or datetimes: temporal dtype, or text with at least one ISO date value."""
    found = []
    for name, dtype in frame.schema.items():
        if dtype.is_temporal():
            found.append(name)
        elif dtype == pl.String:
            values = frame[name].drop_nulls().str.strip_chars()
            if values.str.contains(ISO_DATE.pattern).any():
                found.append(name)
    return found


def _first_row(frame: pl.DataFrame, column: str, values: frozenset[str]) -> int:
    """1-based data row of the first value of `column` that is in `values` (for the error message)."""
    values_of_rows = frame[column].cast(pl.String).to_list()
    return next((i + 1 for i, value in enumerate(values_of_rows) if value in values), 0)


def per_person_reason(frame: pl.DataFrame, cohort: Cohort | None, min_cell: int) -> str | None:
    """Why the table holds a row per person, or None. Two rules on content, so renaming cannot dodge them:

    - a column (integer or text) of which at least `min_cell` distinct values, and at least PERSON_ID_SHARE
      of all its distinct values, are person ids of the cohort: an identifier column, whatever its name
      (not applied when the cohort's integer ids are dense in their range, where counts and ranks would
      match too; the second rule still is);
    - at least PER_PERSON_ROW_SHARE x cohort size rows and a non-float column whose values are all distinct
      (a key with nearly a row per person). The screen's rows are keyed by class, level, lag and sex
      together, so no single column of it is distinct.
    """
    if cohort is None or frame.height == 0:
        return None
    keyed = [n for n, t in frame.schema.items() if t.is_integer() or t == pl.String]
    if not cohort.ids_dense:
        for name in keyed:
            distinct = frame[name].drop_nulls().cast(pl.String).unique()
            # The table's few distinct values looked up in the cohort's set: no structure of the cohort's size
            # is built per column (that took minutes at export for a national cohort).
            matches = sum(value in cohort.ids for value in distinct.to_list())
            if matches >= min_cell and matches >= PERSON_ID_SHARE * distinct.len():
                row = _first_row(frame, name, cohort.ids)
                return f"column {name!r} holds {matches} person ids of the cohort (first at data row {row})"
    else:
        log.info("person ids are dense integers: the id-matching rule cannot tell them from counts; not applied")
    if frame.height >= PER_PERSON_ROW_SHARE * cohort.n_persons:
        for name in keyed:
            if frame[name].n_unique() == frame.height:
                return (
                    f"{frame.height} rows for a cohort of {cohort.n_persons} persons, with distinct values in "
                    f"column {name!r}: a row per person"
                )
    return None


def check_content(frame: pl.DataFrame, name: str, cohort: Cohort | None, min_cell: int) -> None:
    """Refuse (ExportRefused naming the file and column) identifier/date names, date values, a row per person."""
    identifiers = named_refusals(frame.columns)
    if identifiers:
        raise ExportRefused(
            f"{name} has person-identifier or date column(s) {identifiers} (names or aliases in the data "
            "dictionary): person-level, not exported"
        )
    dates = date_columns(frame)
    if dates:
        raise ExportRefused(f"{name} has column(s) of dates {dates}: dates of persons are never exported")
    reason = per_person_reason(frame, cohort, min_cell)
    if reason:
        raise ExportRefused(f"{name} is a table with a row per person ({reason}); not exported")


def _protected(frame: pl.DataFrame, min_cell: int) -> tuple[pl.DataFrame, list[str]]:
    """The frame with suppressed counts (numeric), and its count columns."""
    counts = person_count_columns(frame.columns) + (["n"] if "n" in frame.columns else [])
    frame = parse_display(frame, counts)
    return suppress_small_counts(frame, counts, min_cell, **SCREEN_RULES), counts


def export_table(source: Path, target: Path, min_cell: int, cohort: Cohort | None = None) -> int:
    """Copy one CSV/Parquet table after the content checks, with disclosure control re-applied; return its
    row count."""
    frame = _read_table(source)
    check_content(frame, str(source), cohort, min_cell)
    released, counts = _protected(frame, min_cell)
    left = small_counts_left(released, counts, min_cell)
    if left:
        raise ExportRefused(f"{source} still holds counts from 1 to {min_cell - 1} in {left}; not exported")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".parquet":
        released.write_parquet(target)
    else:
        for_display(released, counts, min_cell).write_csv(target)
    return released.height


# --------------------------------------------------------------------------------------------------
# Provenance: only the current run's outputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """The run an export belongs to: the report's provenance (its run id, when it was built, what it read)."""

    path: Path
    run_id: str
    created: float  # POSIX seconds of the provenance record (end of the report job)
    build_seconds: float
    recorded: dict[str, str]  # resolved path of each file the report read -> its SHA-256 then

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        """Read report/provenance.json; refuse when it is missing (no finished run to export)."""
        path = Path(path)
        if not path.is_file():
            raise ExportRefused(
                f"{path} is missing: there is no finished run to export (the export only releases the outputs "
                "of the run whose report wrote this file)"
            )
        record = json.loads(path.read_text(encoding="utf-8"))
        created = datetime.strptime(record["created_utc"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
        recorded = {str(Path(f["path"]).resolve()): f["sha256"] for f in record.get("inputs", []) if "sha256" in f}
        return cls(
            path=path,
            run_id=str(record.get("run_id") or f"report-{record['created_utc']}"),
            created=created,
            build_seconds=float(record.get("report_build_seconds") or 0.0),
            recorded=recorded,
        )


def same_job_anchors(results_dir: str | Path) -> dict[str, str]:
    """Results-relative path -> the file written by the same job that the report reads (or its provenance)."""
    paths = results_layout(results_dir)
    root = Path(results_dir)

    def rel(p: str) -> str:
        return relative_name(Path(p), root)

    return {
        rel(paths.dwas_csv()): rel(paths.dwas()),
        rel(paths.screen_disclosure()): rel(paths.dwas()),
        rel(paths.candidates_readme()): rel(paths.drug_ranking()),
        rel(paths.substance_targets()): rel(paths.mechanism_ranking()),
        **{rel(paths.persistence_table(name)): rel(paths.persistence_html()) for name in PERSISTENCE_TABLES},
        **{rel(paths.trial_emulation_table(name)): rel(paths.trial_emulation_html()) for name in TRIAL_EMULATION_TABLES},
    }


def _written_by_report(name: str, results_dir: Path) -> bool:
    paths = results_layout(results_dir)
    report = [relative_name(Path(paths.report_html()), results_dir), relative_name(Path(paths.report_table()), results_dir)]
    return any(fnmatch.fnmatch(name, pattern.replace("{name}", "*")) for pattern in report)


def current_run_files(paths: list[Path], results_dir: Path, run: RunRecord) -> dict[Path, str]:
    """How each path is known to be an output of `run` (for the manifest); refuse any other file."""
    anchors = same_job_anchors(results_dir)
    verified: dict[Path, str] = {}
    for path in paths:
        name = relative_name(path, results_dir)
        resolved = str(path.resolve())
        modified = path.stat().st_mtime
        if resolved in run.recorded:
            if sha256_file(path) != run.recorded[resolved]:
                raise ExportRefused(
                    f"{path} changed after the report of run {run.run_id} read it (a later run that did not "
                    "finish?): not an output of the current run; rerun the pipeline to the report"
                )
            verified[path] = "checksum recorded by the report"
        elif _written_by_report(name, results_dir):
            earliest = run.created - run.build_seconds - CLOCK_SLACK_SECONDS
            if not earliest <= modified <= run.path.stat().st_mtime + CLOCK_SLACK_SECONDS:
                raise ExportRefused(
                    f"{path} was not written by the report job of run {run.run_id} (written "
                    f"{datetime.fromtimestamp(modified, UTC):%Y-%m-%d %H:%M:%S}, report built "
                    f"{datetime.fromtimestamp(run.created, UTC):%Y-%m-%d %H:%M:%S} UTC): a stale file"
                )
            verified[path] = "written by the report job"
        elif name in anchors and str((results_dir / anchors[name]).resolve()) in run.recorded:
            anchor = results_dir / anchors[name]
            if abs(modified - anchor.stat().st_mtime) > SAME_JOB_SECONDS:
                raise ExportRefused(
                    f"{path} was not written with {anchor} (more than {SAME_JOB_SECONDS:.0f} s apart): a stale "
                    f"file from another run, not an output of run {run.run_id}"
                )
            verified[path] = f"written with {anchors[name]}"
        else:
            raise ExportRefused(
                f"{path} is not an output of the current run's DAG (neither read nor written by the report "
                f"of run {run.run_id}, nor written with a file it read); not exported"
            )
    return verified


def collect_sources(results_dir: str | Path, patterns: tuple[str, ...] = AGGREGATE_OUTPUTS) -> list[Path]:
    """The existing aggregate outputs under `results_dir`, sorted."""
    results_dir = Path(results_dir)
    return sorted({p for pattern in patterns for p in results_dir.glob(pattern) if p.is_file()})


# --------------------------------------------------------------------------------------------------
# The export
# --------------------------------------------------------------------------------------------------


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "sha256", "bytes", "rows", "run_id", "provenance"])
        writer.writeheader()
        writer.writerows(entries)


@stage(reads=("disclosure",))
def export_results(
    config: dict[str, Any],
    *,
    results_dir: str | Path,
    export_dir: str | Path,
    manifest: str | Path | None = None,
    sources: list[str | Path] | None = None,
) -> list[dict[str, Any]]:
    """Copy `sources` (the DAG passes exactly its declared aggregate outputs; default: every existing
    aggregate output under `results_dir`) into `export_dir`, mirroring the results layout, and write the
    manifest (default `export_dir/manifest.csv`). Every file passes the content checks and must belong to
    the current run (see the module docstring); the folder is built aside and renamed into place."""
    results_dir, out_dir = Path(results_dir), Path(export_dir)
    manifest_path = Path(manifest or out_dir / "manifest.csv")
    min_cell = int(config["disclosure"]["min_cell"])
    paths = [Path(p) for p in sources] if sources is not None else collect_sources(results_dir)
    refused = [str(p) for p in paths if is_person_level(relative_name(p, results_dir))]
    if refused:
        raise ExportRefused(f"person-level files are never exported: {refused}")
    unsupported = [str(p) for p in paths if p.suffix not in (".csv", ".parquet", ".html", ".md", ".png", ".svg")]
    if unsupported:
        raise ExportRefused(f"{unsupported}: only tables (CSV, Parquet), HTML, Markdown and images are exported")
    layout = results_layout(results_dir)
    cohort = Cohort.read(layout.cohort())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        built: list[tuple[str, Path, int | str]] = []
        for source in paths:
            name = relative_name(source, results_dir)
            target = staging / name
            rows: int | str = ""
            if source.suffix in (".csv", ".parquet"):
                rows = export_table(source, target, min_cell, cohort)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            built.append((name, source, rows))
        run = RunRecord.read(layout.report_provenance())
        verified = current_run_files(paths, results_dir, run)
        entries = [
            {"file": name, "sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size,
             "rows": rows, "run_id": run.run_id, "provenance": verified[source]}
            for name, source, rows in built
        ]  # fmt: skip
        inside = manifest_path.resolve().is_relative_to(out_dir.resolve())
        if inside:
            _write_manifest(staging / manifest_path.resolve().relative_to(out_dir.resolve()), entries)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an export is rebuilt whole, so nothing stale rides along
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)  # no export of an earlier run is left to pass for this one
        raise
    if not inside:
        _write_manifest(manifest_path, entries)
    log.info("export: %d files of run %s to %s (manifest %s)", len(entries), run.run_id, out_dir, manifest_path)
    return entries
