"""The candidate rankings recover the simulator's planted truth (read from ground_truth.json, so nothing
here depends on which substances or target the simulator plants).

The shared simulated population of 200,000 persons (seed 7; conftest's `registries_200k`, also read by
test_recovery) goes through the whole DAG once per session (conftest's `run_200k`, shared with the attacker
suite test_attacks): validate -> cohort -> exposure -> screen at ATC levels 4 and 5, then mechanisms and
candidates (the aggregated confirmation engine, the default, for every candidate), report and export.
The drug ranking is compared with the plain screen z and with the ranking before issue 19 on the same run
(`repurpose.dwas.ranking_benchmark`; the figures are printed).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from repurpose.dwas.person_models import confirmation_fit, model_cohort
from repurpose.dwas.ranking_benchmark import PROTECTIVE_ROLES, average_precision, compare_orderings
from repurpose.layout import results_layout
from repurpose.study_config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LEVELS = (4, 5)


@pytest.fixture(scope="module")
def run(run_200k, registries_200k):
    """The shared full run on the 200,000 simulated persons (conftest's `run_200k`, ATC levels 4 and 5): (its
    results layout, config, ground truth, drug ranking with the planted roles, mechanism ranking)."""
    results, config_files = run_200k
    config = load_config(*config_files)
    assert config["screen"]["atc_levels"] == list(LEVELS)
    paths = results_layout(results)
    truth = json.loads((registries_200k / "ground_truth.json").read_text())
    roles = pl.DataFrame([{"atc_code": code, "role": s["role"]} for code, s in truth["substances"].items()])
    drugs = pl.read_csv(paths.drug_ranking(), infer_schema_length=None)
    return paths, config, truth, drugs.join(roles, on="atc_code", how="left"), pl.read_csv(paths.mechanism_ranking())


def test_planted_mechanism_ranks_first_among_protective_mechanisms(run):
    _, _, truth, _, mechanisms = run
    protective = mechanisms.filter(pl.col("direction") == "protective").sort("rank")
    top = protective.row(0, named=True)
    print(f"\nplanted mechanism: {truth['mechanism']['gene']} {truth['mechanism']['action_type']}; top: {top['target']} {top['action_type']} (score {top['evidence_score']}, pooled HR {top['pooled_hr']:.2f})")
    assert (top["target"], top["action_type"]) == (truth["mechanism"]["gene"], truth["mechanism"]["action_type"])


def test_planted_protective_substances_lead_the_drug_ranking(run):
    _, _, truth, drugs, _ = run
    substances = drugs.filter((pl.col("atc_level") == 5) & (pl.col("direction") == "protective")).sort("rank")
    positives = [role in PROTECTIVE_ROLES for role in substances["role"].fill_null("null")]
    ap = average_precision(positives)
    chance = sum(positives) / len(positives)
    print(f"\naverage precision of planted protective substances among {len(positives)} protective level-5 substances: {ap:.3f} (chance {chance:.3f})")
    assert sum(positives) >= 4
    assert ap >= 0.8 and ap >= 2 * chance


def test_each_planted_substance_is_one_signal_and_classes_carried_by_it_are_not_rows(run):
    _, _, truth, drugs, _ = run
    planted = [code for code, s in truth["substances"].items() if s["role"] != "null"]
    assert drugs["atc_code"].n_unique() == drugs.height
    covered = [c for value in drugs["also_seen_at"].drop_nulls().to_list() for c in value.split(";")]
    assert not set(covered) & set(drugs["atc_code"].to_list()), "a collapsed code is also a row of its own"
    for code in planted:
        assert drugs.filter(pl.col("atc_code") == code).height == 1, code
        assert code not in covered


def test_no_evidence_point_comes_from_a_fit_below_the_minimum_of_cases(run):
    paths, config, _, _, _ = run
    minimum = config["candidates"]["min_evidence_cases"]
    drugs = pl.read_csv(paths.drug_ranking(), infer_schema=False).with_columns(pl.col("lag_years").cast(pl.Float64))
    # The exact exposed cases of each row's own fit: the released ranking rounds or hides them.
    fits = pl.read_parquet(paths.screen_fits()).filter(pl.col("sex") == "all")
    exact = fits.select("atc_code", "lag_years", pl.col("n_exposed_cases").alias("exact_cases"))
    drugs = drugs.join(exact, on=["atc_code", "lag_years"], how="left")
    few = drugs.filter(pl.col("exact_cases") < minimum)
    assert few.height, "no signal below the minimum: the test would check nothing"
    for line in ("calibrated", "confirmed", "robust_to_confounding"):
        assert (few[f"evidence_{line}"] != "supported").all(), line
    # A shown comparator count c (rounded to base 5) means at most c + 2 cases.
    shown = drugs["n_active_comparator_cases"].str.strip_chars().cast(pl.Int64, strict=False)
    assert (drugs.filter(shown + 2 < minimum)["evidence_active_comparator"] != "supported").all()
    scored = drugs.select(pl.col("evidence_supported").cast(pl.Int64), pl.col("evidence_assessed").cast(pl.Int64))
    assert (scored["evidence_supported"] <= scored["evidence_assessed"]).all()
    # every candidate gets its confirmation assessed or says why not
    candidates = drugs.filter(pl.col("candidate") == "true")
    assert candidates.height and candidates["evidence_confirmed"].is_not_null().all()


def test_the_ranking_beats_the_screen_z_and_the_previous_ranking(run):
    paths, config, truth, drugs, _ = run
    table = compare_orderings(pl.read_parquet(paths.screen_fits()), drugs.drop("role"), truth, config["candidates"])
    with pl.Config(fmt_str_lengths=60, tbl_width_chars=230):
        print(f"\n{table}")
    previous, screen_z, new = (table.row(i, named=True) for i in range(3))
    assert new["average_precision"] >= screen_z["average_precision"] and new["average_precision"] > previous["average_precision"]
    assert new["nulls_in_top"] <= screen_z["nulls_in_top"]


def test_prodromal_substances_are_flagged_and_never_protective_candidates(run):
    _, _, truth, drugs, _ = run
    prodromal = [code for code, s in truth["substances"].items() if s["role"] == "prodromal"]
    rows = drugs.filter(pl.col("atc_code").is_in(prodromal))
    assert rows.height == len(prodromal), "every prodromal substance is ranked"
    for row in rows.iter_rows(named=True):
        assert "reverse_causation_suspected" in (row["flags"] or ""), row
        assert row["direction"] != "protective"
        # the last tier holds reverse causation and rows shown at lag 0 (main lag not estimable)
        last_tier = pl.col("flags").fill_null("").str.contains("reverse_causation|main_lag_not_estimable")
        unflagged = drugs.filter((pl.col("direction") == row["direction"]) & ~last_tier)
        assert row["rank"] > unflagged["rank"].max()


def test_confirmation_with_nothing_added_agrees_with_the_screen(run):
    paths, config, _, drugs, _ = run
    dwas = pl.read_parquet(paths.screen_fits())
    code = drugs.filter((pl.col("atc_level") == 5) & (pl.col("direction") == "protective")).sort("rank")["atc_code"][0]
    main_lag = float(config["candidates"]["main_lag_years"])
    model = model_cohort(pl.read_parquet(paths.cohort()), config)
    exposures = pl.read_parquet(paths.exposure(5))
    fit = confirmation_fit(model, exposures, code, [], config, round(main_lag * 365.25), "aggregated")
    expected = dwas.filter((pl.col("atc_code") == code) & (pl.col("lag_years") == main_lag) & (pl.col("sex") == "all"))
    assert fit["log_hr_confirmation"] == pytest.approx(expected["log_hr"][0], abs=1e-6)
    # every candidate of the shipped ranking whose estimate is released shows its confirmation model
    assert drugs.filter(pl.col("candidate") & pl.col("hr").is_not_null() & pl.col("hr_confirmation").is_null()).height == 0


def test_outputs_are_aggregate_and_documented(run):
    paths, config, _, _, mechanisms = run
    min_cell = config["disclosure"]["min_cell"]
    drugs = pl.read_csv(paths.drug_ranking(), infer_schema=False)
    for column in ("n_exposed", "n_exposed_cases", "n_active_comparator", "n_active_comparator_cases"):
        values = drugs[column].drop_nulls()
        numeric = values.filter(values != f"<{min_cell}").cast(pl.Int64)
        assert not ((numeric >= 1) & (numeric < min_cell)).any(), column
    assert "person_id" not in drugs.columns
    readme = Path(paths.candidates_readme()).read_text()
    for column in ("evidence_supported", "also_seen_at", "reverse_causation_suspected", "calibrated_p", "dose_trend_p", "pooled_hr", "i2", "Empirical null per ATC level"):
        assert column in readme
    assert {"rank", "target", "action_type", "n_substances", "n_atc3_classes", "pooled_hr", "i2", "evidence_score"} <= set(mechanisms.columns)


def test_tree_q_is_reported_per_signal_and_bounds_what_it_rejects(run):
    """The hierarchical FDR over the ATC tree (levels 4 and 5 here) on the 200,000-person run: every row at the main
    lag with a shown estimate has a tree_q in [0, 1], rows at lag 0 have none, and tree_rejected is tree_q < alpha.
    Prints how many planted and null substances the tree test and the candidate threshold keep."""
    _, config, _, drugs, _ = run
    alpha, main_lag = config["candidates"]["fdr_alpha"], float(config["candidates"]["main_lag_years"])
    at_main = drugs.filter((pl.col("lag_years") == main_lag) & pl.col("hr").is_not_null())
    assert at_main.height and at_main["tree_q"].null_count() == 0
    assert at_main["tree_q"].is_between(0, 1).all()
    assert drugs.filter(pl.col("lag_years") != main_lag)["tree_q"].null_count() == drugs.filter(pl.col("lag_years") != main_lag).height
    assert (at_main["tree_rejected"] == (at_main["tree_q"] < alpha)).all()
    substances = drugs.filter(pl.col("atc_level") == 5).with_columns(role=pl.col("role").fill_null("null"))
    for name, chosen in (("tree_rejected", substances.filter(pl.col("tree_rejected").fill_null(False))),
                         ("candidate", substances.filter(pl.col("candidate")))):  # fmt: skip
        print(f"\n{name}: {chosen.height} substances, {chosen.filter(pl.col('role') != 'null').height} planted, {chosen.filter(pl.col('role') == 'null').height} null")
    assert substances.filter(pl.col("tree_rejected").fill_null(False) & (pl.col("role") != "null")).height >= 1
