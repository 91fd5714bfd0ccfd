"""The state of a whole run in one line, read from Snakemake's log of the latest run (`repurpose status`).

Snakemake writes one log per invocation under `<workdir>/.snakemake/log/`: a start date, for every job a
`rule <name>:` block with its `jobid`, `Finished jobid: N` when it ends, `i of n steps (p%) done` after each
job and `Error in rule <name>` on failure. From these this module tells the stages done, running and failed,
and the time left, extrapolated from the steps done so far (jobs differ in length, so it is a rough guide
that improves as the run proceeds). Imports the standard library only.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

_STARTED = re.compile(r"^\s*Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.M)
_JOB = re.compile(r"^(?:local)?(?:checkpoint|rule) (\w+):\n(?:(?!\n\n).)*?^\s+jobid: (\d+)", re.M | re.S)
_FINISHED = re.compile(r"^Finished jobid: (\d+)", re.M)
_STEPS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done", re.M)
_FAILED = re.compile(r"^Error in rule (\w+):", re.M)
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.M)


@dataclass
class RunStatus:
    """What the log of one Snakemake invocation says about the run."""

    started: dt.datetime | None
    last_event: dt.datetime | None = None
    steps_done: int = 0
    steps_total: int | None = None
    running: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    complete: bool = False


def latest_log(workdir: str | Path = ".") -> Path | None:
    """The log of the latest Snakemake invocation in `workdir`, or None before the first run."""
    logs = sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"))
    return logs[-1] if logs else None


def parse_log(text: str) -> RunStatus:
    """The run's state from the text of a Snakemake log (dry runs report no steps)."""
    started = _STARTED.search(text)
    status = RunStatus(started=dt.datetime.fromisoformat(started.group(1)) if started else None)
    jobs = {int(jobid): rule for rule, jobid in _JOB.findall(text) if rule != "all"}
    finished = {int(jobid) for jobid in _FINISHED.findall(text)}
    status.failed = sorted(set(_FAILED.findall(text)))
    status.running = sorted({rule for jobid, rule in jobs.items() if jobid not in finished} - set(status.failed))
    stamps = _STAMP.findall(text)
    if stamps:
        status.last_event = dt.datetime.strptime(" ".join(stamps[-1].split()), "%a %b %d %H:%M:%S %Y")
    steps = _STEPS.findall(text)
    if steps:
        status.steps_done, status.steps_total = int(steps[-1][0]), int(steps[-1][1])
    status.complete = status.steps_total is not None and status.steps_done == status.steps_total
    if status.failed or "Shutting down, this might take some time." in text:
        status.running = []  # Snakemake stopped: nothing is running any more
    return status


def status_line(status: RunStatus, now: dt.datetime) -> str:
    """One line: steps done of all, stages running or failed, elapsed time and time left by steps."""
    if status.steps_total is None and not status.running and not status.failed:
        return "no job has run yet (a dry run, or nothing to do)"
    total = status.steps_total or "?"
    parts = [f"{status.steps_done} of {total} jobs done"]
    finished = status.complete or bool(status.failed)
    end = status.last_event if finished and status.last_event else now
    elapsed = (end - status.started) if status.started else None
    if status.failed:
        parts.append(f"FAILED in {', '.join(status.failed)} (see results/logs/ and rerun; --unlock after a crash)")
    elif status.complete:
        parts.append("complete")
    else:
        if status.running:
            parts.append(f"running: {', '.join(status.running)}")
        if elapsed is not None and status.steps_done and status.steps_total:
            left = elapsed * (status.steps_total - status.steps_done) / status.steps_done
            parts.append(f"about {_minutes(left)} left")
    if elapsed is not None:
        parts.append(f"{_minutes(elapsed)} elapsed")
    return "; ".join(parts)


def _minutes(span: dt.timedelta) -> str:
    minutes = span.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes >= 1 else f"{span.total_seconds():.0f} s"


def run_status_line(workdir: str | Path = ".", now: dt.datetime | None = None) -> str:
    """The status line of the latest run in `workdir`."""
    log = latest_log(workdir)
    if log is None:
        return f"no run has started in {Path(workdir).resolve()} yet"
    return status_line(parse_log(log.read_text(encoding="utf-8", errors="replace")), now or dt.datetime.now())
