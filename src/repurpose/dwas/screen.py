"""The drug-wide Cox screen: one Cox model per ATC class x lag x sex stratum, fitted on aggregated risk sets.

Model: Cox proportional hazards on the age scale (days), delayed entry at cohort entry, Efron ties,
ever-use of the class as a time-varying binary exposure that switches on `lag` years after the k-th
dispensing (the exposure window, `repurpose.dwas.window`), adjusted by stratification and/or categorical
covariates (`screen.adjust`).

Why it is fast and still exact: persons are grouped into *cells* (`repurpose.dwas.risk_sets`). At an event
time t in stratum s, the Efron partial likelihood only needs, per cell and exposure state, the number at
risk and the number of events at t. For a class, the exposed counts come from its sparse exposure table
by a running sum over each stratum's event ages (`repurpose.dwas.screen_counts`): with exposure the only
covariate, the default, per stratum (`screen_binary`, fitted by `repurpose.cox.binary`); with covariates,
per cell at its stratum's event ages (`repurpose.dwas.screen_covariates`, fitted by `repurpose.cox.categorical`).
Unexposed counts are the cell totals minus the exposed ones. No person-interval table is built.
The tests compare both with the general engine on risk sets built by binary search (tests/screen_reference.py).
Owns the exposure-only fits, the dispatch between the paths, the q-values, and the stage functions
`screen_level` and `gather_screen`. May import `repurpose.cox`, `repurpose.dwas.risk_sets`, `.screen_counts`,
`.screen_covariates` and `.window`, `repurpose.schemas`, `repurpose.release.disclosure` and `repurpose.atc`.
See docs/methods.md and docs/cox_engine.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.atc import anatomical_group_filter, load_atc_names
from repurpose.cox.binary import BinaryRiskSets, fit_binary_efron
from repurpose.cox.result import CoxFitResult
from repurpose.cox.risk_set_table import segment_sums
from repurpose.dwas.risk_sets import cell_layout, index_screen_inputs, total_counts
from repurpose.dwas.screen_counts import (
    ChunkQueries,
    ClassCounts,
    SexGroup,
    StratumGrid,
    class_results,
    combine_chunks,
    count_exposed_chunk,
    exposed_rows_by_class,
    sex_groups_of,
    stratum_grid,
)
from repurpose.dwas.screen_covariates import screen_covariates
from repurpose.dwas.window import lag_days
from repurpose.lazy import lazy_module
from repurpose.release.disclosure import (
    DisclosurePolicy,
    disclosure_table,
    for_display,
    release_screen,
    release_summary,
)
from repurpose.schemas import (
    SCREEN_COLUMNS,
    SCREEN_COUNT_COLUMNS,
    SCREEN_EXPOSURE_COLUMNS,
    SCREEN_PART_SCHEMA,
)
from repurpose.stages import stage

stats = lazy_module("scipy.stats")

log = logging.getLogger(__name__)

ADJUSTMENT_VARIABLES = ("sex", "birth_cohort", "education")


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
