"""Case mix at a date from the MS registry and the population register, shared by the persistence study's new
users (`persistence.newusers`) and the trial emulation's baseline and time-varying covariates
(`trial_emulation.cohort`): birth date, the last EDSS score within a window, relapses within a window.

Each function takes a frame with `person_id` and a date column `at` (a person may have several rows, one per
date) and adds one column. Imports nothing of the package: every stage may import it.
"""

from __future__ import annotations

import polars as pl


def birth_date() -> pl.Expr:
    """Birth date: the 15th of the birth month (1 July when the month is missing)."""
    month = pl.col("birth_month").fill_null(7)
    day = pl.when(pl.col("birth_month").is_null()).then(1).otherwise(15)
    return pl.date(pl.col("birth_year"), month, day)


def with_last_edss(
    frame: pl.DataFrame, edss: pl.DataFrame | None, *, at: str, window_days: int | None, name: str = "edss"
) -> pl.DataFrame:
    """`name`: the last EDSS score in (at - window_days, at] (the day `at` counts; any earlier score when
    window_days is None; of two scores on that day the later in the extract); null when none.

    An as-of join (the last visit up to `at`, kept when within the window): memory of the order of the frame
    and the visits, not of every date x every visit of its person (a grid of interval starts)."""
    if edss is None or edss.height == 0:
        return frame.with_columns(pl.lit(None, pl.Float64).alias(name))
    keys = frame.select("person_id", at).unique().filter(pl.col(at).is_not_null()).sort(at)
    visits = (
        edss.select("person_id", "visit_date", pl.col("edss").cast(pl.Float64).alias(name))
        .join(keys.select("person_id").unique(), on="person_id", how="semi")
        .filter(pl.col("visit_date").is_not_null())
        .sort("visit_date", maintain_order=True)
    )  # fmt: skip
    last = keys.join_asof(visits, left_on=at, right_on="visit_date", by="person_id", strategy="backward", check_sortedness=False)
    if window_days is not None:
        last = last.filter(pl.col("visit_date") > pl.col(at) - pl.duration(days=window_days))
    return frame.join(last.select("person_id", at, name), on=["person_id", at], how="left")


def with_relapse_count(
    frame: pl.DataFrame, relapses: pl.DataFrame | None, *, at: str, window_days: int, name: str
) -> pl.DataFrame:
    """`name`: relapses in [at - window_days, at) (the day `at` excluded); 0 when none."""
    if relapses is None or relapses.height == 0:
        return frame.with_columns(pl.lit(0, pl.Int64).alias(name))
    keys = frame.select("person_id", at).unique()
    counts = (
        relapses.select("person_id", "relapse_date").join(keys, on="person_id")
        .filter((pl.col("relapse_date") < pl.col(at)) & (pl.col("relapse_date") >= pl.col(at) - pl.duration(days=window_days)))
        .group_by("person_id", at)
        .agg(pl.len().cast(pl.Int64).alias(name))
    )  # fmt: skip
    return frame.join(counts, on=["person_id", at], how="left").with_columns(pl.col(name).fill_null(0))
