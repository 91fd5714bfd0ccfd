"""The registry simulator: schemas, determinism, the planted truth and the registry-native copy."""

from __future__ import annotations

import io
import json
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from scipy import stats

from repurpose.atc import LEVEL5_PATTERN, load_builtin_catalog
from repurpose.simulate import simulate_registries, write_native_extracts
from repurpose.simulate.corrupt import CORRUPT_KINDS
from repurpose.simulate.native import NATIVE_COLUMNS, NATIVE_DATE_FORMAT
from repurpose.simulate.profiles import NOT_SIMULATED, PLANTED

STUDY_START = date(2004, 1, 1)
STUDY_END = date(2023, 12, 31)
DAY_AFTER_END = date(2024, 1, 1)
N_PERSONS = 20_000

POPULATION_SCHEMA = {
    "person_id": pl.Int64,
    "sex": pl.Utf8,
    "birth_year": pl.Int32,
    "birth_month": pl.Int8,
    "death_date": pl.Date,
    "emigration_date": pl.Date,
    "education": pl.Int8,
}
PRESCRIPTIONS_SCHEMA = {
    "person_id": pl.Int64,
    "dispense_date": pl.Date,
    "atc_code": pl.Utf8,
    "ddd": pl.Float64,
    "reimbursement_code": pl.Utf8,
}
MS_REGISTRY_SCHEMA = {
    "person_id": pl.Int64,
    "onset_date": pl.Date,
    "diagnosis_date": pl.Date,
    "ms_course": pl.Utf8,
    "edss_at_diagnosis": pl.Float64,
}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One clean simulated population (no corrupt rows), two chunks."""
    out = tmp_path_factory.mktemp("simulated")
    summary = simulate_registries(out, n_persons=N_PERSONS, seed=11, chunk_size=12_000)
    return out, summary


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A small population with invalid rows injected."""
    out = tmp_path_factory.mktemp("corrupted")
    summary = simulate_registries(out, n_persons=3_000, seed=5, n_corrupt_rows=14, chunk_size=1_000)
    return out, summary


def read_prescriptions(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "prescriptions").glob("*.parquet")))


def truth_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "ground_truth.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Determinism and arguments
# --------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        simulate_registries(tmp_path / name, n_persons=2_500, seed=seed, n_corrupt_rows=7, chunk_size=1_000)
        runs.append(tmp_path / name)
    first, again, other = runs
    for relative in ["population.parquet", "ms_registry.parquet", "ground_truth_persons.parquet"] + [
        f"prescriptions/dispensings_{year}.parquet" for year in range(2004, 2024)
    ]:
        assert pl.read_parquet(first / relative).equals(pl.read_parquet(again / relative)), relative
    assert truth_of(first) == truth_of(again)
    assert not pl.read_parquet(first / "population.parquet").equals(
        pl.read_parquet(other / "population.parquet")
    )


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_persons"):
        simulate_registries(tmp_path, n_persons=0)
    with pytest.raises(ValueError, match="before study_end"):
        simulate_registries(tmp_path, n_persons=10, study_start="2010-01-01", study_end="2005-01-01")


def test_other_study_windows_give_one_file_per_year(tmp_path: Path) -> None:
    simulate_registries(tmp_path, n_persons=400, seed=1, study_start="2010-07-01", study_end="2012-06-30")
    files = sorted(p.name for p in (tmp_path / "prescriptions").glob("*.parquet"))
    assert files == ["dispensings_2010.parquet", "dispensings_2011.parquet", "dispensings_2012.parquet"]
    dispensings = read_prescriptions(tmp_path)
    assert dispensings["dispense_date"].min() >= date(2010, 7, 1)
    assert dispensings["dispense_date"].max() <= date(2012, 6, 30)


# --------------------------------------------------------------------------------------------------
# Schemas and basic realism
# --------------------------------------------------------------------------------------------------


def test_population_schema_and_values(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, _ = simulated
    population = pl.read_parquet(out / "population.parquet")
    assert dict(population.schema) == POPULATION_SCHEMA
    assert population.height == N_PERSONS
    ids = population["person_id"]
    assert ids.n_unique() == N_PERSONS and ids.is_sorted()
    assert (ids.diff().drop_nulls() > 1).mean() > 0.99  # random, not 1..n
    assert set(population["sex"]) == {"F", "M"}
    assert 0.45 < (population["sex"] == "F").mean() < 0.55
    ages_at_start = 2004 - population["birth_year"]
    assert ages_at_start.max() <= 81 and population["birth_year"].max() <= 2023
    assert population["birth_year"].is_between(1940, 2005).mean() > 0.7
    assert population["birth_month"].drop_nulls().is_between(1, 12).all()
    assert 0.01 < population["birth_month"].null_count() / N_PERSONS < 0.03
    assert population["education"].drop_nulls().is_between(0, 4).all()
    assert 0.035 < population["education"].null_count() / N_PERSONS < 0.065
    deaths = population["death_date"].drop_nulls()
    assert deaths.is_between(STUDY_START, STUDY_END).all()
    assert 0.05 < len(deaths) / N_PERSONS < 0.25
    emigrations = population["emigration_date"].drop_nulls()
    assert emigrations.is_between(STUDY_START, STUDY_END).all()
    assert 0.02 < len(emigrations) / N_PERSONS < 0.04
    both = population.filter(pl.col("death_date").is_not_null() & pl.col("emigration_date").is_not_null())
    assert both.height == 0  # deaths abroad after emigration are not recorded
    # mortality rises with age
    died = population.with_columns(old=pl.col("birth_year") < 1940, died=pl.col("death_date").is_not_null())
    by_age = died.group_by("old").agg(pl.col("died").mean()).sort("old")["died"]
    assert by_age[1] > 5 * by_age[0]


def test_prescription_files_schema_order_and_validity(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, summary = simulated
    files = sorted((out / "prescriptions").glob("*.parquet"))
    assert [f.name for f in files] == [f"dispensings_{year}.parquet" for year in range(2004, 2024)]
    level5 = load_builtin_catalog().filter(pl.col("atc_level") == 5)
    catalog_codes = set(level5["atc_code"]) - set(NOT_SIMULATED)
    population = pl.read_parquet(out / "population.parquet")
    total = 0
    for year, path in zip(range(2004, 2024), files, strict=True):
        part = pl.read_parquet(path)
        assert dict(part.schema) == PRESCRIPTIONS_SCHEMA, path
        assert part.select(pl.struct("person_id", "dispense_date").is_sorted()).item(), path
        assert (part["dispense_date"].dt.year() == year).all()
        total += part.height
    dispensings = read_prescriptions(out)
    assert total == summary["dispensings"] == summary["dispensings_valid"]
    assert set(dispensings["atc_code"].unique()) <= catalog_codes
    assert (dispensings["ddd"] > 0).all()
    assert dispensings["person_id"].is_in(population["person_id"].implode()).all()
    assert 0.1 < dispensings["reimbursement_code"].is_not_null().mean() < 0.9
    assert dispensings["reimbursement_code"].drop_nulls().str.contains(r"^[A-Z][0-9]{2}$").all()
    late = dispensings.join(population, on="person_id").filter(
        (pl.col("dispense_date") >= pl.col("death_date"))
        | (pl.col("dispense_date") >= pl.col("emigration_date"))
    )
    assert late.height == 0, late
    assert 3 <= summary["dispensings_per_person_year"] <= 8


def test_use_prevalence_is_realistic(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, _ = simulated
    users = (
        read_prescriptions(out)
        .group_by(pl.col("atc_code").str.slice(0, 3).alias("atc2"))
        .agg(pl.col("person_id").n_unique().truediv(N_PERSONS).alias("share"))
    )
    share = dict(zip(users["atc2"], users["share"], strict=True))
    assert share["J01"] > 0.4 and share["M01"] > 0.3 and share["N02"] > 0.3  # common acute drugs
    assert 0.1 < share["C10"] < 0.35 and 0.03 < share["H03"] < 0.15
    assert share.get("A16", 0.0) < 0.01
    truth = truth_of(out)
    for code, substance in truth["substances"].items():
        if substance["role"] != "null":
            assert substance["n_users"] / N_PERSONS >= 0.03, (code, substance)
            assert substance["n_exposed"] >= 0.6 * substance["n_users"], (code, substance)


def test_ms_registry_schema_and_values(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, summary = simulated
    registry = pl.read_parquet(out / "ms_registry.parquet")
    population = pl.read_parquet(out / "population.parquet")
    assert dict(registry.schema) == MS_REGISTRY_SCHEMA
    assert registry.height == summary["ms_registry_rows"]
    assert registry["person_id"].n_unique() == registry.height and registry["person_id"].is_sorted()
    assert registry["person_id"].is_in(population["person_id"].implode()).all()
    assert registry["diagnosis_date"].max() <= STUDY_END
    assert (registry["onset_date"].drop_nulls() <= registry.drop_nulls("onset_date")["diagnosis_date"]).all()
    assert 0.06 < registry["onset_date"].null_count() / registry.height < 0.14
    assert (registry["onset_date"] < STUDY_START).sum() > 0  # prevalent patients are listed
    courses = registry["ms_course"].value_counts(normalize=True)
    share = dict(zip(courses["ms_course"], courses["proportion"], strict=True))
    assert set(share) == {"RR", "SP", "PP"} and 0.78 < share["RR"] < 0.92 and share["SP"] > share["PP"]
    edss = registry["edss_at_diagnosis"].drop_nulls()
    assert edss.is_between(0, 10).all() and ((edss * 2) % 1 == 0).all()
    assert 0 < registry["edss_at_diagnosis"].null_count() < 0.15 * registry.height
    with_dates = registry.join(population, on="person_id")
    assert (with_dates["diagnosis_date"].dt.year() >= with_dates["birth_year"]).all()
    assert with_dates.filter(pl.col("diagnosis_date") >= pl.col("death_date")).height == 0
    assert with_dates.filter(pl.col("diagnosis_date") >= pl.col("emigration_date")).height == 0


# --------------------------------------------------------------------------------------------------
# Planted truth
# --------------------------------------------------------------------------------------------------


def test_ground_truth_lists_every_substance_with_its_role(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, summary = simulated
    truth = truth_of(out)
    catalog = load_builtin_catalog().filter(pl.col("atc_level") == 5)
    assert set(truth["substances"]) == set(catalog["atc_code"]) - set(NOT_SIMULATED)
    roles = {role: codes for role, codes in truth["roles"].items()}
    assert {role: len(codes) for role, codes in roles.items() if role != "null"} == {
        "causal_protective": 4,
        "causal_harmful": 3,
        "mechanism": 5,
        "prodromal": 3,
        "confounded": 3,
    }
    for code, substance in truth["substances"].items():
        hr = substance["planted_hr"]
        if substance["role"] in ("causal_protective", "mechanism"):
            assert 0.5 <= hr <= 0.7, code
        elif substance["role"] == "causal_harmful":
            assert 1.5 <= hr <= 2.0, code
        else:
            assert hr == 1.0, code
    mechanism = truth["mechanism"]
    assert mechanism["gene"] == "ADRB2" and mechanism["action_type"] == "AGONIST"
    assert mechanism["substances"] == sorted(roles["mechanism"])
    assert len({code[:4] for code in mechanism["substances"]}) >= 2  # spans level-3 classes
    assert truth["counts"]["persons"] == N_PERSONS == summary["persons"]
    assert truth["counts"]["ms_cases_by_sex"] == summary["ms_cases_by_sex"]
    assert truth["corrupt_rows"] == {kind: 0 for kind in CORRUPT_KINDS}


def test_demo_drug_targets_cover_the_planted_substances() -> None:
    text = resources.files("repurpose").joinpath("data/demo_drug_targets.tsv").read_text(encoding="utf-8")
    targets = pl.read_csv(io.StringIO(text), separator="\t", infer_schema=False, quote_char=None)
    assert targets.columns == [
        "DRUG_ID", "CHEMBL_ID", "DRUG_NAME", "TARGET_NAME", "TARGET_FAMILY", "UNIPROT", "GENE", "SWISSPROT",
        "ACTION_TYPE", "SOURCE", "REFERENCE",
    ]  # fmt: skip
    assert (targets["DRUG_NAME"] == targets["DRUG_NAME"].str.to_lowercase()).all()
    assert targets["DRUG_NAME"].n_unique() >= 60
    assert targets["GENE"].drop_nulls().str.contains("|", literal=True).any()
    catalog = load_builtin_catalog().filter(pl.col("atc_level") == 5)
    names = dict(zip(catalog["atc_code"], catalog["atc_name"], strict=True))
    assert set(targets["DRUG_NAME"]) <= set(names.values())
    assert {names[code] for code in PLANTED} <= set(targets["DRUG_NAME"])
    agonists = targets.filter(
        pl.col("GENE").str.split("|").list.contains("ADRB2") & (pl.col("ACTION_TYPE") == "AGONIST")
    )
    via_target = {code for code, name in names.items() if name in set(agonists["DRUG_NAME"])}
    mechanism = {code for code, planted in PLANTED.items() if planted.role == "mechanism"}
    assert via_target == mechanism  # the planted mechanism is exactly the ADRB2 agonists of the catalog


def test_women_have_more_onsets_than_men(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, summary = simulated
    incident = summary["incident_onsets_in_window_by_sex"]
    assert incident["F"] + incident["M"] == summary["incident_onsets_in_window"]
    assert 0.006 * N_PERSONS < summary["incident_onsets_in_window"] < 0.03 * N_PERSONS
    assert 1.8 < incident["F"] / incident["M"] < 4.0
    registry = summary["ms_cases_by_sex"]
    assert 1.8 < registry["F"] / registry["M"] < 4.0


def _cases_with_history(out: Path) -> pl.DataFrame:
    """True incident onsets at least 10 years into the window, with the end of their observation."""
    persons = pl.read_parquet(out / "ground_truth_persons.parquet")
    population = pl.read_parquet(out / "population.parquet")
    return (
        persons.join(population, on="person_id")
        .filter(pl.col("true_onset_date").is_between(date(2014, 1, 1), STUDY_END))
        .filter(pl.col("true_birth_date") < date(2004, 1, 1))
        .select("person_id", "true_onset_date")
    )


def _dispensings_before_onset(out: Path, codes: list[str], cases: pl.DataFrame) -> dict[str, int]:
    """Dispensings of `codes` to cases 0-2 years (`recent`) and 5-10 years (`early`) before true onset."""
    return (
        read_prescriptions(out)
        .filter(pl.col("atc_code").is_in(codes))
        .join(cases, on="person_id")
        .with_columns(
            years_before=(pl.col("true_onset_date") - pl.col("dispense_date")).dt.total_days() / 365.25
        )
        .select(
            recent=pl.col("years_before").is_between(0, 2, closed="right").sum(),
            early=pl.col("years_before").is_between(5, 10, closed="right").sum(),
        )
        .row(0, named=True)
    )


def test_prodromal_dispensing_rate_rises_before_onset(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, _ = simulated
    truth = truth_of(out)
    cases = _cases_with_history(out)
    assert cases.height > 50
    counts = _dispensings_before_onset(out, truth["roles"]["prodromal"], cases)
    recent_rate = counts["recent"] / (2 * cases.height)
    early_rate = counts["early"] / (5 * cases.height)
    assert recent_rate > 2 * early_rate, counts
    # a null comparison: common null substances show no such rise
    null_codes = [c for c, s in truth["substances"].items() if s["role"] == "null" and s["n_users"] > 2_000]
    null_counts = _dispensings_before_onset(out, null_codes, cases)
    assert null_counts["recent"] / 2 < 1.5 * null_counts["early"] / 5, null_counts


def _expected_onsets(out: Path) -> pl.DataFrame:
    """Integrate the planted hazard (from ground_truth.json) over each person's follow-up in the window.

    An independent re-implementation of the model: each person is at risk from max(birth, study start) to
    min(onset, death, emigration, study end); exposure to a causal substance starts at its second
    dispensing in the written prescription files. Returns one row per follow-up piece with the expected
    number of onsets and how many protective / harmful exposures are active.
    """
    truth = truth_of(out)
    model = truth["hazard_model"]
    day_after_end = pl.lit(DAY_AFTER_END).cast(pl.Int32).cast(pl.Float64)
    sex_log_factor = {sex: float(np.log(factor)) for sex, factor in model["sex_factor"].items()}
    persons = (
        pl.read_parquet(out / "population.parquet")
        .join(pl.read_parquet(out / "ground_truth_persons.parquet"), on="person_id")
        .with_columns(
            birth=pl.col("true_birth_date").cast(pl.Int32).cast(pl.Float64),
            entry=pl.max_horizontal("true_birth_date", pl.lit(STUDY_START)).cast(pl.Int32).cast(pl.Float64),
            exit=pl.min_horizontal(
                pl.col("death_date").cast(pl.Int32).cast(pl.Float64),
                pl.col("emigration_date").cast(pl.Int32).cast(pl.Float64),
                day_after_end,
            ),
        )
        .filter(pl.col("true_onset_day").is_null() | (pl.col("true_onset_day") >= pl.col("entry")))
        .with_columns(event=(pl.col("true_onset_day") < pl.col("exit")).fill_null(False))
        .with_columns(
            stop=pl.when("event").then("true_onset_day").otherwise("exit"),
            log_factor=pl.col("sex").replace_strict(sex_log_factor, return_dtype=pl.Float64)
            + model["latent_factor_log_hr_per_sd"] * pl.col("latent_factor"),
        )
    )
    log_hr = {
        code: float(np.log(s["planted_hr"]))
        for code, s in truth["substances"].items()
        if s["planted_hr"] != 1
    }
    exposures = (
        read_prescriptions(out)
        .filter(pl.col("atc_code").is_in(list(log_hr)))
        .group_by("person_id", "atc_code")
        .agg(pl.col("dispense_date").sort().get(1, null_on_oob=True).alias("second"))
        .drop_nulls()
        .join(persons.select("person_id", "entry", "stop"), on="person_id")
        .with_columns(start=pl.col("second").cast(pl.Int32).cast(pl.Float64))
        .filter(pl.col("start") < pl.col("stop"))
        .select(
            "person_id",
            pl.max_horizontal("start", "entry").alias("start"),
            pl.col("atc_code").replace_strict(log_hr, return_dtype=pl.Float64).alias("log_hr"),
        )
        .with_columns(
            n_protective=(pl.col("log_hr") < 0).cast(pl.Int64),
            n_harmful=(pl.col("log_hr") > 0).cast(pl.Int64),
        )
    )
    pieces = (
        pl.concat(
            [
                persons.select(
                    "person_id",
                    pl.col("entry").alias("start"),
                    pl.lit(0.0).alias("log_hr"),
                    pl.lit(0, dtype=pl.Int64).alias("n_protective"),
                    pl.lit(0, dtype=pl.Int64).alias("n_harmful"),
                ),
                exposures,
            ]
        )  # fmt: skip
        .sort("person_id", "start")
        .with_columns(
            pl.col("log_hr").cum_sum().over("person_id"),
            pl.col("n_protective").cum_sum().over("person_id"),
            pl.col("n_harmful").cum_sum().over("person_id"),
            end=pl.col("start").shift(-1).over("person_id"),
        )
        .join(persons.select("person_id", "birth", "stop", "log_factor", "event"), on="person_id")
        .with_columns(pl.col("end").fill_null(pl.col("stop")))
    )
    band_start_days = np.array(model["age_band_lower_years"]) * 365.25
    per_day = np.array(model["baseline_per_100k_person_years"]) / 1e5 / 365.25
    knots = np.append(band_start_days, 200 * 365.25)
    cumulative_baseline = np.concatenate([[0.0], np.cumsum(per_day * np.diff(knots))])
    birth = pieces["birth"].to_numpy()
    baseline = np.interp(pieces["end"].to_numpy() - birth, knots, cumulative_baseline) - np.interp(
        pieces["start"].to_numpy() - birth, knots, cumulative_baseline
    )
    expected = baseline * np.exp(pieces["log_factor"].to_numpy() + pieces["log_hr"].to_numpy())
    return pieces.with_columns(
        expected=pl.Series(expected),
        observed=(pl.col("event") & (pl.col("end") == pl.col("stop"))).cast(pl.Int64),
    )


def _assert_poisson_99(observed: int, expected: float) -> None:
    low, high = stats.poisson.ppf(0.005, expected), stats.poisson.ppf(0.995, expected)
    assert low <= observed <= high, (
        f"observed {observed}, expected {expected:.1f} (99% interval {low}-{high})"
    )


def test_onsets_follow_the_planted_hazard(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, summary = simulated
    pieces = _expected_onsets(out)
    observed = int(pieces["observed"].sum())
    assert observed == summary["incident_onsets_in_window"]
    _assert_poisson_99(observed, float(pieces["expected"].sum()))
    protective_only = pieces.filter((pl.col("n_protective") > 0) & (pl.col("n_harmful") == 0))
    harmful_only = pieces.filter((pl.col("n_protective") == 0) & (pl.col("n_harmful") > 0))
    for exposed, direction in ((protective_only, -1), (harmful_only, 1)):
        observed_exposed = int(exposed["observed"].sum())
        assert observed_exposed > 30
        _assert_poisson_99(observed_exposed, float(exposed["expected"].sum()))
        # ... and far from what the same person-time would give without the planted drug effects
        without_effect = float((exposed["expected"] * np.exp(-exposed["log_hr"])).sum())
        low, high = stats.poisson.ppf(0.005, without_effect), stats.poisson.ppf(0.995, without_effect)
        assert (observed_exposed < low) if direction < 0 else (observed_exposed > high), (
            observed_exposed,
            without_effect,
        )


def test_no_onset_after_death_or_emigration(simulated: tuple[Path, dict[str, Any]]) -> None:
    out, _ = simulated
    persons = pl.read_parquet(out / "ground_truth_persons.parquet").join(
        pl.read_parquet(out / "population.parquet"), on="person_id"
    )
    assert persons.filter(pl.col("true_onset_date") >= pl.col("death_date")).height == 0
    assert persons.filter(pl.col("true_onset_date") >= pl.col("emigration_date")).height == 0
    assert (
        persons["true_onset_date"].drop_nulls() >= persons.drop_nulls("true_onset_date")["true_birth_date"]
    ).all()


# --------------------------------------------------------------------------------------------------
# Corrupt rows
# --------------------------------------------------------------------------------------------------


def test_corrupt_rows_are_injected_as_recorded(corrupted: tuple[Path, dict[str, Any]]) -> None:
    out, summary = corrupted
    truth = truth_of(out)
    recorded = truth["corrupt_rows"]
    assert recorded == summary["corrupt_rows_by_kind"]
    assert set(recorded) == set(CORRUPT_KINDS) and sum(recorded.values()) == 14
    assert all(count in (2, 3) for count in recorded.values())

    population = pl.read_parquet(out / "population.parquet")
    known = population["person_id"].implode()
    dispensings = read_prescriptions(out)
    malformed = dispensings.filter(
        ~pl.col("atc_code").str.to_uppercase().str.strip_chars().str.contains(LEVEL5_PATTERN.pattern)
    )
    assert malformed.height == recorded["malformed_atc_code"]
    assert dispensings.filter(pl.col("ddd") < 0).height == recorded["negative_ddd"]
    assert (
        dispensings.filter(~pl.col("person_id").is_in(known)).height == recorded["unknown_person_dispensing"]
    )
    outside = dispensings.filter(~pl.col("dispense_date").is_between(STUDY_START, STUDY_END))
    assert outside.height == recorded["dispense_date_outside_window"]
    assert dispensings.height == summary["dispensings"]
    assert summary["dispensings"] - summary["dispensings_valid"] == sum(
        recorded[kind] for kind in CORRUPT_KINDS[:4]
    )
    for part in sorted((out / "prescriptions").glob("*.parquet")):  # still sorted with the bad rows in
        assert pl.read_parquet(part).select(pl.struct("person_id", "dispense_date").is_sorted()).item()

    registry = pl.read_parquet(out / "ms_registry.parquet")
    assert registry.filter(~pl.col("person_id").is_in(known)).height == recorded["ms_registry_unknown_person"]
    before_birth = registry.join(population, on="person_id").filter(
        pl.col("diagnosis_date").dt.year() < pl.col("birth_year")
    )
    assert before_birth.height == recorded["diagnosis_before_birth"]
    n_registry_corrupt = recorded["ms_registry_unknown_person"] + recorded["diagnosis_before_birth"]
    assert (
        registry.height
        == summary["ms_registry_rows"]
        == summary["ms_registry_rows_valid"] + n_registry_corrupt
    )
    ids = truth["corrupt_row_person_ids"]
    assert sorted(ids["diagnosis_before_birth"]) == sorted(before_birth["person_id"].to_list())
    assert len(ids["unknown_person_dispensing"]) == recorded["unknown_person_dispensing"]


# --------------------------------------------------------------------------------------------------
# Registry-native copy
# --------------------------------------------------------------------------------------------------


def _read_native(path: Path, extract: str) -> pl.DataFrame:
    """Read a native CSV back into canonical columns with the column map returned by the writer."""
    text = path.read_bytes().decode("latin-1")
    frame = pl.read_csv(io.StringIO(text), separator=";", infer_schema=False)
    frame = frame.rename({native: canonical for canonical, native in NATIVE_COLUMNS[extract].items()})
    return frame


def test_native_writer_round_trip(corrupted: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = corrupted
    native = write_native_extracts(out, tmp_path / "native")
    assert native["date_format"] == NATIVE_DATE_FORMAT == "%d.%m.%Y"
    assert native["sep"] == ";" and native["encoding"] == "latin-1"
    assert native["columns"]["population"]["sex"] == "kjønn"
    for extract, config in native["inputs"].items():
        assert set(config) == {"path", "sep", "encoding", "date_format", "columns"}
        assert Path(config["path"]).exists()
        assert config["columns"] == native["columns"][extract]

    raw = (tmp_path / "native" / "population.csv").read_bytes()
    header = "løpenr;kjønn;fødselsår;fødselsmåned;dødsdato;utvandringsdato;utdanning"
    assert raw.splitlines()[0] == header.encode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")

    def dates(*columns: str) -> list[pl.Expr]:
        return [pl.col(c).str.to_date(NATIVE_DATE_FORMAT) for c in columns]

    population = _read_native(tmp_path / "native" / "population.csv", "population").select(
        pl.col("person_id").cast(pl.Int64),
        pl.col("sex").replace_strict({"1": "M", "2": "F"}),
        pl.col("birth_year").cast(pl.Int32),
        pl.col("birth_month").cast(pl.Int8),
        *dates("death_date", "emigration_date"),
        pl.col("education").cast(pl.Int8),
    )
    assert population.equals(pl.read_parquet(out / "population.parquet"))

    registry = _read_native(tmp_path / "native" / "ms_registry.csv", "ms_registry").select(
        pl.col("person_id").cast(pl.Int64),
        *dates("onset_date", "diagnosis_date"),
        "ms_course",
        pl.col("edss_at_diagnosis").cast(pl.Float64),
    )
    assert registry.equals(pl.read_parquet(out / "ms_registry.parquet"))

    native_files = sorted((tmp_path / "native" / "prescriptions").glob("resepter_*.csv"))
    assert [f.name for f in native_files] == [f"resepter_{year}.csv" for year in range(2004, 2024)]
    prescriptions = pl.concat([_read_native(f, "prescriptions") for f in native_files]).select(
        pl.col("person_id").cast(pl.Int64),
        *dates("dispense_date"),
        "atc_code",
        pl.col("ddd").cast(pl.Float64),
        "reimbursement_code",
    )
    assert prescriptions.equals(read_prescriptions(out))
