"""Disclosure control applied at every export boundary: small counts never leave the secure server.

A count from 1 to `min_cell - 1` is suppressed (null in Parquet, shown as `<min_cell` in CSV and the
report). Zero is not disclosive and is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl


def is_small(column: str, min_cell: int) -> pl.Expr:
    """True where a count is disclosive (1 <= count < min_cell)."""
    return (pl.col(column) >= 1) & (pl.col(column) < min_cell)


def suppress_small_counts(frame: pl.DataFrame, count_columns: Iterable[str], min_cell: int) -> pl.DataFrame:
    """Null every disclosive count in `count_columns`."""
    return frame.with_columns(
        [pl.when(is_small(c, min_cell)).then(None).otherwise(pl.col(c)).alias(c) for c in count_columns]
    )


def for_display(frame: pl.DataFrame, count_columns: Iterable[str], min_cell: int) -> pl.DataFrame:
    """Counts as text with suppressed cells (null) shown as `<min_cell`, for CSV and HTML."""
    return frame.with_columns(
        [pl.col(c).cast(pl.String).fill_null(f"<{min_cell}").alias(c) for c in count_columns]
    )
