"""ATC code helpers and ATC name/DDD catalogs.

The WHO Anatomical Therapeutic Chemical (ATC) classification has five levels; a code's level is given by
its length (A, A10, A10B, A10BA, A10BA02). The screen aggregates dispensings to levels 1-5, so it needs
the level and parents of a code, and names for the report. Names come either from the user's licensed
WHO ATC/DDD index (`read_who_atc_index`) or, when none is configured, from the package's own catalog of
several hundred common substances (`load_builtin_catalog`).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import polars as pl

ATC_LEVEL_CODE_LENGTH: dict[int, int] = {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}
"""Length of an ATC code at each level (level -> number of characters)."""

ANATOMICAL_GROUPS: list[str] = ["A", "B", "C", "D", "G", "H", "J", "L", "M", "N", "P", "R", "S", "V", "other"]
"""The 14 anatomical main groups of the WHO ATC (first letter of a code), plus `other` for any other letter."""


def anatomical_group_filter(group: str) -> pl.Expr:
    """Polars filter on `atc_code` selecting one anatomical main group (`all` selects every code)."""
    first_letter = pl.col("atc_code").str.slice(0, 1)
    if group == "all":
        return pl.lit(True)
    if group == "other":
        return ~first_letter.is_in(ANATOMICAL_GROUPS[:-1])
    if group not in ANATOMICAL_GROUPS:
        raise ValueError(f"unknown anatomical group {group!r}; expected one of {ANATOMICAL_GROUPS} or 'all'")
    return first_letter == group


CODE_LENGTH_ATC_LEVEL: dict[int, int] = {length: level for level, length in ATC_LEVEL_CODE_LENGTH.items()}

LEVEL5_PATTERN = re.compile(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$")
"""A well-formed level-5 (chemical substance) ATC code, e.g. N06AB06."""

_PREFIX_PATTERN = re.compile(r"^[A-Z](?:[0-9]{2}(?:[A-Z](?:[A-Z](?:[0-9]{2})?)?)?)?$")

CATALOG_SCHEMA: dict[str, pl.DataType] = {
    "atc_code": pl.Utf8(),
    "atc_name": pl.Utf8(),
    "atc_level": pl.Int8(),
    "ddd": pl.Float64(),
    "ddd_unit": pl.Utf8(),
    "adm_route": pl.Utf8(),
}
"""Columns (and dtypes) of every ATC catalog returned by this module."""

WHO_COLUMNS = ("ATC code", "ATC level name", "DDD", "Unit", "Adm.R")
"""Columns the WHO ATC/DDD index CSV must have (a trailing `Comment` column is optional)."""

ORAL_ROUTE = "O"


def atc_level(code: str) -> int:
    """Return the ATC level (1-5) of `code`; raise ValueError if it is not a well-formed ATC code."""
    if not isinstance(code, str) or not _PREFIX_PATTERN.match(code) or len(code) not in CODE_LENGTH_ATC_LEVEL:
        raise ValueError(f"not a well-formed ATC code: {code!r}")
    return CODE_LENGTH_ATC_LEVEL[len(code)]


def atc_parent(code: str, level: int) -> str:
    """Return the ancestor of `code` at `level` (1-5); the code itself when `level` equals its own level."""
    own_level = atc_level(code)
    if level not in ATC_LEVEL_CODE_LENGTH:
        raise ValueError(f"ATC level must be 1-5, got {level!r}")
    if level > own_level:
        raise ValueError(f"{code} is a level-{own_level} code and has no level-{level} parent")
    return code[: ATC_LEVEL_CODE_LENGTH[level]]


def _level_from_code_length(codes: pl.Expr) -> pl.Expr:
    """Polars expression: ATC level from code length (null for lengths that are no ATC level)."""
    return codes.str.len_chars().replace_strict(CODE_LENGTH_ATC_LEVEL, default=None, return_dtype=pl.Int8)


def load_builtin_catalog() -> pl.DataFrame:
    """Return the package's own ATC catalog (levels 1-5, real WHO codes and names, DDD where known)."""
    source = resources.files("repurpose").joinpath("data/atc_catalog.csv")
    with source.open("rb") as handle:
        catalog = pl.read_csv(handle.read(), schema_overrides={"atc_code": pl.Utf8, "ddd": pl.Float64})
    return catalog.select(pl.col(name).cast(dtype) for name, dtype in CATALOG_SCHEMA.items())


def read_who_atc_index(path: str | Path) -> pl.DataFrame:
    """Read a WHO ATC/DDD index CSV (`ATC code,ATC level name,DDD,Unit,Adm.R,Comment`) into catalog columns.

    The WHO file has one row per code and DDD/route; we keep one row per code: its first name and, for
    the DDD, the oral route when the code has one (the route most dispensings are), else its first DDD.
    """
    path = Path(path)
    raw_bytes = path.read_bytes()
    try:  # the WHO download is UTF-8; a copy re-saved by a spreadsheet may be Latin-1
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw_bytes.decode("latin-1")
    content = text.encode("utf-8")
    header = pl.read_csv(content, n_rows=0, infer_schema=False).columns
    missing = [column for column in WHO_COLUMNS if column not in header]
    if missing:
        raise ValueError(
            f"{path} is not a WHO ATC/DDD index: missing column(s) {missing}; "
            f"expected the header {','.join(WHO_COLUMNS)},Comment but found {','.join(header)}"
        )
    raw = pl.read_csv(content, infer_schema=False, columns=list(WHO_COLUMNS)).rename(
        {
            "ATC code": "atc_code",
            "ATC level name": "atc_name",
            "DDD": "ddd",
            "Unit": "ddd_unit",
            "Adm.R": "adm_route",
        }
    )
    raw = raw.with_columns(
        pl.col("atc_code").str.strip_chars().str.to_uppercase(),
        pl.col("atc_name").str.strip_chars(),
        pl.col("ddd").str.strip_chars().str.replace(",", ".").cast(pl.Float64, strict=False),
        pl.col("ddd_unit").str.strip_chars(),
        pl.col("adm_route").str.strip_chars(),
        pl.int_range(pl.len()).alias("_row"),
    ).filter(pl.col("atc_code").is_not_null() & (pl.col("atc_code") != ""))
    names = raw.group_by("atc_code", maintain_order=True).agg(pl.col("atc_name").drop_nulls().first())
    dose_rows = (
        raw.filter(pl.col("ddd").is_not_null())
        .sort(pl.col("adm_route") != ORAL_ROUTE, "_row", nulls_last=True)
        .group_by("atc_code", maintain_order=True)
        .first()
        .select("atc_code", "ddd", "ddd_unit", "adm_route")
    )
    catalog = names.join(dose_rows, on="atc_code", how="left", maintain_order="left").with_columns(
        _level_from_code_length(pl.col("atc_code")).alias("atc_level")
    )
    return catalog.select(pl.col(name).cast(dtype) for name, dtype in CATALOG_SCHEMA.items())


def load_atc_names(path: str | Path | None) -> pl.DataFrame:
    """Return the ATC catalog to name codes with: the WHO index at `path` if given, else the builtin one."""
    if path is None:
        return load_builtin_catalog()
    return read_who_atc_index(path)
