# repurpose: drug-wide association study of multiple sclerosis on linked national registries.
# Thin by design: config validation, rule includes and the final targets. All logic is in src/repurpose.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


from repurpose.config import validate_config

config.update(validate_config(config))


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/exposure.smk"
include: "workflow/rules/screen.smk"


rule all:
    input:
        "results/validation/report.json",
        "results/cohort/flow.json",
        "results/screen/dwas.parquet",
        "results/screen/dwas.csv",
    default_target: True
