"""Command-line entry point: `repurpose <command>`. The pipeline itself runs through Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable

import yaml

from repurpose import __version__
from repurpose.config import ConfigError, deep_update
from repurpose.federation.distributed import coordinator_round, result_path_for, site_round
from repurpose.federation.package import pool_packages, rank_pooled, released_study_tables, write_site_package
from repurpose.layout import WORKFLOW_SNAKEFILE, results_layout
from repurpose.registry.ingest import validate_extracts
from repurpose.release.export import collect_sources, export_results
from repurpose.run_status import run_status_line
from repurpose.simulate.registries import simulate_registries, write_native_extracts
from repurpose.study_config import load_config, merge_over_defaults, read_config_file

DEFAULTS_CONFIG = WORKFLOW_SNAKEFILE.parent / "config" / "config.yaml"
"""The demo config a study config is merged over (as the Snakefile does)."""


def checked_study_config(paths: list[str]) -> dict:
    """The study config files merged over the defaults and validated, as the workflow will see them."""
    merged: dict = {}
    for path in paths:
        merged = deep_update(merged, read_config_file(path))
    return merge_over_defaults(merged, DEFAULTS_CONFIG)


def _check_config(args: argparse.Namespace) -> int:
    config = checked_study_config(args.configs)
    print(yaml.safe_dump(config, sort_keys=False, default_flow_style=None), end="")
    print(f"# {', '.join(args.configs)}: no problems found", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    print(run_status_line(args.directory))
    return 0


def snakemake_command(args: argparse.Namespace) -> list[str]:
    """The Snakemake command line that `repurpose run` stands for (printed, so it can be learnt)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(WORKFLOW_SNAKEFILE), "--cores", str(args.cores),
               "--rerun-incomplete", "--printshellcmds"]
    command += ["--configfile", *args.configs] if args.configs else []
    command += ["--directory", args.directory] if args.directory else []
    command += ["--profile", args.profile] if args.profile else []
    command += ["--dry-run"] if args.dry_run else []
    command += ["--force-use-threads"] if args.in_process else []
    return command + list(args.targets)


SLURM_ANSWER_SECONDS = 3.0
"""How long `scontrol show config` may take before `repurpose run` warns that SLURM does not answer."""


def unanswered_slurm_warning(
    which: Callable[[str], str | None] = shutil.which, run: Callable[..., object] = subprocess.run
) -> str | None:
    """A warning when SLURM's client tools are installed but its controller does not answer in time.

    Snakemake's SLURM executor plugin (installed with the workflow) runs `scontrol show config` whenever
    Snakemake starts, waiting up to 10 s for it: with a silent controller every job of a local run pays
    that wait (measured: Snakemake's start-up 10.4 s against 1.5 s with the controller answering)."""
    if which("scontrol") is None:
        return None
    try:
        run(["scontrol", "show", "config"], capture_output=True, timeout=SLURM_ANSWER_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return (f"SLURM's `scontrol show config` did not answer within {SLURM_ANSWER_SECONDS:g} s: Snakemake's SLURM "
                "plugin asks it whenever Snakemake starts, so every job will wait about 10 s for it. Start the SLURM "
                "controller (or run where it answers) to save that wait.")
    return None


def _run(args: argparse.Namespace) -> int:
    checked_study_config(args.configs)
    command = snakemake_command(args)
    warning = unanswered_slurm_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if args.unlock:
        subprocess.run([*command, "--unlock"], check=True)
    print("running: " + " ".join(command), file=sys.stderr)
    status = subprocess.run(command).returncode
    print(f"status: {run_status_line(args.directory or '.')}", file=sys.stderr)
    if status:
        print(f"The run stopped (Snakemake exit status {status}); the log names the failed rule and its log file. "
              "After a crash or a killed session, rerun with --unlock.", file=sys.stderr)
    return status


def _simulate(args: argparse.Namespace) -> int:
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
    report = validate_extracts(load_config(*args.config), results_dir=args.results)
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
    sources = collect_sources(args.results) + list(args.include) if args.include else None
    entries = export_results(load_config(*args.config), results_dir=args.results, export_dir=args.out, sources=sources)
    print(json.dumps({"exported": len(entries), "manifest": f"{args.out}/manifest.csv"}, indent=2))
    return 0


def _site_package(args: argparse.Namespace) -> int:
    paths = results_layout(args.results)
    manifest = write_site_package(
        load_config(*args.config), dwas=paths.dwas(), flow=paths.cohort_flow(), validation=paths.validation_report(),
        package=args.out or paths.site_package_dir(), run_provenance=[paths.report_provenance(), paths.site_package_manifest()],
        **released_study_tables(paths),
    )
    print(json.dumps({"manifest": str(manifest)}, indent=2))
    return 0


def _pool(args: argparse.Namespace) -> int:
    summary = pool_packages(
        args.packages, args.out, allow_version_mismatch=args.allow_version_mismatch, start_distributed=not args.no_rounds
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _pool_rank(args: argparse.Namespace) -> int:

    overrides: dict = {}
    for path in args.config:
        with open(path, encoding="utf-8") as handle:
            overrides.update(yaml.safe_load(handle) or {})
    print(json.dumps(rank_pooled(args.pooled, cox_path=args.cox, overrides=overrides), indent=2))
    return 0


def _site_round(args: argparse.Namespace) -> int:
    response = site_round(load_config(*args.config), args.results, args.round_file, args.out, args.site_label,
                          package=args.package)
    print(json.dumps({"response": str(response)}, indent=2))
    return 0


def _pool_round(args: argparse.Namespace) -> int:
    next_round = coordinator_round(args.rounds_dir, args.responses, result_path=args.result)
    done = next_round is None
    result = args.result or str(result_path_for(args.rounds_dir))
    print(json.dumps({"another_round": not done, "next_round": None if done else str(next_round),
                      "result": result if done else None}, indent=2))
    return 0


EXAMPLES = {
    "run": "repurpose run my_study.yaml --cores 8            # on a cluster: --profile workflow/profiles/slurm",
    "status": "repurpose status --directory /projects/ms-dwas",
    "check-config": "repurpose check-config my_study.yaml",
    "simulate": "repurpose simulate --out sim --n-persons 200000 --seed 7",
    "validate": "repurpose validate --config my_study.yaml --results results",
    "export": "repurpose export --config my_study.yaml --results results --out results/export",
    "site-package": "repurpose site-package --config site.yaml --results results",
    "pool": "repurpose pool norway/site_package denmark/site_package sweden/site_package --out pooled",
    "pool-rank": "repurpose pool-rank pooled --config centre.yaml",
    "site-round": "repurpose site-round round_001.parquet --config site.yaml --site-label norway",
    "pool-round": "repurpose pool-round pooled/rounds responses/response_001_*.parquet",
}
"""One example per subcommand, shown at the end of its --help."""


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Help that states each option's default where it has one (not for flags or empty defaults)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and "%(default)" not in text and action.default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repurpose", description=__doc__)
    parser.add_argument("--version", action="version", version=f"repurpose {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="check the study config, then run the whole pipeline (wraps Snakemake)",
        description="Check the study config, then run the pipeline with Snakemake. Outputs go to results/ under "
        "the working directory (--directory).",
    )
    run.add_argument("configs", nargs="*", help="study config files (later override earlier), merged over the demo config")
    run.add_argument("--cores", type=int, default=2, help="cores Snakemake may use at once")
    run.add_argument("--profile", default=None, help="Snakemake profile folder, e.g. workflow/profiles/slurm for a cluster")
    run.add_argument("--directory", default=None, help="working directory (results/ is written there)")
    run.add_argument("--dry-run", action="store_true", help="list the jobs that would run; run nothing")
    run.add_argument("--unlock", action="store_true", help="remove the lock a crashed run left, then run")
    run.add_argument(
        "--in-process",
        action="store_true",
        help="run the `run:` jobs (the simulator) as threads of one Snakemake process: a demo or a small study; "
        "validation and stage jobs are bare Python processes either way, one per job",
    )
    run.add_argument("--targets", nargs="*", default=[], help="rules or files to build (default: everything)")
    run.set_defaults(handler=_run)

    status = commands.add_parser(
        "status", help="one line on the latest run: jobs done, running or failed, time left",
        description="Read the latest Snakemake log of the working directory and print the run's state. "
        "Use it while `repurpose run` works in another terminal.",
    )
    status.add_argument("--directory", default=".", help="working directory of the run")
    status.set_defaults(handler=_status)

    check = commands.add_parser(
        "check-config", help="print the merged study config and every problem in it, before any job runs",
        description="Merge the study config files over the demo config, validate them (schema and cross-key "
        "rules) and print the result.",
    )
    check.add_argument("configs", nargs="+", help="study config files (later override earlier)")
    check.set_defaults(handler=_check_config)

    sim = commands.add_parser("simulate", help="write simulated registries with planted truth")
    sim.add_argument("--out", required=True, help="output directory")
    sim.add_argument("--n-persons", type=int, default=50_000, help="persons in the simulated population")
    sim.add_argument("--seed", type=int, default=2024, help="random seed: the same seed gives the same registries")
    sim.add_argument(
        "--corrupt-rows", type=int, default=0, help="invalid rows to inject (exercises validation)"
    )
    sim.add_argument("--study-start", default="2004-01-01", help="first day of the simulated prescription register")
    sim.add_argument("--study-end", default="2023-12-31", help="last day of follow-up")
    sim.add_argument(
        "--native", help="also write registry-native CSV extracts (Norwegian headers, ';', Latin-1) here"
    )
    sim.set_defaults(handler=_simulate)

    val = commands.add_parser("validate", help="validate extracts outside Snakemake (same code as the rule)")
    val.add_argument(
        "--config", nargs="+", default=["config/config.yaml"], help="config files, later override earlier"
    )
    val.add_argument("--results", default="results", help="results directory the validated files go to")
    val.set_defaults(handler=_validate)

    exp = commands.add_parser(
        "export", help="copy aggregate outputs (disclosure-controlled) to an export folder with a manifest"
    )
    exp.add_argument(
        "--config", nargs="+", default=["config/config.yaml"], help="config files, later override earlier"
    )
    exp.add_argument("--results", default="results", help="results directory of the finished run")
    exp.add_argument("--out", default="results/export", help="export folder (rebuilt from scratch)")
    exp.add_argument("--include", nargs="*", default=[], help="extra files to export (person-level ones are refused)")
    exp.set_defaults(handler=_export)

    site = commands.add_parser(
        "site-package", help="federation, site: write results/site_package/ (aggregates + manifest) after the run"
    )
    site.add_argument("--config", nargs="+", required=True, help="the site's config files (naming the shared protocol)")
    site.add_argument("--results", default="results", help="results directory of the site's finished run")
    site.add_argument("--out", default=None, help="package directory (default <results>/site_package)")
    site.set_defaults(handler=_site_package)

    pooler = commands.add_parser(
        "pool", help="federation, coordinating centre: check and meta-analyse site packages, start the Cox rounds"
    )
    pooler.add_argument("packages", nargs="+", help="site package directories")
    pooler.add_argument("--out", required=True, help="pooled results directory")
    pooler.add_argument(
        "--allow-version-mismatch", action="store_true", help="warn (not refuse) when ATC index or pipeline versions differ"
    )
    pooler.add_argument("--no-rounds", action="store_true", help="meta-analysis only; do not start the exact pooled Cox rounds")
    pooler.set_defaults(handler=_pool)

    ranker = commands.add_parser(
        "pool-rank", help="federation, coordinating centre: screen table, rankings and report from the pooled results"
    )
    ranker.add_argument("pooled", help="pooled results directory written by `repurpose pool`")
    ranker.add_argument("--cox", default=None, help="exact pooled Cox result table (default: <pooled>/cox.parquet when the rounds have finished)")
    ranker.add_argument(
        "--config", nargs="*", default=[], help="the centre's non-design settings (inputs.atc_index, inputs.drug_targets, report.*)"
    )
    ranker.set_defaults(handler=_pool_rank)
    rounder = commands.add_parser(
        "site-round", help="federation, site: evaluate a round file of the exact pooled Cox (score, information)"
    )
    rounder.add_argument("round_file", help="round_NNN.parquet received from the coordinating centre")
    rounder.add_argument("--config", nargs="+", required=True, help="the site's config files (naming the shared protocol)")
    rounder.add_argument("--results", default="results", help="results directory with cohort/ and exposure/")
    rounder.add_argument("--out", default="results/site_rounds", help="where response_NNN_<site>.parquet is written")
    rounder.add_argument("--site-label", required=True, help="the site's name in the federation")
    rounder.add_argument(
        "--package", default=None,
        help="the site's released package (default <results>/site_package): only fits it shows are answered",
    )
    rounder.set_defaults(handler=_site_round)

    updater = commands.add_parser(
        "pool-round", help="federation, coordinating centre: sum the site responses, write the next round or the result"
    )
    updater.add_argument("rounds_dir", help="directory of the round files (e.g. pooled/rounds)")
    updater.add_argument("responses", nargs="+", help="the sites' response_NNN_<site>.parquet files of the latest round")
    updater.add_argument("--result", default=None, help="pooled Cox result file (default <rounds_dir>/../cox.parquet)")
    updater.set_defaults(handler=_pool_round)
    for name, command in commands.choices.items():
        command.formatter_class = HelpWithDefaults
        command.epilog = f"example:\n  {EXAMPLES[name]}"
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
