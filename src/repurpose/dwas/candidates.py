"""From screen hits to a short, defensible ranking of drug classes, with the evidence for and against on one row.

Every class with a screen signal (q below `candidates.fdr_alpha` at lag 0 or at the main lag, both
sexes) gets: its estimates at every lag and a reverse-causation flag, dose-response by cumulative DDD
with a test for trend, sex-specific estimates and their heterogeneity, the agreement of its ATC
siblings, a confirmation model adjusted for health-care use and for proxy confounders chosen by an
L1-penalised model, an active-comparator new-user estimate, empirically calibrated p-value and CI, and
E-values. A points score (one point per line of supporting evidence, no weights) ranks them.
The methods and the exact rules are in docs/methods.md ("Candidate ranking") and in the generated
results/candidates/README.md.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from repurpose import __version__
from repurpose.atc import atc_parent
from repurpose.config import config_hash
from repurpose.cox.engine import aggregate_counting_process, fit_efron
from repurpose.duck import connect, sql_literal
from repurpose.dwas.calibration import (
    CalibrationError,
    EmpiricalNull,
    calibrated_ci,
    calibrated_p_value,
    e_value,
    e_value_ci,
    fit_empirical_null,
)
from repurpose.dwas.exposure import dose_column, prescription_source
from repurpose.dwas.screen import cell_layout, prepare_cohort
from repurpose.meta import pool
from repurpose.registry.cohort import DAYS_PER_YEAR
from repurpose.release.disclosure import for_display, suppress_small_counts
from repurpose.stages import stage

log = logging.getLogger(__name__)

Z95 = float(stats.norm.ppf(0.975))
COUNT_COLUMNS = ("n_exposed", "n_exposed_cases", "n_active_comparator", "n_active_comparator_cases")
HCU_BINS = (1, 2, 4, 7)
"""Health-care-use proxy categories (distinct ATC level-4 classes in the year before entry): 0, 1, 2-3, 4-6, 7+."""

DRUG_COLUMNS = [
    "rank",
    "atc_code",
    "atc_name",
    "atc_level",
    "direction",
    "hr",
    "ci_lower",
    "ci_upper",
    "p_value",
    "q_value",
    "calibrated_p",
    "calibrated_q",
    "calibrated_hr",
    "calibrated_ci_lower",
    "calibrated_ci_upper",
    "n_exposed",
    "n_exposed_cases",
    "hr_lag0",
    "hr_lag2",
    "hr_lag5",
    "hr_lag10",
    "hr_separated_lag2",
    "hr_separated_lag5",
    "hr_separated_lag10",
    "lag_retained_fraction",
    "lag_fade_p",
    "hr_dose_1",
    "hr_dose_2",
    "hr_dose_3",
    "dose_trend_hr",
    "dose_trend_p",
    "hr_F",
    "hr_M",
    "sex_heterogeneity_p",
    "n_siblings",
    "sibling_agreement",
    "sibling_pooled_hr",
    "sibling_pooled_p",
    "hr_confirmation",
    "ci_lower_confirmation",
    "ci_upper_confirmation",
    "confirmation_adjusted_for",
    "hr_active_comparator",
    "ci_lower_active_comparator",
    "ci_upper_active_comparator",
    "n_active_comparator",
    "n_active_comparator_cases",
    "e_value",
    "e_value_ci",
    "flags",
    "targets",
    "evidence_score",
    "score_points",
]
RANKING_INPUTS = [c for c in DRUG_COLUMNS if c not in ("rank", "evidence_score", "score_points", "flags")] + [
    "sibling_pooled_log_hr",
    "lags_tested",
    "mechanism_support",
    "reverse_causation_suspected",
]


# --------------------------------------------------------------------------------------------------
# Evidence from the screen table alone
# --------------------------------------------------------------------------------------------------


def _fitted(dwas: pl.DataFrame) -> pl.DataFrame:
    return dwas.filter((pl.col("status") == "ok") & pl.col("se").is_finite() & (pl.col("se") > 0))


def select_signals(dwas: pl.DataFrame, alpha: float, main_lag: float) -> pl.DataFrame:
    """Classes (atc_code, atc_level) with q < alpha in both sexes at lag 0 or at the main lag."""
    return (
        _fitted(dwas)
        .filter(
            (pl.col("sex") == "all")
            & pl.col("lag_years").is_in([0.0, float(main_lag)])
            & (pl.col("q_value") < alpha)
        )
        .select("atc_code", "atc_level")
        .unique()
        .sort("atc_level", "atc_code")
    )


def lag_fade(b0: float, se0: float, b_lag: float, se_lag: float) -> tuple[float, float]:
    """Retained fraction b_lag / b0 and a Hausman-type p-value for b_lag != b0.

    The lagged estimate uses a subset of the exposed time of the unlagged one, so under a constant
    effect b0 is the more efficient of two consistent estimates and var(b_lag - b0) ~ se_lag^2 - se0^2.
    """
    if not all(np.isfinite(v) for v in (b0, se0, b_lag, se_lag)) or b0 == 0:
        return float("nan"), float("nan")
    variance = max(se_lag**2 - se0**2, 0.1 * se_lag**2)  # floor: never claim more precision than exists
    return b_lag / b0, float(2 * stats.norm.sf(abs(b_lag - b0) / np.sqrt(variance)))


def reverse_causation_suspected(
    lag_estimates: dict[float, tuple[float, float]], settings: dict[str, Any]
) -> tuple[bool, float, float]:
    """Flag a lag-0 association that fades with lag: at some lag L > 0 the log HR keeps less than
    `max_retained_fraction` of its lag-0 value (or flips sign) AND differs from it (lag_fade p < alpha).

    Returns (flag, retained fraction at the longest lag tested, the smallest fade p-value).
    """
    rule = settings["reverse_causation"]
    if 0.0 not in lag_estimates:
        return False, float("nan"), float("nan")
    b0, se0 = lag_estimates[0.0]
    flagged, retained_last, fade_p_min = False, float("nan"), float("nan")
    for lag in sorted(k for k in lag_estimates if k > 0):
        b_lag, se_lag = lag_estimates[lag]
        retained, fade_p = lag_fade(b0, se0, b_lag, se_lag)
        if not np.isfinite(retained):
            continue
        retained_last = retained
        fade_p_min = fade_p if not np.isfinite(fade_p_min) else min(fade_p_min, fade_p)
        if retained < rule["max_retained_fraction"] and fade_p < rule["alpha"]:
            flagged = True
    return flagged, retained_last, fade_p_min


def flag_reverse_causation(evidence: pl.DataFrame, settings: dict[str, Any], lags: list[float]) -> pl.DataFrame:
    """Add `reverse_causation_suspected`, `lag_retained_fraction`, `lag_fade_p` and `lags_tested`.

    The lagged estimates are the undiluted ones (`separated_lag_estimates`) where they were fitted,
    else the screen's lagged estimates; lag 0 is the screen's.
    """
    out = []
    for row in evidence.iter_rows(named=True):
        estimates: dict[float, tuple[float, float]] = {}
        if row.get("log_hr_lag0") is not None:
            estimates[0.0] = (row["log_hr_lag0"], row["se_lag0"])
        for lag in (v for v in lags if v > 0):
            for prefix in ("separated_lag", "lag"):
                b, se = row.get(f"log_hr_{prefix}{lag:g}"), row.get(f"se_{prefix}{lag:g}")
                if b is not None and se is not None and np.isfinite(b) and np.isfinite(se):
                    estimates[lag] = (b, se)
                    break
        flagged, retained, fade_p = reverse_causation_suspected(estimates, settings)
        out.append(
            {
                "atc_code": row["atc_code"],
                "reverse_causation_suspected": flagged,
                "lag_retained_fraction": retained,
                "lag_fade_p": fade_p,
                "lags_tested": len([k for k in estimates if k > 0]) if 0.0 in estimates else 0,
            }
        )
    return evidence.join(pl.DataFrame(out), on="atc_code", how="left")


def siblings_of(code: str, codes: list[str]) -> list[str]:
    """Other classes of the same level sharing the parent one level up (level-5 siblings share their level 4)."""
    level = len(code) and {1: 1, 3: 2, 4: 3, 5: 4, 7: 5}[len(code)]
    if level <= 1:
        return []
    parent = atc_parent(code, level - 1)
    return [c for c in codes if c != code and len(c) == len(code) and c.startswith(parent)]


def fit_nulls(
    dwas: pl.DataFrame, main_lag: float, alpha: float, negative_controls: list[str]
) -> dict[int, EmpiricalNull | None]:
    """Empirical null per ATC level at the main lag: from the listed negative controls (all levels pooled)
    or, with no list, from every fitted class of the level that is not itself a screen signal."""
    rows = _fitted(dwas).filter((pl.col("sex") == "all") & (pl.col("lag_years") == float(main_lag)))
    nulls: dict[int, EmpiricalNull | None] = {}
    levels = sorted(rows["atc_level"].unique().to_list())
    for level in levels:
        if negative_controls:
            controls = rows.filter(pl.col("atc_code").is_in(negative_controls))
        else:
            controls = rows.filter((pl.col("atc_level") == level) & ~(pl.col("q_value") < alpha))
        try:
            nulls[level] = fit_empirical_null(controls["log_hr"].to_numpy(), controls["se"].to_numpy())
            log.info(
                "empirical null level %d: mu %.3f sigma %.3f from %d controls",
                level, nulls[level].mu, nulls[level].sigma, nulls[level].n_controls,
            )
        except CalibrationError as error:
            log.warning("level %d: no calibration (%s)", level, error)
            nulls[level] = None
    return nulls


def calibrated_q_values(dwas: pl.DataFrame, nulls: dict[int, EmpiricalNull | None], main_lag: float) -> dict[str, float]:
    """BH q-values of the calibrated p-values within each ATC level (both sexes, main lag, fitted classes)."""
    rows = _fitted(dwas).filter((pl.col("sex") == "all") & (pl.col("lag_years") == float(main_lag)))
    q_of: dict[str, float] = {}
    for level, null in nulls.items():
        if null is None:
            continue
        level_rows = rows.filter(pl.col("atc_level") == level)
        p = calibrated_p_value(level_rows["log_hr"].to_numpy(), level_rows["se"].to_numpy(), null)
        q_of.update(zip(level_rows["atc_code"].to_list(), stats.false_discovery_control(p, method="bh").tolist(), strict=True))
    return q_of


def screen_evidence(dwas: pl.DataFrame, signals: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Per signal class: main-lag estimate, lags, reverse-causation flag, sexes, siblings, calibration, E-values."""
    main_lag = float(settings["main_lag_years"])
    fitted = _fitted(dwas)
    index = {
        (r["atc_code"], float(r["lag_years"]), r["sex"]): r for r in fitted.iter_rows(named=True)
    }
    all_rows = {(r["atc_code"], float(r["lag_years"]), r["sex"]): r for r in dwas.iter_rows(named=True)}
    lags = sorted({float(v) for v in dwas["lag_years"].unique().to_list()})
    codes_at_main = fitted.filter((pl.col("sex") == "all") & (pl.col("lag_years") == main_lag))["atc_code"].to_list()
    nulls = fit_nulls(dwas, main_lag, settings["fdr_alpha"], settings["negative_controls"])
    calibrated_q = calibrated_q_values(dwas, nulls, main_lag)
    out = []
    for code, level in signals.iter_rows():
        main = index.get((code, main_lag, "all")) or index.get((code, 0.0, "all"))
        described = all_rows.get((code, main_lag, "all")) or all_rows.get((code, 0.0, "all")) or {}
        row: dict[str, Any] = {"atc_code": code, "atc_name": described.get("atc_name"), "atc_level": level}
        b = main["log_hr"] if main else float("nan")
        se = main["se"] if main else float("nan")
        row.update(
            hr=float(np.exp(b)),
            ci_lower=float(np.exp(b - Z95 * se)),
            ci_upper=float(np.exp(b + Z95 * se)),
            p_value=main["p_value"] if main else None,
            q_value=main["q_value"] if main else None,
            n_exposed=described.get("n_exposed"),
            n_exposed_cases=described.get("n_exposed_cases"),
            estimate_lag_years=main["lag_years"] if main else None,
            log_hr=b,
            se=se,
        )
        row["direction"] = "protective" if b < 0 else "harmful"
        for lag in sorted({0.0, 2.0, 5.0, 10.0, *lags}):
            fit = index.get((code, lag, "all"))
            row[f"hr_lag{lag:g}"] = float(np.exp(fit["log_hr"])) if fit else None
        for lag in lags:
            fit = index.get((code, lag, "all"))
            row[f"log_hr_lag{lag:g}"] = fit["log_hr"] if fit else None
            row[f"se_lag{lag:g}"] = fit["se"] if fit else None
        female, male = index.get((code, main_lag, "F")), index.get((code, main_lag, "M"))
        row["hr_F"] = float(np.exp(female["log_hr"])) if female else None
        row["hr_M"] = float(np.exp(male["log_hr"])) if male else None
        row["sex_heterogeneity_p"] = (
            float(2 * stats.norm.sf(abs(female["log_hr"] - male["log_hr"]) / np.hypot(female["se"], male["se"])))
            if female and male
            else None
        )
        siblings = [index[(s, main_lag, "all")] for s in siblings_of(code, codes_at_main)]
        row["n_siblings"] = len(siblings)
        if siblings and np.isfinite(b):
            sibling_b = np.array([s["log_hr"] for s in siblings])
            pooled = pool(sibling_b, np.array([s["se"] for s in siblings]), method=settings["meta_method"])
            row.update(
                sibling_agreement=float(np.mean(np.sign(sibling_b) == np.sign(b))),
                sibling_pooled_hr=float(np.exp(pooled.estimate)),
                sibling_pooled_log_hr=pooled.estimate,
                sibling_pooled_p=pooled.p_value,
            )
        null = nulls.get(level)
        if null is not None and main:
            cal_b, cal_lo, cal_hi = calibrated_ci(np.array([b]), np.array([se]), null)
            row.update(
                calibrated_p=float(calibrated_p_value(np.array([b]), np.array([se]), null)[0]),
                calibrated_q=calibrated_q.get(code),
                calibrated_hr=float(np.exp(cal_b[0])),
                calibrated_ci_lower=float(np.exp(cal_lo[0])),
                calibrated_ci_upper=float(np.exp(cal_hi[0])),
            )
        row["e_value"] = e_value(row["hr"])
        row["e_value_ci"] = e_value_ci(row["hr"], row["ci_lower"], row["ci_upper"])
        out.append(row)
    return pl.DataFrame(out, infer_schema_length=None)


# --------------------------------------------------------------------------------------------------
# Person-level models on one ATC level (dose-response, active comparator, confirmation)
# --------------------------------------------------------------------------------------------------


def _model_cohort(cohort: pl.DataFrame, config: dict[str, Any]) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Cohort with row index, and per person the screen's stratum and categorical covariate design."""
    screen = config["screen"]
    prepared = prepare_cohort(cohort, screen["birth_cohort_band_years"]).with_row_index("cohort_row")
    layout = cell_layout(prepared, "all", screen["adjust"]["strata"], screen["adjust"]["covariates"])
    cell = layout.cell_of_person
    return prepared, layout.stratum_of_cell[cell], layout.covariate_design[cell]


def _segments(
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


def _class_starts(prepared: pl.DataFrame, class_rows: pl.DataFrame, columns: list[str], lag_days: int) -> list[np.ndarray]:
    """Per cohort row the age of each column in `columns` plus the lag (a huge age where missing)."""
    joined = prepared.select("person_id").join(class_rows.select("person_id", *columns), on="person_id", how="left", maintain_order="left")
    never = np.iinfo(np.int64).max // 4
    return [joined[c].cast(pl.Int64).fill_null(never).to_numpy() + lag_days for c in columns]


def _wald(coef: float, se: float) -> tuple[float, float, float, float]:
    if not (np.isfinite(coef) and np.isfinite(se)):
        return (float("nan"),) * 4
    return (
        float(np.exp(coef)),
        float(np.exp(coef - Z95 * se)),
        float(np.exp(coef + Z95 * se)),
        float(2 * stats.norm.sf(abs(coef / se))),
    )


def _fit_columns(
    start: np.ndarray, stop: np.ndarray, event: np.ndarray, design: np.ndarray, strata: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    """One Cox fit (aggregated engine); columns that never vary (an empty category) are left out and get NaN."""
    varying = np.flatnonzero(design.max(axis=0) > design.min(axis=0))
    coef = np.full(design.shape[1], np.nan)
    se = np.full(design.shape[1], np.nan)
    if not len(varying):
        return coef, se, "no_variation"
    fit = fit_efron(aggregate_counting_process(start, stop, event, design[:, varying], strata=strata))
    if fit.status[0] == "ok":
        coef[varying], se[varying] = fit.coef[0], fit.se[0]
    return coef, se, str(fit.status[0])


def dose_response(
    prepared: pl.DataFrame,
    stratum: np.ndarray,
    covariates: np.ndarray,
    exposures: pl.DataFrame,
    code: str,
    cutpoints: list[float],
    lag_days: int,
) -> dict[str, float]:
    """HR per cumulative-DDD category (time-varying; category 0 = unexposed) and a trend test among the exposed.

    Categories: 1 = exposed below the first cut, 2 = between cuts, ... (the lag delays every switch).
    Trend: model `exposed + score`, score = category - 1 among the exposed; its Wald p is the p for
    trend, so a trend is judged among users and not driven by the exposed/unexposed contrast.
    """
    rows = exposures.filter(pl.col("atc_code") == code)
    starts = _class_starts(prepared, rows, ["exposure_start_age_days", *[dose_column(c) for c in cutpoints]], lag_days)
    entry = prepared["entry_age_days"].cast(pl.Int64).to_numpy()
    exit_ = prepared["exit_age_days"].cast(pl.Int64).to_numpy()
    person, start, stop, category = _segments(entry, exit_, starts)
    event = prepared["event"].to_numpy()[person] & (stop == exit_[person])
    n_cat = len(cutpoints) + 2
    dummies = (category[:, None] == np.arange(1, n_cat)[None, :]).astype(np.float64)
    trend = np.column_stack([(category >= 1).astype(np.float64), np.maximum(category - 1, 0).astype(np.float64)])
    extra = covariates[person]
    result: dict[str, float] = {}
    coef, se, _ = _fit_columns(start, stop, event, np.column_stack([dummies, extra]), stratum[person])
    for k in range(n_cat - 1):
        result[f"hr_dose_{k + 1}"] = _wald(coef[k], se[k])[0]
    coef, se, _ = _fit_columns(start, stop, event, np.column_stack([trend, extra]), stratum[person])
    hr, _, _, p = _wald(coef[1], se[1])
    result.update(dose_trend_hr=hr, dose_trend_p=p)
    return result


def separated_lag_estimates(
    prepared: pl.DataFrame,
    stratum: np.ndarray,
    covariates: np.ndarray,
    exposures: pl.DataFrame,
    code: str,
    lags_years: list[float],
) -> dict[str, float]:
    """Per lag L > 0, the log HR of exposure that started >= L years ago with the first L years of
    exposure as their own category (not counted as unexposed).

    Why: in the screen's lagged model the recently exposed are counted as unexposed, so even a causal
    effect of a common drug is diluted towards 1 at long lags and could look like reverse causation.
    Separating them gives an undiluted lagged estimate: it stays put for a causal effect and falls
    to 1 when the association came from prescribing in the prodrome.
    """
    rows = exposures.filter(pl.col("atc_code") == code)
    entry = prepared["entry_age_days"].cast(pl.Int64).to_numpy()
    exit_ = prepared["exit_age_days"].cast(pl.Int64).to_numpy()
    result: dict[str, float] = {}
    for lag in sorted(v for v in lags_years if v > 0):
        lag_days = round(lag * DAYS_PER_YEAR)
        exposed_from = _class_starts(prepared, rows, ["exposure_start_age_days"], 0)[0]
        person, start, stop, category = _segments(entry, exit_, [exposed_from, exposed_from + lag_days])
        event = prepared["event"].to_numpy()[person] & (stop == exit_[person])
        design = np.column_stack([category == 1, category == 2, covariates[person]]).astype(np.float64)
        coef, se, _ = _fit_columns(start, stop, event, design, stratum[person])
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
    prepared: pl.DataFrame,
    stratum: np.ndarray,
    covariates: np.ndarray,
    exposures: pl.DataFrame,
    code: str,
    codes: list[str],
    lag_days: int,
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
    per_person = (
        exposures.filter(pl.col("atc_code").is_in([code, *comparators]))
        .with_columns(is_candidate=pl.col("atc_code") == code)
        .group_by("person_id", "is_candidate")
        .agg(pl.col("first_dispense_age_days").min(), pl.col("exposure_start_age_days").min())
    )
    cand = per_person.filter("is_candidate").drop("is_candidate")
    comp = per_person.filter(~pl.col("is_candidate")).drop("is_candidate")
    both = (
        prepared.select("cohort_row", "person_id", "entry_age_days", "exit_age_days", "event")
        .join(cand, on="person_id", how="left")
        .join(comp, on="person_id", how="left", suffix="_comparator")
    )
    big = np.iinfo(np.int32).max
    both = both.with_columns(
        first_cand=pl.col("first_dispense_age_days").fill_null(big),
        first_comp=pl.col("first_dispense_age_days_comparator").fill_null(big),
    ).filter(pl.col("first_cand") != pl.col("first_comp"))
    both = both.with_columns(candidate=pl.col("first_cand") < pl.col("first_comp")).with_columns(
        first=pl.min_horizontal("first_cand", "first_comp"),
        index_age=pl.when("candidate")
        .then(pl.col("exposure_start_age_days"))
        .otherwise(pl.col("exposure_start_age_days_comparator"))
        + lag_days,
    ).filter(
        (pl.col("first") > pl.col("entry_age_days")) & (pl.col("index_age") < pl.col("exit_age_days"))
    )
    n_cand = int(both["candidate"].sum())
    n_cases = int((both["candidate"] & both["event"]).sum())
    result = {"n_active_comparator": both.height - n_cand, "n_active_comparator_cases": int((~both["candidate"] & both["event"]).sum()), "comparator_classes": ",".join(comparators)}
    if n_cand == 0 or n_cand == both.height or n_cases == 0 or result["n_active_comparator_cases"] == 0:
        return result
    rows = both["cohort_row"].to_numpy()
    table = aggregate_counting_process(
        both["index_age"].to_numpy(),
        both["exit_age_days"].to_numpy(),
        both["event"].to_numpy(),
        np.column_stack([both["candidate"].cast(pl.Float64).to_numpy(), covariates[rows]]),
        strata=stratum[rows],
    )
    fit = fit_efron(table)
    if fit.status[0] == "ok":
        hr, lo, hi, _ = _wald(fit.coef[0, 0], fit.se[0, 0])
        result.update(hr_active_comparator=hr, ci_lower_active_comparator=lo, ci_upper_active_comparator=hi)
    return result


def healthcare_use(config: dict[str, Any], prescriptions: list[str], cohort_path: str | Path) -> pl.DataFrame:
    """Per person the number of distinct ATC level-4 classes dispensed in the 365 days before entry (DuckDB),
    from exactly the given validated prescription parts."""
    con = connect(config.get("resources"))
    sql = f"""
    WITH cohort AS (SELECT person_id, entry_date FROM read_parquet({sql_literal(str(cohort_path))}))
    SELECT c.person_id, count(DISTINCT substr(r.atc_code, 1, 5)) AS n_classes_year_before_entry
    FROM cohort c LEFT JOIN read_parquet({prescription_source(list(prescriptions))}) r
      ON r.person_id = c.person_id AND r.dispense_date <= c.entry_date
         AND r.dispense_date > c.entry_date - INTERVAL 365 DAY
    GROUP BY c.person_id
    """
    return pl.from_arrow(con.sql(sql).to_arrow_table()).with_columns(pl.col("n_classes_year_before_entry").cast(pl.Int64))


def select_proxy_confounders(
    prepared: pl.DataFrame,
    exposures: pl.DataFrame,
    codes: list[str],
    settings: dict[str, Any],
    seed: int = 0,
) -> dict[str, list[str]]:
    """Per candidate, the other classes of its level most associated with both exposure and outcome.

    Two L1-penalised logistic models on ever-use indicators of every class of the level (persons x
    classes, sparse): outcome ~ all classes (once per level), and candidate ~ all other classes (per
    candidate). Classes with a non-zero coefficient in both are ranked by |coef_outcome| x
    |coef_exposure| and the first `max_adjustment_classes` kept (a high-dimensional proxy adjustment
    in the spirit of hdPS, Schneeweiss et al. 2009, with the lasso doing the selection). Ancestors and
    descendants cannot occur (one level), and the candidate's own ATC siblings are allowed.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    confirm = settings["confirmation"]
    classes = sorted(exposures["atc_code"].unique().to_list())
    column_of = {c: i for i, c in enumerate(classes)}
    rows = exposures.select("person_id", "atc_code").join(prepared.select("person_id", "cohort_row"), on="person_id")
    matrix = sparse.csr_matrix(
        (np.ones(rows.height), (rows["cohort_row"].to_numpy(), rows["atc_code"].replace_strict(column_of, return_dtype=pl.Int64).to_numpy())),
        shape=(prepared.height, len(classes)),
    )
    matrix.data[:] = 1.0
    rng = np.random.default_rng(seed)
    n_sample = min(prepared.height, int(confirm["l1_sample_size"]))
    sample = np.sort(rng.choice(prepared.height, n_sample, replace=False))
    outcome = prepared["event"].to_numpy()
    # Outcome model: every case plus the sampled persons (case-base sampling keeps the coefficients).
    outcome_rows = np.union1d(sample, np.flatnonzero(outcome))
    model = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=confirm["l1_C"], max_iter=200)
    model.fit(matrix[outcome_rows], outcome[outcome_rows])
    outcome_coef = model.coef_[0]
    chosen: dict[str, list[str]] = {}
    sampled = matrix[sample]
    for code in codes:
        j = column_of.get(code)
        if j is None:
            chosen[code] = []
            continue
        target = sampled[:, j].toarray().ravel()
        if target.sum() < 5 or target.sum() > len(target) - 5:
            chosen[code] = []
            continue
        others = np.setdiff1d(np.arange(len(classes)), [j])
        exposure_model = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=confirm["l1_C"], max_iter=200)
        exposure_model.fit(sampled[:, others], target)
        strength = np.abs(exposure_model.coef_[0]) * np.abs(outcome_coef[others])
        order = np.argsort(-strength)
        chosen[code] = [classes[others[k]] for k in order[: confirm["max_adjustment_classes"]] if strength[k] > 0]
    return chosen


def split_time_varying(
    prepared: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], lag_days: int
) -> pl.DataFrame:
    """Counting-process rows with one 0/1 column per class in `classes` (ever-use from start + lag), split at
    every switch; the first class is the exposure of interest. Columns: cohort_row, start, stop, event, <classes>."""
    switches = (
        exposures.filter(pl.col("atc_code").is_in(classes))
        .select("person_id", "atc_code", switch=pl.col("exposure_start_age_days").cast(pl.Int64) + lag_days)
        .join(prepared.select("person_id", "cohort_row", "entry_age_days", "exit_age_days"), on="person_id")
        .with_columns(switch=pl.max_horizontal(pl.col("switch"), pl.col("entry_age_days").cast(pl.Int64)))
        .filter(pl.col("switch") < pl.col("exit_age_days"))
    )
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


def confirmation_fit(
    prepared: pl.DataFrame,
    exposures: pl.DataFrame,
    code: str,
    adjust_classes: list[str],
    hcu: pl.DataFrame | None,
    config: dict[str, Any],
    lag_days: int,
    engine: str = "lifelines",
) -> dict[str, Any]:
    """Cox model of one class on its split data, with the screen's strata and covariates, adjusted for
    `adjust_classes` (time-varying ever-use) and the health-care-use categories (`hcu`, or none).

    `engine="lifelines"` fits lifelines `CoxTimeVaryingFitter` (Efron ties, strata); `"aggregated"` fits
    the same likelihood with `repurpose.cox.engine` (every covariate is categorical, so it is exact).
    With nothing added it reproduces the screen's estimate (tests/test_candidates.py).
    """
    adjust = config["screen"]["adjust"]
    data = split_time_varying(prepared, exposures, [code, *adjust_classes], lag_days)
    covariate_names = [code, *adjust_classes]
    person_columns = list(dict.fromkeys([*adjust["strata"], *adjust["covariates"]]))
    people = prepared.select("cohort_row", *person_columns)
    if hcu is not None:
        hcu_cat = prepared.select("cohort_row", "person_id").join(hcu, on="person_id", how="left")
        category = np.searchsorted(HCU_BINS, hcu_cat["n_classes_year_before_entry"].fill_null(0).to_numpy(), side="right")
        hcu_cat = hcu_cat.select("cohort_row").with_columns(hcu=pl.Series([f"hcu_{k}" for k in category], dtype=pl.String))
        people = people.join(hcu_cat, on="cohort_row")
    data = data.join(people, on="cohort_row")
    dummy_names = []
    for variable in [*adjust["covariates"], *(["hcu"] if hcu is not None else [])]:
        levels = sorted(data[variable].unique().to_list())
        for level in levels[1:]:
            name = f"{variable}={level}"
            data = data.with_columns((pl.col(variable) == level).cast(pl.Int8).alias(name))
            dummy_names.append(name)
    covariate_names += dummy_names
    strata = adjust["strata"]
    if engine == "lifelines":
        from lifelines import CoxTimeVaryingFitter

        frame = data.select(
            "cohort_row", "start", "stop", pl.col("event").cast(pl.Int8), *covariate_names, *strata
        ).to_pandas()
        fitter = CoxTimeVaryingFitter()
        with warnings.catch_warnings():  # lifelines warns on rare dummy levels; the fit status is checked below
            warnings.simplefilter("ignore")
            fitter.fit(frame, id_col="cohort_row", event_col="event", start_col="start", stop_col="stop", strata=strata or None)
        coef, se = float(fitter.params_[code]), float(fitter.standard_errors_[code])
    else:
        stratum = data.select(strata).with_columns(pl.all().cast(pl.String)).select(pl.concat_str(pl.all(), separator="|")).to_series() if strata else None
        table = aggregate_counting_process(
            data["start"].to_numpy(),
            data["stop"].to_numpy(),
            data["event"].to_numpy(),
            data.select(covariate_names).to_numpy().astype(np.float64),
            strata=None if stratum is None else stratum.to_numpy(),
        )
        fit = fit_efron(table)
        coef, se = float(fit.coef[0, 0]), float(fit.se[0, 0])
    hr, lo, hi, p = _wald(coef, se)
    return {
        "hr_confirmation": hr,
        "ci_lower_confirmation": lo,
        "ci_upper_confirmation": hi,
        "p_confirmation": p,
        "log_hr_confirmation": coef,
        "se_confirmation": se,
        "confirmation_adjusted_for": ", ".join([*adjust_classes, *(["health-care use"] if hcu is not None else [])]),
    }


def level_models(
    config: dict[str, Any],
    prepared: pl.DataFrame,
    stratum: np.ndarray,
    covariates: np.ndarray,
    exposures: pl.DataFrame,
    codes: list[str],
    confirm_codes: list[str],
    hcu: pl.DataFrame | None,
) -> pl.DataFrame:
    """Dose-response, active comparator and (for `confirm_codes`) confirmation for the candidates of one level."""
    settings = config["candidates"]
    lag_days = round(float(settings["main_lag_years"]) * DAYS_PER_YEAR)
    all_codes = sorted(exposures["atc_code"].unique().to_list())
    cutpoints = [float(c) for c in config["screen"]["dose_cutpoints_ddd"]]
    proxies = select_proxy_confounders(prepared, exposures, confirm_codes, settings) if confirm_codes else {}
    rows = []
    for code in codes:
        started = time.perf_counter()
        row: dict[str, Any] = {"atc_code": code}
        row.update(dose_response(prepared, stratum, covariates, exposures, code, cutpoints, lag_days))
        row.update(separated_lag_estimates(prepared, stratum, covariates, exposures, code, config["screen"]["lags_years"]))
        row.update(active_comparator(prepared, stratum, covariates, exposures, code, all_codes, lag_days))
        if code in proxies:
            row.update(
                confirmation_fit(
                    prepared, exposures, code, proxies[code], hcu, config, lag_days, settings["confirmation"]["engine"]
                )
            )
        log.info("%s: person-level models in %.1f s", code, time.perf_counter() - started)
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


# --------------------------------------------------------------------------------------------------
# Score and ranking
# --------------------------------------------------------------------------------------------------


def _same_direction_significant(hr: Any, lo: Any, hi: Any, protective: bool) -> bool:
    if hr is None or lo is None or hi is None or not np.isfinite(hr):
        return False
    return bool(hi < 1) if protective else bool(lo > 1)


def _finite(value: Any) -> bool:
    return value is not None and np.isfinite(value)


def score_row(row: dict[str, Any], settings: dict[str, Any]) -> tuple[int, list[str], list[str]]:
    """Points (one per supporting line of evidence; no weights) and flags (evidence against) of one class.

    Points: calibrated (BH q of the calibrated p-values of the level < alpha); lag_robust (tested at >= 1 lag > 0, not flagged for
    reverse causation, and the longest tested lag keeps >= the retained fraction); dose_response
    (trend p < alpha, same direction); sex_consistent (F and M same direction, heterogeneity p >= alpha);
    class_consistent (ATC siblings pooled same direction, p < alpha); confirmed (confirmation CI
    excludes 1, same direction); active_comparator (its CI excludes 1, same direction);
    robust_to_confounding (E-value of the CI limit >= `min_e_value`); mechanism (a target whose
    pooled evidence has q < alpha across >= 2 ATC level-3 classes, same direction).
    """
    alpha = settings["fdr_alpha"]
    protective = row["direction"] == "protective"
    sign = -1 if protective else 1
    points, flags = [], []
    if _finite(row.get("calibrated_q")) and row["calibrated_q"] < alpha:
        points.append("calibrated")
    elif _finite(row.get("calibrated_q")):
        flags.append("not_significant_after_calibration")
    if row.get("reverse_causation_suspected"):
        flags.append("reverse_causation_suspected")
    elif row.get("lags_tested", 0) and _finite(row.get("lag_retained_fraction")):
        if row["lag_retained_fraction"] >= settings["reverse_causation"]["max_retained_fraction"]:
            points.append("lag_robust")
    if not row.get("lags_tested", 0):
        flags.append("lag_untestable")
    if _finite(row.get("dose_trend_p")) and row["dose_trend_p"] < alpha:
        if np.sign(np.log(row["dose_trend_hr"])) == sign:
            points.append("dose_response")
        else:
            flags.append("inverse_dose_response")
    hr_f, hr_m = row.get("hr_F"), row.get("hr_M")
    if _finite(hr_f) and _finite(hr_m):
        same = np.sign(np.log(hr_f)) == sign and np.sign(np.log(hr_m)) == sign
        if same and _finite(row.get("sex_heterogeneity_p")) and row["sex_heterogeneity_p"] >= alpha:
            points.append("sex_consistent")
        elif _finite(row.get("sex_heterogeneity_p")) and row["sex_heterogeneity_p"] < alpha:
            flags.append("sex_heterogeneity")
    if _finite(row.get("sibling_pooled_p")) and row["sibling_pooled_p"] < alpha:
        if np.sign(row["sibling_pooled_log_hr"]) == sign:
            points.append("class_consistent")
        else:
            flags.append("siblings_disagree")
    if _finite(row.get("hr_confirmation")):
        if _same_direction_significant(row["hr_confirmation"], row["ci_lower_confirmation"], row["ci_upper_confirmation"], protective):
            points.append("confirmed")
        elif np.sign(np.log(row["hr_confirmation"])) != sign or row["ci_lower_confirmation"] <= 1 <= row["ci_upper_confirmation"]:
            flags.append("not_confirmed_after_adjustment")
    if _finite(row.get("hr_active_comparator")):
        if _same_direction_significant(
            row["hr_active_comparator"], row["ci_lower_active_comparator"], row["ci_upper_active_comparator"], protective
        ):
            points.append("active_comparator")
        elif np.sign(np.log(row["hr_active_comparator"])) != sign:
            flags.append("active_comparator_disagrees")
    if _finite(row.get("e_value_ci")) and row["e_value_ci"] >= settings["min_e_value"]:
        points.append("robust_to_confounding")
    if row.get("mechanism_support"):
        points.append("mechanism")
    return len(points), points, flags


def rank_drugs(evidence: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Score every class and rank: protective before harmful; within a direction classes suspected of
    reverse causation after the others, then by evidence score (high first), then by calibrated p."""
    scored = []
    for row in evidence.iter_rows(named=True):
        score, points, flags = score_row(row, settings)
        scored.append({**row, "evidence_score": score, "score_points": ", ".join(points), "flags": ", ".join(flags)})
    frame = pl.DataFrame(scored, infer_schema_length=None)
    frame = frame.with_columns(
        _p=pl.coalesce(pl.col("calibrated_p") if "calibrated_p" in frame.columns else pl.lit(None, pl.Float64), pl.col("p_value"))
    )
    return (
        frame.sort(
            [pl.col("direction") == "harmful", "reverse_causation_suspected", "evidence_score", "_p", "atc_code"],
            descending=[False, False, True, False, False],
            nulls_last=True,
        )
        .with_row_index("rank", offset=1)
        .drop("_p")
    )


def _ensure_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    return frame.with_columns([pl.lit(None, pl.Float64).alias(c) for c in missing]) if missing else frame


def attach_targets(evidence: pl.DataFrame, matches: pl.DataFrame | None, mechanisms: pl.DataFrame | None, alpha: float) -> pl.DataFrame:
    """Add `targets` (level-5 substances) and `mechanism_support` (a supported mechanism in the same direction)."""
    if matches is None:
        return evidence.with_columns(targets=pl.lit(None, pl.String), mechanism_support=pl.lit(False))
    evidence = evidence.join(matches.select("atc_code", "targets"), on="atc_code", how="left")
    supported: dict[str, set[str]] = {}
    if mechanisms is not None and mechanisms.height:
        good = mechanisms.filter((pl.col("q_value") < alpha) & (pl.col("n_atc3_classes") >= 2))
        for row in good.iter_rows(named=True):
            for item in (row["substances"] or "").split("; "):
                supported.setdefault(item.split(" ")[0], set()).add(row["direction"])
    return evidence.with_columns(
        mechanism_support=pl.struct("atc_code", "direction").map_elements(
            lambda r: r["direction"] in supported.get(r["atc_code"], set()), return_dtype=pl.Boolean
        )
    )


@stage(reads=("candidates", "screen", "disclosure", "run_label"), drop=("screen.atc_levels", "screen.split_by"))
def run_candidates(
    config: dict[str, Any],
    *,
    dwas: str | Path,
    cohort: str | Path | None,
    exposures: list[str],
    prescriptions: list[str] | None,
    matches: str | Path | None,
    mechanisms: str | Path | None,
    ranking: str | Path,
    readme: str | Path | None = None,
) -> pl.DataFrame:
    """Build the drug ranking (and the results README) from the screen, exposures and mechanism outputs.

    `cohort=None` (a pooled federated run, no person-level data): the ranking uses the screen table
    alone and the person-level evidence columns (dose-response, confirmation, active comparator) stay empty.
    `prescriptions` are the validated prescription part files (for health-care use), None to leave it out.
    """
    dwas_path, cohort_path, exposure_paths, matches_path, mechanisms_path = dwas, cohort, exposures, matches, mechanisms
    ranking_path, readme_path = ranking, readme
    settings = config["candidates"]
    started = time.perf_counter()
    dwas = pl.read_parquet(dwas_path)
    lags = sorted({float(v) for v in dwas["lag_years"].unique().to_list()})
    if float(settings["main_lag_years"]) not in lags:
        raise ValueError(
            f"candidates.main_lag_years = {settings['main_lag_years']} is not a screened lag "
            f"(screen.lags_years: {lags}); set it to one of them."
        )
    signals = select_signals(dwas, settings["fdr_alpha"], settings["main_lag_years"])
    log.info("%d signal classes at q < %g (lag 0 or %g)", signals.height, settings["fdr_alpha"], settings["main_lag_years"])
    evidence = screen_evidence(dwas, signals, settings) if signals.height else pl.DataFrame({"atc_code": []}, schema={"atc_code": pl.String})
    if signals.height and cohort_path is not None:
        cohort = pl.read_parquet(cohort_path)
        prepared, stratum, covariates = _model_cohort(cohort, config)
        hcu = None
        if settings["confirmation"]["healthcare_use"] and prescriptions:
            hcu = healthcare_use(config, prescriptions, cohort_path)
        # Confirmation models are costly: fit them for the first classes of a provisional ranking.
        provisional = rank_drugs(_ensure_columns(flag_reverse_causation(evidence, settings, lags), RANKING_INPUTS), settings)
        confirm_set = set(provisional["atc_code"].to_list()[: settings["confirmation"]["max_classes"]])
        parts = []
        for path in exposure_paths:
            exposures = pl.read_parquet(path)
            level_codes = [c for c in signals["atc_code"].to_list() if c in set(exposures["atc_code"].unique().to_list())]
            if not level_codes:
                continue
            parts.append(
                level_models(
                    config, prepared, stratum, covariates, exposures, level_codes,
                    [c for c in level_codes if c in confirm_set], hcu,
                )
            )
        if parts:
            evidence = evidence.join(pl.concat(parts, how="diagonal_relaxed"), on="atc_code", how="left")
    matches = pl.read_csv(matches_path) if matches_path and Path(matches_path).exists() else None
    mechanisms = pl.read_csv(mechanisms_path) if mechanisms_path and Path(mechanisms_path).exists() else None
    if evidence.height:
        evidence = flag_reverse_causation(evidence, settings, lags)
        evidence = attach_targets(evidence, matches, mechanisms, settings["fdr_alpha"])
        ranking = rank_drugs(_ensure_columns(evidence, RANKING_INPUTS), settings)
    else:
        ranking = _ensure_columns(evidence, DRUG_COLUMNS)
    ranking = _ensure_columns(ranking, DRUG_COLUMNS).select(DRUG_COLUMNS)
    min_cell = config["disclosure"]["min_cell"]
    # Non-cases among exposed and among comparators are complements that could reveal a small count.
    complements = [("n_exposed", "n_exposed_cases"), ("n_active_comparator", "n_active_comparator_cases")]
    released = suppress_small_counts(ranking, COUNT_COLUMNS, min_cell, complements=complements)
    for_display(released, COUNT_COLUMNS, min_cell).write_csv(ranking_path)
    if readme_path is not None:
        text = candidates_readme(config)
        if matches is not None and matches.height:
            n_matched = int(matches["matched"].sum())
            text += (
                f"\nTarget mapping of this run: {n_matched} of {matches.height} screened level-5 substances "
                f"matched by INN ({100 * n_matched / matches.height:.1f}%); the unmatched are listed in "
                "`substance_targets.csv` (matched = false).\n"
            )
        Path(readme_path).write_text(text, encoding="utf-8")
    log.info("drug ranking: %d classes in %.1f s", ranking.height, time.perf_counter() - started)
    return released


def candidates_readme(config: dict[str, Any]) -> str:
    """The README written next to the rankings: every column and the exact score rules of this run."""
    s = config["candidates"]
    cuts = [float(c) for c in config["screen"]["dose_cutpoints_ddd"]]
    dose_labels = [f"<{cuts[0]:g} DDD"] + [f"{a:g}-{b:g} DDD" for a, b in zip(cuts[:-1], cuts[1:], strict=True)] + [f">={cuts[-1]:g} DDD"]
    return CANDIDATES_README.format(
        run_label=config.get("run_label", ""),
        config_hash=config_hash(config),
        version=__version__,
        alpha=s["fdr_alpha"],
        main_lag=s["main_lag_years"],
        retained=s["reverse_causation"]["max_retained_fraction"],
        rc_alpha=s["reverse_causation"]["alpha"],
        dose_labels=", ".join(f"{i + 1} = {label}" for i, label in enumerate(dose_labels)),
        min_e_value=s["min_e_value"],
        max_i2=s["max_i2"],
        meta_method=s["meta_method"],
        controls=", ".join(s["negative_controls"]) or "none listed: every fitted class of the level that is not a screen signal",
        max_classes=s["confirmation"]["max_classes"],
        max_adjustment=s["confirmation"]["max_adjustment_classes"],
        engine=s["confirmation"]["engine"],
        min_cell=config["disclosure"]["min_cell"],
    )


CANDIDATES_README = """# Candidate rankings

Run `{run_label}`, hash of the settings this ranking read `{config_hash}`, repurpose {version}.

Generated by `repurpose.dwas.candidates` and `repurpose.dwas.mechanisms` from `results/screen/dwas.parquet`,
the exposure tables and the cohort. Aggregates only: counts from 1 to {min_cell} - 1 are shown as `<{min_cell}`.
Methods and references: `docs/methods.md`, section "Candidate ranking".

## drug_ranking.csv - one row per candidate class (any ATC level)

A class is a candidate when its both-sexes screen q-value is below {alpha} at lag 0 or at the main
lag ({main_lag} years). Estimates are at the main lag unless the column says otherwise.

| column | meaning |
|---|---|
| rank | 1 = strongest protective candidate. Order: protective before harmful; within a direction, classes flagged `reverse_causation_suspected` after the others; then evidence_score (high first); then calibrated p (low first) |
| atc_code, atc_name, atc_level | the class |
| direction | protective (HR < 1) or harmful (HR >= 1) at the main lag |
| hr, ci_lower, ci_upper, p_value, q_value | the screen estimate at the main lag (Wald 95% CI; BH q within level x lag x sex) |
| calibrated_p, calibrated_q, calibrated_hr, calibrated_ci_lower, calibrated_ci_upper | empirically calibrated p, its BH q within the ATC level (main lag), and calibrated HR and CI (empirical null per ATC level from negative controls: {controls}) |
| n_exposed, n_exposed_cases | exposed persons and exposed cases at the main lag |
| hr_lag0 ... hr_lag10 | HR at each lag (exposure counts from L years after its start) |
| hr_separated_lag2 ... hr_separated_lag10 | HR of exposure started >= L years ago with the first L years of use as their own category (not counted as unexposed, so a causal effect is not diluted); used for the reverse-causation rule |
| lag_retained_fraction | log HR at the longest tested lag (separated estimate) / log HR at lag 0 |
| lag_fade_p | smallest p over lags of a Hausman-type test that the lagged log HR differs from lag 0 |
| hr_dose_1, hr_dose_2, hr_dose_3 | HR per time-varying cumulative-DDD category vs unexposed ({dose_labels}) |
| dose_trend_hr, dose_trend_p | HR per category step among users and its Wald p (model: exposed + category score) |
| hr_F, hr_M, sex_heterogeneity_p | sex-specific HRs and the z-test of their difference |
| n_siblings, sibling_agreement, sibling_pooled_hr, sibling_pooled_p | other classes under the same parent (level-5: same level 4): number, share with the same direction, random-effects pooled HR and p |
| hr_confirmation, ci_lower_confirmation, ci_upper_confirmation, confirmation_adjusted_for | Cox model on the split data of the class ({engine}), screen strata plus health-care use (distinct ATC level-4 classes in the year before entry: 0, 1, 2-3, 4-6, 7+) and up to {max_adjustment} other classes chosen by L1-penalised models of exposure and outcome; the {max_classes} candidates with the smallest screen p are fitted |
| hr_active_comparator, ci_lower/upper_active_comparator, n_active_comparator, n_active_comparator_cases | new users of the class vs new users of other classes with the same indication (same level-3 parent, other level 4), comparator persons and cases |
| e_value, e_value_ci | E-value of the HR and of the CI limit closest to 1 |
| flags | evidence against: reverse_causation_suspected, lag_untestable, not_significant_after_calibration, inverse_dose_response, sex_heterogeneity, siblings_disagree, not_confirmed_after_adjustment, active_comparator_disagrees |
| targets | gene targets (action type) of a level-5 substance |
| evidence_score, score_points | number of points and their names (below) |

**Reverse causation.** `reverse_causation_suspected` when at some lag L > 0 the separated log HR keeps less
than {retained} of its lag-0 value (or changes sign) and differs from it with p < {rc_alpha}
(`lag_fade_p`). Drugs prescribed for prodromal symptoms show exactly this; a causal effect persists.

**Score: one point each, no weights** (all "same direction" refers to the direction column):
calibrated (calibrated q < {alpha}); lag_robust (not flagged, and retained fraction >= {retained});
dose_response (trend p < {alpha}); sex_consistent (both sexes same direction, heterogeneity p >=
{alpha}); class_consistent (siblings pooled p < {alpha}); confirmed (confirmation CI excludes 1);
active_comparator (its CI excludes 1); robust_to_confounding (e_value_ci >= {min_e_value});
mechanism (a target of the substance has pooled q < {alpha} across >= 2 ATC level-3 classes).

## mechanism_ranking.csv - one row per (target, action type)

Level-5 substances are mapped to gene targets by INN (DrugCentral layout; `substance_targets.csv`
lists every screened substance with matched / unmatched). For each target and action type the
main-lag log HRs of its substances are pooled by random-effects meta-analysis ({meta_method}; with
`knapp_hartung` the Hartung-Knapp CI and p on k - 1 df, honest with two or three substances).

| column | meaning |
|---|---|
| rank | protective before harmful, then evidence_score (high first), then p_value |
| target, target_name, action_type | DrugCentral GENE (a complex stays one target), name and action |
| direction | protective if pooled HR < 1 |
| n_substances, n_atc3_classes, substances | substances pooled, their distinct ATC level-3 classes, the list |
| pooled_hr, ci_lower, ci_upper, p_value | random-effects pooled HR, 95% CI and p (Hartung-Knapp t on k - 1 df when `knapp_hartung`, else Wald) |
| q_value | BH q across all mechanisms |
| i2, tau2 | Higgins' I^2 (0-1) and between-substance variance |
| n_substances_agreeing | substances whose HR is on the pooled side of 1 |
| evidence_score, score_points | one point each: significant (q < {alpha}); and only for significant ones: replicated_across_substances (>= 2 agreeing); replicated_across_atc3_classes (agreeing substances in >= 2 level-3 classes: the strongest evidence against confounding by indication); consistent (>= 2 agreeing and I^2 <= {max_i2}) |
"""
