"""The reviewer's report: one self-contained HTML page (`results/report/index.html`) that opens offline.

It leads with the answer: a key-findings table (one row per independent signal that is a candidate, and
per significant mechanism, with the HR at its stated lag, exposed cases, every evidence line in plain
words and the flags), calibration warnings, and for a simulated run the planted truth (found, missed,
false positives); a glossary follows, since the page is mailed alone. Then the study summary (cohort
flow, validation, exposure prevalence), the drug-wide screen (plots per ATC level and lag, and the
whole screen as a searchable table), forest plots with counts for the top signals of both directions,
dose-response, the calibration plot per level, the rankings, and methods and provenance. Every count
passes `repurpose.release.disclosure.suppress_small_counts` before it is drawn or written; person-level
inputs (the exposure table) are only ever aggregated. The candidate files are optional: when absent, the
report says so and shows the top screen hits. Figures are in `report_figures`, page tables in
`report_tables`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape

from repurpose.atc import load_atc_names
from repurpose.layout import REPORT_TABLES
from repurpose.logs import stage_warnings
from repurpose.release.disclosure import (
    SCREEN_RULES,
    DisclosurePolicy,
    Partition,
    for_display,
    mask_counts_in_text,
    parse_display,
    person_count_columns,
    release_counts,
    release_linked,
    suppress_small_counts,
)
from repurpose.release.provenance import provenance, without_times
from repurpose.release.report_figures import (
    calibration_panel,
    dose_figure,
    fitted_rows,
    flow_diagram,
    forest_figure,
    forest_rows,
    manhattan_figure,
    site_forest_rows,
    volcano_figure,
)
from repurpose.release.report_tables import (
    SiteEvidence,
    cell_text,
    drug_anchor,
    mechanism_anchor,
    mechanism_findings,
    number,
    planted_truth,
    screen_table,
    signal_findings,
)
from repurpose.schemas import is_candidate, lag_label
from repurpose.stages import ALL_DESIGN, stage

log = logging.getLogger(__name__)

NUMERIC_FACTS = ("dose_trend_p", "calibrated_p", "e_value", "hr_shrunken")
SUMMARY_PARTITION = Partition(by=("table",), part_column="item", total_value="total")
SCREEN_COUNTS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")


def drug_columns(lags: list[float], main_lag: float) -> list[str]:
    """The drug ranking's columns the report reads (the contract with the ranking): one row per signal, its
    rank within direction, whether it is a candidate, the codes it covers, the lag of its estimate, the
    raw and shrunken HR, counts, the evidence tally, flags and targets, and the HR at every configured lag
    and by sex."""
    lag_columns = [f"hr_lag{lag_label(lag)}" for lag in lags]
    return ["rank", "direction", "candidate", "atc_code", "atc_name", "atc_level", "also_seen_at", "lag_years",
            "hr", "ci_lower", "ci_upper", "p_value", "q_value", "hr_shrunken", "n_exposed", "n_exposed_cases",
            "evidence_supported", "evidence_assessed", "flags", "targets", *lag_columns, "hr_F", "hr_M"]  # fmt: skip


def drug_table_columns(columns: list[str]) -> list[str]:
    """The drug table of the page: the contract columns (the CSV has every column, evidence lines included)."""
    return list(columns)


DRUG_COLUMNS = drug_columns([0.0, 2.0, 5.0, 10.0], 2.0)  # with the default lags and main lag
MECHANISM_COLUMNS = ["rank", "direction", "target", "target_name", "action_type", "n_substances", "n_supporting",
                     "n_atc3_classes", "substances", "not_counted", "pooled_hr", "ci_lower", "ci_upper", "p_value", "p_leave_one_out",
                     "q_value", "re_hr", "re_ci_lower", "re_ci_upper", "tau", "i2", "q_heterogeneity_p",
                     "evidence_score", "score_points"]  # fmt: skip


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
    return flow_diagram(steps["item"].to_list(), shown)


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


# ---------------------------------------------------------------- tables for the page


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
        cells = [{"text": cell_text(text[c]), "key": "" if raw[c] is None else str(raw[c]),
                  "href": link(raw) if c in ("atc_code", "target") else None} for c in frame.columns]  # fmt: skip
        rows.append({"cells": cells, "href": link(raw)})
    return {"id": table_id, "columns": frame.columns, "rows": rows}


def top_signals(drugs: pl.DataFrame | None, dwas: pl.DataFrame, lags: list[float], n_top: int, alpha: float) -> list[dict[str, Any]]:
    """Rows that get a forest plot: the best-ranked candidates of each direction (half of `n_top` each, the
    rest filled from the other direction), else the most significant screen classes at the first lag."""
    if drugs is None:
        main = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == lags[0]) & pl.col("p_value").is_not_null())
        return main.sort("p_value").head(n_top).to_dicts()
    pool = drugs.filter(is_candidate(drugs, alpha))
    pool = pool if pool.height else drugs
    if "direction" not in pool.columns:
        return pool.sort("rank").head(n_top).to_dicts()
    sides = [pool.filter(pl.col("direction") == d).sort("rank").to_dicts() for d in ("protective", "harmful")]
    chosen = sides[0][: (n_top + 1) // 2] + sides[1][: n_top // 2]
    rest = [r for r in sides[0] + sides[1] if r not in chosen]
    return chosen + rest[: n_top - len(chosen)]


# ---------------------------------------------------------------- the page


LATER_STAGES = ("report", "export")
"""Stage logs the report does not read warnings from: its own and the export's (written after it)."""


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
    ground_truth: str | Path | None = None,
    persistence: str | Path | None = None,
    trial_emulation: str | Path | None = None,
    run_logs: str | Path | None = None,
) -> Path:
    """Write the report page, its disclosure-controlled summary tables (CSV: `tables`, name -> path, for
    REPORT_TABLES) and `provenance_json` (the run's times and input checksums; default beside the page), the one
    file of a run that differs between two runs on the same inputs. The report echoes the whole config, so
    it declares that it reads all of it.

    With `site_fits` and `meta` (a pooled, federated run) there are no person-level inputs: `validation`,
    `flow` and `exposure` are None, the summary shows the sites' flow and validation counts (summed and
    per site; `site_summaries`, `sites_table`), exposure prevalence is not available, and each top candidate
    gets a per-site forest plot. `ground_truth` (the simulator's ground_truth.json, given when the study
    reads simulated registries) adds the simulated-data banner and the planted-truth table. `persistence` (the
    persistence study's page, when the study runs) and `trial_emulation` (the trial emulation's page) are linked
    from the navigation by their paths beside this page. `run_logs` (the stage logs' folder) adds every
    WARNING of the stages before the report, with counts of persons below the minimum cell masked.
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
            rows = fitted_rows(dwas, level, lag)
            n_classes = dwas.filter((pl.col("atc_level") == level) & (pl.col("lag_years") == lag)
                                    & (pl.col("sex") == "all")).height  # fmt: skip
            title = f"ATC level {level}, lag {lag:g} years: {rows.height} of {n_classes} classes fitted"
            screen_plots.append({
                "level": level, "lag": f"{lag:g}", "title": title,
                "n_hits": int((rows["q_value"] < alpha).sum()) if rows.height else 0,
                "manhattan": manhattan_figure(rows, alpha, n_labels, title),
                "volcano": volcano_figure(rows, alpha, n_labels, f"Volcano: level {level}, lag {lag:g} y"),
            })  # fmt: skip

    candidate_settings = config.get("candidates", {})
    main_lag = float(candidate_settings.get("main_lag_years", lags[0]))
    main_lag = main_lag if main_lag in lags else lags[0]
    shown_drug_columns = drug_columns(lags, main_lag)
    drugs = read_candidates(drug_ranking_csv, shown_drug_columns, min_cell)
    mechanisms = read_candidates(mechanism_ranking_csv, MECHANISM_COLUMNS, min_cell)
    dwas_shown = for_display(dwas, SCREEN_COUNTS, min_cell)
    signals, mechanism_rows = [], []
    if drugs is not None:
        counts = [c for c in person_count_columns(drugs.columns) if drugs[c].dtype.is_numeric()]
        signals = signal_findings(drugs, for_display(drugs, counts, min_cell), main_lag, alpha)
    if mechanisms is not None and mechanisms.height:
        mechanism_rows = mechanism_findings(mechanisms, main_lag, alpha)
    truth = json.loads(Path(ground_truth).read_text()) if ground_truth is not None and Path(ground_truth).is_file() else None
    planted = planted_truth(truth, signals, mechanism_rows, drugs) if truth is not None else None
    calibration = [
        calibration_panel(dwas, level, main_lag, float(candidate_settings.get("fdr_alpha", alpha)),
                          list(candidate_settings.get("negative_controls", [])), int(settings.get("min_negative_controls", 20)))
        for level in levels
    ]  # fmt: skip
    top = top_signals(drugs, dwas, lags, n_top, alpha)
    evidence = []
    for candidate in top:
        if sites is None:
            rows = forest_rows(dwas_shown, candidate, lags, main_lag)
        else:
            rows = site_forest_rows(sites, dwas_shown, candidate, main_lag, lags)
        if rows:
            title = f"{candidate['atc_code']} {candidate.get('atc_name') or ''} (level {candidate['atc_level']})"
            evidence.append({"anchor": drug_anchor(candidate), "title": title, "figure": forest_figure(rows, title),
                             "direction": candidate.get("direction") or ("protective" if (number(candidate.get("hr")) or 1) < 1 else "harmful"),
                             "dose": dose_figure(candidate, config["screen"]["dose_cutpoints_ddd"], min_cell),
                             "facts": {k: cell_text(number(candidate.get(k)) if k in NUMERIC_FACTS else candidate.get(k)) or "none"
                                       for k in ("hr_shrunken", "also_seen_at", "dose_trend_p", "calibrated_p", "e_value", "flags", "targets")
                                       if k in candidate}})  # fmt: skip
    with_figure = {e["anchor"] for e in evidence}
    other_drugs = []
    if drugs is not None:
        for row in drugs.to_dicts():
            if drug_anchor(row) not in with_figure:
                screen_rows = dwas.filter((pl.col("atc_code") == row["atc_code"]) & (pl.col("sex") == "all")
                                          & (pl.col("atc_level") == row["atc_level"])).sort("lag_years")  # fmt: skip
                other_drugs.append({"anchor": drug_anchor(row), "title": f"{row['atc_code']} {row.get('atc_name') or ''}",
                                    "lags": [(f"{r['lag_years']:g}", cell_text(r["hr"]), cell_text(r["ci_lower"]), cell_text(r["ci_upper"]),
                                              cell_text(r["p_value"])) for r in screen_rows.to_dicts()]})  # fmt: skip
    mechanism_evidence = []
    if mechanisms is not None:
        for row in mechanisms.to_dicts():
            linked = []
            if drugs is not None and "targets" in drugs.columns:
                genes = str(row["target"]).split(";")
                hits = drugs.filter(pl.any_horizontal([pl.col("targets").cast(pl.String).str.contains(g, literal=True) for g in genes]))
                linked = [(drug_anchor(r), r["atc_code"], r.get("atc_name") or "") for r in hits.to_dicts()]
            mechanism_evidence.append({"anchor": mechanism_anchor(row), "title": f"{row['target']} {row.get('target_name') or ''}",
                                       "substances": row.get("substances") or "", "drugs": linked,
                                       "not_counted": row.get("not_counted") or "",
                                       "pooled": f"{cell_text(row.get('pooled_hr'))} ({cell_text(row.get('ci_lower'))}-{cell_text(row.get('ci_upper'))})"})  # fmt: skip

    inputs = [p for p in (validation_json, flow_json, dwas_parquet, exposure_parquet) if p is not None] + [
        p for p in (drug_ranking_csv, mechanism_ranking_csv, ground_truth, persistence, trial_emulation) if p is not None and Path(p).is_file()
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
        config=config, run_label=config.get("run_label"), min_cell=min_cell, alpha=alpha, main_lag=f"{main_lag:g}",
        summary=summary, flow_figure=flow_figure(flow, min_cell) if (flow["table"] == "flow").any() else "",
        flow=for_display(flow, ["n"], min_cell).to_dicts(),
        validation=for_display(checks, ["n"], min_cell).to_dicts(),
        prevalence=for_display(prevalence, ["n_exposed", "n_persons"], min_cell).to_dicts(),
        screen_plots=screen_plots, levels=levels, lags=[f"{v:g}" for v in lags],
        key_findings=signals + mechanism_rows, planted=planted, simulated=truth is not None,
        calibration=calibration, calibration_warnings=[w for c in calibration for w in c["warnings"]],
        run_warnings=[] if run_logs is None else [
            (stage, mask_counts_in_text(message, policy)) for stage, message in stage_warnings(run_logs, skip=LATER_STAGES)
        ],
        screen_table=screen_table(dwas_shown),
        evidence=evidence, other_drugs=other_drugs, mechanism_evidence=mechanism_evidence,
        top_from_candidates=drugs is not None,
        drugs=None if drugs is None else html_table(drugs, "drug-table", drug_anchor, min_cell, drug_table_columns(shown_drug_columns)),
        mechanisms=None if mechanisms is None else html_table(
            mechanisms, "mechanism-table", mechanism_anchor, min_cell, MECHANISM_COLUMNS),
        drug_path=str(drug_ranking_csv), mechanism_path=str(mechanism_ranking_csv),
        provenance=without_times(prov), row_counts=row_counts, config_yaml=yaml.safe_dump(config, sort_keys=False),
        captions=captions,
        persistence_page=None if persistence is None else os.path.relpath(persistence, Path(html_path).parent),
        trial_emulation_page=None if trial_emulation is None else os.path.relpath(trial_emulation, Path(html_path).parent),
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
    listed = ", ".join(escape(str(s)) for s in sorted(sites.site_fits["site"].unique().to_list()))
    return (
        f'<p class="notice" id="federation">Pooled analysis of the site packages of {listed}: no person-level data '
        "were used. Counts are sums over the sites (unknown where a site suppressed one), each site\'s own flow and "
        "validation rows follow the totals; exposure prevalence and person-years are not pooled. Screen estimates are "
        "the exact pooled Cox model stratified by site where it converged, else the fixed-effect meta-analysis; each "
        "top candidate has a per-site forest plot. Person-level evidence (dose-response, confirmation, active "
        "comparator) is not available in a pooled run.</p>"
    )
