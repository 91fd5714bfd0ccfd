"""End to end through Snakemake with an outcome other than MS, on the demo's simulated registries: a diagnosis
extract (G20 records written here for a random subset of persons) and a drug proxy (N04 dispensings written here
as an extra prescription part). Neither depends on the simulator planting a second outcome."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import run_snakemake

pytestmark = pytest.mark.slow

STUDY_END = date(2023, 12, 31)
FAST_SCREEN = {"atc_levels": [2, 3], "lags_years": [0, 2]}


def eligible_persons(simulated: Path, n: int, seed: int) -> list[int]:
    """`n` random persons adult at study start who neither die nor emigrate (so every planted date is in follow-up)."""
    population = pl.read_parquet(simulated / "population.parquet").filter(
        pl.col("death_date").is_null() & pl.col("emigration_date").is_null() & pl.col("birth_year").is_between(1950, 1980)
    )
    ids = population["person_id"].unique().sort().to_numpy()
    return [int(i) for i in np.random.default_rng(seed).choice(ids, size=n, replace=False)]


def random_dates(rng: np.random.Generator, n: int) -> list[date]:
    """Dates from 2006 to 2021: after entry (2005-01-01 for persons born by 1980), leaving room for later records."""
    return [date(2006, 1, 1) + timedelta(days=int(d)) for d in rng.integers(0, 16 * 365, size=n)]


def write_config(workdir: Path, inputs: dict, outcome: dict) -> Path:
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump({"inputs": inputs, "study": {"outcome": outcome}, "screen": FAST_SCREEN}))
    return path


def test_dag_runs_with_an_outcome_from_a_diagnosis_extract(demo_run, tmp_path):
    simulated = demo_run / "simulated"
    persons = eligible_persons(simulated, 360, seed=14)
    cases, too_close, other_code = persons[:240], persons[240:300], persons[300:]
    rng = np.random.default_rng(18)
    first = dict(zip(persons, random_dates(rng, len(persons)), strict=True))
    gaps = rng.integers(30, 400, size=len(cases))
    lines = ["person_id,diagnosis_date,icd10_code"]
    for i, person in enumerate(cases):  # two G20 records at least 30 days apart (some written g20.0 or G20.9)
        code = ("G20", "g20.0", "G20.9")[i % 3]
        lines += [f"{person},{first[person]},{code}", f"{person},{first[person] + timedelta(days=int(gaps[i]))},G20"]
    for person in too_close:  # 29 days apart: never a case
        lines += [f"{person},{first[person]},G20", f"{person},{first[person] + timedelta(days=29)},G20"]
    for person in other_code:  # secondary parkinsonism, not G20
        lines += [f"{person},{first[person]},G21", f"{person},{first[person] + timedelta(days=100)},G21"]
    (tmp_path / "diagnoses.csv").write_text("\n".join(lines) + "\n")
    inputs = {
        "population": {"path": str(simulated / "population.parquet")},
        "prescriptions": {"path": str(simulated / "prescriptions")},
        "ms_registry": {"path": str(simulated / "ms_registry.parquet")},
        "diagnoses": {"path": str(tmp_path / "diagnoses.csv")},
    }
    outcome = {"source": "diagnoses", "codes": ["G20"], "min_records": 2, "min_days_apart": 30, "label": "parkinson"}
    run_snakemake(tmp_path, write_config(tmp_path, inputs, outcome))
    results = tmp_path / "results"

    validation = json.loads((results / "validation/report.json").read_text())["extracts"]["diagnoses"]
    assert validation["rows_read"] == validation["rows_kept"] == len(lines) - 1
    flow = json.loads((results / "cohort/flow.json").read_text())
    assert flow["outcome"] == {"source": "diagnoses", "label": "parkinson"}
    assert flow["events"] == flow["exit_reasons"]["outcome"] == len(cases)
    assert flow["events_by_outcome_source"] == {"diagnoses": len(cases)}
    cohort = pl.read_parquet(results / "cohort/cohort.parquet")
    events = cohort.filter("event")
    assert sorted(events["person_id"].to_list()) == sorted(cases)  # MS patients are no cases of this outcome
    assert all(exit_date == first[person] for person, exit_date in events.select("person_id", "exit_date").iter_rows())
    dwas = pl.read_parquet(results / "screen/dwas.parquet")
    assert dwas.filter(pl.col("status") == "ok").height > 20
    assert dwas.filter(pl.col("sex") == "all")["n_cases"].max() == len(cases)
    assert "parkinson cases (events)" in (results / "report/index.html").read_text()
    assert (results / "export/manifest.csv").is_file()


def test_dag_runs_with_a_drug_proxy_outcome_and_screens_no_proxy_class(demo_run, tmp_path):
    simulated = demo_run / "simulated"
    persons = eligible_persons(simulated, 300, seed=4)
    rng = np.random.default_rng(40)
    first = dict(zip(persons, random_dates(rng, len(persons)), strict=True))
    twice, once = persons[:200], persons[200:]
    rows = [(p, first[p], "N04BA02") for p in twice] + [(p, first[p] + timedelta(days=90), "N04BC05") for p in twice]
    rows += [(p, first[p], "N04BA02") for p in once]
    delivery = tmp_path / "prescriptions"
    delivery.mkdir()
    for part in sorted((simulated / "prescriptions").glob("*.parquet")):
        (delivery / part.name).symlink_to(part)
    schema = pl.read_parquet_schema(next(iter(sorted((simulated / "prescriptions").glob("*.parquet")))))
    planted = pl.DataFrame(rows, schema=["person_id", "dispense_date", "atc_code"], orient="row").with_columns(
        ddd=pl.lit(30.0), reimbursement_code=pl.lit(None, pl.String)
    )
    planted.select([pl.col(name).cast(dtype) for name, dtype in schema.items()]).write_parquet(delivery / "proxy_n04.parquet")
    inputs = {
        "population": {"path": str(simulated / "population.parquet")},
        "prescriptions": {"path": str(delivery)},
        "ms_registry": {"path": str(simulated / "ms_registry.parquet")},
    }
    run_snakemake(tmp_path, write_config(tmp_path, inputs, {"source": "drug_proxy", "atc_codes": ["N04"], "min_dispensings": 2}))
    results = tmp_path / "results"

    # the rule recomputed here from the validated dispensings: two or more N04 dispensings, dated at the first
    expected = dict(
        pl.scan_parquet(results / "validated/prescriptions/*.parquet")
        .filter(pl.col("atc_code").str.starts_with("N04"))
        .group_by("person_id")
        .agg(pl.col("dispense_date").min(), pl.len())
        .filter(pl.col("len") >= 2)
        .select("person_id", "dispense_date")
        .collect()
        .iter_rows()
    )
    assert set(twice) <= set(expected)
    cohort = pl.read_parquet(results / "cohort/cohort.parquet")
    for person, event, entry_date, exit_date in cohort.select("person_id", "event", "entry_date", "exit_date").iter_rows():
        proxy_date = expected.get(person)
        assert proxy_date is None or proxy_date > entry_date, person  # prevalent proxy users are excluded
        assert event == (proxy_date is not None and proxy_date <= exit_date), person
        assert not event or exit_date == proxy_date
    flow = json.loads((results / "cohort/flow.json").read_text())
    assert flow["events"] >= len(twice) and flow["events_by_outcome_source"] == {"drug_proxy": flow["events"]}

    for level in (2, 3):  # no class and no parent class counts the proxy drugs
        classes = pl.read_parquet(results / f"exposure/atc_level_{level}.parquet")["atc_code"]
        assert not classes.str.starts_with("N04").any(), level
    screened = pl.read_parquet(results / "screen/dwas.parquet")
    assert not screened["atc_code"].str.starts_with("N04").any()
    assert screened.filter(pl.col("status") == "ok").height > 20
    assert pl.read_parquet(results / "exposure/atc_level_2.parquet")["atc_code"].str.starts_with("N").any()  # the rest of N is still screened


def test_the_parkinson_demo_study_runs_on_the_simulators_second_outcome(tmp_path):
    """config/parkinson_demo.yaml on 8,000 simulated persons with the planted Parkinson-like disease: the whole DAG
    runs, its events are the planted diagnoses that meet the rule, and the planted protective substances sit
    below the planted harmful ones at level 5 (lag 0)."""
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"simulate": {"n_persons": 8000}, "screen": {"atc_levels": [5], **{
        k: v for k, v in FAST_SCREEN.items() if k != "atc_levels"}}}))  # fmt: skip
    run_snakemake(tmp_path, Path(__file__).resolve().parents[1] / "config/parkinson_demo.yaml", small)
    results = tmp_path / "results"
    truth = json.loads((results / "simulated/ground_truth.json").read_text())["parkinson"]
    flow = json.loads((results / "cohort/flow.json").read_text())
    assert flow["outcome"] == {"source": "diagnoses", "label": "parkinson"} and flow["check"]
    assert flow["events"] > 20
    # The exact fits: the released table hides most rows of so small an outcome (issue 15's release).
    dwas = pl.read_parquet(results / "screen/fits.parquet").filter(
        (pl.col("lag_years") == 0) & (pl.col("sex") == "all") & pl.col("log_hr").is_finite()
    )
    log_hr = dict(zip(dwas["atc_code"], dwas["log_hr"], strict=True))
    protective = [log_hr[c] for c in truth["roles"]["causal_protective"] if c in log_hr]
    harmful = [log_hr[c] for c in truth["roles"]["causal_harmful"] if c in log_hr]
    assert protective and harmful and np.mean(protective) < np.mean(harmful)
    assert (results / "report/index.html").read_text(encoding="utf-8").count("parkinson") >= 1
