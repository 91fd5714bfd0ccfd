"""Issue 18: no input can merge two people, change a value silently or leak an identifier into a message.

Each test writes a small bad extract; every one of them failed on the code before the fix (identifiers compared
as integers, decimal marks guessed, the CSV dialect sniffed from the first rows, impossible dates kept, a
mapped-but-missing column nulled, raw DuckDB errors).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ingest import MS_REGISTRY, POPULATION, PRESCRIPTIONS, make_config, read_rejects, run, write_extracts

from repurpose.registry.ingest import validate_extracts
from repurpose.registry.reader import ExtractError

IDENTIFIER = "987654321"


def clean(tmp_path: Path, extract: str) -> pl.DataFrame:
    path = tmp_path / "validated" / ("prescriptions" if extract == "prescriptions" else f"{extract}.parquet")
    return pl.read_parquet(path)


# --- identifiers are text, as delivered -------------------------------------------------------------------


def test_leading_zeros_make_distinct_persons_and_do_not_link(tmp_path):
    population = [*POPULATION, "0123,F,1980,5,,,3", "123,M,1975,1,,,2"]
    prescriptions = [*PRESCRIPTIONS, "0123,2005-01-10,N06AB06,30,", "123,2006-01-10,N06AB06,20,", "00123,2007-01-10,N06AB06,10,"]
    report = run(tmp_path, population=population, prescriptions=prescriptions)
    assert report["person_id_type"] == "VARCHAR"  # a CSV column of digits is text: never cast to integers
    assert report["extracts"]["population"]["rows_rejected"] == 0  # 0123 and 123 are two people
    assert report["extracts"]["prescriptions"]["rejected_by_reason"] == {"unknown_person": 1}  # 00123 links to no one
    assert read_rejects(tmp_path / "validation", "prescriptions")["person_id"].to_list() == ["00123"]
    population_ids = clean(tmp_path, "population")["person_id"]
    assert population_ids.dtype == pl.String and {"0123", "123"} <= set(population_ids)
    kept = clean(tmp_path, "prescriptions").filter(pl.col("person_id").is_in(["0123", "123"])).sort("person_id")
    assert kept.select("person_id", "ddd").rows() == [("0123", 30.0), ("123", 20.0)]


def test_integer_population_identifiers_link_only_to_their_own_decimal_text(tmp_path):
    paths = write_extracts(tmp_path / "in", prescriptions=[*PRESCRIPTIONS, "01,2005-01-10,N06AB06,30,", "+2,2006-03-01,R03AC02,10,"])
    frame = pl.read_csv(paths["population"], schema_overrides={"person_id": pl.Int64})
    frame.write_parquet(tmp_path / "in" / "population.parquet")
    paths["population"] = str(tmp_path / "in" / "population.parquet")
    report = validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)
    assert report["person_id_type"] == "BIGINT"  # declared by the population's integer column, not guessed
    entry = report["extracts"]["prescriptions"]
    assert entry["rows_kept"] == 3 and entry["rejected_by_reason"] == {"unknown_person": 2}  # 01 and +2 are not 1 and 2
    assert clean(tmp_path, "population")["person_id"].to_list() == [1, 2, 3, 4]


def test_floating_point_identifiers_are_refused(tmp_path):
    paths = write_extracts(tmp_path / "in")
    pl.read_csv(paths["population"], schema_overrides={"person_id": pl.Float64}).write_parquet(tmp_path / "in" / "p.parquet")
    paths["population"] = str(tmp_path / "in" / "p.parquet")
    with pytest.raises(ExtractError, match=r"population: column `person_id` of .*p.parquet \(source `person_id`\) is floating point"):
        validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)


# --- numbers: no guessed decimal mark, no infinities, a plausible range -------------------------------------

SEMICOLON_PRESCRIPTIONS = [line.replace(",", ";") for line in PRESCRIPTIONS]


@pytest.mark.parametrize(
    ("row", "separator", "decimal", "reason", "kept_ddd"),
    [
        ('1,2005-01-01,N06AB06,"1,234",', ",", None, "ambiguous_decimal_mark_ddd", None),
        ("1;2005-01-01;N06AB06;1.234;", ";", None, "ambiguous_decimal_mark_ddd", None),
        ("1;2005-01-01;N06AB06;12,500;", ";", None, "ambiguous_decimal_mark_ddd", None),
        ('1,2005-01-01,N06AB06,"1,234",', ",", ",", None, 1.234),
        ("1;2005-01-01;N06AB06;1.234;", ";", ".", None, 1.234),
        ("1;2005-01-01;N06AB06;1,5;", ";", ".", "unparseable_ddd", None),
        ("1;2005-01-01;N06AB06;30,5;", ";", None, None, 30.5),  # one decimal: cannot be a thousands group
        ("1,2005-01-01,N06AB06,0.125,", ",", None, None, 0.125),  # a thousands group never follows a 0
        ("1,2005-01-01,N06AB06,inf,", ",", None, "unparseable_ddd", None),
        ("1,2005-01-01,N06AB06,NaN,", ",", None, "unparseable_ddd", None),
        ("1,2005-01-01,N06AB06,1e300,", ",", None, "unparseable_ddd", None),
        ("1,2005-01-01,N06AB06,-5,", ",", None, "negative_ddd", None),
        ("1,2005-01-01,N06AB06,250000,", ",", None, "ddd_out_of_range", None),
    ],
)
def test_ambiguous_or_implausible_ddd_is_rejected(tmp_path, row, separator, decimal, reason, kept_ddd):
    base = PRESCRIPTIONS if separator == "," else SEMICOLON_PRESCRIPTIONS
    options = {"prescriptions": {"decimal": decimal}} if decimal else {}
    report = run(tmp_path, prescriptions=[*base, row], options=options)
    entry = report["extracts"]["prescriptions"]
    if reason is None:  # (a declared "," also rejects the base file's 10.5: that is the point of declaring)
        assert kept_ddd in clean(tmp_path, "prescriptions")["ddd"].to_list()
        assert not [r for r in entry["rejected_by_reason"] if r != "unparseable_ddd"]
    else:
        assert entry["rejected_by_reason"] == {reason: 1}


def test_integer_column_with_a_fraction_is_rejected_not_rounded(tmp_path):
    report = run(tmp_path, population=[*POPULATION, "9,F,1980.6,1,,,1", "10,F,1981,1,,,3.0"])
    assert report["extracts"]["population"]["rejected_by_reason"] == {"unparseable_birth_year": 1}
    assert clean(tmp_path, "population").filter(pl.col("person_id") == "10")["education"].to_list() == [3]


def test_non_finite_parquet_ddd_is_rejected(tmp_path):
    paths = write_extracts(tmp_path / "in")
    frame = pl.read_csv(paths["prescriptions"], try_parse_dates=True, schema_overrides={"person_id": pl.String})
    frame = frame.with_columns(pl.Series("ddd", [float("inf"), float("nan"), 30.0]))
    frame.write_parquet(tmp_path / "in" / "prescriptions.parquet")
    paths["prescriptions"] = str(tmp_path / "in" / "prescriptions.parquet")
    report = validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)
    assert report["extracts"]["prescriptions"]["rejected_by_reason"] == {"non_finite_ddd": 2}


# --- the CSV dialect is declared, not sniffed ---------------------------------------------------------------


def test_first_quoted_field_late_in_the_file_is_read(tmp_path):
    rows = [f"1,2005-01-{1 + i % 28:02d},N06AB06,30," for i in range(150_000)]
    rows[148_843 - 2] = '1,2005-01-10,N06AB06,"1,234",'  # line 148,843 of the file (line 1 is the header)
    report = run(tmp_path, prescriptions=[PRESCRIPTIONS[0], *rows], options={"prescriptions": {"decimal": ","}})
    entry = report["extracts"]["prescriptions"]
    assert (entry["rows_read"], entry["rows_rejected"]) == (150_000, 0)
    assert sorted(clean(tmp_path, "prescriptions")["ddd"].unique().to_list()) == [1.234, 30.0]


def test_malformed_line_near_the_top_names_file_and_line(tmp_path):
    prescriptions = [PRESCRIPTIONS[0], PRESCRIPTIONS[1], f"{IDENTIFIER},2005-01-10,N06AB06,30,F32,extra", PRESCRIPTIONS[2]]
    with pytest.raises(ExtractError, match=r"prescriptions\.csv.* line 3 has 6 fields where the header has 5") as error:
        run(tmp_path, prescriptions=prescriptions)
    assert IDENTIFIER not in str(error.value)


def test_file_without_header_row_leaks_no_value(tmp_path):
    prescriptions = [f"{IDENTIFIER},2007-01-10,N06AB06,30,F32", "2,2006-03-01,R03AC02,10.5,"]
    with pytest.raises(ExtractError, match=r"prescriptions: the first line of .*prescriptions\.csv is not a header") as error:
        run(tmp_path, prescriptions=prescriptions)
    assert IDENTIFIER not in str(error.value) and "2007-01-10" not in str(error.value)


def test_wrong_id_column_message_shows_no_identifier(tmp_path):
    prescriptions = [PRESCRIPTIONS[0], f"{IDENTIFIER},2005-01-10,N06AB06,30,"]
    with pytest.raises(ExtractError, match=r"no person in") as error:
        run(tmp_path, prescriptions=prescriptions)
    assert IDENTIFIER[:2] + "…" not in str(error.value) and "9 characters" in str(error.value)


# --- impossible dates -----------------------------------------------------------------------------------------

DATE_ROWS = [
    ("ms_registry", "2,2016-01-01,2016-02-01,RR,2", "onset_after_death"),  # person 2 died 2015-06-01
    ("ms_registry", "2,,2016-02-01,RR,2", "diagnosis_after_death"),
    ("ms_registry", "3,2010-01-01,2099-01-01,RR,2", "diagnosis_date_after_delivery_date"),
    ("ms_registry", "3,2099-01-01,2099-02-01,RR,2", "onset_date_after_delivery_date"),
    ("population", "9,F,1980,1,2099-05-01,,1", "death_date_after_delivery_date"),
    ("population", "9,F,1980,1,,2024-07-01,1", "emigration_date_after_delivery_date"),
]


@pytest.mark.parametrize(("extract", "row", "reason"), DATE_ROWS, ids=[r for _, _, r in DATE_ROWS])
def test_impossible_dates_are_rejected(tmp_path, extract, row, reason):
    base = {"population": POPULATION, "ms_registry": MS_REGISTRY}[extract]
    delivered = {"ms_registry": {"delivery_date": "2024-06-30"}, "population": {"delivery_date": "2024-06-30"}}
    report = run(tmp_path, **{extract: [*base, row]}, options=delivered)
    assert report["extracts"][extract]["rejected_by_reason"] == {reason: 1}


def test_patients_whose_every_registry_row_is_rejected_are_counted(tmp_path):
    report = run(tmp_path, ms_registry=[*MS_REGISTRY, "2,2016-01-01,2016-02-01,RR,2", "99,2010-01-01,2011-01-01,RR,2"])
    assert report["extracts"]["ms_registry"]["patients_only_rejected"] == 1  # person 2; 99 is not in the population
    assert "every registry row was rejected: 1" in (tmp_path / "validation" / "report.md").read_text()


def test_death_after_study_end_but_before_delivery_is_kept(tmp_path):
    report = run(tmp_path, population=[*POPULATION, "9,F,1980,1,2024-03-01,,1"],
                 options={"population": {"delivery_date": "2024-06-30"}})
    assert report["extracts"]["population"]["rows_rejected"] == 0


def test_future_dates_are_rejected_without_a_declared_delivery_date(tmp_path):
    report = run(tmp_path, population=[*POPULATION, "9,F,1980,1,2199-05-01,,1"])
    assert report["extracts"]["population"]["rejected_by_reason"] == {"death_date_after_delivery_date": 1}


# --- whole-extract problems -----------------------------------------------------------------------------------


def test_column_map_naming_a_missing_optional_column_is_an_error(tmp_path):
    with pytest.raises(ExtractError, match=r"population: .*column map.*`education`.*`utdanning`.*population\.csv"):
        run(tmp_path, options={"population": {"columns": {"education": "utdanning"}}})


def test_ms_registry_with_only_a_header_is_an_error(tmp_path):
    with pytest.raises(ExtractError, match=r"ms_registry: no usable row in .*ms_registry\.csv"):
        run(tmp_path, ms_registry=[MS_REGISTRY[0]])


def test_ms_registry_with_no_usable_row_is_an_error(tmp_path):
    with pytest.raises(ExtractError, match=r"ms_registry: no usable row .*diagnosis_date_after_delivery_date"):
        run(tmp_path, ms_registry=[MS_REGISTRY[0], "1,2010-01-01,2099-02-03,RR,2.5"])


def test_empty_yearly_file_is_a_counted_empty_part(tmp_path):
    paths = write_extracts(tmp_path / "in")
    parts = tmp_path / "in" / "parts"
    parts.mkdir()
    Path(paths["prescriptions"]).rename(parts / "dispensings_2005.csv")
    (parts / "dispensings_2006.csv").write_bytes(b"")
    paths["prescriptions"] = str(parts)
    report = validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)
    entry = report["extracts"]["prescriptions"]
    assert entry["empty_parts"] == ["dispensings_2006.csv"] and entry["rows_kept"] == 3
    empty = pl.read_parquet(tmp_path / "validated" / "prescriptions" / "dispensings_2006.parquet")
    full = pl.read_parquet(tmp_path / "validated" / "prescriptions" / "dispensings_2005.parquet")
    assert empty.height == 0 and empty.schema == full.schema
    assert "Empty parts: dispensings_2006.csv" in (tmp_path / "validation" / "report.md").read_text()


def test_empty_register_file_is_an_error(tmp_path):
    paths = write_extracts(tmp_path / "in")
    Path(paths["ms_registry"]).write_bytes(b"")
    with pytest.raises(ExtractError, match=r"ms_registry: .*ms_registry\.csv is empty"):
        validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)


def test_truncated_parquet_is_a_project_error_naming_the_file(tmp_path):
    paths = write_extracts(tmp_path / "in")
    parts = tmp_path / "in" / "parts"
    parts.mkdir()
    frame = pl.read_csv(paths["prescriptions"], try_parse_dates=True)
    frame.write_parquet(parts / "dispensings_2005.parquet")
    table = pa.Table.from_pylist([{"person_id": 1, "ddd": 1.0}] * 1000)
    pq.write_table(table, parts / "dispensings_2006.parquet")
    data = (parts / "dispensings_2006.parquet").read_bytes()
    (parts / "dispensings_2006.parquet").write_bytes(data[: len(data) // 2])
    paths["prescriptions"] = str(parts)
    with pytest.raises(ExtractError, match=r"prescriptions: .*dispensings_2006\.parquet is not a readable Parquet file"):
        validate_extracts(make_config(paths, tmp_path), results_dir=tmp_path)


def test_validated_files_are_the_same_bytes_in_two_runs(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    for name in ("population.parquet", "ms_registry.parquet", "prescriptions/prescriptions.parquet"):
        assert (tmp_path / "a" / "validated" / name).read_bytes() == (tmp_path / "b" / "validated" / name).read_bytes()
    assert json.loads((tmp_path / "a" / "validation" / "report.json").read_text())["extracts"]["population"]["rows_kept"] == 4
