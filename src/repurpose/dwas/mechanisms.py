"""From substances to molecular mechanisms: map level-5 ATC substances to gene targets and pool their evidence.

Why: a laboratory tests a mechanism, not a drug. If several chemically different substances that share
a target (and action) all lower MS risk, confounding by indication becomes an unlikely explanation,
because each drug has its own indication and prescribers. Substances are mapped to targets by INN name
(DrugCentral drug-target table joined to the ATC names); for each (target, action type) the lagged
level-5 log hazard ratios of its substances are pooled by random-effects meta-analysis
(`repurpose.meta`) and the targets are ranked by a transparent points score.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from repurpose.atc import atc_parent, load_atc_names
from repurpose.meta import pool
from repurpose.stages import stage

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("DRUG_NAME", "GENE", "ACTION_TYPE")
"""Columns a DrugCentral-layout drug-target TSV must have (TARGET_NAME is used when present)."""

MECHANISM_COLUMNS = [
    "rank",
    "target",
    "target_name",
    "action_type",
    "direction",
    "n_substances",
    "n_atc3_classes",
    "substances",
    "pooled_hr",
    "ci_lower",
    "ci_upper",
    "p_value",
    "q_value",
    "i2",
    "tau2",
    "n_substances_agreeing",
    "evidence_score",
    "score_points",
]


def normalise_name(name: pl.Expr) -> pl.Expr:
    """INN name key: lower case, single spaces, trimmed."""
    return name.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def read_drug_targets(path: str | Path | None) -> pl.DataFrame:
    """Drug-target rows (drug_name, target, target_name, action_type) from a DrugCentral TSV, else the demo mapping.

    A target is DrugCentral's GENE field (a `|`-joined complex such as a receptor's subunits stays one
    target); a missing action type becomes `UNSPECIFIED`.
    """
    if path is None:
        source = resources.files("repurpose").joinpath("data/demo_drug_targets.tsv")
        with source.open("rb") as handle:
            raw = pl.read_csv(handle.read(), separator="\t", infer_schema=False, quote_char=None)
    else:
        raw = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    missing = [c for c in TARGET_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{path or 'demo_drug_targets.tsv'} is not a DrugCentral drug-target TSV: missing column(s) "
            f"{missing}; found {', '.join(raw.columns)}"
        )
    target_name = pl.col("TARGET_NAME") if "TARGET_NAME" in raw.columns else pl.lit(None, pl.String)
    return (
        raw.select(
            drug_name=normalise_name(pl.col("DRUG_NAME")),
            target=pl.col("GENE").str.strip_chars(),
            target_name=target_name.str.strip_chars(),
            action_type=pl.col("ACTION_TYPE").str.strip_chars().str.to_uppercase().fill_null("UNSPECIFIED"),
        )
        .filter(pl.col("target").is_not_null() & (pl.col("target") != "") & pl.col("drug_name").is_not_null())
        .with_columns(pl.col("action_type").replace("", "UNSPECIFIED"))
        .unique(["drug_name", "target", "action_type"], keep="first", maintain_order=True)
    )


def map_substances(substances: pl.DataFrame, targets: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Join level-5 substances (`atc_code`, `atc_name`) to targets by INN; return (mapping, per-substance match table)."""
    keyed = substances.select("atc_code", "atc_name").unique().with_columns(drug_name=normalise_name(pl.col("atc_name")))
    mapping = keyed.join(targets, on="drug_name", how="inner")
    matches = keyed.join(
        mapping.group_by("atc_code").agg(
            n_targets=pl.len(),
            targets=pl.concat_str(pl.col("target"), pl.lit(" ("), pl.col("action_type"), pl.lit(")")).sort().str.join("; "),
        ),
        on="atc_code",
        how="left",
    ).select(
        "atc_code",
        "atc_name",
        matched=pl.col("n_targets").is_not_null(),
        n_targets=pl.col("n_targets").fill_null(0).cast(pl.Int64),
        targets=pl.col("targets"),
    )
    return mapping.drop("drug_name"), matches.sort("atc_code")


def mechanism_score(
    q_value: float, n_substances_agreeing: int, n_atc3_classes: int, i2: float, settings: dict[str, Any]
) -> tuple[int, list[str]]:
    """Points (one each, no weights). `significant`: pooled q below alpha. Only a significant pooled
    estimate can earn the others: `replicated_across_substances` (>= 2 substances on its side of 1),
    `replicated_across_atc3_classes` (those substances span >= 2 ATC level-3 classes) and `consistent`
    (>= 2 such substances and I^2 at most the configured maximum)."""
    if not (np.isfinite(q_value) and q_value < settings["fdr_alpha"]):
        return 0, []
    points = ["significant"]
    if n_substances_agreeing >= 2:
        points.append("replicated_across_substances")
    if n_atc3_classes >= 2:
        points.append("replicated_across_atc3_classes")
    if n_substances_agreeing >= 2 and np.isfinite(i2) and i2 <= settings["max_i2"]:
        points.append("consistent")
    return len(points), points


def rank_mechanisms(screen_rows: pl.DataFrame, mapping: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Pool the level-5 estimates of each (target, action type) and rank: protective first, then by score and p.

    `screen_rows`: one fitted row per level-5 substance (`atc_code, atc_name, log_hr, se`) at the main lag.
    """
    usable = screen_rows.filter(pl.col("se").is_finite() & (pl.col("se") > 0) & pl.col("log_hr").is_finite())
    joined = mapping.select("atc_code", "target", "target_name", "action_type").join(
        usable.select("atc_code", "atc_name", "log_hr", "se"), on="atc_code", how="inner"
    )
    rows = []
    for (target, action_type), group in joined.group_by(["target", "action_type"], maintain_order=True):
        group = group.unique("atc_code").sort("atc_code")
        result = pool(
            group["log_hr"].to_numpy(), group["se"].to_numpy(), method=settings["meta_method"],
            knapp_hartung=settings["knapp_hartung"],
        )
        sign = np.sign(result.estimate)
        rows.append(
            {
                "target": target,
                "target_name": group["target_name"].drop_nulls().first() if group["target_name"].null_count() < group.height else None,
                "action_type": action_type,
                "direction": "protective" if result.estimate < 0 else "harmful",
                "n_substances": group.height,
                "n_atc3_classes": len({atc_parent(code, 3) for code in group["atc_code"]}),
                "substances": "; ".join(f"{c} {n}" for c, n in zip(group["atc_code"], group["atc_name"], strict=True)),
                "pooled_hr": float(np.exp(result.estimate)),
                "ci_lower": float(np.exp(result.ci_lower)),
                "ci_upper": float(np.exp(result.ci_upper)),
                "p_value": result.p_value,
                "i2": result.i2,
                "tau2": result.tau2,
                "n_substances_agreeing": int(np.sum(np.sign(group["log_hr"].to_numpy()) == sign)),
                "n_atc3_agreeing": len(
                    {atc_parent(c, 3) for c, b in zip(group["atc_code"], group["log_hr"], strict=True) if np.sign(b) == sign}
                ),
            }
        )
    if not rows:
        return pl.DataFrame(schema={c: pl.Float64 for c in MECHANISM_COLUMNS})
    frame = pl.DataFrame(rows)
    frame = frame.with_columns(q_value=pl.Series(stats.false_discovery_control(frame["p_value"].to_numpy(), method="bh")))
    scores = [
        mechanism_score(q, n_agree, n_atc3, i2, settings)
        for q, n_agree, n_atc3, i2 in zip(
            frame["q_value"], frame["n_substances_agreeing"], frame["n_atc3_agreeing"], frame["i2"], strict=True
        )
    ]
    frame = frame.with_columns(
        evidence_score=pl.Series([s for s, _ in scores], dtype=pl.Int64),
        score_points=pl.Series([", ".join(p) for _, p in scores], dtype=pl.String),
    )
    frame = frame.sort(
        [pl.col("direction") == "harmful", "evidence_score", "p_value", "target"], descending=[False, True, False, False]
    ).with_row_index("rank", offset=1)
    return frame.select(MECHANISM_COLUMNS)


def main_lag_level5(dwas: pl.DataFrame, main_lag: float) -> pl.DataFrame:
    """Level-5, both-sexes, fitted screen rows at the main lag."""
    return dwas.filter(
        (pl.col("atc_level") == 5) & (pl.col("sex") == "all") & (pl.col("lag_years") == float(main_lag)) & (pl.col("status") == "ok")
    )


@stage(reads=("candidates", "inputs.atc_index", "inputs.drug_targets"))
def run_mechanisms(
    config: dict[str, Any], *, dwas: str | Path, ranking: str | Path, matches: str | Path
) -> pl.DataFrame:
    """Write the mechanism ranking and the substance-to-target match table (with the match rate in the log)."""
    settings = config["candidates"]
    ranking_path, matches_path = ranking, matches
    dwas = pl.read_parquet(dwas)
    substances = dwas.filter(pl.col("atc_level") == 5).select("atc_code", "atc_name").unique()
    names = load_atc_names(config["inputs"].get("atc_index")).select("atc_code", pl.col("atc_name").alias("catalog_name"))
    substances = (
        substances.join(names, on="atc_code", how="left")
        .select("atc_code", atc_name=pl.coalesce("atc_name", "catalog_name"))
        .filter(pl.col("atc_name").is_not_null())
    )
    mapping, matches = map_substances(substances, read_drug_targets(config["inputs"].get("drug_targets")))
    n_matched = int(matches["matched"].sum())
    log.info(
        "targets: %d of %d screened substances matched by INN (%.1f%%); unmatched: %s",
        n_matched,
        matches.height,
        100 * n_matched / max(matches.height, 1),
        ", ".join(matches.filter(~pl.col("matched"))["atc_code"].to_list()[:50]),
    )
    matches.write_csv(matches_path)
    ranking = rank_mechanisms(main_lag_level5(dwas, settings["main_lag_years"]), mapping, settings)
    ranking.write_csv(ranking_path)
    log.info("mechanisms: %d targets ranked", ranking.height)
    return ranking
