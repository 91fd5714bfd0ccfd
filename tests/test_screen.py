"""The screen equals lifelines CoxTimeVaryingFitter on the explicitly split data of each class (same model)."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from lifelines import CoxTimeVaryingFitter
from r_survival import r_survival_missing
from split_intervals import split_class_intervals

from repurpose.config import validate_config
from repurpose.dwas.risk_sets import prepare_cohort
from repurpose.dwas.screen import add_q_values, gather_screen, screen_exposures
from repurpose.dwas.window import lag_days
from repurpose.release.disclosure import DisclosurePolicy, release_screen
from repurpose.schemas import FIT_KEYS as KEYS
from repurpose.schemas import SCREEN_PART_SCHEMA

LOG_HR_TOLERANCE = 1e-6
RELATIVE_SE_TOLERANCE = 1e-5
TIES_GRID_DAYS = 60  # exits rounded to a 60-day grid: many tied event ages, and entries on event ages


def synthetic_cohort(n: int, seed: int) -> pl.DataFrame:
    """A cohort with heavy ties, delayed entry, some entries exactly at others' event ages."""
    rng = np.random.default_rng(seed)
    entry = rng.integers(18 * 365, 45 * 365, n)
    on_grid = rng.random(n) < 0.3
    entry = np.where(on_grid, (entry // TIES_GRID_DAYS) * TIES_GRID_DAYS, entry)
    exit_ = entry + rng.integers(200, 12 * 365, n)
    exit_ = np.maximum(entry + 1, (exit_ // TIES_GRID_DAYS) * TIES_GRID_DAYS)
    education = rng.choice([0, 1, 2, 3, 4, -1], n)
    return pl.DataFrame({
        "person_id": np.arange(1, n + 1) * 7,
        "sex": rng.choice(["F", "M"], n, p=[0.6, 0.4]),
        "birth_year": rng.integers(1950, 1985, n).astype(np.int32),
        "education": pl.Series(education, dtype=pl.Int32).replace(-1, None),
        "entry_age_days": entry.astype(np.int32),
        "exit_age_days": exit_.astype(np.int32),
        "event": rng.random(n) < 0.2,
    })


def synthetic_exposures(cohort: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Classes with different prevalence, effects, exposure before entry, and one used only by non-cases."""
    rng = np.random.default_rng(seed + 1)
    n = cohort.height
    event = cohort["event"].to_numpy()
    rows = []
    for code, prevalence, case_boost in (("A01", 0.3, 1.0), ("B02", 0.15, 2.0), ("C03", 0.4, 0.5), ("D04", 0.08, 1.0)):
        user = rng.random(n) < prevalence * np.where(event, case_boost, 1.0)
        start = cohort["entry_age_days"].to_numpy() + rng.integers(-5 * 365, 12 * 365, n)
        rows.append(pl.DataFrame({"person_id": cohort["person_id"].to_numpy()[user], "atc_code": code,
                                  "exposure_start_age_days": start[user].astype(np.int32)}))
    non_case = ~event & (rng.random(n) < 0.1)
    rows.append(pl.DataFrame({"person_id": cohort["person_id"].to_numpy()[non_case], "atc_code": "E05",
                              "exposure_start_age_days": cohort["entry_age_days"].to_numpy()[non_case]}))
    return pl.concat(rows)


def config_for(**screen):
    """A validated config; a `min_exposed_cases` below the minimum cell (engine tests fit on 0 or 1 exposed
    cases) is set after validation, since a run's config check refuses it (the release would hide those fits)."""
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    few = {"min_exposed_cases": screen.pop("min_exposed_cases")} if screen.get("min_exposed_cases", 5) < 5 else {}
    screen = {"lags_years": [0, 2], **screen}
    config = validate_config({**base, "screen": screen, "candidates": {"main_lag_years": screen["lags_years"][0]}})
    config["screen"].update(few)
    return config


def lifelines_fit(cohort: pl.DataFrame, exposures: pl.DataFrame, code: str, lag_years: float, sex: str,
                  strata: list[str], covariates: list[str]) -> tuple[float, float]:
    """Exposure log HR and SE from lifelines on the explicitly split data of one class."""
    prepared = prepare_cohort(cohort, 10).drop("entry", "exit")
    if sex != "all":
        prepared = prepared.filter(pl.col("sex") == sex)
        covariates = [c for c in covariates if c != "sex"]
    split = split_class_intervals(prepared, exposures.filter(pl.col("atc_code") == code), lag_days(lag_years))
    frame = split.select("start", "stop", "event", "exposed", *strata, *covariates).to_pandas()
    frame["event"] = frame["event"].astype(int)
    for variable in covariates:
        levels = sorted(frame[variable].unique())
        for level in levels[1:]:
            frame[f"{variable}={level}"] = (frame[variable] == level).astype(float)
        frame = frame.drop(columns=variable)
    model = CoxTimeVaryingFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(frame, event_col="event", start_col="start", stop_col="stop", strata=strata or None,
                  fit_options={"precision": 1e-12, "r_precision": 1e-14, "max_steps": 200})
    return float(model.params_["exposed"]), float(model.standard_errors_["exposed"])


@pytest.mark.parametrize(
    ("seed", "strata", "covariates"),
    [
        (1, ["sex", "birth_cohort", "education"], []),
        (2, ["sex"], ["birth_cohort", "education"]),
        (3, [], ["sex", "education"]),
        (4, ["birth_cohort"], []),
    ],
    ids=["all-strata", "strata+covariates", "covariates-only", "no-sex-adjustment"],
)
def test_screen_equals_lifelines_on_split_data(seed, strata, covariates):
    cohort = synthetic_cohort(1200, seed)
    exposures = synthetic_exposures(cohort, seed)
    config = config_for(adjust={"strata": strata, "covariates": covariates})
    results = screen_exposures(cohort, exposures, config, level=3)
    fitted = results.filter(pl.col("status") == "ok")
    assert fitted.height >= 12  # 4 classes x 2 lags x 3 sex groups, minus a few skipped
    for row in fitted.iter_rows(named=True):
        log_hr, se = lifelines_fit(cohort, exposures, row["atc_code"], row["lag_years"], row["sex"], strata, covariates)
        assert abs(row["log_hr"] - log_hr) <= LOG_HR_TOLERANCE, row
        assert abs(row["se"] - se) / se <= RELATIVE_SE_TOLERANCE, row


def test_strata_without_exposed_persons_still_inform_the_covariates():
    """With covariates, a stratum where nobody uses the class keeps its risk sets (full-cohort Cox model)."""
    cohort = synthetic_cohort(1200, 5)
    women = cohort.filter(pl.col("sex") == "F")
    rng = np.random.default_rng(5)
    user = rng.random(women.height) < 0.3
    exposures = pl.DataFrame({
        "person_id": women["person_id"].to_numpy()[user],
        "atc_code": "F06",
        "exposure_start_age_days": women["entry_age_days"].to_numpy()[user] + 365,
    })
    strata, covariates = ["sex"], ["education"]
    config = config_for(adjust={"strata": strata, "covariates": covariates}, sex_strata=["all"])
    results = screen_exposures(cohort, exposures, config, level=3).filter(pl.col("status") == "ok")
    assert results.height == 2  # both lags
    for row in results.iter_rows(named=True):
        log_hr, se = lifelines_fit(cohort, exposures, "F06", row["lag_years"], "all", strata, covariates)
        assert abs(row["log_hr"] - log_hr) <= LOG_HR_TOLERANCE, row
        assert abs(row["se"] - se) / se <= RELATIVE_SE_TOLERANCE, row


def test_counts_per_fit_match_split_data():
    cohort = synthetic_cohort(800, 5)
    exposures = synthetic_exposures(cohort, 5)
    results = screen_exposures(cohort, exposures, config_for(), level=3)
    prepared = prepare_cohort(cohort, 10).drop("entry", "exit")
    for row in results.filter(pl.col("sex") == "F").iter_rows(named=True):
        subset = prepared.filter(pl.col("sex") == "F")
        split = split_class_intervals(subset, exposures.filter(pl.col("atc_code") == row["atc_code"]),
                                      lag_days(row["lag_years"]))
        exposed = split.filter(pl.col("exposed") == 1)
        assert row["n_persons"] == subset.height
        assert row["n_cases"] == int(subset["event"].sum())
        assert row["n_exposed"] == exposed.height
        assert row["n_exposed_cases"] == int(exposed["event"].sum())
        assert row["person_years_exposed"] == pytest.approx(float((exposed["stop"] - exposed["start"]).sum()) / 365.25, abs=0.01)


def test_class_without_exposed_cases_is_skipped_with_reason():
    cohort = synthetic_cohort(600, 6)
    results = screen_exposures(cohort, synthetic_exposures(cohort, 6), config_for(), level=3)
    skipped = results.filter(pl.col("atc_code") == "E05")
    assert skipped.height == 6 and (skipped["status"] == "skipped").all()
    assert skipped["reason"].unique().to_list() == ["fewer than 5 exposed cases"]
    assert skipped["hr"].is_nan().all() and (skipped["n_exposed_cases"] == 0).all()


def test_zero_exposed_cases_in_a_fitted_stratum_is_flagged_as_separation():
    cohort = synthetic_cohort(600, 7)
    exposures = synthetic_exposures(cohort, 7)
    results = screen_exposures(cohort, exposures, config_for(min_exposed_cases=0, lags_years=[0]), level=3)
    row = results.filter(pl.col("atc_code") == "E05", pl.col("sex") == "all").row(0, named=True)
    assert row["status"] == "separation" and not row["converged"]


def test_exposure_at_entry_and_lag_beyond_follow_up():
    cohort = synthetic_cohort(400, 8)
    exposures = cohort.select("person_id", atc_code=pl.lit("X01"), exposure_start_age_days=pl.col("entry_age_days") - 100)
    results = screen_exposures(cohort, exposures, config_for(lags_years=[0, 50], sex_strata=["all"]), level=3)
    at_entry = results.filter(pl.col("lag_years") == 0).row(0, named=True)
    assert at_entry["n_exposed"] == cohort.height  # everybody exposed from entry
    # No unexposed person is ever at risk: the exposure effect is not identifiable, and says so.
    assert at_entry["status"] == "singular_information" and not at_entry["converged"]
    assert results.filter(pl.col("lag_years") == 50).height == 0  # exposure never reached: no row


def test_q_values_are_benjamini_hochberg_within_families():
    frame = pl.DataFrame({
        "atc_level": [2, 2, 2, 2, 3], "lag_years": [0.0] * 5, "sex": ["all"] * 5,
        "p_value": [0.01, 0.04, 0.03, float("nan"), 0.01],
    })
    out = add_q_values(frame, 0.05)
    # Family (2, 0, all) has 3 finite p-values: BH q = min over k>=i of p_(k) * m / k.
    assert out["q_value"].to_list()[:3] == pytest.approx([0.03, 0.04, 0.04])
    assert out["q_value"][3] is None or np.isnan(out["q_value"][3])
    assert out["q_value"][4] == pytest.approx(0.01)
    assert out["significant"].to_list() == [True, True, True, False, True]


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.mark.parametrize("atc_index", ["builtin", "who"])
def test_gathered_screen_has_names_q_values_and_suppressed_counts(tmp_path, atc_index):
    if atc_index == "who" and not (REFERENCE / "who_atc_ddd_index_2020.csv").exists():
        pytest.skip(f"WHO ATC/DDD index not available at {REFERENCE} (reference data lives outside the repo)")
    cohort = synthetic_cohort(800, 9)
    exposures = synthetic_exposures(cohort, 9).with_columns(
        atc_code=pl.col("atc_code").replace({"A01": "N06AB06", "B02": "R03AC02", "C03": "C10AA01", "D04": "A02BC01", "E05": "J01CA04"}))
    config = config_for()
    config["inputs"]["atc_index"] = str(REFERENCE / "who_atc_ddd_index_2020.csv") if atc_index == "who" else None
    screen_exposures(cohort, exposures, config, level=5).write_parquet(tmp_path / "part.parquet")
    released = gather_screen(config, parts=[str(tmp_path / "part.parquet")], fits=tmp_path / "fits.parquet",
                             dwas=tmp_path / "dwas.parquet", dwas_csv=tmp_path / "dwas.csv")
    names = dict(released.select("atc_code", "atc_name").unique().iter_rows())
    assert names["N06AB06"].lower() == "sertraline" and names["R03AC02"].lower() == "salbutamol"
    assert released["q_value"].is_not_null().any()
    for column in ("n_exposed", "n_exposed_cases"):
        values = released[column].drop_nulls()
        assert ((values == 0) | (values >= 5)).all()
    csv = pl.read_csv(tmp_path / "dwas.csv", infer_schema=False)
    assert csv.columns == released.columns
    # the internal fits keep exact counts; the released table is their release under the run's policy
    fits = pl.read_parquet(tmp_path / "fits.parquet")
    assert fits["n_exposed_cases"].null_count() == 0 and fits.select(KEYS).equals(released.select(KEYS))
    policy = DisclosurePolicy.from_config(config, main_lag_years=config["candidates"]["main_lag_years"])
    assert release_screen(fits, policy).equals(released)


def test_a_batch_where_every_class_is_fitted_keeps_the_part_schema():
    """No skipped class means no reason at all: the part still has its documented column types."""
    cohort = synthetic_cohort(1200, 6)
    exposures = synthetic_exposures(cohort, 6).filter(pl.col("atc_code").is_in(["A01", "C03"]))
    config = config_for(adjust={"strata": ["sex"], "covariates": []}, min_exposed_cases=1)
    results = screen_exposures(cohort, exposures, config, level=3)
    assert results["reason"].null_count() == results.height
    assert results.schema == pl.Schema(SCREEN_PART_SCHEMA)


def fast_path_and_references(monkeypatch, fast_path: str, cohort: pl.DataFrame, exposures: pl.DataFrame,
                             config: dict, chunk_settings: dict[str, int]) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """The screen and, with the fast path `fast_path` replaced by the general engine (`screen_general`),
    the same statuses, counts and estimates (to 1e-9; tests/screen_reference.py); also the screens with each chunk
    setting (a constant of the screen's counting or covariate module)."""
    from screen_reference import screen_general

    from repurpose.dwas import screen as screen_module
    from repurpose.dwas import screen_counts, screen_covariates

    whole = screen_exposures(cohort, exposures, config, level=3)
    monkeypatch.setattr(screen_module, fast_path, screen_general)
    general = screen_exposures(cohort, exposures, config, level=3)
    monkeypatch.undo()
    chunked = []
    for name, value in chunk_settings.items():
        monkeypatch.setattr(screen_counts if hasattr(screen_counts, name) else screen_covariates, name, value)
        chunked.append(screen_exposures(cohort, exposures, config, level=3))
        monkeypatch.undo()

    fitted = whole["status"] == "ok"
    assert fitted.sum() >= 20
    assert whole["status"].to_list() == general["status"].to_list()
    for column in ("n_persons", "n_exposed", "n_cases", "n_exposed_cases"):  # counts per sex group, both ways
        assert whole[column].to_list() == general[column].to_list(), column
    np.testing.assert_allclose(whole["person_years_exposed"], general["person_years_exposed"], atol=0.011)
    np.testing.assert_allclose(whole["log_hr"].to_numpy()[fitted], general["log_hr"].to_numpy()[fitted], atol=1e-9)
    np.testing.assert_allclose(whole["se"].to_numpy()[fitted], general["se"].to_numpy()[fitted], rtol=1e-9)
    return whole, chunked


def test_binary_path_equals_general_engine_and_chunking_changes_nothing(monkeypatch):
    """Without covariates the screen fits the exposure-only model on 4 counts per risk set
    (`screen_binary`); the general cell-and-pattern engine gives the same estimates, and splitting
    the classes into chunks of a few risk sets or a few rows gives identical results."""
    cohort = synthetic_cohort(1500, 8)
    config = config_for(adjust={"strata": ["sex", "birth_cohort"], "covariates": []})
    whole, chunked = fast_path_and_references(monkeypatch, "screen_binary", cohort, synthetic_exposures(cohort, 8), config,
                                              {"MAX_QUERIES_PER_CHUNK": 40, "MAX_ROWS_PER_CHUNK": 30})
    assert all(other.equals(whole) for other in chunked)


def test_covariate_path_equals_general_engine_and_blocks_change_nothing(monkeypatch):
    """With covariates the screen counts exposed persons per (cell, risk set) and fits the classes of a
    chunk together (`screen_covariates`, `repurpose.cox.categorical`); the general engine on the table
    built by binary search (`screen_general`, `fit_efron`) gives the same estimates, and chunks of a few
    risk sets or blocks of one fit give the same results (to rounding: a block's fits share array sums)."""
    cohort = synthetic_cohort(1500, 9)
    config = config_for(adjust={"strata": ["birth_cohort"], "covariates": ["sex", "education"]}, lags_years=[0, 2, 5])
    whole, chunked = fast_path_and_references(monkeypatch, "screen_covariates", cohort, synthetic_exposures(cohort, 9),
                                              config, {"MAX_QUERIES_PER_CHUNK": 40, "MAX_DENSE_CELLS": 1})
    estimates = ["log_hr", "se", "hr", "ci_lower", "ci_upper", "p_value"]
    for other in chunked:
        assert other.drop(estimates).equals(whole.drop(estimates))
        np.testing.assert_allclose(other["log_hr"].to_numpy(), whole["log_hr"].to_numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(other["se"].to_numpy(), whole["se"].to_numpy(), rtol=1e-12)


R_COXPH = """
library(survival)
args <- commandArgs(trailingOnly = TRUE)
out <- NULL
for (path in args[-1]) {
  d <- read.csv(path, colClasses = c(education = "character"))
  fit <- coxph(Surv(start, stop, event) ~ exposed + factor(sex) + factor(education), data = d, ties = "efron",
               control = coxph.control(eps = 1e-12, iter.max = 100))
  out <- rbind(out, data.frame(file = basename(path), coef = unname(coef(fit)["exposed"]),
                               se = unname(sqrt(diag(vcov(fit)))[1])))
}
write.csv(out, args[1], row.names = FALSE)
"""


def test_covariate_screen_equals_r_coxph(tmp_path):
    """The screen with `adjust.covariates: [sex, education]` is R's
    `coxph(Surv(start, stop, event) ~ exposed + factor(sex) + factor(education))` on the split data of
    each class, for several classes and lags."""
    reason = r_survival_missing()
    if reason:
        pytest.skip(reason)
    cohort = synthetic_cohort(1200, 10)
    exposures = synthetic_exposures(cohort, 10)
    config = config_for(adjust={"strata": [], "covariates": ["sex", "education"]}, sex_strata=["all"], lags_years=[0, 2, 5])
    fitted = screen_exposures(cohort, exposures, config, level=3).filter(pl.col("status") == "ok")
    assert fitted.height >= 10
    prepared = prepare_cohort(cohort, 10).drop("entry", "exit")
    paths = []
    for i, row in enumerate(fitted.iter_rows(named=True)):
        split = split_class_intervals(prepared, exposures.filter(pl.col("atc_code") == row["atc_code"]),
                                      lag_days(row["lag_years"]))
        paths.append(tmp_path / f"fit{i}.csv")
        split.select("start", "stop", pl.col("event").cast(pl.Int8), "exposed", "sex", "education").write_csv(paths[-1])
    script, output = tmp_path / "coxph.R", tmp_path / "r.csv"
    script.write_text(R_COXPH)
    subprocess.run(["Rscript", str(script), str(output), *map(str, paths)], check=True, capture_output=True, timeout=600)
    r = pl.read_csv(output)
    assert r["file"].to_list() == [p.name for p in paths]
    np.testing.assert_allclose(fitted["log_hr"].to_numpy(), r["coef"].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fitted["se"].to_numpy(), r["se"].to_numpy(), rtol=1e-6)
