"""The covariate-adjusted screen (`screen.adjust.covariates`): each class's Cox model with exposure beside
categorical covariates, fitted per chunk of classes on the exposed counts per (cell, risk set) by
`repurpose.cox.categorical`.

Each cell (a combination of the covariates and sex within a stratum) is counted as the exposure-only screen
counts a stratum (`repurpose.dwas.screen_counts`), at every event time of the cell's stratum; each sex group's
risk sets are read off that one layout (`group_grid`). Owns `screen_covariates`, which
`repurpose.dwas.screen.screen_exposures` dispatches to. May import `repurpose.cox`, `repurpose.dwas.risk_sets`,
`.screen_counts` and `.window`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from repurpose.cox.categorical import CellGrid, covariates_only_coef, fit_exposure_and_covariates
from repurpose.cox.result import CoxFitResult
from repurpose.dwas.risk_sets import CellLayout, cell_layout, covariate_design, total_counts
from repurpose.dwas.screen_counts import (
    ChunkQueries,
    ClassCounts,
    ExposedRows,
    StratumGrid,
    class_results,
    combine_chunks,
    count_exposed_chunk,
    exposed_rows_by_class,
    sex_groups_of,
    stratum_grid,
)
from repurpose.dwas.window import lag_days

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
