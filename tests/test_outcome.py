"""Outcome definitions on hand-made tiny data: the diagnosis rule, ICD-10 prefixes, the k-th proxy dispensing,
proxy drugs left out of exposure, MS registry duplicates, the diagnosis extract's validation and config checks."""

from __future__ import annotations

import json
from datetime import date

import polars as pl
import pytest
import yaml

from repurpose.config import ConfigError, load_schema, validate_config
from repurpose.dwas.exposure import build_exposures
from repurpose.protocol import ProtocolError, apply_protocol
from repurpose.registry.cohort import build_cohort, run_cohort
from repurpose.registry.ingest import validate_extracts
from repurpose.registry.outcome import (
    OutcomeDefinition,
    OutcomeDefinitionError,
    diagnosis_outcomes,
    drug_proxy_outcomes,
    ms_registry_outcomes,
    outcome_definition,
)
from repurpose.registry.reader import ExtractError

D = date.fromisoformat
BASE_INPUTS = {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}


def config_with(outcome, **inputs):
    return validate_config({"inputs": {**BASE_INPUTS, **inputs}, "study": {"outcome": outcome}})


# ---------------------------------------------------------------- definitions and config


def test_shorthand_strings_are_the_ms_registry_definition():
    assert outcome_definition("onset") == OutcomeDefinition(source="ms_registry", date="onset")
    assert outcome_definition("diagnosis") == outcome_definition({"source": "ms_registry", "date": "diagnosis"})
    assert validate_config({"inputs": BASE_INPUTS})["study"]["outcome"] == "onset"  # still the default


def test_definition_defaults_equal_the_schema_defaults():
    schema = load_schema()["properties"]["study"]["properties"]["outcome"]
    properties = schema["else"]["properties"]
    defaults = OutcomeDefinition()
    for key in ("date", "min_records", "min_days_apart", "min_dispensings", "label"):
        assert properties[key]["default"] == getattr(defaults, key), key
    assert schema["default"] == "onset"


def test_codes_are_normalised():
    definition = outcome_definition({"source": "diagnoses", "codes": ["g20", "G21.1"]})
    assert definition.codes == ("G20", "G211")
    proxy = outcome_definition({"source": "drug_proxy", "atc_codes": ["n04"], "label": "parkinson"})
    assert proxy.proxy_atc_prefixes == ("N04",) and proxy.display_label == "parkinson"
    assert definition.proxy_atc_prefixes == () and outcome_definition("onset").display_label == "MS"


def test_diagnoses_outcome_without_the_extract_is_a_config_error_naming_both_keys():
    with pytest.raises(ConfigError, match=r"`study\.outcome\.source` and `inputs\.diagnoses`"):
        config_with({"source": "diagnoses", "codes": ["G20"]})
    config = config_with({"source": "diagnoses", "codes": ["G20"]}, diagnoses={"path": "dx.csv"})
    assert config["inputs"]["diagnoses"]["date_format"] == "%Y-%m-%d"


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        ({"source": "drug_proxy"}, r"'atc_codes' is a required property"),
        ({"source": "diagnoses", "codes": ["20G"]}, r"study\.outcome\.codes\.0"),
        ({"source": "diagnoses", "codes": ["G20"], "min_records": 0}, r"study\.outcome\.min_records"),
        ({"source": "ms_registry", "codes": ["G20"]}, r"\['codes'\] do not apply to source ms_registry"),
        ("relapse", r"'relapse' is not one of \['onset', 'diagnosis'\]"),
    ],
)
def test_outcome_mistakes_are_named(outcome, message):
    with pytest.raises(ConfigError, match=message):
        config_with(outcome, diagnoses={"path": "dx.csv"})


# ---------------------------------------------------------------- the diagnosis rule


def diagnoses_frame(rows):
    return pl.DataFrame(rows, schema=["person_id", "diagnosis_date", "icd10_code"], orient="row").with_columns(
        pl.col("diagnosis_date").str.to_date()
    )


def dx_outcomes(rows, **rule):
    definition = outcome_definition({"source": "diagnoses", **rule})
    return dict(diagnosis_outcomes(diagnoses_frame(rows).lazy(), definition).collect().select(
        "person_id", "outcome_date").iter_rows())  # fmt: skip


def test_two_records_29_days_apart_do_not_meet_a_30_day_rule_and_30_days_do():
    rows = [
        (1, "2010-01-01", "G20"), (1, "2010-01-30", "G20"),  # 29 days apart: no outcome
        (2, "2010-01-01", "G20"), (2, "2010-01-31", "G20"),  # 30 days apart: dated at the first
        (3, "2010-01-01", "G20"), (3, "2010-01-10", "G20"), (3, "2012-05-05", "G20"),  # the first still dates it
        (4, "2011-03-03", "G20"), (4, "2011-03-03", "G20"), (4, "2011-03-03", "G20"),  # one day, however many rows
    ]  # fmt: skip
    assert dx_outcomes(rows, codes=["G20"], min_records=2, min_days_apart=30) == {2: D("2010-01-01"), 3: D("2010-01-01")}
    # without the day rule two records on distinct days are enough; one day counts once
    assert dx_outcomes(rows, codes=["G20"], min_records=2) == {1: D("2010-01-01"), 2: D("2010-01-01"), 3: D("2010-01-01")}
    assert dx_outcomes(rows, codes=["G20"]) == {p: D("2010-01-01") for p in (1, 2, 3)} | {4: D("2011-03-03")}


def test_the_rule_is_dated_at_the_first_record_that_starts_a_qualifying_run():
    # 2005-01-01 alone is followed by one later record only 20 days on; the rule is first met from 2008-06-01
    rows = [(1, "2005-01-01", "G20"), (1, "2005-01-21", "G20"), (1, "2008-06-01", "G20"), (1, "2008-09-01", "G20")]
    assert dx_outcomes(rows, codes=["G20"], min_records=3, min_days_apart=30) == {1: D("2005-01-01")}
    assert dx_outcomes(rows[:3], codes=["G20"], min_records=3, min_days_apart=30) == {1: D("2005-01-01")}
    assert dx_outcomes(rows[1:], codes=["G20"], min_records=3, min_days_apart=30) == {1: D("2005-01-21")}
    assert dx_outcomes(rows[:2], codes=["G20"], min_records=2, min_days_apart=30) == {}


def test_codes_match_as_icd10_prefixes():
    rows = [
        (1, "2010-01-01", "G200"), (2, "2010-01-01", "G20"), (3, "2010-01-01", "G21"), (4, "2010-01-01", "F20"),
        (5, "2010-01-01", "G2"), (6, "2010-01-01", "G209"),
    ]  # fmt: skip
    assert sorted(dx_outcomes(rows, codes=["G20"])) == [1, 2, 6]
    assert sorted(dx_outcomes(rows, codes=["G20.0", "G21"])) == [1, 3]
    # other codes never count towards the rule
    mixed = [(7, "2010-01-01", "G20"), (7, "2010-06-01", "G21")]
    assert dx_outcomes(mixed, codes=["G20"], min_records=2) == {}


# ---------------------------------------------------------------- the drug proxy


def write_dispensings(path, rows):
    frame = pl.DataFrame(rows, schema=["person_id", "dispense_date", "atc_code"], orient="row").with_columns(
        pl.col("dispense_date").str.to_date(), ddd=pl.lit(30.0), reimbursement_code=pl.lit(None, pl.String))
    frame.write_parquet(path)
    return path


def test_drug_proxy_is_dated_at_the_first_of_k_dispensings(tmp_path):
    part_a = write_dispensings(tmp_path / "a.parquet", [
        (1, "2010-01-01", "N04BA02"), (1, "2012-01-01", "N04BC05"),  # two of N04: dated at the first
        (2, "2010-01-01", "N04BA02"), (2, "2010-02-01", "N05AH04"),  # one N04 only
        (3, "2011-05-05", "N04BA02"),
    ])  # fmt: skip
    part_b = write_dispensings(tmp_path / "b.parquet", [(3, "2009-09-09", "N04AA01"), (3, "2013-01-01", "N04BA02")])
    definition = outcome_definition({"source": "drug_proxy", "atc_codes": ["N04"], "min_dispensings": 2})
    found = drug_proxy_outcomes([part_a, part_b], definition, {"tmpdir": str(tmp_path / "tmp")}).collect()
    assert dict(found.select("person_id", "outcome_date").iter_rows()) == {1: D("2010-01-01"), 3: D("2009-09-09")}
    assert found["outcome_source"].unique().to_list() == ["drug_proxy"]
    third = outcome_definition({"source": "drug_proxy", "atc_codes": ["N04"], "min_dispensings": 3})
    assert drug_proxy_outcomes([part_a, part_b], third, {"tmpdir": str(tmp_path / "tmp")}).collect()["person_id"].to_list() == [3]
    narrow = outcome_definition({"source": "drug_proxy", "atc_codes": ["N04BA"], "min_dispensings": 2})
    assert drug_proxy_outcomes([part_a, part_b], narrow, {"tmpdir": str(tmp_path / "tmp")}).collect()["person_id"].to_list() == [3]


def test_proxy_drugs_count_in_no_exposure_class(tmp_path):
    birth = D("1970-01-01")
    pl.DataFrame({
        "person_id": [1, 2], "birth_date": [birth, birth], "entry_date": [D("2005-01-01")] * 2,
        "exit_date": [D("2020-12-31")] * 2, "event": [False, False],
    }).write_parquet(tmp_path / "cohort.parquet")  # fmt: skip
    parts = tmp_path / "rx"
    parts.mkdir()
    write_dispensings(parts / "p.parquet", [
        (1, "2006-01-01", "N04BA02"), (1, "2007-01-01", "N04BA02"),  # levodopa twice
        (1, "2008-01-01", "N05AH04"),  # and one antipsychotic: level 1 `N` reaches two only with the proxy
        (2, "2006-01-01", "N05AH04"), (2, "2009-01-01", "N05AH03"),
    ])  # fmt: skip

    def classes(outcome, level):
        config = config_with(outcome)
        config["resources"]["tmpdir"] = str(tmp_path / "tmp")
        config["screen"]["atc_levels"] = [level]
        out = tmp_path / f"level{level}.parquet"
        build_exposures(config, prescriptions=[parts / "p.parquet"], cohort=tmp_path / "cohort.parquet", exposures=[out])
        return sorted(pl.read_parquet(out).select("person_id", "atc_code").iter_rows())

    proxy = {"source": "drug_proxy", "atc_codes": ["N04"], "min_dispensings": 2}
    assert classes("onset", 2) == [(1, "N04"), (2, "N05")]
    assert classes(proxy, 2) == [(2, "N05")]
    assert classes("onset", 1) == [(1, "N"), (2, "N")]
    assert classes(proxy, 1) == [(2, "N")]  # the parent class does not count the proxy either
    assert classes(proxy, 5) == []  # N05AH04 and N05AH03 are once each


# ---------------------------------------------------------------- MS registry duplicates and the cohort


def test_ms_registry_duplicates_resolve_to_the_earliest_onset_and_diagnosis():
    registry = pl.DataFrame({
        "person_id": [1, 1, 2, 3, 3],
        "onset_date": [D("2012-01-01"), D("2010-06-01"), None, None, D("2016-01-01")],
        "diagnosis_date": [D("2013-01-01"), D("2014-01-01"), D("2011-01-01"), D("2015-01-01"), D("2017-01-01")],
    })  # fmt: skip
    onset = ms_registry_outcomes(registry.lazy(), "onset").collect().sort("person_id")
    assert onset.select("person_id", "outcome_date", "outcome_source", "first_outcome_date", "n_registry_rows").rows() == [
        (1, D("2010-06-01"), "onset", D("2010-06-01"), 2),
        (2, D("2011-01-01"), "diagnosis", D("2011-01-01"), 1),
        (3, D("2015-01-01"), "diagnosis", D("2015-01-01"), 2),  # the later row's onset is after the earliest diagnosis
    ]
    diagnosis = ms_registry_outcomes(registry.lazy(), "diagnosis").collect().sort("person_id")
    assert diagnosis["outcome_date"].to_list() == [D("2013-01-01"), D("2011-01-01"), D("2015-01-01")]


def test_diagnosis_outcome_in_the_cohort_excludes_prevalent_cases():
    population = pl.DataFrame({
        "person_id": [1, 2, 3], "sex": ["F", "M", "F"], "birth_year": [1960, 1960, 1960], "birth_month": [1, 1, 1],
        "death_date": [None, None, None], "emigration_date": [None, None, None], "education": [1, 1, 1],
    }, schema_overrides={"birth_year": pl.Int32, "birth_month": pl.Int32, "education": pl.Int32,
                         "death_date": pl.Date, "emigration_date": pl.Date})  # fmt: skip
    rows = [(1, "2004-06-01", "G20"), (1, "2006-01-01", "G20"), (2, "2010-01-01", "G20"), (2, "2010-03-01", "G20")]
    definition = outcome_definition({"source": "diagnoses", "codes": ["G20"], "min_records": 2, "min_days_apart": 30})
    study = config_with("onset")["study"]
    cohort, flow = build_cohort(population.lazy(), diagnosis_outcomes(diagnoses_frame(rows).lazy(), definition), study)
    assert flow["excluded"]["prevalent_outcome_at_entry"] == 1  # person 1: dated at 2004-06-01, before entry
    assert cohort.select("person_id", "event", "exit_date", "exit_reason", "outcome_source").rows() == [
        (2, True, D("2010-01-01"), "outcome", "diagnoses"),
        (3, False, D("2023-12-31"), "study_end", None),
    ]


POPULATION = ["person_id,sex,birth_year,birth_month,death_date,emigration_date,education",
              "1,F,1980,5,,,3", "2,M,1975,,,,", "3,F,1990,12,,,1"]  # fmt: skip
PRESCRIPTIONS = ["person_id,dispense_date,atc_code,ddd,reimbursement_code", "1,2006-01-10,N06AB06,30,",
                 "2,2006-03-01,R03AC02,10.5,", "3,2010-07-07,C10AA01,90,"]  # fmt: skip


def write_csv(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_duplicated_ms_patient_stays_a_case_end_to_end(tmp_path):
    """Fails on the code before: both rows were rejected as duplicate_person_id and person 1 was a control."""
    inputs = {
        "population": {"path": write_csv(tmp_path / "in/population.csv", POPULATION)},
        "prescriptions": {"path": write_csv(tmp_path / "in/prescriptions.csv", PRESCRIPTIONS)},
        "ms_registry": {"path": write_csv(tmp_path / "in/ms_registry.csv", [
            "person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis",
            "1,2012-01-01,2013-02-03,RR,2.5",
            "1,2011-05-05,2014-01-01,RR,3",  # the same patient again: earlier onset, later diagnosis
            "2,2015-01-01,2015-06-01,RR,1",
        ])},  # fmt: skip
    }
    config = validate_config({"inputs": inputs, "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})
    report = validate_extracts(config, results_dir=tmp_path)
    registry = report["extracts"]["ms_registry"]
    assert (registry["rows_kept"], registry["rows_rejected"]) == (3, 0)
    assert registry["registry_duplicates"] == {"persons": 1, "rows": 2}
    saved = json.loads((tmp_path / "validation" / "report.json").read_text())
    assert saved["extracts"]["ms_registry"]["registry_duplicates"] == {"persons": 1, "rows": 2}
    flow = run_cohort(config, population=tmp_path / "validated/population.parquet",
                      ms_registry=tmp_path / "validated/ms_registry.parquet",
                      cohort=tmp_path / "cohort.parquet", flow=tmp_path / "flow.json")  # fmt: skip
    cohort = pl.read_parquet(tmp_path / "cohort.parquet").sort("person_id")
    assert cohort.select("person_id", "event", "exit_date", "exit_reason").rows() == [
        ("1", True, D("2011-05-05"), "outcome"),  # the earliest onset across the rows (ids of a CSV are text)
        ("2", True, D("2015-01-01"), "outcome"),
        ("3", False, D("2023-12-31"), "study_end"),
    ]
    assert flow["outcome_registry_duplicates"]["persons"] == 1 and flow["outcome_registry_duplicates"]["rows"] == 2
    assert flow["outcome"] == {"source": "ms_registry", "label": "MS"}
    assert json.loads((tmp_path / "flow.json").read_text())["events"] == 2


# ---------------------------------------------------------------- validation of the diagnosis extract


DIAGNOSES = [
    "person_id,diagnosis_date,icd10_code",
    "1,2010-01-01,G20",
    "1,2010-03-01,g20.0",  # normalised to G200
    "2,2012-01-01,G35",
    "99,2010-01-01,G20",  # unknown person
    "2,01.02.2012,G20",  # unparseable date
    "3,1989-01-01,G20",  # before birth (born 1990)
    "3,2025-01-01,G20",  # after study end
    "3,2030-01-01,G20",  # after the extract's delivery date (default: the day of the run)
    "3,2015-01-01,20G",  # malformed code
    "3,2015-01-01,",  # missing code
    ",2015-01-01,G20",  # missing person
]


def test_diagnosis_extract_is_validated_with_a_reason_for_every_rejected_row(tmp_path):
    inputs = {
        "population": {"path": write_csv(tmp_path / "in/population.csv", POPULATION)},
        "prescriptions": {"path": write_csv(tmp_path / "in/prescriptions.csv", PRESCRIPTIONS)},
        "ms_registry": {"path": write_csv(tmp_path / "in/ms_registry.csv", [
            "person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis", "2,2015-01-01,2015-06-01,RR,1"])},
        "diagnoses": {"path": write_csv(tmp_path / "in/diagnoses.csv", DIAGNOSES)},
    }  # fmt: skip
    outcome = {"source": "diagnoses", "codes": ["G20"], "min_records": 2, "min_days_apart": 30, "label": "parkinson"}
    config = validate_config({"inputs": inputs, "study": {"outcome": outcome},
                              "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})  # fmt: skip
    report = validate_extracts(config, results_dir=tmp_path)
    entry = report["extracts"]["diagnoses"]
    assert entry["rows_read"] == len(DIAGNOSES) - 1 and entry["rows_kept"] == 3
    assert entry["rejected_by_reason"] == {
        "unknown_person": 1, "unparseable_diagnosis_date": 1, "diagnosis_date_out_of_range": 2,
        "diagnosis_date_after_delivery_date": 1, "malformed_icd10_code": 1, "missing_icd10_code": 1, "missing_person_id": 1,
    }  # fmt: skip
    clean = pl.read_parquet(tmp_path / "validated" / "diagnoses.parquet")
    assert clean["icd10_code"].to_list() == ["G20", "G200", "G35"]
    assert "diagnoses" in (tmp_path / "validation" / "report.md").read_text()
    flow = run_cohort(config, population=tmp_path / "validated/population.parquet",
                      ms_registry=tmp_path / "validated/ms_registry.parquet",
                      cohort=tmp_path / "cohort.parquet", flow=tmp_path / "flow.json",
                      diagnoses=tmp_path / "validated/diagnoses.parquet")  # fmt: skip
    cohort = pl.read_parquet(tmp_path / "cohort.parquet").sort("person_id")
    assert cohort.filter("event")["person_id"].to_list() == ["1"]  # the MS patient 2 is no case of this outcome
    assert flow["outcome"] == {"source": "diagnoses", "label": "parkinson"} and flow["events"] == 1


def test_a_diagnosis_extract_of_other_persons_stops_with_a_masked_message(tmp_path):
    inputs = {
        "population": {"path": write_csv(tmp_path / "in/population.csv", POPULATION)},
        "prescriptions": {"path": write_csv(tmp_path / "in/prescriptions.csv", PRESCRIPTIONS)},
        "ms_registry": {"path": write_csv(tmp_path / "in/ms_registry.csv", [
            "person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis", "2,2015-01-01,2015-06-01,RR,1"])},
        "diagnoses": {"path": write_csv(tmp_path / "in/diagnoses.csv", [
            "person_id,diagnosis_date,icd10_code", "123456789,2010-01-01,G20"])},
    }  # fmt: skip
    config = validate_config({"inputs": inputs, "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})
    with pytest.raises(ExtractError, match=r"diagnoses: no person in .*diagnoses\.csv") as error:
        validate_extracts(config, results_dir=tmp_path)
    assert "123456789" not in str(error.value)


def test_unknown_source_in_code_is_a_definition_error():
    with pytest.raises(OutcomeDefinitionError, match="study.outcome.source"):
        outcome_definition({"source": "patient_registry"})


def test_a_protocol_outcome_definition_is_compared_whole_and_filled_into_the_site_config(tmp_path):
    protocol = tmp_path / "protocol.yaml"
    outcome = {"source": "diagnoses", "codes": ["G20"], "min_records": 2, "min_days_apart": 30}
    protocol.write_text(yaml.safe_dump({"study": {"outcome": outcome}}))
    site = {"protocol": str(protocol), "inputs": {**BASE_INPUTS, "diagnoses": {"path": "dx.csv"}}}
    assert apply_protocol(site)["study"]["outcome"] == outcome
    with pytest.raises(ProtocolError, match=r"`study\.outcome`: site config 'onset'"):
        apply_protocol({**site, "study": {"outcome": "onset"}})


def test_a_patient_whose_every_registry_row_is_rejected_is_never_a_control(tmp_path):
    """Issue 18: before, person 1 (one registry row, rejected: diagnosis before birth) was followed to study end
    as MS-free. Now the validation lists the person and the cohort leaves them out, counted in its flow."""
    inputs = {
        "population": {"path": write_csv(tmp_path / "in/population.csv", POPULATION)},
        "prescriptions": {"path": write_csv(tmp_path / "in/prescriptions.csv", PRESCRIPTIONS)},
        "ms_registry": {"path": write_csv(tmp_path / "in/ms_registry.csv", [
            "person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis",
            "1,1970-01-01,1971-02-03,RR,2.5",  # before birth (1980): rejected, the only row of person 1
            "2,2015-01-01,2015-06-01,RR,1",
        ])},  # fmt: skip
    }
    config = validate_config({"inputs": inputs, "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})
    report = validate_extracts(config, results_dir=tmp_path)
    assert report["extracts"]["ms_registry"]["patients_only_rejected"] == 1
    unusable = tmp_path / "validated/ms_registry_unusable.parquet"
    assert pl.read_parquet(unusable)["person_id"].to_list() == ["1"]
    flow = run_cohort(config, population=tmp_path / "validated/population.parquet",
                      ms_registry=tmp_path / "validated/ms_registry.parquet", ms_registry_unusable=unusable,
                      cohort=tmp_path / "cohort.parquet", flow=tmp_path / "flow.json")  # fmt: skip
    cohort = pl.read_parquet(tmp_path / "cohort.parquet")
    assert "1" not in cohort["person_id"].to_list()
    assert flow["excluded"]["outcome_status_unknown"] == 1 and flow["check"]
    assert cohort.filter(pl.col("person_id") == "2")["event"].to_list() == [True]
