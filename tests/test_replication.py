"""Split-sample replication inside one registry (`repurpose.dwas.replication`): the keyed-hash split (deterministic by
seed, order-free, by group, never logging identifiers), the `replication` evidence line by hand, the release of
the held-out estimate (hidden whole by the halves' counts), the fits against the full cohort, and on the
simulator: planted protective substances replicate, null substances mostly do not, and the stage runs with it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_candidates import config_for, synthetic
from test_candidates_ranking import SETTINGS, good_row

from repurpose.dwas.candidates import run_candidates
from repurpose.dwas.evidence import evidence_lines, flags_of
from repurpose.dwas.person_models import confirmation_fit, model_cohort
from repurpose.dwas.replication import (
    DISCOVERY,
    REPLICATION,
    REPLICATION_COLUMNS,
    half_cohorts,
    half_counts,
    half_of,
    hide_replication,
    replication_fits,
    replication_hidden,
    split_halves,
)
from repurpose.layout import results_layout
from repurpose.release.policy import DisclosurePolicy
from repurpose.study_config import load_config

ON = {"enabled": True, "seed": 19, "group_column": None}

# --------------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------------


def test_split_is_deterministic_by_seed_balanced_and_free_of_row_order():
    cohort = pl.DataFrame({"person_id": [f"P-{i:06d}" for i in range(20_000)]})
    half = split_halves(cohort, ON)
    assert np.array_equal(half, split_halves(cohort, ON))
    assert abs(np.mean(half == REPLICATION) - 0.5) < 0.02
    shuffled = cohort.with_row_index("row").sample(fraction=1.0, shuffle=True, seed=3)
    again = split_halves(shuffled, ON)
    assert np.array_equal(again, half[shuffled["row"].to_numpy()])
    other = split_halves(cohort, {**ON, "seed": 20})
    assert 0.45 < np.mean(other == half) < 0.55  # another seed: another, independent split
    assert half_of("P-000001", 19) == half[1]


def test_split_by_a_group_column_keeps_groups_whole_and_a_missing_column_is_named():
    cohort = pl.DataFrame({"person_id": np.arange(3000), "region": np.repeat([f"R{k}" for k in range(30)], 100)})
    half = split_halves(cohort, {**ON, "group_column": "region"})
    per_group = pl.DataFrame({"region": cohort["region"], "half": half}).group_by("region").agg(pl.col("half").n_unique())
    assert per_group["half"].max() == 1 and 0 < np.mean(half) < 1
    with pytest.raises(ValueError, match="group_column = 'county' is not a cohort column"):
        split_halves(cohort, {**ON, "group_column": "county"})


def test_the_split_never_logs_a_person_identifier(caplog):
    ids = [f"ID{i:07d}X" for i in range(500)]
    with caplog.at_level(logging.DEBUG, logger="repurpose"):
        split_halves(pl.DataFrame({"person_id": ids}), ON)
    text = caplog.text
    assert "held-out half" in text and not any(i in text for i in ids)


# --------------------------------------------------------------------------------------------------
# The evidence line by hand
# --------------------------------------------------------------------------------------------------

SETTINGS_ON = {**SETTINGS, "replication": ON}


def halves(**changes) -> dict:
    row = {
        "discovery_n_exposed_cases": 40, "replication_n_exposed_cases": 38, "log_hr_discovery": -0.4,
        "hr_replication": 0.7, "ci_lower_replication": 0.5, "ci_upper_replication": 0.95, "p_replication": 0.02,
    }  # fmt: skip
    return good_row(**{**row, **changes})


def test_replication_line_by_hand():
    minimum = SETTINGS["min_evidence_cases"]
    assert evidence_lines(halves(), SETTINGS_ON)["replication"] == "supported"
    assert evidence_lines(halves(), SETTINGS)["replication"].startswith("not assessed: split-sample replication is off")
    not_significant = halves(p_replication=0.2, ci_upper_replication=1.1)
    assert evidence_lines(not_significant, SETTINGS_ON)["replication"] == "against"
    discovery_other_side = halves(log_hr_discovery=0.1)
    assert evidence_lines(discovery_other_side, SETTINGS_ON)["replication"] == "against"
    opposite = halves(hr_replication=1.5, ci_lower_replication=1.1, ci_upper_replication=2.0, p_replication=0.01)
    lines = evidence_lines(opposite, SETTINGS_ON)
    assert lines["replication"] == "against" and "replication_disagrees" in flags_of(opposite, lines, SETTINGS_ON)
    few = halves(replication_n_exposed_cases=minimum - 1)
    assert evidence_lines(few, SETTINGS_ON)["replication"] == f"not assessed: exposed cases in the held-out half below {minimum}"
    few_discovery = halves(discovery_n_exposed_cases=minimum - 1)
    assert evidence_lines(few_discovery, SETTINGS_ON)["replication"] == f"not assessed: exposed cases in the discovery half below {minimum}"
    unfitted = good_row(confirmation_reason="beyond candidates.confirmation.max_classes")
    assert evidence_lines(unfitted, SETTINGS_ON)["replication"] == (
        "not assessed: not fitted in the halves (beyond candidates.confirmation.max_classes)"
    )
    not_candidate = halves(person_level_reason="not a candidate (person-level models are fitted for candidates)")
    assert evidence_lines(not_candidate, SETTINGS_ON)["replication"].startswith("not assessed: not a candidate")
    harmful = halves(direction="harmful", log_hr_discovery=0.3, hr_replication=1.4, p_replication=0.01)
    assert evidence_lines(harmful, SETTINGS_ON)["replication"] == "supported"


# --------------------------------------------------------------------------------------------------
# Release of the held-out estimate
# --------------------------------------------------------------------------------------------------


def counts_row(code: str, level: int, d_discovery: int, d_replication: int, e: int = 400) -> dict:
    row = {"atc_code": code, "atc_level": level, "hr": 0.7, **dict.fromkeys(REPLICATION_COLUMNS, 0.5)}
    for name, d in (("discovery", d_discovery), ("replication", d_replication)):
        row.update({f"{name}_n_persons": 50_000, f"{name}_n_exposed": e, f"{name}_n_cases": 600, f"{name}_n_exposed_cases": d})
    return row


def test_the_held_out_estimate_is_hidden_whole_when_a_half_or_a_difference_is_small():
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    ranking = pl.DataFrame([
        counts_row("A01AA01", 5, 30, 3),  # held-out half: 3 exposed cases
        counts_row("B01AA01", 5, 2, 40),  # discovery half: 2, i.e. the full count minus the shown half
        counts_row("C01AA01", 5, 30, 28),
        counts_row("C01AA", 4, 32, 30, e=402),  # C01AA - C01AA01 in a half: 2 exposed cases (tree rule)
        counts_row("D01AA01", 5, 40, 44),
    ])  # fmt: skip
    hidden = replication_hidden(ranking, policy)
    assert hidden == [True, True, False, True, False]
    released = hide_replication(ranking.with_columns(hr=pl.Series([0.7, 0.7, 0.7, 0.7, None])), hidden)
    shown = released.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in REPLICATION_COLUMNS]))["atc_code"].to_list()
    assert shown == ["C01AA01"]  # D01AA01's main estimate is hidden, so its replication is too
    assert replication_hidden(ranking.select("atc_code", "atc_level", "hr"), policy) == [False] * 5


# --------------------------------------------------------------------------------------------------
# The fits
# --------------------------------------------------------------------------------------------------


def test_halves_partition_the_cohort_and_each_half_fits_the_confirmation_model():
    cohort, exposures = synthetic(n=6000, seed=5)
    config = config_for(replication=ON)
    model = model_cohort(cohort, config)
    half = split_halves(model.prepared, ON)
    lag = round(2 * 365.25)
    result = replication_fits("B02", [], halves=half_cohorts(model, half, config, None), exposures=exposures, config=config, lag_in_days=lag)
    full = half_counts(model, exposures, "B02", lag)
    for count, total in full.items():
        assert result[f"discovery_{count}"] + result[f"replication_{count}"] == total

    def half_fit(which: int) -> dict:  # the half's cohort built from its own rows (cohort_row renumbered)
        return confirmation_fit(model_cohort(cohort.filter(pl.Series(half == which)), config), exposures, "B02", [], config, lag, "aggregated")

    held_out = half_fit(REPLICATION)
    assert result["hr_replication"] == pytest.approx(held_out["hr_confirmation"], rel=1e-12)
    assert result["p_replication"] == pytest.approx(held_out["p_confirmation"], rel=1e-12)
    discovery = half_fit(DISCOVERY)
    assert result["log_hr_discovery"] == pytest.approx(discovery["log_hr_confirmation"], rel=1e-12)
    everyone = confirmation_fit(model, exposures, "B02", [], config, lag, "aggregated")
    # half the persons: a standard error about sqrt(2) times the full cohort's
    assert 1.2 < held_out["se_confirmation"] / everyone["se_confirmation"] < 1.7


# --------------------------------------------------------------------------------------------------
# On the simulator
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_planted_protective_substances_replicate_and_null_substances_mostly_do_not(run_200k, registries_200k):
    """The shared 200,000-person run (conftest's `run_200k`): the confirmation model with nothing added (the screen's
    model) in the two halves of every planted causal protective substance and of 20 null substances, each with
    at least 2 x the minimum of exposed cases at the main lag (the planted set comes from ground_truth.json)."""
    results, config_files = run_200k
    config = load_config(*config_files)
    settings = {**config["candidates"], "replication": ON}
    paths = results_layout(results)
    truth = json.loads((registries_200k / "ground_truth.json").read_text())
    fits = pl.read_parquet(paths.screen_fits()).filter(
        (pl.col("sex") == "all") & (pl.col("lag_years") == float(settings["main_lag_years"])) & (pl.col("status") == "ok")
        & (pl.col("n_exposed_cases") >= 2 * settings["min_evidence_cases"])
    )  # fmt: skip
    fitted = set(fits["atc_code"].to_list())
    protective = sorted(c for c, s in truth["substances"].items() if s["role"] == "causal_protective" and c in fitted)
    nulls = sorted(c for c, s in truth["substances"].items() if s["role"] == "null" and c in fitted)[:20]
    assert protective and len(nulls) == 20
    model = model_cohort(pl.read_parquet(paths.cohort()), config)
    halves = half_cohorts(model, split_halves(model.prepared, ON), config, None)
    exposures = pl.read_parquet(paths.exposure(5)).filter(pl.col("atc_code").is_in(protective + nulls))
    lag = round(float(settings["main_lag_years"]) * 365.25)

    def line(code: str) -> str:
        fit = replication_fits(code, [], halves=halves, exposures=exposures, config=config, lag_in_days=lag)
        screen = fits.filter(pl.col("atc_code") == code).row(0, named=True)
        row = {"direction": "protective" if screen["log_hr"] < 0 else "harmful", "atc_level": 5, **fit}
        return evidence_lines(row, settings)["replication"]

    planted = {code: line(code) for code in protective}
    null = {code: line(code) for code in nulls}
    replicated_null = sum(v == "supported" for v in null.values()) / len(null)
    print(f"\nplanted causal protective: {planted}\nnull substances replicated: {replicated_null:.2f} of {len(null)}")
    assert all(v == "supported" for v in planted.values())
    assert replicated_null <= 0.15


@pytest.mark.slow
def test_the_stage_with_replication_on_hides_small_halves(demo_run, tmp_path):
    """run_candidates on the demo's files (8,000 persons) with replication on and the evidence minimum at min_cell:
    the columns are there, a held-out estimate is shown only when both halves have at least min_cell exposed cases
    (so its line never says a half is below the minimum), and every candidate's line is valued."""
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    config["candidates"]["replication"] = ON
    config["candidates"]["min_evidence_cases"] = config["disclosure"]["min_cell"]
    paths = results_layout(demo_run)
    exposures = [paths.exposure(level) for level in config["screen"]["atc_levels"]]
    ranking = tmp_path / "drugs.csv"
    run_candidates(
        config, dwas=paths.screen_fits(), cohort=paths.cohort(), exposures=exposures, healthcare_use=paths.healthcare_use(),
        matches=None, mechanisms=None, ranking=ranking,
    )  # fmt: skip
    drugs = pl.read_csv(ranking, infer_schema_length=None)
    assert set(REPLICATION_COLUMNS) <= set(drugs.columns)
    lines = drugs.filter(pl.col("candidate"))["evidence_replication"].to_list()
    assert lines and all(v in ("supported", "against") or v.startswith("not assessed: ") for v in lines)
    assert all(v.startswith("not assessed") for v in drugs.filter(~pl.col("candidate"))["evidence_replication"].to_list())
    shown = drugs.filter(pl.col("hr_replication").is_not_null())
    # Shown only when both halves have at least min_cell (= min_evidence_cases here) exposed cases.
    assert not any("half below" in v for v in shown["evidence_replication"].to_list())
    assert shown["hr"].null_count() == 0
    small = drugs.filter(pl.col("evidence_replication").str.contains("half below"))
    assert small.height >= 1 and small["hr_replication"].null_count() == small.height  # the demo has small halves
