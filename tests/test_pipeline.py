"""End to end through Snakemake: the demo DAG, and the same registries as registry-native CSV extracts."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from conftest import DEMO_PERSONS as N_PERSONS
from conftest import run_snakemake

pytestmark = pytest.mark.slow


def test_demo_dag_writes_every_output(demo_run):
    report = json.loads((demo_run / "validation/report.json").read_text())
    truth = json.loads((demo_run / "simulated/ground_truth.json").read_text())
    assert report["extracts"]["population"]["rows_read"] == N_PERSONS
    rejected = sum(entry["rows_rejected"] for entry in report["extracts"].values())
    assert rejected == sum(truth["corrupt_rows"].values()) > 0  # every injected bad row, and nothing else
    flow = json.loads((demo_run / "cohort/flow.json").read_text())
    assert flow["check"] and flow["events"] > 50
    dwas = pl.read_parquet(demo_run / "screen/dwas.parquet")
    assert set(dwas["atc_level"].unique()) == {2, 3, 4, 5}
    assert set(dwas["lag_years"].unique()) == {0.0, 2.0, 5.0, 10.0}
    assert set(dwas["sex"].unique()) == {"all", "F", "M"}
    fitted = dwas.filter(pl.col("status") == "ok")
    assert fitted.height > 100 and fitted["q_value"].is_not_null().all()
    assert (dwas.filter(pl.col("status") == "skipped")["reason"].is_not_null()).all()


def test_exported_screen_has_no_small_counts_and_no_person_ids(demo_run):
    csv = pl.read_csv(demo_run / "screen/dwas.csv", infer_schema=False)
    assert "person_id" not in csv.columns
    for column in ("n_persons", "n_exposed", "n_cases", "n_exposed_cases"):
        values = csv[column].to_list()
        assert "<5" in values or column in ("n_persons", "n_cases")
        numeric = [int(v) for v in values if v != "<5"]
        assert all(v == 0 or v >= 5 for v in numeric), column


def test_native_latin1_semicolon_extracts_give_the_same_results(demo_run, tmp_path):
    from repurpose.simulate import write_native_extracts

    native = write_native_extracts(demo_run / "simulated", tmp_path / "native")
    study = tmp_path / "my_study.yaml"
    study.write_text(yaml.safe_dump({"inputs": native["inputs"]}, allow_unicode=True))
    assert "løpenr" in (tmp_path / "native" / "population.csv").read_bytes().decode("latin-1")
    run_snakemake(tmp_path, study)
    results = tmp_path / "results"
    assert not (results / "simulated").exists()  # real-extract runs never simulate
    ours = json.loads((results / "validation/report.json").read_text())
    theirs = json.loads((demo_run / "validation/report.json").read_text())
    for name in ("population", "prescriptions", "ms_registry"):
        assert ours["extracts"][name]["rejected_by_reason"] == theirs["extracts"][name]["rejected_by_reason"]
        assert ours["extracts"][name]["rows_kept"] == theirs["extracts"][name]["rows_kept"]
    assert json.loads((results / "cohort/flow.json").read_text()) == json.loads((demo_run / "cohort/flow.json").read_text())
    key = ["atc_level", "lag_years", "sex", "atc_code"]
    native_dwas = pl.read_parquet(results / "screen/dwas.parquet").sort(key)
    demo_dwas = pl.read_parquet(demo_run / "screen/dwas.parquet").sort(key)
    assert native_dwas.select(key).equals(demo_dwas.select(key))
    assert native_dwas["log_hr"].fill_nan(0).to_list() == pytest.approx(demo_dwas["log_hr"].fill_nan(0).to_list(), abs=1e-12)


def test_a_study_with_other_lags_runs_end_to_end(demo_run, tmp_path):
    """Lags [0, 1, 3] (not the demo's): every stage takes its lags from the config, none from a fixed list."""
    simulated = demo_run / "simulated"
    study = tmp_path / "lags.yaml"
    study.write_text(yaml.safe_dump({
        "inputs": {"population": {"path": str(simulated / "population.parquet")},
                   "prescriptions": {"path": str(simulated / "prescriptions")},
                   "ms_registry": {"path": str(simulated / "ms_registry.parquet")}},
        "screen": {"lags_years": [0, 1, 3], "atc_levels": [3, 5], "sex_strata": ["all"]},
        "candidates": {"main_lag_years": 1},
    }))  # fmt: skip
    run_snakemake(tmp_path, study)
    results = tmp_path / "results"
    dwas = pl.read_parquet(results / "screen/dwas.parquet")
    assert set(dwas["lag_years"].unique()) == {0.0, 1.0, 3.0}
    drugs = pl.read_csv(results / "candidates/drug_ranking.csv", infer_schema=False)
    assert {"hr_lag0", "hr_lag1", "hr_lag3"} <= set(drugs.columns)
    assert not {"hr_lag2", "hr_lag5", "hr_lag10"} & set(drugs.columns)
    html = (results / "report/index.html").read_text(encoding="utf-8")
    assert "hr_lag10" not in html
    if drugs.height:
        assert "hr_lag3" in html  # the report's drug table follows the lags too
    assert (results / "export/manifest.csv").is_file()
