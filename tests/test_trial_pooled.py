"""The trial emulation pooled across sites from their released estimates (repurpose.trial_emulation.pooled):
inverse-variance meta-analysis by hand, and the site package round trip."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from test_federation import make_package, protocol_file  # noqa: F401 (a fixture)

from repurpose.federation.package import PackageError, pool_packages, read_site_package
from repurpose.trial_emulation.pooled import Z_95, pool_estimates, site_effects

SITES = {"NO": (0.80, 0.62, 1.03, -0.040, -0.080, -0.002), "DK": (0.70, 0.55, 0.89, -0.060, -0.100, -0.020)}


def site_tables(hr: float, lo: float, hi: float, rd: float, rd_lo: float, rd_hi: float, n_events: int = 40) -> dict:
    estimates = pl.DataFrame({
        "analysis": ["emulation"] * 4, "outcome": ["confirmed_worsening"] * 4,
        "measure": ["hazard_ratio", "risk_difference_5y", "risk_high_efficacy_5y", "risk_escalation_5y"],
        "estimate": [hr, rd, 0.20, 0.25], "lower": [lo, rd_lo, 0.15, 0.20], "upper": [hi, rd_hi, 0.25, 0.30],
        "status": ["ok"] * 4,
    })  # fmt: skip
    counts = pl.DataFrame({"analysis": ["emulation"] * 2, "strategy": ["high_efficacy", "escalation"],
                           "outcome": ["confirmed_worsening"] * 2, "n_persons": [500, 520], "n_censored_deviation": [200, 180],
                           "n_events": [n_events, n_events + 10]})  # fmt: skip
    return {"estimates": estimates, "counts": counts}


def test_fixed_effect_pooling_by_hand():
    sites = {s: site_tables(*v) for s, v in SITES.items()}
    effects = site_effects(sites)
    assert set(effects["measure"].to_list()) == {"hazard_ratio", "risk_difference_5y"}  # per-arm risks are not pooled
    pooled = pool_estimates(effects, 2)
    hr = pooled.filter(pl.col("measure") == "hazard_ratio").row(0, named=True)
    y = np.log([SITES[s][0] for s in SITES])
    se = np.array([(math.log(SITES[s][2]) - math.log(SITES[s][1])) / (2 * Z_95) for s in SITES])
    w = 1 / se**2
    expected = float(np.sum(w * y) / np.sum(w))
    assert hr["fe_estimate"] == pytest.approx(math.exp(expected), rel=1e-10)
    assert hr["fe_lower"] == pytest.approx(math.exp(expected - Z_95 / math.sqrt(w.sum())), rel=1e-10)
    rd = pooled.filter(pl.col("measure") == "risk_difference_5y").row(0, named=True)
    y = np.array([SITES[s][3] for s in SITES])
    se = np.array([(SITES[s][5] - SITES[s][4]) / (2 * Z_95) for s in SITES])
    assert rd["fe_estimate"] == pytest.approx(float(np.sum(y / se**2) / np.sum(1 / se**2)), rel=1e-10)
    assert hr["k_sites"] == 2 and hr["reml_lower"] <= hr["fe_estimate"] <= hr["reml_upper"]


def test_a_hidden_site_estimate_is_left_out_and_said(tmp_path):
    sites = {s: site_tables(*v) for s, v in SITES.items()}
    sites["DK"]["estimates"] = sites["DK"]["estimates"].with_columns(
        pl.when(pl.col("measure") == "hazard_ratio").then(None).otherwise(pl.col(c)).alias(c) for c in ("estimate", "lower", "upper"))  # fmt: skip
    pooled = pool_estimates(site_effects(sites), 2)
    hr = pooled.filter(pl.col("measure") == "hazard_ratio").row(0, named=True)
    assert hr["k_sites"] == 1 and hr["sites"] == "NO" and hr["fe_estimate"] == pytest.approx(0.80, rel=1e-9)


def test_site_packages_carry_the_emulation_and_the_centre_pools_it(tmp_path, protocol_file):  # noqa: F811
    packages = []
    for site, values in SITES.items():
        paths = {}
        for name, table in site_tables(*values).items():
            paths[name] = tmp_path / f"{site}_{name}.csv"
            table.write_csv(paths[name])
        packages.append(make_package(tmp_path, protocol_file, site, {"N02BE01": (-0.2, 0.1)},
                                     studies={"trial_emulation": paths}))  # fmt: skip
    assert set(read_site_package(packages[0]).studies) == {"trial_emulation"}
    summary = pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    pooled = pl.read_csv(summary["trial_emulation"]["estimates"])
    assert pooled.filter(pl.col("measure") == "hazard_ratio")["k_sites"].item() == 2
    counts = pl.read_csv(summary["trial_emulation"]["counts"]).filter(pl.col("site") == "pooled")
    assert counts.filter(pl.col("strategy") == "high_efficacy")["n_events"].item() == 80
    # a small count does not leave a site
    small = tmp_path / "small_counts.csv"
    site_tables(*SITES["NO"], n_events=3)["counts"].write_csv(small)
    with pytest.raises(PackageError, match="small counts"):
        make_package(tmp_path, protocol_file, "XX", {"N02BE01": (-0.2, 0.1)},
                     studies={"trial_emulation": {"estimates": tmp_path / "NO_estimates.csv", "counts": small}})  # fmt: skip


def test_the_safety_outcome_pools_over_the_sites_that_estimate_it():
    """serious_infection at both sites pools by hand; a site without the diagnosis extract sends a not-available
    row, which pools nothing (k_sites 1) and breaks nothing."""
    sites = {s: site_tables(*v) for s, v in SITES.items()}
    for tables in sites.values():
        tables["estimates"] = pl.concat([tables["estimates"], tables["estimates"].with_columns(pl.lit("serious_infection").alias("outcome"))])
    pooled = pool_estimates(site_effects(sites), 2)
    both = pooled.filter((pl.col("outcome") == "serious_infection") & (pl.col("measure") == "hazard_ratio")).row(0, named=True)
    same = pooled.filter((pl.col("outcome") == "confirmed_worsening") & (pl.col("measure") == "hazard_ratio")).row(0, named=True)
    assert both["k_sites"] == 2 and both["fe_estimate"] == pytest.approx(same["fe_estimate"], rel=1e-12)
    missing = pl.DataFrame({"outcome": ["serious_infection"], "status": ["not available: inputs.diagnoses is not configured"]})
    sites["DK"]["estimates"] = pl.concat([sites["DK"]["estimates"].filter(pl.col("outcome") != "serious_infection"), missing],
                                         how="diagonal_relaxed")  # fmt: skip
    pooled = pool_estimates(site_effects(sites), 2)
    one = pooled.filter((pl.col("outcome") == "serious_infection") & (pl.col("measure") == "hazard_ratio")).row(0, named=True)
    assert one["k_sites"] == 1 and one["sites"] == "NO" and one["fe_estimate"] == pytest.approx(SITES["NO"][0], rel=1e-9)
