"""The trial emulation rule joins the DAG when enabled and the treatments, relapses and EDSS are configured;
the report links its page and the export carries its released tables."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from repurpose.layout import TRIAL_EMULATION_TABLES, WORKFLOW_SNAKEFILE
from repurpose.stages import rerun_settings
from repurpose.study_config import load_config
from repurpose.trial_emulation import run_trial_emulation


def _dry_run(directory, *configfiles):
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(WORKFLOW_SNAKEFILE), "-n", "--directory", str(directory)]
    for configfile in configfiles:
        command += ["--configfile", str(configfile)]
    return subprocess.run(command, capture_output=True, text=True)


def test_the_demo_runs_the_emulation_and_a_study_can_turn_it_off(tmp_path):
    demo = _dry_run(tmp_path)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "rule trial_emulation:" in demo.stdout  # the demo reads the simulated clinical extracts
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump({"trial_emulation": {"enabled": False}}))
    result = _dry_run(tmp_path, off)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rule export:" in result.stdout and "rule trial_emulation:" not in result.stdout
    plain = tmp_path / "no_clinical.yaml"
    plain.write_text(yaml.safe_dump({"simulate": {"clinical": {"enabled": False}}}))
    result = _dry_run(tmp_path, plain)
    assert result.returncode == 0 and "rule trial_emulation:" not in result.stdout


def test_the_rule_reruns_on_its_settings_only():
    config = load_config(WORKFLOW_SNAKEFILE.parent / "config" / "config.yaml")
    settings = rerun_settings(run_trial_emulation, config)
    assert set(settings) == {"trial_emulation", "study.start", "study.end", "disclosure"}
    assert settings["trial_emulation"]["grace_days"] == 180


@pytest.mark.slow
def test_the_demo_run_writes_the_emulation_links_it_and_exports_it(demo_run):
    results = demo_run
    for name in TRIAL_EMULATION_TABLES:
        assert (results / "trial_emulation" / f"{name}.csv").is_file()
    assert 'id="trial-emulation-link"' in (results / "report" / "index.html").read_text()
    exported = (results / "export" / "manifest.csv").read_text()
    assert "trial_emulation/estimates.csv" in exported and "report/trial_emulation.html" in exported
    assert "trial_emulation/cohort.parquet" not in exported
