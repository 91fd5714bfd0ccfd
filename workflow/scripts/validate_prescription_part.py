# The job of rule validate_prescriptions (workflow/rules/ingest.smk), run by Snakemake's `script:` directive:
# a bare Python process that imports only the validation's modules, where a `run:` job started a whole
# Snakemake process that imported Snakemake and parsed every rule file first (about 1.7 s of CPU per part).
from repurpose.logs import run_logged
from repurpose.registry.ingest import validate_prescription_part
from repurpose.stages import job_config

snakemake = globals()["snakemake"]  # injected by Snakemake's script preamble
run_logged(
    snakemake.log[0],
    validate_prescription_part,
    job_config(snakemake.config, snakemake.threads),
    **snakemake.input,
    **snakemake.output,
)
