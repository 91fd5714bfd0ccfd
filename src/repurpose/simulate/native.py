"""A registry-native copy of the canonical simulated extracts (semicolon CSV, Latin-1, Norwegian headers).

Owns: the native column names and formats, and the writer that exercises the pipeline's column maps,
separators, encodings and date formats. Imports polars and pyarrow only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# fmt: off
NATIVE_COLUMNS: dict[str, dict[str, str]] = {
    "population": {
        "person_id": "løpenr", "sex": "kjønn", "birth_year": "fødselsår", "birth_month": "fødselsmåned",
        "death_date": "dødsdato", "emigration_date": "utvandringsdato", "education": "utdanning",
    },
    "prescriptions": {
        "person_id": "løpenr", "dispense_date": "utleveringsdato", "atc_code": "atckode", "ddd": "ddd",
        "reimbursement_code": "refusjonskode",
    },
    "ms_registry": {
        "person_id": "løpenr", "onset_date": "debutdato", "diagnosis_date": "diagnosedato",
        "clinic_id": "klinikk", "country": "land", "ms_course_at_diagnosis": "forløp",
        "edss_at_diagnosis": "edss_ved_diagnose",
    },
}
# fmt: on
NATIVE_DATE_FORMAT = "%d.%m.%Y"
NATIVE_SEPARATOR = ";"
NATIVE_ENCODING = "latin-1"
NATIVE_SEX_CODES: dict[str, int] = {"M": 1, "F": 2}
"""Statistics Norway sex coding: 1 = male, 2 = female."""


def _write_native_csv(frames: Iterable[pl.DataFrame], path: Path) -> None:
    """Write polars frames as one semicolon-separated Latin-1 CSV with dd.mm.yyyy dates."""
    with path.open("wb") as handle:
        for index, frame in enumerate(frames):
            text = frame.write_csv(
                separator=NATIVE_SEPARATOR, date_format=NATIVE_DATE_FORMAT, include_header=index == 0
            )
            handle.write(text.encode(NATIVE_ENCODING))


def _to_native(frame: pl.DataFrame, extract: str) -> pl.DataFrame:
    if extract == "population":
        frame = frame.with_columns(pl.col("sex").replace_strict(NATIVE_SEX_CODES, return_dtype=pl.Int8))
    # optional columns (the MS registry's clinic and country) are copied when the extract has them
    names = {c: n for c, n in NATIVE_COLUMNS[extract].items() if c in frame.columns}
    return frame.select(list(names)).rename(names)


def write_native_extracts(canonical_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Copy canonical simulated extracts into a registry-native layout, to exercise column maps.

    Writes `population.csv`, `prescriptions/resepter_{year}.csv` and `ms_registry.csv` (semicolon
    separated, Latin-1, Norwegian headers, dates dd.mm.yyyy, sex 1 = male / 2 = female). Returns
    `{"date_format", "sep", "encoding", "sex_codes", "columns": {extract: {canonical: native}},
    "inputs": {extract: {"path", "sep", "encoding", "date_format", "columns"}}}` where `inputs` can be
    pasted into a run configuration.
    """
    source = Path(canonical_dir)
    out = Path(out_dir)
    (out / "prescriptions").mkdir(parents=True, exist_ok=True)
    for stale in (out / "prescriptions").glob("resepter_*.csv"):
        stale.unlink()

    _write_native_csv(
        [_to_native(pl.read_parquet(source / "population.parquet"), "population")], out / "population.csv"
    )
    _write_native_csv(
        [_to_native(pl.read_parquet(source / "ms_registry.parquet"), "ms_registry")], out / "ms_registry.csv"
    )
    for part in sorted((source / "prescriptions").glob("dispensings_*.parquet")):
        year = part.stem.removeprefix("dispensings_")
        batches = pq.ParquetFile(part).iter_batches(batch_size=1_000_000)
        frames = (
            _to_native(pl.from_arrow(pa.Table.from_batches([batch])), "prescriptions") for batch in batches
        )
        _write_native_csv(
            _with_header_if_empty(frames, "prescriptions"), out / "prescriptions" / f"resepter_{year}.csv"
        )

    # the column maps name only the columns written (the registry's clinic columns are optional)
    registry_columns = set(pq.read_schema(source / "ms_registry.parquet").names)
    maps = {
        extract: {c: n for c, n in columns.items() if extract != "ms_registry" or c in registry_columns}
        for extract, columns in NATIVE_COLUMNS.items()
    }
    paths = {
        "population": str(out / "population.csv"),
        "prescriptions": str(out / "prescriptions"),
        "ms_registry": str(out / "ms_registry.csv"),
    }
    return {
        "date_format": NATIVE_DATE_FORMAT,
        "sep": NATIVE_SEPARATOR,
        "encoding": NATIVE_ENCODING,
        "sex_codes": {str(code): sex for sex, code in NATIVE_SEX_CODES.items()},
        "columns": maps,
        "inputs": {
            extract: {
                "path": paths[extract],
                "sep": NATIVE_SEPARATOR,
                "encoding": NATIVE_ENCODING,
                "date_format": NATIVE_DATE_FORMAT,
                "columns": dict(maps[extract]),
            }
            for extract in NATIVE_COLUMNS
        },
    }


def _with_header_if_empty(frames: Iterable[pl.DataFrame], extract: str) -> Iterator[pl.DataFrame]:
    """Yield the frames, or one empty frame with the native header when there are none."""
    produced = False
    for frame in frames:
        produced = True
        yield frame
    if not produced:
        yield pl.DataFrame({name: [] for name in NATIVE_COLUMNS[extract].values()})
