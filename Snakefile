# repurpose: drug-wide association study of multiple sclerosis on linked national registries.
# Thin by design: config validation, rule includes and the final targets. All logic is in src/repurpose.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


# A study config given with --configfile replaces the file above in Snakemake; merging it over the demo
# config here keeps "my_study.yaml overrides only what differs" true however the workflow is called.
from repurpose.config import apply_protocol_or_fail, merge_over_defaults

config.update(apply_protocol_or_fail(config, getattr(getattr(workflow, "config_settings", None), "overwrite_config", None)))
config.update(merge_over_defaults(config, os.path.join(workflow.basedir, "config/config.yaml")))


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/exposure.smk"
include: "workflow/rules/screen.smk"
include: "workflow/rules/candidates.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/federation.smk"


rule all:
    input:
        "results/validation/report.json",
        "results/cohort/flow.json",
        "results/screen/dwas.parquet",
        "results/screen/dwas.csv",
        "results/candidates/drug_ranking.csv",
        "results/candidates/mechanism_ranking.csv",
        "results/candidates/README.md",
        "results/report/index.html",
        "results/export/manifest.csv",
    default_target: True
