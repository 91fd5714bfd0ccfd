"""Exposure windows on a hand-made example: k-th dispensing, class levels, dose crossings, exit cut-off."""

from __future__ import annotations

import shutil
from datetime import date, timedelta

import polars as pl
import pytest
from split_intervals import split_class_intervals

from repurpose.config import validate_config
from repurpose.dwas.exposure import build_exposures
from repurpose.schemas import dose_column

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
                              "screen": {"atc_levels": [level], **screen}, "resources": {"tmpdir": str(tmp_path / "tmp")}})
    out = tmp_path / f"exposure_{level}.parquet"
    build_exposures(config, prescriptions=tmp_path / "rx", cohort=cohort_path, exposures=[out])
    table = pl.read_parquet(out)
    assert table.rows() == table.sort("atc_code", "person_id").rows(), "written in (atc_code, person_id) order"
    return table


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


def reference_exposures(cohort: pl.DataFrame, dispensings: pl.DataFrame, level: int, k: int, cuts: list[float]) -> pl.DataFrame:
    """The exposure table by definition, in Polars: every (person, class) dispensing history in date order."""
    length = {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}[level]
    rows = (
        dispensings.join(cohort.with_row_index("cohort_row").select("person_id", "cohort_row", "birth_date", "exit_date"), on="person_id")
        .filter(pl.col("dispense_date") <= pl.col("exit_date"))
        .with_columns(atc_code=pl.col("atc_code").str.slice(0, length), ddd=pl.col("ddd").fill_null(0.0))
        .sort("person_id", "atc_code", "dispense_date")
        .with_columns(
            number=pl.int_range(1, pl.len() + 1).over("person_id", "atc_code"),
            cumulative=pl.col("ddd").cum_sum().over("person_id", "atc_code"),
        )
    )
    days = lambda column: (column - pl.col("birth_date")).dt.total_days().cast(pl.Int32)  # noqa: E731
    return (
        rows.group_by("person_id", "atc_code")
        .agg(
            pl.col("birth_date").first(),
            pl.col("cohort_row").first().cast(pl.Int32),
            exposure_start_date=pl.col("dispense_date").filter(pl.col("number") == k).first(),
            first_dispense_date=pl.col("dispense_date").min(),
            n_dispensings=pl.len().cast(pl.Int32),
            total_ddd=pl.col("ddd").sum(),
            **{f"reached_{i}": pl.col("dispense_date").filter(pl.col("cumulative") >= cut).min() for i, cut in enumerate(cuts)},
        )
        .filter(pl.col("exposure_start_date").is_not_null())
        .select(
            "person_id", "cohort_row", "atc_code", "exposure_start_date",
            exposure_start_age_days=days(pl.col("exposure_start_date")),
            first_dispense_age_days=days(pl.col("first_dispense_date")),
            n_dispensings="n_dispensings", total_ddd="total_ddd",
            **{dose_column(cut): days(pl.col(f"reached_{i}")) for i, cut in enumerate(cuts)},
        )
        .sort("atc_code", "person_id")
    )


def random_registry(tmp_path, seed: int, ddd_values: list[float], n_persons: int = 400, n_rows: int = 12_000):
    """Random dispensing histories of 8 substances in 4 level-2 classes (5% of DDD missing), written as yearly parts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    birth = [D("1950-01-01") + (D("1990-01-01") - D("1950-01-01")) * float(u) for u in rng.random(n_persons)]
    exit_dates = [D("2008-01-01") + (D("2023-12-31") - D("2008-01-01")) * float(u) for u in rng.random(n_persons)]
    cohort = pl.DataFrame({"person_id": np.arange(1, n_persons + 1) * 3, "birth_date": birth, "exit_date": exit_dates,
                           "entry_date": [D("2005-01-01")] * n_persons, "entry_age_days": 0, "exit_age_days": 1,
                           "event": False})
    substances = ["N06AB06", "N06AB10", "N06AX11", "N05BA01", "R03AC02", "R03AC03", "R03BA02", "C10AA01"]
    days = rng.integers(0, 20 * 365, n_rows)
    dispensings = pl.DataFrame({
        "person_id": rng.integers(1, n_persons + 1, n_rows) * 3,
        "dispense_date": [D("2004-01-01") + (D("2005-01-01") - D("2004-01-01")) * (int(d) / 365) for d in days],
        "atc_code": rng.choice(substances, n_rows),
        "ddd": np.where(rng.random(n_rows) < 0.05, np.nan, rng.choice(ddd_values, n_rows)),
    }).with_columns(pl.col("ddd").fill_nan(None), reimbursement_code=pl.lit(None, pl.String),
                    dispense_year=pl.col("dispense_date").dt.year())
    dispensings.write_parquet(tmp_path / "rx", partition_by="dispense_year")
    cohort_path = tmp_path / "cohort.parquet"
    cohort.write_parquet(cohort_path)
    return cohort, dispensings, cohort_path


def assert_equal_to_the_definition(ours: pl.DataFrame, expected: pl.DataFrame, label: object) -> None:
    import numpy as np

    assert ours.height == expected.height > 0, label
    joined = ours.join(expected, on=["person_id", "atc_code"], suffix="_ref")
    assert joined.height == ours.height, label
    for column in [c for c in expected.columns if c not in ("person_id", "atc_code")]:
        if column == "total_ddd":
            np.testing.assert_allclose(joined[column].to_numpy(), joined[f"{column}_ref"].to_numpy(), rtol=1e-12)
        else:
            assert joined[column].to_list() == joined[f"{column}_ref"].to_list(), (label, column)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_all_levels_equal_the_definition_on_random_histories(tmp_path, k):
    """Classes built from per-substance milestones (and the mixed-substance dose histories) equal the
    definition: the k-th dispensing and the cumulative DDD of the class's own dispensing history."""
    cohort, dispensings, cohort_path = random_registry(tmp_path, k, [7.5, 10.0, 28.0, 30.0, 90.0])
    cuts = [40.0, 100.5, 365.0]
    for level in (1, 2, 3, 4, 5):
        ours = exposures(tmp_path, cohort_path, level, min_dispensings=k, dose_cutpoints_ddd=cuts).drop("atc_level")
        assert_equal_to_the_definition(ours, reference_exposures(cohort, dispensings, level, k, cuts), level)


def test_doses_without_a_short_binary_form_in_many_buckets_equal_the_definition(tmp_path, monkeypatch):
    """DDDs such as 0.1 and 1/3 have remainders in the integer running sum: crossings in doubt are summed in
    date order, as the definition (Polars' cumulative sum) does. One bucket per class file, two at a time, so
    the tables are also put together from many buckets in order."""
    import repurpose.dwas.exposure as exposure_module

    monkeypatch.setattr(exposure_module, "BYTES_PER_BUCKET_ROW", 10**15)
    cohort, dispensings, cohort_path = random_registry(tmp_path, 7, [0.1, 1 / 3, 6.6667, 33.3, 100 / 3, 10.0])
    cuts = [1.0, 3.0, 100.0]
    for level in (2, 4, 5):
        ours = exposures(tmp_path, cohort_path, level, min_dispensings=2, dose_cutpoints_ddd=cuts).drop("atc_level")
        assert_equal_to_the_definition(ours, reference_exposures(cohort, dispensings, level, 2, cuts), level)


def test_ties_on_a_date_and_cut_points_reached_exactly(tmp_path):
    """Dispensings sharing a date count one by one for k and together for the dose; a cut reached exactly is
    reached (>=); the k-th dispensing can fall on a dose crossing's date; long histories cross late."""
    cohort = COHORT.filter(pl.col("person_id") != 2)
    cohort_path = tmp_path / "cohort.parquet"
    cohort.write_parquet(cohort_path)
    long_history = [(3, str(D("2006-01-01") + (D("2006-01-31") - D("2006-01-01")) * i), "C10AA01", 10.0) for i in range(36)]
    rows = [
        # person 1, sertraline: two on one day reach 100 DDD exactly, with the 2nd dispensing; 365 exactly a year later
        (1, "2010-01-01", "N06AB06", 50.0), (1, "2010-01-01", "N06AB06", 50.0), (1, "2011-01-01", "N06AB06", 265.0),
        # person 1: salbutamol and terbutaline on one day: at level 4 the class's 2nd dispensing and exactly 100 DDD
        (1, "2012-03-01", "R03AC02", 60.0), (1, "2012-03-01", "R03AC03", 40.0), (1, "2015-03-01", "R03AC03", None),
        # person 3: 36 dispensings of 10 DDD a month apart (360), then two on one day: 365 crossed on that day
        *long_history, (3, "2010-06-01", "C10AA01", 2.5), (3, "2010-06-01", "C10AA01", 2.5), (3, "2011-01-01", "C10AA01", 9.0),
    ]
    frame = pl.DataFrame(rows, schema=["person_id", "dispense_date", "atc_code", "ddd"], orient="row").with_columns(
        pl.col("dispense_date").str.to_date(), reimbursement_code=pl.lit(None, pl.String))
    frame.with_columns(dispense_year=pl.col("dispense_date").dt.year()).write_parquet(tmp_path / "rx", partition_by="dispense_year")
    age = lambda person, day: (D(day) - BIRTH[person]).days  # noqa: E731
    level5 = exposures(tmp_path, cohort_path, 5).drop("atc_level")
    sertraline = level5.filter(pl.col("atc_code") == "N06AB06").row(0, named=True)
    assert sertraline["exposure_start_date"] == D("2010-01-01")
    assert (sertraline[dose_column(100)], sertraline[dose_column(365)]) == (age(1, "2010-01-01"), age(1, "2011-01-01"))
    statin = level5.filter(pl.col("atc_code") == "C10AA01").row(0, named=True)
    assert (statin["n_dispensings"], statin["total_ddd"]) == (39, 374.0)
    assert statin[dose_column(100)] == age(3, str(D("2006-01-01") + (D("2006-01-31") - D("2006-01-01")) * 9))
    assert statin[dose_column(365)] == age(3, "2010-06-01")
    level4 = exposures(tmp_path, cohort_path, 4).drop("atc_level")
    adrenergic = level4.filter(pl.col("atc_code") == "R03AC").row(0, named=True)
    assert (adrenergic["exposure_start_date"], adrenergic["n_dispensings"], adrenergic["total_ddd"]) == (D("2012-03-01"), 3, 100.0)
    assert (adrenergic[dose_column(100)], adrenergic[dose_column(365)]) == (age(1, "2012-03-01"), None)
    assert "R03AC02" not in level5["atc_code"]  # one dispensing of each substance
    for level, ours in ((5, level5), (4, level4)):
        expected = reference_exposures(cohort, frame, level, 2, [100.0, 365.0])
        assert ours.sort("atc_code", "person_id").rows() == expected.rows(), level


def test_first_crossings_equal_running_sums_in_date_order():
    """The integer running sum with its runs in doubt summed in order equals a plain running sum from zero per
    run, for DDDs with and without remainders (some runs end within half a unit per row of a cut: in doubt)."""
    import numpy as np

    from repurpose.dwas.exposure import DDD_SCALE_BITS, NOT_REACHED, _first_crossings

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, 2000)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    cuts = [1.0, 3.0, 100.0]
    for values in ([0.1, 1 / 3, 6.6667, 33.3, 100 / 3, 10.0], [0.5, 7.25, 28.0]):
        ddd = rng.choice(values, int(lengths.sum()))
        found = _first_crossings(ddd, starts, lengths, cuts)
        for cut, rows in zip(cuts, found, strict=True):
            for run, (start, length) in enumerate(zip(starts, lengths, strict=True)):
                reached = np.flatnonzero(np.cumsum(ddd[start : start + length]) >= cut)
                assert rows[run] == (start + reached[0] if len(reached) else NOT_REACHED), (values, cut, run)
    units = np.cumsum(np.rint(ddd * 2.0**DDD_SCALE_BITS))  # the last values have no remainders: nothing in doubt
    assert np.all(units == np.cumsum(ddd) * 2.0**DDD_SCALE_BITS)
    with pytest.raises(ValueError, match="negative"):
        _first_crossings(np.array([1.0, -1.0]), np.array([0]), np.array([2]), cuts)


def test_healthcare_use_counts_the_level4_classes_of_the_year_up_to_entry(tmp_path):
    """The exposure stage's health-care-use table equals the definition (Polars) on random histories with entry
    dates spread over the years: per cohort member the distinct ATC level-4 classes dispensed in the 365 days up
    to entry, a dispensing on the entry date counted and one 365 days before it not; 0 for nobody's dispensings.
    The table is in cohort order with each person's cohort_row."""
    import numpy as np

    cohort, dispensings, cohort_path = random_registry(tmp_path, 5, [10.0])
    rng = np.random.default_rng(6)
    entry = [D("2004-06-01") + (exit_date - D("2004-06-01")) * float(u) for exit_date, u in zip(cohort["exit_date"], rng.random(cohort.height), strict=True)]
    cohort = cohort.with_columns(entry_date=pl.Series(entry)).sample(fraction=1.0, shuffle=True, seed=2)
    first = cohort.row(0, named=True)
    edge = pl.DataFrame({  # the first cohort row: on the entry date (N05B), 364 days before (R03B), 365 days before (C10A)
        "person_id": [first["person_id"]] * 3, "atc_code": ["N05BA01", "R03BA02", "C10AA01"],
        "dispense_date": [first["entry_date"] - timedelta(days=d) for d in (0, 364, 365)], "ddd": [1.0] * 3,
    })  # fmt: skip
    edge = edge.with_columns(reimbursement_code=pl.lit(None, pl.String), dispense_year=pl.col("dispense_date").dt.year())
    dispensings = pl.concat([dispensings.filter(pl.col("person_id") != first["person_id"]), edge], how="diagonal_relaxed")
    shutil.rmtree(tmp_path / "rx")
    dispensings.write_parquet(tmp_path / "rx", partition_by="dispense_year")
    cohort.write_parquet(cohort_path)
    config = validate_config({"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")},
                              "screen": {"atc_levels": [5]}, "resources": {"tmpdir": str(tmp_path / "tmp")}})  # fmt: skip
    hcu_path = tmp_path / "healthcare_use.parquet"
    build_exposures(config, prescriptions=tmp_path / "rx", cohort=cohort_path, exposures=[tmp_path / "e5.parquet"], healthcare_use=hcu_path)
    ours = pl.read_parquet(hcu_path)
    window = (pl.col("dispense_date") <= pl.col("entry_date")) & (pl.col("dispense_date") > pl.col("entry_date") - pl.duration(days=365))
    counted = (
        dispensings.join(cohort.select("person_id", "entry_date"), on="person_id").filter(window)
        .group_by("person_id").agg(n=pl.col("atc_code").str.slice(0, 5).n_unique())
    )  # fmt: skip
    expected = cohort.with_row_index("cohort_row").join(counted, on="person_id", how="left", maintain_order="left").select(
        "person_id", pl.col("cohort_row").cast(pl.Int32), n_classes_year_before_entry=pl.col("n").fill_null(0).cast(pl.Int32))
    assert ours.equals(expected)
    assert ours["n_classes_year_before_entry"].max() >= 3 and (ours["n_classes_year_before_entry"] == 0).any()
    assert ours.row(0, named=True)["n_classes_year_before_entry"] == 2  # N05BA and R03BA, not C10AA
