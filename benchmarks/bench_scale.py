"""Scaling benchmark: the pipeline through Snakemake on simulated registries of increasing size.

For each size, simulates the registries, then runs every stage of the demo config to the export: validate ->
cohort -> exposures -> screen (ATC levels 2-5, lags 0/2/5/10, strata all/F/M) -> mechanisms -> candidates ->
persistence -> trial emulation -> report -> export (a stage whose rule the run's DAG lacks is recorded as
absent), each stage as its own `snakemake` process so its wall time and peak RSS are its own, plus the
FLOOR: one DuckDB pass grouping all validated dispensings by person and ATC code under the pipeline's
DuckDB memory limit and threads, and then validate -> export again as one `snakemake` process (as an analyst
runs it: one start-up, stages side by side where cores allow) on the same simulated registries. Writes the raw measurements as JSON and a "Scaling" section into
docs/benchmarks.md (figures, fitted exponents of time against dispensings, screen/floor ratios,
extrapolation, targets met or missed).

    .venv/bin/python benchmarks/bench_scale.py                       # 100k, 300k, 1M, 3M persons
    .venv/bin/python benchmarks/bench_scale.py --sizes 20000 50000   # quick check
    .venv/bin/python benchmarks/bench_scale.py --sizes 3000000 --append   # add a size to the JSON
    .venv/bin/python benchmarks/bench_scale.py --render-only         # rewrite the doc from the JSON
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Stage -> Snakemake targets (stable files; Snakemake runs whatever rules produce them). Rule names of
# validation and screen may be split into several rules; only this table needs to follow the files.
STAGES: list[tuple[str, list[str]]] = [
    ("simulate", ["results/simulated/ground_truth.json"]),
    ("validate", ["results/validation/report.json"]),
    ("cohort", ["results/cohort/cohort.parquet"]),
    ("exposure", [f"results/exposure/atc_level_{level}.parquet" for level in (2, 3, 4, 5)]),
    ("screen", ["results/screen/dwas.parquet"]),
    ("mechanisms", ["results/candidates/mechanism_ranking.csv"]),
    ("candidates", ["results/candidates/drug_ranking.csv"]),
    ("persistence", ["results/report/persistence.html"]),
    ("trial_emulation", ["results/report/trial_emulation.html"]),
    ("report", ["results/report/index.html"]),
    ("export", ["results/export/manifest.csv"]),
]
# What a real study runs (no simulation), in order.
PIPELINE_STAGES = ["validate", "cohort", "exposure", "screen", "mechanisms", "candidates", "persistence",
                   "trial_emulation", "report", "export"]
OPTIONAL_STAGES = {"persistence", "trial_emulation"}  # rules only in a DAG whose config delivers their inputs
VALIDATED_PRESCRIPTIONS = "results/validated/prescriptions"
VALIDATION_REPORT = "results/validation/report.json"

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"
SECTION = "## Scaling"

# Targets of the national-scale issue and the scale of the extrapolation.
TARGET_SCREEN_OVER_FLOOR = 3.0
TARGET_PEAK_RSS_GB = 16.0
TARGET_EXPONENT = 1.1
TARGET_FULL_RUN_MIN = 15.0
TARGET_PIPELINE_MIN = 8.0  # validate -> export at the largest size (3M persons)
TARGET_STAGE_SECONDS = {"candidates": 60.0, "mechanisms": 60.0}  # at the largest size
NATIONAL_PERSONS = 3_200_000
NATIONAL_DISPENSINGS = 600_000_000


# ---------------------------------------------------------------------------------------------- child
def _peak_rss_mb() -> dict[str, float]:
    """Peak RSS of this process and of its largest waited-for child (MB), and VmHWM as a cross-check."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    hwm_kb = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm_kb = int(line.split()[1])
    except OSError:
        pass
    return {"self_mb": self_kb / 1024, "children_mb": children_kb / 1024, "vmhwm_mb": hwm_kb / 1024}


def child_snakemake(result_path: str, argv: list[str]) -> int:
    """Run `snakemake argv` in this process; write its exit code and peak RSS to result_path.

    With --cores > 1 Snakemake runs each `run:` job in a subprocess of this one, so the peak RSS of a stage
    is the larger of this process's and its largest (waited-for) child's.
    """
    code = 1
    try:
        from snakemake.cli import main as snakemake_main

        snakemake_main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        Path(result_path).write_text(json.dumps({"exit_code": code, **_peak_rss_mb()}))
    return code


def child_floor(result_path: str, workdir: str, memory_gb: float, threads: int) -> int:
    """The FLOOR: one DuckDB pass grouping all validated dispensings by person and ATC code."""
    import duckdb

    resources = {"memory_gb": memory_gb, "threads": threads, "tmpdir": str(Path(workdir) / "results/tmp")}
    try:  # the pipeline's own connection settings
        from repurpose.duck import connect

        con = connect(resources)
    except Exception:  # noqa: BLE001 - same settings by hand if the helper moved
        Path(resources["tmpdir"]).mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(config={"memory_limit": f"{memory_gb}GB", "threads": threads,
                                     "temp_directory": resources["tmpdir"], "preserve_insertion_order": False})
    source = str(Path(workdir) / VALIDATED_PRESCRIPTIONS / "**/*.parquet").replace("'", "''")
    target = str(Path(workdir) / "floor.parquet").replace("'", "''")
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT person_id, atc_code, count(*) AS n, min(dispense_date) AS first_date "
        f"FROM read_parquet('{source}') GROUP BY ALL) TO '{target}' (FORMAT parquet)"
    )
    seconds = time.perf_counter() - started
    groups = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    con.close()
    Path(result_path).write_text(json.dumps({"exit_code": 0, "query_seconds": seconds, "groups": groups,
                                             **_peak_rss_mb()}))
    return 0


# --------------------------------------------------------------------------------------------- driver
def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def parse_jobs(log_path: Path) -> list[dict[str, Any]]:
    """Rule, start and seconds of each job from a Snakemake log (its timestamps have 1 s resolution)."""
    jobs: list[dict[str, Any]] = []
    started: dict[str, tuple[Any, ...]] = {}
    stamp: dt.datetime | None = None
    pending: tuple[Any, ...] | None = None
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return jobs
    for line in lines:
        found = _STAMP.match(line.strip())
        if found:
            stamp = dt.datetime.strptime(" ".join(found.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        rule = re.match(r"^(?:local)?rule (\S+):$", line.strip())
        if rule and stamp is not None:
            pending = (rule.group(1), stamp)
            continue
        log = re.match(r"^\s+log: (\S+)", line)
        if log and pending is not None:
            pending = (*pending[:2], log.group(1))
            continue
        jobid = re.match(r"^\s+jobid: (\d+)$", line)
        if jobid and pending is not None:
            started[jobid.group(1)] = pending
            pending = None
            continue
        done = re.match(r"^Finished jobid: (\d+)", line.strip())
        if done and stamp is not None and done.group(1) in started:
            rule_name, start, *log_path_ = started.pop(done.group(1))
            jobs.append({"rule": rule_name, "start": start.isoformat(), "seconds": (stamp - start).total_seconds(),
                         "log": log_path_[0] if log_path_ else None})
    return jobs


def _tree_rss_mb(pid: int) -> float:
    """Current RSS of a process and all its descendants (MB); 0 if it cannot be read."""
    try:
        import psutil

        root = psutil.Process(pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total / 1024**2
    except Exception:  # noqa: BLE001 - the exact per-process peak still stands
        return 0.0


RULE_LOG_STATS = "rule_logs_stat.txt"


def save_rule_log_times(workdir: Path, logdir: Path) -> None:
    """Birth and modification times of the rules' log files (a rule opens its log as its work starts)."""
    logs = sorted(str(p.relative_to(workdir)) for p in (workdir / "results/logs").glob("*.log"))
    if logs:
        proc = subprocess.run(["stat", "-c", "%W %.9Y %n", *logs], cwd=workdir, capture_output=True, text=True)
        (logdir / RULE_LOG_STATS).write_text(proc.stdout)


def annotate_work(record: dict[str, Any], logdir: Path) -> None:
    """Split each job into start-up (job start -> its log file created) and work (log created -> last write).

    Uses the Snakemake stage logs and the saved birth/modification times of the rules' logs; 1 s resolution.
    """
    stats: dict[str, tuple[float, float]] = {}
    try:
        for line in (logdir / RULE_LOG_STATS).read_text().splitlines():
            birth, mtime, name = line.split(maxsplit=2)
            if int(birth) > 0:
                stats[name] = (float(birth), float(mtime))
    except (OSError, ValueError):
        return
    for stage, result in record["stages"].items():
        if "seconds" not in result:
            continue
        jobs = parse_jobs(logdir / f"{stage}.log") or result.get("jobs", [])
        work = startup = 0.0
        for job in jobs:
            if job.get("log") in stats:
                birth, mtime = stats[job["log"]]
                job["startup_seconds"] = max(0.0, birth - dt.datetime.fromisoformat(job["start"]).timestamp())
                job["work_seconds"] = max(0.0, mtime - birth)
                work += job["work_seconds"]
                startup += job["startup_seconds"]
        result["jobs"] = jobs
        if jobs and all("work_seconds" in job for job in jobs):
            result["work_seconds"], result["job_startup_seconds"] = work, startup


def _run_child(args: list[str], log_path: Path, result_path: Path) -> dict[str, Any]:
    """Run this script in child mode in a fresh Python; wall seconds, peak RSS and the child's report."""
    result_path.unlink(missing_ok=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    tree_peak = 0.0
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:  # concurrent jobs: sample the summed RSS of the process tree
            tree_peak = max(tree_peak, _tree_rss_mb(proc.pid))
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    child: dict[str, Any] = {}
    if result_path.exists():
        child = json.loads(result_path.read_text())
    process_peak = max(child.get("self_mb", 0.0), child.get("children_mb", 0.0))
    out: dict[str, Any] = {"seconds": seconds, "peak_rss_mb": max(process_peak, tree_peak),
                           "process_peak_rss_mb": process_peak, "tree_peak_rss_mb": tree_peak,
                           "load_before": load_before,
                           "jobs": parse_jobs(log_path) if args[0] == "--child-snakemake" else [],
                           "load_after": os.getloadavg()[0], **{k: v for k, v in child.items() if k != "exit_code"}}
    if proc.returncode != 0 or child.get("exit_code", 1) != 0:
        text = _tail(log_path, 400).splitlines()
        first = next((i for i, line in enumerate(text) if re.search(r"Error|Exception", line)), None)
        cause = " ".join(line.strip() for line in text[first:first + 3]) if first is not None else ""
        out["error"] = f"exit code {proc.returncode}: {cause} (log {log_path})\n" + "\n".join(text[-25:])
    return out


def _dispensings(workdir: Path) -> dict[str, int]:
    """Prescription rows read and kept, from the validation report."""
    report = json.loads((workdir / VALIDATION_REPORT).read_text())
    extract = report["extracts"]["prescriptions"]
    return {"rows_read": int(extract["rows_read"]), "rows_kept": int(extract["rows_kept"])}


def _count_rows(path: Path) -> int | None:
    try:
        import polars as pl

        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    except Exception:  # noqa: BLE001 - informative only
        return None


def _workflow_rules(workdir: Path, config_path: Path) -> set[str] | None:
    """The rule names of the workflow for this config (`snakemake --list-rules`); None if it cannot be listed."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--configfile",
                           str(config_path), "--list-rules"], cwd=ROOT, capture_output=True, text=True)
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} if proc.returncode == 0 else None


def pipeline_stages(record: dict[str, Any]) -> list[str]:
    """The pipeline stages of a size's run: those its DAG has (an optional stage may be absent) and, for a
    size measured before a stage was benchmarked, those it measured."""
    return [s for s in PIPELINE_STAGES if s in record["stages"] and "absent" not in record["stages"][s]]


def whole_run(record: dict[str, Any], workdir: Path, config_path: Path, logdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The measured stages validate -> export as one `snakemake` process, as an analyst runs them: one start-up,
    and jobs of different stages side by side when cores are free. On a fresh work dir next to `workdir` whose
    simulated registries are hard links of the ones measured stage by stage (removed afterwards)."""
    whole = workdir.with_name(f"{workdir.name}-whole")
    if whole.exists():
        shutil.rmtree(whole)
    shutil.copytree(workdir / "results" / "simulated", whole / "results" / "simulated", copy_function=os.link)
    shutil.copy(config_path, whole / config_path.name)
    measured = set(pipeline_stages(record))
    targets = [target for stage, stage_targets in STAGES if stage in measured for target in stage_targets]
    argv = ["-s", str(SNAKEFILE), "-d", str(whole), "--configfile", str(whole / config_path.name),
            "--cores", str(args.threads), "--rerun-triggers", "mtime", "--nolock", *targets]
    try:
        return _run_child(["--child-snakemake", str(logdir / "whole.json"), *argv], logdir / "whole.log", logdir / "whole.json")
    finally:
        shutil.rmtree(whole, ignore_errors=True)


def run_size(n_persons: int, args: argparse.Namespace) -> dict[str, Any]:
    """Simulate, then run each stage and the floor for one size; never raises for a failing stage."""
    root = Path(args.workdir)
    workdir = root / str(n_persons)
    logdir = root / "logs" / str(n_persons)
    simulated = workdir / "results" / "simulated"
    if args.reuse_simulation and (simulated / "ground_truth.json").exists():
        for path in workdir.iterdir():  # all but the simulated registries (and the results folder holding them)
            if path.name != "results":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in (workdir / "results").iterdir():
            if path != simulated:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logdir.mkdir(parents=True, exist_ok=True)
    config = {"simulate": {"n_persons": n_persons, "seed": args.seed, "n_corrupt_rows": 30},
              "resources": {"memory_gb": args.memory_gb, "threads": args.threads}}
    config_path = workdir / "bench_config.yaml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    record: dict[str, Any] = {"n_persons": n_persons, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "config": config, "stages": {}, "errors": []}
    from repurpose.cli import unanswered_slurm_warning

    slurm = unanswered_slurm_warning()  # a silent controller adds ~10 s to every Snakemake start: say so
    if slurm:
        record["slurm_warning"] = slurm
        print(f"[{n_persons:,}] warning: {slurm}", flush=True)
    size_started = time.perf_counter()
    failed = False
    rules = _workflow_rules(workdir, config_path)
    for stage, targets in STAGES:
        if failed:
            record["stages"][stage] = {"skipped": "an earlier stage failed"}
            continue
        if stage in OPTIONAL_STAGES and rules is not None and stage not in rules:
            record["stages"][stage] = {"absent": "not in this config's DAG"}
            continue
        argv = ["-s", str(SNAKEFILE), "-d", str(workdir), "--configfile", str(config_path),
                "--cores", str(args.threads), "--rerun-triggers", "mtime", "--nolock", *targets]
        print(f"[{n_persons:,}] {stage} ...", flush=True)
        result = _run_child(["--child-snakemake", str(logdir / f"{stage}.json"), *argv],
                            logdir / f"{stage}.log", logdir / f"{stage}.json")
        record["stages"][stage] = result
        if "error" in result:
            failed = True
            record["errors"].append(f"{stage}: {result['error']}")
            print(f"[{n_persons:,}] {stage} FAILED: see {logdir / (stage + '.log')}", flush=True)
            continue
        print(f"[{n_persons:,}] {stage}: {result['seconds']:.1f} s, {result['peak_rss_mb']:,.0f} MB", flush=True)
        if stage == "validate":
            record.update(_dispensings(workdir))
            print(f"[{n_persons:,}] floor ...", flush=True)
            floor = _run_child(["--child-floor", str(logdir / "floor.json"), str(workdir), str(args.memory_gb),
                                str(args.threads)], logdir / "floor.log", logdir / "floor.json")
            record["floor"] = floor
            if "error" in floor:
                record["errors"].append(f"floor: {floor['error']}")
            else:
                print(f"[{n_persons:,}] floor: {floor['seconds']:.1f} s, {floor['peak_rss_mb']:,.0f} MB", flush=True)
    if not failed:  # Snakemake's fixed cost: start-up and DAG building with nothing to run
        noop = _run_child(["--child-snakemake", str(logdir / "noop.json"), *argv], logdir / "noop.log",
                          logdir / "noop.json")
        record["snakemake_noop_seconds"] = noop["seconds"] if "error" not in noop else None
    if not failed and args.whole_run:
        print(f"[{n_persons:,}] whole run (validate -> export, one snakemake) ...", flush=True)
        record["whole_run"] = whole_run(record, workdir, config_path, logdir, args)
        if "error" in record["whole_run"]:
            record["errors"].append(f"whole run: {record['whole_run']['error']}")
        else:
            print(f"[{n_persons:,}] whole run: {record['whole_run']['seconds']:.1f} s", flush=True)
    record["cohort_rows"] = _count_rows(workdir / "results/cohort/cohort.parquet")
    record["screen_rows"] = _count_rows(workdir / "results/screen/dwas.parquet")
    record["total_seconds"] = time.perf_counter() - size_started
    save_rule_log_times(workdir, logdir)
    annotate_work(record, logdir)
    record["disk_bytes"] = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------------------- analysis
def fit_exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than two distinct sizes)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({p[0] for p in points}) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sum((p[0] - mx) ** 2 for p in points)


def _ok(record: dict[str, Any], stage: str) -> bool:
    return "seconds" in record["stages"].get(stage, {}) and "error" not in record["stages"][stage]


def _complete(record: dict[str, Any]) -> bool:
    """Every pipeline stage of the size's DAG measured (a size from before a stage was benchmarked is not)."""
    return all(_ok(record, s) for s in PIPELINE_STAGES if "absent" not in record["stages"].get(s, {}))


def _job_seconds(stage: dict[str, Any]) -> float | None:
    """Seconds from the first job's start to the last job's end (jobs run one after another at 2 cores)."""
    jobs = stage.get("jobs")
    if not jobs:
        return None
    starts = [dt.datetime.fromisoformat(job["start"]) for job in jobs]
    ends = [s + dt.timedelta(seconds=job["seconds"]) for s, job in zip(starts, jobs, strict=True)]
    return (max(ends) - min(starts)).total_seconds()


def analyse(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponents, screen/floor ratios, peak RSS and the extrapolation of the full run."""
    sizes = sorted(sizes, key=lambda r: r["n_persons"])
    exponents: dict[str, dict[str, float | None]] = {}
    for stage, _ in [*STAGES, ("floor", [])]:
        rows = [(r["rows_kept"], r["floor"] if stage == "floor" else r["stages"][stage]) for r in sizes
                if "rows_kept" in r and (("error" not in r.get("floor", {"error": 1})) if stage == "floor" else _ok(r, stage))]
        exponents[stage] = {
            "time": fit_exponent([x for x, _ in rows], [m["seconds"] for _, m in rows]),
            "rss": fit_exponent([x for x, _ in rows], [m["peak_rss_mb"] for _, m in rows]),
            "work": fit_exponent([x for x, m in rows if m.get("work_seconds" if stage != "floor" else "query_seconds")],
                                 [m.get("work_seconds" if stage != "floor" else "query_seconds") for _, m in rows
                                  if m.get("work_seconds" if stage != "floor" else "query_seconds")]),
            "n_sizes": len(rows),
        }
    ratios = []
    for r in sizes:
        floor = r.get("floor", {})
        if "error" in floor or "seconds" not in floor or not _ok(r, "screen"):
            continue
        screen = r["stages"]["screen"]
        job = screen.get("work_seconds") or _job_seconds(screen)
        exposure_screen = (r["stages"]["exposure"]["seconds"] + screen["seconds"]) if _ok(r, "exposure") else None
        ratios.append({"n_persons": r["n_persons"], "floor_seconds": floor["seconds"],
                       "floor_query_seconds": floor.get("query_seconds"), "screen_seconds": screen["seconds"],
                       "screen_job_seconds": job, "ratio_wall": screen["seconds"] / floor["seconds"],
                       "ratio_job": (job / floor["query_seconds"]) if job and floor.get("query_seconds") else None,
                       "ratio_exposure_screen": exposure_screen / floor["seconds"] if exposure_screen else None})
    peaks = []
    for r in sizes:
        measured = {s: r["stages"][s]["peak_rss_mb"] for s in PIPELINE_STAGES if _ok(r, s)}
        if measured:
            stage = max(measured, key=lambda s: measured[s])
            peaks.append({"n_persons": r["n_persons"], "peak_rss_mb": measured[stage], "stage": stage,
                          "complete": _complete(r)})
    extrapolation: dict[str, Any] = {}
    complete = [r for r in sizes if "rows_kept" in r and _complete(r)]
    if complete:
        base = complete[-1]
        per_stage = {}
        for stage in pipeline_stages(base):
            b = exponents[stage]["time"]
            seconds = base["stages"][stage]["seconds"]
            factor = NATIONAL_DISPENSINGS / base["rows_kept"]
            per_stage[stage] = {"measured_seconds": seconds, "exponent": b, "linear_seconds": seconds * factor,
                                "seconds": seconds * factor**b if b is not None else None}
        total = (sum(v["seconds"] for v in per_stage.values())
                 if all(v["seconds"] is not None for v in per_stage.values()) else None)
        extrapolation = {"from_persons": base["n_persons"], "from_dispensings": base["rows_kept"],
                         "stages": per_stage, "total_seconds": total,
                         "linear_total_seconds": sum(v["linear_seconds"] for v in per_stage.values())}
    return {"exponents": exponents, "ratios": ratios, "peaks": peaks, "extrapolation": extrapolation}


# ---------------------------------------------------------------------------------------------- docs
def machine() -> dict[str, Any]:
    """CPU, memory and library versions of this machine."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, flags=re.M)
        info["cpu"] = models[0].strip() if models else platform.machine()
        info["logical_cpus"] = len(re.findall(r"^processor\s*:", cpuinfo, flags=re.M))
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.M)
        info["mem_total_gb"] = int(mem.group(1)) / 1024**2 if mem else None
    except OSError:
        info.update(cpu=platform.machine(), logical_cpus=os.cpu_count(), mem_total_gb=None)
    for module in ("duckdb", "polars", "snakemake"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001
            info[module] = "n/a"
    info["load_average"] = os.getloadavg()
    return info


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _load_range(record: dict[str, Any]) -> list[float]:
    loads = [st["load_before"] for st in record["stages"].values() if "load_before" in st]
    return [min(loads), max(loads)] if loads else []


def render(data: dict[str, Any]) -> str:
    """The "Scaling" section of docs/benchmarks.md from the measurements."""
    sizes = sorted(data["sizes"], key=lambda r: r["n_persons"])
    a = analyse(sizes)
    m = data["machine"]
    loads = [load for record in sizes for load in _load_range(record)] or [m["load_average"][0]]
    out = [SECTION, ""]
    out.append(
        f"Produced by `make bench` (`benchmarks/bench_scale.py`; raw figures in `{data.get('json', 'scale.json')}`), "
        f"last run {data['date']} (sizes measured on: "
        + ", ".join(f"{r['n_persons']:,} {r['started'][:16].replace('T', ' ')} UTC" for r in sizes) + ")."
    )
    out += ["", f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {_f(m.get('mem_total_gb'))} GB RAM; "
                f"{m['platform']}.",
            f"- Python {m['python']}, DuckDB {m['duckdb']}, Polars {m['polars']}, Snakemake {m['snakemake']}.",
            f"- Pipeline config: the demo config with `simulate.n_persons` = size, `resources: {{memory_gb: "
            f"{sizes[0]['config']['resources']['memory_gb'] if sizes else '?'}, threads: "
            f"{sizes[0]['config']['resources']['threads'] if sizes else '?'}}}`; screen of ATC levels 2-5, lags "
            "0/2/5/10 years, strata all/F/M.",
            "- Stages validate -> export (mechanisms, candidates, persistence, trial emulation, report and export "
            "were added for issue 20: sizes measured before then show them as not measured). "
            "Each stage is its own `snakemake --cores 2` process requesting the stage's output files (the "
            "earlier stages' outputs exist, so only the stage's jobs run). **seconds** is the wall time of that "
            "process, including Snakemake's start-up and DAG building; **in jobs** is the span from the first "
            "job's start to the last job's end in Snakemake's log (1 s resolution; with `--cores 2` Snakemake "
            "runs each job in a fresh Python subprocess: a `script:` job, every stage's since 2026-12-07, imports its "
            "stage only, a `run:` job Snakemake and the Snakefile too; so this includes a start-up per job); "
            "**job start-ups** sums, over jobs, the time from a job's start to the creation of its rule log "
            "(the job opens it first: the subprocess's start-up) and "
            "**work** the time from then to the log's last write (both from file times, about 1 s resolution "
            "per job; the FLOOR's work is its query time); "
            "**peak RSS** is the larger of `ru_maxrss` of the Snakemake process or of its largest job "
            "subprocess (exact) and the summed RSS of the whole process tree sampled every 0.2 s (catches "
            "jobs running side by side; the JSON has both). **disp/s** is validated "
            "dispensings per wall second (rows read for validate).",
            "- The FLOOR is one DuckDB pass `COPY (SELECT person_id, atc_code, count(*), min(dispense_date) "
            "FROM read_parquet('<validated prescriptions>/**/*.parquet') GROUP BY ALL) TO ...` in a fresh "
            "process under the pipeline's DuckDB memory limit and threads.",
            f"- Load average (1 min) when the run started: {m['load_average'][0]:.1f} on {m['logical_cpus']} CPUs; "
            f"at the stages' starts {min(loads):.1f}-{max(loads):.1f}. "
            + ("Above the CPU count the machine was shared with other work and timings are inflated; "
               if max(loads) > m["logical_cpus"] + 0.5 else
               "Nothing else ran beside the benchmark (its own jobs make the load); timings still vary by about 10% "
               "between runs; ")
            + "per-stage load averages are in the JSON.",
            ""]

    out += ["### Per size and stage", "",
            "| persons | dispensings | stage | jobs | seconds | in jobs | job start-ups | work | peak RSS | disp/s |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sizes:
        for stage, _ in STAGES:
            s = r["stages"].get(stage, {})
            disp = r.get("rows_read" if stage == "validate" else "rows_kept")
            if stage not in r["stages"] or "absent" in s:
                why = "not measured" if stage not in r["stages"] else "absent (not in the DAG)"
                out.append(f"| {r['n_persons']:,} | | {stage} | | {why} | | | | | |")
                continue
            if "error" in s or "skipped" in s or "seconds" not in s:
                out.append(f"| {r['n_persons']:,} | {_f(disp, '{:,}')} | {stage} | | failed | | | | | |"
                           if "error" in s else f"| {r['n_persons']:,} | | {stage} | | skipped | | | | | |")
                continue
            job = _job_seconds(s)
            rate = disp / s["seconds"] if disp else None
            out.append(f"| {r['n_persons']:,} | {_f(disp, '{:,}')} | {stage} | {len(s.get('jobs', []))} | "
                       f"{s['seconds']:.1f} | {_f(job, '{:.0f}')} | {_f(s.get('job_startup_seconds'), '{:.0f}')} | "
                       f"{_f(s.get('work_seconds'), '{:.0f}')} | "
                       f"{s['peak_rss_mb']:,.0f} MB | {_f(rate, '{:,.0f}')} |")
        f = r.get("floor")
        if f and "error" not in f:
            rate = r["rows_kept"] / f["seconds"]
            out.append(f"| {r['n_persons']:,} | {r['rows_kept']:,} | FLOOR | | {f['seconds']:.1f} | | | "
                       f"{_f(f.get('query_seconds'))} | {f['peak_rss_mb']:,.0f} MB | {rate:,.0f} |")
    out.append("")
    for r in sizes:
        pipeline = sum(r["stages"][s]["seconds"] for s in PIPELINE_STAGES if _ok(r, s))
        last = next((s for s in reversed(PIPELINE_STAGES) if _ok(r, s)), "screen")
        out.append(f"- {r['n_persons']:,} persons: {_f(r.get('rows_kept'), '{:,}')} dispensings, "
                   f"{_f(r.get('cohort_rows'), '{:,}')} in the cohort, {_f(r.get('screen_rows'), '{:,}')} screen rows; "
                   f"validate -> {last} {pipeline:.0f} s ({pipeline / 60:.1f} min) as separate stages"
                   + (f", {r['whole_run']['seconds']:.0f} s ({r['whole_run']['seconds'] / 60:.1f} min; peak RSS "
                      f"{r['whole_run']['peak_rss_mb']:,.0f} MB) as one Snakemake run"
                      if "seconds" in r.get("whole_run", {}) and "error" not in r["whole_run"] else "")
                   + "; whole size incl. simulation and floor "
                   f"{r['total_seconds'] / 60:.1f} min; load average (1 min) at the stages' starts "
                   + "-".join(f"{v:.1f}" for v in _load_range(r)) + ".")
    noops = [r["snakemake_noop_seconds"] for r in sizes if r.get("snakemake_noop_seconds")]
    cohort_jobs = [_job_seconds(r["stages"]["cohort"]) for r in sizes if _ok(r, "cohort")]
    if noops:
        out.append(f"- Fixed cost of Snakemake: a no-op run (all outputs present) takes {min(noops):.1f}-{max(noops):.1f} s; "
                   f"the cohort stage's single job spans {_f(min((c for c in cohort_jobs if c is not None), default=None), '{:.0f}')} s "
                   "at the smallest size, an upper bound on the cost of starting one job subprocess. Stages of many "
                   "jobs pay it per job (" + ", ".join(f"{st}: {len(sizes[-1]['stages'][st].get('jobs', []))}"
                                                      for st in PIPELINE_STAGES if _ok(sizes[-1], st))
                   + " jobs), which dominates at the smallest sizes.")
    silent_slurm = [f"{r['n_persons']:,}" for r in sizes if r.get("slurm_warning")]
    if silent_slurm:
        out.append("- **SLURM's controller did not answer** when these sizes were measured: " + ", ".join(silent_slurm)
                   + ". Every Snakemake start, so every stage's figure, includes about 10 s of waiting for "
                   "`scontrol show config` (docs/cluster.md).")
    errors = [(r["n_persons"], e) for r in sizes for e in r.get("errors", [])]
    if errors:
        out += ["", "Failures:", ""]
        for n, e in errors:
            out.append(f"- {n:,} persons, {e.splitlines()[0]} (last log lines in the JSON)")
    out.append("")

    out += ["### Scaling exponents", "",
            "Least-squares slope of log(seconds), of log(work seconds) and of log(peak RSS) on log(dispensings) "
            "across the sizes (the target is judged on wall seconds; the work exponent leaves out Snakemake's "
            "start-ups, which are fixed per job but swing with the machine's load). "
            f"Target: time exponent <= {TARGET_EXPONENT} for each pipeline stage.", "",
            "| stage | sizes | time exponent | work exponent | RSS exponent | target |", "|---|---:|---:|---:|---:|---|"]
    for stage, e in a["exponents"].items():
        verdict = (_verdict(e["time"] <= TARGET_EXPONENT) if e["time"] is not None else "n/a") \
            if stage in PIPELINE_STAGES else "(not a pipeline stage)"
        out.append(f"| {stage if stage != 'floor' else 'FLOOR'} | {e['n_sizes']} | {_f(e['time'], '{:.2f}')} | "
                   f"{_f(e.get('work'), '{:.2f}')} | "
                   f"{_f(e['rss'], '{:.2f}')} | {verdict} |")
    out.append("")

    out += ["### Screen against the floor", "",
            f"Target: screen <= {TARGET_SCREEN_OVER_FLOOR:g}x floor (judged on wall seconds of each process; "
            "the ratio of the screen's work (without Snakemake's start-ups) to the floor's query time is shown too).", "",
            "| persons | floor s | screen s | screen / floor | screen work / floor query | (exposure + screen) / floor | target |",
            "|---:|---:|---:|---:|---:|---:|---|"]
    for q in a["ratios"]:
        out.append(f"| {q['n_persons']:,} | {q['floor_seconds']:.1f} | {q['screen_seconds']:.1f} | "
                   f"{q['ratio_wall']:.1f}x | {_f(q['ratio_job'], '{:.1f}x')} | {_f(q['ratio_exposure_screen'], '{:.1f}x')} | "
                   f"{_verdict(q['ratio_wall'] <= TARGET_SCREEN_OVER_FLOOR)} |")
    out.append("")

    out += ["### Peak RSS", "", f"Largest peak RSS of any pipeline stage (validate -> export). Target: <= "
            f"{TARGET_PEAK_RSS_GB:g} GB at every size.", "",
            "| persons | peak RSS | stage | simulate (not in the target) | target |", "|---:|---:|---|---:|---|"]
    for p in a["peaks"]:
        r = next(r for r in sizes if r["n_persons"] == p["n_persons"])
        sim = r["stages"].get("simulate", {}).get("peak_rss_mb")
        out.append(f"| {p['n_persons']:,} | {p['peak_rss_mb'] / 1024:.2f} GB | {p['stage']} | "
                   f"{_f(sim / 1024 if sim else None, '{:.2f} GB')} | "
                   f"{_verdict(p['peak_rss_mb'] / 1024 <= TARGET_PEAK_RSS_GB)}{'' if p['complete'] else ' (incomplete)'} |")
    out.append("")

    x = a["extrapolation"]
    out += ["### Extrapolation to national scale", ""]
    if x:
        out += [f"Each pipeline stage's wall seconds at the largest complete size ({x['from_persons']:,} persons, "
                f"{x['from_dispensings']:,} dispensings) scaled by (600 M / dispensings)^exponent, for "
                f"{NATIONAL_PERSONS / 1e6:.1f} M persons and {NATIONAL_DISPENSINGS / 1e6:.0f} M dispensings. The "
                "simulator writes fewer dispensings per person than the national extract (so persons and events "
                "grow less than dispensings here: the cohort and screen, which scale with persons and events, "
                "are extrapolated on the conservative side), and an exponent fitted on few, noisy sizes is "
                "uncertain: read this as an order of magnitude. Fixed costs (Snakemake start-up, one subprocess per "
                "job) flatten the fitted exponents at small sizes, so the last column scales the same measured "
                "seconds linearly (exponent 1) for comparison; the target is judged on the fitted exponents.", "",
                "| stage | measured s | exponent | extrapolated | linear (exponent 1) |", "|---|---:|---:|---:|---:|"]
        for stage, v in x["stages"].items():
            out.append(f"| {stage} | {v['measured_seconds']:.1f} | {_f(v['exponent'], '{:.2f}')} | "
                       f"{_f(v['seconds'] / 60 if v['seconds'] is not None else None, '{:.1f} min')} | "
                       f"{v['linear_seconds'] / 60:.1f} min |")
        total = x["total_seconds"]
        out += [f"| **full run** | | | **{_f(total / 60 if total is not None else None, '{:.1f} min')}** | "
                f"{x['linear_total_seconds'] / 60:.1f} min |", ""]
    else:
        out += ["No size completed every stage; nothing to extrapolate.", ""]

    out += ["### Targets", ""]
    exps = [a["exponents"][s]["time"] for s in PIPELINE_STAGES]
    ratio_ok = all(q["ratio_wall"] <= TARGET_SCREEN_OVER_FLOOR for q in a["ratios"]) if a["ratios"] else None
    rss_ok = all(p["peak_rss_mb"] / 1024 <= TARGET_PEAK_RSS_GB for p in a["peaks"]) if a["peaks"] else None
    exp_ok = all(e <= TARGET_EXPONENT for e in exps) if all(e is not None for e in exps) else None
    total = x.get("total_seconds") if x else None
    worst_ratio = max((q["ratio_wall"] for q in a["ratios"]), default=None)
    worst_rss = max((p["peak_rss_mb"] / 1024 for p in a["peaks"]), default=None)
    worst_exp = max((e for e in exps if e is not None), default=None)
    largest = max(a["ratios"], key=lambda q: q["n_persons"]) if a["ratios"] else None
    out += [f"- Screen <= {TARGET_SCREEN_OVER_FLOOR:g}x floor at the largest size, the national-scale question"
            f"{'' if largest is None else ' (' + format(largest['n_persons'], ',') + ' persons)'}: "
            f"{_verdict(largest['ratio_wall'] <= TARGET_SCREEN_OVER_FLOOR if largest else None)} "
            f"({_f(largest['ratio_wall'] if largest else None, '{:.1f}x')}).",
            f"- Screen <= {TARGET_SCREEN_OVER_FLOOR:g}x floor at every size: {_verdict(ratio_ok)} "
            f"(largest ratio {_f(worst_ratio, '{:.1f}x')}; at small sizes the screen's fixed cost, one "
            f"Snakemake job start-up per ATC level and the gather, outweighs a sub-second floor).",
            f"- Peak RSS <= {TARGET_PEAK_RSS_GB:g} GB at every size: {_verdict(rss_ok)} "
            f"(largest {_f(worst_rss, '{:.2f} GB')}).",
            f"- Time exponent <= {TARGET_EXPONENT} for every pipeline stage: {_verdict(exp_ok)} "
            f"(largest {_f(worst_exp, '{:.2f}')}).",
            f"- Extrapolated full run (validate -> export, {NATIONAL_PERSONS / 1e6:.1f} M persons, "
            f"{NATIONAL_DISPENSINGS / 1e6:.0f} M dispensings) <= {TARGET_FULL_RUN_MIN:g} min: "
            f"{_verdict(total / 60 <= TARGET_FULL_RUN_MIN if total is not None else None)} "
            f"({_f(total / 60 if total is not None else None, '{:.1f} min')}).",
            *_largest_size_targets(sizes),
            f"- Sizes measured: {', '.join(format(r['n_persons'], ',') for r in sizes)} persons.", ""]
    return "\n".join(out)


def _largest_size_targets(sizes: list[dict[str, Any]]) -> list[str]:
    """The issue's targets at the largest size that measured every stage to the export (3M persons in
    `make bench`): the pipeline validate -> export in minutes, and the candidates and mechanisms stages."""
    complete = [r for r in sizes if _complete(r) and "export" in pipeline_stages(r)]
    if not complete:
        return ["- Pipeline validate -> export and the candidates and mechanisms stages: n/a (no size measured "
                "every stage to the export)."]
    r = complete[-1]
    pipeline = sum(r["stages"][s]["seconds"] for s in pipeline_stages(r))
    whole = r.get("whole_run")
    if whole and "error" not in whole:
        lines = [f"- Pipeline validate -> export <= {TARGET_PIPELINE_MIN:g} min at the largest size measured to the "
                 f"export ({r['n_persons']:,} persons; the target is for 3,000,000), as one Snakemake run: "
                 f"{_verdict(whole['seconds'] / 60 <= TARGET_PIPELINE_MIN)} ({whole['seconds'] / 60:.1f} min; "
                 f"the stages as separate Snakemake processes, each with its own start-up, {pipeline / 60:.1f} min)."]
    else:
        lines = [f"- Pipeline validate -> export <= {TARGET_PIPELINE_MIN:g} min at the largest size measured to the "
                 f"export ({r['n_persons']:,} persons; the target is for 3,000,000), the stages as separate "
                 f"Snakemake processes: {_verdict(pipeline / 60 <= TARGET_PIPELINE_MIN)} ({pipeline / 60:.1f} min)."]
    for stage, limit in TARGET_STAGE_SECONDS.items():
        seconds = r["stages"][stage]["seconds"]
        lines.append(f"- {stage.capitalize()} stage <= {limit:g} s at {r['n_persons']:,} persons (target at "
                     f"3,000,000): {_verdict(seconds <= limit)} ({seconds:.1f} s, Snakemake start-up included).")
    return lines


def write_section(doc: Path, section: str) -> None:
    """Replace the "## Scaling" section of doc (up to the next "## " heading) or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = "\n".join(lines[:start]), "\n".join(lines[end:])
        new = (before.rstrip("\n") + "\n\n" if before.strip() else "") + section.rstrip("\n") + "\n"
        if after.strip():
            new += "\n" + after.rstrip("\n") + "\n"
    doc.write_text(new)


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-snakemake":
        return child_snakemake(sys.argv[2], sys.argv[3:])
    if len(sys.argv) > 1 and sys.argv[1] == "--child-floor":
        return child_floor(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000, 3_000_000],
                        help="numbers of simulated persons")
    parser.add_argument("--workdir", default="/tmp/repurpose-bench", help="one Snakemake work dir per size (outside git)")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks.md"), help="doc whose Scaling section is rewritten")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/scale.json"), help="raw measurements")
    parser.add_argument("--append", action="store_true", help="merge the sizes into the existing JSON (same size replaced)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the doc from the JSON without running")
    parser.add_argument("--no-whole-run", dest="whole_run", action="store_false",
                        help="skip the second measurement of validate -> export as one Snakemake run")
    parser.add_argument("--reuse-simulation", action="store_true",
                        help="keep the simulated registries of an earlier run of the same size and seed in --workdir "
                             "(the simulate stage is then up to date; it is not part of the targets)")
    parser.add_argument("--keep", action="store_true", help="keep each size's work dir (default: deleted after measuring)")
    parser.add_argument("--memory-gb", type=float, default=8, help="resources.memory_gb (DuckDB memory limit)")
    parser.add_argument("--threads", type=int, default=2, help="resources.threads and snakemake --cores")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    json_path = Path(args.json)
    previous = json.loads(json_path.read_text()) if json_path.exists() and (args.append or args.render_only) else None
    if args.render_only:
        if previous is None:
            parser.error(f"{json_path} does not exist")
        data = previous
    else:
        data = {"machine": machine(), "sizes": list(previous["sizes"]) if previous else []}
        for n in args.sizes:
            free = shutil.disk_usage(Path(args.workdir).parent if not Path(args.workdir).exists() else args.workdir).free
            print(f"== {n:,} persons (free disk {free / 1e9:.0f} GB)", flush=True)
            record = run_size(n, args)
            data["sizes"] = [r for r in data["sizes"] if r["n_persons"] != n] + [record]
            data["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(data, indent=1, default=str))  # after every size: a crash loses one size
            print(f"== {n:,} persons: {record['total_seconds'] / 60:.1f} min", flush=True)
    for record in data["sizes"]:  # sizes measured by an older driver: split jobs from the saved logs
        if not any("work_seconds" in st for st in record["stages"].values()):
            annotate_work(record, Path(args.workdir) / "logs" / str(record["n_persons"]))
    json_path.write_text(json.dumps(data, indent=1, default=str))
    try:
        data["json"] = str(json_path.resolve().relative_to(ROOT))
    except ValueError:
        data["json"] = str(json_path)
    section = render(data)
    write_section(Path(args.out), section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
