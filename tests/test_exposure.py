"""Exposure windows on a hand-made example: k-th dispensing, class levels, dose crossings, exit cut-off."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from repurpose.config import validate_config
from repurpose.exposure import build_exposures, dose_column, split_class_intervals

D = date.fromisoformat
BIRTH = {1: D("1980-01-15"), 2: D("1970-07-01"), 3: D("1990-03-15")}
COHORT = pl.DataFrame({
    "person_id": [1, 2, 3],
    "birth_date": [BIRTH[1], BIRTH[2], BIRTH[3]],
    "entry_date": [D("2005-01-01")] * 3,
    "exit_date": [D("2020-12-31"), D("2012-06-30"), D("2020-12-31")],
    "entry_age_days": [(D("2005-01-01") - BIRTH[p]).days for p in (1, 2, 3)],
    "exit_age_days": [(D("2020-12-31") - BIRTH[1]).days, (D("2012-06-30") - BIRTH[2]).days, (D("2020-12-31") - BIRTH[3]).days],
    "event": [False, True, False],
})
DISPENSINGS = [
    # person 1: two sertraline, then one escitalopram -> N06AB at level 4 reached at the 2nd dispensing
    (1, "2004-03-01", "N06AB06", 30.0), (1, "2006-05-01", "N06AB06", 80.0), (1, "2007-01-01", "N06AB10", 300.0),
    # person 2: salbutamol twice, the second after exit (ignored); one terbutaline before exit
    (2, "2008-01-01", "R03AC02", 50.0), (2, "2012-01-01", "R03AC03", 60.0), (2, "2013-01-01", "R03AC02", 50.0),
    # person 3: a single dispensing: never exposed with k = 2
    (3, "2010-01-01", "C10AA01", 90.0),
]


@pytest.fixture()
def inputs(tmp_path):
    cohort_path = tmp_path / "cohort.parquet"
    COHORT.write_parquet(cohort_path)
    frame = pl.DataFrame(DISPENSINGS, schema=["person_id", "dispense_date", "atc_code", "ddd"], orient="row").with_columns(
        pl.col("dispense_date").str.to_date(), reimbursement_code=pl.lit(None, pl.String))
    frame = frame.with_columns(dispense_year=pl.col("dispense_date").dt.year())
    frame.write_parquet(tmp_path / "rx", partition_by="dispense_year")
    return tmp_path, cohort_path


def exposures(tmp_path, cohort_path, level, **screen):
    config = validate_config({"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")},
                              "screen": screen, "resources": {"tmpdir": str(tmp_path / "tmp")}})
    out = tmp_path / f"exposure_{level}.parquet"
    build_exposures(config, tmp_path / "rx", cohort_path, level, out)
    return pl.read_parquet(out).sort("atc_code", "person_id")


def test_exposure_starts_at_the_second_dispensing_of_any_substance_in_the_class(inputs):
    tmp_path, cohort_path = inputs
    level4 = exposures(tmp_path, cohort_path, 4)
    assert level4.select("person_id", "atc_code", "exposure_start_date").rows() == [
        (1, "N06AB", D("2006-05-01")),
        (2, "R03AC", D("2012-01-01")),  # salbutamol + terbutaline count together at level 4
    ]
    row = level4.row(0, named=True)
    assert row["exposure_start_age_days"] == (D("2006-05-01") - BIRTH[1]).days
    assert row["first_dispense_age_days"] == (D("2004-03-01") - BIRTH[1]).days  # before entry: exposed at entry
    assert (row["n_dispensings"], row["total_ddd"]) == (3, 410.0)
    # cumulative DDD 30 -> 110 (crosses 100 on 2006-05-01) -> 410 (crosses 365 on 2007-01-01)
    assert row[dose_column(100)] == (D("2006-05-01") - BIRTH[1]).days
    assert row[dose_column(365)] == (D("2007-01-01") - BIRTH[1]).days
    level5 = exposures(tmp_path, cohort_path, 5)
    assert level5.select("person_id", "atc_code").rows() == [(1, "N06AB06")]  # salbutamol's 2nd is after exit


def test_min_dispensings_is_configurable(inputs):
    tmp_path, cohort_path = inputs
    assert exposures(tmp_path, cohort_path, 2, min_dispensings=3).select("person_id", "atc_code", "exposure_start_date").rows() == [
        (1, "N06", D("2007-01-01"))
    ]
    assert exposures(tmp_path, cohort_path, 2, min_dispensings=1).height == 3
    assert exposures(tmp_path, cohort_path, 2, min_dispensings=4).height == 0


def test_split_intervals_put_the_event_on_the_last_row():
    cohort = COHORT.drop("birth_date", "entry_date", "exit_date")
    class_exposures = pl.DataFrame({"person_id": [1, 2], "exposure_start_age_days": [
        cohort["entry_age_days"][0] - 10, cohort["entry_age_days"][1] + 100]})
    split = split_class_intervals(cohort, class_exposures, lag_days=0)
    person1 = split.filter(pl.col("person_id") == 1)
    assert person1.select("start", "stop", "exposed").rows() == [(cohort["entry_age_days"][0], cohort["exit_age_days"][0], 1)]
    person2 = split.filter(pl.col("person_id") == 2)
    entry, exit_ = cohort["entry_age_days"][1], cohort["exit_age_days"][1]
    assert person2.select("start", "stop", "event", "exposed").rows() == [
        (entry, entry + 100, False, 0), (entry + 100, exit_, True, 1)]
    lagged = split_class_intervals(cohort, class_exposures, lag_days=10_000).filter(pl.col("person_id") == 2)
    assert lagged.select("start", "stop", "event", "exposed").rows() == [(entry, exit_, True, 0)]
    assert split.filter(pl.col("person_id") == 3)["exposed"].to_list() == [0]
