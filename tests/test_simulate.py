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
from repurpose.dwas.mechanisms import map_substances, read_drug_targets
from repurpose.simulate import simulate_registries, write_native_extracts
from repurpose.simulate.corrupt import CORRUPT_KINDS
from repurpose.simulate.infections import INFECTION_CODES
from repurpose.simulate.native import NATIVE_COLUMNS, NATIVE_DATE_FORMAT
from repurpose.simulate.profiles import NOT_SIMULATED, PLANTED, load_planted

REPO = Path(__file__).resolve().parents[1]
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
    "clinic_id": pl.Utf8,
    "country": pl.Utf8,
    "ms_course_at_diagnosis": pl.Utf8,
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
    # the MS treatments dispensed at pharmacies appear only as the clinical data's DMT rows (test_simulate_clinical)
    dmt_codes = set(truth_of(out)["clinical"]["dispensings"]["pharmacy_drugs"])
    catalog_codes = (set(level5["atc_code"]) - set(NOT_SIMULATED)) | dmt_codes
    population = pl.read_parquet(out / "population.parquet")
    total = 0
    for year, path in zip(range(2004, 2024), files, strict=True):
        part = pl.read_parquet(path)
        assert dict(part.schema) == PRESCRIPTIONS_SCHEMA, path
        assert part.select(pl.struct("person_id", "dispense_date").is_sorted()).item(), path
        assert (part["dispense_date"].dt.year() == year).all()
        total += part.height
    dispensings = read_prescriptions(out)
    assert total - summary["clinical"]["dmt_dispensings"] == summary["dispensings"] == summary["dispensings_valid"]
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
    courses = registry["ms_course_at_diagnosis"].value_counts(normalize=True)
    share = dict(zip(courses["ms_course_at_diagnosis"], courses["proportion"], strict=True))
    assert set(share) == {"RR", "SP", "PP", "CIS", "unknown"}  # CIS and unknown: the clinical data's refinement
    assert 0.78 < share["RR"] + share["CIS"] + share["unknown"] < 0.95 and share["SP"] > share["PP"]
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


@pytest.mark.parametrize("table", [None, "benchmarks/planted/weak_effects.csv", "benchmarks/planted/htr2a_mechanism.csv"])
def test_a_planted_mechanism_is_every_substance_the_demo_targets_give_its_target(table: str | None) -> None:
    """The packaged and the benchmark tables plant a mechanism as the mechanisms stage maps the demo drug-target
    data: every catalog substance acting so on the named target, across at least two level-3 classes."""
    mapping, _ = map_substances(load_builtin_catalog().filter(pl.col("atc_level") == 5), read_drug_targets(None))
    planted = load_planted(REPO / table if table else None)
    gene, action_type = planted.mechanism_target
    acting = mapping.filter(pl.col("target").str.split("|").list.contains(gene) & (pl.col("action_type") == action_type))
    via_target = set(acting["atc_code"].to_list())
    assert via_target == set(planted.codes("mechanism"))
    assert len({code[:4] for code in via_target}) >= 2


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


def _expected_onsets(out: Path, outcome: str = "ms") -> pl.DataFrame:
    """Integrate the planted hazard (from ground_truth.json) over each person's follow-up in the window.

    An independent re-implementation of the model: each person is at risk from max(birth, study start) to
    min(event, death, emigration, study end); exposure to a causal substance starts at its second
    dispensing in the written prescription files. The event is MS onset (`outcome="ms"`) or the
    Parkinson-like diagnosis (`"parkinson"`, its own hazard model and planted substances). Returns one
    row per follow-up piece with the expected number of events and how many protective / harmful
    exposures are active.
    """
    truth = truth_of(out)
    if outcome == "ms":
        model, substances = truth["hazard_model"], truth["substances"]
        events = pl.read_parquet(out / "ground_truth_persons.parquet").select(
            "person_id", event_day="true_onset_day"
        )
    else:
        model, substances = truth["parkinson"]["hazard_model"], truth["parkinson"]["substances"]
        events = pl.read_parquet(out / "ground_truth_parkinson_persons.parquet").select(
            "person_id", event_day="true_diagnosis_day"
        )
    day_after_end = pl.lit(DAY_AFTER_END).cast(pl.Int32).cast(pl.Float64)
    sex_log_factor = {sex: float(np.log(factor)) for sex, factor in model["sex_factor"].items()}
    persons = (
        pl.read_parquet(out / "population.parquet")
        .join(pl.read_parquet(out / "ground_truth_persons.parquet"), on="person_id")
        .join(events, on="person_id", how="left")
        .with_columns(
            birth=pl.col("true_birth_date").cast(pl.Int32).cast(pl.Float64),
            entry=pl.max_horizontal("true_birth_date", pl.lit(STUDY_START)).cast(pl.Int32).cast(pl.Float64),
            exit=pl.min_horizontal(
                pl.col("death_date").cast(pl.Int32).cast(pl.Float64),
                pl.col("emigration_date").cast(pl.Int32).cast(pl.Float64),
                day_after_end,
            ),
        )
        .filter(pl.col("event_day").is_null() | (pl.col("event_day") >= pl.col("entry")))
        .with_columns(event=(pl.col("event_day") < pl.col("exit")).fill_null(False))
        .with_columns(
            stop=pl.when("event").then("event_day").otherwise("exit"),
            log_factor=pl.col("sex").replace_strict(sex_log_factor, return_dtype=pl.Float64)
            + model["latent_factor_log_hr_per_sd"] * pl.col("latent_factor"),
        )
    )
    log_hr = {code: float(np.log(s["planted_hr"])) for code, s in substances.items() if s["planted_hr"] != 1}
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
    assert int(pieces["observed"].sum()) == summary["incident_onsets_in_window"]
    _assert_events_follow_the_planted_hazard(pieces, min_exposed_events=30)


def _assert_events_follow_the_planted_hazard(pieces: pl.DataFrame, min_exposed_events: int) -> None:
    """Observed events match the integrated hazard overall and under protective / harmful exposure only."""
    observed = int(pieces["observed"].sum())
    _assert_poisson_99(observed, float(pieces["expected"].sum()))
    protective_only = pieces.filter((pl.col("n_protective") > 0) & (pl.col("n_harmful") == 0))
    harmful_only = pieces.filter((pl.col("n_protective") == 0) & (pl.col("n_harmful") > 0))
    for exposed, direction in ((protective_only, -1), (harmful_only, 1)):
        observed_exposed = int(exposed["observed"].sum())
        assert observed_exposed > min_exposed_events
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
    # the MS clinical data's DMT dispensings are counted apart (ground_truth.json clinical.counts)
    assert dispensings.height == summary["dispensings"] + summary["clinical"]["dmt_dispensings"]
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
        "clinic_id",
        "country",
        "ms_course_at_diagnosis",
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


# --------------------------------------------------------------------------------------------------
# Diagnosis extract and the Parkinson-like second outcome
# --------------------------------------------------------------------------------------------------

DIAGNOSES_SCHEMA = {"person_id": pl.Int64, "diagnosis_date": pl.Date, "icd10_code": pl.Utf8}


@pytest.fixture(scope="module")
def parkinson_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The `simulated` population (same seed and chunks) with the Parkinson-like outcome enabled."""
    out = tmp_path_factory.mktemp("parkinson")
    summary = simulate_registries(
        out, n_persons=N_PERSONS, seed=11, chunk_size=12_000, parkinson={"enabled": True}
    )
    return out, summary


def _diagnoses(out: Path, code: str) -> pl.DataFrame:
    return pl.read_parquet(out / "diagnoses.parquet").filter(pl.col("icd10_code") == code)


def _assert_records_inside_observation(records: pl.DataFrame, population: pl.DataFrame) -> None:
    """No record outside the study window or on/after death or emigration."""
    assert records["diagnosis_date"].is_between(STUDY_START, STUDY_END).all()
    joined = records.join(population, on="person_id")
    assert joined.height == records.height  # every record belongs to a known person
    late = joined.filter(
        (pl.col("diagnosis_date") >= pl.col("death_date"))
        | (pl.col("diagnosis_date") >= pl.col("emigration_date"))
    )
    assert late.height == 0


def test_disabled_diagnosis_extract_holds_the_ms_patients_g35_records(
    simulated: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = simulated
    diagnoses = pl.read_parquet(out / "diagnoses.parquet")
    assert dict(diagnoses.schema) == DIAGNOSES_SCHEMA
    assert diagnoses.height == summary["diagnosis_records"] > 0
    # the G35 records, and the serious infections of the clinical data (tests/test_simulate_clinical.py)
    assert set(diagnoses["icd10_code"]) - {code for code, _ in INFECTION_CODES} == {"G35"}
    diagnoses = diagnoses.filter(pl.col("icd10_code") == "G35")
    assert diagnoses.select(pl.struct("person_id", "diagnosis_date").is_sorted()).item()
    assert not (out / "ground_truth_parkinson_persons.parquet").exists() and "parkinson" not in truth_of(out)
    population = pl.read_parquet(out / "population.parquet")
    _assert_records_inside_observation(diagnoses, population)
    registry = pl.read_parquet(out / "ms_registry.parquet")
    assert diagnoses["person_id"].is_in(registry["person_id"].implode()).all()
    first = diagnoses.group_by("person_id").agg(
        pl.col("diagnosis_date").min().alias("first"), pl.len().alias("records")
    )
    in_window = registry.filter(pl.col("diagnosis_date") >= STUDY_START).join(first, on="person_id")
    assert in_window.height == registry.filter(pl.col("diagnosis_date") >= STUDY_START).height
    assert (in_window["first"] == in_window["diagnosis_date"]).all()  # dated at the registry diagnosis
    assert (first["records"] >= 2).mean() > 0.7


def test_enabling_parkinson_only_adds_rows(
    simulated: tuple[Path, dict[str, Any]], parkinson_run: tuple[Path, dict[str, Any]]
) -> None:
    without, _ = simulated
    with_pd, summary = parkinson_run
    for name in ("population.parquet", "ms_registry.parquet", "ground_truth_persons.parquet"):
        assert pl.read_parquet(without / name).equals(pl.read_parquet(with_pd / name)), name
    assert _diagnoses(without, "G35").equals(_diagnoses(with_pd, "G35"))
    truth = truth_of(with_pd)
    added_codes = set(truth["parkinson"]["prodrome"]["substances"]) | set(
        truth["parkinson"]["drug_proxy"]["proxy_substances"]
    )
    columns = list(PRESCRIPTIONS_SCHEMA)
    n_added = 0
    for year in range(2004, 2024):
        name = f"prescriptions/dispensings_{year}.parquet"
        before = pl.read_parquet(without / name)
        after = pl.read_parquet(with_pd / name)
        # rows of other substances are unchanged, in their order
        is_added = after["atc_code"].is_in(list(added_codes))
        assert after.filter(~is_added).equals(before.filter(~before["atc_code"].is_in(list(added_codes)))), (
            name
        )
        # rows of the prodromal and proxy substances: the disabled run's rows plus the added ones
        counts = (
            after.filter(is_added)
            .fill_null("")
            .group_by(columns)
            .agg(pl.len().cast(pl.Int64).alias("after"))
            .join(
                before.filter(pl.col("atc_code").is_in(list(added_codes)))
                .fill_null("")
                .group_by(columns)
                .agg(pl.len().cast(pl.Int64).alias("before")),
                on=columns,
                how="full",
                coalesce=True,
            )
            .fill_null(0)
        )
        assert (counts["after"] >= counts["before"]).all(), name
        n_added += int((counts["after"] - counts["before"]).sum())
    parkinson_counts = truth["parkinson"]["counts"]
    assert n_added == parkinson_counts["prodromal_extra_dispensings"] + parkinson_counts["proxy_dispensings"]
    assert summary["dispensings"] == simulated[1]["dispensings"] + n_added


def test_parkinson_truth_is_declared_apart_from_the_ms_truth(
    parkinson_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = parkinson_run
    truth = truth_of(out)
    parkinson = truth["parkinson"]
    roles = parkinson["roles"]
    assert roles["causal_protective"] and roles["causal_harmful"]
    assert any(code.startswith("A06") for code in roles["prodromal"])
    assert any(code.startswith("N06A") for code in roles["prodromal"])
    assert not set(parkinson["substances"]) & set(PLANTED)  # chosen outside the MS truth
    assert set(parkinson["substances"]) <= set(truth["substances"])  # ... from the simulated catalogue
    for code in roles["causal_protective"]:
        assert parkinson["substances"][code]["planted_hr"] < 1
    for code in roles["causal_harmful"]:
        assert parkinson["substances"][code]["planted_hr"] > 1
    for code in roles["prodromal"]:
        assert parkinson["substances"][code]["planted_hr"] == 1
    proxy = parkinson["drug_proxy"]
    assert proxy["proxy_atc_prefixes"] == ["N04"]
    assert all(code.startswith("N04") for code in proxy["proxy_substances"])
    assert all(truth["substances"][code]["role"] == "null" for code in proxy["proxy_substances"])
    assert summary["parkinson"] == parkinson["counts"]


def test_parkinson_diagnoses_follow_the_planted_hazard(parkinson_run: tuple[Path, dict[str, Any]]) -> None:
    out, summary = parkinson_run
    pieces = _expected_onsets(out, outcome="parkinson")
    observed = int(pieces["observed"].sum())
    assert observed == summary["parkinson"]["incident_diagnoses_in_window"]
    assert 0.005 * N_PERSONS < observed < 0.05 * N_PERSONS
    by_sex = summary["parkinson"]["incident_diagnoses_in_window_by_sex"]
    assert by_sex["M"] > by_sex["F"]
    _assert_events_follow_the_planted_hazard(pieces, min_exposed_events=20)


def _incident_parkinson(out: Path) -> pl.DataFrame:
    """Persons with a true diagnosis inside their observation, with their diagnosis date and exit."""
    population = pl.read_parquet(out / "population.parquet").with_columns(
        exit=pl.min_horizontal("death_date", "emigration_date", pl.lit(DAY_AFTER_END))
    )
    return (
        pl.read_parquet(out / "ground_truth_parkinson_persons.parquet")
        .join(population, on="person_id")
        .filter(pl.col("true_diagnosis_date").is_between(STUDY_START, STUDY_END))
        .filter(pl.col("true_diagnosis_date") < pl.col("exit"))
        .select("person_id", "true_diagnosis_date", "exit", "birth_year")
    )


def test_parkinson_records_start_at_diagnosis_and_most_repeat(
    parkinson_run: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = parkinson_run
    records = _diagnoses(out, "G20")
    _assert_records_inside_observation(records, pl.read_parquet(out / "population.parquet"))
    assert records.height == summary["parkinson"]["diagnosis_records"]
    cases = _incident_parkinson(out)
    per_case = cases.join(
        records.group_by("person_id").agg(
            pl.col("diagnosis_date").min().alias("first"),
            pl.len().alias("records"),
            pl.col("diagnosis_date").sort().diff().dt.total_days().max().alias("longest_gap_days"),
            (pl.col("diagnosis_date").max() - pl.col("diagnosis_date").min())
            .dt.total_days()
            .alias("span_days"),
        ),
        on="person_id",
        how="left",
    )
    assert per_case["first"].null_count() == 0  # every incident case has a record ...
    assert (per_case["first"] == per_case["true_diagnosis_date"]).all()  # ... dated at the diagnosis
    followed = per_case.filter((pl.col("exit") - pl.col("true_diagnosis_date")).dt.total_days() > 3 * 365)
    assert followed.height > 100
    repeated = (followed["records"] >= 2).mean()
    assert 0.75 < repeated < 0.95  # most have several records, some only one
    # a "two records at least 30 days apart" rule finds most followed cases
    assert (followed["span_days"] >= 30).mean() > 0.75
    # records of persons diagnosed before the window (follow-up visits only) start after study start
    prevalent = records.join(cases, on="person_id", how="anti")
    assert prevalent["person_id"].n_unique() > 0


def _rates_before_diagnosis(out: Path, codes: list[str], cases: pl.DataFrame) -> dict[str, float]:
    """Dispensings of `codes` per case-year 0-2, 2-5 and 6-10 years before the true diagnosis."""
    counts = (
        read_prescriptions(out)
        .filter(pl.col("atc_code").is_in(codes))
        .join(cases, on="person_id")
        .with_columns(
            years_before=(pl.col("true_diagnosis_date") - pl.col("dispense_date")).dt.total_days() / 365.25
        )
        .select(
            recent=pl.col("years_before").is_between(0, 2, closed="right").sum(),
            middle=pl.col("years_before").is_between(2, 5, closed="right").sum(),
            early=pl.col("years_before").is_between(6, 10, closed="right").sum(),
        )
        .row(0, named=True)
    )
    return {"recent": counts["recent"] / 2, "middle": counts["middle"] / 3, "early": counts["early"] / 4}


def test_parkinson_prodrome_rises_over_years_before_diagnosis(
    parkinson_run: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = parkinson_run
    parkinson = truth_of(out)["parkinson"]
    window = parkinson["prodrome"]["window_years_before_diagnosis"]
    assert window >= 5  # a lead time of years, not months
    cases = _incident_parkinson(out).filter(pl.col("true_diagnosis_date") >= date(2014, 1, 1))
    cases = cases.filter(pl.col("birth_year") < 1994)  # observed 10 years before diagnosis
    assert cases.height > 100
    rates = _rates_before_diagnosis(out, parkinson["prodrome"]["substances"], cases)
    assert rates["recent"] > rates["middle"] > 1.3 * rates["early"], rates
    assert rates["recent"] > 2.5 * rates["early"], rates
    null_codes = [
        c for c, s in truth_of(out)["substances"].items()
        if s["role"] == "null" and s["n_users"] > 2_000 and c not in parkinson["substances"]
    ]  # fmt: skip
    null_rates = _rates_before_diagnosis(out, null_codes, cases)
    assert null_rates["recent"] < 1.5 * null_rates["early"], null_rates


def test_parkinson_proxy_drug_starts_after_diagnosis(parkinson_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = parkinson_run
    proxy = truth_of(out)["parkinson"]["drug_proxy"]
    cases = _incident_parkinson(out)
    dispensings = read_prescriptions(out).filter(pl.col("atc_code").is_in(proxy["proxy_substances"]))
    per_case = cases.join(
        dispensings.join(cases, on="person_id")
        .group_by("person_id")
        .agg(
            before=(pl.col("dispense_date") < pl.col("true_diagnosis_date")).sum(),
            after=(pl.col("dispense_date") >= pl.col("true_diagnosis_date")).sum(),
            first_after=pl.col("dispense_date")
            .filter(pl.col("dispense_date") >= pl.col("true_diagnosis_date"))
            .min(),
        ),
        on="person_id",
        how="left",
    ).with_columns(pl.col("before", "after").fill_null(0))
    followed = per_case.filter((pl.col("exit") - pl.col("true_diagnosis_date")).dt.total_days() > 365)
    assert followed.height > 100
    treated = (followed["after"] >= 2).mean()
    assert abs(treated - proxy["treated_share"]) < 0.08, treated
    assert per_case["before"].sum() < 0.02 * per_case["after"].sum()  # background N04 use only
    delay = (followed["first_after"] - followed["true_diagnosis_date"]).dt.total_days().drop_nulls()
    assert delay.median() < 3 * proxy["start_delay_mean_days"]


def test_parkinson_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        simulate_registries(tmp_path, n_persons=10, parkinson={"enabled": True, "incidence": 5})
    with pytest.raises(ValueError, match="must be positive"):
        simulate_registries(
            tmp_path, n_persons=10, parkinson={"enabled": True, "baseline_incidence_per_100k": 0}
        )
