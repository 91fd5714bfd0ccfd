"""Eligibility, time zero and the first therapy of the emulated trial on hand-made registry rows."""

from __future__ import annotations

from datetime import date

import polars as pl

from repurpose.config import validate_config
from repurpose.layout import TRIAL_EMULATION_TABLES
from repurpose.trial_emulation import run_trial_emulation
from repurpose.trial_emulation.cohort import eligible_cohort, grace_covariates
from repurpose.trial_emulation.protocol import TrialProtocol, target_trial_table

INPUTS = {"population": {"path": "p"}, "prescriptions": {"path": "p"}, "ms_registry": {"path": "m"}}


def protocol(**trial) -> TrialProtocol:
    return TrialProtocol.from_config(validate_config({"inputs": INPUTS, "trial_emulation": {"interval_days": 30, **trial}}))


D = date(2015, 3, 1)
REGISTRY = pl.DataFrame({
    "person_id": [1, 2, 3, 4, 5, 6, 7],
    "onset_date": [date(2014, 3, 1), None, None, None, None, None, None],
    "diagnosis_date": [D, D, D, D, D, date(2003, 1, 1), D],
    "ms_course_at_diagnosis": ["RR", "CIS", "PP", "RR", "RR", "RR", "RR"],
    "clinic_id": ["A"] * 7, "country": ["NO"] * 7,
})  # fmt: skip
POPULATION = pl.DataFrame({
    "person_id": [1, 2, 3, 4, 5, 6, 7], "sex": ["F", "M", "F", "F", "F", "F", "F"],
    "birth_year": [1985, 1990, 1985, 1985, 1940, 1985, 1985], "birth_month": [3, 1, 1, 1, 1, 1, 1],
    "death_date": [None, date(2016, 3, 1), None, None, None, None, None], "emigration_date": [None] * 7,
})  # fmt: skip
TREATMENTS = pl.DataFrame({
    "person_id": [1, 1, 2, 4, 7], "treatment_atc_code": ["l04aa23 ", "L03AB07", "L04AX07", "L03AB07", "L04AA27"],
    "start_date": [date(2015, 4, 1), date(2016, 1, 1), date(2015, 3, 1), date(2015, 1, 1), date(2015, 5, 1)],
})  # fmt: skip
EDSS = pl.DataFrame({
    "person_id": [1, 1, 2, 4, 5, 6, 7, 7],
    "visit_date": [date(2014, 3, 1), date(2015, 3, 1), date(2015, 2, 1), D, D, date(2003, 1, 1), date(2014, 1, 1), date(2015, 3, 20)],
    "edss": [1.0, 2.0, 1.5, 2.0, 3.0, 2.0, 1.0, 2.5],
})  # fmt: skip
RELAPSES = pl.DataFrame({"person_id": [1, 1, 1], "relapse_date": [date(2013, 6, 1), date(2014, 6, 1), date(2015, 4, 15)]})


def cohort(p: TrialProtocol) -> tuple[pl.DataFrame, list]:
    return eligible_cohort(p, registry=REGISTRY, population=POPULATION, treatments=TREATMENTS, edss=EDSS, relapses=RELAPSES)


def test_eligibility_flow_and_baseline_by_hand():
    baseline, flow = cohort(protocol())
    # 3: PP; 6: diagnosed before the window; 5: aged 75; 4: a therapy before diagnosis; 7: no EDSS in the year up
    # to diagnosis (the 2014 visit is more than 365 days before)
    assert baseline["person_id"].to_list() == [1, 2]
    assert [n for _, n in flow] == [7, 6, 5, 5, 4, 4, 3, 2]
    one = baseline.row(0, named=True)
    assert one["time_zero"] == D and one["edss"] == 2.0 and one["relapses_1y"] == 1 and one["relapses_2y"] == 2
    assert one["first_start_day"] == 31 and one["first_class"] == "high_efficacy"  # natalizumab, lower case, padded
    assert one["followup_days"] == (date(2024, 1, 1) - D).days and one["death_day"] is None  # to study end
    assert abs(one["age_years"] - (D - date(1985, 3, 15)).days / 365.25) < 1e-9 and abs(one["disease_duration_years"] - 1.0) < 0.01
    two = baseline.row(1, named=True)
    assert two["first_start_day"] == 0 and two["first_class"] == "moderate"  # a start on the diagnosis day counts
    assert two["followup_days"] == 366 and two["death_day"] == 366 and two["female"] == 0.0


def test_fingolimod_counts_as_high_efficacy_only_when_configured():
    on = protocol(fingolimod_is_high_efficacy=True, baseline_edss_window_days=500)
    baseline, _ = cohort(on)
    assert baseline.filter(pl.col("person_id") == 7)["first_class"].item() == "high_efficacy"
    baseline, _ = cohort(protocol(baseline_edss_window_days=500))
    assert baseline.filter(pl.col("person_id") == 7)["first_class"].item() == "moderate"


def test_time_zero_at_the_first_treatment_decision_visit():
    baseline, _ = cohort(protocol(time_zero="first_treatment_decision"))
    # person 7's first visit on or after diagnosis is 2015-03-20: time zero there, the baseline EDSS that visit's
    seven = baseline.filter(pl.col("person_id") == 7).row(0, named=True)
    assert seven["time_zero"] == date(2015, 3, 20) and seven["edss"] == 2.5 and seven["first_start_day"] == 42
    assert 2 not in baseline["person_id"].to_list()  # the visit before diagnosis is no treatment decision


def test_grace_covariates_at_each_interval_start():
    p = protocol()
    baseline, _ = cohort(p)
    grid = grace_covariates(baseline, relapses=RELAPSES, edss=EDSS, n_intervals=p.n_grace_intervals, interval_days=p.interval_days)
    one = grid.filter(pl.col("person_id") == 1)
    # day 60 (2015-04-30) adds the 2015-04-15 relapse; day 120 (2015-06-29) drops 2014-06-01 from the 12 months
    # and 2013-06-01 from the 24 months
    assert one["relapses_12m"].to_list() == [1, 1, 2, 2, 1, 1]
    assert one["relapses_24m"].to_list() == [2, 2, 3, 3, 2, 2]
    assert one["edss_latest"].to_list() == [2.0] * 6


def test_the_target_trial_table_echoes_the_protocol():
    table = target_trial_table(protocol(grace_days=90))
    assert table["component"].to_list()[:4] == ["Eligibility", "Treatment strategies", "Assignment", "Time zero"]
    assert "day 90 " in table.filter(pl.col("component") == "Grace period")["emulation"].item()


def test_an_emulation_without_a_high_efficacy_start_writes_why_and_does_not_fail(tmp_path):
    paths = {}
    frames = {"population": POPULATION.with_columns(pl.col("birth_month").cast(pl.Int8)), "ms_registry": REGISTRY,
              "ms_treatments": TREATMENTS.filter(pl.col("person_id") != 1), "ms_relapses": RELAPSES, "ms_edss": EDSS}  # fmt: skip
    for name, frame in frames.items():
        paths[name] = str(tmp_path / f"{name}.parquet")
        frame.write_parquet(paths[name])
    outputs = {f"{n}_csv" if n in ("estimates", "positivity") else n: str(tmp_path / f"{n}.csv") for n in TRIAL_EMULATION_TABLES}
    config = validate_config({"inputs": INPUTS, "trial_emulation": {"bootstrap_replicates": 2}})
    result = run_trial_emulation(config, **paths, cohort=str(tmp_path / "cohort.parquet"), html=str(tmp_path / "page.html"), **outputs)
    assert result["n_eligible"] == 0
    assert pl.read_csv(tmp_path / "estimates.csv")["status"][0].startswith("not estimable: no eligible person started each strategy")
    assert pl.read_csv(tmp_path / "flow.csv")["step"][0] == "MS registry patients with a diagnosis date"
    assert "The target trial and its emulation" in (tmp_path / "page.html").read_text()
