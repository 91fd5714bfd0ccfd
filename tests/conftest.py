"""Shared fixtures: one simulated 8,000-person demo run of the whole DAG for the slow tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEMO_PERSONS = 8000


def run_snakemake(workdir: Path, *config_files: Path, targets: tuple[str, ...] = (), cores: int = 2) -> None:
    """Run the workflow in `workdir` (results under workdir/results); fail with the tail of its output."""
    command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores), "--quiet", "progress"]
    if config_files:
        command += ["--configfile", *map(str, config_files)]
    command += list(targets)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo DAG on 8,000 simulated persons, run once per test session: its results directory."""
    workdir = tmp_path_factory.mktemp("demo")
    small = workdir / "small.yaml"
    small.write_text(yaml.safe_dump({"simulate": {"n_persons": DEMO_PERSONS}}))
    run_snakemake(workdir, small)
    return workdir / "results"
