"""From screen hits to a short, defensible ranking of drug classes, with the evidence for and against on one row.

Every class with a screen signal (q below `candidates.fdr_alpha` at lag 0 or at the main lag, both
sexes) gets: its estimates at every lag and a reverse-causation flag, dose-response by cumulative DDD
with a test for trend, sex-specific estimates and their heterogeneity, the agreement of its ATC
siblings, a confirmation model adjusted for health-care use and for proxy confounders chosen by an
L1-penalised model, an active-comparator new-user estimate, empirically calibrated p-value and CI, and
E-values. A points score (one point per line of supporting evidence, no weights) ranks them.
The methods and the exact rules are in docs/methods.md ("Candidate ranking") and in the generated
results/candidates/README.md (template: `repurpose/data/candidates_readme.md`).

Owns the evidence read from the screen table, the score and the ranking, and the stage `run_candidates`;
the person-level models are `repurpose.dwas.person_models`. May import `repurpose.cox.result`, the other
`repurpose.dwas` modules, `repurpose.schemas`, `repurpose.meta`, `repurpose.release.disclosure` and
`repurpose.config`.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from repurpose import __version__
from repurpose.atc import atc_parent
from repurpose.config import config_hash
from repurpose.cox.result import wald, wald_p_value
from repurpose.dwas.calibration import (
    CalibrationError,
    EmpiricalNull,
    calibrated_ci,
    calibrated_p_value,
    e_value,
    e_value_ci,
    fit_empirical_null,
)
from repurpose.dwas.person_models import healthcare_use, level_models, model_cohort
from repurpose.meta import pool
from repurpose.release.disclosure import DisclosurePolicy, for_display, release_ranking, release_screen
from repurpose.schemas import (
    RANKING_COUNT_COLUMNS,
    drug_ranking_columns,
    lag_label,
    ranking_inputs,
    ranking_lags,
)
from repurpose.stages import stage

log = logging.getLogger(__name__)

README_TEMPLATE = "data/candidates_readme.md"
"""The results README's text (package data), formatted with this run's settings."""


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
    return b_lag / b0, float(wald_p_value(b_lag - b0, np.sqrt(variance)))


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
        estimate = wald(b, se)
        row.update(
            hr=float(estimate.hr),
            ci_lower=float(estimate.ci_lower),
            ci_upper=float(estimate.ci_upper),
            p_value=main["p_value"] if main else None,
            q_value=main["q_value"] if main else None,
            n_exposed=described.get("n_exposed"),
            n_exposed_cases=described.get("n_exposed_cases"),
            estimate_lag_years=main["lag_years"] if main else None,
            log_hr=b,
            se=se,
        )
        row["direction"] = "protective" if b < 0 else "harmful"
        for lag in ranking_lags(lags):
            fit = index.get((code, lag, "all"))
            row[f"hr_lag{lag_label(lag)}"] = float(np.exp(fit["log_hr"])) if fit else None
        for lag in lags:
            fit = index.get((code, lag, "all"))
            row[f"log_hr_lag{lag:g}"] = fit["log_hr"] if fit else None
            row[f"se_lag{lag:g}"] = fit["se"] if fit else None
        female, male = index.get((code, main_lag, "F")), index.get((code, main_lag, "M"))
        row["hr_F"] = float(np.exp(female["log_hr"])) if female else None
        row["hr_M"] = float(np.exp(male["log_hr"])) if male else None
        row["sex_heterogeneity_p"] = (
            float(wald_p_value(female["log_hr"] - male["log_hr"], np.hypot(female["se"], male["se"])))
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
    columns, inputs = drug_ranking_columns(config), ranking_inputs(config)
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
        prepared, stratum, covariates = model_cohort(cohort, config)
        hcu = None
        if settings["confirmation"]["healthcare_use"] and prescriptions:
            hcu = healthcare_use(config, prescriptions, cohort_path)
        # Confirmation models are costly: fit them for the first classes of a provisional ranking.
        provisional = rank_drugs(_ensure_columns(flag_reverse_causation(evidence, settings, lags), inputs), settings)
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
        ranking = rank_drugs(_ensure_columns(evidence, inputs), settings)
    else:
        ranking = _ensure_columns(evidence, columns)
    ranking = _ensure_columns(ranking, columns).select(columns)
    # Released like the screen (the same rows hidden: release is deterministic); counts rounded.
    policy = DisclosurePolicy.from_config(config, main_lag_years=settings["main_lag_years"])
    released = release_ranking(
        ranking, release_screen(dwas, policy), policy, lags=ranking_lags(lags), count_columns=RANKING_COUNT_COLUMNS
    )
    for_display(released, RANKING_COUNT_COLUMNS, policy.min_cell).write_csv(ranking_path)
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
    template = resources.files("repurpose").joinpath(README_TEMPLATE).read_text(encoding="utf-8")
    return template.format(
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
