"""Benchmark of the drug ranking against planted truth (prints figures; asserts nothing).

For a finished run on simulated registries (a results directory with `simulated/ground_truth.json`,
`screen/dwas.parquet` and `candidates/drug_ranking.csv`), prints the average precision of the planted causal
protective substances (roles causal_protective and mechanism) among all fitted level-5 substances, and the
number of null substances in the top 20, for three orderings of the same run
(`repurpose.dwas.ranking_benchmark`): the ranking before issue 19 reproduced on this run's evidence, the
plain screen z at the main lag, and the new ranking. Substances an ordering leaves out go to the bottom.

    .venv/bin/python benchmarks/bench_ranking.py --results results --config config/config.yaml
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import polars as pl

from repurpose.dwas.ranking_benchmark import compare_orderings
from repurpose.study_config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="a finished run's results directory")
    parser.add_argument("--config", type=Path, default=Path("config/config.yaml"), help="the run's config")
    args = parser.parse_args()
    truth_path = args.results / "simulated/ground_truth.json"
    if not truth_path.is_file():
        raise SystemExit(f"{truth_path} not found: the benchmark needs a run on simulated registries (make run)")
    config = load_config(args.config)
    table = compare_orderings(
        pl.read_parquet(args.results / "screen/dwas.parquet"),
        pl.read_csv(args.results / "candidates/drug_ranking.csv", infer_schema_length=None),
        json.loads(truth_path.read_text(encoding="utf-8")),
        config["candidates"],
    )
    print(f"drug ranking vs planted truth: {args.results} ({platform.node()}, {platform.processor() or platform.machine()})")
    with pl.Config(fmt_str_lengths=60, tbl_width_chars=230, tbl_hide_dataframe_shape=True):
        print(table)


if __name__ == "__main__":
    main()
