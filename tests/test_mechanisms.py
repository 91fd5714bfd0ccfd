"""Target mapping and the mechanism ranking: hand-calculated pooling, the half-normal random-effects posterior
against direct numerical integration, the rules of what counts as a mechanism and as support, and the demo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import integrate, stats

from repurpose.config import validate_config
from repurpose.dwas.mechanisms import (
    MECHANISM_COLUMNS,
    leave_one_out_p,
    map_substances,
    pool_half_normal,
    rank_mechanisms,
    read_drug_targets,
    substance_support,
)
from repurpose.layout import results_layout
from repurpose.meta import pool
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]


def settings(**mechanisms):
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")},
            "candidates": {"mechanisms": mechanisms}}  # fmt: skip
    return validate_config(base)["candidates"]


def substances(codes, hrs, ses, not_counted=None):
    """substance_support rows built by hand."""
    b = np.log(hrs)
    return pl.DataFrame({
        "atc_code": codes, "atc_name": [c.lower() for c in codes], "log_hr": b, "se": ses, "hr": np.exp(b),
        "ci_lower": np.exp(b - 1.96 * np.array(ses)), "ci_upper": np.exp(b + 1.96 * np.array(ses)),
        "not_counted": not_counted or [None] * len(codes),
    }, schema_overrides={"not_counted": pl.String})  # fmt: skip


def mapping(pairs):
    """(atc_code, target) pairs as a drug-target mapping, all agonists."""
    return pl.DataFrame({"atc_code": [c for c, _ in pairs], "target": [t for _, t in pairs],
                         "target_name": [None] * len(pairs), "action_type": ["AGONIST"] * len(pairs)},
                        schema_overrides={"target_name": pl.String})  # fmt: skip


def test_demo_mapping_reads_drugcentral_layout():
    targets = read_drug_targets(None)
    assert {"drug_name", "target", "target_name", "action_type"} <= set(targets.columns)
    assert targets.filter((pl.col("drug_name") == "salbutamol") & (pl.col("target") == "ADRB2"))["action_type"].to_list() == ["AGONIST"]


def test_reader_names_missing_columns(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("DRUG_NAME\tGENE\nx\tY\n")
    with pytest.raises(ValueError, match="ACTION_TYPE"):
        read_drug_targets(path)


def test_mapping_by_inn_is_case_and_space_insensitive_and_reports_unmatched():
    rows = pl.DataFrame({"atc_code": ["R03AC02", "X99XX99"], "atc_name": ["Salbutamol ", "unknownium"]})
    found, matches = map_substances(rows, read_drug_targets(None))
    assert "ADRB2" in found.filter(pl.col("atc_code") == "R03AC02")["target"].to_list()
    assert matches.filter(pl.col("atc_code") == "X99XX99")["matched"].to_list() == [False]


def test_fixed_effect_q_and_i2_match_a_hand_calculation():
    hr, se = [0.7, 0.6, 0.9], [0.1, 0.2, 0.15]
    frame = rank_mechanisms(substances(["A01AA01", "B01AA01", "C01AA01"], hr, se),
                            mapping([("A01AA01", "G1"), ("B01AA01", "G1"), ("C01AA01", "G1")]), settings())  # fmt: skip
    row = frame.row(0, named=True)
    # by hand: weights 1/se^2 = 100, 25, 44.44; mean = sum(w b) / sum(w); Q = sum(w (b - mean)^2); I^2 = (Q - 2) / Q
    w = [100.0, 25.0, 1 / 0.0225]
    b = [math.log(h) for h in hr]
    mean = sum(wi * bi for wi, bi in zip(w, b, strict=True)) / sum(w)
    q = sum(wi * (bi - mean) ** 2 for wi, bi in zip(w, b, strict=True))
    assert row["pooled_hr"] == pytest.approx(math.exp(mean), rel=1e-9)
    assert row["ci_upper"] == pytest.approx(math.exp(mean + 1.959964 / math.sqrt(sum(w))), rel=1e-6)
    assert row["p_value"] == pytest.approx(2 * stats.norm.sf(abs(mean) * math.sqrt(sum(w))), rel=1e-9)
    assert row["q_heterogeneity"] == pytest.approx(q, rel=1e-9)
    assert row["q_heterogeneity_p"] == pytest.approx(stats.chi2.sf(q, 2), rel=1e-9)
    assert row["i2"] == pytest.approx(max(0.0, (q - 2) / q), abs=1e-12)
    assert frame.columns == MECHANISM_COLUMNS


def test_half_normal_random_effects_matches_direct_integration():
    y, s, scale = np.log([0.6, 0.85, 0.75]), np.array([0.15, 0.2, 0.25]), 0.5
    result = pool_half_normal(y, s, scale)

    def joint(mu, tau):  # flat prior on mu, half-normal on tau
        v = s**2 + tau**2
        return np.exp(-0.5 * np.sum(np.log(v) + (y - mu) ** 2 / v) - 0.5 * (tau / scale) ** 2)

    limits = (0.0, 6 * scale, -3.0, 3.0)
    total = integrate.dblquad(joint, *limits)[0]
    mean = integrate.dblquad(lambda mu, tau: mu * joint(mu, tau), *limits)[0] / total
    below = integrate.dblquad(joint, 0.0, 6 * scale, -3.0, 0.0)[0] / total
    lower_mass = integrate.dblquad(joint, 0.0, 6 * scale, -3.0, result.ci_lower)[0] / total
    assert result.estimate == pytest.approx(mean, abs=1e-4)
    assert result.p_value == pytest.approx(2 * min(below, 1 - below), rel=1e-3)
    assert lower_mass == pytest.approx(0.025, abs=2e-4)


def test_two_substances_get_a_usable_interval_unlike_hartung_knapp():
    y, s = np.log([0.7, 0.75]), np.array([0.12, 0.15])
    bayes = pool_half_normal(y, s, 0.5)
    fixed = pool(y, s, method="FE")
    hk = pool(y, s, method="REML", knapp_hartung=True)
    width = bayes.ci_upper - bayes.ci_lower
    assert fixed.ci_upper - fixed.ci_lower < width < (hk.ci_upper - hk.ci_lower) / 2
    assert fixed.ci_upper < 0 < hk.ci_upper  # two agreeing substances at HR 0.7 are evidence under the common-effect test
    zero = pool_half_normal(y, s, 0.0)
    assert (zero.estimate, zero.ci_lower, zero.p_value) == pytest.approx((fixed.estimate, fixed.ci_lower, fixed.p_value))


def test_single_substance_targets_are_not_mechanisms_and_same_sets_are_one_row():
    rows = substances(["P01BA02", "A11CC05", "R03AC02", "R03AC03"], [0.5, 0.6, 0.7, 0.72], [0.2, 0.2, 0.15, 0.15])
    targets = mapping([("P01BA02", "TLR7"), ("P01BA02", "TLR9"), ("A11CC05", "VDR"), ("R03AC02", "ADRB2"),
                       ("R03AC03", "ADRB2"), ("R03AC02", "ADRB1"), ("R03AC03", "ADRB1")])  # fmt: skip
    frame = rank_mechanisms(rows, targets, settings())
    assert frame["target"].to_list() == ["ADRB1;ADRB2"]
    assert frame["n_substances"].to_list() == [2]
    assert "R03AC02 r03ac02 0.70 (" in frame["substances"][0]


def test_flagged_or_sparse_substances_do_not_count_as_support():
    rows = substances(["A01AA01", "B01AA01", "C01AA01", "D01AA01", "D02AA01"], [0.5, 0.6, 0.8, 0.7, 0.72], [0.1] * 5,
                      ["reverse causation suspected", "fewer than 10 exposed cases", None, None, None])  # fmt: skip
    targets = mapping([("A01AA01", "G1"), ("B01AA01", "G1"), ("C01AA01", "G1"), ("D01AA01", "G2"), ("D02AA01", "G2")])
    frame = rank_mechanisms(rows, targets, settings())
    g1 = frame.filter(pl.col("target") == "G1").row(0, named=True)
    assert (g1["n_substances"], g1["n_supporting"]) == (3, 1)
    assert g1["pooled_hr"] == pytest.approx(0.8) and g1["evidence_score"] == 0 and math.isnan(g1["q_value"])
    assert "A01AA01: reverse causation suspected" in g1["not_counted"]
    # G2's two supporting substances outrank G1's stronger-looking but unsupported estimates
    assert frame.filter(pl.col("direction") == "protective")["target"].to_list() == ["G2", "G1"]


def test_substance_support_applies_case_minimum_and_reverse_causation_rule():
    def screen_row(code, lag, hr, se, cases):
        return {"atc_code": code, "atc_name": code, "atc_level": 5, "sex": "all", "status": "ok", "lag_years": lag,
                "log_hr": math.log(hr), "se": se, "hr": hr, "ci_lower": hr / 2, "ci_upper": hr * 2, "n_exposed_cases": cases}  # fmt: skip

    dwas = pl.DataFrame([
        screen_row("A01AA01", 0.0, 0.7, 0.1, 40), screen_row("A01AA01", 2.0, 0.7, 0.12, 30),  # steady: support
        screen_row("B01AA01", 0.0, 0.3, 0.1, 40), screen_row("B01AA01", 2.0, 0.98, 0.12, 30),  # fades: flagged
        screen_row("C01AA01", 0.0, 0.6, 0.3, 9), screen_row("C01AA01", 2.0, 0.6, 0.35, None),  # suppressed count
    ])  # fmt: skip
    support = substance_support(dwas, settings(min_exposed_cases=10))
    reasons = dict(zip(support["atc_code"], support["not_counted"], strict=True))
    assert reasons == {"A01AA01": None, "B01AA01": "reverse causation suspected", "C01AA01": "fewer than 10 exposed cases"}
    assert support.filter(pl.col("atc_code") == "A01AA01")["se"].to_list() == [0.12]  # the main-lag estimate


def test_cross_class_agreement_ranks_first_within_direction():
    rows = substances(["A01AA01", "A01AA02", "B01AA01", "C01AA01", "C01AA02", "D01AA01", "D01AB01"],
                      [0.7, 0.65, 0.7, 0.5, 0.55, 1.6, 1.5], [0.1, 0.12, 0.11, 0.1, 0.1, 0.1, 0.1])  # fmt: skip
    targets = mapping([("A01AA01", "G1"), ("A01AA02", "G1"), ("B01AA01", "G1"), ("C01AA01", "G2"), ("C01AA02", "G2"),
                       ("D01AA01", "G3"), ("D01AB01", "G3")])  # fmt: skip
    frame = rank_mechanisms(rows, targets, settings())
    protective = frame.filter(pl.col("direction") == "protective")
    assert protective["target"].to_list() == ["G1", "G2"] and protective["rank"].to_list() == [1, 2]
    top = protective.row(0, named=True)
    assert top["n_atc3_classes"] == 2 and top["score_points"] == "significant, replicated_across_atc3_classes, consistent"
    assert protective.row(1, named=True)["p_value"] < top["p_value"]  # G2 (one level-3 class) is stronger but less diverse
    assert frame.filter(pl.col("direction") == "harmful")[["target", "rank"]].rows() == [("G3", 1)]


def test_leave_one_out_p_by_hand_and_a_mechanism_carried_by_one_drug_ranks_below_agreeing_drugs():
    b, se = np.log([0.6, 0.95, 0.95]), np.array([0.1, 0.1, 0.1])
    # leaving out the strong drug leaves log(0.95) on se 0.1 / sqrt(2); leaving out a weak one keeps the strong one
    rest = np.log(0.95) / (0.1 / np.sqrt(2))
    assert leave_one_out_p(b, se) == pytest.approx(2 * stats.norm.sf(abs(rest)))
    assert np.isnan(leave_one_out_p(b[:1], se[:1]))
    assert leave_one_out_p(np.log([0.5, 1.2]), se[:2]) == 1.0  # without the strong drug the rest point the other way
    # G1: one drug at 0.5 and two at 1.0 (pooled p smaller); G2: three drugs at 0.8 (every drug agrees); no points
    rows = substances(["A01AA01", "A01AA02", "A01AA03", "B01AA01", "B01AA02", "B01AA03"],
                      [0.5, 1.0, 1.0, 0.8, 0.8, 0.8], [0.15, 0.3, 0.3, 0.25, 0.25, 0.25])  # fmt: skip
    targets = mapping([("A01AA01", "G1"), ("A01AA02", "G1"), ("A01AA03", "G1"), ("B01AA01", "G2"), ("B01AA02", "G2"), ("B01AA03", "G2")])
    frame = rank_mechanisms(rows, targets, settings()).filter(pl.col("direction") == "protective")
    g1, g2 = (frame.filter(pl.col("target") == t).row(0, named=True) for t in ("G1", "G2"))
    assert g1["p_value"] < g2["p_value"] and g1["evidence_score"] == g2["evidence_score"] == 0
    assert g2["p_leave_one_out"] < g1["p_leave_one_out"] and frame["target"].to_list() == ["G2", "G1"]


@pytest.fixture(scope="module")
def simulated_mechanisms(run_200k, registries_200k):
    """The shared full run on the 200,000-person simulation (conftest's `run_200k`): (config, released screen,
    mechanism ranking, planted mechanism)."""
    results, config_files = run_200k
    paths = results_layout(results)
    truth = json.loads((registries_200k / "ground_truth.json").read_text())["mechanism"]
    ranking = pl.read_csv(paths.mechanism_ranking(), infer_schema_length=None)
    return load_config(*config_files), pl.read_parquet(paths.dwas()), ranking, truth


@pytest.mark.slow
def test_simulation_ranks_the_planted_mechanism_first_and_only_multi_drug_mechanisms(simulated_mechanisms):
    config, dwas, ranking, truth = simulated_mechanisms
    protective = ranking.filter(pl.col("direction") == "protective").sort("rank")
    top = protective.row(0, named=True)
    print(f"\nplanted {truth['gene']} {truth['action_type']}; {ranking.height} mechanisms; first protective {top['target']} "
          f"{top['action_type']}: pooled HR {top['pooled_hr']:.2f} ({top['ci_lower']:.2f}-{top['ci_upper']:.2f}), "
          f"{top['n_supporting']} of {top['n_substances']} substances support, {top['n_atc3_classes']} level-3 classes, "
          f"I2 {top['i2']:.2f}, score {top['evidence_score']}")  # fmt: skip
    assert truth["gene"] in top["target"].split(";") and top["action_type"] == truth["action_type"]
    assert (ranking["n_substances"] >= 2).all() and ranking["substances"].is_unique().all()
    for direction in ("protective", "harmful"):
        assert ranking.filter(pl.col("direction") == direction)["rank"].to_list() == list(
            range(1, ranking.filter(pl.col("direction") == direction).height + 1))
    # no substance below the case minimum at the main lag counts as support
    minimum = config["candidates"]["mechanisms"]["min_exposed_cases"]
    main = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == config["candidates"]["main_lag_years"]))
    sparse = set(main.filter(~(pl.col("n_exposed_cases") >= minimum).fill_null(True))["atc_code"])
    for row in ranking.iter_rows(named=True):
        listed = [item.split(" ")[0] for item in row["substances"].split("; ")]
        not_counted = {item.split(":")[0] for item in (row["not_counted"] or "").split("; ") if item}
        assert row["n_supporting"] == len(listed) - len(not_counted)
        assert sparse & set(listed) <= not_counted


def test_agreement_among_null_estimates_earns_no_point():
    rows = substances(["A01AA01", "B01AA01", "C01AA01"], [0.97, 0.98, 0.99], [0.2, 0.2, 0.2])
    frame = rank_mechanisms(rows, mapping([("A01AA01", "G1"), ("B01AA01", "G1"), ("C01AA01", "G1")]), settings())
    row = frame.row(0, named=True)
    assert (row["n_agreeing"], row["n_atc3_classes"], row["i2"]) == (3, 3, 0.0)  # agreeing, diverse, homogeneous ...
    assert row["evidence_score"] == 0 and row["score_points"] == ""  # ... but not significant: no point
