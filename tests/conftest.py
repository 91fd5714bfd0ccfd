"""Shared fixtures of the slow tests: the 8,000-person demo run of the whole DAG, and simulated registries
made once per session and read by several modules (never written to: copy what a test must change).

Simulations per slow session: the demo's (8,000 persons, inside `demo_run`), `registries_24k` (24,000
persons, seed 7: federation and incremental runs) and `registries_200k` (200,000 persons, seed 7: screen
and candidate recovery), where there were five before (3,000, 24,000, 100,000 and 200,000 persons besides
the demo). `run_200k` is the one full Snakemake run on `registries_200k` (ATC levels 4 and 5), shared by the
candidate-recovery tests and the attacker suite.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from repurpose.simulate import simulate_registries

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
DEMO_PERSONS = 8000
SNAKEMAKE_THREADED = ("--force-use-threads",)


def snakemake_output(
    workdir: Path, *config_files: Path, targets: tuple[str, ...] = (), extra: tuple[str, ...] = (), cores: int = 2,
    timeout: int = 1200,
) -> str:
    """Run the workflow in `workdir` (results under workdir/results) to `targets` (default: everything) and
    return its output; fail with the tail of it.

    Jobs run as threads of the one Snakemake process (`--force-use-threads`, as `make run` does): the outputs
    are the same bytes, and a job does not pay a new Python process that parses the workflow and imports the
    package (several seconds each, about 40 jobs per run).
    """
    command = [str(SNAKEMAKE), *targets, *SNAKEMAKE_THREADED, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--cores", str(cores), *extra]  # fmt: skip
    if config_files:
        command += ["--configfile", *map(str, config_files)]  # last: it takes every argument after it
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout + completed.stderr


def run_snakemake(
    workdir: Path, *config_files: Path, targets: tuple[str, ...] = (), cores: int = 2, timeout: int = 1200
) -> None:
    """`snakemake_output` without the job-by-job output."""
    snakemake_output(workdir, *config_files, targets=targets, extra=("--quiet", "progress"), cores=cores, timeout=timeout)


def planned_jobs(workdir: Path, *config_files: Path, targets: tuple[str, ...] = ()) -> dict[str, int]:
    """Rule -> number of jobs Snakemake would run now to `targets` (its dry-run job table; empty when up to date)."""
    output = snakemake_output(workdir, *config_files, targets=targets, extra=("-n",))
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.M))
    jobs.pop("total", None)
    return {rule: int(n) for rule, n in jobs.items()}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo DAG on 8,000 simulated persons, run once per test session: its results directory."""
    workdir = tmp_path_factory.mktemp("demo")
    small = workdir / "small.yaml"
    small.write_text(yaml.safe_dump({"simulate": {"n_persons": DEMO_PERSONS}}))
    run_snakemake(workdir, small)
    return workdir / "results"


@pytest.fixture(scope="session")
def simulation(tmp_path_factory) -> Callable[..., Path]:
    """`simulation(n_persons, seed, parkinson=False)`: the directory of simulated registries (no corrupt rows)
    with those settings, simulated on first request and shared for the rest of the session (read only)."""
    made: dict[tuple[int, int, bool], Path] = {}

    def simulated(n_persons: int, seed: int, *, parkinson: bool = False) -> Path:
        key = (n_persons, seed, parkinson)
        if key not in made:
            out = tmp_path_factory.mktemp(f"simulated_{n_persons}_{seed}{'_parkinson' if parkinson else ''}")
            simulate_registries(out, n_persons=n_persons, seed=seed, parkinson={"enabled": parkinson})
            made[key] = out
        return made[key]

    return simulated


@pytest.fixture(scope="session")
def registries_24k(simulation) -> Path:
    """24,000 simulated persons (seed 7): split into three federated sites, and the incremental-run deliveries."""
    return simulation(24_000, 7)


@pytest.fixture(scope="session")
def registries_200k(simulation) -> Path:
    """200,000 simulated persons (seed 7, about 2,600 incident MS cases): the recovery tests of screen and candidates."""
    return simulation(200_000, 7)


RUN_200K_LEVELS = (4, 5)


@pytest.fixture(scope="session")
def run_200k(tmp_path_factory, registries_200k) -> tuple[Path, tuple[Path, ...]]:
    """The whole DAG (validate -> ... -> report -> export, and the persistence study on the clinical extracts)
    on `registries_200k` at ATC levels 4 and 5 with the default candidates settings, run once per session:
    (results directory, the config files of the run)."""
    workdir = tmp_path_factory.mktemp("run_200k")
    overrides = workdir / "run_200k.yaml"
    registers = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss", "sick_leave")
    inputs = {name: {"path": str(registries_200k / f"{name}.parquet")} for name in registers}
    inputs["prescriptions"] = {"path": str(registries_200k / "prescriptions")}
    overrides.write_text(yaml.safe_dump({
        "inputs": inputs,
        "screen": {"atc_levels": list(RUN_200K_LEVELS)},
    }))  # fmt: skip
    run_snakemake(workdir, overrides, timeout=3600)
    return workdir / "results", (REPO / "config" / "config.yaml", overrides)
