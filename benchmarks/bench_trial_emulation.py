"""Speed of the trial emulation on a national-scale simulated registry (issue 17's goal: under 5 minutes with 200
bootstrap replicates on 2 cores for the MS patients of a 1M-person registry).

The registries come from the simulator (`repurpose.simulate.simulate_registries`, clinical data on): its
population, MS registry, treatments, relapses, EDSS, sick leave and diagnosis extract (for the safety outcome) have
the validated columns, so the stage reads them as it would read results/validated/. The time measured is `run_trial_emulation` (the rule's call): reading,
eligibility, clones, weights, outcomes, estimates, the bootstrap (weights refitted in every replicate), the
diagnostics, the released tables and the page.

    .venv/bin/python benchmarks/bench_trial_emulation.py                     # simulates 1M persons first (~2 min)
    .venv/bin/python benchmarks/bench_trial_emulation.py --registries DIR    # an existing simulation
    .venv/bin/python benchmarks/bench_trial_emulation.py --persons 200000 --replicates 50
    .venv/bin/python benchmarks/bench_trial_emulation.py --registries DIR --no-sustained   # the start-only estimand
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import polars as pl

from repurpose.config import validate_config
from repurpose.layout import TRIAL_EMULATION_TABLES
from repurpose.simulate import simulate_registries
from repurpose.trial_emulation import run_trial_emulation

EXTRACTS = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss", "sick_leave", "diagnoses")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--registries", type=Path, default=None, help="a folder simulate_registries wrote")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-sustained", action="store_true", help="without the sustained per-protocol estimand")
    args = parser.parse_args()
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-trial-") as folder:
        registries = args.registries
        generated = 0.0
        if registries is None:
            started = time.perf_counter()
            registries = Path(folder) / "simulated"
            simulate_registries(registries, n_persons=args.persons, seed=args.seed)
            generated = time.perf_counter() - started
        config = validate_config({
            "inputs": {name: {"path": str(registries / f"{name}.parquet")} for name in EXTRACTS}
            | {"prescriptions": {"path": str(registries / "prescriptions")}},
            "trial_emulation": {"bootstrap_replicates": args.replicates, "sustained": not args.no_sustained},
            "resources": {"threads": args.threads},
        })  # fmt: skip
        outputs = {f"{n}_csv" if n in ("estimates", "positivity") else n: f"{folder}/{n}.csv" for n in TRIAL_EMULATION_TABLES}
        t0 = time.perf_counter()
        result = run_trial_emulation(
            config, **{name: str(registries / f"{name}.parquet") for name in EXTRACTS}, cohort=f"{folder}/cohort.parquet",
            html=f"{folder}/trial_emulation.html", **outputs,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        n_persons = pl.scan_parquet(registries / "population.parquet").select(pl.len()).collect().item()
        n_ms = pl.scan_parquet(registries / "ms_registry.parquet").select(pl.len()).collect().item()
        estimates = pl.read_csv(f"{folder}/estimates.csv")
        primary = estimates.filter(pl.col("outcome").is_in(["confirmed_worsening", "serious_infection"])
                                   & pl.col("measure").is_in(["risk_difference_5y", "hazard_ratio"]))  # fmt: skip
        print(f"persons {n_persons:,}; MS patients {n_ms:,}; eligible {result['n_eligible']:,}; replicates {args.replicates}")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"simulation {generated:.1f} s; trial emulation {seconds:.1f} s ({args.threads} threads, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average {load})")  # fmt: skip
        print(json.dumps(primary.to_dicts(), indent=1))


if __name__ == "__main__":
    main()
