"""The persistence study's report page (report/persistence.html): curves, reasons, the funnel plot and the
clinic table, all drawn from the released tables only (nothing person-level reaches the page).

Imports `release` (the figure helper, the text rows) and the `persistence.clinics` names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from jinja2 import Environment, FileSystemLoader, select_autoescape

from repurpose.lazy import lazy_module
from repurpose.persistence.clinics import Overdispersion, funnel_limits
from repurpose.release.disclosure import text_rows
from repurpose.release.policy import DisclosurePolicy
from repurpose.release.report import template_dir
from repurpose.release.report_figures import figure_png

plt = lazy_module("matplotlib.pyplot", matplotlib_backend="Agg")


def curves_figure(curves: pl.DataFrame, kind: str, title: str) -> str | None:
    """Kaplan-Meier persistence curves of one breakdown (overall, country or clinic) with their CIs."""
    rows = curves.filter(pl.col("group_type") == kind)
    if rows.height == 0:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for (group,), part in rows.group_by("group", maintain_order=True):
        part = part.sort("month")
        ax.step(part["month"], part["persistence"], where="post", label=str(group), linewidth=1.2)
        if kind != "clinic":
            ax.fill_between(part["month"], part["lower"], part["upper"], step="post", alpha=0.15)
    ax.set(xlabel="months since first start", ylabel="still on drug", ylim=(0, 1.02), title=title)
    if rows["group"].n_unique() <= 12:
        ax.legend(fontsize=7)
    return figure_png(fig)


def reasons_figure(reasons: pl.DataFrame) -> str | None:
    """Cumulative incidence of stopping by reason (Aalen-Johansen) at each released horizon, as grouped bars
    (a hidden value has no bar)."""
    shown = reasons.filter(pl.col("cumulative_incidence").is_not_null() & (pl.col("stop_reason") != "any reason"))
    if shown.height == 0:
        return None
    months = sorted(reasons["month"].unique().to_list())
    names = list(dict.fromkeys(reasons.filter(pl.col("stop_reason") != "any reason")["stop_reason"].to_list()))
    value = {(r, m): ci for r, m, ci in shown.select("stop_reason", "month", "cumulative_incidence").iter_rows()}
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(names), 1)
    for k, reason in enumerate(names):
        xs = [i + k * width for i, m in enumerate(months) if (reason, m) in value]
        ax.bar(xs, [value[(reason, m)] for m in months if (reason, m) in value], width=width, label=reason)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(months))], [f"{m:g} months" for m in months])
    ax.set(ylabel="cumulative incidence of stopping", title="Why patients stop (hidden values have no bar)")
    ax.legend(fontsize=7, loc="upper left")
    return figure_png(fig)


def funnel_figure(clinics: pl.DataFrame, spread: Overdispersion, horizon: float) -> str | None:
    """Funnel plot: each shown clinic's O/E within the horizon against its expected stops, with the adjusted
    95% and 99.8% limits."""
    rows = clinics.filter(pl.col("ratio").is_not_null() & (pl.col("clinic_id") != "all clinics"))
    if rows.height == 0:
        return None
    expected = rows["expected_stops"].to_numpy()
    grid = np.linspace(max(0.5, expected.min() * 0.8), expected.max() * 1.2, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for level, style in ((0.95, "--"), (0.998, ":")):
        lower, upper = funnel_limits(grid, level, spread)
        ax.plot(grid, lower, "k" + style, linewidth=0.8, label=f"{level:.1%} limits")
        ax.plot(grid, upper, "k" + style, linewidth=0.8)
    colours = {"outlier": "tab:red", "alert": "tab:orange", "in control": "tab:blue"}
    for flag, part in rows.sort("clinic_id").group_by("funnel", maintain_order=True):
        ax.scatter(part["expected_stops"], part["ratio"], s=18, color=colours.get(flag[0], "grey"), label=str(flag[0]))
    for row in rows.filter(pl.col("funnel") == "outlier").iter_rows(named=True):
        ax.annotate(str(row["clinic_id"]), (row["expected_stops"], row["ratio"]), fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set(xlabel=f"clinic size: expected stops within {horizon:g} months", ylabel="observed / expected stops",
           title=f"Case-mix-adjusted discontinuation within {horizon:g} months ({spread.method} overdispersion)")
    ax.legend(fontsize=7)
    return figure_png(fig)


def write_page(tables: Mapping[str, pl.DataFrame], settings: Mapping[str, Any], codes: Sequence[str],
               policy: DisclosurePolicy, html: str | Path) -> None:  # fmt: skip
    """Render report/persistence.html from the released tables."""
    variance = tables["variance"].row(0, named=True)
    spread = Overdispersion(phi=variance["funnel_phi"], tau2=variance["funnel_tau2"], method=variance["funnel_overdispersion"])
    horizon = float(settings["funnel_horizon_months"])
    figures = {
        "overall": curves_figure(tables["curves"], "overall", "Drug survival, all new users"),
        "country": curves_figure(tables["curves"], "country", "Drug survival by country"),
        "clinic": curves_figure(tables["curves"], "clinic", "Drug survival by clinic"),
        "reasons": reasons_figure(tables["reasons"]),
        "funnel": funnel_figure(tables["clinics"], spread, horizon),
    }
    reason_at = tables["reasons"].filter(pl.col("month").is_in([float(h) for h in settings["horizons_months"]]))
    sections = {
        "survival": text_rows(tables["survival"], policy.min_cell),
        "reasons": text_rows(reason_at, policy.min_cell),
        "clinics": text_rows(tables["clinics"], policy.min_cell),
        "cox": text_rows(tables["cox"], policy.min_cell),
        "variance": text_rows(tables["variance"], policy.min_cell),
        "agreement": text_rows(tables["agreement"], policy.min_cell),
    }
    protocol = [(key, str(value)) for key, value in sorted(settings.items())]
    env = Environment(loader=FileSystemLoader(template_dir()), autoescape=select_autoescape(["html", "j2"]))
    text = env.get_template("persistence.html.j2").render(
        codes=", ".join(codes), figures=figures, sections=sections, protocol=protocol, policy=policy.as_dict(),
        horizon=horizon,
    )  # fmt: skip
    Path(html).parent.mkdir(parents=True, exist_ok=True)
    Path(html).write_text(text, encoding="utf-8")
