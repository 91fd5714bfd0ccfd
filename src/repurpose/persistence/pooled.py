"""The persistence study pooled across sites at the coordinating centre, from the sites' released tables only.

Each site (a country's registry) runs the study and sends its released `survival`, `reasons`, `clinics` and
`variance` tables in its site package (`repurpose.federation.package`): no person-level row and no count
that its own release hid. The coordinator pools:

- **Clinics: funnel and between-clinic variance, exactly.** With the case-mix model fitted within each
  country (`persistence.case_mix_by_country`; a site fits its own), a clinic's expected stops E depend only
  on its site's patients, so the funnel and the variance need only each shown clinic's (O, E). O within the
  horizon is the released ratio x E (exact: the ratio is released at full precision for a shown clinic);
  O over the whole follow-up is the released count (exact when the sites do not round, `rounding_base: 1`).
  The pooled funnel and REML tau^2 over every shown clinic of every site then equal those of the pooled-data
  analysis with `case_mix_by_country: true`, where no clinic is hidden (tests/test_persistence_pooled.py).
  Clinics a site merged into "other clinics" or hid are not in either.
- **Persistence and cumulative incidence by reason: each site's, and their mixture.** The Kaplan-Meier and
  Aalen-Johansen estimates of the pooled data need the number at risk and the stops at every event time of
  every site, small counts that no site releases. The pooled value at a horizon is the mixture of the sites'
  released values weighted by their new users, S = sum_s w_s S_s (the population-averaged curve, equal to
  the pooled Kaplan-Meier when the sites' censoring is alike), with a standard error from the sites' CIs
  (half-width / 1.96, independent sites). It is labelled as such.

Imports `persistence.clinics` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

from repurpose.persistence.clinics import ALL_CLINICS, OTHER_CLINICS, between_clinic_variance, funnel_table

SITE_TABLES = ("survival", "reasons", "clinics", "variance")
"""The released persistence tables a site package carries (persistence/<name>.csv at the site)."""
POOLED = "pooled (mixture of sites)"
Z_95 = 1.959963984540054


class PooledPersistenceError(ValueError):
    """The sites' persistence tables cannot be pooled (different designs or a missing table)."""


def _shown_clinics(site: str, clinics: pl.DataFrame) -> pl.DataFrame:
    """A site's clinic rows that the funnel can use: real clinics with their ratio and E shown."""
    return clinics.filter(
        ~pl.col("clinic_id").is_in([ALL_CLINICS, OTHER_CLINICS]) & pl.col("ratio").is_not_null()
        & pl.col("expected_stops").is_not_null() & (pl.col("expected_stops") > 0)
    ).select(
        pl.lit(site).alias("site"), pl.col("clinic_id").cast(pl.String),
        (pl.col("ratio") * pl.col("expected_stops")).round(0).alias("observed_stops_within_horizon"),
        pl.col("expected_stops").alias("expected_stops_within_horizon"),
        pl.col("n_stopped").cast(pl.Float64).alias("observed_stops_all"),
        pl.col("expected_stops_all").cast(pl.Float64),
        pl.col("funnel").alias("site_funnel"),
    )  # fmt: skip


def the_one(values: list, what: str) -> object:
    """The value every site shares, or PooledPersistenceError naming what differs."""
    distinct = sorted({str(v) for v in values})
    if len(distinct) != 1:
        raise PooledPersistenceError(f"the sites' persistence studies differ in {what}: {', '.join(distinct)}")
    return values[0]


def pool_clinics(sites: Mapping[str, Mapping[str, pl.DataFrame]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The pooled funnel (one row per shown clinic of every site) and the between-clinic variance table."""
    method = str(the_one([t["variance"]["funnel_overdispersion"][0] for t in sites.values()], "funnel_overdispersion"))
    clinics = pl.concat([_shown_clinics(site, tables["clinics"]) for site, tables in sites.items()])
    clinics = clinics.with_columns((pl.col("site") + " / " + pl.col("clinic_id")).alias("label"))
    funnel, spread = funnel_table(clinics["label"].to_list(), clinics["observed_stops_within_horizon"].to_numpy(),
                                  clinics["expected_stops_within_horizon"].to_numpy(), method)  # fmt: skip
    pooled = clinics.join(funnel.rename({"clinic_id": "label"}).drop("observed_stops", "expected_stops"), on="label")
    details = {"funnel_overdispersion": spread.method, "funnel_phi": spread.phi, "funnel_tau2": spread.tau2,
               "n_clinic_groups": pooled.height}  # fmt: skip
    has_all = pooled.filter(pl.col("observed_stops_all").is_not_null() & pl.col("expected_stops_all").is_not_null())
    rows = [{"clinics": "all clinics", **between_clinic_variance(has_all["observed_stops_all"].to_numpy(),
                                                                  has_all["expected_stops_all"].to_numpy()), **details}]  # fmt: skip
    ordinary = has_all.filter(pl.col("funnel") != "outlier")
    if 2 <= ordinary.height < has_all.height:
        rows.append({"clinics": "funnel outliers left out", **between_clinic_variance(
            ordinary["observed_stops_all"].to_numpy(), ordinary["expected_stops_all"].to_numpy()), **details})  # fmt: skip
    return pooled.drop("label").sort("site", "clinic_id"), pl.DataFrame(rows)


def _mixture(values: np.ndarray, weights: np.ndarray, lower: np.ndarray | None = None,
             upper: np.ndarray | None = None) -> tuple[float | None, float | None, float | None]:  # fmt: skip
    """sum w_s v_s with w = weights / sum, and its 95% CI from the sites' CIs; None when a site's value is hidden."""
    if np.any(np.isnan(values)) or np.any(np.isnan(weights)) or weights.sum() <= 0:
        return None, None, None
    w = weights / weights.sum()
    value = float(np.sum(w * values))
    if lower is None or upper is None or np.any(np.isnan(lower)) or np.any(np.isnan(upper)):
        return value, None, None
    se = float(np.sqrt(np.sum((w * (upper - lower) / (2 * Z_95)) ** 2)))
    return value, max(0.0, value - Z_95 * se), min(1.0, value + Z_95 * se)


def _floats(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def pool_survival(sites: Mapping[str, Mapping[str, pl.DataFrame]]) -> pl.DataFrame:
    """Each site's overall persistence row and the mixture of the sites at each horizon."""
    overall = pl.concat([t["survival"].filter(pl.col("group_type") == "overall").with_columns(pl.lit(s).alias("site"))
                         for s, t in sites.items()], how="diagonal_relaxed")  # fmt: skip
    horizons = sorted({c.removeprefix("persistence_").removesuffix("m") for c in overall.columns
                       if c.startswith("persistence_") and c.endswith("m")}, key=int)  # fmt: skip
    weights = _floats(overall, "n_new_users")
    pooled: dict[str, object] = {"site": POOLED, "group_type": "overall", "group": POOLED}
    for h in horizons:
        name = f"persistence_{h}m"
        value, lower, upper = _mixture(_floats(overall, name), weights, _floats(overall, f"{name}_lower"),
                                       _floats(overall, f"{name}_upper"))  # fmt: skip
        pooled |= {name: value, f"{name}_lower": lower, f"{name}_upper": upper}
    for count in ("n_new_users", "n_stopped"):
        values = overall[count]
        pooled[count] = None if values.null_count() else int(values.sum())
    columns = ["site", "group_type", "group", "n_new_users", "n_stopped",
               *[f"persistence_{h}m{s}" for h in horizons for s in ("", "_lower", "_upper")]]  # fmt: skip
    return pl.concat([overall.select(columns), pl.DataFrame([pooled]).select(columns)], how="vertical_relaxed")


def pool_reasons(sites: Mapping[str, Mapping[str, pl.DataFrame]],
                 survival: pl.DataFrame) -> pl.DataFrame:  # fmt: skip
    """Each site's cumulative incidence by reason at the horizons and their mixture (weights: new users)."""
    weights = dict(survival.filter(pl.col("site") != POOLED).select("site", "n_new_users").iter_rows())
    stacked = pl.concat([t["reasons"].with_columns(pl.lit(s).alias("site")) for s, t in sites.items()], how="diagonal_relaxed")
    rows = []
    for (reason, month), part in stacked.group_by("stop_reason", "month", maintain_order=True):
        if part.height != len(sites):
            value = None
        else:
            w = np.array([float("nan") if weights[s] is None else float(weights[s]) for s in part["site"]])
            value = _mixture(_floats(part, "cumulative_incidence"), w)[0]
        counts = part["n_stopped"]
        rows.append({"site": POOLED, "stop_reason": reason, "month": month,
                     "n_stopped": None if counts.null_count() or part.height != len(sites) else int(counts.sum()),
                     "cumulative_incidence": value})  # fmt: skip
    columns = ["site", "stop_reason", "month", "n_stopped", "cumulative_incidence"]
    return pl.concat([stacked.select(columns), pl.DataFrame(rows).select(columns)], how="vertical_relaxed")


def pool_persistence(sites: Mapping[str, Mapping[str, pl.DataFrame]], out_dir: str | Path) -> dict[str, str]:
    """Pool the sites' released persistence tables into `out_dir`/persistence_{clinics,variance,survival,
    reasons}.csv; return the written paths by name."""
    if len(sites) < 2:
        raise PooledPersistenceError("pooling the persistence study needs the tables of at least two sites")
    clinics, variance = pool_clinics(sites)
    survival = pool_survival(sites)
    tables = {"clinics": clinics, "variance": variance, "survival": survival, "reasons": pool_reasons(sites, survival)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in tables.items():
        written[name] = str(out_dir / f"persistence_{name}.csv")
        table.write_csv(written[name], float_precision=6)
    return written
