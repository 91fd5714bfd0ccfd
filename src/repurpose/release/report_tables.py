"""The report's tables: the key findings that lead the page, the planted truth of a simulated run, and the
whole screen as data for the searchable table. Tables take frames whose counts are already
disclosure-controlled (`repurpose.release.report` suppresses them on the way in and passes the display
text); nothing here decides what may be shown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from repurpose.schemas import is_candidate

EVIDENCE_TOTALS = ("evidence_supported", "evidence_assessed", "evidence_score")
SCREEN_TABLE_COLUMNS = (
    ("atc_code", "ATC code"), ("atc_name", "Name"), ("atc_level", "Level"), ("lag_years", "Lag (years)"),
    ("sex", "Sex"), ("direction", "Direction"), ("hr", "HR"), ("ci_lower", "95% CI lower"),
    ("ci_upper", "95% CI upper"), ("p_value", "p"), ("q_value", "q (BH within level)"),
    ("n_exposed", "Exposed persons"), ("n_exposed_cases", "Exposed cases"), ("status", "Status"), ("reason", "Reason"),
)  # fmt: skip
"""(column, header) of the searchable screen table, in order; the first column stays fixed when scrolling."""
MECHANISM_POINTS = (
    ("significant", "pooled q below alpha"),
    ("replicated_across_atc3_classes", "agreeing substances in two or more ATC level-3 classes"),
    ("consistent", "no heterogeneity between the substances"),
)


@dataclass(frozen=True)
class SiteEvidence:
    """Aggregates of a federated (pooled) run, used in place of the person-level inputs of a single site:
    per-site fits (site_fits.parquet), the meta-analyses (meta.parquet), per-site flow and validation
    counts (site_summaries.csv: site, summary, table, item, n) and the sites' manifest fields (sites.csv)."""

    site_fits: pl.DataFrame
    meta: pl.DataFrame
    summaries: pl.DataFrame | None = None
    sites: pl.DataFrame | None = None


def number(value: Any) -> float | None:
    """A finite float, else None (text, NaN and missing values alike)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def cell_text(value: Any) -> str:
    """A value as the page shows it: floats to three significant decimals, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def hr_ci_text(hr: Any, lower: Any, upper: Any) -> str:
    """"0.52 (0.31-0.87)"; "not estimable" without an HR."""
    hr, lower, upper = number(hr), number(lower), number(upper)
    if hr is None:
        return "not estimable"
    return f"{hr:.2f}" + (f" ({lower:.2f}-{upper:.2f})" if lower is not None and upper is not None else "")


def drug_anchor(row: dict[str, Any]) -> str:
    return f"drug-{row['atc_code']}-{row['atc_level']}"


def mechanism_anchor(row: dict[str, Any]) -> str:
    return f"mech-{row['target']}-{row.get('action_type') or ''}".replace(";", "_").replace("|", "_")


def plain_words(name: str) -> str:
    """`not_confirmed_after_adjustment` -> `not confirmed after adjustment`."""
    return name.replace("_", " ").strip()


def evidence_lines(columns: list[str]) -> list[str]:
    """The drug ranking's `evidence_<line>` text columns, in file order."""
    return [c for c in columns if c.startswith("evidence_") and c not in EVIDENCE_TOTALS]


def evidence_status(value: Any) -> tuple[str, str]:
    """(css class, plain words) of one evidence value: supported, against, or not assessed and why."""
    text = "" if value is None else str(value).strip()
    if text == "supported":
        return "supported", "supported"
    if text == "against":
        return "against", "against"
    if text.startswith("not assessed"):
        why = text.removeprefix("not assessed").lstrip(": ").strip()
        return "not-assessed", "not assessed" + (f" ({why})" if why else "")
    return "not-assessed", "not reported" if not text else text


def _score_text(row: dict[str, Any]) -> str:
    supported, assessed = number(row.get("evidence_supported")), number(row.get("evidence_assessed"))
    if supported is not None and assessed is not None:
        return f"{supported:.0f} of {assessed:.0f} assessed"
    score = number(row.get("evidence_score"))
    return "" if score is None else f"{score:.0f} points"


def signal_findings(drugs: pl.DataFrame, shown: pl.DataFrame, main_lag: float, alpha: float) -> list[dict[str, Any]]:
    """Key-findings rows of the drug ranking's candidates (protective, then harmful, each by rank). `shown`
    is `drugs` with its counts as display text."""
    lines = evidence_lines(drugs.columns)
    keep = is_candidate(drugs, alpha)
    rows = []
    for raw, text in zip(drugs.filter(keep).iter_rows(named=True), shown.filter(keep).iter_rows(named=True), strict=True):
        lag = number(raw.get("lag_years"))
        evidence = [(plain_words(line.removeprefix("evidence_")), *evidence_status(raw.get(line))) for line in lines]
        also = raw.get("also_seen_at")
        rows.append({
            "kind": "signal", "direction": raw.get("direction") or "", "rank": raw.get("rank"), "anchor": drug_anchor(raw),
            "code": raw["atc_code"], "label": f"{raw['atc_code']} {raw.get('atc_name') or ''}".strip(),
            "detail": f"ATC level {raw['atc_level']}" + (f"; also seen at {also}" if also else ""),
            "lag": f"{(lag if lag is not None else main_lag):g}", "hr": hr_ci_text(raw.get("hr"), raw.get("ci_lower"), raw.get("ci_upper")),
            "shrunken": cell_text(number(raw.get("hr_shrunken"))), "cases": text.get("n_exposed_cases") or "",
            "evidence": evidence, "score": _score_text(raw),
            "flags": [plain_words(f) for f in str(raw.get("flags") or "").replace(",", ";").split(";") if f.strip()],
        })  # fmt: skip
    return _by_direction(rows)


def mechanism_findings(mechanisms: pl.DataFrame, main_lag: float, alpha: float) -> list[dict[str, Any]]:
    """Key-findings rows of the mechanisms with at least two supporting substances and pooled q below alpha."""
    keep = (mechanisms["q_value"] < alpha).fill_null(False) if "q_value" in mechanisms.columns else pl.lit(False)
    if "n_supporting" in mechanisms.columns:
        keep = keep & (mechanisms["n_supporting"] >= 2)
    rows = []
    for raw in mechanisms.filter(keep).iter_rows(named=True):
        points = {p.strip() for p in str(raw.get("score_points") or "").split(",")}
        evidence = [(plain_words(name), *(("supported", "supported") if name in points else ("not-assessed", f"not earned: {what}")))
                    for name, what in MECHANISM_POINTS]  # fmt: skip
        n_support = raw.get("n_supporting", raw.get("n_substances"))
        flags = [f"not counted: {raw['not_counted']}"] if raw.get("not_counted") else []
        rows.append({
            "kind": "mechanism", "direction": raw.get("direction") or "", "rank": raw.get("rank"), "anchor": mechanism_anchor(raw),
            "code": raw["target"], "label": f"{raw['target']} {raw.get('action_type') or ''}".strip(),
            "detail": f"{n_support} of {raw.get('n_substances')} substances support: {raw.get('substances') or ''}",
            "lag": f"{main_lag:g}", "hr": hr_ci_text(raw.get("pooled_hr"), raw.get("ci_lower"), raw.get("ci_upper")),
            "shrunken": "", "cases": "see substances", "evidence": evidence,
            "score": f"{len(points & {n for n, _ in MECHANISM_POINTS})} of {len(MECHANISM_POINTS)}", "flags": flags,
        })  # fmt: skip
    return _by_direction(rows)


def _by_direction(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {"protective": 0, "harmful": 1}
    return sorted(rows, key=lambda r: (order.get(r["direction"], 2), number(r["rank"]) or math.inf))


def _mechanisms_of(truth: dict[str, Any]) -> list[dict[str, Any]]:
    planted = truth.get("mechanism") or truth.get("mechanisms") or []
    return [planted] if isinstance(planted, dict) else list(planted)


def _direction(hr: float) -> str:
    return "protective" if hr < 1 else "harmful"


def planted_truth(
    truth: dict[str, Any], signals: list[dict[str, Any]], mechanisms: list[dict[str, Any]], drugs: pl.DataFrame | None
) -> dict[str, Any]:
    """Found, missed and false-positive rows of a simulated run against the simulator's ground truth.

    A planted substance (planted HR not 1) is found when a key signal in its direction is the substance
    or an ATC class of level 3 or deeper that contains it; a planted mechanism when a key mechanism in its
    direction lists its gene (the substance's own signal is named, else the deepest such class). A key
    signal or mechanism that contains nothing planted in its direction is a false positive,
    with the role the simulator gave it (null, prodromal, confounded...)."""
    substances = truth.get("substances", {})
    planted = {code: s for code, s in substances.items() if number(s.get("planted_hr")) not in (None, 1.0)}

    def covers(signal: dict[str, Any], code: str) -> bool:
        return signal["code"] == code or (len(signal["code"]) >= 4 and code.startswith(signal["code"]))

    ranked = {r["atc_code"]: r for r in drugs.iter_rows(named=True)} if drugs is not None else {}
    rows, used = [], set()
    for code, s in sorted(planted.items()):
        direction = _direction(float(s["planted_hr"]))
        covering = [g for g in signals if g["direction"] == direction and covers(g, code)]
        used.update(g["anchor"] for g in covering)  # a class over a planted substance is no false positive
        hit = min(covering, key=lambda g: (g["code"] != code, -len(g["code"])), default=None)  # itself, else the deepest class
        if hit is not None:
            status = f"found: {hit['direction']} rank {hit['rank']}" + ("" if hit["code"] == code else f" (as class {hit['code']})")
        elif code in ranked:
            r = ranked[code]
            status = f"missed: ranked {r.get('direction')} {r.get('rank')}, not a candidate"
        else:
            status = "missed: not ranked"
        rows.append({"item": f"{code} {s.get('atc_name') or ''}".strip(), "role": plain_words(s.get("role", "")),
                     "planted_hr": f"{float(s['planted_hr']):g}", "status": status, "kind": "found" if hit else "missed"})  # fmt: skip
    for m in _mechanisms_of(truth):
        direction = _direction(float(m.get("planted_hr", 1.0)))
        hit = next((g for g in mechanisms if g["direction"] == direction and m.get("gene") in g["code"].split(";")), None)
        if hit is not None:
            used.add(hit["anchor"])
        rows.append({"item": f"mechanism {m.get('gene')} {m.get('action_type') or ''}".strip(), "role": "mechanism",
                     "planted_hr": f"{float(m.get('planted_hr', 1.0)):g}", "kind": "found" if hit else "missed",
                     "status": f"found: {hit['direction']} mechanism rank {hit['rank']}" if hit else "missed"})  # fmt: skip
    for finding in signals + mechanisms:
        if finding["anchor"] in used:
            continue
        role = substances.get(finding["code"], {}).get("role") if finding["kind"] == "signal" else "no planted mechanism"
        rows.append({"item": finding["label"], "role": plain_words(role or "class without a planted substance"),
                     "planted_hr": "", "kind": "false-positive",
                     "status": f"false positive: {finding['direction']} {finding['kind']} rank {finding['rank']}"})  # fmt: skip
    counts = {k: sum(r["kind"] == k for r in rows) for k in ("found", "missed", "false-positive")}
    summary = (f"{counts['found']} of {counts['found'] + counts['missed']} planted effects found, {counts['missed']} missed, "
               f"{counts['false-positive']} false positives among the key findings")  # fmt: skip
    return {"rows": rows, "summary": summary}


def screen_table(shown: pl.DataFrame) -> dict[str, Any]:
    """The whole screen (every class x lag x sex, smallest p first) for the searchable table: headers, which columns are
    numeric, and the rows as compact JSON (counts are display text: a suppressed `<5` sorts as missing).
    `shown` is the released screen with its counts as display text."""
    estimated = pl.col("hr").is_finite().fill_null(False)
    frame = shown.with_columns(
        direction=pl.when(estimated & (pl.col("hr") < 1)).then(pl.lit("protective"))
        .when(estimated & (pl.col("hr") > 1)).then(pl.lit("harmful")),
    )  # fmt: skip
    columns = [c for c, _ in SCREEN_TABLE_COLUMNS if c in frame.columns]
    order = pl.col("p_value").fill_nan(None) if "p_value" in frame.columns else pl.lit(None)
    frame = frame.sort(order, "atc_level", "atc_code", "lag_years", "sex", nulls_last=True).select(columns)
    numeric = [frame[c].dtype.is_numeric() or c.startswith("n_") for c in columns]
    rows = []
    for row in frame.iter_rows():
        rows.append([
            (float(f"{v:.4g}") if math.isfinite(v) else None) if isinstance(v, float) else v for v in row
        ])  # fmt: skip
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    headers = dict(SCREEN_TABLE_COLUMNS)
    return {"columns": [headers[c] for c in columns], "keys": columns, "numeric": numeric, "json": data,
            "n_rows": frame.height, "levels": sorted({int(v) for v in frame["atc_level"].unique()})}  # fmt: skip
