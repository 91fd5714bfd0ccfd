# The jobs of the validation's rules and of the pipeline's stage rules (cohort -> export), run by Snakemake's
# `script:` directive: a bare Python process that imports the one stage it runs, where a `run:` job started a
# whole Snakemake process that imported Snakemake and every stage and parsed every rule file first (about 2.5 s
# per job; a national run has a validation job per yearly prescription file and 14 stage jobs).
# Each branch is the one call of its rule.
import os

from repurpose.logs import run_logged
from repurpose.process_memory import keep_freed_memory
from repurpose.stages import job_config, stage_inputs

# Jobs that allocate and free large numpy arrays thousands of times (model fits): they reuse freed memory
# instead of faulting fresh pages in (repurpose.process_memory; measured in docs/benchmarks.md).
KEEPS_FREED_MEMORY = {"candidates", "trial_emulation"}

snakemake = globals()["snakemake"]  # injected by Snakemake's script preamble
config, rule, log_path = snakemake.config, snakemake.rule, snakemake.log[0]
if rule in KEEPS_FREED_MEMORY:
    keep_freed_memory()
named_input, output = snakemake.input, dict(snakemake.output.items())
if rule == "validate_registers":
    from repurpose.registry.ingest import validate_registers

    run_logged(log_path, validate_registers, config, **output)
elif rule == "validate_prescriptions":
    from repurpose.registry.ingest import validate_prescription_part

    # One thread per part: the parts, not DuckDB's threads, are the unit of parallelism.
    part_config = job_config(config, snakemake.threads)
    run_logged(log_path, validate_prescription_part, part_config, **dict(named_input.items()), **output)
elif rule == "validate_clinical":
    from repurpose.registry.clinical_ingest import validate_clinical

    registers = {name: named_input[name] for name in ("population", "ms_registry", "registers")}
    run_logged(log_path, validate_clinical, config, **registers, **output)
elif rule == "validate":
    from repurpose.registry.ingest import merge_validation_reports

    run_logged(log_path, merge_validation_reports, config, **stage_inputs(named_input, ["parts"]), **output)
elif rule == "cohort":
    from repurpose.registry.cohort import run_cohort

    run_logged(log_path, run_cohort, config, **stage_inputs(named_input, ["prescriptions"]), **output)
elif rule == "exposure":
    from repurpose.dwas.exposure import build_exposures

    exposures = stage_inputs(snakemake.output, ["exposures"])
    run_logged(log_path, build_exposures, config, **stage_inputs(named_input, ["prescriptions"]), **exposures)
elif rule == "screen_part":
    from repurpose.dwas.screen import screen_level

    level, group = int(snakemake.wildcards.level), snakemake.wildcards.group
    run_logged(log_path, screen_level, config, **dict(named_input.items()), **output, level=level, group=group)
elif rule == "screen_gather":
    from repurpose.dwas.screen import gather_screen

    run_logged(log_path, gather_screen, config, **stage_inputs(named_input, ["parts"]), **output)
elif rule == "mechanisms":
    from repurpose.dwas.mechanisms import run_mechanisms

    run_logged(log_path, run_mechanisms, config, **dict(named_input.items()), **output)
elif rule == "candidates":
    from repurpose.dwas.candidates import run_candidates

    run_logged(log_path, run_candidates, config, **stage_inputs(named_input, ["exposures"]), **output)
elif rule == "persistence":
    from repurpose.persistence import run_persistence

    run_logged(log_path, run_persistence, config, **stage_inputs(named_input, ["prescriptions"]), **output)
elif rule == "trial_emulation":
    from repurpose.trial_emulation import run_trial_emulation

    run_logged(log_path, run_trial_emulation, config, **stage_inputs(named_input), **output)
elif rule == "report":
    from repurpose.layout import REPORT_TABLES
    from repurpose.release.report import build_report

    pages = {"html": output["html"], "provenance_json": output["provenance_json"]}
    tables = dict(zip(REPORT_TABLES, snakemake.output.tables, strict=True))
    run_logged(log_path, build_report, config, **stage_inputs(named_input), **pages, tables=tables,
               run_logs=os.path.dirname(log_path))  # fmt: skip
elif rule == "export":
    from repurpose.release.export import export_results

    folders = snakemake.params.folders
    run_logged(log_path, export_results, config, **folders, **stage_inputs(named_input, ["sources"]), **output)
else:
    raise ValueError(f"stage_job.py runs no rule {rule!r}")
