"""ATC helpers, the package's own ATC catalog and the WHO ATC/DDD index reader."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from repurpose.atc import (
    ATC_LEVEL_CODE_LENGTH,
    CATALOG_SCHEMA,
    LEVEL5_PATTERN,
    atc_level,
    atc_parent,
    load_atc_names,
    load_builtin_catalog,
    read_who_atc_index,
)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"
WHO_INDEX = REFERENCE_DIR / "who_atc_ddd_index_2020.csv"
ANATOMICAL_GROUPS = set("ABCDGHJLMNPRSV")


@pytest.fixture(scope="module")
def catalog() -> pl.DataFrame:
    return load_builtin_catalog()


@pytest.fixture(scope="module")
def who_index() -> pl.DataFrame:
    if not WHO_INDEX.exists():
        pytest.skip(f"WHO ATC/DDD index not available at {WHO_INDEX} (reference data lives outside the repo)")
    return read_who_atc_index(WHO_INDEX)


@pytest.mark.parametrize(("code", "level"), [("N", 1), ("N06", 2), ("N06A", 3), ("N06AB", 4), ("N06AB06", 5)])
def test_atc_level_follows_code_length(code: str, level: int) -> None:
    assert atc_level(code) == level
    assert ATC_LEVEL_CODE_LENGTH[level] == len(code)


@pytest.mark.parametrize("code", ["", "N0", "N06AB0", "N06AB066", "n06ab06", "106AB06", "N06A106", None])
def test_atc_level_rejects_malformed_codes(code: str) -> None:
    with pytest.raises(ValueError, match="not a well-formed ATC code"):
        atc_level(code)


def test_atc_parent_gives_each_ancestor() -> None:
    assert [atc_parent("R03AC02", level) for level in range(1, 6)] == ["R", "R03", "R03A", "R03AC", "R03AC02"]
    assert atc_parent("C10A", 2) == "C10"
    with pytest.raises(ValueError, match="no level-5 parent"):
        atc_parent("C10A", 5)
    with pytest.raises(ValueError, match="ATC level must be 1-5"):
        atc_parent("C10AA01", 0)


def test_level5_pattern() -> None:
    assert LEVEL5_PATTERN.match("N06AB06")
    for bad in ("N06AB6", "N06AB066", "n06ab06", "N6AB006", "1234567"):
        assert not LEVEL5_PATTERN.match(bad)


def test_builtin_catalog_schema_and_size(catalog: pl.DataFrame) -> None:
    assert dict(catalog.schema) == CATALOG_SCHEMA
    level5 = catalog.filter(pl.col("atc_level") == 5)
    assert level5.height >= 300
    assert set(level5["atc_code"].str.slice(0, 1).unique()) == ANATOMICAL_GROUPS
    assert catalog["atc_code"].n_unique() == catalog.height
    assert catalog["atc_name"].null_count() == 0


def test_builtin_catalog_codes_are_well_formed_and_complete(catalog: pl.DataFrame) -> None:
    codes = set(catalog["atc_code"])
    for row in catalog.iter_rows(named=True):
        assert atc_level(row["atc_code"]) == row["atc_level"], row
        if row["atc_level"] == 5:
            assert LEVEL5_PATTERN.match(row["atc_code"]), row
        for parent_level in range(1, row["atc_level"]):
            assert atc_parent(row["atc_code"], parent_level) in codes, row
    # every parent has at least one child, so no stray groups
    for code in codes:
        if atc_level(code) < 5:
            assert any(other != code and other.startswith(code) for other in codes), code


def test_builtin_catalog_ddd_columns(catalog: pl.DataFrame) -> None:
    with_ddd = catalog.filter(pl.col("ddd").is_not_null())
    assert with_ddd.height >= 200
    assert (with_ddd["ddd"] > 0).all()
    assert (with_ddd["atc_level"] == 5).all()
    assert with_ddd["ddd_unit"].null_count() == 0 and with_ddd["adm_route"].null_count() == 0
    assert set(with_ddd["ddd_unit"]) <= {"g", "mg", "mcg", "U", "TU", "MU", "mmol"}
    sertraline = catalog.filter(pl.col("atc_code") == "N06AB06").row(0, named=True)
    assert (
        sertraline["atc_name"] == "sertraline" and sertraline["ddd"] == 50 and sertraline["ddd_unit"] == "mg"
    )


def test_load_atc_names_defaults_to_builtin(catalog: pl.DataFrame) -> None:
    assert load_atc_names(None).equals(catalog)


def test_who_reader_keeps_one_row_per_code_preferring_oral_ddd(tmp_path: Path) -> None:
    path = tmp_path / "who.csv"
    path.write_text(
        "ATC code,ATC level name,DDD,Unit,Adm.R,Comment\n"
        "N,NERVOUS SYSTEM,,,,\n"
        "N02BE01,paracetamol,3,g,R,\n"
        "N02BE01,paracetamol,3,g,O,\n"
        "R03AC02,salbutamol,0.8,mg,Inhal.aerosol,\n"
        "R03AC02,salbutamol,10,mg,Inhal.solution,\n"
        "J01CA04,amoxicillin,,,,\n"
        "J01CA04,amoxicillin,3,g,P,\n"
        '"N06AB06",sertraline,50,mg,O,"a comment, with a comma"\n',
        encoding="utf-8",
    )
    table = read_who_atc_index(path)
    assert dict(table.schema) == CATALOG_SCHEMA
    rows = {row["atc_code"]: row for row in table.iter_rows(named=True)}
    assert list(rows) == ["N", "N02BE01", "R03AC02", "J01CA04", "N06AB06"]
    assert (rows["N02BE01"]["ddd"], rows["N02BE01"]["adm_route"]) == (3.0, "O")
    assert (rows["R03AC02"]["ddd"], rows["R03AC02"]["adm_route"]) == (0.8, "Inhal.aerosol")
    assert (rows["J01CA04"]["ddd"], rows["J01CA04"]["ddd_unit"]) == (3.0, "g")
    assert rows["N"]["atc_level"] == 1 and rows["N"]["ddd"] is None
    assert load_atc_names(str(path)).equals(table)


def test_who_reader_names_file_and_missing_columns_on_a_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "not_who.csv"
    path.write_text("code,name,DDD,Unit\nN,NERVOUS SYSTEM,,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        read_who_atc_index(path)
    assert (
        "ATC code" in str(error.value)
        and "ATC level name" in str(error.value)
        and "Adm.R" in str(error.value)
    )


def test_who_reader_on_the_reference_index(who_index: pl.DataFrame) -> None:
    assert dict(who_index.schema) == CATALOG_SCHEMA
    assert who_index["atc_code"].n_unique() == who_index.height
    assert who_index["atc_level"].null_count() == 0
    assert set(who_index.filter(pl.col("atc_level") == 1)["atc_code"]) == ANATOMICAL_GROUPS
    assert who_index.filter(pl.col("atc_level") == 5).height > 4000
    sertraline = who_index.filter(pl.col("atc_code") == "N06AB06").row(0, named=True)
    assert (sertraline["atc_name"], sertraline["ddd"], sertraline["ddd_unit"], sertraline["adm_route"]) == (
        "sertraline",
        50.0,
        "mg",
        "O",
    )


def _normalised(name: pl.Expr) -> pl.Expr:
    return name.str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def test_builtin_catalog_agrees_with_the_who_index(catalog: pl.DataFrame, who_index: pl.DataFrame) -> None:
    joined = catalog.join(
        who_index.select("atc_code", pl.col("atc_name").alias("who_name")), on="atc_code", how="left"
    )
    agree = joined.filter(_normalised(pl.col("atc_name")) == _normalised(pl.col("who_name")))
    share = agree.height / joined.height
    disagree = joined.join(agree, on="atc_code", how="anti").select("atc_code", "atc_name", "who_name")
    assert share >= 0.95, disagree
    level5 = joined.filter(pl.col("atc_level") == 5)
    assert level5["who_name"].null_count() == 0, level5.filter(pl.col("who_name").is_null())


def test_who_reader_accepts_latin1_files(tmp_path: Path) -> None:
    path = tmp_path / "who_latin1.csv"
    path.write_bytes(
        "ATC code,ATC level name,DDD,Unit,Adm.R,Comment\nL04AB,TNF-\u00e6 inhibitors,,,,\n".encode("latin-1")
    )
    assert read_who_atc_index(path)["atc_name"].to_list() == ["TNF-\u00e6 inhibitors"]
