"""Cohort flow checked against a hand-computed tiny example."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from repurpose.config import validate_config
from repurpose.registry.cohort import build_cohort
from repurpose.registry.outcome import ms_registry_outcomes

D = date.fromisoformat
# person_id, sex, birth_year, birth_month, death_date, emigration_date, onset_date, diagnosis_date; comment = expected fate
PERSONS = [
    (1, "F", 1980, 5, None, None, None, None),                      # followed 2005-01-01 .. study end
    (2, "M", 1995, None, None, None, "2018-03-01", "2019-01-01"),   # entry at 18 (born 1 July 1995), MS onset
    (3, "F", 2010, 1, None, None, None, None),                      # 18 only after study end
    (4, "M", 1950, 1, "2004-06-01", None, None, None),              # died before entry
    (5, "F", 1960, 2, None, "2003-01-01", None, None),              # emigrated before entry
    (6, "F", 1970, 3, None, None, "2003-05-01", "2006-01-01"),      # prevalent MS
    (7, "F", 1985, 6, None, None, None, "2015-09-09"),              # MS, onset missing -> diagnosis
    (8, "M", 1975, 1, "2012-04-04", None, None, None),              # dies in follow-up
    (9, "F", 1982, 8, None, "2019-02-02", None, None),              # emigrates in follow-up
    (10, "F", 1978, 4, None, None, "2024-05-01", "2025-01-01"),     # onset after study end: no event
    (11, "M", 1990, 10, None, None, "2005-01-01", "2006-01-01"),    # onset on the entry day: prevalent
]


def frames():
    rows = list(zip(*PERSONS, strict=True))
    population = pl.DataFrame({
        "person_id": rows[0], "sex": rows[1], "birth_year": rows[2], "birth_month": rows[3],
        "death_date": [D(d) if d else None for d in rows[4]], "emigration_date": [D(d) if d else None for d in rows[5]],
        "education": [1] * len(PERSONS),
    }, schema_overrides={"birth_year": pl.Int32, "birth_month": pl.Int32, "education": pl.Int32})
    ms = pl.DataFrame({
        "person_id": [p[0] for p in PERSONS if p[7]],
        "onset_date": [D(p[6]) if p[6] else None for p in PERSONS if p[7]],
        "diagnosis_date": [D(p[7]) for p in PERSONS if p[7]],
    })
    return population.lazy(), ms.lazy()


def run_build(study_settings, population=None, ms=None):
    """build_cohort with the MS registry outcome of `study_settings` (the default definition)."""
    default_population, default_ms = frames()
    outcomes = ms_registry_outcomes(default_ms if ms is None else ms, study_settings["outcome"])
    return build_cohort(default_population if population is None else population, outcomes, study_settings)


def study(**overrides):
    config = validate_config({"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}})
    return {**config["study"], **overrides}


def test_flow_matches_hand_count():
    cohort, flow = run_build(study())
    assert flow["persons_in_population"] == 11
    assert flow["excluded"] == {"outcome_status_unknown": 0, "not_of_age_during_study": 1, "died_before_entry": 1,
                                "emigrated_before_entry": 1, "prevalent_outcome_at_entry": 2}
    assert flow["persons_in_cohort"] == 6 and flow["check"]
    assert cohort["person_id"].to_list() == [1, 2, 7, 8, 9, 10]
    assert flow["events"] == 2
    assert flow["events_by_outcome_source"] == {"onset": 1, "diagnosis": 1}
    assert flow["exit_reasons"] == {"death": 1, "emigration": 1, "outcome": 2, "study_end": 2}
    spans = {1: ("2005-01-01", "2023-12-31"), 2: ("2013-07-01", "2018-03-01"), 7: ("2005-01-01", "2015-09-09"),
             8: ("2005-01-01", "2012-04-04"), 9: ("2005-01-01", "2019-02-02"), 10: ("2005-01-01", "2023-12-31")}
    expected_days = sum((D(b) - D(a)).days for a, b in spans.values())
    assert flow["person_years"] == pytest.approx(expected_days / 365.25, abs=0.01)


def test_ages_are_exact_days_from_birth_date():
    cohort, _ = run_build(study())
    row = cohort.filter(pl.col("person_id") == 2).row(0, named=True)
    assert row["birth_date"] == D("1995-07-01")  # month missing -> 1 July
    assert row["entry_date"] == D("2013-07-01")  # 18th birthday
    assert row["entry_age_days"] == (D("2013-07-01") - D("1995-07-01")).days
    assert row["exit_age_days"] == (D("2018-03-01") - D("1995-07-01")).days
    assert row["event"] and row["exit_reason"] == "outcome" and row["outcome_source"] == "onset"
    first = cohort.filter(pl.col("person_id") == 1).row(0, named=True)
    assert first["birth_date"] == D("1980-05-15") and first["entry_age_days"] == (D("2005-01-01") - D("1980-05-15")).days


def test_outcome_diagnosis_and_max_age():
    cohort, flow = run_build(study(outcome="diagnosis", max_age=40))
    person2 = cohort.filter(pl.col("person_id") == 2).row(0, named=True)
    assert person2["exit_date"] == D("2019-01-01") and person2["event"]
    person1 = cohort.filter(pl.col("person_id") == 1).row(0, named=True)
    assert person1["exit_date"] == D("2020-05-15") and person1["exit_reason"] == "max_age"
    assert flow["events_by_outcome_source"] == {"diagnosis": 2}
