"""The reviewer's report: one self-contained HTML page (`results/report/index.html`) that opens offline.

It shows the study summary (cohort flow, validation, exposure prevalence), the drug-wide screen
(Manhattan-style and volcano plots per ATC level and lag), the evidence for the top candidates (forest
plots across lags, sex strata and models), the drug and mechanism rankings as sortable, filterable
tables, and methods and provenance. Every count passes `repurpose.release.disclosure.suppress_small_counts`
before it is drawn or written; person-level inputs (the exposure table) are only ever aggregated.
The candidate files are optional: when absent, the report says so and shows the top screen hits.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402

from repurpose.atc import load_atc_names  # noqa: E402
from repurpose.layout import REPORT_TABLES  # noqa: E402
from repurpose.release.disclosure import (  # noqa: E402
    SCREEN_RULES,
    DisclosurePolicy,
    Partition,
    for_display,
    parse_display,
    person_count_columns,
    release_counts,
    release_linked,
    suppress_small_counts,
)
from repurpose.release.provenance import provenance, without_times  # noqa: E402
from repurpose.schemas import lag_label  # noqa: E402
from repurpose.stages import ALL_DESIGN, stage  # noqa: E402

log = logging.getLogger(__name__)

NUMERIC_FACTS = ("dose_trend_p", "calibrated_p", "e_value")
SUMMARY_PARTITION = Partition(by=("table",), part_column="item", total_value="total")
SCREEN_COUNTS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")


def drug_columns(lags: list[float], main_lag: float) -> list[str]:
    """The drug ranking's columns the report reads: the contract columns, with the HR at each screened lag
    beyond the main lag (does the association survive setting recent use aside?)."""
    later = [f"hr_lag{lag_label(lag)}" for lag in lags if lag > main_lag]
    return ["rank", "atc_code", "atc_name", "atc_level", "direction", "hr", "ci_lower", "ci_upper", "q_value",
            "calibrated_p", *later, "dose_trend_p", "hr_F", "hr_M", "hr_confirmation",
            "hr_active_comparator", "e_value", "flags", "targets", "evidence_score"]  # fmt: skip


def drug_table_columns(columns: list[str]) -> list[str]:
    """The drug table of the page: the contract columns plus p and the exposed counts (the CSV has every column)."""
    return [*columns[:8], "p_value", *columns[8:], "n_exposed", "n_exposed_cases"]


DRUG_COLUMNS = drug_columns([0.0, 2.0, 5.0, 10.0], 2.0)  # with the default lags and main lag
MECHANISM_COLUMNS = ["rank", "target", "target_name", "action_type", "n_substances", "n_atc3_classes", "substances",
                     "pooled_hr", "ci_lower", "ci_upper", "p_value", "q_value", "i2", "evidence_score"]  # fmt: skip


@dataclass(frozen=True)
class SiteEvidence:
    """Aggregates of a federated (pooled) run, used in place of the person-level inputs of a single site:
    per-site fits (site_fits.parquet), the meta-analyses (meta.parquet), per-site flow and validation
    counts (site_summaries.csv: site, summary, table, item, n) and the sites' manifest fields (sites.csv)."""

    site_fits: pl.DataFrame
    meta: pl.DataFrame
    summaries: pl.DataFrame | None = None
    sites: pl.DataFrame | None = None


def read_site_evidence(
    site_fits: str | Path, meta: str | Path, summaries: str | Path | None, sites: str | Path | None
) -> SiteEvidence:
    """The pooled run's aggregates from their files (the summaries and the sites table are optional)."""
    return SiteEvidence(
        site_fits=pl.read_parquet(site_fits),
        meta=pl.read_parquet(meta),
        summaries=parse_display(pl.read_csv(summaries, infer_schema=False), ["n"])
        if summaries is not None and Path(summaries).is_file() else None,
        sites=pl.read_csv(sites) if sites is not None and Path(sites).is_file() else None,
    )  # fmt: skip


def template_dir() -> Path:
    """The report's templates and captions: package data (`workflow/report` links to them)."""
    return Path(str(resources.files("repurpose").joinpath("data/report")))


def figure_png(fig: plt.Figure) -> str:
    """A figure as a base64 PNG data URI (self-contained page), closing the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- summary tables (all disclosure-controlled)


def _long(rows: list[tuple[str, str, int | None]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"table": pl.String, "item": pl.String, "n": pl.Int64}, orient="row")


def _policy(policy: DisclosurePolicy | int) -> DisclosurePolicy:
    """A policy; a bare minimum cell (older callers) means that minimum without rounding."""
    return policy if isinstance(policy, DisclosurePolicy) else DisclosurePolicy(min_cell=int(policy), rounding_base=1)


FLOW_TABLES = ("flow", "events by sex", "events by outcome source", "exit reasons")


def flow_rows(flow: dict[str, Any]) -> pl.DataFrame:
    """Cohort flow, events and exit reasons as (table, item, n), exact; `total` rows are the sums of the others."""
    rows = [("flow", "total", flow["persons_in_population"])]
    rows += [("flow", f"excluded: {step.replace('_', ' ')}", n) for step, n in flow["excluded"].items()]
    rows += [("flow", "in cohort", flow["persons_in_cohort"])]
    for name, total, parts in (
        ("events by sex", flow["events"], flow.get("events_by_sex", {})),
        ("events by outcome source", flow["events"], flow.get("events_by_outcome_source", {})),
        ("exit reasons", flow["persons_in_cohort"], flow.get("exit_reasons", {})),
    ):
        rows += [(name, "total", total)] + [(name, str(k), v) for k, v in parts.items()]
    return _long(rows)


def validation_rows(report: dict[str, Any]) -> pl.DataFrame:
    """Rows read, kept and rejected per reason for each extract, as (table, item, n), exact."""
    rows: list[tuple[str, str, int | None]] = []
    for extract, entry in report["extracts"].items():
        rows += [(f"{extract}", "total", entry["rows_read"]), (f"{extract}", "kept", entry["rows_kept"]),
                 (f"{extract}", "rejected", entry["rows_rejected"])]  # fmt: skip
        rows += [(f"{extract} rejects", "total", entry["rows_rejected"])]
        rows += [(f"{extract} rejects", reason, n) for reason, n in entry["rejected_by_reason"].items()]
    return _long(rows)


def summary_links(rows: pl.DataFrame) -> list[list[tuple[str, str]]]:
    """Cells of the flow and validation tables that hold the same count (linked only where the values agree):
    the population's accepted rows and the flow's total, the cohort and its exit reasons, the events and the
    exit reason `outcome`, an extract's rejected rows and its rejects' total."""
    value = {(t, i): n for t, i, n in rows.iter_rows()}
    candidates = [
        [("flow", "total"), ("population", "kept")],
        [("flow", "in cohort"), ("exit reasons", "total")],
        [("events by sex", "total"), ("events by outcome source", "total"), ("exit reasons", "outcome")],
    ]
    candidates += [[(t, "rejected"), (f"{t} rejects", "total")] for t in rows["table"].unique().to_list()]
    links = []
    for group in candidates:
        present = [cell for cell in group if cell in value]
        if len(present) > 1 and len({value[cell] for cell in present}) == 1:
            links.append(present)
    return links


def released_summaries(
    flow: dict[str, Any] | None, validation: dict[str, Any] | None, policy: DisclosurePolicy | int
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """The cohort flow and validation tables released as ONE structure (`release_linked`): e.g. the validation's
    20,000 read and the flow's 19,997 would otherwise reveal 3 hidden rejects. One function for the report,
    report/tables and the site package, so a cell shows the same released value everywhere."""
    parts = [flow_rows(flow) if flow is not None else _long([]), validation_rows(validation) if validation is not None else _long([])]
    rows = pl.concat(parts)
    released = release_linked(rows, _policy(policy), partitions=[SUMMARY_PARTITION], links=summary_links(rows))
    n_flow = parts[0].height
    return (released.head(n_flow) if flow is not None else None,
            released.slice(n_flow) if validation is not None else None)  # fmt: skip


def flow_table(flow: dict[str, Any], policy: DisclosurePolicy | int) -> pl.DataFrame:
    """Cohort flow, events and exit reasons as (table, item, n), released (without the validation beside it)."""
    return released_summaries(flow, None, policy)[0]  # type: ignore[return-value]


def validation_table(report: dict[str, Any], policy: DisclosurePolicy | int) -> pl.DataFrame:
    """Rows read, kept and rejected per reason for each extract as (table, item, n), released alone."""
    return released_summaries(None, report, policy)[1]  # type: ignore[return-value]


def prevalence_table(
    exposure_path: str | Path, n_cohort: int, names: pl.DataFrame, policy: DisclosurePolicy | int
) -> pl.DataFrame:
    """Persons ever exposed per ATC anatomical group (level 1), aggregated from the person-level table."""
    exposed = (
        pl.scan_parquet(exposure_path)
        .select(pl.col("atc_code").str.slice(0, 1).alias("atc_group"), "person_id")
        .group_by("atc_group")
        .agg(pl.col("person_id").n_unique().alias("n_exposed"))
        .collect()
    )
    groups = names.filter(pl.col("atc_level") == 1).select(pl.col("atc_code").alias("atc_group"), "atc_name")
    table = (
        groups.join(exposed, on="atc_group", how="full", coalesce=True)
        .with_columns(pl.col("n_exposed").fill_null(0).cast(pl.Int64), pl.lit(n_cohort, pl.Int64).alias("n_persons"))
        .with_columns(percent_exposed=pl.lit(None, pl.Float64))
        .sort("atc_group")
    )
    released = release_counts(
        table, ["n_exposed", "n_persons"], _policy(policy), complements=[("n_persons", "n_exposed")],
    )  # fmt: skip
    # The percentage follows its released counts (from the exact ones it would undo the rounding).
    return released.with_columns((100 * pl.col("n_exposed") / pl.col("n_persons")).round(1).alias("percent_exposed"))


# ---------------------------------------------------------------- figures


def flow_figure(flow: pl.DataFrame, min_cell: int) -> str:
    """The cohort flow as a vertical box diagram with the exclusions on the side."""
    steps = flow.filter(pl.col("table") == "flow")
    shown = for_display(steps, ["n"], min_cell)["n"].to_list()
    items = steps["item"].to_list()
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


def _fitted(dwas: pl.DataFrame, level: int, lag: float, sex: str = "all") -> pl.DataFrame:
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


def _num(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def forest_rows(
    dwas: pl.DataFrame, candidate: dict[str, Any], lags: list[float]
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(label, hr, lower, upper) for one class: screen at each lag, each sex stratum, and the other models."""
    code, level = candidate["atc_code"], int(candidate["atc_level"])
    mine = dwas.filter((pl.col("atc_code") == code) & (pl.col("atc_level") == level))
    rows: list[tuple[str, float | None, float | None, float | None]] = []
    for lag in lags:
        for sex in ("all", "F", "M"):
            hit = mine.filter((pl.col("lag_years") == lag) & (pl.col("sex") == sex))
            if hit.height and (sex == "all" or lag == lags[0]):
                r = hit.row(0, named=True)
                label = f"screen, lag {lag:g} y" + ("" if sex == "all" else f", {sex}")
                rows.append((label, _num(r["hr"]), _num(r["ci_lower"]), _num(r["ci_upper"])))
    for model, label in (("confirmation", "confirmation model"), ("active_comparator", "active comparator")):
        if _num(candidate.get(f"hr_{model}")) is not None:
            rows.append((label, _num(candidate[f"hr_{model}"]), _num(candidate.get(f"ci_lower_{model}")),
                         _num(candidate.get(f"ci_upper_{model}"))))  # fmt: skip
    calibrated_p = _num(candidate.get("calibrated_p"))
    if _num(candidate.get("calibrated_hr")) is not None:
        rows.append((f"calibrated (p = {calibrated_p:.2g})" if calibrated_p is not None else "calibrated",
                     _num(candidate["calibrated_hr"]), _num(candidate.get("calibrated_ci_lower")),
                     _num(candidate.get("calibrated_ci_upper"))))  # fmt: skip
    elif calibrated_p is not None and _num(candidate.get("hr")) is not None:
        rows.append((f"ranking estimate, calibrated p = {calibrated_p:.2g}", _num(candidate["hr"]),
                     _num(candidate.get("ci_lower")), _num(candidate.get("ci_upper"))))  # fmt: skip
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
        rows.append((f"{site}, lag {main_lag:g} y", _num(r.get("hr")), _num(r.get("ci_lower")), _num(r.get("ci_upper"))))
    pooled = at_main(sites.meta)
    if pooled.height:
        m = pooled.row(0, named=True)
        rows.append((f"fixed effect ({m['k_sites']} sites)", _num(m.get("fe_hr")), _num(m.get("fe_ci_lower")), _num(m.get("fe_ci_upper"))))
        i2 = _num(m.get("i2"))
        rows.append(("random effects REML" + (f" (I2 {100 * i2:.0f}%)" if i2 is not None else ""),
                     _num(m.get("reml_hr")), _num(m.get("reml_ci_lower")), _num(m.get("reml_ci_upper"))))  # fmt: skip
    source_names = {"pooled_cox": "exact pooled Cox", "fixed_effect_meta": "pooled fixed effect"}
    sources = {}
    if "estimate_source" in dwas.columns:
        mine_all = dwas.filter((pl.col("atc_code") == code) & (pl.col("atc_level") == level))
        sources = {(float(r["lag_years"]), r["sex"]): r["estimate_source"] for r in mine_all.iter_rows(named=True)}
    for label, hr, lo, hi in forest_rows(dwas, candidate, lags):
        match = re.match(r"screen, lag ([0-9.]+) y(?:, (F|M))?$", label)
        if match:
            source = sources.get((float(match.group(1)), match.group(2) or "all"))
            label = label.replace("screen", source_names.get(source, "pooled"))
        rows.append((label, hr, lo, hi))
    return rows


def site_summary_tables(summaries: pl.DataFrame | None, policy: DisclosurePolicy | int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cohort flow and validation of a pooled run as (table, item, n): the sum over sites (unknown when a
    site suppressed the count), then each site's own rows under `<site>: <table>`."""
    empty = _long([])
    if summaries is None or not summaries.height:
        return empty, empty
    out = []
    for name in ("cohort_flow", "validation"):
        part = summaries.filter(pl.col("summary") == name)
        if not part.height:
            out.append(empty)
            continue
        n_sites = part["site"].n_unique()
        order = part.select("table", "item").unique(maintain_order=True).with_row_index("order")
        total = (
            part.group_by("table", "item")
            .agg(pl.when((pl.col("n").null_count() == 0) & (pl.len() == n_sites)).then(pl.col("n").sum()).alias("n"))
            .join(order, on=["table", "item"]).sort("order").select("table", "item", pl.col("n").cast(pl.Int64))
        )
        per_site = part.select((pl.col("site") + ": " + pl.col("table")).alias("table"), "item", pl.col("n").cast(pl.Int64))
        table = pl.concat([total, per_site])
        out.append(release_linked(table, _policy(policy), partitions=[SUMMARY_PARTITION], links=[]))
    return out[0], out[1]


def dose_labels(cutpoints: list[float]) -> list[str]:
    """Cumulative-DDD categories as the candidate ranking defines them (hr_dose_1 = below the first cut)."""
    cuts = sorted(float(c) for c in cutpoints)
    inner = [f"{a:g}-{b:g}" for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return [f"<{cuts[0]:g} DDD", *[f"{label} DDD" for label in inner], f">={cuts[-1]:g} DDD"]


def dose_figure(candidate: dict[str, Any], cutpoints: list[float]) -> str | None:
    """HR per cumulative-DDD category vs unexposed (hr_dose_k of the ranking); None when absent."""
    labels = dose_labels(cutpoints)
    hrs = [_num(candidate.get(f"hr_dose_{k + 1}")) for k in range(len(labels))]
    if all(h is None for h in hrs):
        return None
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    points = [(k, h) for k, h in enumerate(hrs) if h is not None]
    ax.plot([k for k, _ in points], [h for _, h in points], "o-", color="#345")
    ax.axhline(1, color="#555", lw=0.8, ls="--")
    ax.set_yscale("log")
    _hr_axis(ax.yaxis, ax.set_ylim, [h for _, h in points])
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel("HR vs unexposed")
    trend = _num(candidate.get("dose_trend_p"))
    ax.set_title("cumulative dose" + (f" (trend p = {trend:.2g})" if trend is not None else ""), fontsize=9)
    return figure_png(fig)


def _hr_axis(axis: Any, set_limits: Any, values: list[float]) -> None:
    """A log hazard-ratio axis that includes 1, with plain-number ticks (0.5, 1, 2, ...)."""
    values = values or [1.0]
    low, high = min(min(values), 1.0) / 1.15, max(max(values), 1.0) * 1.15
    set_limits(low, high)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50) if low <= t <= high]
    axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


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


# ---------------------------------------------------------------- tables for the page


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def read_candidates(path: str | Path | None, columns: list[str], min_cell: int) -> pl.DataFrame | None:
    """A ranking CSV (colleague's contract), disclosure-controlled again on the way in; None when absent."""
    if path is None or not Path(path).is_file():
        return None
    frame = pl.read_csv(path, infer_schema_length=10_000, null_values=["", "NA", "nan"])
    counts = person_count_columns(frame.columns)
    frame = suppress_small_counts(parse_display(frame, counts), counts, min_cell, **SCREEN_RULES)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        log.warning("%s lacks columns %s; shown without them", path, missing)
    return frame


def html_table(
    frame: pl.DataFrame, table_id: str, link: Any, min_cell: int, columns: list[str] | None = None
) -> dict[str, Any]:
    """Header and rows (text, sort key) for the template; `link(row)` gives each row's evidence anchor.
    Only `columns` (those present, in that order) are shown: the CSV holds the rest."""
    if columns is not None:
        frame = frame.select([c for c in columns if c in frame.columns])
    counts = [c for c in person_count_columns(frame.columns) if frame[c].dtype.is_numeric()]
    shown = for_display(frame, counts, min_cell)
    rows = []
    for raw, text in zip(frame.iter_rows(named=True), shown.iter_rows(named=True), strict=True):
        cells = [{"text": _cell(text[c]), "key": "" if raw[c] is None else str(raw[c]),
                  "href": link(raw) if c in ("atc_code", "target") else None} for c in frame.columns]  # fmt: skip
        rows.append({"cells": cells, "href": link(raw)})
    return {"id": table_id, "columns": frame.columns, "rows": rows}


def drug_anchor(row: dict[str, Any]) -> str:
    return f"drug-{row['atc_code']}-{row['atc_level']}"


# ---------------------------------------------------------------- the page


@stage(reads=(ALL_DESIGN,))
def build_report(
    config: dict[str, Any],
    *,
    validation: str | Path | None,
    flow: str | Path | None,
    dwas: str | Path,
    exposure: str | Path | None,
    drugs: str | Path | None,
    mechanisms: str | Path | None,
    html: str | Path,
    tables: Mapping[str, str | Path],
    provenance_json: str | Path | None = None,
    site_fits: str | Path | None = None,
    meta: str | Path | None = None,
    site_summaries: str | Path | None = None,
    sites_table: str | Path | None = None,
) -> Path:
    """Write the report page, its disclosure-controlled summary tables (CSV: `tables`, name -> path, for
    REPORT_TABLES) and `provenance_json` (the run's times and input checksums; default beside the page), the one
    file of a run that differs between two runs on the same inputs. The report echoes the whole config, so
    it declares that it reads all of it.

    With `site_fits` and `meta` (a pooled, federated run) there are no person-level inputs: `validation`,
    `flow` and `exposure` are None, the summary shows the sites' flow and validation counts (summed and
    per site; `site_summaries`, `sites_table`), exposure prevalence is not available, and each top candidate
    gets a per-site forest plot.
    """
    validation_json, flow_json, dwas_parquet, exposure_parquet = validation, flow, dwas, exposure
    drug_ranking_csv, mechanism_ranking_csv, html_path = drugs, mechanisms, html
    sites = read_site_evidence(site_fits, meta, site_summaries, sites_table) if site_fits is not None else None
    started = time.time()
    settings = config.get("report", {})
    policy = DisclosurePolicy.from_config(config)
    min_cell = policy.min_cell
    alpha = float(config["screen"]["fdr_alpha"])
    n_top, n_labels = int(settings.get("top_candidates", 10)), int(settings.get("plot_labels", 12))
    names = load_atc_names(config["inputs"].get("atc_index"))

    if sites is None:
        validation = json.loads(Path(validation_json).read_text())
        flow_raw = json.loads(Path(flow_json).read_text())
        flow, checks = released_summaries(flow_raw, validation, policy)  # type: ignore[assignment]
        prevalence = prevalence_table(exposure_parquet, flow_raw["persons_in_cohort"], names, policy)
    else:
        flow, checks = site_summary_tables(sites.summaries, policy)
        prevalence = pl.DataFrame(schema={"atc_group": pl.String, "atc_name": pl.String, "n_exposed": pl.Int64,
                                          "n_persons": pl.Int64, "percent_exposed": pl.Float64})  # fmt: skip
        flow_raw = _pooled_flow_facts(flow)
    dwas = suppress_small_counts(pl.read_parquet(dwas_parquet), SCREEN_COUNTS, min_cell, **SCREEN_RULES)
    if set(tables) != set(REPORT_TABLES):
        raise ValueError(f"build_report writes the tables {REPORT_TABLES}; got paths for {sorted(tables)}")
    for name, frame, counts in (("cohort_flow", flow, ["n"]), ("validation", checks, ["n"]),
                                ("exposure_prevalence", prevalence, ["n_exposed", "n_persons"])):  # fmt: skip
        Path(tables[name]).parent.mkdir(parents=True, exist_ok=True)
        for_display(frame, counts, min_cell).write_csv(tables[name])

    released_facts = _pooled_flow_facts(flow)  # the header shows the flow table's released cells, nothing else
    summary = {k: for_display(_long([("s", "total", released_facts[k])]), ["n"], min_cell)["n"][0]
               for k in ("persons_in_cohort", "events")}  # fmt: skip
    events_suppressed = summary["events"].startswith("<")
    summary["person_years"] = "suppressed" if events_suppressed else f"{flow_raw['person_years']:,.0f}"
    if sites is not None:
        summary["person_years"] = "not pooled"
    summary["median_followup_years"] = flow_raw.get("median_followup_years")
    summary["outcome_label"] = flow_raw.get("outcome", {}).get("label", "outcome")

    levels = sorted(int(v) for v in dwas["atc_level"].unique())
    lags = sorted(float(v) for v in dwas["lag_years"].unique())
    screen_plots = []
    for level in levels:
        for lag in lags:
            rows = _fitted(dwas, level, lag)
            n_classes = dwas.filter((pl.col("atc_level") == level) & (pl.col("lag_years") == lag)
                                    & (pl.col("sex") == "all")).height  # fmt: skip
            title = f"ATC level {level}, lag {lag:g} years: {rows.height} of {n_classes} classes fitted"
            screen_plots.append({
                "level": level, "lag": f"{lag:g}", "title": title,
                "n_hits": int((rows["q_value"] < alpha).sum()) if rows.height else 0,
                "manhattan": manhattan_figure(rows, alpha, n_labels, title),
                "volcano": volcano_figure(rows, alpha, n_labels, f"Volcano: level {level}, lag {lag:g} y"),
            })  # fmt: skip

    main_lag = float(config.get("candidates", {}).get("main_lag_years", lags[0]))
    shown_drug_columns = drug_columns(lags, main_lag)
    drugs = read_candidates(drug_ranking_csv, shown_drug_columns, min_cell)
    mechanisms = read_candidates(mechanism_ranking_csv, MECHANISM_COLUMNS, min_cell)
    if drugs is not None:
        top = drugs.sort("rank").head(n_top).to_dicts()
    else:
        main = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == lags[0]) & pl.col("p_value").is_not_null())
        top = main.sort("p_value").head(n_top).to_dicts()
    evidence = []
    for candidate in top:
        if sites is None:
            rows = forest_rows(dwas, candidate, lags)
        else:
            rows = site_forest_rows(sites, dwas, candidate, main_lag if main_lag in lags else lags[0], lags)
        if rows:
            title = f"{candidate['atc_code']} {candidate.get('atc_name') or ''} (level {candidate['atc_level']})"
            evidence.append({"anchor": drug_anchor(candidate), "title": title, "figure": forest_figure(rows, title),
                             "dose": dose_figure(candidate, config["screen"]["dose_cutpoints_ddd"]),
                             "facts": {k: _cell(_num(candidate.get(k)) if k in NUMERIC_FACTS else candidate.get(k)) or "none"
                                       for k in ("dose_trend_p", "calibrated_p", "e_value", "flags", "targets")
                                       if k in candidate}})  # fmt: skip
    with_figure = {e["anchor"] for e in evidence}
    other_drugs = []
    if drugs is not None:
        for row in drugs.to_dicts():
            if drug_anchor(row) not in with_figure:
                screen_rows = dwas.filter((pl.col("atc_code") == row["atc_code"]) & (pl.col("sex") == "all")
                                          & (pl.col("atc_level") == row["atc_level"])).sort("lag_years")  # fmt: skip
                other_drugs.append({"anchor": drug_anchor(row), "title": f"{row['atc_code']} {row.get('atc_name') or ''}",
                                    "lags": [(f"{r['lag_years']:g}", _cell(r["hr"]), _cell(r["ci_lower"]), _cell(r["ci_upper"]),
                                              _cell(r["p_value"])) for r in screen_rows.to_dicts()]})  # fmt: skip
    mechanism_evidence = []
    if mechanisms is not None:
        for row in mechanisms.to_dicts():
            linked = []
            if drugs is not None and "targets" in drugs.columns:
                hits = drugs.filter(pl.col("targets").cast(pl.String).str.contains(str(row["target"]), literal=True))
                linked = [(drug_anchor(r), r["atc_code"], r.get("atc_name") or "") for r in hits.to_dicts()]
            mechanism_evidence.append({"anchor": f"mech-{row['target']}", "title": f"{row['target']} {row.get('target_name') or ''}",
                                       "substances": row.get("substances") or "", "drugs": linked,
                                       "pooled": f"{_cell(row.get('pooled_hr'))} ({_cell(row.get('ci_lower'))}-{_cell(row.get('ci_upper'))})"})  # fmt: skip

    inputs = [p for p in (validation_json, flow_json, dwas_parquet, exposure_parquet) if p is not None] + [
        p for p in (drug_ranking_csv, mechanism_ranking_csv) if p is not None and Path(p).is_file()
    ]
    prov = provenance(config, inputs)
    hidden = dwas.filter(pl.col("status") == "suppressed").group_by("reason").len().sort("reason") if "status" in dwas.columns else None
    prov["disclosure"] = {**policy.as_dict(), "screen_rows_hidden": dict(hidden.iter_rows()) if hidden is not None else {}}
    row_counts = {str(dwas_parquet): dwas.height}
    for label, frame in (("drug ranking", drugs), ("mechanism ranking", mechanisms)):
        if frame is not None:
            row_counts[label] = frame.height
    page = Environment(loader=FileSystemLoader(template_dir()), autoescape=select_autoescape(["html", "j2"]))
    captions = yaml.safe_load((template_dir() / "captions.yaml").read_text(encoding="utf-8"))
    text = page.get_template("report.html.j2").render(
        config=config, run_label=config.get("run_label"), min_cell=min_cell, alpha=alpha,
        summary=summary, flow_figure=flow_figure(flow, min_cell) if (flow["table"] == "flow").any() else "",
        flow=for_display(flow, ["n"], min_cell).to_dicts(),
        validation=for_display(checks, ["n"], min_cell).to_dicts(),
        prevalence=for_display(prevalence, ["n_exposed", "n_persons"], min_cell).to_dicts(),
        screen_plots=screen_plots, levels=levels, lags=[f"{v:g}" for v in lags],
        evidence=evidence, other_drugs=other_drugs, mechanism_evidence=mechanism_evidence,
        top_from_candidates=drugs is not None,
        drugs=None if drugs is None else html_table(drugs, "drug-table", drug_anchor, min_cell, drug_table_columns(shown_drug_columns)),
        mechanisms=None if mechanisms is None else html_table(
            mechanisms, "mechanism-table", lambda r: f"mech-{r['target']}", min_cell, MECHANISM_COLUMNS),
        drug_path=str(drug_ranking_csv), mechanism_path=str(mechanism_ranking_csv),
        provenance=without_times(prov), row_counts=row_counts, config_yaml=yaml.safe_dump(config, sort_keys=False),
        captions=captions,
    )  # fmt: skip
    if sites is not None:
        text = text.replace('<h2 id="summary">Study summary</h2>', '<h2 id="summary">Study summary</h2>\n' + _federation_notice(sites), 1)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(text, encoding="utf-8")
    # The page is the same bytes for the same inputs; the run's times go to the one provenance file beside it.
    Path(provenance_json or html_path.parent / "provenance.json").write_text(
        json.dumps({**prov, "report_build_seconds": round(time.time() - started, 1)}, indent=2), encoding="utf-8"
    )
    log.info("report: %s (%d kB), %d screen plots, %d candidates with evidence",
             html_path, len(text) // 1024, len(screen_plots), len(evidence))  # fmt: skip
    return html_path


def _pooled_flow_facts(flow: pl.DataFrame) -> dict[str, Any]:
    """The summary cards from a released flow table (a pooled run: the summed site flows; None where hidden)."""

    def total(table: str, item: str) -> int | None:
        hit = flow.filter((pl.col("table") == table) & (pl.col("item") == item))
        return hit["n"][0] if hit.height else None

    return {"persons_in_cohort": total("flow", "in cohort"), "events": total("events by sex", "total"),
            "person_years": float("nan"), "median_followup_years": "not pooled"}  # fmt: skip


def _federation_notice(sites: SiteEvidence) -> str:
    """An HTML paragraph naming the pooled sites and saying what a pooled report does not contain."""
    from html import escape

    listed = ", ".join(escape(str(s)) for s in sorted(sites.site_fits["site"].unique().to_list()))
    return (
        f'<p class="notice" id="federation">Pooled analysis of the site packages of {listed}: no person-level data '
        "were used. Counts are sums over the sites (unknown where a site suppressed one), each site\'s own flow and "
        "validation rows follow the totals; exposure prevalence and person-years are not pooled. Screen estimates are "
        "the exact pooled Cox model stratified by site where it converged, else the fixed-effect meta-analysis; each "
        "top candidate has a per-site forest plot. Person-level evidence (dose-response, confirmation, active "
        "comparator) is not available in a pooled run.</p>"
    )
