"""The drug-wide Cox screen: one Cox model per ATC class x lag x sex stratum, fitted on aggregated risk sets.

Model: Cox proportional hazards on the age scale (days), delayed entry at cohort entry, Efron ties,
ever-use of the class as a time-varying binary exposure that switches on `lag` years after the k-th
dispensing, adjusted by stratification and/or categorical covariates (`screen.adjust`).

Why it is fast and still exact: persons are grouped into *cells* (one combination of the adjustment
variables and sex). At an event time t in stratum s, the Efron partial likelihood only needs, per cell
and exposure state, the number at risk and the number of events at t. For a class, the exposed counts
come from its sparse exposure table (with covariates, by binary search over sorted (class, cell, age)
keys; with exposure the only covariate, the default, by a running sum over each stratum's event ages,
`screen_binary`); unexposed counts are the cell totals minus the exposed ones. No person-interval table
is built. See docs/methods.md and docs/cox_engine.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from repurpose.atc import anatomical_group_filter, load_atc_names
from repurpose.cox.binary import BinaryRiskSets, fit_binary_efron
from repurpose.cox.engine import (
    CoxFitResult,
    RiskSetTable,
    concatenated_ranges,
    fit_efron,
    run_starts,
    segment_sums,
)
from repurpose.registry.cohort import DAYS_PER_YEAR
from repurpose.release.disclosure import SCREEN_RULES, for_display, suppress_small_counts
from repurpose.stages import stage

log = logging.getLogger(__name__)

ADJUSTMENT_VARIABLES = ("sex", "birth_cohort", "education")
COUNT_COLUMNS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")
SCREEN_COLUMNS = [
    "atc_code",
    "atc_name",
    "atc_level",
    "lag_years",
    "sex",
    "n_persons",
    "n_exposed",
    "n_cases",
    "n_exposed_cases",
    "person_years_exposed",
    "hr",
    "ci_lower",
    "ci_upper",
    "log_hr",
    "se",
    "p_value",
    "q_value",
    "significant",
    "converged",
    "n_iter",
    "status",
    "reason",
]


SCREEN_PART_SCHEMA = {
    "atc_code": pl.String,
    "lag_years": pl.Float64,
    "sex": pl.String,
    "n_persons": pl.Int64,
    "n_exposed": pl.Int64,
    "n_cases": pl.Int64,
    "n_exposed_cases": pl.Int64,
    "person_years_exposed": pl.Float64,
    "hr": pl.Float64,
    "ci_lower": pl.Float64,
    "ci_upper": pl.Float64,
    "log_hr": pl.Float64,
    "se": pl.Float64,
    "p_value": pl.Float64,
    "converged": pl.Boolean,
    "n_iter": pl.Int64,
    "status": pl.String,
    "reason": pl.String,
    "atc_level": pl.Int8,
}
"""Columns of a raw screen part (one row per class x lag x sex group; counts not yet disclosure-controlled)."""


def prepare_cohort(cohort: pl.DataFrame, band_years: int) -> pl.DataFrame:
    """Cohort with the adjustment variables as labels: sex, birth cohort band, education (missing kept)."""
    band_start = (pl.col("birth_year") // band_years) * band_years
    return cohort.with_columns(
        birth_cohort=band_start.cast(pl.String) + "-" + (band_start + band_years - 1).cast(pl.String),
        education=pl.col("education").cast(pl.String).fill_null("missing"),
        entry=pl.col("entry_age_days").cast(pl.Int64),
        exit=pl.col("exit_age_days").cast(pl.Int64),
    )


@dataclass(frozen=True)
class CellLayout:
    """Cells (combinations of the adjustment variables) of one sex group, their strata and covariate design."""

    cell_of_person: np.ndarray  # cell index per cohort row (-1 outside the sex group)
    stratum_of_cell: np.ndarray
    covariate_design: np.ndarray  # (n_cells, n_covariate_columns)
    covariate_names: list[str]
    n_cells: int


def cell_layout(cohort: pl.DataFrame, sex_group: str, strata: list[str], covariates: list[str]) -> CellLayout:
    """Index the cells and strata of a sex group (`all`, `F` or `M`)."""
    if sex_group != "all":
        covariates = [v for v in covariates if v != "sex"]
    keys = list(dict.fromkeys([*strata, *covariates, "sex"]))
    in_group = pl.lit(True) if sex_group == "all" else pl.col("sex") == sex_group
    frame = cohort.select(*keys, in_group=in_group)
    cells = frame.filter("in_group").select(keys).unique().sort(keys).with_row_index("cell")
    cell_of_person = (
        frame.join(cells, on=keys, how="left", maintain_order="left")["cell"]
        .fill_null(-1)
        .cast(pl.Int64)
        .to_numpy()
    )
    cell_of_person = np.where(frame["in_group"].to_numpy(), cell_of_person, -1)
    if strata:
        strata_index = cells.select(strata).unique().sort(strata).with_row_index("stratum")
        stratum_of_cell = cells.join(strata_index, on=strata, how="left", maintain_order="left")[
            "stratum"
        ].to_numpy()
    else:
        stratum_of_cell = np.zeros(cells.height, dtype=np.int64)
    design_columns, names = [], []
    for variable in covariates:
        levels = sorted(cells[variable].unique().to_list())
        for level in levels[1:]:  # first level is the reference
            design_columns.append((cells[variable] == level).cast(pl.Float64).to_numpy())
            names.append(f"{variable}={level}")
    design = np.column_stack(design_columns) if design_columns else np.zeros((cells.height, 0))
    return CellLayout(cell_of_person, stratum_of_cell.astype(np.int64), design, names, cells.height)


def counts_at_event_times(
    block: np.ndarray, start: np.ndarray, exit_: np.ndarray, event: np.ndarray,
    query_block: np.ndarray, query_time: np.ndarray, time_span: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query (block, t): persons of the block at risk (start < t <= exit) and with their event at t.

    Binary search over keys `block * time_span + age`: within a block, #(start < t) - #(exit < t) is the
    number at risk, since everyone who exited before t also started before t. Persons of earlier blocks
    are counted in both terms and cancel.
    """
    query = query_block * time_span + query_time
    start_keys = np.sort(block * time_span + start)
    exit_keys = np.sort(block * time_span + exit_)
    n_at_risk = np.searchsorted(start_keys, query, "left") - np.searchsorted(exit_keys, query, "left")
    event_keys = np.sort(block[event] * time_span + exit_[event])
    n_events = np.searchsorted(event_keys, query, "right") - np.searchsorted(event_keys, query, "left")
    return n_at_risk.astype(np.float64), n_events.astype(np.float64)


@dataclass
class RiskSetCounts:
    """Per (cell, event time) totals: at risk and events, for every event time of the cell's stratum."""

    cell: np.ndarray
    time: np.ndarray
    stratum: np.ndarray
    n_at_risk: np.ndarray
    n_events: np.ndarray


def total_counts(cohort: pl.DataFrame, layout: CellLayout, time_span: int) -> RiskSetCounts:
    """At-risk and event totals per cell at each distinct event time of its stratum (delayed entry: entry < t <= exit)."""
    cell = layout.cell_of_person
    member = cell >= 0
    entry, exit_, event = (
        cohort["entry"].to_numpy()[member],
        cohort["exit"].to_numpy()[member],
        cohort["event"].to_numpy()[member],
    )
    cell = cell[member]
    stratum = layout.stratum_of_cell[cell]
    event_keys = np.unique(stratum[event] * time_span + exit_[event])
    event_stratum, event_time = event_keys // time_span, event_keys % time_span
    # Every cell of the stratum is queried at every event time of that stratum.
    cells_by_stratum = pl.DataFrame({"stratum": layout.stratum_of_cell, "cell": np.arange(layout.n_cells)})
    queries = pl.DataFrame({"stratum": event_stratum, "time": event_time}).join(
        cells_by_stratum, on="stratum"
    )
    q_cell, q_time = queries["cell"].to_numpy(), queries["time"].to_numpy()
    n_at_risk, n_events = counts_at_event_times(cell, entry, exit_, event, q_cell, q_time, time_span)
    return RiskSetCounts(
        q_cell,
        q_time,
        queries["stratum"].to_numpy(),
        n_at_risk,
        n_events,
    )


def exposed_rows(
    cohort: pl.DataFrame, exposures: pl.DataFrame, layout: CellLayout, lag_years: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exposed person-class rows of a sex group at a lag: (class_index, cell, start, exit, event).

    Exposure counts from max(entry, exposure start + lag) to exit; rows outside the sex group or whose
    lagged start is not before exit are dropped. `cohort` and `exposures` come from `index_screen_inputs`
    (each exposure row carries its cohort row and class index).
    """
    lag_days = round(lag_years * DAYS_PER_YEAR)
    cohort_row = exposures["cohort_row"].to_numpy()
    cell = layout.cell_of_person[cohort_row]
    exit_ = cohort["exit"].to_numpy()[cohort_row]
    start = np.maximum(
        cohort["entry"].to_numpy()[cohort_row], exposures["exposure_start_age_days"].to_numpy().astype(np.int64) + lag_days
    )
    keep = np.flatnonzero((cell >= 0) & (start < exit_))
    return (
        exposures["class_index"].to_numpy()[keep].astype(np.int64),
        cell[keep],
        start[keep],
        exit_[keep],
        cohort["event"].to_numpy()[cohort_row[keep]],
    )


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

    z = stats.norm.ppf(0.975)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # diverging fits carry their status
        estimates = {
            "hr": np.exp(coef),
            "ci_lower": np.exp(coef - z * se),
            "ci_upper": np.exp(coef + z * se),
            "log_hr": coef,
            "se": se,
            "p_value": 2 * stats.norm.sf(np.abs(coef / se)),
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


def screen_general(
    cohort: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], screen: dict[str, Any], time_span: int
) -> Iterator[list[tuple[str, float, pl.DataFrame]]]:
    """The screen with the general engine (covariates beside the exposure): per sex group and lag, a
    (sex group, lag, part)."""
    adjust, min_cases = screen["adjust"], screen["min_exposed_cases"]
    for sex_group in screen["sex_strata"]:
        layout = cell_layout(cohort, sex_group, adjust["strata"], adjust["covariates"])
        totals = total_counts(cohort, layout, time_span)
        members = layout.cell_of_person >= 0
        group_size = (int(members.sum()), int(cohort["event"].to_numpy()[members].sum()))
        for lag in screen["lags_years"]:
            class_index, cell, start, exit_, event = exposed_rows(cohort, exposures, layout, lag)
            counts = ClassCounts(
                np.bincount(class_index, minlength=len(classes)),
                np.bincount(class_index[event], minlength=len(classes)),
                np.bincount(class_index, weights=(exit_ - start) / DAYS_PER_YEAR, minlength=len(classes)),
            )
            fit_of_class = classes_to_fit(counts, min_cases)
            n_fits = int(fit_of_class.max()) + 1
            result = None
            if n_fits:
                table = build_risk_sets(
                    layout, totals, class_index, cell, start, exit_, event, fit_of_class, n_fits, time_span
                )
                result = fit_efron(table)
            yield [(sex_group, lag, class_results(classes, counts, fit_of_class, result, lag, sex_group, group_size, min_cases))]


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
) -> list[SexGroup]:
    """The sex groups `names` on `layout` (made for `layout_group`): the group of sex g is its persons'
    rows and strata, which with sex a stratum variable are exactly the strata of g (each stratum holds
    one sex). The layout's own group is all of it."""
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
                stratum_has_sex[np.repeat(np.arange(grid.n_strata), np.diff(grid.first))][rows.query_grid_row],
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
            lag_days = round(lag * DAYS_PER_YEAR)
            chunks = [
                fit_binary_chunk(rows, grid, first_class, end_class, lag_days, groups, min_cases)
                for first_class, end_class in zip(rows.chunk_bounds[:-1], rows.chunk_bounds[1:], strict=True)
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
    event (`event_rows`). All of this is independent of the lag, so it is computed once per layout; ages
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
    query_grid_row: np.ndarray
    chunk_bounds: np.ndarray
    exits_at: np.ndarray


def exposed_rows_by_class(
    cohort: pl.DataFrame,
    exposures: pl.DataFrame,
    layout: CellLayout,
    grid: StratumGrid,
    n_classes: int,
    time_span: int,
) -> ExposedRows:
    """Lay out the exposure rows of a layout's members for `fit_binary_chunk` (`cohort` and `exposures` from
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
        query_grid_row=concatenated_ranges(grid.first[present % grid.n_strata], pair_queries, np.int32),
        chunk_bounds=chunk_bounds,
        exits_at=exits_at,
    )


def fit_binary_chunk(
    rows: ExposedRows,
    grid: StratumGrid,
    first_class: int,
    end_class: int,
    lag_days: int,
    groups: list[SexGroup],
    min_exposed_cases: int,
) -> list[tuple[ClassCounts, np.ndarray, CoxFitResult | None]]:
    """The classes `first_class:end_class` at one lag: per sex group, their counts, fit numbers (from 0 in
    the chunk; -1 when skipped) and fit results (None when nothing is fitted).

    Exposure counts from max(entry, exposure start + lag) to exit; a row whose lagged start is not before
    its exit gets its exit as start, so it is at risk nowhere and counted nowhere. Each row adds one at its
    start's query and removes one at its exit's query; a running sum gives the exposed at risk
    (start < time <= exit), and the exposed events sit at the exit's query. Risk sets with nobody exposed
    at risk carry no information and are dropped.
    """
    first_row, end_row = rows.class_bounds[first_class], rows.class_bounds[end_class]
    chunk_rows = slice(first_row, end_row)
    class_bounds = rows.class_bounds[first_class : end_class + 1] - first_row
    exit_ = rows.exit[chunk_rows]
    start = rows.exposure_start[chunk_rows] + np.int32(lag_days)
    np.maximum(start, rows.entry[chunk_rows], out=start)
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
        return [(c, f, None) for c, f in zip(counts, fits, strict=True)]

    first_query, end_query = rows.class_queries[first_class], rows.class_queries[end_class]
    n_queries = int(end_query - first_query)
    position = grid.events_up_to[rows.age_key_base[chunk_rows] + start]
    position = position + rows.query_base[chunk_rows]
    position -= first_query
    n_exposed = np.bincount(position, minlength=n_queries + 1)[:-1]
    n_exposed -= rows.exits_at[first_query:end_query]
    np.cumsum(n_exposed, out=n_exposed)
    event_query = rows.event_exit_query[events][event_exposed] - first_query - 1
    exposed_events = np.bincount(event_query, minlength=n_queries)
    query_grid_row = rows.query_grid_row[first_query:end_query]
    class_query_bounds = rows.class_queries[first_class : end_class + 1] - first_query
    at_risk = n_exposed > 0
    results: list[CoxFitResult | None] = []
    for group, fit_of_class in zip(groups, fits, strict=True):
        if not np.any(fit_of_class >= 0):
            results.append(None)
            continue
        informative = at_risk & np.repeat(fit_of_class >= 0, np.diff(class_query_bounds))
        if group.query_member is not None:
            informative &= group.query_member[first_query:end_query]
        per_class = segment_sums(informative, class_query_bounds)
        informative = np.flatnonzero(informative)
        grid_row = query_grid_row[informative]
        exposed_at_risk, exposed_event = n_exposed[informative], exposed_events[informative]
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


def build_risk_sets(
    layout: CellLayout,
    totals: RiskSetCounts,
    class_index: np.ndarray,
    cell: np.ndarray,
    start: np.ndarray,
    exit_: np.ndarray,
    event: np.ndarray,
    fit_of_class: np.ndarray,
    n_fits: int,
    time_span: int,
) -> RiskSetTable:
    """Aggregated risk sets of all fitted classes: per (class, stratum, event time) the rows (cell x exposure state)."""
    fitted = fit_of_class[class_index] >= 0
    class_index, cell, start, exit_, event = (
        class_index[fitted],
        cell[fitted],
        start[fitted],
        exit_[fitted],
        event[fitted],
    )
    n_covariates = layout.covariate_design.shape[1]
    # Queries: for each fitted class, every (cell, event time) of its strata. Without covariates a risk set
    # with no exposed person carries no information and is dropped (so are strata without exposed persons);
    # with covariates every stratum stays, since it informs the covariate coefficients of the full model.
    n_strata = layout.stratum_of_cell.max() + 1
    if n_covariates == 0:
        class_strata = np.unique(class_index * n_strata + layout.stratum_of_cell[cell])
        pairs = pl.DataFrame({"class_index": class_strata // n_strata, "stratum": class_strata % n_strata})
    else:
        pairs = pl.DataFrame({"class_index": np.unique(class_index)}).join(
            pl.DataFrame({"stratum": np.arange(n_strata)}), how="cross"
        )
    if n_covariates == 0:
        spans = (
            pl.DataFrame(
                {
                    "class_index": class_index,
                    "stratum": layout.stratum_of_cell[cell],
                    "start": start,
                    "exit": exit_,
                }
            )
            .group_by(["class_index", "stratum"])
            .agg(pl.col("start").min(), pl.col("exit").max())
        )
        pairs = pairs.join(spans, on=["class_index", "stratum"])
    totals_frame = pl.DataFrame(
        {
            "stratum": totals.stratum,
            "cell": totals.cell,
            "time": totals.time,
            "n_at_risk": totals.n_at_risk,
            "n_events": totals.n_events,
        }
    )
    queries = pairs.join(totals_frame, on="stratum")
    if n_covariates == 0:
        queries = queries.filter((pl.col("time") > pl.col("start")) & (pl.col("time") <= pl.col("exit")))
    queries = queries.with_columns(fit=pl.lit(pl.Series(fit_of_class)).gather(pl.col("class_index"))).sort(
        ["fit", "stratum", "time", "cell"]
    )
    q_class, q_cell, q_time = (queries[c].to_numpy() for c in ("class_index", "cell", "time"))
    exposed_at_risk, exposed_events = counts_at_event_times(
        class_index * layout.n_cells + cell, start, exit_, event, q_class * layout.n_cells + q_cell, q_time, time_span
    )
    risk_set = (
        queries["fit"].cast(pl.Int64) * (n_strata * time_span)
        + queries["stratum"] * time_span
        + queries["time"]
    ).to_numpy()
    _, risk_set_index = np.unique(risk_set, return_inverse=True)
    if n_covariates == 0:
        exposed_in_risk_set = np.bincount(risk_set_index, weights=exposed_at_risk)
        informative = exposed_in_risk_set[risk_set_index] > 0
        queries = queries.filter(pl.Series(informative))
        exposed_at_risk, exposed_events = exposed_at_risk[informative], exposed_events[informative]
        _, risk_set_index = np.unique(risk_set_index[informative], return_inverse=True)
    fit = queries["fit"].to_numpy()
    unexposed_at_risk = queries["n_at_risk"].to_numpy() - exposed_at_risk
    unexposed_events = queries["n_events"].to_numpy() - exposed_events
    covariates = layout.covariate_design[queries["cell"].to_numpy()]
    n = len(fit)
    # Interleave unexposed and exposed rows so rows stay sorted by (fit, risk set).
    design = np.zeros((2 * n, 1 + n_covariates))
    design[1::2, 0] = 1.0
    design[0::2, 1:] = covariates
    design[1::2, 1:] = covariates
    n_at_risk = np.empty(2 * n)
    n_at_risk[0::2], n_at_risk[1::2] = unexposed_at_risk, exposed_at_risk
    n_events = np.empty(2 * n)
    n_events[0::2], n_events[1::2] = unexposed_events, exposed_events
    keep = n_at_risk > 0
    return RiskSetTable(
        fit_index=np.repeat(fit, 2)[keep].astype(np.int64),
        risk_set_index=np.repeat(risk_set_index, 2)[keep].astype(np.int64),
        n_at_risk=n_at_risk[keep],
        n_events=n_events[keep],
        design=design[keep],
        n_fits=n_fits,
    )


SCREEN_EXPOSURE_COLUMNS = ["person_id", "atc_code", "exposure_start_age_days"]
"""The columns of an exposure table the screen reads."""


def index_screen_inputs(
    cohort: pl.DataFrame, exposures: pl.DataFrame, screen: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, list[str], int]:
    """Cohort with adjustment labels and row numbers, exposures as (class_index, exposure_start_age_days,
    cohort_row) sorted by class (int32), the sorted class codes, and a time span exceeding every age in days.

    Exposure tables come sorted by class (docs/schemas.md), so that order is kept rather than re-sorted.
    """
    cohort = prepare_cohort(cohort, screen["birth_cohort_band_years"]).with_row_index("cohort_row")
    classes = sorted(exposures["atc_code"].unique().to_list())
    # A left join keeping the left order is the cheapest join that keeps the class order; persons outside
    # the cohort are then dropped. Narrow integers halve the memory of the tens of millions of rows.
    exposures = (
        exposures.select(
            "person_id",
            "exposure_start_age_days",
            class_index=pl.col("atc_code").cast(pl.Enum(classes)).to_physical().cast(pl.Int32),
        )
        .join(cohort.select("person_id", "cohort_row"), on="person_id", how="left", maintain_order="left")
        .filter(pl.col("cohort_row").is_not_null())
        .select(
            "class_index",
            pl.col("exposure_start_age_days").cast(pl.Int32),
            pl.col("cohort_row").cast(pl.Int32),
        )
    )
    if not exposures["class_index"].is_sorted():
        exposures = exposures.sort("class_index", maintain_order=True)
    return cohort, exposures, classes, int(cohort["exit"].max()) + 2


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
    batches = (screen_binary if exposure_only else screen_general)(cohort, exposures, classes, screen, time_span)
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


@stage(reads=("screen.fdr_alpha", "disclosure", "inputs.atc_index"))
def gather_screen(
    config: dict[str, Any], *, parts: list[str], dwas: str | Path, dwas_csv: str | Path
) -> pl.DataFrame:
    """Combine the level parts, add names and q-values, apply disclosure control and write dwas.parquet/.csv."""
    parquet_path, csv_path = dwas, dwas_csv
    results = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
    results = add_q_values(results, config["screen"]["fdr_alpha"])
    names = load_atc_names(config["inputs"].get("atc_index")).select("atc_code", "atc_name")
    results = (
        results.join(names, on="atc_code", how="left")
        .select(SCREEN_COLUMNS)
        .sort(["atc_level", "lag_years", "sex", "atc_code"])
    )
    released = suppress_small_counts(results, COUNT_COLUMNS, config["disclosure"]["min_cell"], **SCREEN_RULES)
    released.write_parquet(parquet_path)
    for_display(released, COUNT_COLUMNS, config["disclosure"]["min_cell"]).write_csv(csv_path)
    log.info(
        "screen: %d rows, %d fitted, %d significant at q < %g",
        results.height,
        int((results["status"] != "skipped").sum()),
        int(results["significant"].sum()),
        config["screen"]["fdr_alpha"],
    )
    return released
