"""From substances to molecular mechanisms: map level-5 ATC substances to gene targets and pool their evidence.

Why: a laboratory tests a mechanism, not a drug. If several chemically different substances that share
a target (and action) all lower MS risk, confounding by indication becomes an unlikely explanation,
because each drug has its own indication and prescribers. Substances are mapped to targets by INN name
(DrugCentral drug-target table joined to the ATC names). A mechanism is a set of at least two screened
substances: targets hit by exactly the same substances are one row (TLR7;TLR9), a target with one
substance is that drug's property, not a mechanism. A substance counts as support only when its own
main-lag estimate rests on enough exposed cases and is not flagged for reverse causation. The
supporting substances are pooled by fixed-effect inverse variance (the test of "these drugs have no
effect") with Cochran's Q and I^2, and by a random-effects model with a weakly informative half-normal
prior on tau shown beside it (the mechanism's average effect); mechanisms are ranked within direction
by points: significant, agreement across ATC level-3 classes, consistency (docs/methods.md, Mechanisms).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.atc import atc_parent, load_atc_names
from repurpose.dwas.candidates import TARGET_SEPARATOR, reverse_causation_suspected
from repurpose.lazy import lazy_module
from repurpose.meta import cochran_q, pool
from repurpose.stages import stage

optimize = lazy_module("scipy.optimize")
stats = lazy_module("scipy.stats")

log = logging.getLogger(__name__)

TARGET_COLUMNS = ("DRUG_NAME", "GENE", "ACTION_TYPE")
"""Columns a DrugCentral-layout drug-target TSV must have (TARGET_NAME is used when present)."""

MECHANISM_COLUMNS = [
    "rank",
    "direction",
    "target",
    "target_name",
    "action_type",
    "n_substances",
    "n_supporting",
    "n_agreeing",
    "n_atc3_classes",
    "substances",
    "not_counted",
    "pooled_hr",
    "ci_lower",
    "ci_upper",
    "p_value",
    "q_value",
    "p_leave_one_out",
    "re_hr",
    "re_ci_lower",
    "re_ci_upper",
    "re_p_value",
    "tau",
    "q_heterogeneity",
    "q_heterogeneity_p",
    "i2",
    "evidence_score",
    "score_points",
]
"""Columns of mechanism_ranking.csv (docs/methods.md, Mechanisms). `n_atc3_classes` counts the ATC level-3
classes of the agreeing supporting substances; `pooled_hr`, its CI, p and BH q are the fixed-effect estimate
over the supporting substances, `re_*` and `tau` the random-effects one (half-normal prior on tau), and
`q_heterogeneity`, `i2` Cochran's Q and Higgins' I^2."""


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
            targets=pl.concat_str(pl.col("target"), pl.lit(" ("), pl.col("action_type"), pl.lit(")")).sort().str.join(TARGET_SEPARATOR),
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


@dataclass(frozen=True)
class BayesPooled:
    """Random-effects pooled log effect with a half-normal prior on tau: posterior mean, 95% credible
    interval, two-sided posterior tail probability (2 min(P(mu < 0), P(mu > 0))) and posterior median tau."""

    estimate: float
    ci_lower: float
    ci_upper: float
    p_value: float
    tau: float


def pool_half_normal(estimates: np.ndarray, se: np.ndarray, tau_scale: float, *, n_grid: int = 2001) -> BayesPooled:
    """Normal-normal random-effects model, flat prior on mu, half-normal(`tau_scale`) prior on tau.

    mu given tau is normal (the inverse-variance mean with weights 1 / (se^2 + tau^2)); tau's marginal
    posterior is evaluated on a grid, and mu's posterior is the resulting mixture of normals (Friede et
    al. 2017; Roever 2020, bayesmeta). With one estimate it returns that estimate and its Wald interval.
    """
    y = np.asarray(estimates, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    if y.size == 1 or tau_scale <= 0:
        fixed = pool(y, s, method="FE")
        return BayesPooled(fixed.estimate, fixed.ci_lower, fixed.ci_upper, fixed.p_value, 0.0)
    tau = np.linspace(0.0, 6.0 * tau_scale, n_grid)
    v = s[None, :] ** 2 + tau[:, None] ** 2
    w = 1.0 / v
    means = np.sum(w * y, axis=1) / np.sum(w, axis=1)
    variances = 1.0 / np.sum(w, axis=1)
    log_marginal = (
        -0.5 * np.sum(np.log(v), axis=1) + 0.5 * np.log(variances) - 0.5 * np.sum(w * (y - means[:, None]) ** 2, axis=1)
    )
    log_post = log_marginal - 0.5 * (tau / tau_scale) ** 2
    weights = np.exp(log_post - log_post.max())
    weights[[0, -1]] *= 0.5  # trapezoid rule on the uniform grid
    weights /= weights.sum()
    sd = np.sqrt(variances)

    def cdf(x: float) -> float:
        return float(np.sum(weights * stats.norm.cdf((x - means) / sd)))

    span = float(np.max(np.abs(means)) + 10 * np.max(sd))
    lower = optimize.brentq(lambda x: cdf(x) - 0.025, -span, span, xtol=1e-10)
    upper = optimize.brentq(lambda x: cdf(x) - 0.975, -span, span, xtol=1e-10)
    below_zero = cdf(0.0)
    tau_median = float(tau[np.searchsorted(np.cumsum(weights), 0.5)])
    return BayesPooled(float(np.sum(weights * means)), float(lower), float(upper),
                       float(min(1.0, 2 * min(below_zero, 1 - below_zero))), tau_median)  # fmt: skip


def substance_support(dwas: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """One row per fitted level-5 substance at the main lag (both sexes): `atc_code, atc_name, log_hr, se,
    hr, ci_lower, ci_upper` and `not_counted` (None, or why it is no support: too few exposed cases,
    reverse causation suspected). Counts suppressed in a released screen count as too few."""
    main_lag = float(settings["main_lag_years"])
    minimum = int(settings["mechanisms"]["min_exposed_cases"])
    level5 = dwas.filter((pl.col("atc_level") == 5) & (pl.col("sex") == "all") & (pl.col("status") == "ok")
                         & pl.col("se").is_finite() & (pl.col("se") > 0) & pl.col("log_hr").is_finite())  # fmt: skip
    lags = {
        code: {float(r["lag_years"]): (float(r["log_hr"]), float(r["se"])) for r in group.iter_rows(named=True)}
        for (code,), group in level5.group_by(["atc_code"])
    }
    main = level5.filter(pl.col("lag_years") == main_lag).unique("atc_code").sort("atc_code")
    reasons = []
    for row in main.iter_rows(named=True):
        cases = row["n_exposed_cases"]
        if cases is None or cases < minimum:
            reasons.append(f"fewer than {minimum} exposed cases")
        elif reverse_causation_suspected(lags[row["atc_code"]], settings)[0]:
            reasons.append("reverse causation suspected")
        else:
            reasons.append(None)
    return main.select("atc_code", "atc_name", "log_hr", "se", "hr", "ci_lower", "ci_upper").with_columns(
        not_counted=pl.Series(reasons, dtype=pl.String)
    )


def mechanism_score(
    q_value: float, n_agreeing: int, n_atc3_classes: int, q_heterogeneity_p: float, i2: float, settings: dict[str, Any]
) -> list[str]:
    """Points (one each, no weights), earned only by mechanisms with at least two agreeing supporting
    substances and a pooled q below alpha (`significant`); only those can add `replicated_across_atc3_classes`
    (the agreeing substances span >= 2 ATC level-3 classes) and `consistent` (Cochran's Q test does not
    reject at alpha and I^2 is at most `max_i2`), since agreement and homogeneity of null estimates prove
    nothing."""
    if n_agreeing < 2 or not (np.isfinite(q_value) and q_value < settings["fdr_alpha"]):
        return []
    points = ["significant"]
    if n_atc3_classes >= 2:
        points.append("replicated_across_atc3_classes")
    if not (q_heterogeneity_p < settings["fdr_alpha"]) and np.isfinite(i2) and i2 <= settings["max_i2"]:
        points.append("consistent")
    return points


def leave_one_out_p(log_hr: np.ndarray, se: np.ndarray) -> float:
    """The largest fixed-effect pooled p over leaving out one substance at a time: how much evidence is left
    when the mechanism loses its most convincing drug (a mechanism carried by one drug is that drug's
    effect). NaN with fewer than two substances. The pooled direction must stay: a leave-one-out estimate
    on the other side counts as p = 1."""
    if log_hr.size < 2:
        return float("nan")
    side = np.sign(pool(log_hr, se, method="FE").estimate)
    worst = 0.0
    for left_out in range(log_hr.size):
        keep = np.arange(log_hr.size) != left_out
        rest = pool(log_hr[keep], se[keep], method="FE")
        worst = max(worst, rest.p_value if np.sign(rest.estimate) == side else 1.0)
    return float(worst)


def _hr_text(row: dict[str, Any]) -> str:
    return f"{row['atc_code']} {row['atc_name']} {row['hr']:.2f} ({row['ci_lower']:.2f}-{row['ci_upper']:.2f})"


def group_targets(mapping: pl.DataFrame, codes: list[str]) -> pl.DataFrame:
    """Targets hit by the same set of screened substances as one row (`target` ";"-joined, sorted), kept
    only when the set has at least two substances; with `substance_codes` the sorted list."""
    hits = mapping.filter(pl.col("atc_code").is_in(codes)).unique(["atc_code", "target", "action_type"])
    per_target = hits.group_by("target", "action_type").agg(
        pl.col("atc_code").unique().sort().alias("substance_codes"), pl.col("target_name").drop_nulls().first()
    )
    return (
        per_target.filter(pl.col("substance_codes").list.len() >= 2)
        .with_columns(key=pl.col("substance_codes").list.join(","))
        .sort("target", "action_type")
        .group_by("key", maintain_order=True)
        .agg(
            pl.col("substance_codes").first(),
            target=pl.col("target").str.join(";"),
            target_name=pl.col("target_name").drop_nulls().str.join("; "),
            action_type=pl.col("action_type").unique(maintain_order=True).str.join(";"),
        )
        .drop("key")
    )


def rank_mechanisms(substances: pl.DataFrame, mapping: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Pool each mechanism's supporting substances and rank within direction (file order: protective, then harmful).

    `substances`: `substance_support` rows. A mechanism's direction is that of its pooled estimate; its
    rank orders by points (more first), then the leave-one-out p (`leave_one_out_p`), then the pooled p. Mechanisms with fewer than two supporting
    substances are listed (with why in `not_counted`) after those with two or more, earn no point and no q.
    """
    by_code = {r["atc_code"]: r for r in substances.iter_rows(named=True)}
    rows = []
    for mech in group_targets(mapping, list(by_code)).iter_rows(named=True):
        members = [by_code[c] for c in mech["substance_codes"]]
        support = [m for m in members if m["not_counted"] is None]
        row: dict[str, Any] = {
            "target": mech["target"], "target_name": mech["target_name"] or None, "action_type": mech["action_type"],
            "n_substances": len(members), "n_supporting": len(support),
            "substances": "; ".join(_hr_text(m) for m in members),
            "not_counted": "; ".join(f"{m['atc_code']}: {m['not_counted']}" for m in members if m["not_counted"]) or None,
        }  # fmt: skip
        nan = float("nan")
        row.update(pooled_hr=nan, ci_lower=nan, ci_upper=nan, p_value=nan, p_leave_one_out=nan, re_hr=nan, re_ci_lower=nan, re_ci_upper=nan,
                   re_p_value=nan, tau=nan, q_heterogeneity=nan, q_heterogeneity_p=nan, i2=nan)  # fmt: skip
        direction, agreeing = None, []
        if support:
            b = np.array([m["log_hr"] for m in support])
            se = np.array([m["se"] for m in support])
            bayes = pool_half_normal(b, se, float(settings["mechanisms"]["tau_prior_scale"]))
            fixed = pool(b, se, method="FE")
            q, q_p, i2 = cochran_q(b, se)
            direction = "protective" if fixed.estimate < 0 else "harmful"
            agreeing = [m for m in support if np.sign(m["log_hr"]) == np.sign(fixed.estimate)]
            row.update(pooled_hr=np.exp(fixed.estimate), ci_lower=np.exp(fixed.ci_lower), ci_upper=np.exp(fixed.ci_upper),
                       p_value=fixed.p_value, p_leave_one_out=leave_one_out_p(b, se), re_hr=np.exp(bayes.estimate), re_ci_lower=np.exp(bayes.ci_lower),
                       re_ci_upper=np.exp(bayes.ci_upper), re_p_value=bayes.p_value, tau=bayes.tau, q_heterogeneity=q,
                       q_heterogeneity_p=q_p, i2=i2)  # fmt: skip
        else:
            direction = "protective" if np.mean([m["log_hr"] for m in members]) < 0 else "harmful"
        row.update(direction=direction, n_agreeing=len(agreeing),
                   n_atc3_classes=len({atc_parent(m["atc_code"], 3) for m in agreeing}))  # fmt: skip
        rows.append(row)
    if not rows:
        return pl.DataFrame(schema={c: pl.String for c in MECHANISM_COLUMNS})
    frame = pl.DataFrame(rows, infer_schema_length=None)
    p = frame["p_value"].to_numpy()
    q = np.full(p.size, np.nan)
    finite = np.isfinite(p) & (frame["n_supporting"].to_numpy() >= 2)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    frame = frame.with_columns(q_value=pl.Series(q))
    points = [
        mechanism_score(r["q_value"], r["n_agreeing"], r["n_atc3_classes"], r["q_heterogeneity_p"], r["i2"], settings)
        for r in frame.iter_rows(named=True)
    ]
    frame = frame.with_columns(
        evidence_score=pl.Series([len(x) for x in points], dtype=pl.Int64),
        score_points=pl.Series([", ".join(x) for x in points], dtype=pl.String),
    )
    frame = frame.sort(
        [pl.col("direction") == "harmful", pl.col("n_supporting") >= 2, "evidence_score",
         pl.col("p_leave_one_out").fill_nan(None), pl.col("p_value").fill_nan(None), "target"],
        descending=[False, True, True, False, False, False], nulls_last=True,
    )  # fmt: skip
    frame = frame.with_columns(rank=pl.int_range(1, pl.len() + 1).over("direction"))
    return frame.select(MECHANISM_COLUMNS)


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
    unmatched = matches.filter(~pl.col("matched"))["atc_code"].to_list()
    log.info("targets: %d of %d screened substances matched by INN (%.1f%%)", n_matched, matches.height, 100 * n_matched / max(matches.height, 1))
    if unmatched:
        log.warning(
            "targets: %d of %d screened substances have no drug-target match by INN and cannot support a mechanism "
            "(all listed in %s; the first: %s)", len(unmatched), matches.height, Path(matches_path).name, ", ".join(unmatched[:10]),
        )  # fmt: skip
    matches.write_csv(matches_path)
    support = substance_support(dwas, settings)
    ranking = rank_mechanisms(support, mapping, settings)
    ranking.write_csv(ranking_path)
    single = mapping.filter(pl.col("atc_code").is_in(support["atc_code"].implode())).group_by("target", "action_type").len()
    log.info(
        "mechanisms: %d with >= 2 substances ranked (%d with >= 2 supporting); %d single-substance targets left with their drug",
        ranking.height, int((ranking["n_supporting"] >= 2).sum()) if ranking.height else 0, int((single["len"] == 1).sum()),
    )  # fmt: skip
    return ranking
