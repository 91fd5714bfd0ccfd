"""The persistence rule joins the DAG only when the MS registry's treatment table is configured."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from repurpose.layout import WORKFLOW_SNAKEFILE
from repurpose.persistence import run_persistence
from repurpose.stages import rerun_settings
from repurpose.study_config import load_config

SCHEMA = WORKFLOW_SNAKEFILE.parent / "src" / "repurpose" / "data" / "config.schema.yaml"


def _dry_run(directory, *configfiles):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(WORKFLOW_SNAKEFILE), "-n", "--directory", str(directory)]
    for configfile in configfiles:
        command += ["--configfile", str(configfile)]
    return subprocess.run(command, capture_output=True, text=True)


def test_a_study_without_a_treatment_table_has_no_persistence_job(tmp_path):
    demo = _dry_run(tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "rule persistence:" in demo.stdout  # the demo reads the simulated treatment table
    plain = tmp_path / "no_clinical.yaml"
    plain.write_text(yaml.safe_dump({"simulate": {"clinical": {"enabled": False}}}))
    result = _dry_run(tmp_path, plain)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule export:" in result.stdout and "rule persistence:" not in result.stdout


def test_the_rule_reruns_on_persistence_settings_only():
    config = load_config(WORKFLOW_SNAKEFILE.parent / "config" / "config.yaml")
    settings = rerun_settings(run_persistence, config)
    assert set(settings) == {"persistence", "study.end", "disclosure"}
    assert settings["persistence"]["grace_days"] == 60


def test_the_dag_runs_the_study_when_treatments_are_configured(tmp_path):
    inputs = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))["properties"]["inputs"]["properties"]
    if "ms_treatments" not in inputs:
        pytest.skip("inputs.ms_treatments is not in the config schema yet (the clinical-contract branch adds it)")
    extra = tmp_path / "clinical.yaml"
    extra.write_text(yaml.safe_dump({"inputs": {
        "ms_treatments": {"path": "results/simulated/ms_treatments.parquet"},
        "ms_relapses": {"path": "results/simulated/ms_relapses.parquet"},
        "ms_edss": {"path": "results/simulated/ms_edss.parquet"},
    }}))  # fmt: skip
    result = _dry_run(tmp_path, extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rule persistence:" in result.stdout
