"""The demo DAG through a real single-node SLURM cluster gives the same results as a local run.

tests/slurm/start_cluster.sh installs (Debian packages) and starts munge, MariaDB + slurmdbd, slurmctld
and slurmd on this machine when they are missing; the test skips only when that is impossible (not
root, or no apt-get). The same small config then runs twice: with workflow/profiles/local, and with
workflow/profiles/slurm (snakemake-executor-plugin-slurm) layered with tests/slurm/profile, which sets
the test cluster's account and partition. Every rule job must show up in SLURM's accounting (sacct,
with the plugin's rule_<name> comment and the run's working directory) and in the slurmctld log, and
the results must equal the local run's exactly: same code, same data, same thread count per job.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import SNAKEMAKE_THREADED
from polars.testing import assert_frame_equal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START_CLUSTER = REPO / "tests" / "slurm" / "start_cluster.sh"
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
SKIP_STATUS = 77  # start_cluster.sh: packages cannot be installed here
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")
JOB_PREFIX = "repurpose_test"
# Small demo; the DuckDB memory limit (resources.memory_gb -> each job's mem_mb) is kept well below
# the node's RealMemory so the jobs fit on a small CI machine. Both runs use exactly this config.
# One thread per job, so the 2-CPU test node runs two SLURM jobs at a time.
STUDY = {"simulate": {"n_persons": 8000}, "resources": {"memory_gb": 2, "threads": 1}}


def job_environment() -> dict[str, str]:
    """The submitting environment (sbatch --export=ALL passes it on): the venv first, sbin for SLURM."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    for key in [key for key in env if key.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        del env[key]  # a test started inside an allocation must not leak it into the submissions
    return env


def start_snakemake(workdir: Path, *options: str) -> subprocess.Popen:
    """Snakemake in the background; its output goes to workdir/snakemake.out (pipes could fill up)."""
    command = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    command += ["--configfile", str(workdir / "study.yaml"), *options]
    with (workdir / "snakemake.out").open("w") as out:
        return subprocess.Popen(
            command, cwd=workdir, env=job_environment(), stdout=out, stderr=subprocess.STDOUT
        )


def finish(run: subprocess.Popen, workdir: Path) -> None:
    run.wait(timeout=2400)
    assert run.returncode == 0, (workdir / "snakemake.out").read_text()[-8000:]


def executed_rules(workdir: Path) -> Counter:
    """Rule name -> number of jobs, from the Snakemake log of the run in workdir (target rules excluded)."""
    (log,) = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))[-1:]
    jobs = Counter(re.findall(r"^(?:local)?rule (\w+):$", log.read_text(), flags=re.MULTILINE))
    jobs.pop("all", None)
    return jobs


@pytest.fixture(scope="module")
def cluster() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash to run tests/slurm/start_cluster.sh")
    started = subprocess.run(["bash", str(START_CLUSTER)], capture_output=True, text=True, timeout=1200)
    if started.returncode == SKIP_STATUS:
        pytest.skip(
            "no SLURM cluster and none can be installed here: " + started.stderr.strip().splitlines()[-1]
        )
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-5000:]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> dict[str, Path]:
    """Workdirs of the local reference run and of the SLURM run of the same config."""
    workdirs = {name: tmp_path_factory.mktemp(name) for name in ("local", "slurm")}
    for workdir in workdirs.values():
        (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY))
    submitted_after = datetime.now().replace(microsecond=0)  # sacct --starttime: whole seconds
    slurm = start_snakemake(
        workdirs["slurm"],
        "--profile",
        str(REPO / "workflow/profiles/slurm"),
        "--profile",
        str(TEST_PROFILE),
        "--slurm-jobname-prefix",
        JOB_PREFIX,
    )
    # The local reference run meanwhile: the SLURM run mostly waits for job start-up and polling.
    local = start_snakemake(
        workdirs["local"], "--profile", str(REPO / "workflow/profiles/local"), "--cores", "2", *SNAKEMAKE_THREADED
    )
    try:
        finish(local, workdirs["local"])
        finish(slurm, workdirs["slurm"])
    finally:
        for run in (local, slurm):
            if run.poll() is None:
                run.terminate()  # Snakemake cancels its SLURM jobs (scancel) on SIGTERM
                run.wait(timeout=120)
    workdirs["since"] = submitted_after  # type: ignore[assignment]
    return workdirs


def sacct_jobs(workdir: Path, since: datetime) -> list[dict[str, str]]:
    """SLURM's accounting records of the batch jobs whose working directory is workdir."""
    fields = ["JobIDRaw", "JobName", "Comment", "State", "ExitCode", "Account", "Partition", "WorkDir"]
    completed = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "--parsable2",
            "--starttime",
            since.strftime("%Y-%m-%dT%H:%M:%S"),
            "--format",
            ",".join(fields),
        ],
        capture_output=True,
        text=True,
        env=job_environment(),
        check=True,
    )
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in completed.stdout.splitlines() if line]
    return [row for row in rows if Path(row["WorkDir"]).resolve() == workdir.resolve()]


def test_every_rule_job_ran_as_a_slurm_job(runs):
    local_jobs = executed_rules(runs["local"])
    slurm_jobs = executed_rules(runs["slurm"])
    assert slurm_jobs == local_jobs and sum(local_jobs.values()) >= 5
    records = sacct_jobs(runs["slurm"], runs["since"])
    assert records, "sacct lists no job of the SLURM run"
    summary = "\n".join("|".join(row.values()) for row in records)
    assert all(row["State"] == "COMPLETED" and row["ExitCode"] == "0:0" for row in records), summary
    assert {row["Account"] for row in records} == {"repurpose"} and {row["Partition"] for row in records} == {
        "ci"
    }
    assert all(row["JobName"].startswith(JOB_PREFIX + "_") for row in records), summary
    # The plugin's --comment is rule_<name> or rule_<name>_wildcards_<values>: one SLURM job per rule job.
    rule_of = {
        row["JobIDRaw"]: re.sub(r"_wildcards_.*$", "", row["Comment"]).removeprefix("rule_")
        for row in records
    }
    assert Counter(rule_of.values()) == slurm_jobs, summary
    for stage in ("validate", "cohort", "screen"):
        assert any(stage in rule for rule in rule_of.values()), (stage, summary)
    if SLURMCTLD_LOG.exists():  # the controller itself allocated and completed each of them
        log = SLURMCTLD_LOG.read_text(errors="replace")
        for job_id in rule_of:
            assert re.search(rf"(Allocate|Started) JobId={job_id} ", log), job_id
            assert re.search(rf"JobId={job_id} done", log), job_id
    # The executor kept each job's SLURM log (tests/slurm/profile): one per job, written on the node.
    slurm_logs = list((runs["slurm"] / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(path.stem for path in slurm_logs) == sorted(rule_of), slurm_logs


def test_slurm_results_equal_the_local_run(runs):
    local, slurm = runs["local"] / "results", runs["slurm"] / "results"
    for name in ("validation/report.json", "cohort/flow.json"):
        assert json.loads((slurm / name).read_text()) == json.loads((local / name).read_text()), name
    # Floating-point results are bit-identical: the same code on the same data with the same thread count.
    assert_frame_equal(
        pl.read_parquet(slurm / "screen/dwas.parquet"),
        pl.read_parquet(local / "screen/dwas.parquet"),
        check_exact=True,
    )
    candidates = sorted(path.name for path in (local / "candidates").glob("*.csv"))
    assert candidates and candidates == sorted(path.name for path in (slurm / "candidates").glob("*.csv"))
    for name in candidates:
        assert_frame_equal(
            pl.read_csv(slurm / "candidates" / name, infer_schema=False),
            pl.read_csv(local / "candidates" / name, infer_schema=False),
        )
    # What may leave the server is byte-identical too (the report embeds run metadata, so it is left out, and
    # the manifest's run_id names each run).
    manifests = [
        {
            row["file"]: {column: value for column, value in row.items() if column != "run_id"}
            for row in csv.DictReader((results / "export/manifest.csv").open())
            if not row["file"].startswith("report/")
        }
        for results in (local, slurm)
    ]
    assert manifests[0] and manifests[0] == manifests[1]
