"""The report's figures: drug-wide and volcano plots, forest plots with counts, dose-response and the
calibration plot per ATC level. Figures draw only what they are given: counts arrive already
disclosure-controlled (as display text) from `repurpose.release.report`.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from typing import Any

import numpy as np
import polars as pl

from repurpose.dwas.calibration import CalibrationError, fit_empirical_null
from repurpose.lazy import lazy_module
from repurpose.release.report_tables import SiteEvidence, number

plt = lazy_module("matplotlib.pyplot", matplotlib_backend="Agg")
ticker = lazy_module("matplotlib.ticker")

log = logging.getLogger(__name__)

def figure_png(fig: plt.Figure) -> str:
    """A figure as a base64 PNG data URI (self-contained page), closing the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def flow_diagram(items: list[str], shown: list[str]) -> str:
    """The cohort flow as a vertical box diagram with the exclusions on the side (`shown`: display counts)."""
    excluded = [(i, n) for i, n in zip(items, shown, strict=True) if i.startswith("excluded")]
    fig, ax = plt.subplots(figsize=(7.5, 1.1 + 0.55 * len(excluded)))
    ax.set_axis_off()
    height = 1.0 + 0.55 * len(excluded)
    box = {"boxstyle": "round,pad=0.4", "fc": "#eef3fb", "ec": "#345"}
    ax.text(0.25, height - 0.2, f"Population\n{shown[0]} persons", ha="center", va="top", bbox=box, fontsize=10)
    ax.text(0.25, 0.1, f"Cohort\n{shown[-1]} persons", ha="center", va="bottom", bbox=box, fontsize=10)
    ax.annotate("", xy=(0.25, 0.62), xytext=(0.25, height - 0.75), arrowprops={"arrowstyle": "-|>", "color": "#345"})
    for k, (item, n) in enumerate(excluded):
        y = height - 0.85 - 0.55 * k
        ax.annotate("", xy=(0.5, y), xytext=(0.25, y), arrowprops={"arrowstyle": "-|>", "color": "#a33"})
        ax.text(0.52, y, f"{item.removeprefix('excluded: ')}: {n}", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.3", "fc": "#fbeeee", "ec": "#a33"})  # fmt: skip
    ax.set_xlim(0, 1.3)
    ax.set_ylim(0, height)
    return figure_png(fig)


def fitted_rows(dwas: pl.DataFrame, level: int, lag: float, sex: str = "all") -> pl.DataFrame:
    return dwas.filter(
        (pl.col("atc_level") == level) & (pl.col("lag_years") == lag) & (pl.col("sex") == sex)
        & pl.col("p_value").is_finite().fill_null(False) & pl.col("log_hr").is_finite().fill_null(False)
    ).sort("atc_code")  # fmt: skip


def _fdr_threshold(rows: pl.DataFrame, alpha: float) -> float | None:
    """The largest p with q < alpha: above it on -log10 scale is a discovery; None when there is none."""
    hits = rows.filter(pl.col("q_value") < alpha)
    return float(hits["p_value"].max()) if hits.height else None


def _place_labels(ax: plt.Axes, points: list[tuple[float, float, str]]) -> list[Any]:
    """Label points in the given order, skipping any label that would overlap one already placed."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed: list[Any] = []
    axes_box = ax.get_window_extent(renderer)
    for x, y, text in points:
        for offset, align in (((4, 4), "left"), ((-4, 4), "right"), ((4, -10), "left"), ((-4, -10), "right")):
            label = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7.5, ha=align,
                                zorder=1, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.6})  # fmt: skip
            box = label.get_window_extent(renderer).expanded(1.06, 1.25)  # a little air between labels
            inside = axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            label.remove()
    return placed


def _empty_figure(fig: plt.Figure, ax: plt.Axes) -> str:
    """A figure that says there is nothing to plot (no fitted class at this level and lag)."""
    ax.text(0.5, 0.5, "no fitted class", ha="center", transform=ax.transAxes)
    ax.set_axis_off()
    return figure_png(fig)


def manhattan_figure(rows: pl.DataFrame, alpha: float, n_labels: int, title: str) -> str:
    """-log10 p of every fitted class, ordered and coloured by ATC anatomical group; FDR line; direction."""
    fig, ax = plt.subplots(figsize=(11, 4.2))
    if rows.height == 0:
        return _empty_figure(fig, ax)
    groups = rows["atc_code"].str.slice(0, 1).to_list()
    y = -np.log10(np.clip(rows["p_value"].to_numpy(), 1e-300, 1))
    x = np.arange(rows.height)
    harmful = rows["hr"].to_numpy() >= 1
    palette = plt.get_cmap("tab20").colors
    letters = sorted(set(groups))
    colours = np.array([palette[letters.index(g) % len(palette)] for g in groups])
    ax.scatter(x[harmful], y[harmful], c=colours[harmful], marker="^", s=22, label="HR > 1 (harmful)", zorder=3)
    ax.scatter(x[~harmful], y[~harmful], c=colours[~harmful], marker="v", s=22, label="HR < 1 (protective)", zorder=3)
    ticks = [np.mean(x[np.array(groups) == g]) for g in letters]
    ax.set_xticks(ticks, letters)
    for k, g in enumerate(letters):
        if k % 2:
            span = x[np.array(groups) == g]
            ax.axvspan(span.min() - 0.5, span.max() + 0.5, color="#f2f2f2", zorder=0)
    threshold = _fdr_threshold(rows, alpha)
    if threshold is not None:
        ax.axhline(-math.log10(threshold), color="#c33", ls="--", lw=1, label=f"FDR q < {alpha:g}")
    ax.set_xlim(-1, rows.height)
    ax.set_ylim(0, max(y.max() * 1.2, 2))
    ax.set_xlabel("ATC class, ordered by code and grouped by anatomical main group")
    ax.set_ylabel("-log10 p")
    ax.set_title(title, fontsize=11)
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    for handle in legend.legend_handles[:2]:  # the marker shape tells the direction; colours are groups
        handle.set_color("#555")
    order = np.argsort(-y)[:n_labels]
    _place_labels(ax, [(float(x[i]), float(y[i]), rows["atc_code"][int(i)]) for i in order])
    return figure_png(fig)


def volcano_figure(rows: pl.DataFrame, alpha: float, n_labels: int, title: str) -> str:
    """log HR against -log10 p; discoveries (q < alpha) in colour."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if rows.height == 0:
        return _empty_figure(fig, ax)
    x = rows["log_hr"].to_numpy()
    y = -np.log10(np.clip(rows["p_value"].to_numpy(), 1e-300, 1))
    hit = (rows["q_value"] < alpha).fill_null(False).to_numpy()
    ax.scatter(x[~hit], y[~hit], s=12, c="#9aa", label="not significant", zorder=3)
    ax.scatter(x[hit & (x < 0)], y[hit & (x < 0)], s=18, c="#2a7", label=f"protective, q < {alpha:g}", zorder=3)
    ax.scatter(x[hit & (x >= 0)], y[hit & (x >= 0)], s=18, c="#c33", label=f"harmful, q < {alpha:g}", zorder=3)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_ylim(0, max(y.max() * 1.2, 2))
    ax.set_xlabel("log hazard ratio")
    ax.set_ylabel("-log10 p")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    order = np.argsort(-y)[:n_labels]
    _place_labels(ax, [(float(x[i]), float(y[i]), rows["atc_code"][int(i)]) for i in order])
    return figure_png(fig)


def _counts_label(row: dict[str, Any]) -> str:
    """" [n 2957, cases 13]" from a screen row whose counts are display text (suppressed as "<5")."""
    n, cases = row.get("n_exposed"), row.get("n_exposed_cases")
    if n is None and cases is None:
        return ""
    return f" [n {n if n is not None else '?'}, cases {cases if cases is not None else '?'}]"


def forest_rows(
    dwas: pl.DataFrame, candidate: dict[str, Any], lags: list[float], main_lag: float | None = None
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, hr, lower, upper) for one class: the screen at each lag, the sex strata at the main lag (the
    first lag when not given), then the other models. `dwas` holds counts as display text: each screen
    label ends with its exposed persons and exposed cases."""
    code, level = candidate["atc_code"], int(candidate["atc_level"])
    main_lag = lags[0] if main_lag is None or main_lag not in lags else main_lag
    mine = dwas.filter((pl.col("atc_code") == code) & (pl.col("atc_level") == level))
    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for lag in lags:
        for sex in ("all", "F", "M"):
            hit = mine.filter((pl.col("lag_years") == lag) & (pl.col("sex") == sex))
            if hit.height and (sex == "all" or lag == main_lag):
                r = hit.row(0, named=True)
                label = f"screen, lag {lag:g} y" + ("" if sex == "all" else f", {sex}") + _counts_label(r)
                rows.append((label, number(r["hr"]), number(r["ci_lower"]), number(r["ci_upper"])))
    for model, label in (("confirmation", "confirmation model"), ("active_comparator", "active comparator")):
        if number(candidate.get(f"hr_{model}")) is not None:
            rows.append((label, number(candidate[f"hr_{model}"]), number(candidate.get(f"ci_lower_{model}")),
                         number(candidate.get(f"ci_upper_{model}"))))  # fmt: skip
    calibrated_p = number(candidate.get("calibrated_p"))
    if number(candidate.get("calibrated_hr")) is not None:
        rows.append((f"calibrated (p = {calibrated_p:.2g})" if calibrated_p is not None else "calibrated",
                     number(candidate["calibrated_hr"]), number(candidate.get("calibrated_ci_lower")),
                     number(candidate.get("calibrated_ci_upper"))))  # fmt: skip
    elif calibrated_p is not None and number(candidate.get("hr")) is not None:
        rows.append((f"ranking estimate, calibrated p = {calibrated_p:.2g}", number(candidate["hr"]),
                     number(candidate.get("ci_lower")), number(candidate.get("ci_upper"))))  # fmt: skip
    return rows


def site_forest_rows(
    sites: SiteEvidence, dwas: pl.DataFrame, candidate: dict[str, Any], main_lag: float, lags: list[float]
) -> list[tuple[str, float | None, float | None, float | None]]:
    """Per-site forest plot of one class in a pooled run: each site's HR at the main lag (both sexes),
    the fixed-effect and REML random-effects meta-analyses, the ranking estimate (exact pooled Cox or
    fixed effect), then the pooled estimate at each lag and by sex."""
    code, level = candidate["atc_code"], int(candidate["atc_level"])

    def at_main(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter((pl.col("atc_code") == code) & (pl.col("atc_level") == level)
                            & (pl.col("lag_years") == main_lag) & (pl.col("sex") == "all"))  # fmt: skip

    mine = at_main(sites.site_fits)
    labels = sorted(sites.site_fits["site"].unique().to_list())
    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for site in labels:
        hit = mine.filter((pl.col("site") == site) & (pl.col("status") == "ok"))
        r = hit.row(0, named=True) if hit.height else {}
        rows.append((f"{site}, lag {main_lag:g} y", number(r.get("hr")), number(r.get("ci_lower")), number(r.get("ci_upper"))))
    pooled = at_main(sites.meta)
    if pooled.height:
        m = pooled.row(0, named=True)
        rows.append((f"fixed effect ({m['k_sites']} sites)", number(m.get("fe_hr")), number(m.get("fe_ci_lower")), number(m.get("fe_ci_upper"))))
        i2 = number(m.get("i2"))
        rows.append(("random effects REML" + (f" (I2 {100 * i2:.0f}%)" if i2 is not None else ""),
                     number(m.get("reml_hr")), number(m.get("reml_ci_lower")), number(m.get("reml_ci_upper"))))  # fmt: skip
    source_names = {"pooled_cox": "exact pooled Cox", "fixed_effect_meta": "pooled fixed effect"}
    sources = {}
    if "estimate_source" in dwas.columns:
        mine_all = dwas.filter((pl.col("atc_code") == code) & (pl.col("atc_level") == level))
        sources = {(float(r["lag_years"]), r["sex"]): r["estimate_source"] for r in mine_all.iter_rows(named=True)}
    for label, hr, lo, hi in forest_rows(dwas, candidate, lags, main_lag):
        match = re.match(r"screen, lag ([0-9.]+) y(?:, (F|M))?(?: \[.*\])?$", label)
        if match:
            source = sources.get((float(match.group(1)), match.group(2) or "all"))
            label = label.replace("screen", source_names.get(source, "pooled"))
        rows.append((label, hr, lo, hi))
    return rows


def dose_labels(cutpoints: list[float]) -> list[str]:
    """Cumulative-DDD categories as the candidate ranking defines them (hr_dose_1 = below the first cut)."""
    cuts = sorted(float(c) for c in cutpoints)
    inner = [f"{a:g}-{b:g}" for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return [f"<{cuts[0]:g} DDD", *[f"{label} DDD" for label in inner], f">={cuts[-1]:g} DDD"]


def dose_figure(candidate: dict[str, Any], cutpoints: list[float], min_cell: int) -> str | None:
    """HR per cumulative-DDD category against unexposed time (`hr_dose_k` of the ranking), with the unexposed
    reference at 1, the CIs (`ci_lower_dose_k`, `ci_upper_dose_k`) and the counts (`n_exposed_dose_k`,
    `n_exposed_cases_dose_k`) where the ranking holds them; None when it holds no dose estimate."""
    labels = dose_labels(cutpoints)
    k_range = range(1, len(labels) + 1)
    hrs = [number(candidate.get(f"hr_dose_{k}")) for k in k_range]
    if all(h is None for h in hrs):
        return None
    lows = [number(candidate.get(f"ci_lower_dose_{k}")) for k in k_range]
    highs = [number(candidate.get(f"ci_upper_dose_{k}")) for k in k_range]
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot([0], [1.0], "D", color="#777", ms=6)
    values = [1.0]
    for x, (h, lo, hi) in enumerate(zip(hrs, lows, highs, strict=True), start=1):
        if h is None:
            ax.text(x, 1.0, "not\nestimable", ha="center", va="center", fontsize=7, color="#777")
            continue
        if lo is not None and hi is not None:
            ax.plot([x, x], [lo, hi], color="#345", lw=1.5)
            values += [lo, hi]
        ax.plot([x], [h], "o", color="#c33" if h >= 1 else "#2a7", ms=6)
        values.append(h)
    ax.axhline(1, color="#555", lw=0.8, ls="--")
    ax.set_yscale("log")
    _hr_axis(ax.yaxis, ax.set_ylim, values)

    def count(k: int, name: str) -> str | None:
        column = f"{name}_dose_{k}"
        if column not in candidate:
            return None
        value = candidate[column]
        return f"<{min_cell}" if value is None else f"{value}"

    ticks = ["unexposed\n(reference)"]
    for k, label in zip(k_range, labels, strict=True):
        n, cases = count(k, "n_exposed"), count(k, "n_exposed_cases")
        ticks.append(label + (f"\nn {n}" if n is not None else "") + (f", cases {cases}" if cases is not None else ""))
    ax.set_xticks(range(len(ticks)), ticks, fontsize=7.5)
    ax.set_xlim(-0.5, len(ticks) - 0.5)
    ax.set_ylabel("HR vs unexposed (95% CI)")
    trend = number(candidate.get("dose_trend_p"))
    ax.set_title("cumulative dose" + (f" (trend p = {trend:.2g})" if trend is not None else ""), fontsize=9)
    return figure_png(fig)


def _hr_axis(axis: Any, set_limits: Any, values: list[float]) -> None:
    """A log hazard-ratio axis that includes 1, with plain-number ticks (0.5, 1, 2, ...)."""
    values = values or [1.0]
    low, high = min(min(values), 1.0) / 1.15, max(max(values), 1.0) * 1.15
    set_limits(low, high)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50) if low <= t <= high]
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(ticker.NullFormatter())


def forest_figure(rows: list[tuple[str, float | None, float | None, float | None]], title: str) -> str:
    """Hazard ratios with 95% CIs on a log axis, one line per estimate ("not estimable" when not fitted)."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.1))
    for k, (_label, hr, lo, hi) in enumerate(rows):
        yk = len(rows) - 1 - k
        if hr is None:
            ax.text(1.02, yk, "not estimable", transform=ax.get_yaxis_transform(), va="center", fontsize=8, color="#777")
            continue
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [yk, yk], color="#345", lw=1.5)
        ax.plot([hr], [yk], "s", color="#c33" if hr >= 1 else "#2a7", ms=6)
        ci = f" ({lo:.2f}-{hi:.2f})" if lo is not None and hi is not None else ""
        ax.text(1.02, yk, f"{hr:.2f}{ci}", transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(1, color="#555", lw=0.8, ls="--")
    ax.set_xscale("log")
    _hr_axis(ax.xaxis, ax.set_xlim, [v for r in rows for v in r[1:] if v is not None])
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8.5)
    ax.set_xlabel("hazard ratio (log scale)")
    ax.set_title(title, fontsize=10)
    return figure_png(fig)




def calibration_panel(
    dwas: pl.DataFrame, level: int, main_lag: float, alpha: float, negative_controls: list[str], min_controls: int
) -> dict[str, Any]:
    """The empirical null of one ATC level at the main lag (both sexes), fitted as the candidate ranking
    does (`repurpose.dwas.calibration`: the listed negative controls, else every fitted
    class that is not a screen signal), its plot (controls' HR against SE, the null's 95% band) and the
    warnings: no null, a degenerate null (sigma = 0: calibration only shifts by mu) or fewer controls
    than `min_controls`."""
    rows = fitted_rows(dwas, level, main_lag).filter(pl.col("se").is_finite() & (pl.col("se") > 0))
    if negative_controls:  # the listed controls of every level, as the ranking pools them
        controls = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == main_lag) & pl.col("atc_code").is_in(negative_controls)
                               & pl.col("log_hr").is_finite().fill_null(False) & (pl.col("se") > 0).fill_null(False))  # fmt: skip
    else:
        controls = rows.filter(~(pl.col("q_value") < alpha).fill_null(False))
    panel: dict[str, Any] = {"level": level, "lag": f"{main_lag:g}", "n_controls": controls.height, "warnings": []}
    try:
        null = fit_empirical_null(controls["log_hr"].to_numpy(), controls["se"].to_numpy())
    except CalibrationError as error:
        panel["warnings"].append(f"level {level}: no empirical null ({error})")
        null = None
    if null is not None:
        panel.update(mu=f"{null.mu:.3f}", sigma=f"{null.sigma:.3f}")
        if null.sigma == 0:
            panel["warnings"].append(
                f"level {level}: the empirical null is degenerate (sigma = 0 from {null.n_controls} controls): calibration "
                "only shifts estimates by mu and does not widen them, so calibrated p-values are no more conservative than raw ones"
            )
        if null.n_controls < min_controls:
            panel["warnings"].append(
                f"level {level}: the empirical null rests on {null.n_controls} negative controls (fewer than {min_controls})"
            )
    for warning in panel["warnings"]:
        log.warning("calibration %s", warning)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if controls.height:
        ax.scatter(np.exp(controls["log_hr"].to_numpy()), controls["se"].to_numpy(), s=12, c="#678", label="negative controls")
        signals = rows.filter((pl.col("q_value") < alpha).fill_null(False))
        if signals.height and not negative_controls:
            ax.scatter(np.exp(signals["log_hr"].to_numpy()), signals["se"].to_numpy(), s=16, c="#c33", marker="x",
                       label="screen signals (not controls)")  # fmt: skip
        se_grid = np.linspace(0, float(rows["se"].max()) * 1.05, 50)
        if null is not None:
            half = 1.96 * np.sqrt(null.sigma**2 + se_grid**2)
            ax.plot(np.exp(null.mu - half), se_grid, color="#2a7", lw=1)
            ax.plot(np.exp(null.mu + half), se_grid, color="#2a7", lw=1, label="fitted null, 95% band")
            ax.axvline(math.exp(null.mu), color="#2a7", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.axvline(1, color="#555", lw=0.8, ls="--")
        _hr_axis(ax.xaxis, ax.set_xlim, [float(v) for v in np.exp(rows["log_hr"].to_numpy())])
        ax.legend(fontsize=7, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no fitted class", ha="center", transform=ax.transAxes)
    ax.set_xlabel("hazard ratio (log scale)")
    ax.set_ylabel("standard error of log HR")
    title = f"ATC level {level}, lag {main_lag:g} y"
    if null is not None:
        title += f": mu {null.mu:.2f}, sigma {null.sigma:.2f}, {null.n_controls} controls"
    ax.set_title(title, fontsize=9)
    panel["figure"] = figure_png(fig)
    return panel
