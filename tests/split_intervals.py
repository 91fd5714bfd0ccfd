"""Explicit counting-process rows of one class, for reference fits with lifelines and R (tests only).

The screen never builds these rows; the tests build them to fit the same model with lifelines
`CoxTimeVaryingFitter` (the long format of R `tmerge`) and compare. The exposure window is the
package's own (`repurpose.dwas.window.exposed_from`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from repurpose.dwas.window import NEVER_EXPOSED, exposed_from


def split_class_intervals(cohort: pl.DataFrame, class_exposures: pl.DataFrame, lag_days: int) -> pl.DataFrame:
    """Counting-process rows (start, stop] of one class on the age scale in days: per person one unexposed
    row up to the exposure window's opening and one exposed row after it (either may be empty);
    `event` sits on the row that ends at exit. Other cohort columns are carried along."""
    frame = cohort.join(
        class_exposures.select("person_id", "exposure_start_age_days"), on="person_id", how="left"
    )
    entry = frame["entry_age_days"].cast(pl.Int64).to_numpy()
    exit_ = frame["exit_age_days"].cast(pl.Int64).to_numpy()
    start = frame["exposure_start_age_days"].cast(pl.Int64).fill_null(NEVER_EXPOSED).to_numpy()
    frame = frame.with_columns(exposed_from=pl.Series(np.minimum(exposed_from(entry, start, lag_days), exit_)))
    unexposed = frame.filter(pl.col("exposed_from") > pl.col("entry_age_days")).with_columns(
        start=pl.col("entry_age_days").cast(pl.Int64),
        stop=pl.col("exposed_from"),
        event=pl.col("event") & (pl.col("exposed_from") == pl.col("exit_age_days")),
        exposed=pl.lit(0, pl.Int8),
    )
    exposed = frame.filter(pl.col("exposed_from") < pl.col("exit_age_days")).with_columns(
        start=pl.col("exposed_from"), stop=pl.col("exit_age_days").cast(pl.Int64), exposed=pl.lit(1, pl.Int8)
    )
    columns = [c for c in cohort.columns if c not in ("entry_age_days", "exit_age_days", "event")]
    return pl.concat(
        [part.select(*columns, "start", "stop", "event", "exposed") for part in (unexposed, exposed)]
    ).sort("person_id", "start")
