"""Disclosure control applied at every export boundary: small counts never leave the secure server.

The policy of a run is `DisclosurePolicy` (`repurpose.release.policy`: minimum cell, rounding base). Tables
with estimates go through the row-level release of `repurpose.release.screen_release` (`release_screen`
for the screen and the site package's fits, `release_ranking` for the drug ranking): an estimate reveals
its counts, so whole rows are hidden. Tables of counts alone (validation, cohort flow, exposure
prevalence, report summaries) go through `release_counts`: `suppress_small_counts` below, then rounding.

`suppress_small_counts` (also the export gate's re-check):

1. primary suppression: a count from 1 to `min_cell - 1` is nulled. Zero is not disclosive and is kept;
2. complements within a row (`complements=[(total, part)]`): when `total - part` is disclosive, `part`
   is nulled, so that e.g. n_cases - n_exposed_cases cannot reveal a small count of unexposed cases;
3. complements across rows (`partitions=[Partition(by, part_column, total_value)]`): within each group
   the row whose `part_column` equals `total_value` is the sum of the other rows (sex strata F + M = all;
   cohort-flow steps; rejects per reason). When exactly one part is hidden and the total is shown, the
   smallest other non-zero part is hidden too (the total when no such part exists); when the total is
   hidden (e.g. linked to a hidden cell of another table) and every part shown, the smallest is hidden;
4. derived columns (`derived={column: [counts]}`): a percentage, person-years or any value computed
   from a count is nulled wherever one of its counts is suppressed.
Steps 2-3 repeat until nothing changes. Suppressed cells are null in Parquet and shown as `<min_cell`
in CSV and HTML (`for_display`; `text_rows` for a report page's tables) whether hidden for being small or
for revealing a small cell: one marker, so that the marker itself tells nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from repurpose.release.audit import Equation, pinned_rows
from repurpose.release.policy import DisclosurePolicy, round_counts, round_person_years
from repurpose.release.screen_release import release_ranking, release_screen, release_summary

__all__ = [
    "DisclosurePolicy",
    "Partition",
    "SCREEN_RULES",
    "disclosure_table",
    "for_display",
    "mask_counts_in_text",
    "parse_display",
    "release_counts",
    "release_linked",
    "release_ranking",
    "release_screen",
    "release_summary",
    "round_counts",
    "round_person_years",
    "small_counts_left",
    "suppress_small_counts",
    "text_rows",
]

# Columns named n_* that count drug classes or iterations, not persons or events.
NON_PERSON_COUNTS = frozenset({"n_iter", "n_substances", "n_atc3_classes", "n_classes", "n_targets", "n_clinic_groups"})


@dataclass(frozen=True)
class Partition:
    """Rows of one group (same values of `by`) where the `total_value` row is the sum of the others.

    `unreleased_parts` are parts the caller never releases (a complement kept only so that its smallness is
    checked): when a second cell must be hidden, one of them goes first, at no cost to what is shown."""

    by: tuple[str, ...]
    part_column: str
    total_value: str
    unreleased_parts: tuple[str, ...] = ()


# The screen's sex strata: F + M = all within each class x level x lag.
SEX_STRATA = Partition(by=("atc_code", "atc_level", "lag_years"), part_column="sex", total_value="all")


def is_small(column: str, min_cell: int) -> pl.Expr:
    """True where a count is disclosive (1 <= count < min_cell)."""
    return (pl.col(column) >= 1) & (pl.col(column) < min_cell)


def person_count_columns(columns: Iterable[str]) -> list[str]:
    """The columns that count persons or events by naming convention (n_*), for files of unknown layout."""
    return [c for c in columns if c.startswith("n_") and c not in NON_PERSON_COUNTS]


def _small(value: object, min_cell: int) -> bool:
    return value is not None and 1 <= value < min_cell  # type: ignore[operator]


def _suppress_within_rows(
    frame: pl.DataFrame, complements: Sequence[tuple[str, str]], min_cell: int
) -> pl.DataFrame:
    """Null `part` where total - part is disclosive (both shown would reveal it)."""
    for total, part in complements:
        difference = pl.col(total) - pl.col(part)
        revealing = (difference >= 1) & (difference < min_cell)
        frame = frame.with_columns(
            pl.when(revealing.fill_null(False)).then(None).otherwise(pl.col(part)).alias(part)
        )
    return frame


def _suppress_across_rows(frame: pl.DataFrame, partition: Partition, count_columns: Sequence[str]) -> pl.DataFrame:
    """Hide a second cell in every group where exactly one part is hidden and the total is shown."""
    if partition.part_column not in frame.columns or not all(c in frame.columns for c in partition.by):
        return frame
    keys = list(partition.by)
    columns = {c: frame[c].to_list() for c in count_columns}
    roles = frame[partition.part_column].cast(pl.String).to_list()
    groups = frame.select(keys).with_row_index("_row").group_by(keys, maintain_order=True).agg("_row")
    for rows in groups["_row"].to_list():
        totals = [i for i in rows if roles[i] == partition.total_value]
        parts = [i for i in rows if roles[i] != partition.total_value]
        if len(totals) != 1 or not parts:
            continue
        total = totals[0]
        for c in count_columns:
            shown = columns[c]

            def victim_order(i: int, shown: list = shown) -> tuple[bool, float]:
                return roles[i] not in partition.unreleased_parts, shown[i]

            hidden = [i for i in parts if shown[i] is None]  # suppressed here or upstream (or missing: safe side)
            if shown[total] is None and not hidden:  # a hidden total is the sum of its shown parts
                others = [i for i in parts if shown[i] is not None and shown[i] > 0]
                if others:
                    shown[min(others, key=victim_order)] = None
                continue
            if shown[total] is None or len(hidden) != 1:
                continue
            others = [i for i in parts if shown[i] is not None and shown[i] > 0]
            victim = min(others, key=victim_order) if others else total
            shown[victim] = None
    return frame.with_columns([pl.Series(c, v, dtype=frame.schema[c]) for c, v in columns.items()])


def suppress_small_counts(
    frame: pl.DataFrame,
    count_columns: Iterable[str],
    min_cell: int,
    *,
    complements: Sequence[tuple[str, str]] = (),
    partitions: Sequence[Partition] = (),
    derived: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Null every disclosive count in `count_columns` and every cell that would reveal one (module doc)."""
    count_columns = [c for c in count_columns if c in frame.columns]
    out = frame.with_columns(
        [pl.when(is_small(c, min_cell)).then(None).otherwise(pl.col(c)).alias(c) for c in count_columns]
    )
    complements = [(t, p) for t, p in complements if t in out.columns and p in out.columns]
    for _ in range(20):  # each pass hides at least one more cell or stops; few passes in practice
        before = out.select(pl.col(count_columns).null_count()).row(0) if count_columns else ()
        out = _suppress_within_rows(out, complements, min_cell)
        for partition in partitions:
            out = _suppress_across_rows(out, partition, count_columns)
        after = out.select(pl.col(count_columns).null_count()).row(0) if count_columns else ()
        if after == before:
            break
    for column, sources in (derived or {}).items():
        sources = [s for s in sources if s in out.columns]
        if column not in out.columns or not sources:
            continue
        hidden = pl.any_horizontal([pl.col(s).is_null() for s in sources])
        out = out.with_columns(pl.when(hidden).then(None).otherwise(pl.col(column)).alias(column))
    return out


def parse_display(frame: pl.DataFrame, count_columns: Iterable[str]) -> pl.DataFrame:
    """Inverse of `for_display`: count columns read from CSV as text (`<5`) back to integers with nulls."""
    return frame.with_columns(
        [pl.col(c).cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False).alias(c)
         for c in count_columns if c in frame.columns and frame[c].dtype == pl.String]
    )  # fmt: skip


def for_display(frame: pl.DataFrame, count_columns: Iterable[str], min_cell: int) -> pl.DataFrame:
    """Counts as text with suppressed cells (null) shown as `<min_cell`, for CSV and HTML."""
    return frame.with_columns(
        [pl.col(c).cast(pl.String).fill_null(f"<{min_cell}").alias(c) for c in count_columns if c in frame.columns]
    )


COUNT_NOUNS = r"(?:persons?|people|patients?|individuals?|cases?|users?|controls?|events?|rows?|deaths?|eligible|clones?)"
"""Words after which a number in free text (a log message) counts persons or their records."""
COUNTED = re.compile(
    rf"(?<![\w.,])(?P<n>\d{{1,3}}(?:,\d{{3}})+|\d+)(?![\d.,]\d)(?=(?:\s+of\s+\S+)?(?:\s+\w+){{0,2}}?\s+{COUNT_NOUNS}\b)",
    re.IGNORECASE,
)
"""A count in free text: a number followed, possibly after "of <total>" and up to two words, by a COUNT_NOUNS word."""
COUNT_IS = re.compile(r"\bn\s*=\s*(?P<n>\d+)\b", re.IGNORECASE)
"""A count written as "n = k"."""


def mask_counts_in_text(text: str, policy: DisclosurePolicy) -> str:
    """Free text (a run's warning) with every count of persons or records (a number followed, possibly after
    "of the ..." words, by a COUNT_NOUNS word, or "n = k") released as a table's count would be: below the
    minimum cell as `<min_cell`, otherwise rounded to the policy's base ("about 1,235"), so that no exact count
    sits beside the rounded tables. 0 stays, and numbers that count other things (ATC levels, classes, lags) stay."""

    def masked(match: re.Match[str]) -> str:
        value = int(match["n"].replace(",", ""))
        if value == 0:
            return match[0]
        shown = f"<{policy.min_cell}" if policy.is_small(value) else f"about {policy.round_count(value):,}"
        return match[0].replace(match["n"], shown, 1)

    return COUNT_IS.sub(masked, COUNTED.sub(masked, text))


def text_rows(frame: pl.DataFrame, min_cell: int, hidden: str | None = None) -> tuple[list[str], list[list[str]]]:
    """A released table as header and text rows for a report page: numbers to 3 significant digits, a suppressed
    cell (null) as `<min_cell`; with `hidden`, a null outside the count columns (`n_*`: an estimate hidden with
    its row, not a small count) as that word instead."""
    text = []
    for row in frame.iter_rows():
        cells = []
        for column, value in zip(frame.columns, row, strict=True):
            if value is None:
                cells.append(f"<{min_cell}" if hidden is None or column.startswith("n_") else hidden)
            elif isinstance(value, float):
                cells.append(f"{value:.3g}")
            else:
                cells.append(str(value))
        text.append(cells)
    return frame.columns, text


def small_counts_left(frame: pl.DataFrame, count_columns: Iterable[str], min_cell: int) -> dict[str, int]:
    """Number of disclosive values per column (an export gate: must be empty)."""
    found: dict[str, int] = {}
    for c in count_columns:
        if c not in frame.columns:
            continue
        values = frame[c]
        if values.dtype == pl.String:
            values = values.str.strip_chars().cast(pl.Float64, strict=False)
        n = int(((values >= 1) & (values < min_cell)).sum() or 0)
        if n:
            found[c] = n
    return found


# The rules for any table with the screen's columns (dwas, the candidate rankings' per-stratum rows):
# unexposed cases and unexposed persons are complements, F + M = all, and person-years reveal n_exposed.
SCREEN_RULES: dict = {
    "complements": [("n_cases", "n_exposed_cases"), ("n_persons", "n_exposed")],
    "partitions": [SEX_STRATA],
    "derived": {"person_years_exposed": ["n_exposed"]},
}


def release_counts(
    frame: pl.DataFrame,
    count_columns: Iterable[str],
    policy: DisclosurePolicy,
    *,
    complements: Sequence[tuple[str, str]] = (),
    partitions: Sequence[Partition] = (),
    derived: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """A table of counts without estimates as released: `suppress_small_counts`, then every count rounded.

    Suppression decides on the exact counts; rounding comes after, so that the difference of two released
    tables that overlap (a lag, a stratum, a flow step) is an interval, not a count. Derived values follow
    (`derived` columns are nulled with their counts; the caller recomputes percentages from released counts).
    """
    count_columns = [c for c in count_columns if c in frame.columns]
    out = suppress_small_counts(
        frame, count_columns, policy.min_cell, complements=complements, partitions=partitions, derived=derived
    )
    return round_counts(out, count_columns, policy.rounding_base)


def disclosure_table(summary: Mapping[str, Any]) -> pl.DataFrame:
    """The policy and rows hidden per reason (`release_summary`) as a two-column text table (item, value)."""
    items = [(key, str(value)) for key, value in summary.items() if key not in ("rules", "rows_hidden")]
    items += [(f"rows hidden: {reason}", str(n)) for reason, n in summary.get("rows_hidden", {}).items()]
    items += [(f"rule {k + 1}", rule) for k, rule in enumerate(summary.get("rules", []))]
    return pl.DataFrame(items, schema={"item": pl.String, "value": pl.String}, orient="row")


def release_linked(
    frame: pl.DataFrame,
    policy: DisclosurePolicy,
    *,
    partitions: Sequence[Partition],
    links: Sequence[Sequence[tuple[str, str]]],
    key: tuple[str, str] = ("table", "item"),
    count_column: str = "n",
) -> pl.DataFrame:
    """A long table of counts (one count per `key` row) released as ONE structure across its sub-tables.

    `links` are groups of rows that hold the same count in different sub-tables (the validation's accepted
    persons and the cohort flow's total; the events and the exit reason `outcome`): hiding one hides all of
    them, and the partitions are applied again until nothing changes. Then every count is rounded, and the
    result is audited (`repurpose.release.audit`): while a reader who adds and subtracts every partition and
    link would pin a small count, one more cell beside it is hidden and the whole is released again.
    """
    keys = [tuple(k) for k in frame.select(key).iter_rows()]
    position = {k: i for i, k in enumerate(keys)}
    groups = [[position[k] for k in group if k in position] for group in links]
    exact = frame[count_column].to_list()
    unreleased, equations = _structure(frame, partitions, groups)
    out = frame
    while True:
        out = suppress_small_counts(out, [count_column], policy.min_cell, partitions=partitions)
        values = out[count_column].to_list()
        changed = False
        for rows in groups:
            if any(values[i] is None for i in rows) and not all(values[i] is None for i in rows):
                for i in rows:
                    values[i] = None
                changed = True
        if not changed:  # the audit: a reader adding and subtracting every released sum pins no small count
            rounded = round_counts(out, [count_column], policy.rounding_base)[count_column].to_list()
            pinned = pinned_rows(exact, rounded, unreleased, equations, policy.min_cell, policy.rounding_base)
            if not pinned:
                return round_counts(out, [count_column], policy.rounding_base)
            values = _hide_one_more(values, pinned, equations, unreleased)
        out = out.with_columns(pl.Series(count_column, values, dtype=frame.schema[count_column]))


def _structure(frame: pl.DataFrame, partitions: Sequence[Partition],
               groups: Sequence[Sequence[int]]) -> tuple[list[bool], list[Equation]]:  # fmt: skip
    """Which rows are never released (a partition's `unreleased_parts`) and the equations a reader knows:
    each partition group's total minus its parts is zero, and linked rows are equal."""
    unreleased = [False] * frame.height
    equations: list[Equation] = []
    for partition in partitions:
        if partition.part_column not in frame.columns or not all(c in frame.columns for c in partition.by):
            continue
        roles = frame[partition.part_column].cast(pl.String).to_list()
        for i, role in enumerate(roles):
            unreleased[i] = unreleased[i] or role in partition.unreleased_parts
        by_group = frame.select(list(partition.by)).with_row_index("_row").group_by(list(partition.by), maintain_order=True).agg("_row")
        for rows in by_group["_row"].to_list():
            totals = [i for i in rows if roles[i] == partition.total_value]
            if len(totals) == 1 and len(rows) > 1:
                equations.append([(1, totals[0])] + [(-1, i) for i in rows if i != totals[0]])
    equations += [[(1, rows[0]), (-1, other)] for rows in groups for other in rows[1:]]
    return unreleased, equations


def _hide_one_more(values: list, pinned: Sequence[int], equations: Sequence[Equation], unreleased: Sequence[bool]) -> list:
    """Hide, for the first pinned row, the smallest shown positive count that shares an equation with it."""
    row = pinned[0]
    candidates = {i for equation in equations if any(r == row for _, r in equation) for _, i in equation}
    shown = [i for i in candidates if i != row and not unreleased[i] and values[i] is not None and values[i] > 0]
    if not shown:  # nothing left to hide beside it: hide every shown count of its equations
        shown = [i for i in candidates if values[i] is not None]
        for i in shown:
            values[i] = None
        return values
    values[min(shown, key=lambda i: values[i])] = None
    return values
