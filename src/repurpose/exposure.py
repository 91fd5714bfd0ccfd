"""Exposure start per person and drug class at one ATC level, derived in DuckDB.

Representation (documented in docs/schemas.md): one row per (person, class) for persons of the
cohort who reach `screen.min_dispensings` dispensings of any substance of the class before their
exit, holding the age (days) of the k-th dispensing. Ever-use is a step function of age that switches
on at that age (plus the lag, applied by the screen), so this sparse table is all the screen needs:
no person-by-class-by-interval table is ever built. Dose: the ages at which cumulative DDD in the
class first reaches each cut point, the number of dispensings and the total DDD up to exit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.atc import ATC_LEVEL_CODE_LENGTH
from repurpose.duck import connect, execute_with_progress, sql_literal

log = logging.getLogger(__name__)


def dose_column(cut_ddd: float) -> str:
    """Column holding the age (days) at which cumulative DDD reaches `cut_ddd`."""
    return f"cumulative_ddd_{cut_ddd:g}_age_days".replace(".", "_")


def exposure_sql(
    prescriptions_source: str, cohort_path: str, level: int, min_dispensings: int, dose_cutpoints: list[float]
) -> str:
    """SQL producing the exposure table of one ATC level (see module docstring); `prescriptions_source` is
    the SQL file argument of `read_parquet` (a quoted glob or a list, see `prescription_source`)."""
    code_length = ATC_LEVEL_CODE_LENGTH[level]
    dose_columns = ", ".join(
        f"min(dispense_date) FILTER (WHERE cumulative_ddd >= {cut}) AS reached_{i}"
        for i, cut in enumerate(dose_cutpoints)
    )
    dose_ages = ", ".join(
        f"CAST(date_diff('day', c.birth_date, e.reached_{i}) AS INTEGER) AS {dose_column(cut)}"
        for i, cut in enumerate(dose_cutpoints)
    )
    return f"""
    WITH cohort AS (
        SELECT person_id, birth_date, exit_date FROM read_parquet({sql_literal(cohort_path)})
    ),
    dispensings AS (
        SELECT r.person_id, substr(r.atc_code, 1, {code_length}) AS atc_code, r.dispense_date,
               coalesce(r.ddd, 0) AS ddd
        FROM read_parquet({prescriptions_source}, hive_partitioning = true) r
        JOIN cohort c ON r.person_id = c.person_id
        WHERE r.dispense_date <= c.exit_date
    ),
    numbered AS (
        SELECT *, row_number() OVER w AS dispensing_number,
               sum(ddd) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative_ddd
        FROM dispensings
        WINDOW w AS (PARTITION BY person_id, atc_code ORDER BY dispense_date)
    ),
    per_class AS (
        SELECT person_id, atc_code,
               min(dispense_date) FILTER (WHERE dispensing_number = {int(min_dispensings)}) AS exposure_start_date,
               min(dispense_date) AS first_dispense_date,
               count(*) AS n_dispensings, sum(ddd) AS total_ddd
               {"," if dose_columns else ""} {dose_columns}
        FROM numbered GROUP BY person_id, atc_code
    )
    SELECT e.person_id, e.atc_code, CAST({level} AS TINYINT) AS atc_level,
           e.exposure_start_date,
           CAST(date_diff('day', c.birth_date, e.exposure_start_date) AS INTEGER) AS exposure_start_age_days,
           CAST(date_diff('day', c.birth_date, e.first_dispense_date) AS INTEGER) AS first_dispense_age_days,
           CAST(e.n_dispensings AS INTEGER) AS n_dispensings, e.total_ddd
           {"," if dose_ages else ""} {dose_ages}
    FROM per_class e JOIN cohort c ON e.person_id = c.person_id
    WHERE e.exposure_start_date IS NOT NULL
    ORDER BY e.atc_code, e.person_id
    """


def prescription_source(prescriptions: str | Path | list[str] | list[Path]) -> str:
    """SQL file argument of the validated dispensings: a directory (all Parquet below it) or a list of part files.

    The DAG passes the explicit part files, so a part left over from an earlier delivery is never read.
    """
    if isinstance(prescriptions, (str, Path)):
        return sql_literal(str(Path(prescriptions) / "**" / "*.parquet"))
    return "[" + ", ".join(sql_literal(str(p)) for p in prescriptions) + "]"


def build_exposures(
    config: dict[str, Any],
    prescriptions: str | Path | list[str] | list[Path],
    cohort_path: str | Path,
    level: int,
    out_path: str | Path,
) -> int:
    """Write the exposure table of one ATC level to `out_path`; return its number of rows.

    `prescriptions` is the validated prescriptions directory or the list of its part files.
    """
    screen = config["screen"]
    resources = config.get("resources") or {}
    con = connect(resources)
    sql = exposure_sql(
        prescription_source(prescriptions), str(cohort_path), level, screen["min_dispensings"], screen["dose_cutpoints_ddd"]
    )
    started = time.perf_counter()
    n_rows = execute_with_progress(
        con,
        f"COPY ({sql}) TO {sql_literal(str(out_path))} (FORMAT parquet, COMPRESSION zstd)",
        f"exposure ATC level {level}",
        interval_seconds=resources.get("progress_seconds", 30),
    )[0][0]
    log.info(
        "ATC level %d: %d person-class exposures (k = %d dispensings) in %.1f s",
        level,
        n_rows,
        screen["min_dispensings"],
        time.perf_counter() - started,
    )
    return int(n_rows)


def split_class_intervals(cohort: pl.DataFrame, class_exposures: pl.DataFrame, lag_days: int) -> pl.DataFrame:
    """Explicit counting-process rows (start, stop] of one class: the long format lifelines and R `tmerge` use.

    For confirmation models and reference tests only (never for the screen): each person gets one
    unexposed row up to `exposure_start_age_days + lag_days` and one exposed row after it, on the age
    scale in days; `event` sits on the row that ends at exit.
    """
    frame = (
        cohort.join(
            class_exposures.select("person_id", "exposure_start_age_days"), on="person_id", how="left"
        )
        .with_columns(
            # Never exposed (no exposure row) -> exposed_from = exit; max_horizontal alone would skip the null.
            exposed_from=pl.when(pl.col("exposure_start_age_days").is_null())
            .then(pl.col("exit_age_days"))
            .otherwise(
                pl.max_horizontal(pl.col("entry_age_days"), pl.col("exposure_start_age_days") + lag_days)
            )
        )
        .with_columns(exposed_from=pl.min_horizontal("exposed_from", "exit_age_days"))
    )
    unexposed = frame.filter(pl.col("exposed_from") > pl.col("entry_age_days")).with_columns(
        start=pl.col("entry_age_days"),
        stop=pl.col("exposed_from"),
        event=pl.col("event") & (pl.col("exposed_from") == pl.col("exit_age_days")),
        exposed=pl.lit(0, pl.Int8),
    )
    exposed = frame.filter(pl.col("exposed_from") < pl.col("exit_age_days")).with_columns(
        start=pl.col("exposed_from"), stop=pl.col("exit_age_days"), exposed=pl.lit(1, pl.Int8)
    )
    columns = [c for c in cohort.columns if c not in ("entry_age_days", "exit_age_days", "event")]
    return pl.concat(
        [part.select(*columns, "start", "stop", "event", "exposed") for part in (unexposed, exposed)]
    ).sort("person_id", "start")
