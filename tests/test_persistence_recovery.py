"""The persistence study recovers planted clinic effects from a simple synthetic registry
(tests/persistence_synthetic.py, independent of the simulator), and its stage writes released tables only."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from persistence_synthetic import DRUG, REASON_SHARES, REASONS, generate, study_config

from repurpose.persistence import run_persistence
from repurpose.persistence.newusers import new_users
from repurpose.persistence.study import analyse
from repurpose.release.disclosure import small_counts_left
from repurpose.release.policy import DisclosurePolicy

POLICY = DisclosurePolicy(min_cell=5, rounding_base=5)


@pytest.fixture(scope="module")
def planted():
    """40 clinics with log-normal effects (sd 0.15) and two planted outliers (log HR +1 and -1), 3 tiny clinics."""
    synthetic = generate(n_clinics=40, size_range=(80, 300), tau=0.15, outliers={0: 1.0, 7: -1.0}, seed=1, small_clinics=3)
    users = new_users(synthetic.ms_treatments, synthetic.ms_registry, synthetic.population, synthetic.ms_relapses,
                      synthetic.ms_edss, [DRUG], date(2023, 12, 31))  # fmt: skip
    return synthetic, users, analyse(users, study_config()["persistence"], POLICY)


def test_planted_outliers_are_flagged_and_no_other_clinic(planted):
    synthetic, _, tables = planted
    funnel = tables["funnel_exact"]
    flagged = set(funnel.filter(pl.col("funnel") == "outlier")["clinic_id"].to_list())
    assert flagged == set(synthetic.outliers)
    # the released table never shows a flag the exact analysis does not give
    released = tables["clinics"].filter(pl.col("funnel").is_not_null()).select("clinic_id", "funnel")
    exact = dict(funnel.select("clinic_id", "funnel").iter_rows())
    assert released.height > 30 and all(exact[c] == f for c, f in released.iter_rows())
    # disclosure control does not hide the planted outliers (the complementary cell is taken from a clinic in control)
    assert set(released.filter(pl.col("funnel") == "outlier")["clinic_id"].to_list()) == set(synthetic.outliers)


def test_between_clinic_variance_covers_the_planted_one(planted):
    synthetic, users, tables = planted
    variance = tables["variance"].row(0, named=True)
    sizes = dict(users.group_by("clinic_id").len().iter_rows())
    effects = np.array([v for c, v in synthetic.clinic_effects.items() if sizes.get(c, 0) >= 10])
    planted_variance = float(np.var(effects))
    assert variance["tau2_lower"] < planted_variance < variance["tau2_upper"]
    # the funnel's overdispersion (inliers only, ratio scale) is near the planted sd of 0.15 on the log scale
    assert 0.15**2 / 3 < variance["funnel_tau2"] < 0.15**2 * 3


def test_cumulative_incidence_by_reason_matches_the_planted_shares(planted):
    _, _, tables = planted
    reasons = tables["reasons"].filter((pl.col("month") == 24.0) & (pl.col("stop_reason") != "any reason"))
    total = reasons["cumulative_incidence"].sum()
    for reason, share in zip(REASONS, REASON_SHARES, strict=True):
        value = reasons.filter(pl.col("stop_reason") == reason)["cumulative_incidence"].item()
        assert value / total == pytest.approx(share, abs=0.03), reason
    overall = tables["survival"].filter(pl.col("group_type") == "overall").row(0, named=True)
    assert total == pytest.approx(1 - overall["persistence_24m"], abs=1e-9)


def test_released_clinic_table_hides_small_clinics_and_small_counts(planted):
    synthetic, users, tables = planted
    clinics = tables["clinics"]
    tiny = [c for c, n in users.group_by("clinic_id").len().iter_rows() if n < 10]
    assert tiny and not set(tiny) & set(clinics["clinic_id"].to_list())
    assert "other clinics" in clinics["clinic_id"].to_list()
    assert "other clinics" not in tables["funnel_exact"]["clinic_id"].to_list()
    assert tables["variance"]["k_clinics"][0] == 40
    counts = [c for c in clinics.columns if c.startswith("n_")]
    assert small_counts_left(clinics, counts, POLICY.min_cell) == {}
    # the "other clinics" row is the total minus the shown clinics: never a small count
    shown = clinics.filter(~pl.col("clinic_id").is_in(["all clinics", "other clinics"]))
    exact = users.filter(pl.col("clinic_id").is_in(shown["clinic_id"].to_list()).not_())
    assert exact.height == 0 or exact.height >= POLICY.min_cell
    assert small_counts_left(tables["survival"], ["n_new_users", "n_stopped"], POLICY.min_cell) == {}
    # the attack: a single hidden clinic cell in a column whose total is shown would be the total minus the rest
    parts = clinics.filter(pl.col("clinic_id") != "all clinics")
    total = clinics.filter(pl.col("clinic_id") == "all clinics").row(0, named=True)
    for column in counts:
        hidden = parts[column].null_count()
        assert hidden != 1 or total[column] is None, column


def test_stage_writes_every_output_and_the_agreement(tmp_path):
    synthetic = generate(n_clinics=12, size_range=(40, 120), seed=4, small_clinics=2)
    inputs = synthetic.write(tmp_path / "in", n_parts=3)
    outputs = {name: str(tmp_path / f"{name}.csv") for name in ("survival", "curves", "reasons", "cox", "clinics", "variance", "agreement")}
    result = run_persistence(study_config(), **inputs, new_users=str(tmp_path / "new_users.parquet"),
                             html=str(tmp_path / "persistence.html"), **outputs)  # fmt: skip
    assert result["n_new_users"] == synthetic.ms_treatments.filter(pl.col("treatment_atc_code") == DRUG).height
    agreement = dict(pl.read_csv(outputs["agreement"], infer_schema=False).iter_rows())
    # dispensings run to the registry stop, so the two definitions agree closely on who stopped
    assert float(agreement["kappa_stopped_within_horizon"]) > 0.8
    page = (tmp_path / "persistence.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64") >= 4 and "funnel" in page
    users = pl.read_parquet(tmp_path / "new_users.parquet")
    assert users["dispensing_stopped"].null_count() == 0
    for name in ("clinics", "survival", "reasons"):
        frame = pl.read_csv(outputs[name])
        assert "person_id" not in frame.columns
        assert small_counts_left(frame, [c for c in frame.columns if c.startswith("n_")], 5) == {}


def test_bad_inputs_fail_naming_the_file_and_column(tmp_path):
    synthetic = generate(n_clinics=3, size_range=(20, 30), seed=2)
    inputs = synthetic.write(tmp_path / "in")
    outputs = {name: str(tmp_path / f"{name}.csv") for name in ("survival", "curves", "reasons", "cox", "clinics", "variance", "agreement")}
    paths = dict(inputs, new_users=str(tmp_path / "u.parquet"), html=str(tmp_path / "p.html"), **outputs)
    synthetic.ms_edss.drop("edss").write_parquet(inputs["ms_edss"])
    with pytest.raises(ValueError, match=r"ms_edss.parquet \(ms_edss\) lacks the column\(s\) edss"):
        run_persistence(study_config(), **paths)
    synthetic.ms_edss.write_parquet(inputs["ms_edss"])
    with pytest.raises(ValueError, match="no new user of N07XX09"):
        run_persistence(study_config(drug="N07XX09"), **paths)


def test_cox_estimates_of_hidden_clinic_groups_are_hidden(planted):
    _, _, tables = planted
    survival = tables["survival"].filter(pl.col("group_type") == "clinic")
    hidden = survival.filter(pl.col("n_stopped").is_null() | pl.col("n_new_users").is_null())["group"].to_list()
    assert hidden  # the merged small clinics, and the clinics whose stops complement them
    cox = tables["cox"]
    for group in hidden:
        row = cox.filter(pl.col("term") == f"clinic={group}")
        assert row.height == 0 or (row["hr"].item() is None and row["status"].item().startswith("hidden"))
    shown = cox.filter(pl.col("term").str.starts_with("clinic=") & pl.col("hr").is_not_null())
    assert shown.height >= 30 and (cox["n_events"] % 5 == 0).all()
