"""Diagnostics a reviewer expects beside the emulation's estimates: covariate balance (standardised mean
differences before and after weighting), positivity (the fitted probability of starting high-efficacy therapy
among those who started either within the grace period), weight summaries, and persons and events per strategy.

Summaries are released without minima or maxima (a single person's value); percentiles from the 1st to the 99th.
Imports numpy, polars and the package's `trial_emulation` modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from repurpose.trial_emulation.clones import Clones, WeightFit, baseline_design, strategy_label
from repurpose.trial_emulation.cohort import COVARIATES
from repurpose.trial_emulation.logistic import fit_logistic, with_intercept

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def _weighted_mean_var(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    total = w.sum()
    if total <= 0:
        return np.nan, np.nan
    mean = float(np.sum(w * x) / total)
    return mean, float(np.sum(w * (x - mean) ** 2) / total)


def smd(x1: np.ndarray, w1: np.ndarray, x0: np.ndarray, w0: np.ndarray) -> float:
    """Standardised mean difference (m1 - m0) / sqrt((v1 + v0) / 2), weighted means and variances."""
    m1, v1 = _weighted_mean_var(x1, w1)
    m0, v0 = _weighted_mean_var(x0, w0)
    pooled = np.sqrt((v1 + v0) / 2)
    return float((m1 - m0) / pooled) if pooled > 0 else 0.0


def balance_table(baseline: pl.DataFrame, clones: Clones, fit: WeightFit, grace_days: int) -> pl.DataFrame:
    """Per baseline covariate (and country): means and SMD between those who started high-efficacy and those who
    started moderate-efficacy therapy within the grace period, unweighted (before) and between the two arms'
    clones still uncensored after the grace period weighted by their final weights (after; each arm then stands
    for the whole eligible cohort, whose mean is given too)."""
    x = baseline.select(COVARIATES).to_numpy().astype(float)
    names = list(COVARIATES)
    for country in sorted(baseline["country"].unique().to_list()):
        x = np.hstack([x, (baseline["country"] == country).cast(pl.Float64).to_numpy()[:, None]])
        names.append(f"country={country}")
    first = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    high = (baseline["first_class"] == "high_efficacy").fill_null(False).to_numpy()
    started = ~np.isnan(first) & (first <= grace_days)
    before1, before0 = started & high, started & ~high
    n = clones.n_persons
    kept = ~clones.censored & (clones.stop > grace_days)
    after1 = kept[n:] if clones.arm[n] == 1 else kept[:n]
    after0 = kept[:n] if clones.arm[n] == 1 else kept[n:]
    w1 = (fit.final_weight[n:] if clones.arm[n] == 1 else fit.final_weight[:n]) * after1
    w0 = (fit.final_weight[:n] if clones.arm[n] == 1 else fit.final_weight[n:]) * after0
    rows = []
    for j, name in enumerate(names):
        col = x[:, j]
        rows.append({
            "covariate": name,
            "mean_cohort": float(np.nanmean(col)),
            "mean_high_efficacy_before": _weighted_mean_var(col[before1], np.ones(before1.sum()))[0],
            "mean_escalation_before": _weighted_mean_var(col[before0], np.ones(before0.sum()))[0],
            "smd_before": smd(col[before1], np.ones(before1.sum()), col[before0], np.ones(before0.sum())),
            "mean_high_efficacy_after": _weighted_mean_var(col, w1)[0],
            "mean_escalation_after": _weighted_mean_var(col, w0)[0],
            "smd_after": smd(col, w1, col, w0),
        })  # fmt: skip
    counts = {"n_high_efficacy_before": int(before1.sum()), "n_escalation_before": int(before0.sum()),
              "n_high_efficacy_after": int(after1.sum()), "n_escalation_after": int(after0.sum())}  # fmt: skip
    return pl.DataFrame(rows).with_columns([pl.lit(v, pl.Int64).alias(k) for k, v in counts.items()])


def positivity(baseline: pl.DataFrame, grace_days: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Percentiles of the fitted probability of starting high-efficacy therapy (unpenalised logistic model on the
    baseline covariates and clinic groups, among those who started either within the grace period, fitted by
    `logistic.fit_logistic`), by the class started; and the probabilities (per starter, internal)."""
    first = baseline["first_start_day"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    started = ~np.isnan(first) & (first <= grace_days)
    high = (baseline["first_class"] == "high_efficacy").fill_null(False).to_numpy()[started]
    rows = []
    if started.sum() < 2 or high.all() or not high.any():
        return pl.DataFrame(schema={"started": pl.String, "n_persons": pl.Int64, "statistic": pl.String, "value": pl.Float64}), np.empty(0)
    # the censoring models' Newton fit: the maximum likelihood (scikit-learn's lbfgs stopped short of it, and its
    # import alone cost seconds of the stage)
    p = fit_logistic(with_intercept(baseline_design(baseline)[started]), high, np.ones(len(high))).fitted
    for label, mask in (("high_efficacy", high), ("escalation", ~high)):
        values = p[mask]
        for q in PERCENTILES:
            rows.append((label, int(mask.sum()), f"p{q}", float(np.percentile(values, q))))
        rows.append((label, int(mask.sum()), "share below 0.05 or above 0.95", float(np.mean((values < 0.05) | (values > 0.95)))))
    schema = {"started": pl.String, "n_persons": pl.Int64, "statistic": pl.String, "value": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row"), p


def weight_summary(analyses: Sequence[tuple[str, Clones, WeightFit]]) -> pl.DataFrame:
    """Per analysis (the estimand's clones and weights) and strategy: the final weights of the clones never
    censored (mean, SD, percentiles), the truncation cap and the number of clones truncated."""
    rows = []
    for analysis, clones, fit in analyses:
        for arm in (1, 0):
            mask = (clones.arm == arm) & ~clones.censored
            w = fit.final_weight[mask]
            row = (analysis, strategy_label(arm), int(mask.sum()))
            rows.append((*row, "mean", float(w.mean()) if w.size else np.nan))
            rows.append((*row, "sd", float(w.std()) if w.size else np.nan))
            for q in PERCENTILES:
                rows.append((*row, f"p{q}", float(np.percentile(w, q)) if w.size else np.nan))
            rows.append((*row, "truncated_at", float(fit.truncation)))
            rows.append((*row, "n_truncated", float(np.sum(mask & (fit.final_weight >= fit.truncation)) if np.isfinite(fit.truncation) else 0)))
    schema = {"analysis": pl.String, "strategy": pl.String, "n_clones": pl.Int64, "statistic": pl.String, "value": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def count_table(analyses: Sequence[tuple[str, Clones]], naive_person: np.ndarray, naive_arm: np.ndarray,
                event_days: Mapping[str, np.ndarray], followup: np.ndarray) -> pl.DataFrame:  # fmt: skip
    """Persons and events per strategy and outcome: each estimand's clones (censored at deviation, events while
    uncensored) and the naive groups (events in follow-up)."""
    rows = []
    for arm in (1, 0):
        for analysis, clones in analyses:
            mask = clones.arm == arm
            person = clones.person[mask]
            for name, day in event_days.items():
                e = day[person]
                rows.append((analysis, strategy_label(arm), name, int(mask.sum()), int(np.sum(clones.censored[mask])),
                             int(np.sum(e <= clones.stop[mask]))))  # fmt: skip
        group = naive_person[naive_arm == arm]
        for name, day in event_days.items():
            rows.append(("naive", strategy_label(arm), name, len(group), 0, int(np.sum(day[group] <= followup[group]))))
    schema = {"analysis": pl.String, "strategy": pl.String, "outcome": pl.String, "n_persons": pl.Int64,
              "n_censored_deviation": pl.Int64, "n_events": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row").sort("analysis", "outcome", "strategy")
