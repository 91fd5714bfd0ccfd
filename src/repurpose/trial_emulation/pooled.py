"""The trial emulation pooled across sites by the coordinating centre, from the sites' released estimates only.

The Big MS Data network pools by protocol: every site runs the same emulation (the same `trial_emulation`
settings) on its own registry and sends its released `estimates` and `counts` tables in its site package
(`repurpose.federation.package`). The centre meta-analyses each (analysis, outcome, measure) over the sites
with `repurpose.meta.pool`: the inverse-variance fixed effect and the REML random effects with the
Hartung-Knapp interval. A site's standard error is read from its 95% bootstrap percentile interval (on the
log scale for ratios, where the interval is close to symmetric; on the natural scale for differences):
SE = (upper - lower) / (2 x 1.96). Per-strategy risks and rates are not pooled (they are averages over
different case mixes; their contrasts are). The counts of persons and events are summed where every site
shows them.

Imports `repurpose.meta` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

from repurpose.meta import pool

SITE_TABLES = ("estimates", "counts")
"""The released trial-emulation tables a site package carries (trial_emulation/<name>.csv at the site)."""
RATIO_MEASURES = ("hazard_ratio", "risk_ratio", "rate_ratio")
DIFFERENCE_MEASURES = ("risk_difference", "difference_per_year")
Z_95 = 1.959963984540054


class PooledTrialError(ValueError):
    """The sites' emulations cannot be pooled (fewer than two sites, or a missing table)."""


def _scale(measure: str) -> str | None:
    if measure.startswith(RATIO_MEASURES):
        return "log"
    if measure.startswith(DIFFERENCE_MEASURES):
        return "identity"
    return None


def site_effects(sites: Mapping[str, Mapping[str, pl.DataFrame]]) -> pl.DataFrame:
    """Every site's contrast (ratio or difference) with its estimate and SE on the pooling scale."""
    rows = []
    for site, tables in sites.items():
        frame = tables["estimates"]
        if not {"analysis", "outcome", "measure", "estimate", "lower", "upper"} <= set(frame.columns):
            continue  # an emulation its site could not estimate (a status column only)
        for r in frame.iter_rows(named=True):
            scale = _scale(str(r["measure"]))
            values = (r["estimate"], r["lower"], r["upper"])
            if scale is None or any(v is None or not np.isfinite(v) for v in values):
                continue
            if scale == "log" and min(values) <= 0:
                continue
            y, lo, hi = (np.log(values) if scale == "log" else np.asarray(values, dtype=float))
            se = (hi - lo) / (2 * Z_95)
            if se > 0:
                rows.append({"site": site, "analysis": r["analysis"], "outcome": r["outcome"], "measure": r["measure"],
                             "scale": scale, "y": float(y), "se": float(se)})  # fmt: skip
    schema = {"site": pl.String, "analysis": pl.String, "outcome": pl.String, "measure": pl.String, "scale": pl.String,
              "y": pl.Float64, "se": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def pool_estimates(effects: pl.DataFrame, n_sites: int) -> pl.DataFrame:
    """One row per (analysis, outcome, measure): the fixed-effect and REML pooled contrast with 95% CIs on the
    natural scale, the sites pooled, tau^2 and I^2; a measure missing at a site is pooled over the others."""
    rows = []
    for (analysis, outcome, measure, scale), part in effects.group_by("analysis", "outcome", "measure", "scale", maintain_order=True):
        y, se = part["y"].to_numpy(), part["se"].to_numpy()
        back = np.exp if scale == "log" else (lambda v: v)
        row = {"analysis": analysis, "outcome": outcome, "measure": measure, "k_sites": len(y), "n_sites": n_sites,
               "sites": ",".join(part["site"].to_list())}  # fmt: skip
        for method in ("FE", "REML"):
            if len(y) < 2 and method == "REML":
                row |= {"reml_estimate": None, "reml_lower": None, "reml_upper": None, "tau2": None, "i2": None}
                continue
            result = pool(y, se, method=method, knapp_hartung=method == "REML" and len(y) >= 2)
            prefix = method.lower()
            row |= {f"{prefix}_estimate": float(back(result.estimate)), f"{prefix}_lower": float(back(result.ci_lower)),
                    f"{prefix}_upper": float(back(result.ci_upper))}  # fmt: skip
            if method == "REML":
                row |= {"tau2": result.tau2, "i2": result.i2}
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def pool_counts(sites: Mapping[str, Mapping[str, pl.DataFrame]]) -> pl.DataFrame:
    """The sites' persons and events per (analysis, strategy, outcome), summed where every site shows them."""
    frames = [t["counts"].with_columns(pl.lit(s).alias("site")) for s, t in sites.items() if "n_persons" in t["counts"].columns]
    if not frames:
        return pl.DataFrame()
    stacked = pl.concat(frames, how="diagonal_relaxed")
    counts = [c for c in stacked.columns if c.startswith("n_")]
    keys = [c for c in ("analysis", "strategy", "outcome") if c in stacked.columns]
    summed = stacked.group_by(keys, maintain_order=True).agg(
        *[pl.when(pl.col(c).null_count() == 0).then(pl.col(c).sum()).otherwise(None).alias(c) for c in counts],
        pl.len().alias("k_sites"),
    )  # fmt: skip
    return pl.concat([stacked, summed.with_columns(pl.lit("pooled").alias("site"))], how="diagonal_relaxed")


def pool_trial_emulation(sites: Mapping[str, Mapping[str, pl.DataFrame]], out_dir: str | Path) -> dict[str, str]:
    """Meta-analyse the sites' emulations into `out_dir`/trial_emulation_{estimates,site_estimates,counts}.csv."""
    if len(sites) < 2:
        raise PooledTrialError("pooling the trial emulation needs the tables of at least two sites")
    effects = site_effects(sites)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"estimates": str(out_dir / "trial_emulation_estimates.csv"),
               "site_estimates": str(out_dir / "trial_emulation_site_estimates.csv"),
               "counts": str(out_dir / "trial_emulation_counts.csv")}  # fmt: skip
    pool_estimates(effects, len(sites)).write_csv(written["estimates"], float_precision=6)
    effects.write_csv(written["site_estimates"], float_precision=6)
    pool_counts(sites).write_csv(written["counts"])
    return written
