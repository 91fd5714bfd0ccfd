"""Validation of registry extracts: every rejection reason and every fatal error, each with a small bad file."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from repurpose.config import validate_config
from repurpose.registry import reader as reader_module
from repurpose.registry.ingest import validate_extracts
from repurpose.registry.reader import ExtractError

POPULATION = [
    "person_id,sex,birth_year,birth_month,death_date,emigration_date,education",
    "1,F,1980,5,,,3",
    "2,M,1975,,2015-06-01,,",
    "3,2,1990,12,,2020-01-01,1",
    "4,M,2015,11,,,",
]
PRESCRIPTIONS = [
    "person_id,dispense_date,atc_code,ddd,reimbursement_code",
    "1,2005-01-10,N06AB06,30,F32",
    "2,2006-03-01,R03AC02,10.5,",
    "3,2010-07-07,C10AA01,90,",
]
MS_REGISTRY = [
    "person_id,onset_date,diagnosis_date,ms_course,edss_at_diagnosis",
    "1,2010-01-01,2011-02-03,RR,2.5",
]


def write_extracts(directory: Path, population=POPULATION, prescriptions=PRESCRIPTIONS, ms_registry=MS_REGISTRY,
                   encoding: str = "utf-8") -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, lines in (("population", population), ("prescriptions", prescriptions), ("ms_registry", ms_registry)):
        path = directory / f"{name}.csv"
        path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
        paths[name] = str(path)
    return paths


def make_config(paths: dict, tmp_path: Path, **extract_options) -> dict:
    inputs = {name: {"path": path, **extract_options.get(name, {})} for name, path in paths.items()}
    return validate_config({"inputs": inputs, "resources": {"tmpdir": str(tmp_path / "tmp"), "memory_gb": 1}})


def run(tmp_path: Path, **extracts) -> dict:
    config_options = extracts.pop("options", {})
    paths = write_extracts(tmp_path / "in", **extracts)
    return validate_extracts(make_config(paths, tmp_path, **config_options), results_dir=tmp_path)


def read_rejects(validation_dir: Path, extract: str) -> pl.DataFrame:
    """Rejected rows of an extract: one file for the registers, one per part for prescriptions."""
    single = validation_dir / "rejects" / f"{extract}.parquet"
    return pl.read_parquet(single if single.exists() else validation_dir / "rejects" / extract / "*.parquet")


def test_clean_extracts_keep_every_row(tmp_path):
    report = run(tmp_path)
    for name, n in (("population", 4), ("prescriptions", 3), ("ms_registry", 1)):
        entry = report["extracts"][name]
        assert (entry["rows_read"], entry["rows_kept"], entry["rows_rejected"]) == (n, n, 0)
    population = pl.read_parquet(tmp_path / "validated" / "population.parquet")
    assert population["sex"].to_list() == ["F", "M", "F", "M"]  # 2 = female
    assert population.schema["death_date"] == pl.Date
    dispensings = pl.read_parquet(tmp_path / "validated" / "prescriptions", hive_partitioning=True)
    assert sorted(dispensings["ddd"].to_list()) == [10.5, 30.0, 90.0]
    assert sorted(dispensings["dispense_year"].unique().to_list()) == [2005, 2006, 2010]
    saved = json.loads((tmp_path / "validation" / "report.json").read_text())
    assert saved["extracts"]["population"]["rows_kept"] == 4
    assert "| population | 4 | 4 | 0 |" in (tmp_path / "validation" / "report.md").read_text()


# (extract, bad row appended to the valid extract, expected reason)
BAD_ROWS = [
    ("population", ",F,1980,1,,,1", "missing_person_id"),
    ("population", "9,,1980,1,,,1", "missing_sex"),
    ("population", "9,X,1980,1,,,1", "unparseable_sex"),
    ("population", "9,F,,1,,,1", "missing_birth_year"),
    ("population", "9,F,19x0,1,,,1", "unparseable_birth_year"),
    ("population", "9,F,1800,1,,,1", "birth_year_out_of_range"),
    ("population", "9,F,2030,1,,,1", "birth_year_after_study_end"),
    ("population", "9,F,1980,13,,,1", "birth_month_out_of_range"),
    ("population", "9,F,1980,may,,,1", "unparseable_birth_month"),
    ("population", "9,F,1980,1,2010-02-30,,1", "unparseable_death_date"),
    ("population", "9,F,1980,1,,someday,1", "unparseable_emigration_date"),
    ("population", "9,F,1980,1,,,7", "education_out_of_range"),
    ("population", "9,F,1980,1,,,-1", "negative_education"),
    ("population", "9,F,1980,1,,,high", "unparseable_education"),
    ("population", "9,F,1980,6,1979-01-01,,1", "death_before_birth"),
    ("population", "9,F,1980,6,,1970-01-01,1", "emigration_before_birth"),
    ("prescriptions", ",2005-01-01,N06AB06,30,", "missing_person_id"),
    ("prescriptions", "01,2005-01-01,N06AB06,30,", "unknown_person"),  # identifiers are text: 01 is not 1
    ("prescriptions", "99,2005-01-01,N06AB06,30,", "unknown_person"),
    ("prescriptions", "1,,N06AB06,30,", "missing_dispense_date"),
    ("prescriptions", "1,2005-13-01,N06AB06,30,", "unparseable_dispense_date"),
    ("prescriptions", "1,2003-12-31,N06AB06,30,", "dispense_date_out_of_window"),
    ("prescriptions", "1,2024-01-01,N06AB06,30,", "dispense_date_out_of_window"),
    ("prescriptions", "4,2015-10-01,N06AB06,30,", "dispensed_before_birth"),
    ("prescriptions", "2,2016-01-01,N06AB06,30,", "dispensed_after_death"),
    ("prescriptions", "1,2005-01-01,,30,", "missing_atc_code"),
    ("prescriptions", "1,2005-01-01,N06AB,30,", "malformed_atc_code"),
    ("prescriptions", "1,2005-01-01,N06AB6X,30,", "malformed_atc_code"),
    ("prescriptions", "1,2005-01-01,N06AB06,-2,", "negative_ddd"),
    ("prescriptions", "1,2005-01-01,N06AB06,lots,", "unparseable_ddd"),
    ("ms_registry", ",2010-01-01,2011-01-01,RR,2", "missing_person_id"),
    ("ms_registry", "99,2010-01-01,2011-01-01,RR,2", "unknown_person"),
    ("ms_registry", "2,2010-01-01,,RR,2", "missing_diagnosis_date"),
    ("ms_registry", "2,2010-01-01,31/12/2011,RR,2", "unparseable_diagnosis_date"),
    ("ms_registry", "2,early,2011-01-01,RR,2", "unparseable_onset_date"),
    ("ms_registry", "2,2010-01-01,2011-01-01,XX,2", "invalid_ms_course_at_diagnosis"),  # an old `ms_course` column
    ("ms_registry", "2,2010-01-01,2011-01-01,RR,2.25", "edss_at_diagnosis_not_in_steps_of_0.5"),
    ("ms_registry", "2,2010-01-01,2011-01-01,RR,11", "edss_at_diagnosis_out_of_range"),
    ("ms_registry", "2,2010-01-01,2011-01-01,RR,-1", "negative_edss_at_diagnosis"),
    ("ms_registry", "2,2010-01-01,2011-01-01,RR,bad", "unparseable_edss_at_diagnosis"),
    ("ms_registry", "2,1960-01-01,1974-01-01,RR,2", "diagnosis_before_birth"),
    ("ms_registry", "2,1970-01-01,2001-01-01,RR,2", "onset_before_birth"),
    ("ms_registry", "2,2012-01-01,2011-01-01,RR,2", "onset_after_diagnosis"),
]


@pytest.mark.parametrize(("extract", "bad_row", "reason"), BAD_ROWS, ids=[f"{e}-{r}" for e, _, r in BAD_ROWS])
def test_each_rejection_reason(tmp_path, extract, bad_row, reason):
    base = {"population": POPULATION, "prescriptions": PRESCRIPTIONS, "ms_registry": MS_REGISTRY}[extract]
    report = run(tmp_path, **{extract: [*base, bad_row]})
    entry = report["extracts"][extract]
    assert entry["rejected_by_reason"] == {reason: 1}
    assert entry["rows_read"] == entry["rows_kept"] + 1 == len(base)
    assert read_rejects(tmp_path / "validation", extract)["reject_reason"].to_list() == [reason]


def test_duplicate_persons_are_rejected_with_every_copy(tmp_path):
    report = run(tmp_path, population=[*POPULATION, "1,F,1980,5,,,3"], ms_registry=[*MS_REGISTRY, "1,2010-01-01,2011-02-03,RR,2.5", "2,2010-01-01,2011-02-03,RR,2.5"])
    assert report["extracts"]["population"]["rejected_by_reason"] == {"duplicate_person_id": 2}
    # Person 1 is no longer a valid person, so their dispensing and registry rows are unknown persons.
    assert report["extracts"]["prescriptions"]["rejected_by_reason"] == {"unknown_person": 1}
    assert report["extracts"]["ms_registry"]["rejected_by_reason"] == {"unknown_person": 2}
    assert report["extracts"]["ms_registry"]["rows_kept"] == 1


def test_native_semicolon_latin1_extract_with_column_map(tmp_path):
    population = ["løpenr;kjønn;fødselsår;fødselsmåned;dødsdato;utvandringsdato;utdanning",
                  "1;2;1980;5;;;3", "2;1;1975;;01.06.2015;;", "3;2;1990;12;;01.01.2020;1"]
    prescriptions = ["løpenr;utleveringsdato;atckode;ddd;refusjonskode", "1;10.01.2005;n06ab06;30,5;F32", "2;01.03.2006;R03AC02;10;"]
    ms_registry = ["løpenr;debutdato;diagnosedato;forløp;edss_ved_diagnose", "1;01.01.2010;03.02.2011;RR;2,5"]
    options = {
        "population": {"date_format": "%d.%m.%Y", "columns": {"person_id": "løpenr", "sex": "kjønn", "birth_year": "fødselsår",
                       "birth_month": "fødselsmåned", "death_date": "dødsdato", "emigration_date": "utvandringsdato", "education": "utdanning"}},
        "prescriptions": {"date_format": "%d.%m.%Y", "columns": {"person_id": "løpenr", "dispense_date": "utleveringsdato",
                          "atc_code": "atckode", "reimbursement_code": "refusjonskode"}},
        "ms_registry": {"date_format": "%d.%m.%Y", "columns": {"person_id": "løpenr", "onset_date": "debutdato",
                        "diagnosis_date": "diagnosedato", "ms_course": "forløp", "edss_at_diagnosis": "edss_ved_diagnose"}},
    }
    paths = write_extracts(tmp_path / "in", population, prescriptions, ms_registry, encoding="latin-1")
    report = validate_extracts(make_config(paths, tmp_path, **options), results_dir=tmp_path)
    assert all(entry["rows_rejected"] == 0 for entry in report["extracts"].values())
    dispensings = pl.read_parquet(tmp_path / "validated" / "prescriptions", hive_partitioning=True).sort("person_id")
    assert dispensings["atc_code"].to_list() == ["N06AB06", "R03AC02"]
    assert dispensings["ddd"].to_list() == [30.5, 10.0]
    ms = pl.read_parquet(tmp_path / "validated" / "ms_registry.parquet")
    assert str(ms["diagnosis_date"][0]) == "2011-02-03" and ms["edss_at_diagnosis"][0] == 2.5


def test_directory_of_yearly_parquet_parts(tmp_path):
    paths = write_extracts(tmp_path / "in")
    parts = tmp_path / "in" / "parts"
    parts.mkdir()
    frame = pl.read_csv(paths["prescriptions"], try_parse_dates=True)
    for year, part in frame.group_by(pl.col("dispense_date").dt.year()):
        part.write_parquet(parts / f"dispensings_{year[0]}.parquet")
    paths["prescriptions"] = str(parts)
    report = validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)
    assert report["extracts"]["prescriptions"]["rows_kept"] == 3
    assert len(report["extracts"]["prescriptions"]["files"]) == 3


# Extract-level problems stop the run with one message naming file, column and example values.
def test_fatal_missing_file(tmp_path):
    paths = write_extracts(tmp_path / "in")
    paths["ms_registry"] = str(tmp_path / "nope.csv")
    with pytest.raises(ExtractError, match=r"ms_registry: input .*nope.csv does not exist"):
        validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)


def test_fatal_missing_required_column(tmp_path):
    population = [line.replace("sex,", "gender,") for line in POPULATION]
    with pytest.raises(ExtractError, match=r"population: required column `sex` .*missing from .*population.csv.*gender"):
        run(tmp_path, population=population)


def test_fatal_unknown_column_in_map(tmp_path):
    with pytest.raises(ExtractError, match=r"column map names \['gender'\]"):
        run(tmp_path, options={"population": {"columns": {"gender": "sex"}}})


def test_fatal_wrong_encoding(tmp_path):
    population = [POPULATION[0].replace("education", "utdanning_ø"), *POPULATION[1:]]
    paths = write_extracts(tmp_path / "in", population=population, encoding="latin-1")
    config = make_config(paths, tmp_path, population={"encoding": "utf-8", "columns": {"education": "utdanning_ø"}})
    with pytest.raises(ExtractError, match=r"population: cannot read population.csv .*encoding utf-8.*latin-1"):
        validate_extracts(config, results_dir=tmp_path)


def test_fatal_nothing_parses_with_date_format(tmp_path):
    prescriptions = [PRESCRIPTIONS[0], "1,10.01.2005,N06AB06,30,", "2,01.03.2006,R03AC02,10,"]
    with pytest.raises(ExtractError, match=r"prescriptions: no value of column `dispense_date`.*date_format '%Y-%m-%d'; examples: '10.01.2005'"):
        run(tmp_path, prescriptions=prescriptions)


def test_fatal_no_persons_in_common(tmp_path):
    prescriptions = [PRESCRIPTIONS[0], "101,2005-01-10,N06AB06,30,", "102,2006-03-01,R03AC02,10,"]
    with pytest.raises(ExtractError, match=r"prescriptions: no person in .*prescriptions.csv \(column `person_id`\) is in the population"):
        run(tmp_path, prescriptions=prescriptions)


def test_fatal_no_valid_population_row(tmp_path):
    with pytest.raises(ExtractError, match="population: no valid row"):
        run(tmp_path, population=[POPULATION[0], "1,F,2030,1,,,1"])


def test_fatal_mixed_formats_in_directory(tmp_path):
    paths = write_extracts(tmp_path / "in")
    parts = tmp_path / "in" / "parts"
    parts.mkdir()
    (parts / "a.csv").write_text("\n".join(PRESCRIPTIONS))
    pl.read_csv(paths["prescriptions"]).write_parquet(parts / "b.parquet")
    paths["prescriptions"] = str(parts)
    with pytest.raises(ExtractError, match="mixes Parquet and CSV"):
        validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)


def test_person_identifiers_never_in_error_messages(tmp_path):
    prescriptions = [PRESCRIPTIONS[0], "123456789,2005-01-10,N06AB06,30,"]
    with pytest.raises(ExtractError) as error:
        run(tmp_path, prescriptions=prescriptions)
    assert "123456789" not in str(error.value)


def _as_parquet_part(csv_lines: list[str], directory: Path) -> str:
    """The prescription rows of `csv_lines` as one Parquet part, every column text as delivered."""
    directory.mkdir(parents=True, exist_ok=True)
    header, *rows = csv_lines
    frame = pl.DataFrame([row.split(",") for row in rows], schema=header.split(","), orient="row")
    frame = frame.with_columns(pl.when(pl.all() == "").then(None).otherwise(pl.all()).name.keep())
    frame.write_parquet(directory / "dispensings_all.parquet")
    return str(directory)


def test_a_parquet_part_is_labelled_as_the_same_rows_in_csv(tmp_path):
    """A Parquet part is labelled on the fly (no materialised table, a second pass for its rejects): it keeps,
    rejects and counts exactly what the same rows delivered as CSV give, reason by reason."""
    bad_rows = [row for extract, row, _ in BAD_ROWS if extract == "prescriptions"]
    lines = [*PRESCRIPTIONS, *bad_rows]
    csv_dir, parquet_dir = tmp_path / "csv", tmp_path / "parquet"
    from_csv = run(csv_dir, prescriptions=lines)["extracts"]["prescriptions"]
    paths = write_extracts(parquet_dir / "in", prescriptions=lines)
    paths["prescriptions"] = _as_parquet_part(lines, parquet_dir / "in" / "parts")
    from_parquet = validate_extracts(make_config(paths, parquet_dir), results_dir=parquet_dir)["extracts"]["prescriptions"]
    assert from_parquet["format"] == "parquet" and from_csv["format"] == "csv"
    for key in ("rows_read", "rows_kept", "rows_rejected", "rejected_by_reason"):
        assert from_parquet[key] == from_csv[key], key
    assert from_parquet["rows_rejected"] == len(bad_rows)
    rejects = [read_rejects(directory / "validation", "prescriptions").sort(pl.all()) for directory in (csv_dir, parquet_dir)]
    assert rejects[1].equals(rejects[0])
    kept = [pl.read_parquet(directory / "validated" / "prescriptions").sort("person_id") for directory in (csv_dir, parquet_dir)]
    assert kept[1].drop("ddd").equals(kept[0].drop("ddd"))
    assert kept[1]["ddd"].to_list() == kept[0]["ddd"].to_list()


def test_listed_malformed_atc_codes_reject_what_the_regular_expression_rejects(tmp_path, monkeypatch):
    """A Parquet part's malformed ATC codes are found among its distinct codes and listed in the check: the same
    rejects as matching every row's code against the regular expression (forced by listing none at most)."""
    codes = ["N06AB06", " n06ab06 ", "N06AB6X", "N06AB", "N06AB060", "Ä06AB06", "N06AB06\n", "N0６AB06", "", "r03ac02"]
    lines = [PRESCRIPTIONS[0], *(f"1,2005-01-{day + 1:02d},{code},30," for day, code in enumerate(codes))]
    rejects = []
    for listed, directory in ((True, tmp_path / "listed"), (False, tmp_path / "matched")):
        if not listed:
            monkeypatch.setattr(reader_module, "MAX_LISTED_MALFORMED", 0)
        paths = write_extracts(directory / "in")
        paths["prescriptions"] = _as_parquet_part(lines, directory / "in" / "parts")
        entry = validate_extracts(make_config(paths, directory), results_dir=directory)["extracts"]["prescriptions"]
        assert entry["rejected_by_reason"] == {"malformed_atc_code": 6, "missing_atc_code": 1}
        rejects.append(read_rejects(directory / "validation", "prescriptions"))
    assert rejects[0].equals(rejects[1])
    assert sorted(rejects[0].filter(pl.col("reject_reason") == "malformed_atc_code")["atc_code"].to_list()) == sorted(
        ["N06AB6X", "N06AB", "N06AB060", "Ä06AB06", "N06AB06\n", "N0６AB06"]
    )


def test_a_typed_parquet_part_rejects_what_its_text_twin_rejects(tmp_path):
    """Numbers and dates delivered typed keep their type through the labelling (no text cast of every row)
    and become text only in the rejects file: the same rows, reasons and values as the part delivered as text."""
    bad_rows = [row for extract, row, _ in BAD_ROWS if extract == "prescriptions"]
    typed_rows = [row for row in bad_rows if not row.startswith("01,") and "2005-13-01" not in row and ",lots," not in row]
    assert len(typed_rows) == len(bad_rows) - 3
    lines = [*PRESCRIPTIONS, *typed_rows]
    text_dir, typed_dir = tmp_path / "text", tmp_path / "typed"
    results = {}
    for directory, cast in ((text_dir, False), (typed_dir, True)):
        paths = write_extracts(directory / "in", prescriptions=lines)
        paths["prescriptions"] = _as_parquet_part(lines, directory / "in" / "parts")
        if cast:
            part = directory / "in" / "parts" / "dispensings_all.parquet"
            frame = pl.read_parquet(part).with_columns(
                pl.col("person_id").cast(pl.Int64), pl.col("dispense_date").str.to_date(), pl.col("ddd").cast(pl.Float64)
            )
            frame.write_parquet(part)
        results[cast] = validate_extracts(make_config(paths, directory), results_dir=directory)["extracts"]["prescriptions"]
    for key in ("rows_read", "rows_kept", "rows_rejected", "rejected_by_reason"):
        assert results[True][key] == results[False][key], key
    assert results[True]["rows_rejected"] == len(typed_rows)
    text, typed = (read_rejects(d / "validation", "prescriptions").sort(pl.all()) for d in (text_dir, typed_dir))
    assert set(typed.schema.values()) == {pl.String}
    assert typed.drop("ddd").equals(text.drop("ddd"))
    assert typed["ddd"].cast(pl.Float64).to_list() == text["ddd"].cast(pl.Float64).to_list()


def test_a_parquet_part_without_rejects_skips_their_pass_with_the_same_empty_file(tmp_path):
    """Every row kept (the count from the Parquet footers equals the clean rows): the rejects file is written
    without a second pass, with the columns and types of a rejects file of a part that has rejects."""
    paths = write_extracts(tmp_path / "in")
    paths["prescriptions"] = _as_parquet_part(PRESCRIPTIONS, tmp_path / "in" / "parts")
    entry = validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)["extracts"]["prescriptions"]
    assert (entry["rows_read"], entry["rows_kept"], entry["rejected_by_reason"]) == (3, 3, {})
    empty = pl.read_parquet(tmp_path / "validation" / "rejects" / "prescriptions" / "dispensings_all.parquet")
    with_rejects = tmp_path / "with"
    paths["prescriptions"] = _as_parquet_part([*PRESCRIPTIONS, "9,2005-01-10,N06AB06,30,"], with_rejects / "parts")
    validate_extracts(make_config(paths, with_rejects), results_dir=with_rejects)
    rejected = pl.read_parquet(with_rejects / "validation" / "rejects" / "prescriptions" / "dispensings_all.parquet")
    assert empty.height == 0 and rejected["reject_reason"].to_list() == ["unknown_person"]
    assert empty.schema == rejected.schema
