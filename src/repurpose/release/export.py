"""The export folder: the only files meant to leave the secure server, with a manifest of checksums.

`export_results` copies aggregate outputs (the screen, the candidate rankings, the report and its
summary tables) from `results/` to `results/export/`, passing every table once more through
`repurpose.release.disclosure.suppress_small_counts` and then checking that no disclosive count is left. It
refuses, with an error naming the file, anything person-level: the files the pipeline knows to be
person-level (validated extracts, rejects, cohort, exposure, raw screen parts, simulated registries)
and any table with a person-identifier column. `manifest.csv` lists file, SHA-256, bytes and rows.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.layout import AGGREGATE_OUTPUTS, PERSON_LEVEL
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

# Column names that identify persons (canonical and the data dictionary's aliases).
IDENTIFIER_COLUMNS = frozenset({"person_id", "lopenr", "løpenr", "pid", "personid", "fnr", "fodselsnummer"})


class ExportRefused(ValueError):
    """A file asked for export is person-level or still holds a disclosive count; nothing was exported."""


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


def _protected(frame: pl.DataFrame, min_cell: int) -> tuple[pl.DataFrame, list[str]]:
    """The frame with suppressed counts (numeric), and its count columns."""
    counts = person_count_columns(frame.columns) + (["n"] if "n" in frame.columns else [])
    frame = parse_display(frame, counts)
    return suppress_small_counts(frame, counts, min_cell, **SCREEN_RULES), counts


def export_table(source: Path, target: Path, min_cell: int) -> int:
    """Copy one CSV/Parquet table with disclosure control re-applied; return its row count."""
    frame = _read_table(source)
    identifiers = sorted(c for c in frame.columns if c.lower() in IDENTIFIER_COLUMNS)
    if identifiers:
        raise ExportRefused(f"{source} has person-identifier column(s) {identifiers}: person-level, not exported")
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


def collect_sources(results_dir: str | Path, patterns: tuple[str, ...] = AGGREGATE_OUTPUTS) -> list[Path]:
    """The existing aggregate outputs under `results_dir`, sorted."""
    results_dir = Path(results_dir)
    return sorted({p for pattern in patterns for p in results_dir.glob(pattern) if p.is_file()})


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
    manifest (default `export_dir/manifest.csv`)."""
    results_dir, out_dir = Path(results_dir), Path(export_dir)
    manifest_path = Path(manifest or out_dir / "manifest.csv")
    min_cell = int(config["disclosure"]["min_cell"])
    paths = [Path(p) for p in sources] if sources is not None else collect_sources(results_dir)
    refused = [str(p) for p in paths if is_person_level(relative_name(p, results_dir))]
    if refused:
        raise ExportRefused(f"person-level files are never exported: {refused}")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an export is rebuilt whole, so nothing stale rides along
    out_dir.mkdir(parents=True)
    entries = []
    for source in paths:
        name = relative_name(source, results_dir)
        target = out_dir / name
        rows: int | str = ""
        if source.suffix in (".csv", ".parquet"):
            rows = export_table(source, target, min_cell)
        elif source.suffix in (".html", ".md", ".png", ".svg"):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        else:
            raise ExportRefused(f"{source}: only tables (CSV, Parquet), HTML, Markdown and images are exported")
        entries.append({"file": name, "sha256": sha256_file(target), "bytes": target.stat().st_size, "rows": rows})
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "sha256", "bytes", "rows"])
        writer.writeheader()
        writer.writerows(entries)
    log.info("export: %d files to %s (manifest %s)", len(entries), out_dir, manifest_path)
    return entries
