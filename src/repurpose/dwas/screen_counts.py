"""The screen's counting machinery, shared by its two fast paths (`repurpose.dwas.screen`'s exposure-only
`screen_binary` and `repurpose.dwas.screen_covariates`): the risk sets of a layout before exposure is known
(`StratumGrid`), the person-class rows laid out once per layout (`ExposedRows`), the exposed counts of a chunk of
classes at one lag in every risk set by a running sum (`count_exposed_chunk`), the sex groups fitted on a shared
layout, and the per-class counts and result rows. Owns no fitting. May import `repurpose.cox.result` and
`.risk_set_table`, `repurpose.dwas.risk_sets` and `.window`, and `repurpose.schemas`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from repurpose.cox.result import CoxFitResult, wald
from repurpose.cox.risk_set_table import concatenated_ranges, run_starts, segment_sums
from repurpose.dwas.risk_sets import CellLayout, RiskSetCounts
from repurpose.dwas.window import exposed_from
from repurpose.schemas import DAYS_PER_YEAR


@dataclass(frozen=True)
class ClassCounts:
    """Per class, at one lag and in one sex group: exposed persons, exposed cases, exposed person-years."""

    n_exposed: np.ndarray
    n_exposed_cases: np.ndarray
    person_years_exposed: np.ndarray


def classes_to_fit(counts: ClassCounts, min_exposed_cases: int) -> np.ndarray:
    """Fit number per class (in class order) of the classes with enough exposed cases; -1 for the others."""
    to_fit = np.flatnonzero((counts.n_exposed_cases >= min_exposed_cases) & (counts.n_exposed > 0))
    fit_of_class = np.full(counts.n_exposed.shape[0], -1)
    fit_of_class[to_fit] = np.arange(len(to_fit))
    return fit_of_class


def class_results(
    classes: list[str],
    counts: ClassCounts,
    fit_of_class: np.ndarray,
    result: CoxFitResult | None,
    lag_years: float,
    sex_group: str,
    group_size: tuple[int, int],
    min_exposed_cases: int,
) -> pl.DataFrame:
    """One result row per class with exposed persons: fitted (`result`, in fit order) or skipped with a
    reason; `group_size` is the sex group's (persons, cases)."""
    n_classes = len(classes)
    n_exposed, n_exposed_cases = counts.n_exposed, counts.n_exposed_cases
    to_fit = np.flatnonzero(fit_of_class >= 0)
    coef = np.full(n_classes, np.nan)
    se = np.full(n_classes, np.nan)
    converged = np.zeros(n_classes, dtype=bool)
    n_iter = np.zeros(n_classes, dtype=np.int64)
    status = np.array(["skipped"] * n_classes, dtype=object)
    reason = np.array([f"fewer than {min_exposed_cases} exposed cases"] * n_classes, dtype=object)

    if result is not None:
        coef[to_fit] = result.coef[:, 0]
        se[to_fit] = result.se[:, 0]
        converged[to_fit] = result.converged
        n_iter[to_fit] = result.n_iter
        status[to_fit] = result.status
        reason[to_fit] = [None if s == "ok" else f"fit status: {s}" for s in result.status]

    summary = wald(coef, se)
    estimates = {
        "hr": summary.hr,
        "ci_lower": summary.ci_lower,
        "ci_upper": summary.ci_upper,
        "log_hr": coef,
        "se": se,
        "p_value": summary.p_value,
    }
    return pl.DataFrame(
        {
            "atc_code": classes,
            "lag_years": [float(lag_years)] * n_classes,
            "sex": [sex_group] * n_classes,
            "n_persons": [group_size[0]] * n_classes,
            "n_exposed": n_exposed.astype(np.int64),
            "n_cases": [group_size[1]] * n_classes,
            "n_exposed_cases": n_exposed_cases.astype(np.int64),
            "person_years_exposed": np.round(counts.person_years_exposed.astype(np.float64), 2),
            **estimates,
            "converged": converged,
            "n_iter": n_iter,
            "status": status.astype(str),
            "reason": pl.Series(list(reason), dtype=pl.String),  # all-null when every class was fitted
        },
        strict=False,
    ).filter(pl.col("n_exposed") > 0)


@dataclass(frozen=True)
class SexGroup:
    """A sex group fitted on a shared layout: its rows (`row_member`, None = all) and risk sets
    (`query_member` per query of the rows' layout, None = all), and its (persons, cases)."""

    name: str
    row_member: np.ndarray | None
    query_member: np.ndarray | None
    size: tuple[int, int]


def sex_groups_of(
    cohort: pl.DataFrame,
    layout: CellLayout,
    layout_group: str,
    grid: StratumGrid,
    rows: ExposedRows,
    names: list[str],
    *,
    risk_sets: bool = True,
) -> list[SexGroup]:
    """The sex groups `names` on `layout` (made for `layout_group`): the group of sex g is its persons'
    rows and strata, which with sex a stratum variable are exactly the strata of g (each stratum holds
    one sex). The layout's own group is all of it. Without `risk_sets` no `query_member` is made (the
    covariate path picks a group's risk sets by its cells)."""
    sex = cohort["sex"].to_numpy()
    member = layout.cell_of_person >= 0
    event = cohort["event"].to_numpy()
    groups = []
    for name in names:
        if name == layout_group:
            groups.append(SexGroup(name, None, None, (int(member.sum()), int(event[member].sum()))))
            continue
        of_sex = member & (sex == name)
        stratum_has_sex = np.zeros(grid.n_strata, dtype=bool)
        stratum_has_sex[layout.stratum_of_cell[layout.cell_of_person[of_sex]]] = True
        groups.append(
            SexGroup(
                name,
                of_sex[rows.person_row],
                stratum_has_sex[np.repeat(np.arange(grid.n_strata), np.diff(grid.first))][rows.query_grid_row]
                if risk_sets else None,
                (int(of_sex.sum()), int(event[of_sex].sum())),
            )
        )
    return groups


def combine_chunks(
    chunks: list[tuple[ClassCounts, np.ndarray, CoxFitResult | None]],
) -> tuple[ClassCounts, np.ndarray, CoxFitResult | None]:
    """Counts, fit numbers and fit results of consecutive chunks of classes as one (fits renumbered)."""
    counts = ClassCounts(
        *(np.concatenate([getattr(c, name) for c, _, _ in chunks]) for name in ClassCounts.__dataclass_fields__)
    )
    fit_numbers, fitted_before = [], 0
    for _, fit_of_class, _ in chunks:
        fit_numbers.append(np.where(fit_of_class >= 0, fit_of_class + fitted_before, -1))
        fitted_before += int((fit_of_class >= 0).sum())
    results = [r for _, _, r in chunks if r is not None]
    return counts, np.concatenate(fit_numbers), CoxFitResult.concatenate(results) if results else None


def class_counts(
    class_bounds: np.ndarray,
    exposed: np.ndarray,
    duration: np.ndarray,
    event_rows: np.ndarray,
    event_exposed: np.ndarray,
    row_member: np.ndarray | None,
) -> ClassCounts:
    """Per class (rows `class_bounds[c]:class_bounds[c + 1]`): exposed persons, exposed cases and exposed
    person-years of the member rows, from each row's exposure and exposed days and the rows with an event."""
    if row_member is not None:
        exposed = exposed & row_member
        event_exposed = event_exposed & row_member[event_rows]
        duration = duration * row_member
    return ClassCounts(
        segment_sums(exposed, class_bounds),
        np.diff(np.searchsorted(event_rows[event_exposed], class_bounds)),
        segment_sums(duration, class_bounds) / DAYS_PER_YEAR,
    )


MAX_QUERIES_PER_CHUNK = 1 << 22
"""Risk sets built and fitted at once by the binary path (bounds its memory: ~10 arrays of this length)."""
MAX_ROWS_PER_CHUNK = 1 << 22
"""Exposure rows handled at once by the binary path (a chunk ends at the class that crosses either bound)."""


@dataclass(frozen=True)
class StratumGrid:
    """The risk sets of one layout before exposure is known: each stratum's distinct event times, sorted
    by (stratum, time), with the numbers at risk and the events there (one row per event time).

    `first` holds each stratum's first row (and the end), and `events_up_to[stratum * time_span + age]` is
    the row of the stratum's first event time after `age`: an (n_strata x time_span) int32 lookup, so a
    row's place among the risk sets is one gather instead of a binary search (~146 KB per stratum).
    """

    n_at_risk: np.ndarray
    n_events: np.ndarray
    first: np.ndarray
    events_up_to: np.ndarray

    @property
    def n_strata(self) -> int:
        return int(self.first.shape[0] - 1)


def stratum_grid(totals: RiskSetCounts, n_strata: int, time_span: int) -> StratumGrid:
    """`totals` (per cell) summed over the cells of each stratum: the risk sets of the exposure-only model."""
    key = totals.stratum * time_span + totals.time
    unique_key, index = np.unique(key, return_inverse=True)
    stratum = unique_key // time_span
    # Number of event keys <= each (stratum, age) key: a cumulative count, far cheaper than a binary search
    # per key of the (n_strata x time_span) table.
    events_up_to = np.zeros(n_strata * time_span, dtype=np.int32)
    events_up_to[unique_key] = 1
    np.cumsum(events_up_to, out=events_up_to)
    return StratumGrid(
        n_at_risk=np.bincount(index, weights=totals.n_at_risk, minlength=unique_key.shape[0]),
        n_events=np.bincount(index, weights=totals.n_events, minlength=unique_key.shape[0]).astype(np.int64),
        first=np.searchsorted(stratum, np.arange(n_strata + 1), "left"),
        events_up_to=events_up_to,
    )


@dataclass(frozen=True)
class ExposedRows:
    """The person-class rows of one layout (shared by the sex groups fitted on it), laid out for counting
    exposed persons in every risk set.

    Rows are sorted by class (`class_bounds[c]:class_bounds[c + 1]` are class c's; `person_row` is each
    row's cohort row). A class's queries are the risk sets of each stratum where it has rows, in (stratum,
    time) order, bounded by `class_queries`; `query_grid_row` names each query's risk set. A row's query
    for age a is `query_base + grid.events_up_to[age_key_base + a]`. Classes are fitted in chunks
    (`chunk_bounds`, class numbers) of about `MAX_QUERIES_PER_CHUNK` queries or `MAX_ROWS_PER_CHUNK`
    rows, and `exits_at` counts per
    query the chunk's rows whose exit's query it is; `event_exit_query` is that query for the rows with an
    event (`event_rows`). The (class, stratum) pairs with rows are `pair_class`, `pair_stratum`, each with
    its stratum's risk sets as queries from `pair_first_query`. All of this is independent of the lag, so it is computed once per layout; ages
    and keys are int32 to halve the memory traffic.
    """

    class_bounds: np.ndarray
    person_row: np.ndarray
    exposure_start: np.ndarray
    entry: np.ndarray
    exit: np.ndarray
    event_rows: np.ndarray
    event_exit_query: np.ndarray
    age_key_base: np.ndarray
    query_base: np.ndarray
    class_queries: np.ndarray
    chunk_bounds: np.ndarray
    exits_at: np.ndarray
    pair_class: np.ndarray
    pair_stratum: np.ndarray
    pair_first_query: np.ndarray
    pair_first_grid_row: np.ndarray
    pair_n_queries: np.ndarray

    @cached_property
    def query_grid_row(self) -> np.ndarray:
        """The grid row (risk set) of every query; only the stratified fits need it, so built on first use."""
        return concatenated_ranges(self.pair_first_grid_row, self.pair_n_queries, np.int32)


def exposed_rows_by_class(
    cohort: pl.DataFrame,
    exposures: pl.DataFrame,
    layout: CellLayout,
    grid: StratumGrid,
    n_classes: int,
    time_span: int,
) -> ExposedRows:
    """Lay out the exposure rows of a layout's members for `count_exposed_chunk` (`cohort` and `exposures` from
    `index_screen_inputs`)."""
    cohort_row = exposures["cohort_row"].to_numpy()
    cell = layout.cell_of_person.astype(np.int32)[cohort_row]
    member = cell >= 0
    everyone = bool(member.all())
    if not everyone:
        cohort_row, cell = cohort_row[member], cell[member]

    def of_members(column: str, dtype: type = np.int32) -> np.ndarray:
        values = exposures[column].to_numpy()
        return (values if everyone else values[member]).astype(dtype, copy=False)

    def of_persons(column: str, dtype: type = np.int32) -> np.ndarray:
        return cohort[column].to_numpy().astype(dtype)[cohort_row]

    stratum = layout.stratum_of_cell.astype(np.int32)[cell]
    del cell
    class_index = of_members("class_index", np.int64)
    pair = class_index * grid.n_strata + stratum
    pair_queries = np.where(
        np.bincount(pair, minlength=n_classes * grid.n_strata) > 0, np.tile(np.diff(grid.first), n_classes), 0
    )
    pair_first_query = np.cumsum(pair_queries) - pair_queries
    query_base = pair_first_query[pair]
    del pair
    query_base -= grid.first[stratum]
    age_key_base = stratum * np.int32(time_span)
    del stratum
    exit_ = of_persons("exit")
    exit_query = query_base + grid.events_up_to[age_key_base + exit_]
    class_bounds = np.searchsorted(class_index, np.arange(n_classes + 1), "left")
    class_queries = np.r_[0, np.cumsum(pair_queries.reshape(n_classes, grid.n_strata).sum(axis=1))]
    present = np.flatnonzero(pair_queries)
    chunk_of_class = np.maximum(class_queries[1:] // MAX_QUERIES_PER_CHUNK, class_bounds[1:] // MAX_ROWS_PER_CHUNK)
    chunk_bounds = np.r_[run_starts(chunk_of_class), n_classes]
    exits_at = np.zeros(int(class_queries[-1]), dtype=np.int32)
    for first_class, end_class in zip(chunk_bounds[:-1], chunk_bounds[1:], strict=True):
        first_query, end_query = class_queries[first_class], class_queries[end_class]
        chunk_exits = exit_query[class_bounds[first_class] : class_bounds[end_class]] - first_query
        exits_at[first_query:end_query] = np.bincount(chunk_exits, minlength=end_query - first_query + 1)[:-1]
    event_rows = np.flatnonzero(of_persons("event", bool))
    pair_queries = pair_queries[present].astype(np.int32)
    return ExposedRows(
        class_bounds=class_bounds,
        person_row=cohort_row.astype(np.int32, copy=False),
        exposure_start=of_members("exposure_start_age_days"),
        entry=of_persons("entry"),
        exit=exit_,
        event_rows=event_rows,
        event_exit_query=exit_query[event_rows],
        age_key_base=age_key_base,
        query_base=query_base,
        class_queries=class_queries,
        chunk_bounds=chunk_bounds,
        exits_at=exits_at,
        pair_class=present // grid.n_strata,
        pair_stratum=present % grid.n_strata,
        pair_first_query=pair_first_query[present],
        pair_first_grid_row=grid.first[present % grid.n_strata],
        pair_n_queries=pair_queries,
    )


@dataclass(frozen=True)
class ChunkQueries:
    """Exposed counts of a chunk of classes at one lag in every risk set of its queries (`ExposedRows`):
    exposed at risk and exposed events per query, the grid row of each, each class's queries (from the
    chunk's first query, `first_query` of the layout)."""

    first_query: int
    n_exposed: np.ndarray
    exposed_events: np.ndarray
    class_bounds: np.ndarray
    rows: ExposedRows

    @property
    def grid_row(self) -> np.ndarray:
        return self.rows.query_grid_row[self.first_query : self.first_query + self.n_exposed.shape[0]]


def count_exposed_chunk(
    rows: ExposedRows,
    grid: StratumGrid,
    first_class: int,
    end_class: int,
    lag_in_days: int,
    groups: list[SexGroup],
    min_exposed_cases: int,
) -> tuple[list[ClassCounts], list[np.ndarray], ChunkQueries | None]:
    """The classes `first_class:end_class` at one lag: per sex group their counts and fit numbers (from 0
    in the chunk; -1 when skipped), and the exposed counts of every query (None when nothing is fitted).

    Exposure counts from `exposed_from` (the exposure window) to exit; a row whose window opens at or after
    its exit gets its exit as start, so it is at risk nowhere and counted nowhere. Each row adds one at its
    start's query and removes one at its exit's query; a running sum gives the exposed at risk
    (start < time <= exit), and the exposed events sit at the exit's query.
    """
    first_row, end_row = rows.class_bounds[first_class], rows.class_bounds[end_class]
    chunk_rows = slice(first_row, end_row)
    class_bounds = rows.class_bounds[first_class : end_class + 1] - first_row
    exit_ = rows.exit[chunk_rows]
    start = exposed_from(rows.entry[chunk_rows], rows.exposure_start[chunk_rows], lag_in_days)
    np.minimum(start, exit_, out=start)
    exposed = start < exit_
    events = slice(*np.searchsorted(rows.event_rows, [first_row, end_row]))
    event_rows = rows.event_rows[events] - first_row
    event_exposed = exposed[event_rows]
    duration = exit_ - start
    counts = [class_counts(class_bounds, exposed, duration, event_rows, event_exposed,
                           None if g.row_member is None else g.row_member[chunk_rows]) for g in groups]
    fits = [classes_to_fit(c, min_exposed_cases) for c in counts]
    if not any(np.any(f >= 0) for f in fits):
        return counts, fits, None

    first_query, end_query = rows.class_queries[first_class], rows.class_queries[end_class]
    n_queries = int(end_query - first_query)
    position = grid.events_up_to[rows.age_key_base[chunk_rows] + start]
    position = position + rows.query_base[chunk_rows]
    position -= first_query
    n_exposed = np.bincount(position, minlength=n_queries + 1)[:-1]
    n_exposed -= rows.exits_at[first_query:end_query]
    np.cumsum(n_exposed, out=n_exposed)
    event_query = rows.event_exit_query[events][event_exposed] - first_query - 1
    queries = ChunkQueries(
        int(first_query),
        n_exposed,
        np.bincount(event_query, minlength=n_queries),
        rows.class_queries[first_class : end_class + 1] - first_query,
        rows,
    )
    return counts, fits, queries
