"""Command-line entry point: `repurpose <command>`. The pipeline itself runs through Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from repurpose import __version__


def _simulate(args: argparse.Namespace) -> int:
    from repurpose.simulate import simulate_registries, write_native_extracts

    summary = simulate_registries(
        args.out,
        n_persons=args.n_persons,
        seed=args.seed,
        n_corrupt_rows=args.corrupt_rows,
        study_start=args.study_start,
        study_end=args.study_end,
    )
    if args.native:
        summary["native"] = write_native_extracts(args.out, args.native)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from repurpose.config import load_config
    from repurpose.ingest import validate_extracts

    report = validate_extracts(
        load_config(*args.config), f"{args.results}/validated", f"{args.results}/validation"
    )
    print(
        json.dumps(
            {
                k: {"rows_read": v["rows_read"], "rows_rejected": v["rows_rejected"]}
                for k, v in report["extracts"].items()
            },
            indent=2,
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from repurpose.config import load_config
    from repurpose.export import collect_sources, export_results

    sources = collect_sources(args.results) + list(args.include) if args.include else None
    entries = export_results(load_config(*args.config), args.results, args.out, sources=sources)
    print(json.dumps({"exported": len(entries), "manifest": f"{args.out}/manifest.csv"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repurpose", description=__doc__)
    parser.add_argument("--version", action="version", version=f"repurpose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="write simulated registries with planted truth")
    sim.add_argument("--out", required=True, help="output directory")
    sim.add_argument("--n-persons", type=int, default=50_000)
    sim.add_argument("--seed", type=int, default=2024)
    sim.add_argument(
        "--corrupt-rows", type=int, default=0, help="invalid rows to inject (exercises validation)"
    )
    sim.add_argument("--study-start", default="2004-01-01")
    sim.add_argument("--study-end", default="2023-12-31")
    sim.add_argument(
        "--native", help="also write registry-native CSV extracts (Norwegian headers, ';', Latin-1) here"
    )
    sim.set_defaults(handler=_simulate)

    val = commands.add_parser("validate", help="validate extracts outside Snakemake (same code as the rule)")
    val.add_argument(
        "--config", nargs="+", default=["config/config.yaml"], help="config files, later override earlier"
    )
    val.add_argument("--results", default="results")
    val.set_defaults(handler=_validate)

    exp = commands.add_parser(
        "export", help="copy aggregate outputs (disclosure-controlled) to an export folder with a manifest"
    )
    exp.add_argument(
        "--config", nargs="+", default=["config/config.yaml"], help="config files, later override earlier"
    )
    exp.add_argument("--results", default="results")
    exp.add_argument("--out", default="results/export")
    exp.add_argument("--include", nargs="*", default=[], help="extra files to export (person-level ones are refused)")
    exp.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
