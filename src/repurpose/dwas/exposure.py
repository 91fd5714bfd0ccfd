"""Exposure start per person and drug class at every ATC level, derived in DuckDB.

Representation (documented in docs/schemas.md): one row per (person, class) for persons of the
cohort who reach `screen.min_dispensings` dispensings of any substance of the class before their
exit, holding the age (days) of the k-th dispensing. Ever-use is a step function of age that switches
on at that age (plus the lag: the exposure window of `repurpose.dwas.window`, applied by the screen), so
this sparse table is all the screen needs: no person-by-class-by-interval table is ever built. Dose: the ages at which cumulative DDD in the
class first reaches each cut point, the number of dispensings and the total DDD up to exit.

Two steps, so that the dispensings are sorted once rather than once per ATC level:
1. `build_substance_exposures`: one window pass over all dispensings per (person, substance) (the full
   ATC code): the date of its k-th dispensing, first dispensing, count, total DDD, and the dates its own
   cumulative DDD reaches each cut point.
2. `build_exposures` per level: counts and totals add up over a class's substances, and a person who used a
   single substance of the class has that substance's k-th dispensing and dose crossings. Only the
   (person, class) pairs mixing substances need the class's own dispensing history: those dispensings
   alone are windowed again (about 10-30% of them at ATC levels 2-4 in the simulated registries).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from repurpose.atc import ATC_LEVEL_CODE_LENGTH
from repurpose.duck import connect, execute_with_progress, sql_literal
from repurpose.registry.outcome import atc_prefix_sql, outcome_definition
from repurpose.schemas import dose_column
from repurpose.stages import stage

log = logging.getLogger(__name__)

SUBSTANCE_CODE_LENGTH = ATC_LEVEL_CODE_LENGTH[5]
"""A substance is a full (level-5) ATC code."""


def _cohort_dispensings_sql(
    prescriptions_source: str,
    cohort_path: str,
    code_length: int,
    excluded_atc_prefixes: Sequence[str] = (),
    pairs: str | None = None,
) -> str:
    """CTEs `cohort` and `dispensings` (cohort members' dispensings up to exit, codes cut to `code_length`).

    Dispensings of `excluded_atc_prefixes` (the drugs of a drug-proxy outcome) are left out here, before any
    window, so neither their class nor any parent class counts them. `pairs`, a SELECT of (person_id,
    atc_code) pairs of cohort members at this code length, keeps only those pairs' dispensings (CTE `pairs`
    with their exit dates): one join picks the pairs and applies the exit date, instead of a join with the
    cohort and then a semi join with the pairs over every dispensing.
    """
    excluded = f" AND NOT {atc_prefix_sql('r.atc_code', excluded_atc_prefixes)}" if excluded_atc_prefixes else ""
    cohort = f"""
    cohort AS (
        SELECT person_id, birth_date, exit_date FROM read_parquet({sql_literal(cohort_path)})
    ),"""
    if pairs is None:
        within, on = "cohort", "r.person_id = c.person_id"
    else:
        cohort += f"""
    pairs AS (
        SELECT p.person_id, p.atc_code, c.exit_date FROM ({pairs}) p JOIN cohort c ON p.person_id = c.person_id
    ),"""
        within, on = "pairs", f"r.person_id = c.person_id AND substr(r.atc_code, 1, {code_length}) = c.atc_code"
    return f"""{cohort}
    dispensings AS (
        SELECT r.person_id, substr(r.atc_code, 1, {code_length}) AS atc_code, r.dispense_date,
               coalesce(r.ddd, 0) AS ddd
        FROM read_parquet({prescriptions_source}, hive_partitioning = true) r
        JOIN {within} c ON {on}
        WHERE r.dispense_date <= c.exit_date{excluded}
    )"""


def _milestones_sql(source: str, min_dispensings: int, dose_cutpoints: list[float], extra_columns: str = "") -> str:
    """Per (person_id, atc_code) of `source`: the date of the k-th dispensing and the first date the
    cumulative DDD reaches each cut point (one window over the rows of `source` in date order)."""
    reached = "".join(
        f", min(dispense_date) FILTER (WHERE cumulative_ddd >= {cut}) AS reached_{i}" for i, cut in enumerate(dose_cutpoints)
    )
    return f"""
        SELECT person_id, atc_code,
               min(dispense_date) FILTER (WHERE dispensing_number = {int(min_dispensings)}) AS kth_dispense_date
               {extra_columns}{reached}
        FROM (
            SELECT *, row_number() OVER dated AS dispensing_number,
                   sum(ddd) OVER (dated ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative_ddd
            FROM {source}
            WINDOW dated AS (PARTITION BY person_id, atc_code ORDER BY dispense_date)
        )
        GROUP BY person_id, atc_code"""


def substance_exposures_sql(
    prescriptions_source: str,
    cohort_path: str,
    min_dispensings: int,
    dose_cutpoints: list[float],
    excluded_atc_prefixes: Sequence[str] = (),
) -> str:
    """SQL of the substance table (step 1 in the module docstring): one row per (person, full ATC code)."""
    per_substance = _milestones_sql(
        "dispensings",
        min_dispensings,
        dose_cutpoints,
        ", min(dispense_date) AS first_dispense_date, count(*) AS n_dispensings, sum(ddd) AS total_ddd",
    )
    dispensings = _cohort_dispensings_sql(prescriptions_source, cohort_path, SUBSTANCE_CODE_LENGTH, excluded_atc_prefixes)
    return f"WITH {dispensings} {per_substance}"


def exposure_sql(
    substances_path: str,
    prescriptions_source: str,
    cohort_path: str,
    level: int,
    min_dispensings: int,
    dose_cutpoints: list[float],
    excluded_atc_prefixes: Sequence[str] = (),
) -> str:
    """SQL producing the exposure table of one ATC level from the substance table (step 2 in the module
    docstring); `prescriptions_source` is the SQL file argument of `read_parquet` (see `prescription_source`).

    A class used through one substance takes that substance's milestones; for (person, class) pairs mixing
    substances, the class's own dispensings are windowed (not needed at the substance level itself).
    """
    code_length = ATC_LEVEL_CODE_LENGTH[level]
    cuts = list(enumerate(dose_cutpoints))
    may_mix = code_length < SUBSTANCE_CODE_LENGTH
    single_reached = "".join(f", min(reached_{i}) AS single_reached_{i}" for i, _ in cuts)

    def milestone(single: str, mixed: str) -> str:
        return f"CASE WHEN e.n_substances = 1 THEN e.{single} ELSE m.{mixed} END" if may_mix else f"e.{single}"

    start = milestone("single_start_date", "kth_dispense_date")
    dose_ages = "".join(
        f", CAST(date_diff('day', c.birth_date, {milestone(f'single_reached_{i}', f'reached_{i}')}) AS INTEGER)"
        f" AS {dose_column(cut)}"
        for i, cut in cuts
    )
    if may_mix:
        sources = f""",
    {_cohort_dispensings_sql(prescriptions_source, cohort_path, code_length, excluded_atc_prefixes,
                             pairs="SELECT person_id, atc_code FROM classes WHERE n_substances > 1")},
    mixed_milestones AS (
        {_milestones_sql("dispensings", min_dispensings, dose_cutpoints)}
    )"""
        mixed_join = "LEFT JOIN mixed_milestones m ON e.person_id = m.person_id AND e.atc_code = m.atc_code"
    else:
        sources = f", cohort AS (SELECT person_id, birth_date FROM read_parquet({sql_literal(cohort_path)}))"
        mixed_join = ""
    return f"""
    WITH classes AS (
        SELECT person_id, substr(atc_code, 1, {code_length}) AS atc_code, count(*) AS n_substances,
               min(kth_dispense_date) AS single_start_date, min(first_dispense_date) AS first_dispense_date,
               sum(n_dispensings) AS n_dispensings, sum(total_ddd) AS total_ddd
               {single_reached}
        FROM read_parquet({sql_literal(substances_path)})
        GROUP BY person_id, substr(atc_code, 1, {code_length})
    ){sources},
    exposures AS (
        SELECT e.person_id, e.atc_code, CAST({level} AS TINYINT) AS atc_level,
               {start} AS exposure_start_date,
               CAST(date_diff('day', c.birth_date, {start}) AS INTEGER) AS exposure_start_age_days,
               CAST(date_diff('day', c.birth_date, e.first_dispense_date) AS INTEGER) AS first_dispense_age_days,
               CAST(e.n_dispensings AS INTEGER) AS n_dispensings, e.total_ddd
               {dose_ages}
        FROM classes e JOIN cohort c ON e.person_id = c.person_id
        {mixed_join}
    )
    SELECT * FROM exposures WHERE exposure_start_date IS NOT NULL
    ORDER BY atc_code, person_id
    """


def prescription_source(prescriptions: str | Path | list[str] | list[Path]) -> str:
    """SQL file argument of the validated dispensings: a directory (all Parquet below it) or a list of part files.

    The DAG passes the explicit part files, so a part left over from an earlier delivery is never read.
    """
    if isinstance(prescriptions, (str, Path)):
        return sql_literal(str(Path(prescriptions) / "**" / "*.parquet"))
    return "[" + ", ".join(sql_literal(str(p)) for p in prescriptions) + "]"


def _write_parquet(con: Any, sql: str, path: str | Path, label: str, resources: dict[str, Any]) -> int:
    """Run `sql` into a zstd Parquet file at `path`, logging progress; return its number of rows."""
    copy = f"COPY ({sql}) TO {sql_literal(str(path))} (FORMAT parquet, COMPRESSION zstd)"
    return int(execute_with_progress(con, copy, label, interval_seconds=resources.get("progress_seconds", 30))[0][0])


@stage(reads=("screen.min_dispensings", "screen.dose_cutpoints_ddd", "study.outcome"))
def build_substance_exposures(
    config: dict[str, Any],
    *,
    prescriptions: str | Path | list[str] | list[Path],
    cohort: str | Path,
    substances: str | Path,
) -> int:
    """Write the substance table (one row per person and full ATC code; step 1 of the module docstring)."""
    screen = config["screen"]
    resources = config.get("resources") or {}
    con = connect(resources)
    cohort_path, out_path = cohort, substances
    sql = substance_exposures_sql(
        prescription_source(prescriptions),
        str(cohort_path),
        screen["min_dispensings"],
        screen["dose_cutpoints_ddd"],
        outcome_definition(config["study"]["outcome"]).proxy_atc_prefixes,
    )
    started = time.perf_counter()
    n_rows = _write_parquet(con, f"{sql} ORDER BY person_id, atc_code", out_path, "exposure substances", resources)
    log.info("substances: %d person-substance rows in %.1f s", n_rows, time.perf_counter() - started)
    return n_rows


@stage(reads=("screen.min_dispensings", "screen.dose_cutpoints_ddd", "study.outcome"))
def build_exposures(
    config: dict[str, Any],
    *,
    prescriptions: str | Path | list[str] | list[Path],
    cohort: str | Path,
    level: int,
    exposure: str | Path,
    substances: str | Path | None = None,
) -> int:
    """Write the exposure table of one ATC level to `exposure`; return its number of rows.

    `prescriptions` is the validated prescriptions directory or the list of its part files;
    `substances` the table of `build_substance_exposures` (built here in a temporary file if None).
    """
    screen = config["screen"]
    resources = config.get("resources") or {}
    cohort_path, out_path, substances_path = cohort, exposure, substances
    if substances_path is None:
        with tempfile.TemporaryDirectory(dir=Path(out_path).parent, prefix=".substances-") as scratch:
            scratch_substances = Path(scratch) / "substances.parquet"
            build_substance_exposures(config, prescriptions=prescriptions, cohort=cohort, substances=scratch_substances)
            return build_exposures(
                config, prescriptions=prescriptions, cohort=cohort, level=level, exposure=exposure,
                substances=scratch_substances,
            )  # fmt: skip
    con = connect(resources)
    sql = exposure_sql(
        str(substances_path),
        prescription_source(prescriptions),
        str(cohort_path),
        level,
        screen["min_dispensings"],
        screen["dose_cutpoints_ddd"],
        outcome_definition(config["study"]["outcome"]).proxy_atc_prefixes,
    )
    started = time.perf_counter()
    n_rows = _write_parquet(con, sql, out_path, f"exposure ATC level {level}", resources)
    log.info(
        "ATC level %d: %d person-class exposures (k = %d dispensings) in %.1f s",
        level,
        n_rows,
        screen["min_dispensings"],
        time.perf_counter() - started,
    )
    return int(n_rows)
