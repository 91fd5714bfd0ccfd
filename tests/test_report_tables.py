"""The report's leading tables on hand-built ranking frames: key findings (new contract and an older
ranking without its columns), evidence in plain words, the planted-truth table, the screen table data,
and the calibration warnings."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from repurpose.release.report import drug_columns, top_signals
from repurpose.release.report_figures import calibration_panel
from repurpose.release.report_tables import (
    evidence_status,
    mechanism_findings,
    planted_truth,
    screen_table,
    signal_findings,
)


def ranking() -> pl.DataFrame:
    """A hand-built drug ranking in the contract's layout: two protective and one harmful signal, one not a candidate."""
    return pl.DataFrame({
        "rank": [1, 2, 1, 3, 4], "direction": ["protective", "protective", "harmful", "protective", "protective"],
        "candidate": [True, True, True, False, True], "atc_code": ["P01BA02", "R03AC", "L04AB04", "A02BC01", "P01BA"],
        "atc_name": ["hydroxychloroquine", "beta-2 agonists", "infliximab", "omeprazole", "aminoquinolines"],
        "atc_level": [5, 4, 5, 5, 4], "also_seen_at": ["P01;P01B", None, "L04AB", None, None],
        "lag_years": [2.0, 2.0, 0.0, 2.0, 2.0], "hr": [0.5, 0.7, 2.0, 0.95, 0.6], "ci_lower": [0.3, 0.55, 1.4, 0.8, 0.4],
        "ci_upper": [0.83, 0.89, 2.9, 1.1, 0.9], "n_exposed_cases": ["25", "40", "<5", "60", "30"],
        "evidence_calibrated": ["supported", "supported", "against", "against", "supported"],
        "evidence_confirmed": ["not assessed: no confirmation model", "supported", "supported", "against", "supported"],
        "evidence_supported": [1, 2, 1, 0, 2], "evidence_assessed": [1, 2, 2, 2, 2], "flags": ["", "", "small_numbers", "", ""],
    })  # fmt: skip


def test_key_findings_show_candidates_by_direction_with_lag_evidence_and_flags():
    drugs = ranking()
    rows = signal_findings(drugs, drugs, main_lag=2.0, alpha=0.05)
    assert [(r["direction"], r["code"]) for r in rows] == [("protective", "P01BA02"), ("protective", "R03AC"),
                                                           ("protective", "P01BA"), ("harmful", "L04AB04")]  # fmt: skip
    first, harmful = rows[0], rows[3]
    assert first["hr"] == "0.50 (0.30-0.83)" and first["lag"] == "2" and first["cases"] == "25"
    assert first["evidence"] == [("calibrated", "supported", "supported"),
                                 ("confirmed", "not-assessed", "not assessed (no confirmation model)")]  # fmt: skip
    assert first["score"] == "1 of 1 assessed" and "also seen at P01;P01B" in first["detail"]
    assert harmful["lag"] == "0" and harmful["cases"] == "<5" and harmful["flags"] == ["small numbers"]


def test_an_older_ranking_without_the_new_columns_still_gives_key_findings():
    old = pl.DataFrame({"rank": [1, 2], "atc_code": ["A11CC05", "N06AB06"], "atc_name": ["colecalciferol", "sertraline"],
                        "atc_level": [5, 5], "direction": ["protective", "harmful"], "hr": [0.6, 1.5],
                        "ci_lower": [0.4, 1.1], "ci_upper": [0.9, 2.0], "q_value": [0.01, 0.2], "evidence_score": [3, 1]})  # fmt: skip
    rows = signal_findings(old, old, main_lag=2.0, alpha=0.05)
    assert [r["code"] for r in rows] == ["A11CC05"]  # without `candidate`, q < alpha decides
    assert rows[0]["lag"] == "2" and rows[0]["score"] == "3 points" and rows[0]["evidence"] == []


def test_evidence_values_in_plain_words():
    assert evidence_status("supported") == ("supported", "supported")
    assert evidence_status("against") == ("against", "against")
    assert evidence_status("not assessed: fewer than 10 exposed cases") == ("not-assessed", "not assessed (fewer than 10 exposed cases)")
    assert evidence_status(None) == ("not-assessed", "not reported")


def mechanisms() -> pl.DataFrame:
    return pl.DataFrame({
        "rank": [1, 2, 1], "direction": ["protective", "protective", "harmful"], "target": ["ADRB2", "TLR7;TLR9", "NR3C1"],
        "action_type": ["AGONIST", "ANTAGONIST", "AGONIST"], "n_substances": [5, 2, 3], "n_supporting": [5, 1, 3],
        "substances": ["R03AC02 salbutamol 0.70 (0.5-0.98)", "P01BA01 ...; P01BA02 ...", "H02AB ..."],
        "not_counted": [None, "P01BA01: reverse causation suspected", None], "pooled_hr": [0.7, 0.5, 1.3],
        "ci_lower": [0.6, 0.3, 1.1], "ci_upper": [0.82, 0.8, 1.6], "q_value": [0.001, 0.01, 0.04],
        "score_points": ["significant, replicated_across_atc3_classes, consistent", "", "significant, consistent"],
    })  # fmt: skip


def test_mechanism_findings_need_two_supporting_substances_and_significance():
    rows = mechanism_findings(mechanisms(), main_lag=2.0, alpha=0.05)
    assert [r["code"] for r in rows] == ["ADRB2", "NR3C1"]  # TLR7;TLR9 has one supporting substance
    assert rows[0]["score"] == "3 of 3" and rows[1]["score"] == "2 of 3"
    assert rows[1]["evidence"][1] == ("replicated across atc3 classes", "not-assessed",
                                      "not earned: agreeing substances in two or more ATC level-3 classes")  # fmt: skip


def test_planted_truth_counts_found_missed_and_false_positives():
    drugs = ranking()
    signals = signal_findings(drugs, drugs, 2.0, 0.05)
    mechs = mechanism_findings(mechanisms(), 2.0, 0.05)
    truth = {"substances": {
        "P01BA02": {"atc_name": "hydroxychloroquine", "role": "causal_protective", "planted_hr": 0.5},
        "R03AC02": {"atc_name": "salbutamol", "role": "mechanism", "planted_hr": 0.65},  # found as its class R03AC
        "A02BC01": {"atc_name": "omeprazole", "role": "causal_protective", "planted_hr": 0.6},  # ranked, not a candidate
        "D10BA01": {"atc_name": "isotretinoin", "role": "causal_harmful", "planted_hr": 1.8},  # not ranked
        "L04AB04": {"atc_name": "infliximab", "role": "null", "planted_hr": 1.0},
    }, "mechanism": {"gene": "ADRB2", "action_type": "AGONIST", "planted_hr": 0.65}}  # fmt: skip
    table = planted_truth(truth, signals, mechs, drugs)
    status = {r["item"]: r["status"] for r in table["rows"]}
    assert status["P01BA02 hydroxychloroquine"] == "found: protective rank 1"  # itself; its class P01BA is no false positive
    assert status["R03AC02 salbutamol"] == "found: protective rank 2 (as class R03AC)"
    assert status["A02BC01 omeprazole"] == "missed: ranked protective 3, not a candidate"
    assert status["D10BA01 isotretinoin"] == "missed: not ranked"
    assert status["mechanism ADRB2 AGONIST"] == "found: protective mechanism rank 1"
    false = {r["item"]: r["role"] for r in table["rows"] if r["kind"] == "false-positive"}
    assert false == {"L04AB04 infliximab": "null", "NR3C1 AGONIST": "no planted mechanism"}
    assert table["summary"] == "3 of 5 planted effects found, 2 missed, 2 false positives among the key findings"
    # a simulator table that plants no mechanism writes "mechanism": null; every key mechanism is then a false positive
    without = planted_truth({**truth, "mechanism": None}, signals, mechs, drugs)
    assert not [r for r in without["rows"] if r["item"].startswith("mechanism ")]
    assert {r["item"] for r in without["rows"] if r["kind"] == "false-positive"} >= {"ADRB2 AGONIST", "NR3C1 AGONIST"}


def test_forest_plots_go_to_both_directions():
    drugs = ranking()
    chosen = top_signals(drugs, pl.DataFrame(), [0.0, 2.0], n_top=2, alpha=0.05)
    assert [r["atc_code"] for r in chosen] == ["P01BA02", "L04AB04"]


def test_ranking_columns_follow_the_configured_lags():
    columns = drug_columns([0.0, 1.0, 3.0], 1.0)
    assert {"hr_lag0", "hr_lag1", "hr_lag3"} <= set(columns) and "hr_lag2" not in columns


def screen(sigma: float, n: int, seed: int = 3) -> pl.DataFrame:
    """A level-5 screen at lag 2 whose null estimates scatter with extra spread `sigma` around 0."""
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.1, 0.4, n)
    b = rng.normal(0, np.sqrt(se**2 + sigma**2))
    return pl.DataFrame({"atc_code": [f"X{k:06d}" for k in range(n)], "atc_name": "x", "atc_level": 5, "lag_years": 2.0,
                         "sex": "all", "log_hr": b, "se": se, "hr": np.exp(b), "ci_lower": np.exp(b - 1.96 * se),
                         "ci_upper": np.exp(b + 1.96 * se), "p_value": 0.5, "q_value": 0.9, "n_exposed": "40",
                         "n_exposed_cases": ["<5"] * (n // 2) + ["12"] * (n - n // 2), "status": "ok", "reason": None})  # fmt: skip


def test_calibration_warns_on_a_degenerate_null_and_on_few_controls():
    degenerate = calibration_panel(screen(0.0, 200), 5, 2.0, 0.05, [], min_controls=20)
    assert any("degenerate (sigma = 0" in w for w in degenerate["warnings"])
    spread = calibration_panel(screen(0.3, 200), 5, 2.0, 0.05, [], min_controls=20)
    assert spread["warnings"] == [] and float(spread["sigma"]) > 0.15
    few = calibration_panel(screen(0.3, 12), 5, 2.0, 0.05, [], min_controls=20)
    assert any("rests on 12 negative controls" in w for w in few["warnings"])
    none = calibration_panel(screen(0.3, 3), 5, 2.0, 0.05, [], min_controls=20)
    assert any("no empirical null" in w for w in none["warnings"])


def test_screen_table_data_keeps_every_row_and_suppressed_counts_as_text():
    frame = screen(0.1, 30)
    table = screen_table(frame)
    rows = json.loads(table["json"])
    assert table["n_rows"] == len(rows) == 30 and table["columns"][0] == "ATC code"
    cases = table["keys"].index("n_exposed_cases")
    assert {r[cases] for r in rows} == {"<5", "12"} and table["numeric"][cases]
    direction = table["keys"].index("direction")
    assert {r[direction] for r in rows} <= {"protective", "harmful", None}
    skipped = screen_table(frame.with_columns(hr=pl.lit(float("nan")), p_value=pl.lit(None, pl.Float64), status=pl.lit("skipped")))
    assert {r[direction] for r in json.loads(skipped["json"])} == {None}  # not estimated has no direction
