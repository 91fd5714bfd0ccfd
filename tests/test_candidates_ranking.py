"""The drug ranking of issue 19 on hand-built inputs: signals (the ATC tree collapsed), evidence lines as
supported / against / not assessed with a minimum of cases, the order (tiers, shrunken estimate, rank within
direction), the empirical-Bayes shrinkage by hand, likelihood-ratio p and profile CI against lifelines,
calibration warnings, the cross-key rule, and a study with lags [0, 1, 3] through the stage."""

from __future__ import annotations

import json
import logging

import numpy as np
import polars as pl
import pytest
from lifelines import CoxTimeVaryingFitter
from scipy import stats
from test_candidates import config_for, synthetic

from repurpose.config import ConfigError, validate_config
from repurpose.cox.result import wald_p_value
from repurpose.dwas.calibration import EmpiricalNull
from repurpose.dwas.candidates import (
    fit_nulls,
    level_groups,
    null_problems,
    run_candidates,
    shown_estimates,
    targets_of,
)
from repurpose.dwas.evidence import evidence_lines, flags_of, order_rows, score_rows, tier
from repurpose.dwas.person_models import likelihood_ratio_fit, model_cohort, split_time_varying
from repurpose.dwas.ranking_benchmark import (
    average_precision,
    fewest_nulls_in_top,
    ranking_order,
    recovery,
    short_list_order,
    split_listed,
)
from repurpose.dwas.shrinkage import Groups, LevelPrior, fit_level_prior, shrink
from repurpose.dwas.signals import collapse_tree
from repurpose.schemas import EVIDENCE_LINES, drug_ranking_columns

# --------------------------------------------------------------------------------------------------
# Signals, not codes
# --------------------------------------------------------------------------------------------------


def estimates(rows: list[tuple[str, float, float]]) -> pl.DataFrame:
    """(code, log HR, p) -> the frame collapse_tree reads."""
    level = {1: 1, 3: 2, 4: 3, 5: 4, 7: 5}
    return pl.DataFrame(
        [{"atc_code": c, "atc_level": level[len(c)], "log_hr": b, "p_value": p} for c, b, p in rows]
    )


def test_a_class_carried_by_one_substance_is_that_substances_signal():
    tree = collapse_tree(
        estimates([
            ("P01", -0.8, 1e-4), ("P01B", -0.9, 1e-4), ("P01BA", -1.0, 1e-5), ("P01BA02", -1.1, 1e-5),
            ("P01BA01", 0.1, 0.7),  # a sibling substance without an effect does not carry
            ("P01BB", -0.2, 0.4),
        ]),
        carrier_alpha=0.05,
    )  # fmt: skip
    assert tree.signal_of["P01"] == tree.signal_of["P01B"] == tree.signal_of["P01BA"] == "P01BA02"
    assert tree.also_seen_at("P01BA02") == ["P01", "P01B", "P01BA"]
    assert tree.signal_of["P01BA01"] == "P01BA01" and tree.signal_of["P01BB"] == "P01BB"
    assert {c for c, s in tree.signal_of.items() if c == s} == {"P01BA02", "P01BA01", "P01BB"}


def test_a_class_carried_by_several_substances_stays_a_class_signal():
    tree = collapse_tree(
        estimates([
            ("R03", -0.3, 1e-3), ("R03A", -0.3, 1e-3), ("R03AC", -0.35, 1e-3),
            ("R03AC02", -0.4, 0.01), ("R03AC13", -0.3, 0.03), ("R03AC03", 0.2, 0.01),  # opposite side: no carrier
        ]),
        carrier_alpha=0.05,
    )  # fmt: skip
    assert tree.signal_of["R03AC"] == "R03AC" and tree.carried_by["R03AC"] == ["R03AC02", "R03AC13"]
    # R03A has one carrier (R03AC, a class signal), so R03A and R03 join the class signal
    assert tree.signal_of["R03A"] == tree.signal_of["R03"] == "R03AC"
    assert tree.also_seen_at("R03AC") == ["R03", "R03A"]
    # substances are never collapsed: each is the code of exactly one signal
    assert all(tree.signal_of[c] == c for c in ("R03AC02", "R03AC13", "R03AC03"))


def test_a_class_with_no_carrier_stays_its_own_signal_and_skipped_levels_are_bridged():
    # Only levels 2 and 4 screened: the level-4 classes are the children of the level-2 class.
    tree = collapse_tree(estimates([("N05", -0.3, 0.001), ("N05CF", -0.1, 0.2), ("N05BA", -0.1, 0.3)]), carrier_alpha=0.05)
    assert tree.signal_of["N05"] == "N05" and "N05" not in tree.carried_by
    tree = collapse_tree(estimates([("N05", -0.3, 0.001), ("N05CF", -0.5, 0.001), ("N05BA", -0.1, 0.3)]), carrier_alpha=0.05)
    assert tree.signal_of["N05"] == "N05CF"


def test_the_shown_estimate_says_its_lag_and_never_falls_back_silently():
    dwas = pl.DataFrame({
        "atc_code": ["A", "A", "B"], "atc_level": [5, 5, 5], "lag_years": [0.0, 2.0, 0.0], "sex": "all",
        "status": ["ok", "ok", "ok"], "log_hr": [0.1, 0.2, 0.3], "se": [0.1, 0.1, 0.1],
    })  # fmt: skip
    shown = shown_estimates(dwas, 2.0)
    assert shown.select("atc_code", "lag_years", "main_lag_not_estimable").rows() == [("A", 2.0, False), ("B", 0.0, True)]


# --------------------------------------------------------------------------------------------------
# Evidence lines, flags and order
# --------------------------------------------------------------------------------------------------

SETTINGS = config_for()["candidates"]


def good_row(**changes) -> dict:
    row = {
        "atc_code": "X01AA01", "atc_level": 5, "direction": "protective", "candidate": True, "n_exposed_cases": 80,
        "calibrated_q": 0.001, "reverse_causation_suspected": False, "lags_tested": 2, "lag_retained_fraction": 0.9,
        "lag_min_exposed_cases": 40, "dose_trend_p": 0.01, "dose_trend_hr": 0.8, "dose_exposed_cases": 80,
        "hr_F": 0.6, "hr_M": 0.7, "n_exposed_cases_F": 50, "n_exposed_cases_M": 30, "sex_heterogeneity_p": 0.5,
        "n_siblings": 2, "sibling_pooled_p": 0.5, "sibling_pooled_log_hr": 0.1, "sibling_exposed_cases": 90,
        "hr_confirmation": 0.7, "ci_lower_confirmation": 0.5, "ci_upper_confirmation": 0.95,
        "n_active_comparator": 300, "n_active_comparator_cases": 3, "n_active_comparator_candidate_cases": 40,
        "hr_active_comparator": 0.13, "ci_lower_active_comparator": 0.04, "ci_upper_active_comparator": 0.45,
        "e_value_ci": 1.3, "mechanism_evidence": None, "shrunken_z": -3.0,
    }  # fmt: skip
    return {**row, **changes}


def test_each_line_is_supported_against_or_not_assessed_with_its_reason():
    lines = evidence_lines(good_row(), SETTINGS)
    assert list(lines) == list(EVIDENCE_LINES)
    assert lines["calibrated"] == lines["lag_robust"] == lines["dose_response"] == "supported"
    assert lines["sex_consistent"] == lines["confirmed"] == "supported"
    assert lines["class_consistent"] == "against"  # siblings pooled p 0.5
    assert lines["robust_to_confounding"] == "against"  # E-value 1.3 < 1.5
    # an active comparator with 3 cases cannot earn a point (the HR 0.13 on < 5 cases)
    assert lines["active_comparator"] == f"not assessed: comparator cases below {SETTINGS['min_evidence_cases']}"
    assert lines["mechanism"].startswith("not assessed: no target shared")


def test_no_line_is_earned_below_the_minimum_of_cases():
    minimum = SETTINGS["min_evidence_cases"]
    lines = evidence_lines(
        good_row(n_exposed_cases=minimum - 1, dose_exposed_cases=minimum - 1, n_exposed_cases_M=2,
                 sibling_exposed_cases=3, lag_min_exposed_cases=minimum - 1, n_active_comparator_cases=200,
                 n_active_comparator_candidate_cases=minimum - 1),
        SETTINGS,
    )  # fmt: skip
    assert not any(v == "supported" for v in lines.values()), lines
    assert all(v.startswith("not assessed") for k, v in lines.items() if k != "mechanism")
    assert lines["calibrated"] == f"not assessed: exposed cases below {minimum}"


def test_missing_person_level_evidence_is_not_assessed_not_against():
    row = good_row(candidate=False, person_level_reason="not a candidate (person-level models are fitted for candidates)",
                   hr_confirmation=None, dose_trend_p=None, n_active_comparator=None)  # fmt: skip
    lines = evidence_lines(row, SETTINGS)
    for name in ("dose_response", "confirmed", "active_comparator"):
        assert lines[name] == "not assessed: not a candidate (person-level models are fitted for candidates)"
    scored = score_rows(pl.DataFrame([row]), SETTINGS).row(0, named=True)
    assessed = [v for v in lines.values() if not v.startswith("not assessed")]
    assert scored["evidence_assessed"] == len(assessed) == 5
    assert scored["evidence_supported"] == sum(v == "supported" for v in assessed) == 3


def test_flags_demote_and_reverse_causation_goes_last():
    assert flags_of(good_row(), evidence_lines(good_row(), SETTINGS), SETTINGS) == []
    small = good_row(n_exposed_cases=SETTINGS["small_numbers_cases"] - 1)
    assert "small_numbers" in flags_of(small, evidence_lines(small, SETTINGS), SETTINGS)
    assert tier(True, []) == 0 and tier(True, ["lag_untestable"]) == 0
    assert tier(True, ["small_numbers"]) == tier(False, []) == 1
    assert tier(True, ["reverse_causation_suspected"]) == tier(False, ["main_lag_not_estimable"]) == 2
    rows = [
        good_row(atc_code="CLEAN", shrunken_z=-2.0),
        good_row(atc_code="STRONG_BUT_UNCONFIRMED", shrunken_z=-6.0, ci_upper_confirmation=1.2),
        good_row(atc_code="SUBTHRESHOLD", candidate=False, calibrated_q=0.3, shrunken_z=-1.5),
        good_row(atc_code="NULLISH", candidate=False, calibrated_q=0.9, shrunken_z=-0.2),
        good_row(atc_code="PRODROMAL", reverse_causation_suspected=True, shrunken_z=-9.0),
        good_row(atc_code="HARM", direction="harmful", shrunken_z=4.0, hr_F=1.5, hr_M=1.4, dose_trend_hr=1.2,
                 ci_lower_confirmation=1.1, ci_upper_confirmation=2.0, hr_confirmation=1.4),
    ]  # fmt: skip
    ranked = order_rows(score_rows(pl.DataFrame(rows), SETTINGS))
    protective = ranked.filter(pl.col("direction") == "protective")
    assert protective["atc_code"].to_list() == ["CLEAN", "STRONG_BUT_UNCONFIRMED", "SUBTHRESHOLD", "NULLISH", "PRODROMAL"]
    assert protective["rank"].to_list() == [1, 2, 3, 4, 5]
    assert ranked.filter(pl.col("direction") == "harmful").select("atc_code", "rank").rows() == [("HARM", 1)]
    assert "not_confirmed_after_adjustment" in protective["flags"][1]


# --------------------------------------------------------------------------------------------------
# Shrinkage, small numbers, calibration warnings
# --------------------------------------------------------------------------------------------------


def test_shrinkage_by_hand():
    prior = LevelPrior(mean=0.1, tau=0.3, n_classes=50)
    post = shrink(np.array([-1.0, -0.5]), np.array([0.5, 0.1]), prior)
    w = 0.09 / (0.09 + np.array([0.25, 0.01]))
    assert post.log_hr == pytest.approx(0.1 + w * (np.array([-1.0, -0.5]) - 0.1))
    assert post.sd == pytest.approx(np.sqrt(w) * np.array([0.5, 0.1]))
    assert post.ci_upper == pytest.approx(post.log_hr + stats.norm.ppf(0.975) * post.sd)
    # the imprecise estimate (HR 0.37 on se 0.5) no longer outranks the precise one (HR 0.61 on se 0.1)
    assert post.z[1] < post.z[0]
    raw = shrink(np.array([-1.0]), np.array([0.5]), LevelPrior(0.0, 0.0, 50))
    assert raw.log_hr[0] == -1.0 and raw.z[0] == pytest.approx(-2.0)


def test_level_prior_recovers_the_spread_of_true_effects():
    rng = np.random.default_rng(11)
    se = rng.uniform(0.05, 0.4, 4000)
    b = rng.normal(0.05, 0.2, se.size) + rng.normal(0, se)
    prior = fit_level_prior(b, se)
    assert prior.mean == pytest.approx(0.05, abs=0.02) and prior.tau == pytest.approx(0.2, abs=0.02)
    assert fit_level_prior(b[:3], se[:3]) is None


def test_groups_drop_singletons_merge_identical_sets_and_scale_by_the_number_of_groups():
    groups = Groups.of(4, {"target": [["T1", "T2"], ["T1", "T2", "T3"], ["T4"], []], "class": [["A"], ["A"], ["B"], ["B"]]})
    target, _ = Groups(4, {"target": groups.loadings["target"]}).matrix()
    # T1 and T2 hit the same two substances: one group; T3 and T4 have one substance each: none
    assert target.shape == (4, 1) and target[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert groups.n_groups("class") == 2
    several = Groups.of(3, {"target": [["T1", "T2"], ["T1"], ["T2"]]}).loadings["target"]
    assert several[0] == pytest.approx([1 / np.sqrt(2)] * 2) and (np.sum(several**2, axis=1) == pytest.approx(1.0))


def test_substances_borrow_from_their_parent_class_and_the_targets_the_mechanisms_stage_matched():
    matches = pl.DataFrame({
        "atc_code": ["R03AC02", "R03AC03", "R03CC02", "N02BE01"],
        "targets": ["ADRB2 (AGONIST)", "ADRB1 (AGONIST); ADRB2 (AGONIST)", "ADRB2 (AGONIST)", None],
    })  # fmt: skip
    targets = targets_of(matches)
    assert targets["R03AC03"] == ["ADRB1 (AGONIST)", "ADRB2 (AGONIST)"] and "N02BE01" not in targets
    codes = ["R03AC02", "R03AC03", "R03CC02", "N02BE01", "N02BE05"]
    groups = level_groups(codes, 5, targets)
    assert groups.loadings["class"][:, 0].tolist() == [1, 1, 0, 0, 0]  # R03AC; N02BE is the second group
    assert (groups.loadings["target"][:3, 0] > 0).all() and groups.n_groups("target") == 1
    assert "target" not in level_groups(["R03A", "R03B"], 3, targets).loadings


def test_hierarchical_posterior_equals_the_dense_matrix_formula():
    rng = np.random.default_rng(5)
    n = 12
    b, se = rng.normal(0, 0.4, n), rng.uniform(0.1, 0.5, n)
    groups = Groups.of(n, {"class": [[f"C{i // 3}"] for i in range(n)], "target": [["T"] if i in (0, 4, 8) else [] for i in range(n)]})
    prior = LevelPrior(mean=0.05, tau=0.2, n_classes=n, tau_group={"class": 0.3, "target": 0.25})
    post = shrink(b, se, prior, groups)
    z_class, z_target = groups.loadings["class"], groups.loadings["target"]
    g = 0.3**2 * z_class @ z_class.T + 0.25**2 * z_target @ z_target.T + 0.2**2 * np.eye(n)  # Cov(theta)
    v = g + np.diag(se**2)
    mean = 0.05 + g @ np.linalg.solve(v, b - 0.05)
    var = np.diag(g - g @ np.linalg.solve(v, g))
    assert post.log_hr == pytest.approx(mean, abs=1e-12) and post.sd == pytest.approx(np.sqrt(var), abs=1e-12)
    # tau = 0: a row with a group is its group's posterior; a row without is left raw
    flat = shrink(b, se, LevelPrior(0.0, 0.0, n, tau_group={"target": 0.3}), groups)
    assert flat.log_hr[0] == pytest.approx(flat.log_hr[4]) and flat.log_hr[1] == b[1] and flat.sd[1] == se[1]


def test_tree_prior_recovers_its_variances_and_borrowing_orders_agreeing_substances_first():
    rng = np.random.default_rng(17)
    n_classes, per_class = 150, 4
    n = n_classes * per_class
    parent = np.repeat(np.arange(n_classes), per_class)
    se = rng.uniform(0.05, 0.3, n)
    theta = 0.02 + rng.normal(0, 0.25, n_classes)[parent] + rng.normal(0, 0.1, n)
    b = theta + rng.normal(0, se)
    groups = Groups.of(n, {"class": [[f"C{p}"] for p in parent]})
    prior = fit_level_prior(b, se, groups)
    assert prior.mean == pytest.approx(0.02, abs=0.05)
    assert prior.group_sd("class") == pytest.approx(0.25, abs=0.04) and prior.tau == pytest.approx(0.1, abs=0.04)
    # the same weak estimate (z = -1.5) ranks higher beside three siblings that agree than beside three at 1
    b2, se2 = np.array([-0.3, -0.4, -0.4, -0.4, -0.3, 0.0, 0.0, 0.0]), np.array([0.2, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1])
    two = Groups.of(8, {"class": [["A"]] * 4 + [["B"]] * 4})
    post = shrink(b2, se2, LevelPrior(0.0, 0.1, 8, tau_group={"class": 0.25}), two)
    assert post.z[0] < post.z[4] < 0
    # without groups the plain normal-normal model (same likelihood as before the hierarchy)
    plain = fit_level_prior(b, se)
    assert plain.tau_group == {} and plain.tau == pytest.approx(np.sqrt(0.25**2 + 0.1**2), abs=0.05)


def test_likelihood_ratio_p_equals_lifelines_and_the_profile_ci_brackets_the_estimate():
    cohort, exposures = synthetic(n=600, seed=5)
    config = config_for()
    model = model_cohort(cohort, config)
    prepared = model.prepared
    fit = likelihood_ratio_fit(model, exposures, "B02", 730)
    strata = ["sex", "birth_cohort", "education"]
    data = split_time_varying(prepared, exposures, ["B02"], 730).join(prepared.select("cohort_row", *strata), on="cohort_row")
    frame = data.select("cohort_row", "start", "stop", pl.col("event").cast(pl.Int8), "B02", *strata).to_pandas()
    fitter = CoxTimeVaryingFitter().fit(frame, id_col="cohort_row", event_col="event", start_col="start", stop_col="stop", strata=strata)
    lr = fitter.log_likelihood_ratio_test()  # 2 (loglik(b_hat) - loglik(0)) on 1 df
    assert fit["lr_log_hr"] == pytest.approx(float(fitter.params_["B02"]), abs=1e-6)
    assert fit["lr_p_value"] == pytest.approx(lr.p_value, rel=1e-6)
    assert fit["lr_ci_lower"] < np.exp(fit["lr_log_hr"]) < fit["lr_ci_upper"]


def test_profile_ci_approaches_wald_with_many_cases():
    cohort, exposures = synthetic(n=6000, seed=8)
    config = config_for()
    model = model_cohort(cohort, config)
    prepared = model.prepared
    fit = likelihood_ratio_fit(model, exposures, "A01", 0)
    strata = ["sex", "birth_cohort", "education"]
    data = split_time_varying(prepared, exposures, ["A01"], 0).join(prepared.select("cohort_row", *strata), on="cohort_row")
    frame = data.select("cohort_row", "start", "stop", pl.col("event").cast(pl.Int8), "A01", *strata).to_pandas()
    fitter = CoxTimeVaryingFitter().fit(frame, id_col="cohort_row", event_col="event", start_col="start", stop_col="stop", strata=strata)
    b, se = float(fitter.params_["A01"]), float(fitter.standard_errors_["A01"])
    assert np.log(fit["lr_ci_lower"]) == pytest.approx(b - 1.959964 * se, abs=0.02 * se + 1e-3)
    assert np.log(fit["lr_ci_upper"]) == pytest.approx(b + 1.959964 * se, abs=0.02 * se + 1e-3)
    # LR statistic and Wald z^2 agree to a few per cent when the log-likelihood is nearly quadratic
    assert stats.chi2.isf(fit["lr_p_value"], 1) == pytest.approx((b / se) ** 2, rel=0.05)


def test_a_degenerate_or_thin_empirical_null_warns(caplog):
    assert null_problems(EmpiricalNull(0.0, 0.1, 100)) == []
    assert "sigma = 0" in null_problems(EmpiricalNull(0.0, 0.0, 100))[0]
    assert "rests on 6 controls" in null_problems(EmpiricalNull(0.0, 0.2, 6))[0]
    rng = np.random.default_rng(2)
    se = np.full(30, 0.2)
    dwas = pl.DataFrame({
        "atc_code": [f"C{i:02d}" for i in range(30)], "atc_level": 2, "lag_years": 2.0, "sex": "all", "status": "ok",
        "log_hr": rng.normal(0, 0.01, 30), "se": se, "q_value": 0.9,
    })  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="repurpose.dwas.candidates"):
        nulls = fit_nulls(dwas, 2.0, 0.05, [])
    assert nulls[2].sigma == 0.0
    assert any(r.levelno == logging.WARNING and "sigma = 0" in r.getMessage() for r in caplog.records)


def test_evidence_needs_at_least_the_releasable_count():
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    with pytest.raises(ConfigError, match="min_evidence_cases"):
        validate_config({**base, "candidates": {"min_evidence_cases": 5}, "disclosure": {"min_cell": 10}})
    assert validate_config(base)["candidates"]["confirmation"]["engine"] == "aggregated"


# --------------------------------------------------------------------------------------------------
# The stage with other lags, and the benchmark's measures
# --------------------------------------------------------------------------------------------------


def test_a_study_with_lags_0_1_3_runs_through_candidates(tmp_path):
    rng = np.random.default_rng(4)
    codes = ["N02BE01", "N02BE05", "N02BA01", "N02AA01", "N02AA05", "N02BE", "N02BA", "N02AA", "N02B", "N02A"]
    rows = []
    for lag in (0.0, 1.0, 3.0):
        for code in codes:
            b = -0.6 if code.startswith("N02BE01") or code in ("N02BE", "N02B") else rng.normal(0, 0.05)
            rows.append({"atc_code": code, "atc_name": code, "atc_level": {3: 2, 4: 3, 5: 4, 7: 5}[len(code)],
                         "lag_years": lag, "sex": "all", "n_persons": 10000, "n_exposed": 500, "n_cases": 300,
                         "n_exposed_cases": 40, "log_hr": b, "se": 0.1, "p_value": float(wald_p_value(b, 0.1)),
                         "q_value": 0.001 if b < -0.3 else 0.6, "status": "ok"})  # fmt: skip
    pl.DataFrame(rows).write_parquet(tmp_path / "dwas.parquet")
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    config = validate_config({**base, "screen": {"lags_years": [0, 1, 3]}, "candidates": {"main_lag_years": 1}})
    run_candidates(config, dwas=tmp_path / "dwas.parquet", cohort=None, exposures=[], healthcare_use=None, matches=None,
                   mechanisms=None, ranking=tmp_path / "drugs.csv", readme=tmp_path / "README.md")  # fmt: skip
    drugs = pl.read_csv(tmp_path / "drugs.csv", infer_schema_length=None)
    assert drugs.columns == drug_ranking_columns(config)
    assert [c for c in drugs.columns if c.startswith("hr_lag")] == ["hr_lag0", "hr_lag1", "hr_lag3"]
    top = drugs.filter((pl.col("direction") == "protective") & (pl.col("rank") == 1)).row(0, named=True)
    assert top["atc_code"] == "N02BE01" and top["also_seen_at"] == "N02B;N02BE" and top["lag_years"] == 1.0
    assert drugs["atc_code"].n_unique() == drugs.height == len(codes) - 2  # N02B and N02BE collapsed
    assert drugs.filter(pl.col("atc_code") == "N02BE01")["evidence_confirmed"][0] == "not assessed: no person-level data (pooled run)"
    readme = (tmp_path / "README.md").read_text()
    assert "| atc_level | mu | sigma | n_controls | warning |" in readme


def test_average_precision_by_hand_and_unlisted_substances_are_ties_at_the_bottom():
    assert average_precision([True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert split_listed(["B", "X", "A"], ["A", "B", "C", "D"]) == (["B", "A"], ["C", "D"])
    roles = {"P1": "causal_protective", "P2": "mechanism", "N1": "null", "N2": "null"}
    measured = recovery(["P2", "N1", "P1"], roles, top=2)
    assert measured["average_precision"] == pytest.approx((1 + 2 / 3) / 2) and measured["nulls_in_top"] == 1
    # P1 left out with N2 and N1: each of the 3 slots after P2 equally likely, so AP = (1 + E[2 / (1 + position)]) / 2
    partial = recovery(["P2"], roles, top=2)
    assert partial["nulls_in_top"] == pytest.approx(2 / 3)
    assert partial["average_precision"] == pytest.approx((1 + (2 / 2 + 2 / 3 + 2 / 4) / 3) / 2, abs=0.01)
    # code order would have put N1 and N2 before P1 every time; ties are not decided by the alphabet
    assert recovery(["P2"], {**roles, "A1": "null"}, top=2)["nulls_in_top"] == pytest.approx(3 / 4)


def test_the_short_list_ordering_puts_candidates_of_both_directions_first_and_the_floor_counts_non_nulls():
    ranking = pl.DataFrame({
        "atc_code": ["P1", "N1", "P2", "H1", "N2", "N3"],
        "direction": ["protective", "protective", "protective", "harmful", "harmful", "harmful"],
        "rank": [1, 2, 3, 1, 2, 3],
        "candidate": [True, False, True, True, False, False],
    })  # fmt: skip
    assert ranking_order(ranking) == ["P1", "N1", "P2", "N3", "N2", "H1"]
    assert short_list_order(ranking, 0.05) == ["P1", "P2", "H1", "N1", "N3", "N2"]
    assert short_list_order(ranking.with_columns(pl.col("candidate").cast(pl.String)), 0.05) == short_list_order(ranking, 0.05)  # as read from CSV
    roles = {"P1": "mechanism", "P2": "causal_protective", "H1": "causal_harmful", "N1": "null", "N2": "null", "N3": "null"}
    assert fewest_nulls_in_top(roles, top=4) == 1 and fewest_nulls_in_top(roles, top=3) == 0
    assert fewest_nulls_in_top(roles, top=20) == 3  # only six substances: all three nulls are in any top 20
    assert recovery(short_list_order(ranking, 0.05), roles, top=4)["nulls_in_top"] == fewest_nulls_in_top(roles, top=4)


@pytest.mark.slow
def test_on_the_demo_each_planted_substance_is_one_row_and_the_null_is_documented(demo_run):
    drugs = pl.read_csv(demo_run / "candidates/drug_ranking.csv", infer_schema_length=None)
    truth = json.loads((demo_run / "simulated/ground_truth.json").read_text())
    planted = [code for code, s in truth["substances"].items() if s["role"] != "null"]
    covered = [c for value in drugs["also_seen_at"].drop_nulls().to_list() for c in value.split(";")]
    assert drugs["atc_code"].n_unique() == drugs.height and not set(covered) & set(drugs["atc_code"].to_list())
    for code in planted:
        assert drugs.filter(pl.col("atc_code") == code).height <= 1 and code not in covered, code
    for direction in ("protective", "harmful"):
        ranks = drugs.filter(pl.col("direction") == direction)["rank"].sort().to_list()
        assert ranks == list(range(1, len(ranks) + 1))
    assert "| atc_level | mu | sigma | n_controls | warning |" in (demo_run / "candidates/README.md").read_text()
