"""The dispensing definition of stopping (the gap rule) and its agreement with the registry's stop dates.

Gap rule (AdhereR-style, Dima & Dediu 2017): each dispensing of the drug supplies `ddd / ddd_per_day` days.
Supplies are carried forward: a dispensing made while the previous supply lasts starts when that supply runs
out, so the supply of dispensing i ends at e_i = max(d_i, e_{i-1}) + s_i, which unrolls to
e_i = S_i + max_{j <= i}(d_j - S_{j-1}) with S the cumulative supply (vectorised below). The patient stops at
the end of the supply after which the next dispensing comes more than `grace_days` later, or, after the last
dispensing, when that supply plus the grace ends before the end of follow-up; otherwise the patient is
censored at the end of follow-up (ongoing). A dispensing with no DDD supplies the median supply of the drug's
dispensings that have one. Dispensings count from `lookback_days` before the registry start (a first
dispensing just before the registry's start date belongs to the same course).

The prescription parts are national-scale: DuckDB reads only the drug's rows of the new users
(`read_parquet` filtered on atc_code, semi-joined to the new users), never every dispensing.

Imports the top level (`duck`) and `persistence.newusers` (the month length).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.duck import connect, sql_literal
from repurpose.lazy import lazy_module
from repurpose.persistence.newusers import DAYS_PER_MONTH

lifelines = lazy_module("lifelines")


def read_drug_dispensings(
    parts: Sequence[str | Path], codes: Sequence[str], persons: pl.DataFrame, resources: Mapping[str, Any] | None,
    tmpdir: str | Path,
) -> pl.DataFrame:
    """The dispensings of `codes` to the persons of `persons` (a frame with person_id), from the parquet parts."""
    if not parts:
        return pl.DataFrame(schema={"person_id": persons.schema["person_id"], "dispense_date": pl.Date,
                                    "atc_code": pl.String, "ddd": pl.Float64})  # fmt: skip
    con = connect(dict(resources or {}), default_tmpdir=tmpdir)
    try:
        con.register("new_users", persons.select("person_id").unique().to_arrow())
        files = ", ".join(sql_literal(str(p)) for p in parts)
        in_codes = ", ".join(sql_literal(c) for c in codes)
        sql = (
            f"SELECT d.person_id, d.dispense_date, d.atc_code, CAST(d.ddd AS DOUBLE) AS ddd "
            f"FROM read_parquet([{files}], union_by_name = true) d SEMI JOIN new_users u ON d.person_id = u.person_id "
            f"WHERE d.atc_code IN ({in_codes})"
        )
        return con.sql(sql).pl().with_columns(pl.col("dispense_date").cast(pl.Date))
    finally:
        con.close()


def supply_days(dispensings: pl.DataFrame, ddd_per_day: Mapping[str, float]) -> pl.Series:
    """Days each dispensing supplies: ddd / DDD per day of its code (1 when unlisted); the code's median supply
    for a dispensing without DDD."""
    per_day = pl.col("atc_code").replace_strict(dict(ddd_per_day), default=1.0, return_dtype=pl.Float64)
    days = dispensings.select((pl.col("ddd") / per_day).alias("days"), "atc_code")
    medians = days.group_by("atc_code").agg(pl.col("days").median().alias("median"))
    days = days.join(medians, on="atc_code", how="left", maintain_order="left")
    return days.select(pl.coalesce("days", "median", pl.lit(30.0)).alias("supply_days")).to_series()


def gap_rule_stops(
    users: pl.DataFrame,
    dispensings: pl.DataFrame,
    *,
    grace_days: float,
    ddd_per_day: Mapping[str, float],
    lookback_days: int,
) -> pl.DataFrame:
    """Per new user: the dispensing stop (module doc).

    `users` holds person_id, start_date (time zero) and censor_date (end of follow-up). Returns person_id,
    n_dispensings, dispensing_stop_date (null when censored), dispensing_stopped (0/1), dispensing_time_days
    (from time zero to the stop or censoring; at least half a day). Persons with no dispensing of the drug in
    their follow-up have n_dispensings = 0 and null times (the definition does not apply to them)."""
    disp = dispensings.with_columns(supply_days(dispensings, ddd_per_day)).join(
        users.select("person_id", "start_date", "censor_date"), on="person_id"
    )
    disp = disp.filter(
        (pl.col("dispense_date") >= pl.col("start_date") - pl.duration(days=lookback_days))
        & (pl.col("dispense_date") <= pl.col("censor_date"))
    )
    zero = pl.date(1970, 1, 1)
    disp = (
        disp.with_columns((pl.col("dispense_date") - zero).dt.total_days().cast(pl.Float64).alias("d"))
        .sort("person_id", "d")
        .with_columns(pl.col("supply_days").cum_sum().over("person_id").alias("S"))
        .with_columns((pl.col("d") - (pl.col("S") - pl.col("supply_days"))).cum_max().over("person_id").alias("m"))
        .with_columns((pl.col("S") + pl.col("m")).alias("supply_end"))
        .with_columns(pl.col("d").shift(-1).over("person_id").alias("next_d"))
    )
    censor = (pl.col("censor_date") - zero).dt.total_days().cast(pl.Float64)
    gap_after = pl.coalesce(pl.col("next_d"), censor) - pl.col("supply_end")
    # the stop is observed at a gap longer than the grace before the next dispensing or the end of follow-up
    disp = disp.with_columns((gap_after > grace_days).alias("gap"))
    first_gap = (
        disp.group_by("person_id")
        .agg(
            pl.len().alias("n_dispensings"),
            pl.col("supply_end").filter(pl.col("gap")).first().alias("stop_day"),
        )
    )
    out = users.select("person_id", "start_date", "censor_date").join(first_gap, on="person_id", how="left")
    start = (pl.col("start_date") - zero).dt.total_days().cast(pl.Float64)
    stopped = pl.col("stop_day").is_not_null()
    time = pl.when(stopped).then(pl.col("stop_day") - start).otherwise(censor - start)
    return out.select(
        "person_id",
        pl.col("n_dispensings").fill_null(0).cast(pl.Int64),
        pl.when(stopped).then(zero + pl.duration(days=pl.col("stop_day").round(0).cast(pl.Int64)))
        .otherwise(None).alias("dispensing_stop_date"),
        pl.when(pl.col("n_dispensings").is_null()).then(None).otherwise(stopped.cast(pl.Int8)).alias("dispensing_stopped"),
        pl.when(pl.col("n_dispensings").is_null()).then(None)
        .otherwise(pl.max_horizontal(time, pl.lit(0.5))).alias("dispensing_time_days"),
    )  # fmt: skip


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two binary ratings (nan when expected agreement is 1)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    observed = float(np.mean(a == b))
    pa, pb = float(np.mean(a)), float(np.mean(b))
    expected = pa * pb + (1 - pa) * (1 - pb)
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def agreement_rows(users: pl.DataFrame, *, horizon_days: float, within_days: int) -> list[tuple[str, float | int | None]]:
    """How the two definitions agree among new users with at least one dispensing: the 2x2 table of stopped
    within the horizon by each (both, registry only, dispensings only, neither; `n_new_users_with_dispensings`
    its total), Cohen's kappa, the share of patients stopped by both (any time) whose stop dates lie within
    `within_days`, the median difference of those stop times, and the Kaplan-Meier median months on drug by
    each definition with their difference."""
    both = users.filter(pl.col("n_dispensings") > 0)
    if both.height == 0:
        return [("n_new_users_with_dispensings", 0)]
    reg = ((both["stopped"] == 1) & (both["time_days"] <= horizon_days)).to_numpy()
    dis = ((both["dispensing_stopped"] == 1) & (both["dispensing_time_days"] <= horizon_days)).to_numpy()
    stopped_both = both.filter((pl.col("stopped") == 1) & (pl.col("dispensing_stopped") == 1))
    difference = stopped_both["dispensing_time_days"] - stopped_both["time_days"]
    medians = {}
    for name, time, event in (("registry", "time_days", "stopped"), ("dispensing", "dispensing_time_days", "dispensing_stopped")):
        median = lifelines.KaplanMeierFitter().fit(both[time].to_numpy() / DAYS_PER_MONTH, both[event].to_numpy()).median_survival_time_
        medians[name] = float(median) if np.isfinite(median) else None
    median_gap = None if None in medians.values() else medians["dispensing"] - medians["registry"]
    return [
        ("n_new_users_with_dispensings", both.height),
        ("n_stopped_both", int((reg & dis).sum())),
        ("n_stopped_registry_only", int((reg & ~dis).sum())),
        ("n_stopped_dispensing_only", int((~reg & dis).sum())),
        ("n_stopped_neither", int((~reg & ~dis).sum())),
        ("kappa_stopped_within_horizon", cohen_kappa(reg, dis)),
        ("share_stop_dates_within_days", float((difference.abs() <= within_days).mean()) if stopped_both.height else None),
        ("median_difference_days_dispensing_minus_registry", float(difference.median()) if stopped_both.height else None),
        ("km_median_months_registry", medians["registry"]),
        ("km_median_months_dispensing", medians["dispensing"]),
        ("km_median_months_difference_dispensing_minus_registry", median_gap),
    ]  # fmt: skip
