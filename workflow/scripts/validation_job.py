# The jobs of the validation's rules (workflow/rules/ingest.smk), run by Snakemake's `script:` directive: a bare
# Python process that imports the validation's modules only, where a `run:` job started a whole Snakemake
# process that imported Snakemake and parsed every rule file first (about 1.7 s of CPU per job; one job per
# yearly prescription file).
from repurpose.logs import run_logged
from repurpose.registry.clinical_ingest import validate_clinical
from repurpose.registry.ingest import merge_validation_reports, validate_prescription_part, validate_registers
from repurpose.stages import job_config, stage_inputs

snakemake = globals()["snakemake"]  # injected by Snakemake's script preamble
config, named_input, output = snakemake.config, snakemake.input, dict(snakemake.output.items())
if snakemake.rule == "validate_registers":
    run_logged(snakemake.log[0], validate_registers, config, **output)
elif snakemake.rule == "validate_prescriptions":
    # One thread per part: the parts, not DuckDB's threads, are the unit of parallelism.
    config = job_config(config, snakemake.threads)
    run_logged(snakemake.log[0], validate_prescription_part, config, **dict(named_input.items()), **output)
elif snakemake.rule == "validate_clinical":
    registers = {name: named_input[name] for name in ("population", "ms_registry", "registers")}
    run_logged(snakemake.log[0], validate_clinical, config, **registers, **output)
elif snakemake.rule == "validate":
    run_logged(snakemake.log[0], merge_validation_reports, config, **stage_inputs(named_input, ["parts"]), **output)
else:
    raise ValueError(f"validation_job.py runs no rule {snakemake.rule!r}")
