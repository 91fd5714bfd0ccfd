"""Distributed Newton-Raphson through round files equals the Cox model stratified by site on the pooled data."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed_driver import run_rounds, site_runner, write_release
from lifelines import CoxTimeVaryingFitter
from split_intervals import split_class_intervals
from test_screen import config_for, synthetic_cohort, synthetic_exposures

from repurpose.cox.engine import fit_efron
from repurpose.cox.risk_set_table import aggregate_counting_process
from repurpose.dwas.risk_sets import prepare_cohort
from repurpose.dwas.window import lag_days
from repurpose.federation.distributed import (
    FORBIDDEN_COLUMNS,
    RESPONSE_COLUMNS,
    ProtocolMismatchError,
    coordinator_round,
    latest_round,
    site_round,
    start_rounds,
)

LEVEL = 3
LAGS = [0.0, 2.0]
SEXES = ["all", "F", "M"]
STRATA = ["sex", "birth_cohort", "education"]
SITE_SHARES = {"site_a": 0.5, "site_b": 0.3, "site_c": 0.2}
ONLY_AT_A = "F06"  # a class dispensed at site_a only
NOWHERE = "Z99"  # a fit no site has
EVERYONE = "S07"  # a class everybody uses from before entry


def federation(n_persons: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Pooled cohort (with its `site`) and exposures; one class exists at one site only."""
    cohort = synthetic_cohort(n_persons, seed)
    rng = np.random.default_rng(seed + 10)
    sites = list(SITE_SHARES)
    cohort = cohort.with_columns(site=pl.Series(rng.choice(sites, cohort.height, p=list(SITE_SHARES.values()))))
    exposures = synthetic_exposures(cohort.drop("site"), seed)
    at_a = cohort.filter((pl.col("site") == "site_a") & pl.Series(rng.random(cohort.height) < 0.25))
    only_a = at_a.select(
        "person_id", atc_code=pl.lit(ONLY_AT_A),
        exposure_start_age_days=(pl.col("entry_age_days") + 400).cast(pl.Int32),
    )
    # Everyone exposed from before entry: at lag 0 the exposure never varies within a risk set.
    everyone = cohort.select(
        "person_id", atc_code=pl.lit(EVERYONE), exposure_start_age_days=(pl.col("entry_age_days") - 100).cast(pl.Int32)
    )
    return cohort, pl.concat([exposures, only_a, everyone])


def write_site_results(cohort: pl.DataFrame, exposures: pl.DataFrame, root: Path) -> dict[str, Path]:
    """Each site's results directory: cohort/cohort.parquet and exposure/atc_level_3.parquet, its persons only."""
    dirs = {}
    for site in SITE_SHARES:
        local = cohort.filter(pl.col("site") == site).drop("site")
        results = root / site / "results"
        (results / "cohort").mkdir(parents=True)
        (results / "exposure").mkdir()
        local.write_parquet(results / "cohort" / "cohort.parquet")
        exposures.join(local.select("person_id"), on="person_id").with_columns(
            atc_level=pl.lit(LEVEL, pl.Int8)
        ).write_parquet(results / "exposure" / f"atc_level_{LEVEL}.parquet")
        dirs[site] = results
    return dirs


def all_fits(codes: list[str]) -> pl.DataFrame:
    rows = [(c, LEVEL, lag, sex) for c in codes for lag in LAGS for sex in SEXES]
    return pl.DataFrame(rows, schema=["atc_code", "atc_level", "lag_years", "sex"], orient="row")


def split_rows(cohort: pl.DataFrame, exposures: pl.DataFrame, code: str, lag: float, sex: str) -> pl.DataFrame:
    """Explicit person-interval rows of one fit on the pooled data, with the site kept as a stratum."""
    prepared = prepare_cohort(cohort, 10).drop("entry", "exit")
    if sex != "all":
        prepared = prepared.filter(pl.col("sex") == sex)
    return split_class_intervals(prepared, exposures.filter(pl.col("atc_code") == code), lag_days(lag))


def pooled_reference(cohort: pl.DataFrame, exposures: pl.DataFrame, fits: pl.DataFrame) -> pl.DataFrame:
    """Single-dataset Cox of every fit on the pooled person-level rows, strata = adjustment strata x site."""
    parts = []
    for fit, row in enumerate(fits.iter_rows(named=True)):
        split = split_rows(cohort, exposures, row["atc_code"], row["lag_years"], row["sex"])
        parts.append(split.select("start", "stop", "event", "exposed", *STRATA, "site", fit=pl.lit(fit)))
    rows = pl.concat(parts)
    stratum = np.unique(rows.select(pl.concat_str([*STRATA, "site"], separator="|"))
                        .to_series().to_numpy().astype(str), return_inverse=True)[1]
    table = aggregate_counting_process(
        rows["start"].to_numpy(), rows["stop"].to_numpy(), rows["event"].to_numpy(),
        rows["exposed"].to_numpy().astype(float), strata=stratum, fit_index=rows["fit"].to_numpy(),
        n_fits=fits.height,
    )
    result = fit_efron(table)
    return fits.with_columns(ref_log_hr=result.coef[:, 0], ref_se=result.se[:, 0],
                             ref_status=pl.Series(result.status.astype(str)))


def lifelines_reference(cohort: pl.DataFrame, exposures: pl.DataFrame, code: str, lag: float, sex: str):
    split = split_rows(cohort, exposures, code, lag, sex)
    frame = split.select("start", "stop", "event", "exposed", *STRATA, "site").to_pandas()
    frame["event"] = frame["event"].astype(int)
    model = CoxTimeVaryingFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(frame, event_col="event", start_col="start", stop_col="stop", strata=[*STRATA, "site"],
                  fit_options={"precision": 1e-12, "r_precision": 1e-14, "max_steps": 200})
    return float(model.params_["exposed"]), float(model.standard_errors_["exposed"])


@pytest.fixture(scope="module")
def pooled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    cohort, exposures = federation(3000, 11)
    site_dirs = write_site_results(cohort, exposures, root)
    config = config_for(lags_years=LAGS, adjust={"strata": STRATA, "covariates": []})
    # E05 (non-cases only) runs to separation, past |beta| = 8: these sites agree to be evaluated out to
    # |beta| <= 12 so that every fit of the reference can be pooled (the default bound is log 20).
    config = {**config, "federation": {"max_abs_log_hr": 12.0, "max_rounds": 60}}
    codes = sorted(exposures["atc_code"].unique().to_list()) + [NOWHERE]
    fits = all_fits(codes)
    for d in site_dirs.values():
        write_release(d, fits, protocol_hash="protocol-v1")
    runs = [site_runner(config, d, root / "exchange" / site, site, protocol_hash="protocol-v1")
            for site, d in site_dirs.items()]
    started = time.perf_counter()
    result_path = run_rounds(runs, root / "coordinator" / "rounds", fits, protocol_hash="protocol-v1")
    elapsed = time.perf_counter() - started
    result = pl.read_parquet(result_path)
    return {"root": root, "cohort": cohort, "exposures": exposures, "fits": fits, "config": config,
            "site_dirs": site_dirs, "result": result, "elapsed": elapsed}


def test_pooled_estimates_equal_cox_stratified_by_site(pooled_run):
    result, fits = pooled_run["result"], pooled_run["fits"]
    assert result.height == fits.height
    reference = pooled_reference(pooled_run["cohort"], pooled_run["exposures"],
                                 fits.filter(pl.col("atc_code") != NOWHERE))
    joined = reference.join(result, on=["atc_code", "atc_level", "lag_years", "sex"])
    assert joined.height == reference.height
    assert (joined["status"] == joined["ref_status"]).all(), joined.filter(pl.col("status") != pl.col("ref_status"))
    ok = joined.filter(pl.col("status") == "ok")
    assert ok.height >= 24
    d_log_hr = (ok["log_hr"] - ok["ref_log_hr"]).abs().max()
    d_se = ((ok["se"] - ok["ref_se"]).abs() / ok["ref_se"]).max()
    print(f"\nmax |dlogHR| = {d_log_hr:.2e}, max rel |dSE| = {d_se:.2e}, "
          f"rounds = {result['n_rounds'].max()} (ok fits: {ok['n_rounds'].max()}), "
          f"in-process exchange {pooled_run['elapsed']:.1f} s")
    assert d_log_hr <= 1e-6
    assert d_se <= 1e-6


def test_a_few_fits_equal_lifelines_stratified_by_site(pooled_run):
    result = pooled_run["result"]
    for code, lag, sex in (("B02", 2.0, "F"), (ONLY_AT_A, 0.0, "M")):
        row = result.filter(atc_code=code, lag_years=lag, sex=sex).row(0, named=True)
        log_hr, se = lifelines_reference(pooled_run["cohort"], pooled_run["exposures"], code, lag, sex)
        assert row["status"] == "ok"
        assert abs(row["log_hr"] - log_hr) <= 1e-6
        assert abs(row["se"] - se) / se <= 1e-5


def test_rounds_are_few_and_statuses_are_reported(pooled_run):
    result = pooled_run["result"]
    ok = result.filter(pl.col("status") == "ok")
    assert ok["n_rounds"].max() <= 8  # Newton on a concave likelihood: a handful of rounds
    assert ok["converged"].all()
    nowhere = result.filter(atc_code=NOWHERE)
    assert (nowhere["status"] == "no_events").all() and nowhere["log_hr"].is_nan().all()
    # E05 is used by non-cases only: the likelihood is monotone, reported as separation, not as an estimate.
    assert (result.filter(atc_code="E05")["status"] == "separation").all()
    everyone = result.filter(atc_code=EVERYONE, lag_years=0.0)
    assert (everyone["status"] == "singular_information").all() and everyone["se"].is_nan().all()


def test_fit_at_one_site_only(pooled_run):
    rounds_dir = pooled_run["root"] / "coordinator" / "rounds"
    first = pl.read_parquet(rounds_dir / "round_001.parquet")
    fit_ids = first.filter(atc_code=ONLY_AT_A)["fit_id"].to_list()
    for site in SITE_SHARES:
        response = pl.read_parquet(pooled_run["root"] / "exchange" / site / f"response_001_{site}.parquet")
        mine = response.filter(pl.col("fit_id").is_in(fit_ids))
        assert mine["has_events"].all() == (site == "site_a")
        if site != "site_a":
            assert (mine["loglik"] == 0).all() and mine["score"].list.eval(pl.element().abs()).list.sum().max() == 0
    rows = pooled_run["result"].filter(atc_code=ONLY_AT_A)
    assert (rows["status"] == "ok").all()


def test_round_and_response_files_hold_no_person_level_data_or_counts(pooled_run):
    root = pooled_run["root"]
    files = list((root / "coordinator" / "rounds").glob("round_*.parquet"))
    responses = list((root / "exchange").rglob("response_*.parquet"))
    assert files and responses
    n_fits = pooled_run["fits"].height
    for path in files + responses:
        frame = pl.read_parquet(path)
        assert not set(frame.columns) & set(FORBIDDEN_COLUMNS), path
        assert not any(("age" in c or "date" in c or c.startswith("n_")) and c != "n_iter" for c in frame.columns)
        assert frame.height <= n_fits  # one row per fit at most: nothing per person or per event time
    for path in responses:
        assert pl.read_parquet(path).columns == list(RESPONSE_COLUMNS)


def test_round_with_another_protocol_is_refused(pooled_run, tmp_path):
    site, results = next(iter(pooled_run["site_dirs"].items()))
    path = start_rounds(pooled_run["fits"].head(2), tmp_path / "rounds", protocol_hash="protocol-v2")
    with pytest.raises(ProtocolMismatchError, match="protocol-v2"):
        site_round(pooled_run["config"], results, path, tmp_path / "out", site, protocol_hash="protocol-v1")


def test_response_to_another_round_is_refused(pooled_run, tmp_path):
    site, results = next(iter(pooled_run["site_dirs"].items()))
    fits = pooled_run["fits"].filter(atc_code="A01")
    first = start_rounds(fits, tmp_path / "rounds")
    response = site_round(pooled_run["config"], results, first, tmp_path / "out", site)
    second = coordinator_round(tmp_path / "rounds", [response])
    assert second is not None and latest_round(tmp_path / "rounds") == second
    with pytest.raises(ValueError, match="round"):
        coordinator_round(tmp_path / "rounds", [response])


def test_cli_rounds_through_files_give_the_same_result(pooled_run, tmp_path):
    from repurpose.cli import main

    config_path = tmp_path / "site.yaml"
    config_path.write_text(
        "inputs: {population: {path: x}, prescriptions: {path: x}, ms_registry: {path: x}}\n"
        f"screen: {{lags_years: {LAGS}, adjust: {{strata: {STRATA}, covariates: []}}}}\n"
    )
    fits = pooled_run["fits"].filter(pl.col("atc_code").is_in(["A01", ONLY_AT_A]))
    rounds_dir = tmp_path / "pooled" / "rounds"
    current = start_rounds(fits, rounds_dir)
    for _ in range(20):
        responses = []
        for site, results in pooled_run["site_dirs"].items():
            assert main(["site-round", str(current), "--config", str(config_path), "--results", str(results),
                         "--out", str(tmp_path / site), "--site-label", site]) == 0
            responses.append(str(tmp_path / site / f"{current.stem.replace('round', 'response')}_{site}.parquet"))
        assert main(["pool-round", str(rounds_dir), *responses]) == 0
        if not (rounds_dir / f"round_{int(current.stem[-3:]) + 1:03d}.parquet").exists():
            break
        current = latest_round(rounds_dir)
    result = pl.read_parquet(tmp_path / "pooled" / "cox.parquet")
    expected = pooled_run["result"].join(fits, on=list(fits.columns))
    joined = result.join(expected, on=list(fits.columns), suffix="_in_process")
    assert joined.height == fits.height
    assert ((joined["log_hr"] - joined["log_hr_in_process"]).abs() <= 1e-12).all()


def global_dummies(frame: pl.DataFrame, levels: dict[str, list[str]]) -> pl.DataFrame:
    return frame.with_columns(
        [(pl.col(v) == lv).cast(pl.Float64).alias(f"{v}={lv}") for v, lvs in levels.items() for lv in lvs[1:]]
    )


def test_categorical_covariates_are_aligned_by_name_across_sites(tmp_path):
    cohort, exposures = federation(1500, 21)
    # Site b has no person in the global reference birth cohort, and only site a has education level 4:
    # their local dummies differ from the global coding, which the sites must recode by name.
    cohort = cohort.with_columns(
        birth_year=pl.when((pl.col("site") == "site_b") & (pl.col("birth_year") < 1960)).then(1965)
        .otherwise(pl.col("birth_year")).cast(pl.Int32),
        education=pl.when((pl.col("site") != "site_a") & (pl.col("education") == 4)).then(3)
        .otherwise(pl.col("education")),
    )
    site_dirs = write_site_results(cohort, exposures, tmp_path)
    strata, covariates = ["sex"], ["birth_cohort", "education"]
    config = config_for(lags_years=[0.0], adjust={"strata": strata, "covariates": covariates})
    prepared = prepare_cohort(cohort, 10)
    levels = {v: sorted(prepared[v].unique().to_list()) for v in covariates}
    fits = pl.DataFrame({"atc_code": ["A01", "B02", ONLY_AT_A], "atc_level": LEVEL, "lag_years": 0.0, "sex": "F"})
    for d in site_dirs.values():
        write_release(d, fits)
    runs = [site_runner(config, d, tmp_path / "exchange" / s, s) for s, d in site_dirs.items()]
    result = pl.read_parquet(run_rounds(runs, tmp_path / "rounds", fits, covariate_levels=levels))
    names = result["design_names"][0].to_list()
    assert names == ["exposed"] + [f"{v}={lv}" for v in covariates for lv in levels[v][1:]]

    for row in result.iter_rows(named=True):
        split = global_dummies(split_rows(cohort, exposures, row["atc_code"], 0.0, "F"), levels)
        # The screen's covariate model uses the strata (here sex x site) in which the class has exposed
        # persons; the others inform only the covariates and are left out, at one site as in the pool.
        split = split.filter(pl.col("exposed").max().over(["sex", "site"]) == 1)
        stratum = np.unique(split.select(pl.concat_str(["sex", "site"])).to_series().to_numpy().astype(str),
                            return_inverse=True)[1]
        design = split.select(names[0], *names[1:]).to_numpy().astype(float)
        reference = fit_efron(aggregate_counting_process(
            split["start"].to_numpy(), split["stop"].to_numpy(), split["event"].to_numpy(), design, strata=stratum))
        assert row["status"] == "ok"
        assert np.max(np.abs(np.array(row["coefficients"]) - reference.coef[0])) <= 1e-6
        assert np.max(np.abs(np.array(row["standard_errors"]) - reference.se[0]) / reference.se[0]) <= 1e-6


def test_site_checks_the_round_against_its_own_protocol_file(pooled_run, tmp_path):
    protocol = pytest.importorskip("repurpose.protocol")
    from repurpose.study_config import load_config

    protocol_file = tmp_path / "protocol.yaml"
    protocol_file.write_text(protocol.protocol_yaml(protocol.design_of_config(pooled_run["config"])))
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(
        f"protocol: {protocol_file}\n"
        "inputs: {population: {path: x}, prescriptions: {path: x}, ms_registry: {path: x}}\n"
    )
    site_config = load_config(site_yaml)
    shared_hash = protocol.protocol_hash(protocol.read_protocol(protocol_file))
    site, results = next(iter(pooled_run["site_dirs"].items()))
    fits = pooled_run["fits"].filter(atc_code="A01")
    package = write_release(tmp_path / "released", fits, protocol_hash=shared_hash)  # released under this protocol
    good = start_rounds(fits, tmp_path / "good", protocol_hash=shared_hash)
    response = pl.read_parquet(site_round(site_config, results, good, tmp_path / "out", site, package=package))
    assert (response["protocol_hash"] == shared_hash).all()
    bad = start_rounds(fits, tmp_path / "bad", protocol_hash="0" * 64)
    with pytest.raises(ProtocolMismatchError):
        site_round(site_config, results, bad, tmp_path / "out", site, package=package)
    with pytest.raises(ProtocolMismatchError, match="was released for protocol protocol-v1"):
        site_round(site_config, results, good, tmp_path / "out", site)  # its own package was made for another


def test_every_site_must_answer_every_round(pooled_run, tmp_path):
    (site_a, results_a), (site_b, results_b) = list(pooled_run["site_dirs"].items())[:2]
    first = start_rounds(pooled_run["fits"].filter(atc_code="A01"), tmp_path / "rounds")
    responses = [site_round(pooled_run["config"], r, first, tmp_path / s, s)
                 for s, r in ((site_a, results_a), (site_b, results_b))]
    second = coordinator_round(tmp_path / "rounds", responses)
    only_a = site_round(pooled_run["config"], results_a, second, tmp_path / site_a, site_a)
    with pytest.raises(ValueError, match="every site must answer every round"):
        coordinator_round(tmp_path / "rounds", [only_a])


def test_coordinator_flags_a_likelihood_that_flattens_out_at_infinity(tmp_path):
    """One huge Newton step to where exp() underflows: information 0 at a large coefficient is separation."""
    fits = pl.DataFrame({"atc_code": ["X01"], "atc_level": [LEVEL], "lag_years": [0.0], "sex": ["M"]})
    path = start_rounds(fits, tmp_path / "rounds")

    def respond(path: Path, loglik: float, score: float, information: float) -> Path:
        state = pl.read_parquet(path)
        out = tmp_path / f"response_{int(state['round'][0]):03d}_x.parquet"
        state.select(
            "fit_id", "atc_code", "atc_level", "lag_years", "sex", "round", site_label=pl.lit("x"),
            protocol_hash="protocol_hash", design_names="design_names", has_events=pl.lit(True),
            loglik=pl.lit(loglik), score=pl.lit([score]), information=pl.lit([information]),
        ).write_parquet(out)
        return out

    path = coordinator_round(tmp_path / "rounds", [respond(path, -5.2, 0.9945, 0.0055)])
    assert pl.read_parquet(path)["beta"][0][0] == pytest.approx(0.9945 / 0.0055)
    while path is not None:
        path = coordinator_round(tmp_path / "rounds", [respond(path, 0.0, 0.0, 0.0)])
    result = pl.read_parquet(tmp_path / "cox.parquet").row(0, named=True)
    assert result["status"] == "separation" and not result["converged"] and result["log_hr"] > 100
