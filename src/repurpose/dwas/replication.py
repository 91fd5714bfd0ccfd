"""Split-sample replication inside one registry: the confirmation model of a candidate fitted in two random halves.

Design (`candidates.replication`, off by default; docs/methods.md "Replication inside one registry"). Persons
are split into a discovery half (0) and a held-out replication half (1) by a keyed hash (BLAKE2b, key = the
configured seed) of their identifier, or of the value of a configured cohort column (`group_column`, e.g. a
region) so that whole groups fall on one side. The split depends only on the seed and the identifier, so it
is the same in every run, job and machine, and independent of the data's order. Each candidate that gets the
confirmation model (`repurpose.dwas.person_models.confirmation_fit`, the aggregated engine: the same strata,
covariates, health-care use and proxy classes) is refitted in each half.

The `replication` evidence line (`repurpose.dwas.evidence`): the discovery direction is the row's side of 1;
supported when the discovery half's estimate lies on that side and the held-out half's estimate lies on it
with p < `candidates.fdr_alpha`; against otherwise (the held-out half on the other side, significant or not,
or not significant); not assessed when either half has fewer exposed cases than `candidates.min_evidence_cases`
(or the model was not fitted in the halves).

Release: the held-out half's HR, CI and p are new numbers about a subset of the cohort. They are hidden whole
when either half's 2 x 2 cells (or their differences along the ATC tree within the half) are from 1 to
min_cell - 1 (`repurpose.release.screen_release.screen_hidden_reasons` on each half), or when the row's main
estimate is hidden; `replication_hidden` decides on the exact counts. Person identifiers are never logged.

May import `repurpose.dwas.person_models`, `repurpose.dwas.window`, `repurpose.release` and the top level.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import polars as pl

from repurpose.dwas.person_models import (
    LevelExposures,
    ModelCohort,
    aggregated_cohort,
    confirmation_fit,
    level_exposures,
)
from repurpose.dwas.window import exposed_from
from repurpose.release.policy import DisclosurePolicy
from repurpose.release.screen_release import screen_hidden_reasons

log = logging.getLogger(__name__)

DISCOVERY, REPLICATION = 0, 1
"""The halves: the discovery half and the held-out replication half whose estimate is shown."""

HALF_NAMES = {DISCOVERY: "discovery", REPLICATION: "replication"}

REPLICATION_COLUMNS = ("hr_replication", "ci_lower_replication", "ci_upper_replication", "p_replication")
"""The released replication estimate (the held-out half) in the drug ranking."""

HALF_COUNTS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")
"""The exact counts of each half kept (internal columns `<half>_<count>`) for the line and the release."""


def half_of(value: str, seed: int) -> int:
    """The half (0 or 1) of one identifier: the lowest bit of its keyed BLAKE2b hash."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=int(seed).to_bytes(8, "little", signed=False)).digest()
    return digest[-1] & 1


def split_halves(cohort: pl.DataFrame, settings: dict[str, Any]) -> np.ndarray:
    """Per cohort row its half (DISCOVERY or REPLICATION) by the keyed hash of the person id, or of the
    `group_column` value (module docstring); logs the half sizes, never an identifier."""
    column = settings["group_column"] or "person_id"
    if column not in cohort.columns:
        raise ValueError(
            f"candidates.replication.group_column = {column!r} is not a cohort column ({', '.join(cohort.columns)}); "
            "name one of them or leave it empty to split by person."
        )
    values = cohort[column].cast(pl.String).fill_null("")
    distinct = values.unique().to_list()
    halves = dict(zip(distinct, (half_of(v, settings["seed"]) for v in distinct), strict=True))
    half = values.replace_strict(halves, return_dtype=pl.Int8).to_numpy()
    log.info(
        "split-sample replication by %s (seed %d): %d persons in the discovery half, %d in the held-out half",
        column, settings["seed"], int(np.sum(half == DISCOVERY)), int(np.sum(half == REPLICATION)),
    )  # fmt: skip
    return half


def half_cohorts(model: ModelCohort, half: np.ndarray, config: dict[str, Any], hcu: pl.DataFrame | None) -> dict[int, ModelCohort]:
    """The confirmation model's cohort of each half (`half` per row of `model.prepared`), aggregated once."""
    return {which: aggregated_cohort(model.prepared.filter(pl.Series(half == which)), config, hcu) for which in HALF_NAMES}


def half_counts(model: ModelCohort, exposures: pl.DataFrame | LevelExposures, code: str, lag_in_days: int) -> dict[str, int]:
    """Persons, exposed persons, cases and exposed cases of one class at the lag among `model`'s persons
    (exposed: the window opens before exit; an exposed case: the event while exposed)."""
    rows, (start,) = model.rows_of(level_exposures(model, exposures).rows(code), ["exposure_start_age_days"])
    exposed = exposed_from(model.entry[rows], start, lag_in_days) < model.exit[rows]
    return {
        "n_persons": model.prepared.height,
        "n_exposed": int(exposed.sum()),
        "n_cases": int(model.event.sum()),
        "n_exposed_cases": int((exposed & model.event[rows]).sum()),
    }


def replication_fits(
    code: str,
    adjust_classes: list[str],
    *,
    halves: dict[int, ModelCohort],
    exposures: pl.DataFrame | dict[int, LevelExposures],
    config: dict[str, Any],
    lag_in_days: int,
) -> dict[str, Any]:
    """The confirmation model of `code` (aggregated engine, the same adjustment) in each half (`half_cohorts`;
    `exposures` the level's table, or per half its `LevelExposures`): the held-out half's HR, CI and p
    (REPLICATION_COLUMNS), the discovery half's log HR and both halves' exact counts."""
    out: dict[str, Any] = {}
    for which, name in HALF_NAMES.items():
        rows = exposures[which] if isinstance(exposures, dict) else level_exposures(halves[which], exposures)
        counts = half_counts(halves[which], rows, code, lag_in_days)
        out.update({f"{name}_{key}": value for key, value in counts.items()})
        if counts["n_exposed_cases"] == 0 or counts["n_exposed"] == counts["n_persons"]:
            continue
        fit = confirmation_fit(halves[which], rows, code, adjust_classes, config, lag_in_days, engine="aggregated")
        if not np.isfinite(fit["log_hr_confirmation"]) or not np.isfinite(fit["se_confirmation"]):
            continue
        if which == REPLICATION:
            out.update(
                hr_replication=fit["hr_confirmation"],
                ci_lower_replication=fit["ci_lower_confirmation"],
                ci_upper_replication=fit["ci_upper_confirmation"],
                p_replication=fit["p_confirmation"],
            )
        else:
            out["log_hr_discovery"] = fit["log_hr_confirmation"]
    return out


def replication_hidden(ranking: pl.DataFrame, policy: DisclosurePolicy) -> list[bool]:
    """Per ranking row, whether its replication estimate must be hidden: a cell of either half from 1 to
    min_cell - 1, or a small difference between a class and a class or substance below it within a half (the
    screen's tree rule on the half's rows; module docstring). Rows without half counts are not affected."""
    columns = [f"{name}_{count}" for name in HALF_NAMES.values() for count in HALF_COUNTS]
    hidden = [False] * ranking.height
    if not set(columns) <= set(ranking.columns):
        return hidden
    with_counts = ranking.with_row_index("_row").filter(pl.all_horizontal([pl.col(c).is_not_null() for c in columns]))
    if not with_counts.height:
        return hidden
    for name in HALF_NAMES.values():
        frame = with_counts.select(
            "_row",
            "atc_code",
            atc_level=pl.col("atc_level").cast(pl.Int64),
            lag_years=pl.lit(0.0),
            sex=pl.lit("all"),
            **{count: pl.col(f"{name}_{count}").cast(pl.Int64) for count in HALF_COUNTS},
        )
        for row, reason in zip(frame["_row"].to_list(), screen_hidden_reasons(frame, policy), strict=True):
            if reason is not None:
                hidden[row] = True
    return hidden


def hide_replication(released: pl.DataFrame, hidden: list[bool]) -> pl.DataFrame:
    """Null the replication estimate (all of REPLICATION_COLUMNS) where `hidden` says so or where the row's
    main estimate is hidden in the released ranking (`hr` null)."""
    mask = pl.Series("_hide", hidden, dtype=pl.Boolean) | released["hr"].is_null()
    return released.with_columns(
        [pl.when(mask).then(None).otherwise(pl.col(c)).alias(c) for c in REPLICATION_COLUMNS if c in released.columns]
    )
