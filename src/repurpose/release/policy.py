"""The disclosure policy of a run (from the `disclosure` config section) and the rounding of released counts.

One frozen object, `DisclosurePolicy`, carries everything the release functions need: the minimum cell
(counts from 1 to `min_cell - 1` never leave the server, nor any cell that would reveal one), the base to
which every released count is rounded, and the lag the complementary lag rule keeps first (the ranking's
main lag, then lag 0). `as_dict()` is what is stamped into `screen/disclosure.json`, the report and the
site package manifest. Imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

# The rules `release_screen` applies, in order (stamped with the policy so that a reader knows what was done).
SCREEN_RELEASE_RULES = (
    "primary: a fit row whose exposed cases, exposed non-cases, unexposed cases, unexposed persons or "
    "unexposed non-cases lie in [1, min_cell) is hidden whole (counts, person-years and estimates)",
    "complementary sex: F + M = all; when one sex row of a shown `all` is hidden the other is hidden too, "
    "and when `all` is hidden one sex row is hidden",
    "complementary lag: for every pair of shown lags of one class x sex whose exposed cases, exposed persons "
    "or exposed non-cases differ by 1 to min_cell - 1, one row is hidden: the main lag is kept first, then "
    "lag 0, then the shorter lag",
    "complementary tree: per lag x sex, a shown ancestor class is hidden when it differs from a shown "
    "descendant by 1 to min_cell - 1 exposed cases, persons or non-cases, or when a direct child is hidden "
    "and the ancestor minus its shown direct children is from 1 to min_cell - 1",
    "rounding: every released count that is not zero is rounded to the nearest multiple of rounding_base "
    "(halves up, never below one base); exposed person-years to whole years",
)


@dataclass(frozen=True)
class DisclosurePolicy:
    """What may leave the server: the minimum cell, the rounding base and the lags kept in preference."""

    min_cell: int = 5
    rounding_base: int = 5
    main_lag_years: float | None = None

    def __post_init__(self) -> None:
        if self.min_cell < 2:
            raise ValueError(f"disclosure.min_cell must be at least 2 (got {self.min_cell}): 1 suppresses nothing")
        if self.rounding_base < 1:
            raise ValueError(f"disclosure.rounding_base must be at least 1 (got {self.rounding_base})")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, main_lag_years: float | None = None) -> DisclosurePolicy:
        """The policy of the `disclosure` section; `main_lag_years` from the caller (the stages that know it).

        A rounding base from 2 to min_cell - 1 is raised to min_cell: released counts are then 0 or multiples of
        a base >= min_cell, so no difference of two of them lies in [1, min_cell) and re-checking a released
        table (the export gate) hides nothing more: the report, the export and the site package agree."""
        section = config["disclosure"]
        min_cell, base = int(section["min_cell"]), int(section.get("rounding_base", 5))
        return cls(
            min_cell=min_cell,
            rounding_base=base if base == 1 else max(base, min_cell),
            main_lag_years=None if main_lag_years is None else float(main_lag_years),
        )

    def as_dict(self) -> dict[str, Any]:
        """The policy as stamped into manifests and the report (JSON types only)."""
        return {
            "min_cell": self.min_cell,
            "rounding_base": self.rounding_base,
            "main_lag_years": self.main_lag_years,
            "rules": list(SCREEN_RELEASE_RULES),
        }

    def is_small(self, value: object) -> bool:
        """True for a count from 1 to min_cell - 1 (None and zero are not small)."""
        return value is not None and 1 <= value < self.min_cell  # type: ignore[operator]

    def round_count(self, value: int | None) -> int | None:
        """A count rounded to the base (halves up); zero stays zero and no other count goes below one base."""
        if value is None:
            return None
        value = int(value)
        if value <= 0 or self.rounding_base == 1:
            return value
        rounded = (2 * value + self.rounding_base) // (2 * self.rounding_base) * self.rounding_base
        return max(rounded, self.rounding_base)


def round_counts(frame: pl.DataFrame, columns: Iterable[str], rounding_base: int) -> pl.DataFrame:
    """Round every count of `columns` (nulls kept) to the base: halves up, zero kept, nothing below one base."""
    if rounding_base == 1:
        return frame
    base = int(rounding_base)
    expressions = []
    for column in columns:
        if column not in frame.columns:
            continue
        value = pl.col(column)
        rounded = ((2 * value + base) // (2 * base) * base).clip(lower_bound=base)
        out = pl.when(value.is_null()).then(None).when(value <= 0).then(value).otherwise(rounded)
        expressions.append(out.cast(frame.schema[column]).alias(column))
    return frame.with_columns(expressions) if expressions else frame


def round_person_years(frame: pl.DataFrame, columns: Iterable[str]) -> pl.DataFrame:
    """Person-years to whole years (a sum over few persons at full precision could reveal who they are)."""
    return frame.with_columns([pl.col(c).round(0).alias(c) for c in columns if c in frame.columns])
