"""The trial emulation's report page (report/trial_emulation.html): the target-trial table, the eligibility flow,
risk curves, estimates with CIs (emulation beside the naive comparison), balance, positivity and weights, all
from the released tables only (nothing person-level reaches the page).

Imports matplotlib, jinja2, `release` (the figure helper, the templates, the text rows) and `trial_emulation.protocol`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl
from jinja2 import Environment, FileSystemLoader, select_autoescape

from repurpose.lazy import lazy_module
from repurpose.release.disclosure import text_rows
from repurpose.release.policy import DisclosurePolicy
from repurpose.release.report import template_dir
from repurpose.release.report_figures import figure_png
from repurpose.trial_emulation.protocol import ESCALATION, HIGH_EFFICACY, TrialProtocol

plt = lazy_module("matplotlib.pyplot", matplotlib_backend="Agg")

OUTCOME_LABELS = {
    "confirmed_worsening": "24-week confirmed disability worsening",
    "first_relapse": "first relapse",
    "death": "death (negative control)",
    "relapse_rate": "relapses per year",
    "sick_leave": "sick-leave days per year",
    "serious_infection": "serious infection (safety)",
}

LINE_STYLES = {"emulation": "-", "sustained": "-.", "naive": "--"}
"""Risk-curve line style per analysis (the emulation's also with its bootstrap band)."""


def curves_figure(curves: pl.DataFrame, outcome: str) -> str | None:
    """Risk curves of one outcome: emulation (solid, with its bootstrap band), sustained strategies (dash-dot) and
    naive (dashed) per strategy."""
    rows = curves.filter(pl.col("outcome") == outcome)
    if rows.height == 0 or rows["risk"].null_count() == rows.height:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {HIGH_EFFICACY: "tab:red", ESCALATION: "tab:blue"}
    for (analysis, strategy), part in rows.group_by("analysis", "strategy", maintain_order=True):
        part = part.sort("month")
        style = LINE_STYLES.get(analysis, ":")
        ax.step(part["month"], part["risk"], where="post", linestyle=style, color=colours[strategy],
                label=f"{strategy.replace('_', '-')} ({analysis})", linewidth=1.2)  # fmt: skip
        if analysis == "emulation":
            ax.fill_between(part["month"], part["lower"], part["upper"], step="post", alpha=0.15, color=colours[strategy])
    ax.set(xlabel="months since time zero", ylabel="risk", ylim=(0, None), title=OUTCOME_LABELS.get(outcome, outcome))
    ax.legend(fontsize=7)
    return figure_png(fig)


def write_page(tables: Mapping[str, pl.DataFrame], protocol: TrialProtocol, policy: DisclosurePolicy,
               html: str | Path) -> None:  # fmt: skip
    """Render report/trial_emulation.html from the released tables."""
    curves, estimates = tables["curves"], tables["estimates"]
    outcomes = list(dict.fromkeys(curves["outcome"].to_list())) if "outcome" in curves.columns else []
    figures = [(OUTCOME_LABELS.get(o, o), curves_figure(curves, o)) for o in outcomes]
    if "outcome" in estimates.columns:
        estimates = estimates.with_columns(pl.col("outcome").replace_strict(OUTCOME_LABELS, default=pl.col("outcome")))
    sections = {
        "target_trial": text_rows(tables["target_trial"], policy.min_cell, "hidden"),
        "flow": text_rows(tables["flow"], policy.min_cell, "hidden"),
        "estimates": text_rows(estimates, policy.min_cell, "hidden"),
        "counts": text_rows(tables["counts"], policy.min_cell, "hidden"),
        "balance": text_rows(tables["balance"], policy.min_cell, "hidden"),
        "positivity": text_rows(tables["positivity"], policy.min_cell, "hidden"),
        "weights": text_rows(tables["weights"], policy.min_cell, "hidden"),
    }
    env = Environment(loader=FileSystemLoader(template_dir()), autoescape=select_autoescape(["html", "j2"]))
    text = env.get_template("trial_emulation.html.j2").render(
        figures=[f for f in figures if f[1]], sections=sections, policy=policy.as_dict(), protocol=protocol,
    )  # fmt: skip
    Path(html).parent.mkdir(parents=True, exist_ok=True)
    Path(html).write_text(text, encoding="utf-8")
