"""The trial emulation's stage function: validated clinical extracts -> cohort -> clones and weights (start-only
and sustained) -> outcomes -> estimates with bootstrap CIs and diagnostics -> released tables, the protocol and
the report page.

Imports threadpoolctl, the other `trial_emulation` modules, the top level (`stages`) and `release` (the disclosure
policy).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from repurpose.release.policy import DisclosurePolicy
from repurpose.stages import stage
from repurpose.trial_emulation.adherence import adherence
from repurpose.trial_emulation.analysis import (
    CURVE_STEP_DAYS,
    SUSTAINED,
    bootstrap,
    build_trial_data,
    estimates_all,
    estimates_frame,
    fit_all,
    percentile_intervals,
)
from repurpose.trial_emulation.clones import build_clones
from repurpose.trial_emulation.cohort import eligible_cohort, grace_covariates
from repurpose.trial_emulation.diagnostics import balance_table, count_table, positivity, weight_summary
from repurpose.trial_emulation.outcomes import (
    confirmed_worsening,
    first_diagnosis,
    first_relapse,
    relapse_times,
    sick_leave_days,
)
from repurpose.trial_emulation.page import write_page
from repurpose.trial_emulation.protocol import HIGH_EFFICACY, TrialProtocol, target_trial_table
from repurpose.trial_emulation.release import (
    release_balance,
    release_counts_table,
    release_curves,
    release_estimates,
    release_flow,
    release_summaries,
)

log = logging.getLogger(__name__)


class NotEstimable(ValueError):
    """The emulation cannot be estimated (no eligible person, or one strategy never started): the stage writes
    its tables empty and the page says why, so the rest of the run goes on."""

    def __init__(self, message: str, flow: list[tuple[str, int]]) -> None:
        super().__init__(message)
        self.flow = flow


OPTIONAL_EXTRACTS = {"sick_leave": "sick_leave", "serious_infection": "diagnoses"}
"""Outcome -> the optional extract (inputs.<name>) it is estimated from; without it the outcome is not available."""
REQUIRED_COLUMNS = {
    "population": ("person_id", "sex", "birth_year"),
    "ms_registry": ("person_id", "diagnosis_date", "ms_course_at_diagnosis"),
    "ms_treatments": ("person_id", "treatment_atc_code", "start_date"),
    "ms_relapses": ("person_id", "relapse_date"),
    "ms_edss": ("person_id", "visit_date", "edss"),
    "sick_leave": ("person_id", "start_date", "end_date", "percent"),
    "diagnoses": ("person_id", "diagnosis_date", "icd10_code"),
}


def _checked(name: str, path: str | Path, columns: list[str]) -> None:
    """Fail with the file and the missing columns when a validated extract lacks a required one."""
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in columns]
    if missing:
        raise ValueError(
            f"trial emulation: {path} ({name}) lacks the column(s) {', '.join(missing)}; it must be the validated "
            f"extract (data_dictionary/{name}.yaml)"
        )


def read_validated(name: str, path: str | Path) -> pl.DataFrame:
    """A validated extract, failing with the file and the missing columns when it lacks a required one."""
    frame = pl.read_parquet(path)
    _checked(name, path, frame.columns)
    return frame


def scan_validated(name: str, path: str | Path) -> pl.LazyFrame:
    """A validated extract read lazily (the diagnosis extract of a national patient registry is large: an
    outcome collects only the rows it needs), checked like `read_validated`."""
    frame = pl.scan_parquet(path)
    _checked(name, path, frame.collect_schema().names())
    return frame


def unavailable_outcomes(protocol: TrialProtocol, extracts: Mapping[str, object | None]) -> dict[str, str]:
    """Configured outcomes whose optional extract (`OPTIONAL_EXTRACTS`) is not given, with the reason."""
    return {outcome: f"not available: inputs.{extract} is not configured"
            for outcome, extract in OPTIONAL_EXTRACTS.items()
            if outcome in protocol.outcomes and extracts.get(extract) is None}  # fmt: skip


def outcome_days(protocol: TrialProtocol, baseline: pl.DataFrame, relapses: pl.DataFrame, edss: pl.DataFrame,
                 sick_leave: pl.DataFrame | None, diagnoses: pl.DataFrame | pl.LazyFrame | None = None) -> dict[str, Any]:  # fmt: skip
    """The outcomes of `trial_emulation.outcomes` as arrays in the baseline's person order: event days
    (nan: none), relapse (person index, day) pairs, and sick-leave days per person x interval."""
    follow = baseline.select("person_id", "time_zero", "end_date")
    index = baseline.select("person_id").with_row_index("index")

    def days(frame: pl.DataFrame, column: str) -> np.ndarray:
        joined = follow.join(frame, on="person_id", how="left", maintain_order="left")
        return joined.select((pl.col(column) - pl.col("time_zero")).dt.total_days().cast(pl.Float64)).to_series().fill_null(np.nan).to_numpy()

    event_days = {}
    if "confirmed_worsening" in protocol.outcomes:
        worsening = confirmed_worsening(edss, relapses, follow, confirmation_days=protocol.confirmation_days,
                                                 baseline_window_days=protocol.baseline_edss_window_days)  # fmt: skip
        event_days["confirmed_worsening"] = days(worsening, "worsening_date")
    first = days(first_relapse(relapses, follow), "relapse_date")
    if "first_relapse" in protocol.outcomes:
        event_days["first_relapse"] = first
    if "serious_infection" in protocol.outcomes and diagnoses is not None:
        infection = first_diagnosis(diagnoses, follow, protocol.serious_infection_codes)
        event_days["serious_infection"] = days(infection, "diagnosis_date")
    if protocol.negative_control_outcome == "death":
        event_days["death"] = baseline["death_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    count_days, amounts, first_days = {}, {}, {"relapse_rate": first}
    if "relapse_rate" in protocol.outcomes:
        times = relapse_times(relapses, follow).join(index, on="person_id")
        count_days["relapse_rate"] = (times["index"].to_numpy(), times["days_from_time_zero"].to_numpy().astype(float))
    if "sick_leave" in protocol.outcomes and sick_leave is not None:
        leave = sick_leave_days(sick_leave, follow, interval_days=protocol.interval_days, horizon_days=protocol.max_days)
        leave = leave.join(index, on="person_id")
        n_intervals = -(-protocol.max_days // protocol.interval_days)
        table = np.zeros((baseline.height, n_intervals))
        table[leave["index"].to_numpy(), leave["interval"].to_numpy()] = leave["sick_leave_days"].to_numpy()
        amounts["sick_leave"] = table
        any_leave = np.where(table > 0, np.arange(n_intervals)[None, :] * protocol.interval_days + 1.0, np.inf).min(axis=1)
        first_days["sick_leave"] = np.where(np.isfinite(any_leave), any_leave, np.nan)
    return {"event_days": event_days, "count_days": count_days, "amounts": amounts, "first_days": first_days}


@stage(reads=("trial_emulation", "study.start", "study.end", "disclosure"))
def run_trial_emulation(
    config: Mapping[str, Any],
    *,
    population: str,
    ms_registry: str,
    ms_treatments: str,
    ms_relapses: str,
    ms_edss: str,
    sick_leave: str | None = None,
    diagnoses: str | None = None,
    cohort: str,
    target_trial: str,
    flow: str,
    estimates_csv: str,
    curves: str,
    balance: str,
    weights: str,
    positivity_csv: str,
    counts: str,
    html: str,
) -> dict[str, Any]:
    """Run the emulation (docs/methods.md, "Trial emulation: design and estimation") and write the person-level
    cohort and the released outputs."""
    started = time.perf_counter()
    protocol = TrialProtocol.from_config(config)
    policy = DisclosurePolicy.from_config(config)
    frames = {name: read_validated(name, path) for name, path in (
        ("population", population), ("ms_registry", ms_registry), ("ms_treatments", ms_treatments),
        ("ms_relapses", ms_relapses), ("ms_edss", ms_edss))}  # fmt: skip
    leave = read_validated("sick_leave", sick_leave) if sick_leave else None
    diagnosed = scan_validated("diagnoses", diagnoses) if diagnoses else None
    Path(cohort).parent.mkdir(parents=True, exist_ok=True)
    try:
        # one BLAS thread: the matrices are small, and on a shared machine two BLAS threads made the point estimate's
        # censoring fits 20 to 40 times slower than one (busy-waiting threads); the bootstrap's workers use the cores
        with threadpool_limits(1):
            result = emulate(protocol, frames, leave, workers=_workers(config), diagnoses=diagnosed)
    except NotEstimable as error:
        log.warning("trial emulation not estimable: %s", error)
        released = not_estimable_tables(error, policy, protocol, unavailable_outcomes(
            protocol, {"sick_leave": leave, "diagnoses": diagnosed}))  # fmt: skip
        pl.DataFrame().write_parquet(cohort)
        n_eligible = 0
    else:
        n_eligible = result["baseline"].height
        log.info("trial emulation: %d eligible persons, %d bootstrap replicates", n_eligible, protocol.bootstrap_replicates)
        result["baseline"].write_parquet(cohort)
        released = release_all(result, protocol, policy)
    for name, path in (("target_trial", target_trial), ("flow", flow), ("estimates", estimates_csv), ("curves", curves), ("balance", balance), ("weights", weights),
                       ("positivity", positivity_csv), ("counts", counts)):  # fmt: skip
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        released[name].write_csv(path, float_precision=6)
    write_page(released, protocol, policy, html)
    seconds = time.perf_counter() - started
    log.info("trial emulation done in %.1f s", seconds)
    return {"n_eligible": n_eligible, "seconds": seconds}


def _workers(config: Mapping[str, Any]) -> int:
    threads = int(config.get("resources", {}).get("threads", 1))
    return max(1, min(threads, os.cpu_count() or 1))


def emulate(protocol: TrialProtocol, frames: Mapping[str, pl.DataFrame], sick_leave: pl.DataFrame | None,
            *, workers: int = 1, diagnoses: pl.DataFrame | pl.LazyFrame | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole analysis in memory (exact, before disclosure control): baseline, flow, estimates with CIs (the
    start-only emulation, the sustained strategies when `protocol.sustained`, the naive comparison),
    curves, diagnostics, and the configured outcomes not available (their extract not given: `sick_leave`,
    `diagnoses`)."""
    baseline, flow = eligible_cohort(protocol, registry=frames["ms_registry"], population=frames["population"],
                                     treatments=frames["ms_treatments"], edss=frames["ms_edss"],
                                     relapses=frames["ms_relapses"])  # fmt: skip
    first = baseline.filter(pl.col("first_start_day") <= protocol.grace_days)["first_class"]
    if baseline.height == 0 or not (first == HIGH_EFFICACY).any() or (first == HIGH_EFFICACY).all():
        raise NotEstimable(
            f"no eligible person started each strategy within {protocol.grace_days} days (flow: "
            + "; ".join(f"{step}: {n}" for step, n in flow) + ")", flow
        )  # fmt: skip
    covariates = grace_covariates(baseline, relapses=frames["ms_relapses"], edss=frames["ms_edss"],
                                  n_intervals=protocol.n_grace_intervals, interval_days=protocol.interval_days)  # fmt: skip
    clones = build_clones(baseline, covariates, protocol)
    found = outcome_days(protocol, baseline, frames["ms_relapses"], frames["ms_edss"], sick_leave, diagnoses)
    followup = baseline["followup_days"].to_numpy().astype(float)
    first_day = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    first_high = (baseline["first_class"] == HIGH_EFFICACY).fill_null(False).to_numpy()
    outcome_data = {"followup": followup, "first_day": first_day, "first_high": first_high, "event_days": found["event_days"],
                    "count_days": found["count_days"], "daily_counts": found["amounts"]}  # fmt: skip
    data = build_trial_data(clones, protocol, **outcome_data)
    if protocol.sustained:
        adherent, _ = adherence(protocol, baseline, treatments=frames["ms_treatments"], relapses=frames["ms_relapses"],
                                edss=frames["ms_edss"])  # fmt: skip
        data.sustained = build_trial_data(build_clones(baseline, covariates, protocol, adherent), protocol,
                                          **outcome_data, analysis=SUSTAINED)  # fmt: skip
    grid = np.arange(0.0, protocol.max_days + 1, CURVE_STEP_DAYS)
    fits = fit_all(data)
    fit = fits[0]
    point = estimates_all(data, fits, grid_days=grid)
    replicates = bootstrap(data, protocol.bootstrap_replicates, workers, grid, start=[f.coefs for f in fits])
    intervals = percentile_intervals(point, replicates)
    balance = balance_table(baseline, clones, fit, protocol.grace_days)
    overlap, _ = positivity(baseline, protocol.grace_days)
    counted = {**found["event_days"], **found["first_days"]}
    return {
        "baseline": baseline, "flow": flow, "point": point, "intervals": intervals, "replicates": replicates,
        "estimates": estimates_frame(point, intervals), "grid": grid, "data": data, "fit": fit, "balance": balance,
        "positivity": overlap, "weights": weight_summary([(part.analysis, part.clones, f) for part, f in zip(data.parts, fits, strict=True)]),
        "counts": count_table([(part.analysis, part.clones) for part in data.parts], data.naive_person, data.naive_arm, counted, followup),
        "unavailable": unavailable_outcomes(protocol, {"sick_leave": sick_leave, "diagnoses": diagnoses}),
    }  # fmt: skip


def release_all(result: Mapping[str, Any], protocol: TrialProtocol, policy: DisclosurePolicy) -> dict[str, pl.DataFrame]:
    """Every released table (repurpose.trial_emulation.release) from the exact results."""
    counts = release_counts_table(result["counts"], policy)
    hidden = hidden_outcomes(result["counts"], policy)
    return {
        "estimates": release_estimates(result["estimates"], hidden, result["unavailable"]),
        "curves": release_curves(result, hidden, policy),
        "balance": release_balance(result["balance"], policy),
        "weights": release_summaries(result["weights"], "n_clones", policy),
        "positivity": release_summaries(result["positivity"], "n_persons", policy),
        "counts": counts,
        "flow": release_flow(result["flow"], policy),
        "target_trial": target_trial_table(protocol, result["unavailable"]),
    }  # fmt: skip


def not_estimable_tables(error: NotEstimable, policy: DisclosurePolicy, protocol: TrialProtocol,
                         unavailable: Mapping[str, str]) -> dict[str, pl.DataFrame]:  # fmt: skip
    """The released tables of an emulation that cannot be estimated: the flow, and one row saying why."""
    why = pl.DataFrame({"status": [f"not estimable: {str(error).split(' (flow')[0]}"]})
    return {name: why for name in ("estimates", "curves", "balance", "weights", "positivity", "counts")} | {
        "flow": release_flow(error.flow, policy), "target_trial": target_trial_table(protocol, unavailable)}


def hidden_outcomes(counts: pl.DataFrame, policy: DisclosurePolicy) -> set[tuple[str, str]]:
    """(analysis, outcome) whose estimates are hidden: a strategy with 1 to min_cell - 1 persons or events (an
    estimate on so few reveals them)."""
    small = counts.filter(pl.col("n_events").is_between(1, policy.min_cell - 1) | pl.col("n_persons").is_between(1, policy.min_cell - 1))
    return {(a, o) for a, o in small.select("analysis", "outcome").unique().iter_rows()}
