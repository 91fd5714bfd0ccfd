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
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

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
from repurpose.dwas.evidence import AGAINST, SUPPORTED, order_rows, score_rows
from repurpose.dwas.person_models import (
    ModelCohort,
    aggregated_cohort,
    candidate_pool,
    level_exposures,
    likelihood_ratio_fit,
    model_cohort,
    model_exposure_columns,
    read_level_exposures,
    stage_threads,
    submit_level_models,
)
from repurpose.dwas.replication import (
    half_cohorts,
    hide_replication,
    replication_fits,
    replication_hidden,
    split_halves,
)
from repurpose.dwas.shrinkage import Groups, Shrunken, fit_level_prior, shrink
from repurpose.dwas.signals import SignalTree, collapse_tree
from repurpose.dwas.tree_fdr import hierarchical_fdr
from repurpose.dwas.window import lag_days
from repurpose.lazy import lazy_module
from repurpose.logs import Progress
from repurpose.meta import pool
from repurpose.release.disclosure import DisclosurePolicy, for_display, release_ranking, release_screen
from repurpose.schemas import RANKING_COUNT_COLUMNS, drug_ranking_columns, lag_label, ranking_lags
from repurpose.stages import stage

stats = lazy_module("scipy.stats")

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
            null = nulls[level] = fit_empirical_null(controls["log_hr"].to_numpy(), controls["se"].to_numpy())
        except CalibrationError as error:
            log.warning("empirical null level %d: no calibration (%s)", level, error)
            nulls[level] = None
            continue
        for problem in null_problems(null):
            log.warning("empirical null level %d: %s", level, problem)
        log.info("empirical null level %d: mu %.3f sigma %.3f from %d controls", level, null.mu, null.sigma, null.n_controls)
    return nulls


MIN_CONTROLS_WARNING = 20
"""An empirical null fitted on fewer negative-control estimates than this is reported with a WARNING."""


def null_problems(null: EmpiricalNull) -> list[str]:
    """Why an empirical null should not be trusted (WARNING in the log and the README): sigma = 0 (the controls
    scatter no more than their standard errors, so calibration changes nothing) or too few controls."""
    problems = []
    if null.sigma == 0:
        problems.append("degenerate (sigma = 0): calibration changes nothing at this level")
    if null.n_controls < MIN_CONTROLS_WARNING:
        problems.append(f"rests on {null.n_controls} controls (fewer than {MIN_CONTROLS_WARNING})")
    return problems


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


def shown_estimates(dwas: pl.DataFrame, main_lag: float) -> pl.DataFrame:
    """Per fitted code, the both-sexes estimate the ranking shows: at the main lag, or at lag 0 when the main
    lag is not estimable (then `main_lag_not_estimable` is true and `lag_years` says 0: never a silent fallback)."""
    fitted = _fitted(dwas).filter(pl.col("sex") == "all")
    main = fitted.filter(pl.col("lag_years") == main_lag)
    zero = fitted.filter((pl.col("lag_years") == 0.0) & ~pl.col("atc_code").is_in(main["atc_code"].implode()))
    return pl.concat(
        [main.with_columns(main_lag_not_estimable=pl.lit(False)), zero.with_columns(main_lag_not_estimable=pl.lit(True))],
        how="diagonal_relaxed",
    ).sort("atc_level", "atc_code")


def screen_evidence(
    dwas: pl.DataFrame,
    shown: pl.DataFrame,
    tree: SignalTree,
    nulls: dict[int, EmpiricalNull | None],
    calibrated_q: dict[str, float],
    settings: dict[str, Any],
) -> pl.DataFrame:
    """Per signal (a row of `shown`): its estimate and lag, the other lags, the sexes, the ATC siblings,
    calibration and E-values, and the codes it covers."""
    main_lag = float(settings["main_lag_years"])
    fitted = _fitted(dwas)
    index = {(r["atc_code"], float(r["lag_years"]), r["sex"]): r for r in fitted.iter_rows(named=True)}
    lags = sorted({float(v) for v in dwas["lag_years"].unique().to_list()})
    codes_at_main = fitted.filter((pl.col("sex") == "all") & (pl.col("lag_years") == main_lag))["atc_code"].to_list()
    out = []
    for shown_row in shown.iter_rows(named=True):
        code, level, lag = shown_row["atc_code"], int(shown_row["atc_level"]), float(shown_row["lag_years"])
        b, se = shown_row["log_hr"], shown_row["se"]
        estimate = wald(b, se)
        row: dict[str, Any] = {
            "atc_code": code,
            "atc_name": shown_row.get("atc_name"),
            "atc_level": level,
            "also_seen_at": ";".join(tree.also_seen_at(code)),
            "carried_by": ";".join(tree.carried_by.get(code, [])),
            "lag_years": lag,
            "main_lag_not_estimable": shown_row["main_lag_not_estimable"],
            "hr": float(estimate.hr),
            "ci_lower": float(estimate.ci_lower),
            "ci_upper": float(estimate.ci_upper),
            "p_value": shown_row["p_value"],
            "p_method": "wald",
            "q_value": shown_row["q_value"],
            "n_exposed": shown_row.get("n_exposed"),
            "n_exposed_cases": shown_row.get("n_exposed_cases"),
            "log_hr": b,
            "se": se,
            "direction": "protective" if b < 0 else "harmful",
        }
        for each in lags:
            fit = index.get((code, each, "all"))
            row[f"hr_lag{lag_label(each)}"] = float(np.exp(fit["log_hr"])) if fit else None
            row[f"log_hr_lag{each:g}"] = fit["log_hr"] if fit else None
            row[f"se_lag{each:g}"] = fit["se"] if fit else None
        lag_cases = [index[(code, each, "all")].get("n_exposed_cases") for each in lags if (code, each, "all") in index]
        row["lag_min_exposed_cases"] = None if not lag_cases or None in lag_cases else min(lag_cases)
        female, male = index.get((code, lag, "F")), index.get((code, lag, "M"))
        row["hr_F"] = float(np.exp(female["log_hr"])) if female else None
        row["hr_M"] = float(np.exp(male["log_hr"])) if male else None
        row["n_exposed_cases_F"] = female.get("n_exposed_cases") if female else None
        row["n_exposed_cases_M"] = male.get("n_exposed_cases") if male else None
        row["sex_heterogeneity_p"] = (
            float(wald_p_value(female["log_hr"] - male["log_hr"], np.hypot(female["se"], male["se"])))
            if female and male
            else None
        )
        siblings = [index[(s, main_lag, "all")] for s in siblings_of(code, codes_at_main)]
        row["n_siblings"] = len(siblings)
        if siblings:
            sibling_b = np.array([s["log_hr"] for s in siblings])
            pooled = pool(sibling_b, np.array([s["se"] for s in siblings]), method=settings["meta_method"])
            sibling_cases = [s.get("n_exposed_cases") for s in siblings]
            row.update(
                sibling_agreement=float(np.mean(np.sign(sibling_b) == np.sign(b))),
                sibling_pooled_hr=float(np.exp(pooled.estimate)),
                sibling_pooled_log_hr=pooled.estimate,
                sibling_pooled_p=pooled.p_value,
                sibling_exposed_cases=None if None in sibling_cases else int(sum(sibling_cases)),
            )
        null = nulls.get(level)
        if null is not None and lag == main_lag:
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


def level_groups(codes: list[str], level: int, targets: dict[str, list[str]]) -> Groups:
    """What the codes of one ATC level borrow from (repurpose.dwas.shrinkage): their parent class one level
    up, and for substances (level 5) the drug targets (with action) they share."""
    labels: dict[str, list[list[str]]] = {}
    if level > 1:
        labels["class"] = [[atc_parent(code, level - 1)] for code in codes]
    if level == 5 and targets:
        labels["target"] = [targets.get(code, []) for code in codes]
    return Groups.of(len(codes), labels)


def add_shrinkage(evidence: pl.DataFrame, shown: pl.DataFrame, targets: dict[str, list[str]]) -> pl.DataFrame:
    """Add `hr_shrunken`, its 95% limits and `shrunken_z` (repurpose.dwas.shrinkage): per ATC level, the prior
    is fitted on every fitted code of the level at the main lag (signals and the codes they cover), borrowing
    from parent classes and shared `targets` (substance -> targets), and each signal's posterior uses all of
    them. A signal shown at lag 0 (main lag not estimable) is shrunken with the level's own variance only:
    its estimate is of another lag than its relatives'."""
    at_main = shown.filter(~pl.col("main_lag_not_estimable"))
    parts = []
    for level in sorted(evidence["atc_level"].unique().to_list()):
        level_rows = at_main.filter(pl.col("atc_level") == level)
        codes = level_rows["atc_code"].to_list()
        groups = level_groups(codes, int(level), targets)
        b, se = level_rows["log_hr"].to_numpy(), level_rows["se"].to_numpy()
        prior = fit_level_prior(b, se, groups)
        if prior is None or (prior.tau <= 0 and not any(prior.tau_group.values())):
            log.warning(
                "ATC level %d: no spread of true effects beyond noise could be estimated (%s); its signals are "
                "ordered by their raw z", level, "too few classes" if prior is None else "all prior variances 0",
            )
        else:
            log.info(
                "ATC level %d: shrinkage prior from %d classes: mean %.3f, own sd %.3f, %s", level, prior.n_classes,
                prior.mean, prior.tau, ", ".join(f"{kind} sd {sd:.3f} over {prior.n_groups[kind]} shared groups" for kind, sd in prior.tau_group.items()) or "no shared groups",
            )  # fmt: skip
        rows = evidence.filter(pl.col("atc_level") == level)
        with_relatives = shrink(b, se, prior, groups)
        alone = shrink(rows["log_hr"].to_numpy(), rows["se"].to_numpy(), prior)
        position = {code: i for i, code in enumerate(codes)}
        at = [position.get(code, -1) for code in rows["atc_code"].to_list()]

        def column(name: str, at: list[int] = at, both: tuple[Shrunken, Shrunken] = (with_relatives, alone)) -> np.ndarray:
            related, single = (getattr(source, name) for source in both)
            return np.array([related[i] if i >= 0 else single[k] for k, i in enumerate(at)], dtype=np.float64)

        parts.append(
            rows.with_columns(
                hr_shrunken=pl.Series(np.exp(column("log_hr"))),
                ci_lower_shrunken=pl.Series(np.exp(column("ci_lower"))),
                ci_upper_shrunken=pl.Series(np.exp(column("ci_upper"))),
                shrunken_z=pl.Series(column("z")),
            )
        )
    return pl.concat(parts, how="diagonal_relaxed")


def mechanism_evidence(code: str, direction: str, mechanisms: pl.DataFrame | None, alpha: float) -> str | None:
    """The `mechanism` line of a substance: None (not assessed) unless a target of it is shared with another
    screened substance; supported when such a mechanism has q < alpha across >= 2 ATC level-3 classes on the
    substance's side, else against."""
    needed = {"substances", "n_substances", "q_value", "n_atc3_classes", "direction"}
    if mechanisms is None or not mechanisms.height or not needed <= set(mechanisms.columns):
        return None
    mine = [
        r for r in mechanisms.iter_rows(named=True)
        if (r["n_substances"] or 0) >= 2 and code in {item.split(" ")[0] for item in (r["substances"] or "").split("; ")}
    ]  # fmt: skip
    if not mine:
        return None
    good = any(r["q_value"] is not None and r["q_value"] < alpha and r["n_atc3_classes"] >= 2 and r["direction"] == direction for r in mine)
    return SUPPORTED if good else AGAINST


TARGET_SEPARATOR = "; "
"""Separator of a substance's targets in the mechanisms stage's `targets` column ("GENE (ACTION); ...")."""


def targets_of(matches: pl.DataFrame | None) -> dict[str, list[str]]:
    """Substance -> its targets with action ("ADRB2 (AGONIST)"), from the mechanisms stage's match table."""
    if matches is None:
        return {}
    rows = matches.filter(pl.col("targets").is_not_null()).select("atc_code", "targets").iter_rows()
    return {code: [t for t in str(targets).split(TARGET_SEPARATOR) if t] for code, targets in rows}


def attach_targets(evidence: pl.DataFrame, matches: pl.DataFrame | None, mechanisms: pl.DataFrame | None, alpha: float) -> pl.DataFrame:
    """Add `targets` (level-5 substances) and `mechanism_evidence` (the mechanism line, None when not assessed)."""
    if matches is not None:
        evidence = evidence.join(matches.select("atc_code", "targets"), on="atc_code", how="left")
    else:
        evidence = evidence.with_columns(targets=pl.lit(None, pl.String))
    values = [mechanism_evidence(c, d, mechanisms, alpha) for c, d in evidence.select("atc_code", "direction").iter_rows()]
    return evidence.with_columns(mechanism_evidence=pl.Series(values, dtype=pl.String))


def _ensure_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    return frame.with_columns([pl.lit(None, pl.Float64).alias(c) for c in missing]) if missing else frame


LIKELIHOOD_RATIO_MAX_WALD_P = 0.2
"""Sparse signals with a Wald p at or above this keep their Wald p and CI (see `sparse_likelihood_ratio`)."""


def sparse_likelihood_ratio(
    evidence: pl.DataFrame, exposure_paths: list[str], model: ModelCohort, settings: dict[str, Any], threads: int = 1
) -> pl.DataFrame:
    """Replace the Wald p and CI of sparse signals (exposed cases below `small_numbers_cases`, or not counted)
    by the likelihood-ratio p and the profile-likelihood CI of the same model (`likelihood_ratio_fit`).

    Only signals with a Wald p below LIKELIHOOD_RATIO_MAX_WALD_P are refitted (each refit reads the whole
    cohort): where Wald already finds nothing, the LR test changes no decision and the order uses the
    shrunken estimate anyway. The refits of a level run in `threads` threads (`candidate_pool`)."""
    sparse = pl.col("n_exposed_cases").is_null() | (pl.col("n_exposed_cases") < settings["small_numbers_cases"])
    sparse_codes = set(evidence.filter(sparse & (pl.col("p_value") < LIKELIHOOD_RATIO_MAX_WALD_P))["atc_code"].to_list())
    lag_of = dict(zip(evidence["atc_code"].to_list(), evidence["lag_years"].to_list(), strict=True))
    found = []
    for path in exposure_paths:
        if not sparse_codes:
            break
        # Only the sparse classes' rows: a level's file holds every class, and at national scale reading it
        # whole for a few refits costs minutes.
        exposures = read_level_exposures(path, ["person_id", "atc_code", "exposure_start_age_days"], sorted(sparse_codes))
        indexed = level_exposures(model, exposures)  # joined with the cohort once per level, not per refit
        with candidate_pool(threads, [model], len(indexed.codes)) as pool:
            fits = pool.map(partial(likelihood_ratio_fit, model, indexed), indexed.codes, [lag_days(lag_of[c]) for c in indexed.codes])
            found.extend({"atc_code": code, **fit} for code, fit in zip(indexed.codes, fits, strict=True) if fit)
    if not found:
        return evidence
    lr = pl.DataFrame(found)
    log.info("%d sparse signals: likelihood-ratio p and profile-likelihood CI instead of Wald", lr.height)
    joined = evidence.join(lr, on="atc_code", how="left")
    has = pl.col("lr_p_value").is_not_null()
    return joined.with_columns(
        p_value=pl.when(has).then("lr_p_value").otherwise("p_value"),
        ci_lower=pl.when(has).then("lr_ci_lower").otherwise("ci_lower"),
        ci_upper=pl.when(has).then("lr_ci_upper").otherwise("ci_upper"),
        p_method=pl.when(has).then(pl.lit("likelihood ratio")).otherwise("p_method"),
    ).drop("lr_log_hr", "lr_p_value", "lr_ci_lower", "lr_ci_upper")


def level_q_values(dwas: pl.DataFrame, evidence: pl.DataFrame, main_lag: float) -> pl.DataFrame:
    """BH q of the main-lag rows within each ATC level (both sexes), with the signals' p as shown (likelihood
    ratio where it replaced Wald); rows shown at lag 0 keep the screen's q."""
    family = _fitted(dwas).filter((pl.col("sex") == "all") & (pl.col("lag_years") == main_lag)).select("atc_code", "atc_level", "p_value")
    shown_p = evidence.filter(pl.col("lag_years") == main_lag).select("atc_code", shown_p="p_value")
    family = family.join(shown_p, on="atc_code", how="left").with_columns(p=pl.coalesce("shown_p", "p_value"))
    q_of: dict[str, float] = {}
    for level in family["atc_level"].unique().to_list():
        rows = family.filter(pl.col("atc_level") == level)
        q_of.update(zip(rows["atc_code"].to_list(), stats.false_discovery_control(rows["p"].to_numpy(), method="bh").tolist(), strict=True))
    new_q = evidence["atc_code"].replace_strict(q_of, default=None, return_dtype=pl.Float64)
    return evidence.with_columns(q_value=pl.when(pl.col("lag_years") == main_lag).then(new_q).otherwise("q_value"))


def tree_q_values(dwas: pl.DataFrame, evidence: pl.DataFrame, main_lag: float, alpha: float) -> pl.DataFrame:
    """Add `tree_q` and `tree_rejected`: Yekutieli's hierarchical FDR over every fitted code of the screened ATC
    tree at the main lag (both sexes), with the p-values the level q-values use (`level_q_values`); rows shown at
    lag 0 are not in the main-lag tree and get none (`repurpose.dwas.tree_fdr`)."""
    family = _fitted(dwas).filter((pl.col("sex") == "all") & (pl.col("lag_years") == main_lag)).select("atc_code", "p_value")
    shown_p = evidence.filter(pl.col("lag_years") == main_lag).select("atc_code", shown_p="p_value")
    family = family.join(shown_p, on="atc_code", how="left").with_columns(p=pl.coalesce("shown_p", "p_value"))
    family = family.filter(pl.col("p").is_finite())
    if not family.height:
        return evidence.with_columns(tree_q=pl.lit(None, pl.Float64), tree_rejected=pl.lit(None, pl.Boolean))
    test = hierarchical_fdr(family["atc_code"].to_list(), family["p"].to_numpy()).frame().select("atc_code", "tree_q")
    main = pl.col("lag_years") == main_lag
    return (
        evidence.drop([c for c in ("tree_q", "tree_rejected") if c in evidence.columns])
        .join(test, on="atc_code", how="left")
        .with_columns(tree_q=pl.when(main).then("tree_q").otherwise(None))
        .with_columns(tree_rejected=pl.col("tree_q") < alpha)
    )


LEVELS_IN_FLIGHT = 2
"""Levels whose candidates are in the pool at once (`person_level_evidence`): one fitted, the next read."""


def code_length(exposure_path: str | Path) -> int:
    """The length of the ATC codes of a level's exposure table (its first row; 0 when it is empty)."""
    first = pl.scan_parquet(exposure_path).select("atc_code").head(1).collect()
    return len(first["atc_code"][0]) if first.height else 0


def person_level_evidence(
    config: dict[str, Any],
    evidence: pl.DataFrame,
    exposure_paths: list[str],
    model: ModelCohort,
    hcu: pl.DataFrame | None,
) -> pl.DataFrame:
    """Dose-response, separated lags, active comparator and confirmation for the candidate signals (the
    confirmation for the first `confirmation.max_classes` of them by screen p); the others say why not.
    The cohort's risk sets are counted once (`ModelCohort`; with `hcu`, once more for the confirmation model)."""
    settings = config["candidates"]
    confirmation = model if hcu is None else aggregated_cohort(model.prepared, config, hcu)
    halves = None
    if settings["replication"]["enabled"]:
        halves = half_cohorts(model, split_halves(model.prepared, settings["replication"]), config, hcu)
    candidates = evidence.filter("candidate").sort("p_value", "atc_code")
    confirm_set = set(candidates["atc_code"].to_list()[: settings["confirmation"]["max_classes"]])
    progress = Progress(log, "person-level models of the candidates", candidates.height)
    parts, in_flight = [], []
    with candidate_pool(stage_threads(config), [model, confirmation], candidates.height) as pool:
        for path in exposure_paths:
            length = code_length(path)
            level_codes = [c for c in candidates["atc_code"].to_list() if len(c) == length]
            if not level_codes:
                continue  # a level without candidates is not read
            if len(in_flight) == LEVELS_IN_FLIGHT:  # bounds memory: each level's exposures are held until fitted
                parts.append(in_flight.pop(0).rows(progress))
            # Read while the pool fits the level before: the cores never wait for a level's table.
            exposures = read_level_exposures(path, model_exposure_columns(config))
            replicate = None
            if halves is not None:
                by_half = {which: level_exposures(half_model, exposures) for which, half_model in halves.items()}
                replicate = partial(
                    replication_fits, halves=halves, exposures=by_half, config=config, lag_in_days=lag_days(settings["main_lag_years"])
                )
            confirm_codes = [c for c in level_codes if c in confirm_set]
            in_flight.append(submit_level_models(pool, config, model, confirmation, exposures, level_codes, confirm_codes, replicate))
        parts.extend(level.rows(progress) for level in in_flight)
    reason = pl.when(~pl.col("candidate")).then(pl.lit("not a candidate (person-level models are fitted for candidates)"))
    evidence = evidence.with_columns(person_level_reason=reason.otherwise(pl.lit(None, pl.String)))
    if not parts:
        return evidence
    joined = evidence.join(pl.concat(parts, how="diagonal_relaxed"), on="atc_code", how="left")
    adjusted = pl.col("confirmation_adjusted_for") if "confirmation_adjusted_for" in joined.columns else pl.lit(None, pl.String)
    return joined.with_columns(
        confirmation_reason=pl.when(pl.col("candidate") & ~pl.col("atc_code").is_in(list(confirm_set)))
        .then(pl.lit("beyond candidates.confirmation.max_classes"))
        .when(adjusted.str.contains("not estimable"))
        .then(pl.lit("confirmation model did not converge"))
        .otherwise(pl.lit(None, pl.String))
    )


@stage(reads=("candidates", "screen", "disclosure", "run_label"), drop=("screen.atc_levels", "screen.split_by"))
def run_candidates(
    config: dict[str, Any],
    *,
    dwas: str | Path,
    cohort: str | Path | None,
    exposures: list[str],
    healthcare_use: str | Path | None,
    matches: str | Path | None,
    mechanisms: str | Path | None,
    ranking: str | Path,
    readme: str | Path | None = None,
) -> pl.DataFrame:
    """Build the drug ranking (and the results README) from the screen, exposures and mechanism outputs.

    Every estimable signal is ranked (docs/methods.md "Drug ranking"); `candidate` marks those passing the
    threshold, and only they get the person-level models. `cohort=None` (a pooled federated run, no
    person-level data): the person-level lines say `not assessed` and p-values stay Wald.
    `healthcare_use` is the exposure stage's health-care-use table (the confirmation model's covariate), None to
    leave it out.
    """
    dwas_path, cohort_path, exposure_paths, matches_path, mechanisms_path = dwas, cohort, exposures, matches, mechanisms
    ranking_path, readme_path = ranking, readme
    settings = config["candidates"]
    columns = drug_ranking_columns(config)
    started = time.perf_counter()
    dwas = pl.read_parquet(dwas_path)
    lags = sorted({float(v) for v in dwas["lag_years"].unique().to_list()})
    main_lag = float(settings["main_lag_years"])
    if main_lag not in lags:
        raise ValueError(
            f"candidates.main_lag_years = {settings['main_lag_years']} is not a screened lag "
            f"(screen.lags_years: {lags}); set it to one of them."
        )
    shown = shown_estimates(dwas, main_lag)
    tree = collapse_tree(shown.filter(~pl.col("main_lag_not_estimable")), settings["carrier_alpha"])
    signals = shown.filter(pl.col("atc_code").is_in([c for c, s in tree.signal_of.items() if s == c]) | pl.col("main_lag_not_estimable"))
    log.info("%d fitted codes collapse into %d signals", shown.height, signals.height)
    nulls = fit_nulls(dwas, main_lag, settings["fdr_alpha"], settings["negative_controls"])
    matches = pl.read_csv(matches_path) if matches_path and Path(matches_path).exists() else None
    evidence = empty_evidence()
    if signals.height:
        evidence = screen_evidence(dwas, signals, tree, nulls, calibrated_q_values(dwas, nulls, main_lag), settings)
        evidence = add_shrinkage(evidence, shown, targets_of(matches))
    model = None
    if signals.height and cohort_path is not None:
        model = model_cohort(pl.read_parquet(cohort_path), config)
        evidence = level_q_values(dwas, sparse_likelihood_ratio(evidence, exposure_paths, model, settings, stage_threads(config)), main_lag)
    if signals.height:
        evidence = tree_q_values(dwas, evidence, main_lag, settings["fdr_alpha"])
        lag0_hits = set(select_signals(dwas.filter(pl.col("lag_years") == 0.0), settings["fdr_alpha"], 0.0)["atc_code"].to_list())
        evidence = evidence.with_columns(
            candidate=(pl.col("q_value") < settings["fdr_alpha"]).fill_null(False) | pl.col("atc_code").is_in(list(lag0_hits))
        )
        log.info("%d of %d signals are candidates (q < %g at lag 0 or %g)", int(evidence["candidate"].sum()), evidence.height, settings["fdr_alpha"], main_lag)
    if model is not None and evidence.height:
        hcu = pl.read_parquet(healthcare_use) if healthcare_use is not None and settings["confirmation"]["healthcare_use"] else None
        evidence = person_level_evidence(config, evidence, exposure_paths, model, hcu)
    elif evidence.height:
        evidence = evidence.with_columns(person_level_reason=pl.lit("no person-level data (pooled run)"))
    mechanisms = pl.read_csv(mechanisms_path) if mechanisms_path and Path(mechanisms_path).exists() else None
    if evidence.height:
        evidence = flag_reverse_causation(evidence, settings, lags)
        evidence = attach_targets(evidence, matches, mechanisms, settings["fdr_alpha"])
        scored = order_rows(score_rows(_ensure_columns(evidence, columns), settings))
        ranking = scored.with_columns(evidence_score=pl.col("evidence_supported"))
    else:
        ranking = evidence
    # Released like the screen (the same rows hidden: release is deterministic); counts rounded. The replication
    # estimate (a subset's) and the tree q (from the main p) are hidden with the main estimate, and the
    # replication estimate also by the halves' own counts (decided on the exact counts, before they are dropped).
    policy = DisclosurePolicy.from_config(config, main_lag_years=settings["main_lag_years"])
    hide_halves = replication_hidden(ranking, policy)
    ranking = _ensure_columns(ranking, columns).select(columns)
    released = release_ranking(
        ranking, release_screen(dwas, policy), policy, lags=ranking_lags(lags), count_columns=RANKING_COUNT_COLUMNS
    )
    released = hide_replication(released, hide_halves).with_columns(
        [pl.when(pl.col("hr").is_null()).then(None).otherwise(pl.col(c)).alias(c) for c in ("tree_q", "tree_rejected")]
    )
    for_display(released, RANKING_COUNT_COLUMNS, policy.min_cell).write_csv(ranking_path)
    if readme_path is not None:
        Path(readme_path).write_text(candidates_readme(config, nulls, matches), encoding="utf-8")
    log.info("drug ranking: %d signals in %.1f s", ranking.height, time.perf_counter() - started)
    return released


def empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema={"atc_code": pl.String, "atc_level": pl.Int8, "direction": pl.String})


def candidates_readme(
    config: dict[str, Any], nulls: dict[int, EmpiricalNull | None] | None = None, matches: pl.DataFrame | None = None
) -> str:
    """The README written next to the rankings: every column, the exact rules of this run, and the empirical
    null of each ATC level (with its warnings)."""
    s = config["candidates"]
    cuts = [float(c) for c in config["screen"]["dose_cutpoints_ddd"]]
    dose_labels = [f"<{cuts[0]:g} DDD"] + [f"{a:g}-{b:g} DDD" for a, b in zip(cuts[:-1], cuts[1:], strict=True)] + [f">={cuts[-1]:g} DDD"]
    template = resources.files("repurpose").joinpath(README_TEMPLATE).read_text(encoding="utf-8")
    text = template.format(
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
        min_cases=s["min_evidence_cases"],
        small_cases=s["small_numbers_cases"],
        carrier_alpha=s["carrier_alpha"],
        replication=(
            f"on: halves by a keyed hash of {s['replication']['group_column'] or 'person_id'}, seed {s['replication']['seed']}"
            if s["replication"]["enabled"]
            else "off in this run: candidates.replication.enabled"
        ),
    )
    text += "\n" + empirical_null_table(nulls or {})
    if matches is not None and matches.height:
        n_matched = int(matches["matched"].sum())
        text += (
            f"\nTarget mapping of this run: {n_matched} of {matches.height} screened level-5 substances "
            f"matched by INN ({100 * n_matched / matches.height:.1f}%); the unmatched are listed in "
            "`substance_targets.csv` (matched = false).\n"
        )
    return text


def empirical_null_table(nulls: dict[int, EmpiricalNull | None]) -> str:
    """The empirical null of each ATC level as a Markdown table (`atc_level, mu, sigma, n_controls, warning`)
    that the report can read back and plot."""
    lines = [
        "## Empirical null per ATC level (main lag)",
        "",
        "| atc_level | mu | sigma | n_controls | warning |",
        "|---|---|---|---|---|",
    ]
    for level, null in sorted(nulls.items()):
        if null is None:
            lines.append(f"| {level} |  |  |  | WARNING: no empirical null (too few controls); not calibrated |")
        else:
            warning = "; ".join(f"WARNING: {p}" for p in null_problems(null))
            lines.append(f"| {level} | {null.mu:.4f} | {null.sigma:.4f} | {null.n_controls} | {warning} |")
    return "\n".join(lines) + "\n"
