"""The `repurpose` command line."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
import yaml

from repurpose.cli import main, unanswered_slurm_warning
from repurpose.layout import WORKFLOW_SNAKEFILE


def test_simulate_command_writes_registries_and_native_copy(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--n-persons", "500", "--seed", "3",
                 "--native", str(tmp_path / "native")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["persons"] == 500
    assert (tmp_path / "sim" / "ground_truth.json").exists()
    assert (tmp_path / "native" / "population.csv").exists()
    assert summary["native"]["inputs"]["population"]["sep"] == ";"


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_check_config_prints_the_merged_config(tmp_path, capsys):
    study = tmp_path / "my_study.yaml"
    study.write_text("screen:\n  lags_years: [0, 1, 3]\ncandidates:\n  main_lag_years: 1\n")
    assert main(["check-config", str(study)]) == 0
    captured = capsys.readouterr()
    merged = yaml.safe_load(captured.out)
    assert merged["screen"]["lags_years"] == [0, 1, 3] and merged["screen"]["atc_levels"] == [2, 3, 4, 5]
    assert "no problems found" in captured.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("screen:\n  lagz: [0, 2]\n", "did you mean `lags_years`?"),
        ("screen:\n  lags_years: [0, 5]\n", "the main lag must be one of the screened lags"),
        ("study:\n  start: 2004-01-01\n   end: 2020-01-01\n", "line 3, column 7"),
    ],
)
def test_config_mistakes_are_one_message_without_traceback(tmp_path, capsys, text, message):
    study = tmp_path / "my_study.yaml"
    study.write_text(text)
    assert main(["check-config", str(study)]) == 2
    assert main(["run", str(study), "--dry-run"]) == 2  # refused before Snakemake starts
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_wraps_snakemake(tmp_path):
    """`repurpose run --dry-run` plans the whole DAG; the Snakefile itself refuses a bad config without a traceback."""
    result = subprocess.run([sys.executable, "-m", "repurpose.cli", "run", "--dry-run", "--in-process", "--directory",
                             str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "export" in result.stdout and "--dry-run" in result.stderr and "--force-use-threads" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("screen:\n  lagz: [0, 2]\n")
    direct = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(WORKFLOW_SNAKEFILE), "-n",
                             "--configfile", str(bad), "--directory", str(tmp_path)], capture_output=True, text=True)
    assert direct.returncode != 0
    assert "did you mean `lags_years`?" in direct.stderr and "Traceback" not in direct.stderr
    assert 'File "' not in direct.stderr


def test_run_warns_when_slurm_is_installed_but_its_controller_does_not_answer():
    def hangs(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    def answers(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, "MinJobAge = 300 sec", "")

    warning = unanswered_slurm_warning(which=lambda name: "/usr/bin/scontrol", run=hangs)
    assert warning and "every job will wait about 10 s" in warning
    assert unanswered_slurm_warning(which=lambda name: "/usr/bin/scontrol", run=answers) is None
    assert unanswered_slurm_warning(which=lambda name: None, run=hangs) is None


RUN_LOG = """Building DAG of jobs...
SNAKEMAKE
  Date: 2026-12-06 08:00:00
[Sun Dec  6 08:00:05 2026]
localrule simulate:
    output: results/simulated/population.parquet
    jobid: 5
    threads: 2

Finished jobid: 5 (Rule: simulate)
1 of 4 steps (25%) done
[Sun Dec  6 08:10:00 2026]
localrule cohort:
    input: results/validated/population.parquet
    jobid: 3

"""


def test_status_reads_the_latest_run_log(tmp_path, capsys):
    from repurpose.run_status import parse_log, status_line

    now = dt.datetime(2026, 12, 6, 8, 20)
    assert status_line(parse_log(RUN_LOG), now) == (
        "1 of 4 jobs done; running: cohort; about 60 min left; 20 min elapsed"
    )
    failed = RUN_LOG + "Error in rule cohort:\n    jobid: 3\n"
    assert "FAILED in cohort" in status_line(parse_log(failed), now)
    done = RUN_LOG + "Finished jobid: 3 (Rule: cohort)\n4 of 4 steps (100%) done\n[Sun Dec  6 08:12:00 2026]\n"
    assert status_line(parse_log(done), now) == "4 of 4 jobs done; complete; 12 min elapsed"
    assert main(["status", "--directory", str(tmp_path)]) == 0
    assert "no run has started" in capsys.readouterr().out
    (tmp_path / ".snakemake/log").mkdir(parents=True)
    (tmp_path / ".snakemake/log/2026-12-06T080000.000000.snakemake.log").write_text(RUN_LOG)
    assert main(["status", "--directory", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("1 of 4 jobs done; running: cohort;")


def test_every_subcommand_has_an_example_and_states_its_defaults(capsys):
    from repurpose.cli import EXAMPLES, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == set(EXAMPLES)
    for name, command in commands.items():
        text = command.format_help()
        assert f"example:\n  {EXAMPLES[name]}" in text, name
        assert EXAMPLES[name].startswith(f"repurpose {name}"), name
    assert "(default: 50000)" in commands["simulate"].format_help()
    assert "(default: 2)" in commands["run"].format_help()
