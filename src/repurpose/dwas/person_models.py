"""Person-level Cox models of the candidate classes: dose-response, separated lags, active comparator and
the confirmation model adjusted for health-care use and L1-selected proxy confounders.

Owns the models that need the cohort and the exposure tables (not just the screen table), for the
candidates of one ATC level at a time (`submit_level_models`). They share the screen's strata and covariates
(`repurpose.dwas.risk_sets`) and its exposure window (`repurpose.dwas.window`), so that with nothing added
they reproduce the screen's estimate. Estimates are summarised by `repurpose.cox.result.wald`. May import
`repurpose.cox`, the other `repurpose.dwas` modules of the screen, `repurpose.schemas` and `repurpose.logs`; the
health-care-use covariate is counted by the exposure stage (`repurpose.dwas.exposure`) and read from its table.

Why it scales: the cohort's risk sets are counted once with everyone unexposed (`ModelCohort`, the screen's
trick); a model cuts only its exposed persons' follow-up into categories (`class_segments`, `switch_segments`)
and `repurpose.dwas.risk_sets.pattern_risk_sets` moves their counts out of the unexposed rows into their
own. No model splits or aggregates the whole cohort, and a class's exposure rows are a slice of the level's
table indexed once (`LevelExposures`). The active comparator's new users are few and aggregated directly.
The candidates are independent: every level's are fitted in one pool of `resources.threads` threads
(`candidate_pool`), and the caller reads the next level's table while the pool fits the current one.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from repurpose.atc import atc_parent
from repurpose.cox.engine import efron_evaluator, fit_efron
from repurpose.cox.result import wald
from repurpose.cox.risk_set_table import RiskSetTable, aggregate_counting_process, dense_codes
from repurpose.dwas.proxy_confounders import select_proxy_confounders
from repurpose.dwas.risk_sets import (
    CellLayout,
    RiskSetCounts,
    cell_layout,
    pattern_covariates,
    pattern_risk_sets,
    prepare_cohort,
    total_counts,
)
from repurpose.dwas.window import NEVER_EXPOSED, exposed_from, lag_days
from repurpose.lazy import lazy_module
from repurpose.logs import Progress, threads_log_as_caller
from repurpose.schemas import dose_column

lifelines = lazy_module("lifelines")
lifelines_exceptions = lazy_module("lifelines.exceptions")
optimize = lazy_module("scipy.optimize")
stats = lazy_module("scipy.stats")

log = logging.getLogger(__name__)

HCU_BINS = (1, 2, 4, 7)
"""Health-care-use proxy categories (distinct ATC level-4 classes in the year before entry): 0, 1, 2-3, 4-6, 7+."""
HCU_LABELS = ("0", "1", "2-3", "4-6", "7+")
"""The categories of HCU_BINS in words (classes in the year before entry)."""


EXPOSURE_ROW_CHECKS = 100_000
"""Exposure rows (evenly spaced) whose `cohort_row` is checked against their person_id: a table built from
another cohort fails on nearly every row, and checking all of a national level's rows costs seconds."""


@dataclass(frozen=True)
class ModelCohort:
    """The cohort of the person-level models with its risk sets counted once, everyone unexposed: the screen's
    cells (strata and covariates; with `hcu` also the health-care-use categories) and per cell the totals at
    every event time of its stratum. A model then counts only its exposed persons' follow-up
    (`repurpose.dwas.risk_sets.pattern_risk_sets`), so no model aggregates the whole cohort."""

    prepared: pl.DataFrame  # one row per person: cohort_row (0..n-1), cohort_file_row (its row in the cohort table, when known), person_id, entry, exit, event, labels
    layout: CellLayout
    totals: RiskSetCounts
    time_span: int
    hcu: bool = False
    hcu_left_out: tuple[str, ...] = ()  # health-care-use categories without events, left out (`without_eventless_categories`)

    @cached_property
    def entry(self) -> np.ndarray:
        return self.prepared["entry"].to_numpy()

    @cached_property
    def exit(self) -> np.ndarray:
        return self.prepared["exit"].to_numpy()

    @cached_property
    def event(self) -> np.ndarray:
        return self.prepared["event"].to_numpy()

    @property
    def stratum(self) -> np.ndarray:
        """Per person the stratum."""
        return self.layout.stratum_of_cell[self.layout.cell_of_person]

    @property
    def covariates(self) -> np.ndarray:
        """Per person the covariate design (persons x covariate columns)."""
        return self.layout.covariate_design[self.layout.cell_of_person]

    @cached_property
    def covariate_varying(self) -> np.ndarray:
        """Per covariate column, whether it varies among the persons with follow-up."""
        cells = np.unique(self.layout.cell_of_person[self.entry < self.exit])
        design = self.layout.covariate_design[cells]
        if not len(cells):
            return np.zeros(design.shape[1], dtype=bool)
        return design.max(axis=0) > design.min(axis=0)

    @cached_property
    def persons_sorted(self) -> tuple[pl.Series, pl.Series]:
        """(cohort rows in person_id order, the person_ids in that order): `cohort_rows` searches them."""
        order = self.prepared["person_id"].arg_sort()
        return order, self.prepared["person_id"].gather(order)

    @cached_property
    def row_of_file_row(self) -> np.ndarray | None:
        """Per row of the cohort table (`model_cohort`'s input) this cohort's row, -1 for persons it leaves out;
        None when its rows are that table's rows in order (or do not say which they are: `cohort_file_row`)."""
        if "cohort_file_row" not in self.prepared.columns:
            return None
        file_row = self.prepared["cohort_file_row"].cast(pl.Int64).to_numpy()
        if np.array_equal(file_row, np.arange(len(file_row))):
            return None
        lookup = np.full(int(file_row.max()) + 1 if len(file_row) else 0, -1, dtype=np.int64)
        lookup[file_row] = np.arange(len(file_row))
        return lookup

    def exposure_rows(self, exposures: pl.DataFrame) -> tuple[pl.Series | None, pl.Series]:
        """Per exposure row whether its person is in this cohort (None: all are), and the cohort rows of those
        that are (in their order). The exposure stage's tables carry the person's row in the cohort table
        (`cohort_row`): taken as it is or looked up, and checked against person_id (`EXPOSURE_ROW_CHECKS`
        rows); other tables are searched by person_id (`cohort_rows`)."""
        if "cohort_file_row" not in self.prepared.columns or "cohort_row" not in exposures.columns:
            return self.cohort_rows(exposures["person_id"])
        found, rows, lookup = None, exposures["cohort_row"], self.row_of_file_row
        if lookup is not None:
            file_row = rows.cast(pl.Int64).to_numpy()
            inside = (file_row >= 0) & (file_row < len(lookup))
            row = np.where(inside, lookup[np.where(inside, file_row, 0)] if len(lookup) else -1, -1)
            found = pl.Series(row >= 0)
            rows = pl.Series(row[row >= 0])
        ids = exposures["person_id"] if found is None else exposures["person_id"].filter(found)
        step = max(1, len(rows) // EXPOSURE_ROW_CHECKS)
        checked = rows.gather_every(step)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.prepared.height
                          or not self.prepared["person_id"].gather(checked).equals(ids.gather_every(step), check_names=False)):  # fmt: skip
            raise ValueError(
                "an exposure table's cohort_row does not match its person_id: it was built from another cohort "
                "table; rebuild the exposures from this cohort"
            )
        return found, rows.cast(self.prepared["cohort_row"].dtype)

    def cohort_rows(self, person_id: pl.Series) -> tuple[pl.Series, pl.Series]:
        """Per person_id whether it is in the cohort, and the cohort rows of those that are (in their order):
        a binary search in the sorted identifiers, cheaper than a hash join of every exposure row."""
        order, sorted_ids = self.persons_sorted
        if not len(sorted_ids):
            return pl.Series([False] * len(person_id)), order.clear()
        position = sorted_ids.search_sorted(person_id, side="left").clip(0, len(sorted_ids) - 1)
        found = sorted_ids.gather(position) == person_id
        return found, order.gather(position.filter(found)).cast(self.prepared["cohort_row"].dtype)

    @cached_property
    def n_with_follow_up(self) -> int:
        return int(np.sum(self.entry < self.exit))

    def rows_of(self, class_rows: pl.DataFrame, columns: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The cohort rows of a class's exposure rows (`LevelExposures.rows`: persons outside the cohort
        dropped) and per column of `columns` their ages in days (`NEVER_EXPOSED` where missing)."""
        ages = [class_rows[c].cast(pl.Int64).fill_null(NEVER_EXPOSED).to_numpy() for c in columns]
        return class_rows["cohort_row"].cast(pl.Int64).to_numpy(), ages


@dataclass(frozen=True)
class LevelExposures:
    """One ATC level's exposure rows of a `ModelCohort`'s persons, with their cohort row, sorted by class, and
    where each class's rows start and end: a class's rows are a slice, not a filter of the level's table and
    a join with the cohort per model (built once per level and cohort by `level_exposures`)."""

    frame: pl.DataFrame
    bounds: dict[str, tuple[int, int]]

    def rows(self, *codes: str) -> pl.DataFrame:
        """The rows of the classes `codes` (in that order)."""
        parts = [self.frame.slice(*self.bounds[c]) for c in codes if c in self.bounds]
        return pl.concat(parts) if parts else self.frame.clear()

    @property
    def codes(self) -> list[str]:
        """The classes of the level, sorted."""
        return sorted(self.bounds)


def model_exposure_columns(config: dict[str, Any]) -> list[str]:
    """The columns of a level's exposure table that the person-level models read (a file holds more)."""
    cutpoints = [float(c) for c in config["screen"]["dose_cutpoints_ddd"]]
    return ["person_id", "atc_code", "exposure_start_age_days", "first_dispense_age_days", *map(dose_column, cutpoints)]


def read_level_exposures(path: str | Path, columns: list[str], codes: list[str] | None = None) -> pl.DataFrame:
    """A level's exposure table: `columns`, with `cohort_row` when the table has it (`exposure_rows`), and only
    the classes `codes` when given (the file is sorted by class: its row groups' statistics skip the rest)."""
    frame = pl.scan_parquet(path)
    has_row = "cohort_row" in frame.collect_schema().names()
    frame = frame.select(list(dict.fromkeys([*columns, *(["cohort_row"] if has_row else [])])))
    return (frame if codes is None else frame.filter(pl.col("atc_code").is_in(codes))).collect()


def level_exposures(model: ModelCohort, exposures: pl.DataFrame | LevelExposures) -> LevelExposures:
    """`LevelExposures` of an exposure table for `model` (given one already, it is returned as it is: it must
    have been built for the same model)."""
    if isinstance(exposures, LevelExposures):
        return exposures
    found, rows = model.exposure_rows(exposures)  # an inner join keeping the exposures' order
    frame = (exposures if found is None else exposures.filter(found)).with_columns(cohort_row=rows)
    if not frame["atc_code"].is_sorted():
        frame = frame.sort("atc_code", maintain_order=True)
    runs = frame.select(pl.col("atc_code").rle()).unnest("atc_code")  # sorted: one run per class
    length = runs["len"].to_numpy().astype(np.int64)
    bounds = {c: (int(f), int(n)) for c, f, n in zip(runs["value"].to_list(), np.cumsum(length) - length, length, strict=True)}
    return LevelExposures(frame, bounds)


def model_cohort(cohort: pl.DataFrame, config: dict[str, Any], hcu: pl.DataFrame | None = None) -> ModelCohort:
    """The person-level models' cohort: the screen's strata and covariates (`hcu`, per person_id the number of
    classes in the year before entry, adds the health-care-use categories as a covariate)."""
    prepared = prepare_cohort(cohort, config["screen"]["birth_cohort_band_years"]).with_row_index("cohort_file_row")
    return aggregated_cohort(prepared, config, hcu)


def aggregated_cohort(prepared: pl.DataFrame, config: dict[str, Any], hcu: pl.DataFrame | None = None) -> ModelCohort:
    """`ModelCohort` of prepared cohort rows (any subset: renumbered), with the health-care-use categories
    as a covariate when `hcu` is given (HCU_BINS)."""
    adjust = config["screen"]["adjust"]
    prepared = prepared.drop("cohort_row", strict=False).with_row_index("cohort_row")
    covariates = list(adjust["covariates"])
    left_out: tuple[str, ...] = ()
    if hcu is not None:
        count = prepared.select("person_id").join(hcu, on="person_id", how="left", maintain_order="left")
        category = np.searchsorted(HCU_BINS, count["n_classes_year_before_entry"].fill_null(0).to_numpy(), side="right")
        prepared, left_out = without_eventless_categories(prepared, category)
        covariates.append("hcu")
        if left_out:  # no count: a category without events is itself a small number
            log.info("health-care use: no event in the categories %s (classes in the year before entry): their persons "
                     "are left out of the confirmation model, the limit of its fit", ", ".join(left_out))
    layout = cell_layout(prepared, "all", adjust["strata"], covariates)
    time_span = int(prepared["exit"].max()) + 2 if prepared.height else 2
    return ModelCohort(prepared, layout, total_counts(prepared, layout, time_span), time_span, hcu is not None, left_out)


def without_eventless_categories(prepared: pl.DataFrame, category: np.ndarray) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """`prepared` with the health-care-use category (index into HCU_LABELS per row) as the label column `hcu`,
    and the categories in which nobody with follow-up has the event (in words).

    Such a category's coefficient is minus infinity (monotone likelihood): Newton would walk it out for some
    twenty steps while every other coefficient has long converged. The fit's limit is the model without
    these persons, so they get no follow-up (exit = entry, the same row numbers) and a label with events
    (no column of their own); the other estimates are that limit, exactly."""
    followed = (prepared["entry"] < prepared["exit"]).to_numpy()
    event = prepared["event"].to_numpy().astype(bool) & followed
    persons = np.bincount(category[followed], minlength=len(HCU_LABELS))
    events = np.bincount(category[event], minlength=len(HCU_LABELS))
    eventless = (persons > 0) & (events == 0)
    if np.any(eventless) and np.any(events > 0):
        out = eventless[category]
        category = np.where(out, int(np.argmax(events > 0)), category)
        prepared = prepared.with_columns(
            exit=pl.when(pl.Series(out)).then("entry").otherwise("exit"),
            exit_age_days=pl.when(pl.Series(out)).then("entry_age_days").otherwise("exit_age_days"),
        )
    else:
        eventless[:] = False
    labelled = prepared.with_columns(hcu=pl.lit("hcu_") + pl.Series(category).cast(pl.String))
    return labelled, tuple(label for label, out in zip(HCU_LABELS, eventless, strict=True) if out)


def segments(
    entry: np.ndarray, exit_: np.ndarray, boundaries: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each person's (entry, exit] at increasing `boundaries` (clipped to the interval); category k
    holds from boundary k-1 to boundary k. Returns (person, start, stop, category) of non-empty pieces."""
    cuts = [entry] + [np.clip(b, entry, exit_) for b in boundaries] + [exit_]
    for k in range(1, len(cuts)):  # categories only move up
        cuts[k] = np.maximum(cuts[k], cuts[k - 1])
    persons, starts, stops, cats = [], [], [], []
    for k in range(len(cuts) - 1):
        keep = cuts[k + 1] > cuts[k]
        persons.append(np.flatnonzero(keep))
        starts.append(cuts[k][keep])
        stops.append(cuts[k + 1][keep])
        cats.append(np.full(int(keep.sum()), k))
    return tuple(np.concatenate(x) for x in (persons, starts, stops, cats))  # type: ignore[return-value]


def wald_floats(coef: float, se: float) -> tuple[float, float, float, float]:
    """(HR, CI lower, CI upper, p) of one coefficient as floats (`repurpose.cox.result.wald`)."""
    summary = wald(coef, se)
    return float(summary.hr), float(summary.ci_lower), float(summary.ci_upper), float(summary.p_value)


@dataclass(frozen=True)
class ClassSegments:
    """The follow-up of a class's exposed persons cut into categories: (person, start, stop] in `category`
    (0 = unexposed, as everyone else's follow-up), `event` on the piece that ends at exit with the event."""

    person: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    category: np.ndarray
    event: np.ndarray


def class_segments(
    model: ModelCohort, class_rows: pl.DataFrame, columns: list[str], lag_in_days: int | list[int]
) -> ClassSegments:
    """Cut the follow-up of the persons of `class_rows` at the ages in `columns` (increasing: exposure start,
    dose crossings), each opened by the exposure window at its lag (`lag_in_days`, one or one per column);
    category k holds from the k-th cut on. Only these persons' follow-up is cut (`segments`)."""
    rows, ages = model.rows_of(class_rows, columns)
    lags = lag_in_days if isinstance(lag_in_days, list) else [lag_in_days] * len(columns)
    entry, exit_ = model.entry[rows], model.exit[rows]
    local, start, stop, category = segments(entry, exit_, [exposed_from(entry, age, lag) for age, lag in zip(ages, lags, strict=True)])
    person = rows[local]
    return ClassSegments(person, start, stop, category, model.event[person] & (stop == model.exit[person]))


def segments_table(model: ModelCohort, pieces: ClassSegments, pattern_design: np.ndarray) -> RiskSetTable:
    """Aggregated risk sets of the model in which each piece of category k >= 1 has the design row
    `pattern_design[k]` (row 0, the unexposed, is zeros) beside the cell's covariates."""
    exposed = pieces.category > 0
    person = pieces.person[exposed]
    return pattern_risk_sets(
        model.layout, model.totals, model.layout.cell_of_person[person], pieces.category[exposed],
        pieces.start[exposed], pieces.stop[exposed], pieces.event[exposed], pattern_design[1:], model.time_span,
    )  # fmt: skip


def _fit_segments(
    model: ModelCohort, pieces: ClassSegments, pattern_design: np.ndarray, counted: RiskSetTable | None = None
) -> tuple[np.ndarray, np.ndarray, str, RiskSetTable | None]:
    """One Cox fit (aggregated engine) of `segments_table`; columns that never vary over the follow-up (an
    empty category) are left out and get NaN. `counted`, the table of the same pieces under another design
    (returned by an earlier call), lends its risk sets: only the patterns' covariates change."""
    baseline = bool(np.any(pieces.category == 0)) or len(np.unique(pieces.person)) < model.n_with_follow_up
    values = pattern_design[np.union1d(np.unique(pieces.category), [0] if baseline else [])]
    pattern_varying = values.max(axis=0) > values.min(axis=0) if len(values) else np.zeros(pattern_design.shape[1], dtype=bool)
    varying = np.flatnonzero(np.concatenate([pattern_varying, model.covariate_varying]))
    n_columns = pattern_design.shape[1] + model.layout.covariate_design.shape[1]
    coef, se = np.full(n_columns, np.nan), np.full(n_columns, np.nan)
    if not len(varying):
        return coef, se, "no_variation", counted
    if counted is None:
        table = segments_table(model, pieces, pattern_design)
    else:
        table = RiskSetTable.factored(
            counted.fit_index, counted.risk_set_index, counted.n_at_risk, counted.n_events,
            pattern_covariates(pattern_design[1:], model.layout.covariate_design), counted.row_pattern, counted.n_fits,
        )  # fmt: skip
    fit = fit_efron(table if len(varying) == n_columns else table.with_covariates(varying))
    if fit.status[0] == "ok":
        coef[varying], se[varying] = fit.coef[0], fit.se[0]
    return coef, se, str(fit.status[0]), table


def dose_response(
    model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, cutpoints: list[float], lag_in_days: int
) -> dict[str, float]:
    """HR per cumulative-DDD category (time-varying; category 0 = unexposed) and a trend test among the exposed.

    Categories: 1 = exposed below the first cut, 2 = between cuts, ... (the lag delays every switch).
    Trend: model `exposed + score`, score = category - 1 among the exposed; its Wald p is the p for
    trend, so a trend is judged among users and not driven by the exposed/unexposed contrast.
    """
    rows = level_exposures(model, exposures).rows(code)
    pieces = class_segments(model, rows, ["exposure_start_age_days", *[dose_column(c) for c in cutpoints]], lag_in_days)
    n_cat = len(cutpoints) + 2
    categories = np.arange(n_cat)
    dummies = (categories[:, None] == np.arange(1, n_cat)[None, :]).astype(np.float64)
    trend = np.column_stack([categories >= 1, np.maximum(categories - 1, 0)]).astype(np.float64)
    result: dict[str, float] = {"dose_exposed_cases": float(np.sum(pieces.event & (pieces.category >= 1)))}
    coef, se, _, counted = _fit_segments(model, pieces, dummies)
    for k in range(n_cat - 1):
        result[f"hr_dose_{k + 1}"] = wald_floats(coef[k], se[k])[0]
    coef, se, _, _ = _fit_segments(model, pieces, trend, counted)  # the same pieces: the same risk sets
    hr, _, _, p = wald_floats(coef[1], se[1])
    result.update(dose_trend_hr=hr, dose_trend_p=p)
    return result


EXPOSED_DESIGN = np.array([[0.0], [1.0]])
"""Design rows of the screen's model: unexposed, exposed."""

SEPARATED_LAG_DESIGN = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
"""Design rows of the separated-lag model's categories: unexposed, recently exposed, exposed >= the lag ago."""


def separated_lag_estimates(
    model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, lags_years: list[float]
) -> dict[str, float]:
    """Per lag L > 0, the log HR of exposure that started >= L years ago with the first L years of
    exposure as their own category (not counted as unexposed).

    Why: in the screen's lagged model the recently exposed are counted as unexposed, so even a causal
    effect of a common drug is diluted towards 1 at long lags and could look like reverse causation.
    Separating them gives an undiluted lagged estimate: it stays put for a causal effect and falls
    to 1 when the association came from prescribing in the prodrome.
    """
    rows = level_exposures(model, exposures).rows(code)
    result: dict[str, float] = {}
    for lag in sorted(v for v in lags_years if v > 0):
        pieces = class_segments(model, rows, ["exposure_start_age_days"] * 2, [0, lag_days(lag)])
        coef, se, _, _ = _fit_segments(model, pieces, SEPARATED_LAG_DESIGN)
        if np.isfinite(coef[1]):
            result[f"log_hr_separated_lag{lag:g}"] = float(coef[1])
            result[f"se_separated_lag{lag:g}"] = float(se[1])
            result[f"hr_separated_lag{lag:g}"] = float(np.exp(coef[1]))
    return result


def comparator_classes(code: str, codes: list[str]) -> list[str]:
    """Classes with the same indication: same level-3 parent but another level-4 class (level 4/5 candidates);
    for level-3 and level-2 candidates the other classes under the parent one level up."""
    level = {1: 1, 3: 2, 4: 3, 5: 4, 7: 5}[len(code)]
    if level <= 1:
        return []
    if level >= 4:
        parent, own = atc_parent(code, 3), atc_parent(code, 4)
        return [c for c in codes if len(c) == len(code) and c.startswith(parent) and not c.startswith(own)]
    parent = atc_parent(code, level - 1)
    return [c for c in codes if len(c) == len(code) and c.startswith(parent) and c != code]


def active_comparator(
    model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, codes: list[str], lag_in_days: int
) -> dict[str, Any]:
    """New-user active-comparator HR: candidate vs comparator-class initiators (first dispensing after entry).

    A person belongs to the group dispensed first (ties dropped); follow-up starts at the exposure
    start (k-th dispensing) of that group plus the lag and ends at exit, on the age scale; exposure
    is fixed at initiation (intention to treat). Same strata as the screen.
    """
    comparators = comparator_classes(code, codes)
    empty = {"n_active_comparator": None, "n_active_comparator_cases": None, "comparator_classes": ""}
    if not comparators:
        return empty
    indexed = level_exposures(model, exposures)
    ages = ["first_dispense_age_days", "exposure_start_age_days"]
    cand = indexed.rows(code).select("cohort_row", *ages)  # one row per person and class (docs/schemas.md)
    comp = indexed.rows(*comparators).group_by("cohort_row").agg(pl.col(ages).min())
    # Everyone else has neither first dispensing: a tie, dropped below.
    both = cand.join(comp, on="cohort_row", how="full", coalesce=True, suffix="_comparator")
    row = both["cohort_row"].cast(pl.Int64).to_numpy()
    both = both.with_columns(
        entry_age_days=pl.Series(model.entry[row]), exit_age_days=pl.Series(model.exit[row]), event=pl.Series(model.event[row])
    )
    big = np.iinfo(np.int32).max
    both = both.with_columns(
        first_cand=pl.col("first_dispense_age_days").fill_null(big),
        first_comp=pl.col("first_dispense_age_days_comparator").fill_null(big),
    ).filter(pl.col("first_cand") != pl.col("first_comp"))
    both = both.with_columns(candidate=pl.col("first_cand") < pl.col("first_comp")).with_columns(
        first=pl.min_horizontal("first_cand", "first_comp"),
        index_start=pl.when("candidate")
        .then(pl.col("exposure_start_age_days"))
        .otherwise(pl.col("exposure_start_age_days_comparator"))
        .cast(pl.Int64)
        .fill_null(NEVER_EXPOSED),
    )
    index_age = exposed_from(
        both["entry_age_days"].cast(pl.Int64).to_numpy(), both["index_start"].to_numpy(), lag_in_days
    )
    both = both.with_columns(index_age=pl.Series(index_age)).filter(
        (pl.col("first") > pl.col("entry_age_days")) & (pl.col("index_age") < pl.col("exit_age_days"))
    )
    n_cand = int(both["candidate"].sum())
    n_cases = int((both["candidate"] & both["event"]).sum())
    result = {
        "n_active_comparator": both.height - n_cand,
        "n_active_comparator_cases": int((~both["candidate"] & both["event"]).sum()),
        "n_active_comparator_candidate_cases": n_cases,
        "comparator_classes": ",".join(comparators),
    }
    if n_cand == 0 or n_cand == both.height or n_cases == 0 or result["n_active_comparator_cases"] == 0:
        return result
    cell = model.layout.cell_of_person[both["cohort_row"].to_numpy()]
    table = aggregate_counting_process(
        both["index_age"].to_numpy(),
        both["exit_age_days"].to_numpy(),
        both["event"].to_numpy(),
        np.column_stack([both["candidate"].cast(pl.Float64).to_numpy(), model.layout.covariate_design[cell]]),
        strata=model.layout.stratum_of_cell[cell],
    )
    fit = fit_efron(table)
    if fit.status[0] == "ok":
        hr, lo, hi, _ = wald_floats(fit.coef[0, 0], fit.se[0, 0])
        result.update(hr_active_comparator=hr, ci_lower_active_comparator=lo, ci_upper_active_comparator=hi)
    return result


def split_time_varying(
    prepared: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], lag_in_days: int
) -> pl.DataFrame:
    """Counting-process rows with one 0/1 column per class in `classes` (ever-use from start + lag), split at
    every switch; the first class is the exposure of interest. Columns: cohort_row, start, stop, event, <classes>."""
    switches = (
        exposures.filter(pl.col("atc_code").is_in(classes))
        .select("person_id", "atc_code", "exposure_start_age_days")
        .join(prepared.select("person_id", "cohort_row", "entry_age_days", "exit_age_days"), on="person_id")
    )
    switch = exposed_from(
        switches["entry_age_days"].cast(pl.Int64).to_numpy(),
        switches["exposure_start_age_days"].cast(pl.Int64).to_numpy(),
        lag_in_days,
    )
    switches = switches.with_columns(switch=pl.Series(switch)).filter(pl.col("switch") < pl.col("exit_age_days"))
    base = prepared.select(
        "cohort_row", entry=pl.col("entry_age_days").cast(pl.Int64), exit=pl.col("exit_age_days").cast(pl.Int64), event="event"
    )
    cut_points = pl.concat(
        [
            base.select("cohort_row", time=pl.col("entry")),
            switches.select("cohort_row", time=pl.col("switch")),
        ]
    ).unique()
    pieces = (
        cut_points.join(base, on="cohort_row")
        .sort("cohort_row", "time")
        .with_columns(stop=pl.col("time").shift(-1).over("cohort_row"))
        .with_columns(stop=pl.col("stop").fill_null(pl.col("exit")))
        .filter(pl.col("stop") > pl.col("time"))
        .select("cohort_row", start="time", stop="stop", event=pl.col("event") & (pl.col("stop") == pl.col("exit")))
    )
    for code in classes:
        person_switch = switches.filter(pl.col("atc_code") == code).select("cohort_row", _switch="switch")
        pieces = (
            pieces.join(person_switch, on="cohort_row", how="left")
            .with_columns(pl.when(pl.col("start") >= pl.col("_switch")).then(1).otherwise(0).cast(pl.Int8).alias(code))
            .drop("_switch")
        )
    return pieces.sort("cohort_row", "start")


def switch_segments(
    model: ModelCohort, exposures: pl.DataFrame | LevelExposures, classes: list[str], lag_in_days: int
) -> tuple[ClassSegments, np.ndarray]:
    """The follow-up of the persons who start any class of `classes` (ever-use from start + lag, before exit),
    cut at every start: (pieces whose category numbers a set of classes in use, the design row of each
    category: one 0/1 column per class, row 0 = none). Nobody else's follow-up is cut."""
    bit_of = {code: 1 << i for i, code in enumerate(classes)}
    joined = level_exposures(model, exposures).rows(*classes).select(
        "cohort_row", bit=pl.col("atc_code").replace_strict(bit_of, return_dtype=pl.Int64), age=pl.col("exposure_start_age_days").cast(pl.Int64)
    )
    row = joined["cohort_row"].cast(pl.Int64).to_numpy()
    switch = exposed_from(model.entry[row], joined["age"].to_numpy(), lag_in_days)
    keep = switch < model.exit[row]
    row, switch, bit = row[keep], switch[keep], joined["bit"].to_numpy()[keep]
    order = np.argsort(row * model.time_span + switch, kind="stable")  # by row, then switch (0 <= switch < time_span)
    row, switch, bit = row[order], switch[order], bit[order]
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]]) if len(row) else np.zeros(0, dtype=np.int64)
    used = np.cumsum(bit)
    used -= np.repeat(used[first] - bit[first], np.diff(np.r_[first, len(row)]))  # classes in use, per person
    last = np.r_[row[1:] != row[:-1], True] if len(row) else np.zeros(0, dtype=bool)
    stop = np.where(last, model.exit[row], np.r_[switch[1:], 0][: len(row)])
    piece = stop > switch
    category, masks = dense_codes(used[piece], 1 << len(classes))
    person = row[piece]
    pieces = ClassSegments(person, switch[piece], stop[piece], category + 1, model.event[person] & (stop[piece] == model.exit[person]))
    design = np.zeros((len(masks) + 1, len(classes)))
    design[1:] = (masks[:, None] >> np.arange(len(classes))[None, :]) & 1
    return pieces, design


def confirmation_fit(
    model: ModelCohort,
    exposures: pl.DataFrame | LevelExposures,
    code: str,
    adjust_classes: list[str],
    config: dict[str, Any],
    lag_in_days: int,
    engine: str = "lifelines",
) -> dict[str, Any]:
    """Cox model of one class with the screen's strata and covariates, adjusted for `adjust_classes`
    (time-varying ever-use) and the health-care-use categories when `model` has them (`model_cohort(hcu=)`).

    `engine="aggregated"` fits the Efron likelihood on the cohort's risk sets (`switch_segments`: only the
    users of these classes are counted; every covariate is categorical, so it is exact); `"lifelines"` fits
    lifelines `CoxTimeVaryingFitter` on the split data (`split_time_varying`), the same likelihood, slowly.
    With nothing added it reproduces the screen's estimate (tests/test_candidates.py).
    """
    not_estimable = False
    if engine == "lifelines":
        coef, se, not_estimable = _lifelines_confirmation(model, exposures, code, adjust_classes, config, lag_in_days)
    else:
        pieces, design = switch_segments(model, exposures, [code, *adjust_classes], lag_in_days)
        fit = fit_efron(segments_table(model, pieces, design))
        coef, se = float(fit.coef[0, 0]), float(fit.se[0, 0])
    hr, lo, hi, p = wald_floats(coef, se)
    adjusted_for = ", ".join([*adjust_classes, *(["health-care use"] if model.hcu else [])])
    return {
        "hr_confirmation": hr,
        "ci_lower_confirmation": lo,
        "ci_upper_confirmation": hi,
        "p_confirmation": p,
        "log_hr_confirmation": coef,
        "se_confirmation": se,
        "confirmation_adjusted_for": adjusted_for + ("; not estimable: the model did not converge" if not_estimable else ""),
    }


def _lifelines_confirmation(
    model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, adjust_classes: list[str], config: dict[str, Any], lag_in_days: int
) -> tuple[float, float, bool]:
    """The confirmation model by lifelines on the whole cohort's split data: (log HR, SE, not estimable)."""
    adjust = config["screen"]["adjust"]
    covariates = [*adjust["covariates"], *(["hcu"] if model.hcu else [])]
    rows = level_exposures(model, exposures).rows(code, *adjust_classes)
    data = split_time_varying(model.prepared, rows, [code, *adjust_classes], lag_in_days)
    data = data.join(model.prepared.select("cohort_row", *dict.fromkeys([*adjust["strata"], *covariates])), on="cohort_row")
    covariate_names = [code, *adjust_classes]
    for variable in covariates:
        for level in sorted(data[variable].unique().to_list())[1:]:
            data = data.with_columns((pl.col(variable) == level).cast(pl.Int8).alias(f"{variable}={level}"))
            covariate_names.append(f"{variable}={level}")
    strata = adjust["strata"]
    frame = data.select("cohort_row", "start", "stop", pl.col("event").cast(pl.Int8), *covariate_names, *strata).to_pandas()
    fitter = lifelines.CoxTimeVaryingFitter()
    try:
        with warnings.catch_warnings():  # lifelines warns on rare dummy levels; the fit status is checked below
            warnings.simplefilter("ignore")
            fitter.fit(frame, id_col="cohort_row", event_col="event", start_col="start", stop_col="stop", strata=strata or None)
        return float(fitter.params_[code]), float(fitter.standard_errors_[code]), False
    except lifelines_exceptions.ConvergenceError as error:  # e.g. a covariate that separates the events: no estimate, said so
        log.warning("%s: confirmation model not estimable (lifelines: %s)", code, str(error).splitlines()[0])
        return float("nan"), float("nan"), True


@dataclass(frozen=True)
class SubmittedLevel:
    """The candidates of one level submitted to a pool: their codes and the futures of their rows."""

    codes: list[str]
    futures: list[Future[dict[str, Any]]]

    def rows(self, progress: Progress | None = None) -> pl.DataFrame:
        """The candidates' rows in their order, once fitted (`progress` counts each)."""
        rows = []
        for code, future in zip(self.codes, self.futures, strict=True):
            rows.append(future.result())
            if progress is not None:
                progress.step_done(code)
        return pl.DataFrame(rows, infer_schema_length=None)


def submit_level_models(
    pool: Executor,
    config: dict[str, Any],
    model: ModelCohort,
    confirmation: ModelCohort,
    exposures: pl.DataFrame,
    codes: list[str],
    confirm_codes: list[str],
    replicate: Callable[[str, list[str]], dict[str, Any]] | None = None,
) -> SubmittedLevel:
    """Submit to `pool` the person-level models of the candidates `codes` of one level: dose-response,
    separated lags, active comparator and (for `confirm_codes`) confirmation. `confirmation` is the cohort of
    the confirmation model (`model` with the health-care-use categories, when they are used).
    `replicate(code, proxy classes)`, when given, refits the confirmation model of each confirmed code in the
    split halves (`repurpose.dwas.replication`) with the same proxy classes; its columns join the row.
    The pool may hold other levels' candidates: the caller loads the next level while these are fitted."""
    settings = config["candidates"]
    main_lag_days = lag_days(settings["main_lag_years"])
    cutpoints = [float(c) for c in config["screen"]["dose_cutpoints_ddd"]]
    # `confirmation` numbers the same persons in the same order (`aggregated_cohort` of model.prepared): one index.
    indexed = level_exposures(model, exposures)
    all_codes = indexed.codes  # the classes of the level's persons in the cohort (the table holds no others)

    def candidate_row(code: str) -> dict[str, Any]:
        started = time.perf_counter()
        row: dict[str, Any] = {"atc_code": code}
        row.update(dose_response(model, indexed, code, cutpoints, main_lag_days))
        row.update(separated_lag_estimates(model, indexed, code, config["screen"]["lags_years"]))
        row.update(active_comparator(model, indexed, code, all_codes, main_lag_days))
        proxies = selected.result()
        if code in proxies:
            engine = settings["confirmation"]["engine"]
            row.update(confirmation_fit(confirmation, indexed, code, proxies[code], config, main_lag_days, engine))
            if replicate is not None:
                row.update(replicate(code, proxies[code]))
        log.info("%s: person-level models in %.1f s", code, time.perf_counter() - started)
        return row

    # The proxy selection first: its thread runs beside the first candidates' other models until they need it.
    no_proxies: Future[dict[str, list[str]]] = Future()
    no_proxies.set_result({})
    selected = (
        pool.submit(select_proxy_confounders, model.prepared, indexed.frame["cohort_row"], indexed.bounds, all_codes, confirm_codes, settings)
        if confirm_codes
        else no_proxies
    )
    return SubmittedLevel(codes, [pool.submit(candidate_row, code) for code in codes])


def stage_threads(config: dict[str, Any]) -> int:
    """The stage's threads (`resources.threads`, a runtime key: speed, not results)."""
    return int(config.get("resources", {}).get("threads", 1))


@contextmanager
def candidate_pool(threads: int, models: list[ModelCohort], n_tasks: int) -> Iterator[Executor]:
    """Up to `threads` threads (one BLAS thread each) for independent models of the candidates: their numpy,
    scipy and polars work releases the GIL, so the stage's cores fit two candidates at once (the same numbers:
    each model's arithmetic is unchanged). The `models`' cached arrays are built first, not by two threads."""
    workers = max(1, min(threads, n_tasks))
    for model in models:
        model.entry, model.exit, model.event, model.covariate_varying, model.n_with_follow_up  # noqa: B018
    with threads_log_as_caller() as adopt, threadpool_limits(1), ThreadPoolExecutor(max_workers=workers, initializer=adopt) as pool:
        yield pool


def likelihood_ratio_fit(model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, lag_in_days: int, *, level: float = 0.95) -> dict[str, float]:
    """The screen's model of one class (exposed from start + lag, its strata and covariates) with the
    likelihood-ratio p-value and the profile-likelihood CI of the exposure coefficient, for sparse classes.

    Why: with few exposed cases the Wald interval and p lean on a quadratic log-likelihood that is far from
    quadratic. LR statistic = 2 (loglik(b_hat) - loglik(0)) of the exposure (covariates refitted at 0 when
    there are any); the CI holds every b with 2 (loglik(b_hat) - loglik(b)) <= chi2_1(level), the covariates
    fixed at their fitted values when there are none to profile over (exposure-only model: exact).
    Returns {} when the model is not estimable (say, no exposed case).
    """
    pieces = class_segments(model, level_exposures(model, exposures).rows(code), ["exposure_start_age_days"], lag_in_days)
    exposed = pieces.category == 1
    baseline = bool(np.any(~exposed)) or len(np.unique(pieces.person)) < model.n_with_follow_up
    if not (np.any(exposed) and baseline) or not np.any(pieces.event & exposed):
        return {}
    table = segments_table(model, pieces, EXPOSED_DESIGN)
    fit = fit_efron(table)
    if fit.status[0] != "ok":
        return {}
    coef = fit.coef[0].copy()
    loglik_hat = float(fit.loglik[0])
    if table.n_covariates > 1:  # the covariates alone: the same risk sets without the exposure column
        reduced = table.with_covariates(np.arange(1, table.n_covariates))
        loglik_null = float(fit_efron(reduced).loglik[0])
    else:
        loglik_null = float(fit.loglik_null[0])
    statistic = max(2.0 * (loglik_hat - loglik_null), 0.0)
    critical = float(stats.chi2.ppf(level, 1))
    loglik_at = efron_evaluator(table)  # the profile's many evaluations share the table's index

    def deviance_gap(b: float) -> float:
        beta = coef.copy()
        beta[0] = b
        return 2.0 * (loglik_hat - float(loglik_at(beta).loglik[0])) - critical

    b_hat, width = float(coef[0]), 4.0 * max(float(fit.se[0, 0]), 0.1)
    limits = []
    for direction in (-1.0, 1.0):
        far = b_hat + direction * width
        for _ in range(6):  # widen until the deviance crosses the critical value
            if deviance_gap(far) > 0:
                break
            far = b_hat + direction * (abs(far - b_hat) * 2)
        limits.append(float(optimize.brentq(deviance_gap, min(b_hat, far), max(b_hat, far))) if deviance_gap(far) > 0 else float("nan"))
    return {
        "lr_log_hr": b_hat,
        "lr_p_value": float(stats.chi2.sf(statistic, 1)),
        "lr_ci_lower": float(np.exp(limits[0])),
        "lr_ci_upper": float(np.exp(limits[1])),
    }
