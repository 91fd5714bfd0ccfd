"""The persistence study on the simulator's clinical data (the shared 200,000-person full run, conftest's
`run_200k`): the planted clinic effects are what the released tables show, read as a reviewer would."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from repurpose.release.disclosure import small_counts_left
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
        assert sum(shown) <= incidence["any reason"] + 1e-9 and len(hidden) != 1  # never one hidden reason alone
        if not hidden:
            assert sum(shown) == pytest.approx(incidence["any reason"], abs=1e-9)
    policy = DisclosurePolicy.from_config(config)
    for name, table in tables.items():
        counts = [c for c in table.columns if c.startswith("n_")]
        assert not small_counts_left(table, counts, policy.min_cell), name
    assert np.isfinite(tables["variance"]["tau2"].to_numpy()).all()
