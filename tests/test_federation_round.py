"""A site answers a distributed-fit round only as far as it would publish (issue 15: the round as an oracle).

The attack of the issue: a crafted round file (genuine protocol hash, beta = -30) made every fit's score equal
its exposed-case count, hidden or not. Each test below is one refusal; the first is that attack.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed_driver import run_rounds, site_runner, write_release
from test_distributed import LEVEL, ONLY_AT_A, STRATA, federation, write_site_results
from test_screen import config_for

from repurpose.dwas.screen import screen_exposures
from repurpose.federation.distributed import REFUSED_STATUS, coordinator_round, site_round, start_rounds
from repurpose.federation.secure_sum import SecureAggregationError, decode, masked, write_pair_secret
from repurpose.federation.site_gate import NotReleasedError, read_ledger
from repurpose.layout import results_layout

LAGS = [0.0, 2.0]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """Three sites' results (cohort, exposures) and each site's own screen (raw counts, never released)."""
    root = tmp_path_factory.mktemp("round_sites")
    cohort, exposures = federation(2400, 5)
    dirs = write_site_results(cohort, exposures, root)
    config = config_for(lags_years=LAGS, adjust={"strata": STRATA, "covariates": []})
    screens = {}
    for site, results in dirs.items():
        screens[site] = screen_exposures(
            pl.read_parquet(results / "cohort/cohort.parquet"), pl.read_parquet(results / f"exposure/atc_level_{LEVEL}.parquet"),
            config, LEVEL,
        )  # fmt: skip
    return {"dirs": dirs, "config": config, "screens": screens}


def fresh_site(sites, tmp_path: Path, site: str = "site_a") -> Path:
    """A copy of one site's results (its own ledger starts empty)."""
    results = tmp_path / site / "results"
    shutil.copytree(sites["dirs"][site], results)
    return results


def keys(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("atc_code", "atc_level", "lag_years", "sex")


def small_fits(screen: pl.DataFrame, min_cell: int = 5) -> pl.DataFrame:
    """Fits whose exposed-case count is 1 to min_cell - 1: what the site's package suppresses."""
    return screen.filter(pl.col("n_exposed_cases").is_between(1, min_cell - 1))


def crafted_round(fits: pl.DataFrame, rounds_dir: Path, beta: float) -> Path:
    """A round file with the coordinator's layout, every fit asked at `beta`."""
    path = start_rounds(fits, rounds_dir)
    state = pl.read_parquet(path)
    state.with_columns(beta=pl.Series([[beta] * len(b) for b in state["beta"].to_list()], dtype=pl.List(pl.Float64))).write_parquet(path)
    return path


def test_the_beta_minus_30_oracle_recovers_no_hidden_count(sites, tmp_path):
    """The issue's attack, on a site that released its screen as the package would (small counts hidden)."""
    site = "site_c"  # the smallest site: most small cells
    results = fresh_site(sites, tmp_path, site)
    screen = sites["screens"][site]
    hidden = small_fits(screen)
    assert hidden.height >= 5, "the simulated site must have small cells for the attack to mean anything"
    write_release(results, keys(screen), suppressed=keys(hidden))
    path = crafted_round(keys(hidden), tmp_path / "rounds", -30.0)
    response = pl.read_parquet(site_round(sites["config"], results, path, tmp_path / "out", site))
    truth = response.join(hidden, on=["atc_code", "atc_level", "lag_years", "sex"])
    recovered = truth.filter((pl.col("score").list.first() - pl.col("n_exposed_cases")).abs() < 1e-6)
    assert recovered.height == 0
    assert response["refused"].all() and (response["score"].list.first() == 0).all()


def test_far_out_the_score_is_a_count_so_the_default_bound_refuses_it(sites, tmp_path):
    """Why the bound exists: at beta = -20 (a site configured to the schema's largest bound answers it) each
    score is an integer, the count of cases among the exposed; the default bound (log 20) refuses that point."""
    site = "site_a"
    results = fresh_site(sites, tmp_path, site)
    screen = sites["screens"][site].filter(pl.col("n_exposed_cases") > 0, pl.col("sex") == "all")
    write_release(results, keys(screen))
    asked = keys(screen).head(5)
    loose = {**sites["config"], "federation": {"max_abs_log_hr": 20.0, "max_rounds": 60}}
    far = pl.read_parquet(site_round(loose, results, crafted_round(asked, tmp_path / "r20", -20.0), tmp_path / "o20", site))
    score = far["score"].list.first().to_numpy()
    assert not far["refused"].any() and np.all(score >= 1) and np.allclose(score, np.round(score), atol=1e-6)
    refused = pl.read_parquet(site_round(sites["config"], results, crafted_round(asked, tmp_path / "r", -20.0), tmp_path / "o", site))
    assert refused["refused"].all() and (refused["score"].list.first() == 0).all()
    bounded = pl.read_parquet(site_round(sites["config"], results, crafted_round(asked, tmp_path / "r3", -math.log(20)), tmp_path / "o3", site))
    score = bounded["score"].list.first().to_numpy()
    assert not bounded["refused"].any() and np.all(np.abs(score - np.round(score)) > 1e-3)  # a blend, not a count


def test_a_fit_within_bounds_but_suppressed_in_the_package_is_refused(sites, tmp_path):
    site = "site_c"
    results = fresh_site(sites, tmp_path, site)
    screen = sites["screens"][site]
    hidden = keys(small_fits(screen)).head(3)
    shown = keys(screen.filter(pl.col("n_exposed_cases") >= 5)).head(3)
    write_release(results, keys(screen), suppressed=hidden)
    path = crafted_round(pl.concat([hidden, shown]), tmp_path / "rounds", -1.0)
    response = pl.read_parquet(site_round(sites["config"], results, path, tmp_path / "out", site))
    refused = response.filter("refused")
    assert keys(refused).sort(keys(refused).columns).equals(hidden.sort(hidden.columns))
    assert (refused["score"].list.first() == 0).all() and (refused["loglik"] == 0).all()
    assert (response.filter(~pl.col("refused"))["score"].list.first() != 0).all()


def test_fits_outside_the_protocol_or_the_package_are_refused(sites, tmp_path):
    site = "site_a"
    results = fresh_site(sites, tmp_path, site)
    screen = sites["screens"][site]
    code = screen.filter(pl.col("n_exposed_cases") >= 5)["atc_code"][0]
    write_release(results, keys(screen).filter(pl.col("atc_code") != code))
    asked = pl.DataFrame({"atc_code": [code, "A01", "A01", "Q99"], "atc_level": LEVEL, "lag_years": [0.0, 5.0, 0.0, 0.0],
                          "sex": ["all", "all", "X", "all"]})  # fmt: skip
    response = pl.read_parquet(site_round(sites["config"], results, crafted_round(asked, tmp_path / "r", 0.0), tmp_path / "o", site))
    by_code = {(r["atc_code"], r["lag_years"], r["sex"]): r["refused"] for r in response.iter_rows(named=True)}
    assert by_code[(code, 0.0, "all")]  # the class exists at the site but is not in its package
    assert by_code[("A01", 5.0, "all")]  # lag 5 is not in the site's protocol (lags 0, 2)
    assert by_code[("A01", 0.0, "X")]  # no such sex stratum
    assert not by_code[("Q99", 0.0, "all")]  # a class the site does not have: zeros, as its absence already tells


def test_a_fit_is_answered_at_most_max_rounds_times(sites, tmp_path):
    site = "site_a"
    results = fresh_site(sites, tmp_path, site)
    screen = sites["screens"][site]
    fit = keys(screen.filter(pl.col("n_exposed_cases") >= 5)).head(1)
    write_release(results, keys(screen))
    config = {**sites["config"], "federation": {"max_abs_log_hr": math.log(20), "max_rounds": 3}}
    answers = []
    for attempt in range(5):
        path = crafted_round(fit, tmp_path / f"rounds{attempt}", -0.5 + 0.1 * attempt)  # a new coordinator each time
        answers.append(not pl.read_parquet(site_round(config, results, path, tmp_path / "out", site))["refused"][0])
    assert answers == [True, True, True, False, False]
    ledger = read_ledger(results_layout(results).site_round_ledger())
    assert list(ledger["evaluations"].values()) == [3] and len(ledger["rounds"]) == 5


def test_no_released_package_no_answer(sites, tmp_path):
    site = "site_b"
    results = fresh_site(sites, tmp_path, site)
    path = crafted_round(keys(sites["screens"][site]).head(2), tmp_path / "rounds", 0.0)
    with pytest.raises(NotReleasedError, match="holds no site package"):
        site_round(sites["config"], results, path, tmp_path / "out", site)
    package = write_release(results, keys(sites["screens"][site]))
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["files"]["fits.parquet"]["sha256"] = "0" * 64  # the package was altered after release
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NotReleasedError, match="differs from its manifest checksum"):
        site_round(sites["config"], results, path, tmp_path / "out", site)


def test_a_fit_one_site_refuses_gets_no_pooled_estimate_and_the_others_are_exact(sites, tmp_path):
    fits = pl.DataFrame({"atc_code": ["A01", "B02", ONLY_AT_A], "atc_level": LEVEL, "lag_years": 0.0, "sex": "all"})
    dirs = {}
    for site in sites["dirs"]:
        dirs[site] = fresh_site(sites, tmp_path, site)
        hidden = fits.filter(pl.col("atc_code") == "B02") if site == "site_c" else None
        write_release(dirs[site], fits, suppressed=hidden)
    runs = [site_runner(sites["config"], d, tmp_path / "exchange" / s, s) for s, d in dirs.items()]
    result = pl.read_parquet(run_rounds(runs, tmp_path / "rounds", fits)).sort("atc_code")
    assert result.filter(atc_code="B02")["status"].to_list() == [REFUSED_STATUS]
    assert result.filter(atc_code="B02")["log_hr"].is_null().all() or result.filter(atc_code="B02")["log_hr"].is_nan().all()
    # the other fits are the same as in an exchange without B02
    alone = tmp_path / "alone"
    runs = [site_runner(sites["config"], d, alone / "exchange" / s, s) for s, d in dirs.items()]
    other = pl.read_parquet(run_rounds(runs, alone / "rounds", fits.filter(pl.col("atc_code") != "B02"))).sort("atc_code")
    kept = result.filter(pl.col("atc_code") != "B02")
    assert kept["status"].to_list() == other["status"].to_list() == ["ok", "ok"]
    assert np.allclose(kept["log_hr"].to_numpy(), other["log_hr"].to_numpy(), rtol=0, atol=1e-12)


def test_coordinator_stops_a_refused_fit(tmp_path):
    """Hand-made responses: a fit refused by one site is done at once with the refused status."""
    fits = pl.DataFrame({"atc_code": ["X01", "X02"], "atc_level": [LEVEL] * 2, "lag_years": [0.0] * 2, "sex": ["M"] * 2})
    path = start_rounds(fits, tmp_path / "rounds")
    state = pl.read_parquet(path)
    out = tmp_path / "response_001_x.parquet"
    state.select(
        "fit_id", "atc_code", "atc_level", "lag_years", "sex", "round", site_label=pl.lit("x"),
        protocol_hash="protocol_hash", design_names="design_names", has_events=pl.lit(True),
        refused=pl.Series([True, False]), loglik=pl.lit(-5.0), score=pl.lit([0.5]), information=pl.lit([2.0]),
    ).write_parquet(out)
    following = pl.read_parquet(coordinator_round(tmp_path / "rounds", [out]))
    assert following["status"].to_list() == [REFUSED_STATUS, ""] and following["evaluate"].to_list() == [False, True]


# ---------------------------------------------------------------- secure aggregation


def secure_config(config: dict, secrets_dir: Path, peers: list[str]) -> dict:
    settings = {"max_abs_log_hr": math.log(20), "max_rounds": 60, "secure_aggregation": {"peers": peers, "secrets_dir": str(secrets_dir)}}
    return {**config, "federation": settings}


def test_secure_aggregation_pools_exactly_and_hides_each_site(sites, tmp_path):
    labels = sorted(sites["dirs"])
    secrets_dir = tmp_path / "secrets"  # in practice each site holds only its own pairs' files
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            write_pair_secret(secrets_dir, a, b)
    fits = pl.DataFrame({"atc_code": ["A01", "B02", "C03", ONLY_AT_A], "atc_level": LEVEL, "lag_years": 0.0, "sex": "all"})
    plain_dirs, secure_dirs = {}, {}
    for site in labels:
        plain_dirs[site] = fresh_site(sites, tmp_path / "plain", site)
        secure_dirs[site] = fresh_site(sites, tmp_path / "secure", site)
        write_release(plain_dirs[site], fits)
        write_release(secure_dirs[site], fits)
    plain = pl.read_parquet(run_rounds(
        [site_runner(sites["config"], plain_dirs[s], tmp_path / "plain_x" / s, s) for s in labels], tmp_path / "plain_rounds", fits))
    config = secure_config(sites["config"], secrets_dir, labels)
    secure = pl.read_parquet(run_rounds(
        [site_runner(config, secure_dirs[s], tmp_path / "secure_x" / s, s) for s in labels], tmp_path / "secure_rounds", fits))
    assert secure["status"].to_list() == plain["status"].to_list() and (plain["status"] == "ok").sum() >= 3
    assert np.nanmax(np.abs(secure["log_hr"].to_numpy() - plain["log_hr"].to_numpy())) <= 1e-9
    assert np.nanmax(np.abs(secure["se"].to_numpy() - plain["se"].to_numpy())) <= 1e-9

    # One site's masked answer to round 1 against its true (plain) answer to the same round file
    first = tmp_path / "secure_rounds/round_001.parquet"
    truth = pl.read_parquet(site_round(sites["config"], plain_dirs["site_a"], first, tmp_path / "truth", "site_a"))
    answer = pl.read_parquet(tmp_path / "secure_x/site_a/response_001_site_a.parquet")
    assert (answer["loglik"] == 0).all() and not answer["has_events"].any()  # nothing in the clear
    words = np.concatenate([np.asarray(w, dtype=np.uint64) for w in answer["masked"].to_list()])
    values = np.concatenate([[float(e), ll, *sc, *inf] for e, ll, sc, inf in
                             truth.select("has_events", "loglik", "score", "information").iter_rows()])
    assert words.size == values.size >= 12
    assert np.all(np.abs(decode(words) - values) > 1e3)  # decoding one answer alone gives nothing near the truth
    # Uniform words spread their top nibbles: 12 or more words show at most 3 of the 16 values with probability
    # about 1e-6 (the masks are random per run), while fixed-point values in the clear would share one or two.
    top_bits = (words >> np.uint64(60)).astype(int)
    assert len(set(top_bits.tolist())) >= 4
    # the same values under the next round's masks share nothing: the masks, not the values, set the words
    other = masked(values, "site_a", labels, secrets_dir, "f" * 64)
    assert not np.any(other == words)


def test_secure_aggregation_needs_three_sites_and_every_pair_secret(tmp_path):
    write_pair_secret(tmp_path, "a", "b")
    with pytest.raises(SecureAggregationError, match="at least 3 sites"):
        masked(np.ones(3), "a", ["a", "b"], tmp_path, "0" * 64)
    with pytest.raises(SecureAggregationError, match="no secret shared with 'c'"):
        masked(np.ones(3), "a", ["b", "c"], tmp_path, "0" * 64)
