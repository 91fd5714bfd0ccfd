"""The simulator's MS clinical data (issue 16): contract of the four tables, determinism, the planted truth
visible in the raw tables, the DMT dispensings, and that nothing else changes when the feature is on."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from repurpose.layout import results_layout
from repurpose.simulate import simulate_registries, simulated_clinical_files
from repurpose.simulate.clinical_model import (
    DEFAULT_CLINIC_LOG_HR_SD,
    DEFAULT_OUTLIER_HAZARD_RATIOS,
    DRUGS,
    STOP_REASONS,
    ClinicalSettings,
)
from repurpose.simulate.infections import INFECTION_CODES
from repurpose.study_config import merge_over_defaults

REPO = Path(__file__).resolve().parents[1]
STUDY_START = date(2004, 1, 1)
STUDY_END = date(2023, 12, 31)
N_PERSONS = 30_000
CLINICAL_FILES = ("ms_treatments", "ms_relapses", "ms_edss", "sick_leave")
PHARMACY = {d.atc_code for d in DRUGS if d.pharmacy}
ALL_DRUGS = {d.atc_code for d in DRUGS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same population with the clinical data on (default) and off, two chunks, a few invalid rows."""
    made = {}
    for name, clinical in (("on", None), ("off", {"enabled": False})):
        out = tmp_path_factory.mktemp(f"clinical_{name}")
        simulate_registries(
            out, n_persons=N_PERSONS, seed=13, n_corrupt_rows=12, chunk_size=16_000, clinical=clinical
        )
        made[name] = out
    return made


def truth_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "ground_truth.json").read_text(encoding="utf-8"))


def read(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{name}.parquet")


def prescriptions(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / "prescriptions").glob("*.parquet")))


# --------------------------------------------------------------------------------------------------
# Determinism and the feature switch
# --------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_clinical_tables_and_another_seed_does_not(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        simulate_registries(tmp_path / name, n_persons=3_000, seed=seed, chunk_size=1_000)
    for table in (*CLINICAL_FILES, "ms_registry"):
        assert read(tmp_path / "a", table).equals(read(tmp_path / "b", table)), table
    assert truth_of(tmp_path / "a")["clinical"] == truth_of(tmp_path / "b")["clinical"]
    assert not read(tmp_path / "a", "ms_treatments").equals(read(tmp_path / "c", "ms_treatments"))


def test_enabling_the_clinical_data_changes_no_existing_output(runs: dict[str, Path]) -> None:
    """Population, hidden truth, the G35 diagnoses, the registry's existing columns, every non-DMT dispensing
    (in order) and the existing ground truth are the same; the DMT rows and the serious-infection diagnoses are
    the only rows added."""
    on, off = runs["on"], runs["off"]
    for name in ("population.parquet", "ground_truth_persons.parquet"):
        assert pl.read_parquet(on / name).equals(pl.read_parquet(off / name)), name
    infection = pl.col("icd10_code").is_in([code for code, _ in INFECTION_CODES])
    diagnoses_on = read(on, "diagnoses")
    assert diagnoses_on.filter(~infection).equals(read(off, "diagnoses"))
    counts = truth_of(on)["clinical"]["serious_infections"]["counts"]
    assert diagnoses_on.filter(infection).height == counts["events_on_high_efficacy"] + counts["events_off_high_efficacy"] > 0
    registry_on, registry_off = read(on, "ms_registry"), read(off, "ms_registry")
    existing = ["person_id", "onset_date", "diagnosis_date", "edss_at_diagnosis"]
    assert registry_on.select(existing).equals(registry_off.select(existing))
    assert set(registry_off.columns) == {*existing, "ms_course_at_diagnosis"}
    # the recorded course only refines RR into CIS and adds unknown
    changed = registry_on.join(registry_off, on="person_id", suffix="_off").filter(
        pl.col("ms_course_at_diagnosis") != pl.col("ms_course_at_diagnosis_off")
    )
    assert changed.height > 0
    assert set(changed["ms_course_at_diagnosis"]) <= {"CIS", "unknown"}
    assert set(changed.filter(pl.col("ms_course_at_diagnosis") == "CIS")["ms_course_at_diagnosis_off"]) == {
        "RR"
    }
    for year in range(2004, 2024):
        name = f"prescriptions/dispensings_{year}.parquet"
        with_dmt = pl.read_parquet(on / name)
        without = pl.read_parquet(off / name)
        assert with_dmt.filter(~pl.col("atc_code").is_in(list(PHARMACY))).equals(without), name
        assert not without["atc_code"].is_in(list(PHARMACY)).any()  # rituximab is also a cancer drug
    truth_on, truth_off = truth_of(on), truth_of(off)
    assert {k: v for k, v in truth_on.items() if k != "clinical"} == truth_off
    n_dmt = prescriptions(on).filter(pl.col("atc_code").is_in(list(PHARMACY))).height
    assert n_dmt == truth_on["clinical"]["counts"]["dmt_dispensings"] > 0
    for name in CLINICAL_FILES:
        assert not (off / f"{name}.parquet").exists()


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown settings"):
        ClinicalSettings.from_config({"n_clinic": 3})
    with pytest.raises(ValueError, match="outlier"):
        ClinicalSettings.from_config(
            {"clinics_per_country": {"NO": 1, "DK": 1}, "outlier_hazard_ratios": [2, 0.5]}
        )
    with pytest.raises(ValueError, match="unknown_stop_reason_share"):
        simulate_registries(tmp_path, n_persons=200, clinical={"unknown_stop_reason_share": 1.5})


# --------------------------------------------------------------------------------------------------
# The data dictionary contract
# --------------------------------------------------------------------------------------------------


def test_tables_follow_the_contract(runs: dict[str, Path]) -> None:
    out = runs["on"]
    registry = read(out, "ms_registry")
    population = pl.read_parquet(out / "population.parquet")
    truth = truth_of(out)["clinical"]
    clinics = truth["clinics"]["per_clinic"]
    assert registry["clinic_id"].is_in(list(clinics)).all() and registry["clinic_id"].null_count() == 0
    assert {(c, clinics[c]["country"]) for c in registry["clinic_id"]} == set(
        zip(registry["clinic_id"], registry["country"], strict=True)
    )
    assert set(registry["country"]) == {"NO", "DK"}
    assert set(registry["ms_course_at_diagnosis"]) == {"RR", "SP", "PP", "CIS", "unknown"}
    assert 12 <= len(clinics) <= 16
    sizes = registry.group_by("clinic_id").len()["len"]
    assert sizes.max() > 2 * sizes.min()  # unequal sizes

    treatments = read(out, "ms_treatments")
    assert dict(treatments.schema) == {
        "person_id": pl.Int64,
        "treatment_atc_code": pl.Utf8,
        "start_date": pl.Date,
        "stop_date": pl.Date,
        "stop_reason": pl.Utf8,
        "clinic_id": pl.Utf8,
    }
    assert set(treatments["treatment_atc_code"]) == ALL_DRUGS
    assert treatments["treatment_atc_code"].str.contains(r"^[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}$").all()
    assert set(treatments["stop_reason"].drop_nulls()) == {*STOP_REASONS, "unknown"}
    assert (treatments["stop_date"].is_null() == treatments["stop_reason"].is_null()).all()
    assert (
        treatments.drop_nulls("stop_date").select(pl.col("stop_date") > pl.col("start_date")).to_series()
    ).all()
    assert treatments["start_date"].max() <= STUDY_END and treatments["stop_date"].max() <= STUDY_END
    # one drug at a time, so no two episodes of one drug overlap (and none of any drug)
    ordered = treatments.sort("person_id", "start_date").with_columns(
        next_start=pl.col("start_date").shift(-1).over("person_id")
    )
    assert ordered.filter(pl.col("next_start").is_not_null() & pl.col("stop_date").is_null()).height == 0
    assert ordered.filter(pl.col("next_start") <= pl.col("stop_date")).height == 0
    assert (
        treatments.join(registry, on="person_id")
        .filter(pl.col("start_date") <= pl.col("diagnosis_date"))
        .height
        == 0
    )
    assert treatments.join(registry, on="person_id", how="anti").height == 0
    assert (
        (treatments.join(registry, on="person_id").select(pl.col("clinic_id") == pl.col("clinic_id_right")))
        .to_series()
        .all()
    )

    relapses = read(out, "ms_relapses")
    assert dict(relapses.schema) == {"person_id": pl.Int64, "relapse_date": pl.Date}
    with_onset = relapses.join(registry, on="person_id")
    assert with_onset.height == relapses.height
    assert with_onset.filter(pl.col("relapse_date") <= pl.col("onset_date")).height == 0
    assert relapses["relapse_date"].max() <= STUDY_END
    # distinct relapses are at least 30 days apart (so no duplicate rows)
    separation = relapses.sort("person_id", "relapse_date").select(
        (pl.col("relapse_date") - pl.col("relapse_date").shift(1)).over("person_id").dt.total_days()
    )
    assert separation.to_series().drop_nulls().min() >= 30

    edss = read(out, "ms_edss")
    assert dict(edss.schema) == {"person_id": pl.Int64, "visit_date": pl.Date, "edss": pl.Float64}
    assert edss["edss"].is_between(0, 10).all() and ((edss["edss"] * 2) % 1 == 0).all()
    visits = edss.join(registry, on="person_id")
    assert visits.height == edss.height
    assert visits.filter(pl.col("visit_date") < pl.col("diagnosis_date")).height == 0
    # the visit on the diagnosis day records the registry's EDSS at diagnosis
    at_diagnosis = visits.filter(pl.col("visit_date") == pl.col("diagnosis_date"))
    assert at_diagnosis.height > 0 and (at_diagnosis["edss"] == at_diagnosis["edss_at_diagnosis"]).all()
    assert edss.select(pl.struct("person_id", "visit_date").is_unique()).to_series().all()

    leave = read(out, "sick_leave")
    assert dict(leave.schema) == {
        "person_id": pl.Int64,
        "start_date": pl.Date,
        "end_date": pl.Date,
        "percent": pl.Int32,
    }
    assert leave["percent"].is_between(1, 100).all() and leave["percent"].min() >= 20
    assert (leave["end_date"] >= leave["start_date"]).all()
    assert leave["start_date"].min() >= STUDY_START and leave["end_date"].max() <= STUDY_END
    ages = leave.join(population, on="person_id").select(
        pl.col("start_date").dt.year() - pl.col("birth_year")
    )
    # aged 18-66 at the start of the 30-day step (the population has the birth year only; a spell starts up
    # to a week after a relapse, so up to 68 in years of the start minus the birth year)
    assert ages.to_series().is_between(17, 68).all()
    gaps = leave.sort("person_id", "start_date").with_columns(
        previous_end=pl.col("end_date").shift(1).over("person_id")
    )
    assert gaps.filter(pl.col("start_date") <= pl.col("previous_end")).height == 0

    # nothing on or after death or emigration
    for name, column in (
        ("ms_treatments", "start_date"),
        ("ms_relapses", "relapse_date"),
        ("ms_edss", "visit_date"),
    ):
        late = (
            read(out, name)
            .join(population, on="person_id")
            .filter((pl.col(column) >= pl.col("death_date")) | (pl.col(column) >= pl.col("emigration_date")))
        )
        assert late.height == 0, name


# --------------------------------------------------------------------------------------------------
# The planted truth in the raw tables
# --------------------------------------------------------------------------------------------------


def _episodes(out: Path) -> pl.DataFrame:
    """Episodes with their follow-up in years (to the stop, or censored at death, emigration or study end)."""
    population = pl.read_parquet(out / "population.parquet")
    end = pl.min_horizontal(
        pl.col("death_date").fill_null(date(2100, 1, 1)),
        pl.col("emigration_date").fill_null(date(2100, 1, 1)),
        pl.lit(STUDY_END + timedelta(days=1)),
    )
    return (
        read(out, "ms_treatments")
        .join(population, on="person_id")
        .with_columns(
            stopped=pl.col("stop_date").is_not_null(),
            years=((pl.col("stop_date").fill_null(end) - pl.col("start_date")).dt.total_days() / 365.25),
        )
    )


def test_outlier_clinics_have_the_planted_crude_stop_rates(runs: dict[str, Path]) -> None:
    """Crude stop rates per person-year by clinic: the planted high outlier is above every ordinary clinic's
    median, the low outlier below it, and the rate ratios follow the planted log HRs (Spearman)."""
    out = runs["on"]
    truth = truth_of(out)["clinical"]["clinics"]
    rates = (
        _episodes(out)
        .group_by("clinic_id")
        .agg(stops=pl.col("stopped").sum(), years=pl.col("years").sum())
        .with_columns(rate=pl.col("stops") / pl.col("years"))
    )
    rate = dict(zip(rates["clinic_id"], rates["rate"], strict=True))
    planted = {c: v["log_hr"] for c, v in truth["per_clinic"].items()}
    ordinary = [c for c in planted if c not in truth["outlier_clinic_ids"]]
    median_rate = float(np.median([rate[c] for c in ordinary]))
    for clinic in truth["outlier_clinic_ids"]:
        hr = np.exp(truth["per_clinic"][clinic]["outlier_log_hr"])
        assert (rate[clinic] > 1.3 * median_rate) if hr > 1 else (rate[clinic] < median_rate / 1.3), clinic
    codes = sorted(planted)
    ranks = (
        np.argsort(np.argsort([planted[c] for c in codes])),
        np.argsort(np.argsort([rate[c] for c in codes])),
    )
    assert np.corrcoef(*ranks)[0, 1] > 0.6
    assert truth["tau"] == DEFAULT_CLINIC_LOG_HR_SD and len(truth["outlier_clinic_ids"]) == 2


def test_reasons_follow_their_planted_hazards(runs: dict[str, Path]) -> None:
    """Pregnancy stops only for women of childbearing age; lack of efficacy follows relapses on the drug;
    adverse events are most frequent in the first half year; the crude reason shares are ordered as the
    planted baseline hazards (adverse events most, then patient wish, then lack of efficacy / pregnancy)."""
    out = runs["on"]
    episodes = _episodes(out).with_columns(age_at_stop=(pl.col("stop_date").dt.year() - pl.col("birth_year")))
    pregnancy = episodes.filter(pl.col("stop_reason") == "pregnancy")
    assert pregnancy.height > 20
    assert (pregnancy["sex"] == "F").all() and pregnancy["age_at_stop"].is_between(17, 46).all()
    shares = episodes.filter(pl.col("stopped"))["stop_reason"].value_counts(normalize=True)
    share = dict(zip(shares["stop_reason"], shares["proportion"], strict=True))
    assert share["adverse_event"] > share["patient_wish"] > share["other"]
    assert 0.04 < share["unknown"] < 0.13  # planted 8%
    relapses = read(out, "ms_relapses")
    on_drug = (
        episodes.filter(pl.col("stopped"))
        .join(relapses, on="person_id", how="left")
        .with_columns(
            in_last_year=(pl.col("relapse_date") >= pl.col("start_date"))
            & (pl.col("relapse_date") < pl.col("stop_date"))
            & (pl.col("relapse_date") >= pl.col("stop_date") - timedelta(days=365))
        )
        .group_by("person_id", "start_date", "stop_reason")
        .agg(pl.col("in_last_year").fill_null(False).any().alias("relapse_before_stop"))
    )
    by_reason = dict(on_drug.group_by("stop_reason").agg(pl.col("relapse_before_stop").mean()).iter_rows())
    assert by_reason["lack_of_efficacy"] > 2 * by_reason["patient_wish"]
    early = episodes.filter(pl.col("stopped")).with_columns(first_half_year=pl.col("years") < 0.5)
    early_share = dict(early.group_by("stop_reason").agg(pl.col("first_half_year").mean()).iter_rows())
    assert early_share["adverse_event"] > early_share["patient_wish"]


def test_treatment_eras_countries_and_confounding_by_indication(runs: dict[str, Path]) -> None:
    out = runs["on"]
    treatments = read(out, "ms_treatments").join(
        read(out, "ms_registry").select("person_id", "country"), on="person_id"
    )
    available = {d.atc_code: date.fromisoformat(d.available_from) for d in DRUGS}
    for code, first in available.items():
        starts = treatments.filter(pl.col("treatment_atc_code") == code)["start_date"]
        assert starts.min() >= first, code
    rituximab = (
        treatments.filter(pl.col("start_date") >= date(2014, 1, 1))
        .group_by("country")
        .agg((pl.col("treatment_atc_code") == "L01XC02").mean().alias("share"))
    )
    share = dict(rituximab.iter_rows())
    assert share["NO"] > 3 * share["DK"]
    # more relapses in the two years before a start -> more often a high-efficacy drug
    high = {d.atc_code for d in DRUGS if d.high_efficacy}
    relapses = read(out, "ms_relapses")
    starts = (
        treatments.join(relapses, on="person_id", how="left")
        .with_columns(
            recent=(pl.col("relapse_date") < pl.col("start_date"))
            & (pl.col("relapse_date") >= pl.col("start_date") - timedelta(days=730))
        )
        .group_by("person_id", "start_date", "treatment_atc_code")
        .agg(pl.col("recent").fill_null(False).sum().alias("n_recent"))
        .with_columns(high=pl.col("treatment_atc_code").is_in(list(high)), active=pl.col("n_recent") >= 2)
        .filter(pl.col("start_date") >= date(2012, 1, 1))
    )
    high_share = dict(starts.group_by("active").agg(pl.col("high").mean()).iter_rows())
    assert high_share[True] > high_share[False] + 0.1


def test_relapse_rate_falls_with_disease_duration_and_edss_worsens(runs: dict[str, Path]) -> None:
    out = runs["on"]
    registry = read(out, "ms_registry").drop_nulls("onset_date")
    relapses = (
        read(out, "ms_relapses")
        .join(registry, on="person_id")
        .with_columns(years=(pl.col("relapse_date") - pl.col("onset_date")).dt.total_days() / 365.25)
    )
    # relapses per patient in years 0-5 after onset vs 10-15, among patients with onset in 2000-2008
    # (followed through both periods unless they die or emigrate)
    cohort = relapses.filter(pl.col("onset_date").dt.year().is_between(1996, 2006))
    early = cohort.filter(pl.col("years") < 5).height
    late = cohort.filter(pl.col("years").is_between(10, 15, closed="left")).height
    assert early > 1.5 * late
    edss = read(out, "ms_edss").sort("person_id", "visit_date")
    change = (
        edss.group_by("person_id")
        .agg(
            first=pl.col("edss").first(),
            last=pl.col("edss").last(),
            years=(pl.col("visit_date").last() - pl.col("visit_date").first()).dt.total_days() / 365.25,
        )
        .filter(pl.col("years") > 5)
    )
    assert (change["last"] - change["first"]).mean() > 0.5


# --------------------------------------------------------------------------------------------------
# DMT dispensings
# --------------------------------------------------------------------------------------------------


def test_dmt_dispensings_are_pharmacy_drugs_after_diagnosis_inside_episodes(runs: dict[str, Path]) -> None:
    out = runs["on"]
    all_rows = prescriptions(out)
    dmt = all_rows.filter(pl.col("atc_code").is_in(list(PHARMACY)))
    # never the infusion drugs (rituximab is dispensed, as a cancer drug of the screen, never for MS)
    assert (
        not all_rows.filter(pl.col("atc_code").is_in(list(ALL_DRUGS - PHARMACY)))["reimbursement_code"]
        .is_in(["G35"])
        .any()
    )
    assert set(dmt["atc_code"]) == PHARMACY
    registry = read(out, "ms_registry")
    joined = dmt.join(registry, on="person_id", how="left")
    assert joined["diagnosis_date"].null_count() == 0
    assert joined.filter(pl.col("dispense_date") <= pl.col("diagnosis_date")).height == 0
    assert (dmt["reimbursement_code"] == "G35").all() and dmt["ddd"].is_in([30.0, 90.0]).all()
    treatments = read(out, "ms_treatments")
    inside = dmt.join(
        treatments, left_on=["person_id", "atc_code"], right_on=["person_id", "treatment_atc_code"]
    ).filter(
        (pl.col("dispense_date") >= pl.col("start_date"))
        & (pl.col("dispense_date") < pl.col("stop_date").fill_null(date(2100, 1, 1)))
    )
    assert inside.height == dmt.height  # every dispensing lies in an episode of its drug


def test_gap_based_stop_agrees_with_the_registry_stop_for_most_episodes(runs: dict[str, Path]) -> None:
    """AdhereR-style: an episode is discontinued at the end of the supply of the first dispensing followed by a
    gap longer than supply + 60 days of grace (or by no dispensing before study end). For stopped episodes of
    pharmacy drugs inside the window, that date lies within one supply (90 days) of the registry's stop in
    most episodes; episodes still running show no such gap in most cases."""
    out = runs["on"]
    grace = 60
    treatments = read(out, "ms_treatments").filter(
        pl.col("treatment_atc_code").is_in(list(PHARMACY)) & (pl.col("start_date") >= STUDY_START)
    )
    population = pl.read_parquet(out / "population.parquet")
    followed = treatments.join(population, on="person_id").filter(
        pl.col("death_date").is_null() & pl.col("emigration_date").is_null()
    )
    dmt = prescriptions(out).filter(pl.col("atc_code").is_in(list(PHARMACY)))
    gaps = (
        followed.join(dmt, left_on=["person_id", "treatment_atc_code"], right_on=["person_id", "atc_code"])
        .filter(
            (pl.col("dispense_date") >= pl.col("start_date"))
            & (pl.col("dispense_date") < pl.col("stop_date").fill_null(date(2100, 1, 1)))
        )
        .sort("person_id", "start_date", "dispense_date")
        .with_columns(
            supply_end=pl.col("dispense_date") + pl.duration(days=pl.col("ddd").cast(pl.Int64)),
            next_dispense=pl.col("dispense_date").shift(-1).over("person_id", "start_date"),
        )
        .with_columns(
            gap_stop=pl.col("next_dispense").is_null()
            | (pl.col("next_dispense") > pl.col("supply_end") + timedelta(days=grace))
        )
        .filter(pl.col("gap_stop"))
        .group_by("person_id", "start_date")
        .agg(pl.col("supply_end").first(), pl.col("stop_date").first(), pl.col("next_dispense").first())
    )
    stopped = gaps.filter(pl.col("stop_date").is_not_null() & (pl.col("stop_date") < date(2023, 6, 1)))
    assert stopped.height > 100
    agree = (pl.col("supply_end") - pl.col("stop_date")).dt.total_days().abs() <= 90
    assert stopped.select(agree.mean()).item() > 0.75
    running = gaps.filter(pl.col("stop_date").is_null())
    # a running episode's first gap is a late refill or its supply running past study end
    false_stop = running.filter(
        pl.col("next_dispense").is_not_null() | (pl.col("supply_end") + timedelta(days=grace) < STUDY_END)
    )
    assert false_stop.height < 0.35 * running.height
    truth = truth_of(out)["clinical"]["dispensings"]
    assert set(truth["pharmacy_drugs"]) == PHARMACY and truth["refill_supply_days"] == 90


# --------------------------------------------------------------------------------------------------
# The demo's wiring
# --------------------------------------------------------------------------------------------------


def test_the_demo_reads_the_simulated_clinical_extracts_and_a_study_with_its_own_registers_does_not() -> None:
    demo = merge_over_defaults({}, REPO / "config" / "config.yaml")
    files = simulated_clinical_files(demo["simulate"]["clinical"])
    assert set(files) == set(CLINICAL_FILES)
    for name, file in files.items():
        assert demo["inputs"][name]["path"] == results_layout().simulated(file)
    own = {name: {"path": f"/data/{name}"} for name in ("population", "prescriptions", "ms_registry")}
    study = merge_over_defaults({"inputs": own}, REPO / "config" / "config.yaml")
    assert not set(CLINICAL_FILES) & set(study["inputs"])
    off = merge_over_defaults({"simulate": {"clinical": {"enabled": False}}}, REPO / "config" / "config.yaml")
    assert (
        not set(CLINICAL_FILES) & set(off["inputs"])
        and simulated_clinical_files(off["simulate"]["clinical"]) == {}
    )
    # a demo run may still point an extract elsewhere
    mine = merge_over_defaults({"inputs": {"ms_edss": {"path": "edss.csv"}}}, REPO / "config" / "config.yaml")
    assert mine["inputs"]["ms_edss"]["path"] == "edss.csv"
    assert mine["inputs"]["ms_treatments"]["path"] == results_layout().simulated("ms_treatments.parquet")


def test_ground_truth_declares_the_clinical_model(runs: dict[str, Path]) -> None:
    out = runs["on"]
    truth = truth_of(out)["clinical"]
    clinics = truth["clinics"]["per_clinic"]
    registry = read(out, "ms_registry")
    counted = dict(registry.group_by("clinic_id").len().iter_rows())
    # every valid registry patient is counted at their clinic (the invalid rows are not patients)
    assert sum(c["n_patients"] for c in clinics.values()) == truth["counts"]["patients"]
    corrupt = truth_of(out)["corrupt_rows"]
    assert registry.height - truth["counts"]["patients"] == (
        corrupt["ms_registry_unknown_person"] + corrupt["diagnosis_before_birth"]
    )
    assert all(counted.get(k, 0) >= v["n_patients"] for k, v in clinics.items())
    for clinic in clinics.values():
        own = clinic["outlier_log_hr"] or clinic["random_log_hr"]  # an outlier's planted HR replaces its draw
        assert clinic["log_hr"] == pytest.approx(own, abs=2e-6)
    assert sorted(np.exp([clinics[c]["outlier_log_hr"] for c in truth["clinics"]["outlier_clinic_ids"]])) == (
        pytest.approx(sorted(DEFAULT_OUTLIER_HAZARD_RATIOS))
    )
    assert set(truth["discontinuation"]["baseline_hazard_per_year"]) == set(STOP_REASONS)
    assert {code: d["relapse_rate_ratio"] for code, d in truth["drugs"].items()} == {
        d.atc_code: d.relapse_rate_ratio for d in DRUGS
    }
    assert all(d["progression_hr"] < 1 for d in truth["drugs"].values())
    high = [d["progression_hr"] for d in truth["drugs"].values() if d["high_efficacy"]]
    low = [d["progression_hr"] for d in truth["drugs"].values() if not d["high_efficacy"]]
    assert max(high) < min(low)  # planted: lower progression on the high-efficacy drugs
    assert set(truth["dispensings"]["pharmacy_drugs"]) == PHARMACY
    assert set(truth["dispensings"]["infusion_drugs"]) == ALL_DRUGS - PHARMACY
    counts = truth["counts"]
    for name, key in (
        ("ms_relapses", "relapses"),
        ("ms_edss", "edss_visits"),
        ("sick_leave", "sick_leave_episodes"),
    ):
        assert read(out, name).height == counts[key], name


# --------------------------------------------------------------------------------------------------
# Serious infections (the trial emulation's safety outcome)
# --------------------------------------------------------------------------------------------------


def test_serious_infections_recomputed_from_the_tables_match_the_planted_truth(runs: dict[str, Path]) -> None:
    """Events and person-years on and off high-efficacy therapy, recomputed from the written tables (MS
    diagnosis to exit inside the study window; the high-efficacy episodes of ms_treatments), equal the truth's
    counts, and the observed rate ratio is near the planted one (Poisson, a few hundred events)."""
    out = runs["on"]
    truth = truth_of(out)["clinical"]["serious_infections"]
    end = STUDY_END + timedelta(days=1)
    population = read(out, "population").select(
        "person_id", pl.min_horizontal(pl.col("death_date"), pl.col("emigration_date"), pl.lit(end)).alias("exit"))
    invalid = truth_of(out)["corrupt_row_person_ids"]["diagnosis_before_birth"]  # not simulated as patients
    registry = read(out, "ms_registry").filter(~pl.col("person_id").is_in(invalid)).join(population, on="person_id").select(
        "person_id", pl.max_horizontal("diagnosis_date", pl.lit(STUDY_START)).alias("first"), "exit")
    registry = registry.filter(pl.col("exit") > pl.col("first"))
    episodes = read(out, "ms_treatments").filter(pl.col("treatment_atc_code").is_in(truth["high_efficacy_codes"]))
    episodes = episodes.join(registry, on="person_id").select(
        "person_id", pl.max_horizontal("start_date", "first").alias("a"),
        pl.min_horizontal(pl.coalesce("stop_date", "exit"), "exit").alias("b"))
    days_on = episodes.select((pl.col("b") - pl.col("a")).dt.total_days().clip(lower_bound=0).sum()).item()
    days_all = registry.select((pl.col("exit") - pl.col("first")).dt.total_days().sum()).item()
    infections = read(out, "diagnoses").filter(pl.col("icd10_code").is_in([c for c, _ in INFECTION_CODES]))
    on = infections.join(episodes, on="person_id").filter(
        (pl.col("diagnosis_date") >= pl.col("a")) & (pl.col("diagnosis_date") < pl.col("b")))
    counts = truth["counts"]
    assert on.height == counts["events_on_high_efficacy"]
    assert infections.height - on.height == counts["events_off_high_efficacy"]
    assert abs(days_on / 365.25 - counts["years_on_high_efficacy"]) < 0.06
    assert abs((days_all - days_on) / 365.25 - counts["years_off_high_efficacy"]) < 0.06
    rate_on = on.height / (days_on / 365.25)
    rate_off = (infections.height - on.height) / ((days_all - days_on) / 365.25)
    assert truth["high_efficacy_rate_ratio"] == 2.0 and truth["rate_per_1000_years_off_high_efficacy"] == 15.0
    # log rate ratio SE = sqrt(1/events_on + 1/events_off); 3.5 SE
    se = (1 / on.height + 1 / (infections.height - on.height)) ** 0.5
    assert abs(np.log(rate_on / rate_off) - np.log(2.0)) < 3.5 * se
    assert abs(rate_off * 1000 - 15.0) < 3.5 * 1000 * (infections.height - on.height) ** 0.5 / ((days_all - days_on) / 365.25)
    # every infection after the MS diagnosis, inside observation
    late = infections.join(registry, on="person_id").filter(
        (pl.col("diagnosis_date") < pl.col("first")) | (pl.col("diagnosis_date") >= pl.col("exit")))
    assert late.height == 0 and infections["person_id"].is_in(registry["person_id"].implode()).all()


def test_serious_infections_off_changes_no_other_output(tmp_path: Path) -> None:
    for name, rate in (("on", None), ("off", 0)):
        simulate_registries(tmp_path / name, n_persons=4_000, seed=8, chunk_size=2_000,
                            clinical=None if rate is None else {"serious_infection_rate_per_1000_years": rate})  # fmt: skip
    on, off = tmp_path / "on", tmp_path / "off"
    files = sorted(p.relative_to(off) for p in off.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(on) for p in on.rglob("*") if p.is_file())
    changed = [str(f) for f in files if (on / f).read_bytes() != (off / f).read_bytes()]
    assert changed == ["diagnoses.parquet", "ground_truth.json"]
    assert set(read(off, "diagnoses")["icd10_code"]) == {"G35"}
    truth_on, truth_off = truth_of(on), truth_of(off)
    assert "serious_infections" not in truth_off["clinical"]
    truth_on["clinical"].pop("serious_infections")
    assert truth_on == truth_off
