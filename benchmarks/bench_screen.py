"""Benchmark of the pipeline stages and of the screen against lifelines (prints figures; asserts nothing).

Simulates N persons, then runs validate -> cohort -> exposure -> screen (all configured ATC levels, lags
and sex strata), each stage in a fresh process so its peak memory is its own, and prints seconds and
peak RSS per stage, fits per second, and the time per class of lifelines CoxTimeVaryingFitter on the
explicitly split data of the same model for a sample of classes. Then the covariate-adjusted screen on the
same exposures (`screen.adjust` with `--covariates` as categorical covariates and `--covariate-strata` as
strata; the model `coxph(... ~ exposed + factor(sex) + factor(education) + strata(birth_cohort))`) and its
time against the stratified screen's.

    .venv/bin/python benchmarks/bench_screen.py --n-persons 300000
    .venv/bin/python benchmarks/bench_screen.py --n-persons 1000000 --levels 3 --lifelines-classes 0
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.study_config import SIMULATED_CLINICAL_EXTRACTS, load_config

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _run_stage(name: str, config: dict[str, Any], work: Path, queue: mp.Queue) -> None:
    started = time.perf_counter()
    if name == "simulate":
        from repurpose.simulate import simulate_registries

        simulate_registries(work / "simulated", n_persons=config["simulate"]["n_persons"], seed=config["simulate"]["seed"])
    elif name == "validate":
        from repurpose.registry.ingest import validate_extracts

        validate_extracts(config, results_dir=work)
    elif name == "cohort":
        from repurpose.registry.cohort import run_cohort

        run_cohort(config, population=work / "validated/population.parquet", ms_registry=work / "validated/ms_registry.parquet",
                   cohort=work / "cohort.parquet", flow=work / "flow.json")
    elif name == "exposure":
        from repurpose.dwas.exposure import build_exposures

        prescriptions = sorted(str(p) for p in (work / "validated/prescriptions").glob("*.parquet"))
        build_exposures(config, prescriptions=prescriptions, cohort=work / "cohort.parquet",
                        exposures=[work / f"exposure_{level}.parquet" for level in config["screen"]["atc_levels"]])
    elif name in ("screen", "screen_covariates"):
        from repurpose.dwas.screen import gather_screen, screen_level

        suffix = "" if name == "screen" else "_covariates"
        parts = []
        for level in config["screen"]["atc_levels"]:
            part = work / f"screen_{level}{suffix}.parquet"
            screen_level(config, cohort=work / "cohort.parquet", exposure=work / f"exposure_{level}.parquet", level=level, part=part)
            parts.append(str(part))
        gather_screen(config, parts=parts, fits=work / f"fits{suffix}.parquet", dwas=work / f"dwas{suffix}.parquet",
                      dwas_csv=work / f"dwas{suffix}.csv")
    queue.put((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_stage(name: str, config: dict[str, Any], work: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one stage run in a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_stage, args=(name, config, work, queue))
    process.start()
    seconds, peak_mb = queue.get()
    process.join()
    return seconds, peak_mb


def lifelines_seconds_per_class(config: dict[str, Any], work: Path, level: int, n_classes: int) -> tuple[float, float, list[str]]:
    """Seconds per fit of lifelines CTV on split data vs ours for the same classes (lag 0, both sexes)."""
    from lifelines import CoxTimeVaryingFitter

    sys.path.insert(0, str(TESTS))  # the explicit split rows are test-only code (tests/split_intervals.py)
    from split_intervals import split_class_intervals

    from repurpose.dwas.risk_sets import prepare_cohort
    from repurpose.dwas.screen import screen_exposures

    cohort = pl.read_parquet(work / "cohort.parquet")
    exposures = pl.read_parquet(work / f"exposure_{level}.parquet")
    dwas = pl.read_parquet(work / "dwas.parquet").filter(pl.col("atc_level") == level, pl.col("lag_years") == 0,
                                                          pl.col("sex") == "all", pl.col("status") == "ok")
    codes = dwas.sort("n_exposed", descending=True)["atc_code"].to_list()
    sample = codes[:: max(1, len(codes) // n_classes)][:n_classes]
    strata = config["screen"]["adjust"]["strata"]
    prepared = prepare_cohort(cohort, config["screen"]["birth_cohort_band_years"]).drop("entry", "exit")
    started = time.perf_counter()
    for code in sample:
        split = split_class_intervals(prepared, exposures.filter(pl.col("atc_code") == code), 0)
        frame = split.select("start", "stop", "event", "exposed", *strata).to_pandas()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CoxTimeVaryingFitter().fit(frame, event_col="event", start_col="start", stop_col="stop", strata=strata)
    lifelines_per_class = (time.perf_counter() - started) / len(sample)
    one_level = {**config, "screen": {**config["screen"], "lags_years": [0], "sex_strata": ["all"]}}
    subset = exposures.filter(pl.col("atc_code").is_in(sample))
    started = time.perf_counter()
    screen_exposures(cohort, subset, one_level, level)
    ours_per_class = (time.perf_counter() - started) / len(sample)
    return lifelines_per_class, ours_per_class, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-persons", type=int, default=300_000)
    parser.add_argument("--work", default="results/bench")
    parser.add_argument("--lifelines-classes", type=int, default=3, help="classes timed with lifelines")
    parser.add_argument("--lifelines-level", type=int, default=4)
    parser.add_argument("--levels", default=None, help="ATC levels to build and screen, e.g. 3 or 2,3 (default: the config's)")
    parser.add_argument("--covariates", default="sex,education", help="covariates of the adjusted screen ('' to skip it)")
    parser.add_argument("--covariate-strata", default="birth_cohort", help="strata of the adjusted screen")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of the two screens (the fastest of each is kept)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the simulation, validation, cohort and exposures of an earlier run in --work (time the screens only)")
    args = parser.parse_args()

    work = Path(args.work) / f"n{args.n_persons}"
    work.mkdir(parents=True, exist_ok=True)
    config = load_config("config/config.yaml")
    config["simulate"]["n_persons"] = args.n_persons
    config["simulate"]["n_corrupt_rows"] = 0
    for name in ("population", "ms_registry"):
        config["inputs"][name]["path"] = str(work / "simulated" / f"{name}.parquet")
    config["inputs"]["prescriptions"]["path"] = str(work / "simulated" / "prescriptions")
    for name in SIMULATED_CLINICAL_EXTRACTS:  # the demo's clinical extracts: not read by these stages
        config["inputs"].pop(name, None)
    config["resources"]["tmpdir"] = str(work / "tmp")
    if args.levels:
        config["screen"]["atc_levels"] = [int(level) for level in args.levels.split(",")]

    timings: dict[str, tuple[float, float]] = {}
    before_screen = ("simulate", "validate", "cohort", "exposure")
    reused = args.reuse and all((work / f"exposure_{level}.parquet").exists() for level in config["screen"]["atc_levels"])
    for stage in ("screen",) if reused else (*before_screen, "screen"):
        timings[stage] = run_stage(stage, config, work)
        print(f"{stage:>9}: {timings[stage][0]:8.1f} s   peak RSS {timings[stage][1]:8.0f} MB", flush=True)

    report = json.loads((work / "validation/report.json").read_text())
    flow = json.loads((work / "flow.json").read_text())
    dwas = pl.read_parquet(work / "dwas.parquet")
    n_fits = int((dwas["status"] != "skipped").sum())
    after_validation = sum(timings.get(s, (float("nan"),))[0] for s in ("cohort", "exposure", "screen"))
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}")
    print(f"persons: {args.n_persons:,}  cohort: {flow['persons_in_cohort']:,}  cases: {flow['events']:,}  "
          f"dispensings: {report['extracts']['prescriptions']['rows_kept']:,}")
    print(f"fits: {dwas.height:,} rows, {n_fits:,} fitted "
          f"({dwas.select(pl.col('atc_code').n_unique()).item():,} classes x lags x sex strata)")
    print(f"cohort + exposure + screen after validation: {after_validation:.1f} s; screen fits per second: "
          f"{n_fits / timings['screen'][0]:.0f}")
    print(f"peak RSS over stages: {max(t[1] for t in timings.values()):.0f} MB")
    if args.lifelines_classes and args.lifelines_level in config["screen"]["atc_levels"]:
        lifelines_s, ours_s, sample = lifelines_seconds_per_class(config, work, args.lifelines_level, args.lifelines_classes)
        print(f"lifelines CTV per class (level {args.lifelines_level}, lag 0, both sexes; {', '.join(sample)}): {lifelines_s:.2f} s; "
              f"ours on the same classes: {ours_s * 1000:.1f} ms; ratio {lifelines_s / ours_s:.0f}x")
        print(f"ours per fit over the whole screen: {timings['screen'][0] / max(n_fits, 1) * 1000:.2f} ms; "
              f"ratio to lifelines {lifelines_s / (timings['screen'][0] / max(n_fits, 1)):.0f}x")
    if args.covariates:
        adjust = {"strata": [v for v in args.covariate_strata.split(",") if v], "covariates": args.covariates.split(",")}
        adjusted = {**config, "screen": {**config["screen"], "adjust": adjust}}
        # Alternating runs, so that both screens see the same load on a shared machine; the fastest of each.
        stratified_s, adjusted_s = [timings["screen"][0]], []
        for repeat in range(args.repeat):
            if repeat:
                stratified_s.append(run_stage("screen", config, work)[0])
            seconds, peak_mb = run_stage("screen_covariates", adjusted, work)
            adjusted_s.append(seconds)
            print(f"  run {repeat + 1}: stratified {stratified_s[-1]:.1f} s, covariate-adjusted {seconds:.1f} s, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        fitted = int((pl.read_parquet(work / "dwas_covariates.parquet")["status"] != "skipped").sum())
        print(f"stratified screen (strata {', '.join(config['screen']['adjust']['strata'])}): {min(stratified_s):.1f} s, "
              f"{n_fits:,} fits; covariate-adjusted screen (strata {', '.join(adjust['strata']) or 'none'}; covariates "
              f"{', '.join(adjust['covariates'])}): {min(adjusted_s):.1f} s, {fitted:,} fits, peak RSS {peak_mb:.0f} MB; "
              f"ratio of the fastest runs {min(adjusted_s) / min(stratified_s):.2f}")


if __name__ == "__main__":
    main()
