"""The drug-wide Cox screen: one Cox model per ATC class x lag x sex stratum, fitted on aggregated risk sets.

Model: Cox proportional hazards on the age scale (days), delayed entry at cohort entry, Efron ties,
ever-use of the class as a time-varying binary exposure that switches on `lag` years after the k-th
dispensing (the exposure window, `repurpose.dwas.window`), adjusted by stratification and/or categorical
covariates (`screen.adjust`).

Why it is fast and still exact: persons are grouped into *cells* (`repurpose.dwas.risk_sets`). At an event
time t in stratum s, the Efron partial likelihood only needs, per cell and exposure state, the number at
risk and the number of events at t. For a class, the exposed counts come from its sparse exposure table
by a running sum over each stratum's event ages (`count_exposed_chunk`): with exposure the only
covariate, the default, per stratum (`screen_binary`, fitted by `repurpose.cox.binary`); with covariates,
per cell at its stratum's event ages (`screen_covariates`, fitted by `repurpose.cox.categorical`).
Unexposed counts are the cell totals minus the exposed ones. No person-interval table is built.
The tests compare both with the general engine on risk sets built by binary search (tests/screen_reference.py).
Owns the screen's fitting, its result rows
and q-values, and the stage functions `screen_level`
and `gather_screen`. May import `repurpose.cox`, `repurpose.dwas.risk_sets` and `.window`, `repurpose.schemas`,
`repurpose.release.disclosure` and `repurpose.atc`. See docs/methods.md and docs/cox_engine.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.atc import anatomical_group_filter, load_atc_names
from repurpose.cox.binary import BinaryRiskSets, fit_binary_efron
from repurpose.cox.categorical import CellGrid, covariates_only_coef, fit_exposure_and_covariates
from repurpose.cox.result import CoxFitResult, wald
from repurpose.cox.risk_set_table import concatenated_ranges, run_starts, segment_sums
from repurpose.dwas.risk_sets import (
    CellLayout,
    RiskSetCounts,
    cell_layout,
    covariate_design,
    index_screen_inputs,
    total_counts,
)
from repurpose.dwas.window import exposed_from, lag_days
from repurpose.lazy import lazy_module
from repurpose.release.disclosure import (
    DisclosurePolicy,
    disclosure_table,
    for_display,
    release_screen,
    release_summary,
)
from repurpose.schemas import (
    DAYS_PER_YEAR,
    SCREEN_COLUMNS,
    SCREEN_COUNT_COLUMNS,
    SCREEN_EXPOSURE_COLUMNS,
    SCREEN_PART_SCHEMA,
)
from repurpose.stages import stage

stats = lazy_module("scipy.stats")

log = logging.getLogger(__name__)

ADJUSTMENT_VARIABLES = ("sex", "birth_cohort", "education")


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


def screen_binary(
    cohort: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], screen: dict[str, Any], time_span: int
) -> Iterator[list[tuple[str, float, pl.DataFrame]]]:
    """The screen with the binary engine (exposure the only covariate): per lag, a (sex group, lag, part)
    per sex group.

    With sex among the strata, the model of each sex is the both-sexes model restricted to that sex's
    strata: the same risk sets. So the rows and risk sets are laid out once and counted once per lag, and
    each sex group fits its share; otherwise each sex group gets its own layout. Each lag is done chunk
    by chunk of classes, so no array spans all rows or all risk sets of a lag.
    """
    strata, min_cases = screen["adjust"]["strata"], screen["min_exposed_cases"]
    if "sex" in strata:
        plan = [("all", screen["sex_strata"])]
    else:
        plan = [(name, [name]) for name in screen["sex_strata"]]
    for layout_group, names in plan:
        layout = cell_layout(cohort, layout_group, strata, [])
        totals = total_counts(cohort, layout, time_span)
        grid = stratum_grid(totals, int(layout.stratum_of_cell.max()) + 1, time_span)
        rows = exposed_rows_by_class(cohort, exposures, layout, grid, len(classes), time_span)
        groups = sex_groups_of(cohort, layout, layout_group, grid, rows, names)
        for lag in screen["lags_years"]:
            lag_in_days = lag_days(lag)
            chunks = [
                fit_binary_chunk(grid, groups, *count_exposed_chunk(rows, grid, first, end, lag_in_days, groups, min_cases))
                for first, end in zip(rows.chunk_bounds[:-1], rows.chunk_bounds[1:], strict=True)
            ]
            parts = []
            for i, group in enumerate(groups):
                counts, fit_of_class, result = combine_chunks([chunk[i] for chunk in chunks])
                part = class_results(classes, counts, fit_of_class, result, lag, group.name, group.size, min_cases)
                parts.append((group.name, lag, part))
            yield parts


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


def fit_binary_chunk(
    grid: StratumGrid,
    groups: list[SexGroup],
    counts: list[ClassCounts],
    fits: list[np.ndarray],
    queries: ChunkQueries | None,
) -> list[tuple[ClassCounts, np.ndarray, CoxFitResult | None]]:
    """A chunk of classes at one lag as counted by `count_exposed_chunk`, fitted with exposure the only
    covariate: per sex group, their counts, fit numbers and fit results (None when nothing is fitted).
    Risk sets with nobody exposed at risk carry no information and are dropped.
    """
    if queries is None:
        return [(c, f, None) for c, f in zip(counts, fits, strict=True)]
    first_query = queries.first_query
    at_risk = queries.n_exposed > 0
    results: list[CoxFitResult | None] = []
    for group, fit_of_class in zip(groups, fits, strict=True):
        if not np.any(fit_of_class >= 0):
            results.append(None)
            continue
        informative = at_risk & np.repeat(fit_of_class >= 0, np.diff(queries.class_bounds))
        if group.query_member is not None:
            informative &= group.query_member[first_query : first_query + informative.shape[0]]
        per_class = segment_sums(informative, queries.class_bounds)
        informative = np.flatnonzero(informative)
        grid_row = queries.grid_row[informative]
        exposed_at_risk, exposed_event = queries.n_exposed[informative], queries.exposed_events[informative]
        table = BinaryRiskSets(
            np.repeat(fit_of_class, per_class),
            exposed_at_risk,
            grid.n_at_risk[grid_row] - exposed_at_risk,
            exposed_event,
            grid.n_events[grid_row] - exposed_event,
            int(fit_of_class.max()) + 1,
        )
        results.append(fit_binary_efron(table))
    return list(zip(counts, fits, results, strict=True))


MAX_DENSE_CELLS = 1 << 22
"""Fits x grid rows held densely at once by the covariate path (bounds its memory: a few arrays of this size)."""


def screen_covariates(
    cohort: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], screen: dict[str, Any], time_span: int
) -> Iterator[list[tuple[str, float, pl.DataFrame]]]:
    """The screen with categorical covariates beside the exposure: per lag, a (sex group, lag, part) per sex
    group.

    Each cell (a combination of the covariates and sex within a stratum) is counted as `screen_binary` counts a
    stratum, at every event time of the cell's stratum, so one pass per lag gives each class's exposed at risk
    and exposed events per (cell, risk set) for all persons; each sex group's risk sets are read off it
    (`group_grid`), and `repurpose.cox.categorical` fits the classes of a chunk together on those counts and
    the cells' totals, from the covariates-only model (fitted once per sex group).
    """
    adjust, min_cases = screen["adjust"], screen["min_exposed_cases"]
    layout = cell_layout(cohort, "all", adjust["strata"], adjust["covariates"])
    totals = total_counts(cohort, layout, time_span)
    grid = stratum_grid(replace(totals, stratum=totals.cell), layout.n_cells, time_span)
    one_stratum_per_cell = replace(layout, stratum_of_cell=np.arange(layout.n_cells))
    rows = exposed_rows_by_class(cohort, exposures, one_stratum_per_cell, grid, len(classes), time_span)
    groups = sex_groups_of(cohort, one_stratum_per_cell, "all", grid, rows, screen["sex_strata"], risk_sets=False)
    grids = [group_grid(layout, grid, group.name, adjust["covariates"]) for group in groups]
    initial = [covariates_only_coef(g.cells) for g in grids]
    # A class's estimates at one lag start its fit at the next: a class's hazard ratios and the covariates'
    # coefficients change little between lags, so Newton needs fewer steps (the maximum is the same).
    previous = [np.full((len(classes), 1 + start.shape[0]), np.nan) for start in initial]
    for lag in screen["lags_years"]:
        chunks: list[list[tuple[ClassCounts, np.ndarray, CoxFitResult | None]]] = [[] for _ in groups]
        for first_class, end_class in zip(rows.chunk_bounds[:-1], rows.chunk_bounds[1:], strict=True):
            counts, fits, queries = count_exposed_chunk(rows, grid, first_class, end_class, lag_days(lag), groups, min_cases)
            for i, fit_of_class in enumerate(fits):
                result = None if queries is None or not np.any(fit_of_class >= 0) else fit_covariates_chunk(
                    grids[i], rows, first_class, end_class, queries, fit_of_class,
                    _start_points(fit_of_class, previous[i][first_class:end_class], initial[i]),
                )
                chunks[i].append((counts[i], fit_of_class, result))
        parts = []
        for i, group in enumerate(groups):
            counts, fit_of_class, result = combine_chunks(chunks[i])
            previous[i][:] = np.nan
            if result is not None:
                fitted = np.flatnonzero(fit_of_class >= 0)
                previous[i][fitted] = np.where((result.status == "ok")[:, None], result.coef, np.nan)
            parts.append((group.name, lag, class_results(classes, counts, fit_of_class, result, lag, group.name, group.size, min_cases)))
        yield parts


@dataclass(frozen=True)
class GroupGrid:
    """A sex group's risk sets read off the all-persons layout of `screen_covariates`: the group's `CellGrid`,
    the group's cell of each layout cell (-1: not in the group), and per stratum of the group's grid the
    positions of its event times among the layout stratum's event times (a cell's queries)."""

    cells: CellGrid
    cell_of_layout_cell: np.ndarray
    time_positions: list[np.ndarray]


def group_grid(layout: CellLayout, grid: StratumGrid, group: str, covariates: list[str]) -> GroupGrid:
    """The grid of sex group `group` on the all-persons `layout` (`grid`: one stratum per cell, each cell's rows
    its stratum's event times): the group's cells, and in each stratum the event times with an event of the
    group, which are its own model's risk sets; the covariates' design over the group's cells (sex left out
    of a one-sex group). The same likelihood as the group's own layout, whose cells are these cells."""
    in_group = np.ones(layout.n_cells, dtype=bool) if group == "all" else (layout.cells["sex"] == group).to_numpy()
    kept, stratum_cells, cell_rows, time_positions, at_risk, events = [], [0], [0], [], [], []
    for stratum in np.unique(layout.stratum_of_cell):
        cells = np.flatnonzero((layout.stratum_of_cell == stratum) & in_group)
        if not cells.size:
            continue
        n_times = int(grid.first[cells[0] + 1] - grid.first[cells[0]])
        stratum_events = sum(grid.n_events[grid.first[c] : grid.first[c] + n_times] for c in cells)
        times = np.flatnonzero(stratum_events > 0)
        if not times.size:
            continue
        for cell in cells:
            at_risk.append(grid.n_at_risk[grid.first[cell] + times])
            events.append(grid.n_events[grid.first[cell] + times])
            cell_rows.append(cell_rows[-1] + times.size)
        kept.extend(cells.tolist())
        stratum_cells.append(len(kept))
        time_positions.append(times)
    design, _ = covariate_design(layout.cells[kept], covariates if group == "all" else [v for v in covariates if v != "sex"])
    cell_grid, _ = CellGrid.from_cell_major(
        np.concatenate(at_risk), np.concatenate(events).astype(np.float64), design, np.array(stratum_cells), np.array(cell_rows)
    )
    cell_of_layout_cell = np.full(layout.n_cells, -1)
    cell_of_layout_cell[kept] = np.arange(len(kept))
    return GroupGrid(cell_grid, cell_of_layout_cell, time_positions)


def _start_points(fit_of_class: np.ndarray, previous: np.ndarray, initial_covariates: np.ndarray) -> np.ndarray:
    """(fits, 1 + q) Newton start of each fit: its class's estimates at the previous lag where it had them,
    else exposure 0 and the covariates-only model's coefficients."""
    start = np.tile(np.r_[0.0, initial_covariates], (int(fit_of_class.max()) + 1 if fit_of_class.size else 0, 1))
    warm = np.flatnonzero((fit_of_class >= 0) & np.all(np.isfinite(previous), axis=1))
    start[fit_of_class[warm]] = previous[warm]
    return start


def fit_covariates_chunk(
    grid: GroupGrid,
    rows: ExposedRows,
    first_class: int,
    end_class: int,
    queries: ChunkQueries,
    fit_of_class: np.ndarray,
    start: np.ndarray,
) -> CoxFitResult:
    """Fit the classes `first_class:end_class` of `rows` (counted with one stratum per layout cell) that have a
    fit number, with exposure and the group grid's covariates, in blocks of fits whose dense (fits x grid rows)
    exposed counts hold at most `MAX_DENSE_CELLS` numbers. A (class, cell) pair's queries are the cell's
    stratum's event times in time order; those of the group's risk sets fill the cell's column of its
    stratum's (risk sets x cells) block. `start` (fits, 1 + q) is each fit's Newton start (`_start_points`)."""
    pairs = slice(*np.searchsorted(rows.pair_class, [first_class, end_class]))
    pair_fit = fit_of_class[rows.pair_class[pairs] - first_class]
    pair_cell = grid.cell_of_layout_cell[rows.pair_stratum[pairs]]
    pair_first = rows.pair_first_query[pairs] - queries.first_query
    cells = grid.cells
    n_fits = int(fit_of_class.max()) + 1
    block = max(1, MAX_DENSE_CELLS // max(cells.n_rows, 1))
    results = []
    for first_fit in range(0, n_fits, block):
        n_block = min(block, n_fits - first_fit)
        exposed_at_risk = np.zeros((n_block, cells.n_rows))
        exposed_events = np.zeros((n_block, cells.n_rows))
        in_block = (pair_fit >= first_fit) & (pair_fit < first_fit + n_block)
        for (first_cell, end_cell, first_row, end_row), times in zip(cells.strata(), grid.time_positions, strict=True):
            chosen = np.flatnonzero(in_block & (pair_cell >= first_cell) & (pair_cell < end_cell))
            n_cells = end_cell - first_cell
            query = pair_first[chosen, None] + times
            fit, cell = pair_fit[chosen] - first_fit, pair_cell[chosen] - first_cell
            for dense, counts in ((exposed_at_risk, queries.n_exposed), (exposed_events, queries.exposed_events)):
                dense[:, first_row:end_row].reshape(n_block, times.size, n_cells)[fit, :, cell] = counts[query]
        block_start = start[first_fit : first_fit + n_block]
        results.append(fit_exposure_and_covariates(cells, exposed_at_risk, exposed_events, initial_exposure=block_start[:, 0],
                                                   initial_covariates=block_start[:, 1:]))
    return CoxFitResult.concatenate(results)


def screen_exposures(
    cohort: pl.DataFrame, exposures: pl.DataFrame, config: dict[str, Any], level: int, label: str | None = None
) -> pl.DataFrame:
    """Screen every class of one ATC level for every lag and sex group (raw counts; not for export)."""
    label = label or f"level {level}"
    if exposures.height == 0:
        return pl.DataFrame(schema=SCREEN_PART_SCHEMA)
    screen = config["screen"]
    cohort, exposures, classes, time_span = index_screen_inputs(cohort, exposures, screen)
    exposure_only = not screen["adjust"]["covariates"]
    batches = (screen_binary if exposure_only else screen_covariates)(cohort, exposures, classes, screen, time_span)
    results: dict[tuple[str, float], pl.DataFrame] = {}
    n_batches = len(screen["sex_strata"]) * len(screen["lags_years"])
    started = started_all = time.perf_counter()
    for parts in batches:
        seconds = (time.perf_counter() - started) / len(parts)
        for sex_group, lag, part in parts:
            results[sex_group, lag] = part
            log.info(
                "%s lag %g sex %s: %d classes, %d fitted in %.2f s; batch %d of %d, about %.0f s left",
                label,
                lag,
                sex_group,
                part.height,
                int((part["status"] != "skipped").sum()),
                seconds,
                len(results),
                n_batches,
                (time.perf_counter() - started_all) / len(results) * (n_batches - len(results)),
            )
        started = time.perf_counter()
    parts_in_order = [results[sex_group, lag] for sex_group in screen["sex_strata"] for lag in screen["lags_years"]]
    return pl.concat(parts_in_order).with_columns(atc_level=pl.lit(level, pl.Int8)).select(
        [pl.col(name).cast(dtype) for name, dtype in SCREEN_PART_SCHEMA.items()]
    )


def add_q_values(results: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """Benjamini-Hochberg q-values within each (atc_level, lag_years, sex) family of fitted rows."""

    def family_q(p: pl.Series) -> pl.Series:
        values = p.to_numpy()
        q = np.full(len(values), np.nan)
        ok = np.isfinite(values)
        if ok.any():
            q[ok] = stats.false_discovery_control(values[ok], method="bh")
        return pl.Series(q)

    return results.with_columns(
        q_value=pl.col("p_value")
        .fill_nan(None)
        .map_batches(family_q, return_dtype=pl.Float64)
        .over(["atc_level", "lag_years", "sex"])
    ).with_columns(significant=(pl.col("q_value") < alpha).fill_null(False))


@stage(reads=("screen",), drop=("screen.atc_levels", "screen.split_by", "screen.fdr_alpha"))
def screen_level(
    config: dict[str, Any],
    *,
    cohort: str | Path,
    exposure: str | Path,
    level: int,
    part: str | Path,
    group: str = "all",
) -> pl.DataFrame:
    """Fit all classes of one ATC level (or of one anatomical main group of it) and write the raw result part.

    Only the group's exposure rows are read, so a job per level x group holds a fraction of the level.
    """
    started = time.perf_counter()
    label = f"level {level}" + ("" if group == "all" else f" group {group}")
    exposures = pl.scan_parquet(exposure).select(SCREEN_EXPOSURE_COLUMNS).filter(anatomical_group_filter(group))
    # Passed straight on, so that the raw rows are freed once indexed.
    results = screen_exposures(pl.read_parquet(cohort), exposures.collect(), config, level, label)
    results.write_parquet(part)
    log.info("%s: %d rows in %.1f s", label, results.height, time.perf_counter() - started)
    return results


@stage(reads=("screen.fdr_alpha", "disclosure", "inputs.atc_index", "candidates.main_lag_years"))
def gather_screen(
    config: dict[str, Any],
    *,
    parts: list[str],
    fits: str | Path,
    dwas: str | Path,
    dwas_csv: str | Path,
    disclosure: str | Path | None = None,
) -> pl.DataFrame:
    """Combine the level parts, add names and q-values; write the internal fits (exact counts, every estimate:
    the ranking reads them, they never leave the server) and the released table dwas.parquet/.csv
    (`release_screen`), with the policy and the rows it hid per reason in `disclosure`."""
    results = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
    results = add_q_values(results, config["screen"]["fdr_alpha"])
    names = load_atc_names(config["inputs"].get("atc_index")).select("atc_code", "atc_name")
    results = (
        results.join(names, on="atc_code", how="left")
        .select(SCREEN_COLUMNS)
        .sort(["atc_level", "lag_years", "sex", "atc_code"])
    )
    results.write_parquet(fits)
    policy = DisclosurePolicy.from_config(config, main_lag_years=config["candidates"]["main_lag_years"])
    released = release_screen(results, policy)
    released.write_parquet(dwas)
    for_display(released, SCREEN_COUNT_COLUMNS, policy.min_cell).write_csv(dwas_csv)
    summary = release_summary(results, policy)
    if disclosure is not None:
        disclosure_table(summary).write_csv(disclosure)
    log.info(
        "screen: %d rows, %d fitted, %d significant at q < %g; released with %d rows hidden %s",
        results.height,
        int((results["status"] != "skipped").sum()),
        int(results["significant"].sum()),
        config["screen"]["fdr_alpha"],
        sum(summary["rows_hidden"].values()),
        summary["rows_hidden"],
    )
    return released
