"""The screen recovers the simulator's planted truth and rejects what is not there.

One simulated population of 200,000 persons (about 2,600 incident MS cases; conftest's
`registries_200k`) goes through the shared full run (conftest's `run_200k`, also read by test_candidates_recovery):
validate -> cohort -> exposure -> screen; the roles of substances are read from ground_truth.json,
so nothing here depends on which substances the simulator happened to plant.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from scipy import stats

from repurpose.layout import results_layout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CAUSAL = ("causal_protective", "causal_harmful", "mechanism")


@pytest.fixture(scope="module")
def screened(run_200k, registries_200k) -> tuple[pl.DataFrame, dict]:
    """The exact level-5 fits of the shared full run (the released table hides rows with small cells)."""
    results, _ = run_200k
    dwas = pl.read_parquet(results_layout(results).screen_fits()).filter(pl.col("atc_level") == 5)
    truth = json.loads((registries_200k / "ground_truth.json").read_text())
    roles = pl.DataFrame([{"atc_code": code, "role": s["role"], "planted_hr": s["planted_hr"]} for code, s in truth["substances"].items()])
    return dwas.filter(pl.col("sex") == "all").join(roles, on="atc_code"), truth


def lag(results: pl.DataFrame, years: float) -> pl.DataFrame:
    return results.filter(pl.col("lag_years") == years)


def test_planted_causal_substances_are_significant_in_the_planted_direction(screened):
    results, _ = screened
    causal = lag(results, 0).filter(pl.col("role").is_in(["causal_protective", "causal_harmful"]))
    assert causal.height >= 4
    for row in causal.iter_rows(named=True):
        assert row["q_value"] < 0.05, row
        assert (row["hr"] < 1) == (row["planted_hr"] < 1), row


def test_confidence_intervals_cover_the_planted_hazard_ratios(screened):
    # 95% intervals: with ~12 planted substances about one miss is expected; more than 20% would be bias.
    results, _ = screened
    planted = lag(results, 0).filter(pl.col("role").is_in(CAUSAL), pl.col("status") == "ok")
    covered = planted.filter((pl.col("ci_lower") <= pl.col("planted_hr")) & (pl.col("planted_hr") <= pl.col("ci_upper")))
    assert covered.height >= 0.8 * planted.height, planted.select("atc_code", "planted_hr", "hr", "ci_lower", "ci_upper")


def test_mechanism_substances_are_all_protective(screened):
    results, truth = screened
    mechanism = lag(results, 0).filter(pl.col("atc_code").is_in(truth["mechanism"]["substances"]), pl.col("status") == "ok")
    assert mechanism.height >= 3
    assert (mechanism["hr"] < 1).all(), mechanism.select("atc_code", "hr", "ci_lower", "ci_upper")


def test_prodromal_substances_fade_with_lag(screened):
    results, _ = screened
    prodromal = results.filter(pl.col("role") == "prodromal")
    assert prodromal["atc_code"].n_unique() >= 2
    assert (lag(prodromal, 0)["q_value"] < 0.05).all()
    late = prodromal.filter(pl.col("lag_years") >= 5)
    assert not (late["q_value"].fill_null(1.0).fill_nan(1.0) < 0.05).any(), late


def test_null_substances_have_uniform_p_values(screened):
    results, _ = screened
    nulls = lag(results, 0).filter(pl.col("role") == "null", pl.col("status") == "ok")
    assert nulls.height >= 100
    assert stats.kstest(nulls["p_value"].to_numpy(), "uniform").pvalue > 0.01
