"""The persistence study on the simulator's clinical data (the shared 200,000-person full run, conftest's
`run_200k`): the planted clinic effects are what the released tables show, read as a reviewer would."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from attack import Policy
from test_persistence_attacks import countries, recoveries, truth_cells

from repurpose.persistence.pooled import SITE_TABLES, pool_clinics
from repurpose.persistence.study import analyse
from repurpose.release.disclosure import person_count_columns, small_counts_left
from repurpose.release.policy import DisclosurePolicy
from repurpose.study_config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(run_200k, registries_200k):
    results, config_files = run_200k
    truth = json.loads((registries_200k / "ground_truth.json").read_text())["clinical"]["clinics"]
    tables = {name: pl.read_csv(results / "persistence" / f"{name}.csv", infer_schema_length=None)
              for name in ("clinics", "variance", "survival", "reasons")}  # fmt: skip
    return results, load_config(*config_files), truth, tables


def test_the_funnel_flags_only_planted_outlier_clinics(study):
    _, _, truth, tables = study
    flagged = set(tables["clinics"].filter(pl.col("funnel") == "outlier")["clinic_id"].to_list())
    print(f"flagged {sorted(flagged)}; planted outliers {truth['outlier_clinic_ids']}")
    assert flagged and flagged <= set(truth["outlier_clinic_ids"])
    # no ordinary clinic is even an alert in the planted direction of an outlier it does not have
    shown = tables["clinics"].filter(pl.col("funnel").is_not_null() & ~pl.col("clinic_id").is_in(truth["outlier_clinic_ids"]))
    assert shown.height >= 8 and (shown["funnel"] != "outlier").all()


def test_the_variance_of_the_ordinary_clinics_covers_the_planted_one(study):
    _, _, truth, tables = study
    ordinary = tables["variance"].filter(pl.col("clinics") == "funnel outliers left out").row(0, named=True)
    print(f"tau2 {ordinary['tau2']:.3f} ({ordinary['tau2_lower']:.3f}-{ordinary['tau2_upper']:.3f}); planted {truth['tau'] ** 2:.3f}")
    assert ordinary["tau2_lower"] < truth["tau"] ** 2 < ordinary["tau2_upper"]
    # the all-clinics spread mixes in the outliers and is larger
    everyone = tables["variance"].filter(pl.col("clinics") == "all clinics").row(0, named=True)
    assert everyone["tau2"] > ordinary["tau2"]


def test_persistence_and_reasons_are_plausible_and_released(study):
    _, config, _, tables = study
    overall = tables["survival"].filter(pl.col("group_type") == "overall").row(0, named=True)
    assert overall["n_new_users"] >= 500
    assert overall["persistence_12m_lower"] < overall["persistence_12m"] < overall["persistence_12m_upper"]
    assert overall["persistence_24m"] < overall["persistence_12m"]
    for month, part in tables["reasons"].group_by("month"):
        incidence = dict(part.select("stop_reason", "cumulative_incidence").iter_rows())
        if month[0] == 24.0:  # Aalen-Johansen of any reason is 1 - Kaplan-Meier (the reasons are all the stops)
            assert incidence["any reason"] == pytest.approx(1 - overall["persistence_24m"], abs=0.02)
        shown = [v for reason, v in incidence.items() if reason != "any reason" and v is not None]
        hidden = [reason for reason, v in incidence.items() if v is None]
        assert sum(shown) <= incidence["any reason"] + 1e-5 and len(hidden) != 1  # (csv: 6 decimals each) never one hidden reason alone
        if not hidden:
            assert sum(shown) == pytest.approx(incidence["any reason"], abs=1e-5)
    policy = DisclosurePolicy.from_config(config)
    for name, table in tables.items():
        counts = [c for c in table.columns if c.startswith("n_")]
        assert not small_counts_left(table, counts, policy.min_cell), name
    assert np.isfinite(tables["variance"]["tau2"].to_numpy()).all()


def test_two_country_sites_pool_to_the_pooled_data_funnel(study, tmp_path):
    """Norway and Denmark of the simulator as two sites: each analyses its own new users and releases its
    tables; the centre's pooled funnel equals the pooled-data analysis with the case mix within country, and
    flags no clinic that is not a planted outlier."""
    results, config, truth, _ = study
    users = pl.read_parquet(results / "persistence" / "new_users.parquet")
    settings = {**config["persistence"], "case_mix_by_country": True}
    policy = DisclosurePolicy.from_config(config)
    sites = {}
    for country in sorted(users["country"].unique().to_list()):
        released = analyse(users.filter(pl.col("country") == country), settings, policy)
        sites[country] = {}
        for name in SITE_TABLES:  # as the site writes them and the centre reads them
            released[name].write_csv(tmp_path / f"{country}_{name}.csv", float_precision=6)
            sites[country][name] = pl.read_csv(tmp_path / f"{country}_{name}.csv", infer_schema_length=None)
            assert not small_counts_left(sites[country][name], person_count_columns(sites[country][name].columns), policy.min_cell)
    assert len(sites) == 2
    funnel, variance = pool_clinics(sites)
    exact = analyse(users, settings, policy)["funnel_exact"].join(funnel.select("clinic_id"), on="clinic_id").sort("clinic_id")
    federated = funnel.sort("clinic_id")
    print(f"{federated.height} clinics pooled from {sorted(sites)}; flagged "
          f"{federated.filter(pl.col('funnel') == 'outlier')['clinic_id'].to_list()}; planted {truth['outlier_clinic_ids']}; "
          f"tau2 all clinics {variance['tau2'][0]:.3f}")  # fmt: skip
    assert federated["clinic_id"].to_list() == exact["clinic_id"].to_list() and federated.height >= 8
    np.testing.assert_allclose(federated["ratio"].to_numpy(), exact["ratio"].to_numpy(), rtol=1e-5)
    flagged = set(federated.filter(pl.col("funnel") == "outlier")["clinic_id"].to_list())
    assert flagged <= set(truth["outlier_clinic_ids"])


def test_the_released_persistence_tables_give_no_small_count_to_an_attacker(study):
    """tests/test_persistence_attacks.py's attacker on the written tables of the 200,000-person run."""
    results, config, _, _ = study
    users = pl.read_parquet(results / "persistence" / "new_users.parquet")
    tables = {name: pl.read_csv(results / "persistence" / f"{name}.csv", infer_schema_length=None)
              for name in ("survival", "curves", "reasons", "cox", "clinics", "agreement")}  # fmt: skip
    tables["agreement"] = tables["agreement"].with_columns(pl.col("value").cast(pl.String))
    policy = DisclosurePolicy.from_config(config)
    found = recoveries(tables, truth_cells(users, config["persistence"], policy), Policy(policy.min_cell, policy.rounding_base),
                       float(config["persistence"]["funnel_horizon_months"]), countries(users))  # fmt: skip
    print(f"persistence release of the 200k run: {len(found)} small cells recovered")
    assert found == []
