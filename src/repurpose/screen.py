"""The drug-wide Cox screen: one Cox model per ATC class x lag x sex stratum, fitted on aggregated risk sets.

Model: Cox proportional hazards on the age scale (days), delayed entry at cohort entry, Efron ties,
ever-use of the class as a time-varying binary exposure that switches on `lag` years after the k-th
dispensing, adjusted by stratification and/or categorical covariates (`screen.adjust`).

Why it is fast and still exact: persons are grouped into *cells* (one combination of the adjustment
variables and sex). At an event time t in stratum s, the Efron partial likelihood only needs, per cell
and exposure state, the number at risk and the number of events at t. For a class, the exposed counts
come from its sparse exposure table by binary search over sorted (class, cell, age) keys; unexposed
counts are the cell totals minus the exposed ones. No person-interval table is built. See
docs/methods.md and docs/cox_engine.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from repurpose.atc import anatomical_group_filter, load_atc_names
from repurpose.binary_cox import BinaryRiskSets, fit_binary_efron
from repurpose.cohort import DAYS_PER_YEAR
from repurpose.coxph import CoxFitResult, RiskSetTable, concatenated_ranges, fit_efron, run_starts
from repurpose.disclosure import SCREEN_RULES, for_display, suppress_small_counts

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
    lagged start is not before exit are dropped. `exposures` comes from `index_screen_inputs` (it carries
    each row's cohort row, class index, entry, exit and event).
    """
    lag_days = round(lag_years * DAYS_PER_YEAR)
    cell = layout.cell_of_person[exposures["cohort_row"].to_numpy()]
    exit_ = exposures["exit"].to_numpy()
    start = np.maximum(exposures["entry"].to_numpy(), exposures["exposure_start_age_days"].to_numpy() + lag_days)
    keep = np.flatnonzero((cell >= 0) & (start < exit_))
    return (
        exposures["class_index"].to_numpy()[keep],
        cell[keep],
        start[keep],
        exit_[keep],
        exposures["event"].to_numpy()[keep],
    )


def fit_sex_group(
    cohort: pl.DataFrame,
    exposures: pl.DataFrame,
    classes: list[str],
    lag_years: float,
    sex_group: str,
    layout: CellLayout,
    totals: RiskSetCounts,
    time_span: int,
    min_exposed_cases: int,
) -> pl.DataFrame:
    """Fit every class for one lag and sex group; one result row per class (fitted or skipped with a reason).

    `layout` and `totals` (from `cell_layout` and `total_counts`) depend only on the sex group and the
    adjustment, so they are computed once and shared by all lags; `time_span` exceeds every age in days.
    """
    cell_of_person = layout.cell_of_person
    class_index, cell, start, exit_, event = exposed_rows(cohort, exposures, layout, lag_years)
    n_classes = len(classes)
    n_exposed = np.bincount(class_index, minlength=n_classes)
    n_exposed_cases = np.bincount(class_index[event], minlength=n_classes)
    py_exposed = np.bincount(class_index, weights=(exit_ - start) / DAYS_PER_YEAR, minlength=n_classes)
    members = cell_of_person >= 0
    n_persons = int(members.sum())
    n_cases = int(cohort["event"].to_numpy()[members].sum())

    to_fit = np.flatnonzero((n_exposed_cases >= min_exposed_cases) & (n_exposed > 0))
    fit_of_class = np.full(n_classes, -1)
    fit_of_class[to_fit] = np.arange(len(to_fit))
    coef = np.full(n_classes, np.nan)
    se = np.full(n_classes, np.nan)
    converged = np.zeros(n_classes, dtype=bool)
    n_iter = np.zeros(n_classes, dtype=np.int64)
    status = np.array(["skipped"] * n_classes, dtype=object)
    reason = np.array([f"fewer than {min_exposed_cases} exposed cases"] * n_classes, dtype=object)

    if len(to_fit):
        if layout.covariate_design.shape[1] == 0:
            result = fit_binary_in_chunks(
                totals,
                class_index,
                layout.stratum_of_cell[cell],
                start,
                exit_,
                event,
                fit_of_class,
                int(layout.stratum_of_cell.max()) + 1,
                time_span,
            )
        else:
            table = build_risk_sets(
                layout, totals, class_index, cell, start, exit_, event, fit_of_class, len(to_fit), time_span
            )
            result = fit_efron(table)
        coef[to_fit] = result.coef[:, 0]
        se[to_fit] = result.se[:, 0]
        converged[to_fit] = result.converged
        n_iter[to_fit] = result.n_iter
        status[to_fit] = result.status
        reason[to_fit] = [None if s == "ok" else f"fit status: {s}" for s in result.status]

    z = stats.norm.ppf(0.975)
    n_classes = len(classes)
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
            "n_persons": [n_persons] * n_classes,
            "n_exposed": n_exposed.astype(np.int64),
            "n_cases": [n_cases] * n_classes,
            "n_exposed_cases": n_exposed_cases.astype(np.int64),
            "person_years_exposed": np.round(py_exposed.astype(np.float64), 2),
            **estimates,
            "converged": converged,
            "n_iter": n_iter,
            "status": status.astype(str),
            "reason": pl.Series(list(reason), dtype=pl.String),  # all-null when every class was fitted
        },
        strict=False,
    ).filter(pl.col("n_exposed") > 0)


MAX_QUERIES_PER_CHUNK = 1 << 22
"""Risk sets built and fitted at once by the binary path (bounds its memory: ~10 arrays of this length)."""


def stratum_totals(totals: RiskSetCounts, time_span: int) -> RiskSetCounts:
    """`totals` summed over the cells of each stratum, sorted by (stratum, time): the binary path's risk sets."""
    key = totals.stratum * time_span + totals.time
    unique_key, index = np.unique(key, return_inverse=True)
    stratum = unique_key // time_span
    return RiskSetCounts(
        cell=stratum,
        time=unique_key % time_span,
        stratum=stratum,
        n_at_risk=np.bincount(index, weights=totals.n_at_risk, minlength=unique_key.shape[0]),
        n_events=np.bincount(index, weights=totals.n_events, minlength=unique_key.shape[0]),
    )


def binary_risk_sets(
    totals: RiskSetCounts,
    pair_key: np.ndarray,
    first: np.ndarray,
    lengths: np.ndarray,
    start_keys: np.ndarray,
    exit_keys: np.ndarray,
    event_keys: np.ndarray,
    time_span: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exposed and unexposed counts at the event times of (class, stratum) pairs; returns, per risk set
    with someone exposed at risk: (pair, n1, n0, d1, d0).

    `totals` (from `stratum_totals`) is sorted by (stratum, time); pair i (key class * n_strata + stratum,
    sorted) has as risk sets the `lengths[i]` totals rows from `first[i]`: its stratum's event times in
    (first exposed start, last exposed exit], since outside that span nobody exposed is at risk. The query
    keys pair * time_span + time therefore come out sorted, and each exposed row (sorted keys
    pair * time_span + start / exit) is at risk at the contiguous run of queries with start < time <= exit:
    found by binary search, summed by a running total.
    """
    query_total = concatenated_ranges(first, lengths)
    query_pair = np.repeat(np.arange(pair_key.shape[0], dtype=np.int64), lengths)
    query_key = pair_key[query_pair] * time_span + totals.time[query_total]
    n_queries = query_key.shape[0]
    change = np.bincount(np.searchsorted(query_key, start_keys, "right"), minlength=n_queries + 1) - np.bincount(
        np.searchsorted(query_key, exit_keys, "right"), minlength=n_queries + 1
    )
    n_exposed = np.cumsum(change[:-1]).astype(np.float64)
    exposed_events = np.bincount(np.searchsorted(query_key, event_keys, "left"), minlength=n_queries).astype(
        np.float64
    )
    informative = n_exposed > 0
    query_total = query_total[informative]
    n_exposed, exposed_events = n_exposed[informative], exposed_events[informative]
    return (
        query_pair[informative],
        n_exposed,
        totals.n_at_risk[query_total] - n_exposed,
        exposed_events,
        totals.n_events[query_total] - exposed_events,
    )


def fit_binary_in_chunks(
    totals: RiskSetCounts,
    class_index: np.ndarray,
    stratum: np.ndarray,
    start: np.ndarray,
    exit_: np.ndarray,
    event: np.ndarray,
    fit_of_class: np.ndarray,
    n_strata: int,
    time_span: int,
) -> CoxFitResult:
    """Fit every class with `fit_of_class >= 0` (exposure its only covariate) in chunks of whole classes.

    The exposed rows become sorted keys pair * time_span + age (pair = class * n_strata + stratum), so a
    pair's rows, first start and last exit, and a chunk's rows, are contiguous runs. Each chunk holds about
    `MAX_QUERIES_PER_CHUNK` risk sets, so memory does not grow with the number of classes; results come
    back in fit order.
    """
    fitted = fit_of_class[class_index] >= 0
    base = (class_index[fitted] * n_strata + stratum[fitted]) * time_span
    start_keys = np.sort(base + start[fitted])
    exit_keys = np.sort(base + exit_[fitted])
    event_keys = np.sort((base + exit_[fitted])[event[fitted]])
    # Both key arrays hold the same rows per pair, so the pairs' runs start at the same positions.
    row_bounds = np.r_[run_starts(start_keys // time_span), start_keys.shape[0]]
    pair_key = start_keys[row_bounds[:-1]] // time_span
    pair_first_start = start_keys[row_bounds[:-1]] % time_span
    pair_last_exit = exit_keys[row_bounds[1:] - 1] % time_span
    pair_class, pair_stratum = pair_key // n_strata, pair_key % n_strata
    # Each pair's risk sets: the totals rows of its stratum in (first exposed start, last exposed exit].
    total_key = totals.stratum * time_span + totals.time
    pair_first_query = np.searchsorted(total_key, pair_stratum * time_span + pair_first_start, "right")
    pair_queries = np.searchsorted(total_key, pair_stratum * time_span + pair_last_exit, "right") - pair_first_query
    # Chunks end at class boundaries once their queries reach the cap.
    class_starts = run_starts(pair_class)
    class_queries = np.add.reduceat(pair_queries, class_starts) if pair_key.size else np.zeros(0, np.int64)
    chunk_of_pair = np.repeat(
        np.cumsum(class_queries) // MAX_QUERIES_PER_CHUNK, np.diff(np.r_[class_starts, pair_key.shape[0]])
    )
    chunk_bounds = np.r_[run_starts(chunk_of_pair), pair_key.shape[0]]
    results = []
    for lo, hi in zip(chunk_bounds[:-1], chunk_bounds[1:], strict=True):
        rows = slice(row_bounds[lo], row_bounds[hi])
        events = slice(*np.searchsorted(event_keys, [pair_key[lo] * time_span, (pair_key[hi - 1] + 1) * time_span]))
        pair, n1, n0, d1, d0 = binary_risk_sets(
            totals, pair_key[lo:hi], pair_first_query[lo:hi], pair_queries[lo:hi],
            start_keys[rows], exit_keys[rows], event_keys[events], time_span,
        )
        first_fit = fit_of_class[pair_class[lo]]
        fit = fit_of_class[pair_class[lo:hi][pair]] - first_fit
        n_fits = fit_of_class[pair_class[hi - 1]] - first_fit + 1
        results.append(fit_binary_efron(BinaryRiskSets(fit, n1, n0, d1, d0, n_fits)))
    return CoxFitResult(
        **{name: np.concatenate([getattr(r, name) for r in results]) for name in CoxFitResult.__dataclass_fields__}
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


def index_screen_inputs(
    cohort: pl.DataFrame, exposures: pl.DataFrame, screen: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, list[str], int]:
    """Cohort with adjustment labels and row numbers, exposures keyed by (cohort_row, class_index) and
    carrying the person's entry, exit and event (sorted by class), the sorted class codes, and a time span
    exceeding every age in days (for the search keys)."""
    cohort = prepare_cohort(cohort, screen["birth_cohort_band_years"]).with_row_index("cohort_row")
    classes = sorted(exposures["atc_code"].unique().to_list())
    class_lookup = pl.DataFrame({"atc_code": classes, "class_index": np.arange(len(classes))})
    exposures = (
        exposures.select("person_id", "atc_code", pl.col("exposure_start_age_days").cast(pl.Int64))
        .join(cohort.select("person_id", "cohort_row", "entry", "exit", "event"), on="person_id")
        .join(class_lookup, on="atc_code")
        .with_columns(pl.col("cohort_row").cast(pl.Int64))
        .sort("class_index", "cohort_row")
    )
    return cohort, exposures, classes, int(cohort["exit"].max()) + 2


def screen_exposures(
    cohort: pl.DataFrame, exposures: pl.DataFrame, config: dict[str, Any], level: int, label: str | None = None
) -> pl.DataFrame:
    """Screen every class of one ATC level for every lag and sex group (raw counts; not for export)."""
    label = label or f"level {level}"
    screen = config["screen"]
    cohort, exposures, classes, time_span = index_screen_inputs(cohort, exposures, screen)
    adjust = screen["adjust"]
    results = []
    n_batches = len(screen["sex_strata"]) * len(screen["lags_years"])
    started_all = time.perf_counter()
    for sex_group in screen["sex_strata"]:
        layout = cell_layout(cohort, sex_group, adjust["strata"], adjust["covariates"])
        totals = total_counts(cohort, layout, time_span)
        if layout.covariate_design.shape[1] == 0:
            totals = stratum_totals(totals, time_span)
        for lag in screen["lags_years"]:
            started = time.perf_counter()
            part = fit_sex_group(
                cohort, exposures, classes, lag, sex_group, layout, totals, time_span, screen["min_exposed_cases"]
            )
            results.append(part)
            elapsed = time.perf_counter() - started_all
            log.info(
                "%s lag %g sex %s: %d classes, %d fitted in %.2f s; batch %d of %d, about %.0f s left",
                label,
                lag,
                sex_group,
                part.height,
                int((part["status"] != "skipped").sum()),
                time.perf_counter() - started,
                len(results),
                n_batches,
                elapsed / len(results) * (n_batches - len(results)),
            )
    return pl.concat(results).with_columns(atc_level=pl.lit(level, pl.Int8)).select(
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


def screen_level(
    config: dict[str, Any],
    cohort_path: str | Path,
    exposure_path: str | Path,
    level: int,
    out_path: str | Path,
    group: str = "all",
) -> pl.DataFrame:
    """Fit all classes of one ATC level (or of one anatomical main group of it) and write the raw result part.

    Only the group's exposure rows are read, so a job per level x group holds a fraction of the level.
    """
    started = time.perf_counter()
    label = f"level {level}" + ("" if group == "all" else f" group {group}")
    exposures = pl.scan_parquet(exposure_path).filter(anatomical_group_filter(group)).collect()
    if exposures.height == 0:
        results = pl.DataFrame(schema=SCREEN_PART_SCHEMA)
    else:
        results = screen_exposures(pl.read_parquet(cohort_path), exposures, config, level, label)
    results.write_parquet(out_path)
    log.info("%s: %d rows in %.1f s", label, results.height, time.perf_counter() - started)
    return results


def gather_screen(
    config: dict[str, Any], part_paths: list[str], parquet_path: str | Path, csv_path: str | Path
) -> pl.DataFrame:
    """Combine the level parts, add names and q-values, apply disclosure control and write dwas.parquet/.csv."""
    results = pl.concat([pl.read_parquet(p) for p in part_paths], how="vertical_relaxed")
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
