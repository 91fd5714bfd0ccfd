"""Risk sets of the screen's Cox model, shared by the screen, the candidates' person-level models and the
distributed fits, so that all three fit exactly the same model.

Owns: the adjustment labels of the cohort (`prepare_cohort`), the cells and strata of a sex group
(`cell_layout`), the at-risk and event totals per cell and event time (`total_counts`), the exposed
person-class rows at a lag (`exposed_rows`, by the exposure window of `repurpose.dwas.window`), the
aggregated risk sets of the general engine (`build_risk_sets`) and the indexing of the screen's inputs
(`index_screen_inputs`). Persons are grouped into *cells* (one combination of the adjustment variables
and sex); at an event time in a stratum the Efron likelihood needs, per cell and exposure state, only the
numbers at risk and with the event. Imports `repurpose.cox`, `repurpose.dwas.window` and polars/numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from repurpose.cox.risk_set_table import RiskSetTable
from repurpose.dwas.window import exposed_from, lag_days


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
    cells: pl.DataFrame  # the adjustment variables' values of each cell, in cell order


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
    design, names = covariate_design(cells, covariates)
    return CellLayout(cell_of_person, stratum_of_cell.astype(np.int64), design, names, cells.height, cells)


def covariate_design(cells: pl.DataFrame, covariates: list[str]) -> tuple[np.ndarray, list[str]]:
    """The design of categorical `covariates` over `cells` (one row per cell): a dummy column per level but the
    first among these cells (the reference), and the columns' names."""
    design_columns, names = [], []
    for variable in covariates:
        levels = sorted(cells[variable].unique().to_list())
        for level in levels[1:]:  # first level is the reference
            design_columns.append((cells[variable] == level).cast(pl.Float64).to_numpy())
            names.append(f"{variable}={level}")
    design = np.column_stack(design_columns) if design_columns else np.zeros((cells.height, 0))
    return design, names


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
    # The searches run over the queries in sorted order (4x cheaper than in random order: each search
    # starts near the last one in memory) and the counts are put back in the queries' order.
    order = np.argsort(query, kind="stable")
    query = query[order]
    start_keys = np.sort(block * time_span + start)
    exit_keys = np.sort(block * time_span + exit_)
    event_keys = np.sort(block[event] * time_span + exit_[event])
    n_at_risk, n_events = np.empty(query.shape[0]), np.empty(query.shape[0])
    n_at_risk[order] = np.searchsorted(start_keys, query, "left") - np.searchsorted(exit_keys, query, "left")
    n_events[order] = np.searchsorted(event_keys, query, "right") - np.searchsorted(event_keys, query, "left")
    return n_at_risk, n_events


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

    Exposure counts from `exposed_from` (the exposure window) to exit; rows outside the sex group or whose
    lagged start is not before exit are dropped. `cohort` and `exposures` come from `index_screen_inputs`
    (each exposure row carries its cohort row and class index).
    """
    cohort_row = exposures["cohort_row"].to_numpy()
    cell = layout.cell_of_person[cohort_row]
    exit_ = cohort["exit"].to_numpy()[cohort_row]
    start = exposed_from(
        cohort["entry"].to_numpy()[cohort_row],
        exposures["exposure_start_age_days"].to_numpy().astype(np.int64),
        lag_days(lag_years),
    )
    keep = np.flatnonzero((cell >= 0) & (start < exit_))
    return (
        exposures["class_index"].to_numpy()[keep].astype(np.int64),
        cell[keep],
        start[keep],
        exit_[keep],
        cohort["event"].to_numpy()[cohort_row[keep]],
    )



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
    n = queries.height
    return risk_set_rows(
        queries, risk_set_index, np.arange(n), np.zeros(n, dtype=np.int64), exposed_at_risk, exposed_events,
        EXPOSED_PATTERN, layout.covariate_design, n_fits,
    )


EXPOSED_PATTERN = np.ones((1, 1))
"""The screen's one non-baseline pattern: exposed (the baseline, unexposed, is the zero row)."""


def risk_set_rows(
    queries: pl.DataFrame,
    risk_set_index: np.ndarray,
    pair_query: np.ndarray,
    pair_pattern: np.ndarray,
    pair_at_risk: np.ndarray,
    pair_events: np.ndarray,
    pattern_design: np.ndarray,
    covariate_design: np.ndarray,
    n_fits: int,
) -> RiskSetTable:
    """The rows of aggregated risk sets from cell totals: per query (fit, cell, event time; sorted by fit and
    risk set, with the cell's totals `n_at_risk`, `n_events`) one row per pattern with someone at risk.

    The trick that makes every model of the cohort cheap: everyone is counted once in the baseline pattern
    (design zeros: the totals); a model's persons in other patterns are subtracted from it and added back in
    their own rows, given as pairs (query `pair_query`, pattern `pair_pattern` with design row
    `pattern_design[pair_pattern]`, at risk, events; at most one pair per query and pattern). Design columns:
    the pattern's, then the cell's covariates. Rows of a query: the baseline first, then its patterns in order."""
    n, n_patterns = queries.height, pattern_design.shape[0]
    pair_key = pair_query * (n_patterns + 1) + pair_pattern
    if np.any(pair_key[1:] < pair_key[:-1]):  # pairs in (query, pattern) order: merged below without a sort
        order = np.argsort(pair_key, kind="stable")
        pair_query, pair_pattern, pair_at_risk, pair_events = (a[order] for a in (pair_query, pair_pattern, pair_at_risk, pair_events))
    if not np.all(pair_at_risk > 0):  # a pair with nobody at risk has no row
        pair_query, pair_pattern, pair_at_risk, pair_events = (
            a[pair_at_risk > 0] for a in (pair_query, pair_pattern, pair_at_risk, pair_events)
        )
    base_at_risk = queries["n_at_risk"].to_numpy() - np.bincount(pair_query, pair_at_risk, minlength=n)
    base_events = queries["n_events"].to_numpy() - np.bincount(pair_query, pair_events, minlength=n)
    # Row order: per query its baseline (when someone is left in it), then its pairs in pattern order; each
    # row is written straight to its place.
    kept = base_at_risk > 0
    kept_before = np.cumsum(kept) - kept  # baseline rows of the queries before
    base_row = (kept_before + np.searchsorted(pair_query, np.arange(n), side="left"))[kept]
    pair_row = np.arange(pair_query.shape[0]) + kept_before[pair_query] + kept[pair_query]
    n_rows = base_row.shape[0] + pair_row.shape[0]
    query = np.empty(n_rows, dtype=np.int64)
    query[base_row] = np.flatnonzero(kept)
    query[pair_row] = pair_query
    at_risk, events = np.empty(n_rows), np.empty(n_rows)
    at_risk[base_row], at_risk[pair_row] = base_at_risk[kept], pair_at_risk
    events[base_row], events[pair_row] = base_events[kept], pair_events
    # Factored: a row's covariates are (its pattern's design row, its cell's covariates), one of
    # slots x cells patterns (`pattern_covariates`), so the (rows, p) design is never built.
    row_pattern = queries["cell"].to_numpy()[query].astype(np.int64)
    row_pattern[pair_row] += (pair_pattern + 1) * covariate_design.shape[0]  # slot 0, the baseline, adds nothing
    return RiskSetTable.factored(
        fit_index=queries["fit"].to_numpy()[query].astype(np.int64),
        risk_set_index=risk_set_index[query].astype(np.int64),
        n_at_risk=at_risk,
        n_events=events,
        patterns=pattern_covariates(pattern_design, covariate_design),
        row_pattern=row_pattern,
        n_fits=n_fits,
    )


def pattern_covariates(pattern_design: np.ndarray, covariate_design: np.ndarray) -> np.ndarray:
    """The patterns of a `risk_set_rows` table: row slot x n_cells + cell holds (the slot's pattern design row,
    zeros for slot 0, the baseline; the cell's covariates). Another `pattern_design` with as many rows gives
    the same table's rows other covariates (`RiskSetTable.factored` with its `row_pattern`)."""
    n_cells = covariate_design.shape[0]
    slot_design = np.vstack([np.zeros((1, pattern_design.shape[1])), pattern_design])
    return np.hstack([np.repeat(slot_design, n_cells, axis=0), np.tile(covariate_design, (slot_design.shape[0], 1))])


def pattern_risk_sets(
    layout: CellLayout,
    totals: RiskSetCounts,
    cell: np.ndarray,
    pattern: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    event: np.ndarray,
    pattern_design: np.ndarray,
    time_span: int,
) -> RiskSetTable:
    """Aggregated risk sets of one model of the cohort in which every person is in the baseline pattern except
    during the given segments: (start, stop] of a person of `cell` in pattern `pattern` >= 1 (design row
    `pattern_design[pattern - 1]`), with the event at stop. Every risk set of the cohort is kept (as
    `aggregate_counting_process` keeps them); only the segments are counted (at the event times of their
    cell's stratum within their span), the rest comes from the totals."""
    n_patterns = pattern_design.shape[0]
    queries = (
        pl.DataFrame({"stratum": totals.stratum, "time": totals.time, "cell": totals.cell,
                      "n_at_risk": totals.n_at_risk, "n_events": totals.n_events})
        .sort(["stratum", "time", "cell"])
        .with_columns(fit=pl.lit(0, pl.Int64))
    )  # fmt: skip
    risk_sets, risk_set_index = np.unique((queries["stratum"] * time_span + queries["time"]).to_numpy(), return_inverse=True)
    segments = (cell, pattern - 1, start, stop, event.astype(bool))
    n_strata = int(layout.stratum_of_cell.max()) + 1 if layout.n_cells else 0
    if queries.height * n_patterns <= _GRID_CELLS and n_strata * time_span <= 2 * _GRID_CELLS:
        pairs = _pairs_from_count_grid(layout, queries, risk_sets, risk_set_index, *segments, n_patterns, time_span)
    else:
        pairs = _pairs_by_search(layout, queries, *segments, n_patterns, time_span)
    return risk_set_rows(queries, risk_set_index, *pairs, pattern_design, layout.covariate_design, 1)


_GRID_CELLS = 1 << 24
"""Queries x patterns (and half the strata x days) up to which `pattern_risk_sets` counts on a dense grid
(int64: 128 MB an array); larger models pair queries and segments by binary search."""


def _pairs_from_count_grid(
    layout: CellLayout, queries: pl.DataFrame, risk_sets: np.ndarray, risk_set_index: np.ndarray, cell: np.ndarray,
    pattern: np.ndarray, start: np.ndarray, stop: np.ndarray, event: np.ndarray, n_patterns: int, time_span: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, pattern) with someone at risk, in that order, with the numbers at risk and with the event.

    On a (cell, event time of its stratum) x pattern grid a segment adds 1 from the first event time after its
    start and removes it after its stop (the at-risk convention start < t <= stop); a running sum down each
    cell's times counts who is at risk: two binary searches per segment in the few event times, no sort."""
    q_stratum, q_cell = queries["stratum"].to_numpy(), queries["cell"].to_numpy()
    stratum_first = np.searchsorted(risk_sets, np.arange(layout.stratum_of_cell.max() + 2) * time_span)
    n_times = np.diff(stratum_first)[layout.stratum_of_cell]  # per cell: its stratum's event times
    cell_first = np.concatenate([[0], np.cumsum(n_times)])  # cell-major rows: each cell's times in order
    q_row = cell_first[q_cell] + risk_set_index - stratum_first[q_stratum]
    n_rows = queries.height
    stratum = layout.stratum_of_cell[cell]
    time_base = stratum * time_span
    # Event times up to each (stratum, day): a table look-up instead of a binary search per segment end.
    upto = np.zeros(int(stratum_first.shape[0] - 1) * time_span, dtype=np.int32)
    upto[risk_sets] = 1
    np.cumsum(upto, out=upto)
    first = upto[time_base + start] - stratum_first[stratum]
    after = upto[time_base + stop] - stratum_first[stratum]
    row = cell_first[cell]
    size = n_rows * n_patterns
    opens, closes = first < n_times[cell], after < n_times[cell]
    count = np.bincount(((row + first) * n_patterns + pattern)[opens], minlength=size)
    count -= np.bincount(((row + after) * n_patterns + pattern)[closes], minlength=size)
    count = count.reshape(n_rows, n_patterns)
    np.cumsum(count, axis=0, out=count)
    # The running sum crosses cells: subtract what it carried into each cell (segments open past its times).
    carried = np.zeros((len(cell_first) - 1, n_patterns), dtype=count.dtype)
    after_first = np.flatnonzero(cell_first[:-1] > 0)
    carried[after_first] = count[cell_first[after_first] - 1]
    at_risk = count[q_row]
    del count
    at_risk -= carried[q_cell]
    at_risk = at_risk.ravel()  # flat (query, pattern) keys: one gather instead of a 2-d fancy index
    pair_key = np.flatnonzero(at_risk > 0)
    pair_at_risk = at_risk[pair_key].astype(np.float64)
    del at_risk
    pair_query, pair_pattern = np.divmod(pair_key, n_patterns)
    # Events: each ended segment's (query, pattern) is a pair (its person is at risk then), found by search.
    ended = event & (after > 0)  # the event at stop, the last event time <= stop
    ended &= risk_sets[np.minimum(stratum_first[stratum] + after - 1, len(risk_sets) - 1)] == time_base + stop
    query_of_row = np.full(cell_first[-1], -1, dtype=np.int64)
    query_of_row[q_row] = np.arange(n_rows)
    event_query = query_of_row[(row + after - 1)[ended]]
    event_key = (event_query * n_patterns + pattern[ended])[event_query >= 0]
    pair_event = np.searchsorted(pair_key, event_key)
    return pair_query, pair_pattern, pair_at_risk, np.bincount(pair_event, minlength=pair_query.shape[0]).astype(np.float64)


def _pairs_by_search(
    layout: CellLayout, queries: pl.DataFrame, cell: np.ndarray, pattern: np.ndarray, start: np.ndarray,
    stop: np.ndarray, event: np.ndarray, n_patterns: int, time_span: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_pairs_from_count_grid` for grids too large to hold: a query (cell, t) pairs with the (cell, pattern)
    blocks whose span (earliest start, latest stop) holds t, read off the grid a chunk of queries at a time,
    and each pair is counted by binary searches in the sorted segments (`counts_at_event_times`)."""
    block = cell * n_patterns + pattern
    first_start = np.full(layout.n_cells * n_patterns, time_span, dtype=np.int64)
    last_stop = np.full(layout.n_cells * n_patterns, -1, dtype=np.int64)
    np.minimum.at(first_start, block, start)
    np.maximum.at(last_stop, block, stop)
    first_start, last_stop = first_start.reshape(-1, n_patterns), last_stop.reshape(-1, n_patterns)
    q_cell, q_time = queries["cell"].to_numpy(), queries["time"].to_numpy()
    chunk = max(1, _GRID_CELLS // 4 // n_patterns)
    found = []
    for lo in range(0, queries.height, chunk):
        t = q_time[lo : lo + chunk, None]
        grid = (first_start[q_cell[lo : lo + chunk]] < t) & (t <= last_stop[q_cell[lo : lo + chunk]])
        chunk_query, chunk_pattern = np.nonzero(grid)
        found.append((chunk_query + lo, chunk_pattern))
    pair_query = np.concatenate([f[0] for f in found]) if found else np.zeros(0, dtype=np.int64)
    pair_pattern = np.concatenate([f[1] for f in found]) if found else np.zeros(0, dtype=np.int64)
    at_risk, events = counts_at_event_times(
        block, start, stop, event, q_cell[pair_query] * n_patterns + pair_pattern, q_time[pair_query], time_span
    )
    return pair_query.astype(np.int64), pair_pattern.astype(np.int64), at_risk, events


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
