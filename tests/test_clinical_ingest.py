"""Validation of the MS registry's clinical extracts (issue 16): treatments, relapses, EDSS scores and sick leave,
and the new columns of the MS registry. Every rejection reason is tested with one bad row added to a small
hand-made extract of three persons, whose fate is worked out by hand beside each row."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import planned_jobs, snakemake_output

from repurpose.config import ConfigError, validate_config
from repurpose.registry.clinical_ingest import overlapping_episodes
from repurpose.registry.dictionary import CLINICAL_EXTRACTS, load_extract_spec
from repurpose.registry.ingest import validate_extracts
from repurpose.registry.reader import ExtractError
from repurpose.release.export import identifier_and_date_names

REPO = Path(__file__).resolve().parents[1]

# Person 1: born May 1980, MS onset 2010-01-01, diagnosis 2011-02-03. Person 2: born 1975 (1 July assumed;
# earliest 1975-01-01), died 2015-06-01, MS without an onset date, diagnosed 2012-01-01. Person 3: born
# December 1990, no MS. Person 4 is in no extract but the population.
POPULATION = [
    "person_id,sex,birth_year,birth_month,death_date,emigration_date,education",
    "1,F,1980,5,,,3",
    "2,M,1975,,2015-06-01,,",
    "3,F,1990,12,,,1",
    "4,M,1960,1,,2014-01-01,",
]
PRESCRIPTIONS = ["person_id,dispense_date,atc_code,ddd,reimbursement_code", "1,2014-01-10,L04AX07,30,G35"]
MS_REGISTRY = [
    "person_id,onset_date,diagnosis_date,ms_course_at_diagnosis,edss_at_diagnosis,clinic_id,country",
    "1,2010-01-01,2011-02-03,RR,2.5,C1,NO",
    "2,,2012-01-01,RR,,C2,NO",
]
TREATMENTS = [
    "person_id,treatment_atc_code,start_date,stop_date,stop_reason,clinic_id",
    "1,L03AB07,2011-03-01,2013-06-01,lack_of_efficacy,C1",
    "1,L04AX07,2013-07-01,,,C1",  # ongoing
    "2,L03AX13,2012-02-01,2015-05-01,adverse_event,C2",
    "2,L04AX07,2015-05-01,2015-05-01,other,C2",  # a one-day treatment
]
RELAPSES = [
    "person_id,relapse_date",
    "1,2010-01-01",  # on the day of onset
    "1,2012-05-05",
    "2,2009-05-01",  # before the diagnosis, no onset date: kept
]
EDSS = ["person_id,visit_date,edss", "1,2011-02-03,2.5", "1,2012-02-03,3", "2,2013-01-01,4.5"]
SICK_LEAVE = [
    "person_id,start_date,end_date,percent",
    "1,2012-01-01,2012-02-01,100",
    "1,2012-02-02,2012-02-02,50",  # one day
    "3,2015-01-01,2015-03-01,50",  # not an MS patient: sick leave covers everyone
]
BASE = {"population": POPULATION, "prescriptions": PRESCRIPTIONS, "ms_registry": MS_REGISTRY,
        "ms_treatments": TREATMENTS, "ms_relapses": RELAPSES, "ms_edss": EDSS, "sick_leave": SICK_LEAVE}  # fmt: skip


def write(directory: Path, extracts: dict[str, list[str]]) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in extracts.items():
        path = directory / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[name] = str(path)
    return paths


def config_for(paths: dict[str, str], tmp_path: Path, **options) -> dict:
    inputs = {name: {"path": path, **options.get(name, {})} for name, path in paths.items()}
    return validate_config({"inputs": inputs, "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})


def run(tmp_path: Path, options: dict | None = None, **extracts) -> dict:
    paths = write(tmp_path / "in", {**BASE, **extracts})
    return validate_extracts(config_for(paths, tmp_path, **(options or {})), results_dir=tmp_path / "results")


def test_clean_clinical_extracts_keep_every_row_with_the_contract_types(tmp_path):
    report = run(tmp_path)
    for name in CLINICAL_EXTRACTS:
        entry = report["extracts"][name]
        assert entry["rows_read"] == entry["rows_kept"] == len(BASE[name]) - 1, name
        assert entry["rejected_by_reason"] == {}
    validated = tmp_path / "results" / "validated"
    treatments = pl.read_parquet(validated / "ms_treatments.parquet")
    assert treatments.schema == pl.Schema({"person_id": pl.String, "treatment_atc_code": pl.String,
                                           "start_date": pl.Date, "stop_date": pl.Date, "stop_reason": pl.String,
                                           "clinic_id": pl.String})  # fmt: skip
    assert treatments.filter(pl.col("treatment_atc_code") == "L04AX07", pl.col("person_id") == "1")["stop_date"].to_list() == [None]
    assert pl.read_parquet(validated / "ms_relapses.parquet").schema == pl.Schema({"person_id": pl.String, "relapse_date": pl.Date})
    edss = pl.read_parquet(validated / "ms_edss.parquet")
    assert edss.schema["edss"] == pl.Float64 and sorted(edss["edss"].to_list()) == [2.5, 3.0, 4.5]
    sick = pl.read_parquet(validated / "sick_leave.parquet")
    assert sick.schema["percent"] == pl.Int32 and sick.schema["end_date"] == pl.Date
    registry = pl.read_parquet(validated / "ms_registry.parquet")
    assert registry.columns == ["person_id", "onset_date", "diagnosis_date", "ms_course_at_diagnosis",
                                "edss_at_diagnosis", "clinic_id", "country"]  # fmt: skip
    # The merged report lists every extract; the clinical ones also in the Markdown summary.
    saved = json.loads((tmp_path / "results" / "validation" / "report.json").read_text())
    assert list(saved["extracts"]) == ["population", "ms_registry", "prescriptions", *CLINICAL_EXTRACTS]
    summary = (tmp_path / "results" / "validation" / "report.md").read_text()
    assert "| ms_treatments | 4 | 4 | 0 |" in summary and "## sick_leave" in summary


def test_parquet_population_with_integer_ids_gives_integer_ids_in_the_clinical_files(tmp_path):
    paths = write(tmp_path / "in", BASE)
    population = pl.read_csv(paths["population"], schema_overrides={"person_id": pl.Int64})
    population.write_parquet(tmp_path / "in" / "population.parquet")
    paths["population"] = str(tmp_path / "in" / "population.parquet")
    report = validate_extracts(config_for(paths, tmp_path), results_dir=tmp_path / "results")
    assert report["person_id_type"] == "BIGINT"
    for name in CLINICAL_EXTRACTS:
        frame = pl.read_parquet(tmp_path / "results" / "validated" / f"{name}.parquet")
        assert frame.schema["person_id"] == pl.Int64 and frame.height == len(BASE[name]) - 1


# (extract, bad row added to the valid extract, the reason worked out by hand)
BAD_ROWS = [
    ("ms_treatments", ",L04AX07,2014-01-01,,,", "missing_person_id"),
    ("ms_treatments", "99,L04AX07,2014-01-01,,,", "unknown_person"),
    ("ms_treatments", "3,L04AX07,2014-01-01,,,", "not_in_ms_registry"),
    ("ms_treatments", "1,,2014-01-01,2015-01-01,other,", "missing_treatment_atc_code"),
    ("ms_treatments", "1,L04AX,2014-01-01,2015-01-01,other,", "malformed_treatment_atc_code"),
    ("ms_treatments", "1,L03AA01,,2015-01-01,other,", "missing_start_date"),
    ("ms_treatments", "1,L03AA01,2014-02-30,2015-01-01,other,", "unparseable_start_date"),
    ("ms_treatments", "1,L03AA01,2014-01-01,soon,other,", "unparseable_stop_date"),
    ("ms_treatments", "1,L03AA01,2100-01-01,,,", "start_date_after_delivery_date"),
    ("ms_treatments", "1,L03AA01,2014-01-01,2100-01-01,other,", "stop_date_after_delivery_date"),
    ("ms_treatments", "1,L03AA01,1980-04-30,1985-01-01,other,", "start_date_before_birth"),  # born May 1980
    ("ms_treatments", "2,L04AA23,2015-06-02,,,", "start_date_after_death"),  # died 2015-06-01
    ("ms_treatments", "2,L04AA23,2014-01-01,2015-06-02,other,", "stop_date_after_death"),
    ("ms_treatments", "1,L03AA01,2014-01-01,2013-12-31,other,", "stop_before_start"),
    ("ms_treatments", "1,L03AA01,2014-01-01,2015-01-01,bored,", "invalid_stop_reason"),
    ("ms_treatments", "1,L03AA01,2014-01-01,,adverse_event,", "stop_reason_without_stop_date"),
    ("ms_treatments", "1,L03AB07,2011-03-01,2013-06-01,lack_of_efficacy,C1", "duplicate_row"),
    ("ms_treatments", "1,L04AX07,2015-01-01,2016-01-01,other,C1", "overlaps_earlier_episode"),  # earlier is ongoing
    ("ms_treatments", "1,L03AB07,2013-05-31,2014-01-01,other,C1", "overlaps_earlier_episode"),  # a day before its stop
    ("ms_relapses", ",2012-01-01", "missing_person_id"),
    ("ms_relapses", "99,2012-01-01", "unknown_person"),
    ("ms_relapses", "3,2012-01-01", "not_in_ms_registry"),
    ("ms_relapses", "1,", "missing_relapse_date"),
    ("ms_relapses", "1,2012-13-01", "unparseable_relapse_date"),
    ("ms_relapses", "1,2100-01-01", "relapse_date_after_delivery_date"),
    ("ms_relapses", "1,2009-12-31", "relapse_before_onset"),  # a day before the onset
    ("ms_relapses", "2,1974-12-31", "relapse_date_before_birth"),  # no onset: only birth bounds it
    ("ms_relapses", "2,2015-06-02", "relapse_date_after_death"),
    ("ms_relapses", "1,2012-05-05", "duplicate_row"),
    ("ms_edss", ",2013-01-01,3", "missing_person_id"),
    ("ms_edss", "99,2013-01-01,3", "unknown_person"),
    ("ms_edss", "3,2013-01-01,3", "not_in_ms_registry"),
    ("ms_edss", "1,,3", "missing_visit_date"),
    ("ms_edss", "1,01.02.2013,3", "unparseable_visit_date"),
    ("ms_edss", "1,2100-01-01,3", "visit_date_after_delivery_date"),
    ("ms_edss", "1,1980-01-01,0", "visit_date_before_birth"),
    ("ms_edss", "2,2015-06-02,9.5", "visit_date_after_death"),
    ("ms_edss", "1,2013-01-01,", "missing_edss"),
    ("ms_edss", "1,2013-01-01,high", "unparseable_edss"),
    ("ms_edss", "1,2013-01-01,2.25", "edss_not_in_steps_of_0.5"),
    ("ms_edss", "1,2013-01-01,10.5", "edss_out_of_range"),
    ("ms_edss", "1,2013-01-01,-0.5", "negative_edss"),
    ("ms_edss", "1,2011-02-03,2.5", "duplicate_row"),
    ("sick_leave", ",2013-01-01,2013-02-01,50", "missing_person_id"),
    ("sick_leave", "99,2013-01-01,2013-02-01,50", "unknown_person"),
    ("sick_leave", "1,,2013-02-01,50", "missing_start_date"),
    ("sick_leave", "1,2013-01-01,,50", "missing_end_date"),
    ("sick_leave", "1,2013-01-01,2013-02-01,", "missing_percent"),
    ("sick_leave", "1,2013-01-01,2013-02-01,half", "unparseable_percent"),
    ("sick_leave", "1,2013-01-01,2013-02-01,50.5", "unparseable_percent"),  # a grade is whole
    ("sick_leave", "1,2013-01-01,2013-02-01,0", "percent_out_of_range"),
    ("sick_leave", "1,2013-01-01,2013-02-01,101", "percent_out_of_range"),
    ("sick_leave", "1,2013-02-01,2013-01-31,50", "end_before_start"),
    ("sick_leave", "1,2100-01-01,2100-02-01,50", "start_date_after_delivery_date"),
    ("sick_leave", "3,1990-11-30,1991-01-01,50", "start_date_before_birth"),  # born December 1990
    ("sick_leave", "2,2015-05-01,2015-06-02,50", "end_date_after_death"),
    ("sick_leave", "1,2012-01-01,2012-02-01,100", "duplicate_row"),
]


@pytest.mark.parametrize(("extract", "bad_row", "reason"), BAD_ROWS, ids=[f"{e}-{r}" for e, _, r in BAD_ROWS])
def test_each_rejection_reason(tmp_path, extract, bad_row, reason):
    report = run(tmp_path, **{extract: [*BASE[extract], bad_row]})
    entry = report["extracts"][extract]
    assert entry["rejected_by_reason"] == {reason: 1}
    assert entry["rows_read"] == entry["rows_kept"] + 1 == len(BASE[extract])
    rejects = pl.read_parquet(tmp_path / "results" / "validation" / "rejects" / f"{extract}.parquet")
    assert rejects["reject_reason"].to_list() == [reason]
    # The rejects file holds the row as delivered (text), the clean file every other row.
    assert ",".join(v or "" for v in rejects.drop("reject_reason").row(0)) == bad_row
    for other in set(CLINICAL_EXTRACTS) - {extract}:
        assert report["extracts"][other]["rows_rejected"] == 0


def test_two_different_edss_scores_on_one_day_are_both_rejected(tmp_path):
    report = run(tmp_path, ms_edss=[*EDSS, "1,2012-02-03,3.5"])  # 3 already on that day
    assert report["extracts"]["ms_edss"]["rejected_by_reason"] == {"conflicting_edss": 2}
    kept = pl.read_parquet(tmp_path / "results" / "validated" / "ms_edss.parquet")
    assert sorted(kept["edss"].to_list()) == [2.5, 4.5]


def test_a_bad_row_takes_no_clean_row_with_it(tmp_path):
    # An out-of-grid score on a day with a valid score: only the bad one goes (conflict is among clean rows);
    # an episode that stops before it starts does not make its drug's next episode an overlap.
    report = run(
        tmp_path,
        ms_edss=[*EDSS, "1,2012-02-03,3.25"],
        ms_treatments=[*TREATMENTS, "1,L03AA01,2014-01-01,2013-01-01,other,", "1,L03AA01,2014-06-01,,,"],
    )
    assert report["extracts"]["ms_edss"]["rejected_by_reason"] == {"edss_not_in_steps_of_0.5": 1}
    assert report["extracts"]["ms_treatments"]["rejected_by_reason"] == {"stop_before_start": 1}


def test_overlap_keeps_the_first_episode_and_compares_each_later_one_with_the_kept_ones():
    # One person and drug, sorted by start: A 0-100 kept; B 50-200 overlaps A; C 150-300 starts after A's stop
    # (B is rejected, so it does not count) and is kept; D 300-310 starts on C's stop day (a restart) and is
    # kept; E 305-... overlaps D. A second group: F ongoing from 0, G 1000 overlaps the ongoing F.
    ongoing = np.iinfo(np.int64).max
    group = np.array([1, 1, 1, 1, 1, 2, 2])
    start = np.array([0, 50, 150, 300, 305, 0, 1000])
    stop = np.array([100, 200, 300, 310, 400, ongoing, 1100])
    assert overlapping_episodes(group, start, stop).tolist() == [1, 4, 6]
    assert overlapping_episodes(group[:1], start[:1], stop[:1]).tolist() == []


def test_overlapping_episodes_in_the_file_follow_the_same_rule(tmp_path):
    rows = ["1,L04AA23,2014-01-01,2014-06-30,other,", "1,L04AA23,2014-03-01,2014-12-31,other,",
            "1,L04AA23,2014-07-01,2014-09-01,other,", "1,L04AA23,2014-09-01,,,"]  # fmt: skip
    report = run(tmp_path, ms_treatments=[*TREATMENTS, *rows])
    assert report["extracts"]["ms_treatments"]["rejected_by_reason"] == {"overlaps_earlier_episode": 1}
    rejects = pl.read_parquet(tmp_path / "results" / "validation" / "rejects" / "ms_treatments.parquet")
    assert rejects["start_date"].to_list() == ["2014-03-01"]


def test_other_drugs_of_one_person_may_overlap(tmp_path):
    # Person 1 is on L04AX07 from 2013-07-01; a concurrent different drug is no overlap of episodes.
    report = run(tmp_path, ms_treatments=[*TREATMENTS, "1,L04AA23,2014-01-01,2014-06-01,other,"])
    assert report["extracts"]["ms_treatments"]["rows_rejected"] == 0


def test_dates_after_emigration_are_kept(tmp_path):
    # Person 4 emigrated on 2014-01-01 (their last emigration): a spell recorded after it is no error.
    report = run(tmp_path, sick_leave=[*SICK_LEAVE, "4,2015-01-01,2015-02-01,100"])
    assert report["extracts"]["sick_leave"]["rows_kept"] == len(SICK_LEAVE)


def test_stop_reason_and_course_are_read_case_insensitively_and_stored_in_the_dictionary_spelling(tmp_path):
    registry = [MS_REGISTRY[0], "1,2010-01-01,2011-02-03,cis,2.5,C1,no", "2,,2012-01-01,Unknown,,C2,dk"]
    run(tmp_path, ms_registry=registry, ms_treatments=[*TREATMENTS, "1,l04aa23,2014-01-01,2014-06-01,Adverse_Event,"])
    validated = tmp_path / "results" / "validated"
    registry = pl.read_parquet(validated / "ms_registry.parquet").sort("person_id")
    assert registry["ms_course_at_diagnosis"].to_list() == ["CIS", "unknown"]
    assert registry["country"].to_list() == ["NO", "DK"]
    treatments = pl.read_parquet(validated / "ms_treatments.parquet").filter(pl.col("treatment_atc_code") == "L04AA23")
    assert treatments["stop_reason"].to_list() == ["adverse_event"]


@pytest.mark.parametrize(("row", "reason"), [
    ("2,,2012-01-01,XX,,C2,NO", "invalid_ms_course_at_diagnosis"),
    ("2,,2012-01-01,RR,,C2,NOR", "invalid_country"),  # alpha-3, not alpha-2
    ("2,,2012-01-01,RR,,C2,N0", "invalid_country"),
])
def test_new_registry_columns_are_checked(tmp_path, row, reason):
    report = run(tmp_path, ms_registry=[*MS_REGISTRY[:2], row])
    assert report["extracts"]["ms_registry"]["rejected_by_reason"] == {reason: 1}
    # Person 2 has no usable registry row now: their clinical rows are rows of a non-patient.
    assert report["extracts"]["ms_treatments"]["rejected_by_reason"] == {"not_in_ms_registry": 2}


def test_an_old_extract_with_ms_course_reads_as_ms_course_at_diagnosis(tmp_path):
    old = ["person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis", "1,2010-01-01,2011-02-03,SP,2.5"]
    report = run(tmp_path, ms_registry=old)
    entry = report["extracts"]["ms_registry"]
    assert entry["column_map"]["ms_course_at_diagnosis"] == "ms_course" and entry["ignored_source_columns"] == []
    assert entry["missing_optional_columns"] == ["clinic_id", "country"]
    registry = pl.read_parquet(tmp_path / "results" / "validated" / "ms_registry.parquet")
    assert registry["ms_course_at_diagnosis"].to_list() == ["SP"]


def test_an_old_column_map_naming_ms_course_still_reads(tmp_path):
    native = ["løpenr,debutdato,diagnosedato,forløp", "1,2010-01-01,2011-02-03,PP", "2,,2012-01-01,RR"]
    columns = {"person_id": "løpenr", "onset_date": "debutdato", "diagnosis_date": "diagnosedato", "ms_course": "forløp"}
    report = run(tmp_path, options={"ms_registry": {"columns": columns}}, ms_registry=native)
    assert report["extracts"]["ms_registry"]["column_map"]["ms_course_at_diagnosis"] == "forløp"
    registry = pl.read_parquet(tmp_path / "results" / "validated" / "ms_registry.parquet").sort("person_id")
    assert registry["ms_course_at_diagnosis"].to_list() == ["PP", "RR"]
    both = {**columns, "ms_course_at_diagnosis": "forløp"}
    with pytest.raises(ExtractError, match=r"ms_registry: the column map sets `ms_course_at_diagnosis` twice"):
        run(tmp_path / "both", options={"ms_registry": {"columns": both}}, ms_registry=native)


def test_native_clinical_extracts_with_column_maps_and_a_date_format(tmp_path):
    treatments = ["løpenr;atc;startdato;stoppdato;seponeringsårsak;sykehus", "1;L04AX07;01.07.2013;;;C1",
                  "2;L03AX13;01.02.2012;01.05.2015;Pregnancy;C2"]  # fmt: skip
    edss = ["løpenr;besøksdato;edss_score", "1;03.02.2011;2,5", "2;01.01.2013;4"]
    options = {
        "ms_treatments": {"date_format": "%d.%m.%Y", "columns": {
            "person_id": "løpenr", "treatment_atc_code": "atc", "start_date": "startdato", "stop_date": "stoppdato",
            "stop_reason": "seponeringsårsak", "clinic_id": "sykehus"}},
        "ms_edss": {"date_format": "%d.%m.%Y", "decimal": ",",
                    "columns": {"person_id": "løpenr", "visit_date": "besøksdato", "edss": "edss_score"}},
    }  # fmt: skip
    report = run(tmp_path, options=options, ms_treatments=treatments, ms_edss=edss)
    assert report["extracts"]["ms_treatments"]["rows_kept"] == 2 and report["extracts"]["ms_edss"]["rows_kept"] == 2
    edss_frame = pl.read_parquet(tmp_path / "results" / "validated" / "ms_edss.parquet").sort("person_id")
    assert edss_frame["edss"].to_list() == [2.5, 4.0]
    stop = pl.read_parquet(tmp_path / "results" / "validated" / "ms_treatments.parquet").sort("person_id")
    assert [str(d) if d else None for d in stop["stop_date"].to_list()] == [None, "2015-05-01"]
    assert stop["stop_reason"].to_list() == [None, "pregnancy"]


def test_only_configured_clinical_extracts_are_validated(tmp_path):
    paths = write(tmp_path / "in", {k: v for k, v in BASE.items() if k not in ("ms_edss", "sick_leave")})
    report = validate_extracts(config_for(paths, tmp_path), results_dir=tmp_path / "results")
    assert set(report["extracts"]) == {"population", "ms_registry", "prescriptions", "ms_treatments", "ms_relapses"}
    assert not (tmp_path / "results" / "validated" / "ms_edss.parquet").exists()


# Extract-level problems stop with a message naming file and column, and never an identifier.
def test_a_missing_required_column_names_file_and_column(tmp_path):
    edss = ["person_id,visit_date,score", "1,2011-02-03,2.5"]
    with pytest.raises(ExtractError, match=r"ms_edss: required column `edss` .*missing from .*ms_edss.csv"):
        run(tmp_path, ms_edss=edss)


def test_a_wrong_date_format_names_the_column_and_shows_no_identifier(tmp_path):
    relapses = ["person_id,relapse_date", "123456789,05/05/2012", "1,06/06/2012"]
    with pytest.raises(ExtractError) as error:
        run(tmp_path, ms_relapses=relapses)
    message = str(error.value)
    assert re.search(r"ms_relapses: no value of column `relapse_date` .*ms_relapses.csv", message)
    assert "123456789" not in message


def test_no_shared_person_with_the_population_stops_with_masked_examples(tmp_path):
    relapses = ["person_id,relapse_date", "123456789,2012-05-05"]
    with pytest.raises(ExtractError, match=r"ms_relapses: no person in .*ms_relapses.csv") as error:
        run(tmp_path, ms_relapses=relapses)
    assert "123456789" not in str(error.value) and "<9 characters, digits>" in str(error.value)


def test_a_missing_clinical_file_is_named(tmp_path):
    paths = write(tmp_path / "in", BASE)
    paths["ms_relapses"] = str(tmp_path / "in" / "nope.csv")
    with pytest.raises(ExtractError, match=r"ms_relapses: input .*nope.csv does not exist"):
        validate_extracts(config_for(paths, tmp_path), results_dir=tmp_path / "results")


# Config and data dictionary
def test_config_accepts_plain_paths_and_checks_the_delivery_date():
    base = {name: "x.csv" for name in ("population", "prescriptions", "ms_registry", *CLINICAL_EXTRACTS)}
    config = validate_config({"inputs": base})
    assert config["inputs"]["ms_edss"] == {"path": "x.csv", "sep": None, "encoding": None, "date_format": "%Y-%m-%d",
                                           "columns": {}, "decimal": None, "delivery_date": None}  # fmt: skip
    early = {**base, "ms_treatments": {"path": "x.csv", "delivery_date": "2020-01-01"}}
    with pytest.raises(ConfigError, match=r"`inputs.ms_treatments.delivery_date` \(2020-01-01\) and `study.end`"):
        validate_config({"inputs": early})
    with pytest.raises(ConfigError, match=r"inputs.ms_relapse` is not a known key; did you mean `ms_relapses`"):
        validate_config({"inputs": {**base, "ms_relapse": "x.csv"}})


def test_dictionary_entries_follow_the_contract():
    expected = {
        "ms_treatments": ["person_id", "treatment_atc_code", "start_date", "stop_date", "stop_reason", "clinic_id"],
        "ms_relapses": ["person_id", "relapse_date"],
        "ms_edss": ["person_id", "visit_date", "edss"],
        "sick_leave": ["person_id", "start_date", "end_date", "percent"],
    }
    for extract, columns in expected.items():
        assert [c.name for c in load_extract_spec(extract).columns] == columns
    stop = load_extract_spec("ms_treatments").column("stop_reason")
    assert stop.allowed == ("adverse_event", "lack_of_efficacy", "pregnancy", "patient_wish", "other", "unknown")
    course = load_extract_spec("ms_registry").column("ms_course_at_diagnosis")
    assert course.allowed == ("RR", "SP", "PP", "CIS", "unknown")
    assert {"ms_course", "forlop", "forløp", "course"} <= set(course.aliases)


def test_the_export_gate_refuses_the_new_date_columns_and_still_allows_clinic_and_country():
    names = identifier_and_date_names()
    assert {"start_date", "stop_date", "relapse_date", "visit_date", "end_date", "stoppdato", "attakkdato"} <= names
    assert not {"clinic_id", "country", "edss", "percent", "stop_reason", "treatment_atc_code"} & names


# The workflow: a job of its own, only when configured
def _dry_run(tmp_path: Path, extra: dict) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "extra.yaml"
    config.write_text(json.dumps(extra))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1", "--directory", str(tmp_path),
         "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config" / "config.yaml"), str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_workflow_validates_clinical_extracts_only_when_configured(tmp_path):
    # The demo reads the simulated clinical extracts by default; without them (as a study without a treatment
    # table) there is no clinical job.
    assert re.search(r"validate_clinical\s+1", _dry_run(tmp_path / "demo", {}))
    assert "validate_clinical" not in _dry_run(tmp_path / "plain", {"simulate": {"clinical": {"enabled": False}}})
    clinical = {"inputs": {"ms_treatments": "results/simulated/ms_treatments.parquet",
                           "ms_edss": {"path": "results/simulated/ms_edss.parquet"}}}  # fmt: skip
    (tmp_path / "clinical" / "results" / "simulated").mkdir(parents=True)
    for name in ("ms_treatments", "ms_edss"):
        (tmp_path / "clinical" / "results" / "simulated" / f"{name}.parquet").write_bytes(b"")
    plan = _dry_run(tmp_path / "clinical", clinical)
    assert re.search(r"validate_clinical\s+1", plan), plan


CLINICAL_RUN_TARGETS = ("results/screen/dwas.parquet", "results/validation/report.json")


@pytest.mark.slow
def test_adding_clinical_extracts_to_a_finished_run_reruns_only_the_validation(tmp_path, simulation):
    simulated = simulation(8000, 5)
    study = {"inputs": {"population": str(simulated / "population.parquet"),
                        "prescriptions": str(simulated / "prescriptions"),
                        "ms_registry": str(simulated / "ms_registry.parquet")},
             "screen": {"atc_levels": [2], "lags_years": [0], "sex_strata": ["all"], "split_by": "level"},
             "candidates": {"main_lag_years": 0}}  # fmt: skip
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps(study))
    snakemake_output(tmp_path, config, targets=CLINICAL_RUN_TARGETS)
    # Hand-made extracts for the validated MS patients: dimethyl fumarate from 30 days after diagnosis, ongoing,
    # and a relapse at onset (where the registry has one).
    registry = pl.read_parquet(tmp_path / "results" / "validated" / "ms_registry.parquet").unique("person_id")
    treatments = registry.select(
        "person_id", treatment_atc_code=pl.lit("L04AX07"), start_date=pl.col("diagnosis_date") + pl.duration(days=30),
        stop_date=pl.lit(None, pl.Date), stop_reason=pl.lit(None, pl.String), clinic_id=pl.lit("C1"),
    )  # fmt: skip
    relapses = registry.filter(pl.col("onset_date").is_not_null()).select("person_id", relapse_date="onset_date")
    treatments.write_parquet(tmp_path / "ms_treatments.parquet")
    relapses.write_parquet(tmp_path / "ms_relapses.parquet")
    study["inputs"] |= {"ms_treatments": str(tmp_path / "ms_treatments.parquet"),
                        "ms_relapses": str(tmp_path / "ms_relapses.parquet")}  # fmt: skip
    config.write_text(json.dumps(study))
    assert planned_jobs(tmp_path, config, targets=CLINICAL_RUN_TARGETS) == {"validate_clinical": 1, "validate": 1}
    snakemake_output(tmp_path, config, targets=CLINICAL_RUN_TARGETS)
    assert planned_jobs(tmp_path, config, targets=CLINICAL_RUN_TARGETS) == {}
    report = json.loads((tmp_path / "results" / "validation" / "report.json").read_text())
    population = pl.read_parquet(tmp_path / "results" / "validated" / "population.parquet")
    died_first = treatments.join(population, on="person_id").filter(pl.col("start_date") > pl.col("death_date")).height
    assert report["extracts"]["ms_treatments"]["rows_read"] == treatments.height > 0
    assert report["extracts"]["ms_treatments"]["rejected_by_reason"] == ({"start_date_after_death": died_first} if died_first else {})
    assert report["extracts"]["ms_relapses"]["rows_kept"] == relapses.height > 0
    kept = pl.read_parquet(tmp_path / "results" / "validated" / "ms_treatments.parquet")
    assert kept.schema["person_id"] == pl.Int64 and kept.height == treatments.height - died_first
