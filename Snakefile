# repurpose: drug-wide association study of multiple sclerosis on linked national registries.
# Thin by design: config validation, rule includes and the final targets. All logic is in src/repurpose.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


# A study config given with --configfile replaces the file above in Snakemake; merging it over the demo
# config here keeps "my_study.yaml overrides only what differs" true however the workflow is called.
from repurpose.study_config import apply_protocol_or_fail, exit_on_config_error, merge_over_defaults

with exit_on_config_error():
    config.update(apply_protocol_or_fail(config, getattr(getattr(workflow, "config_settings", None), "overwrite_config", None)))
    config.update(merge_over_defaults(config, os.path.join(workflow.basedir, "config/config.yaml")))


include: "workflow/rules/common.smk"


if POOLED:

    include: "workflow/rules/pooled.smk"

else:

    include: "workflow/rules/simulate.smk"
    include: "workflow/rules/ingest.smk"
    include: "workflow/rules/cohort.smk"
    include: "workflow/rules/exposure.smk"
    include: "workflow/rules/screen.smk"
    include: "workflow/rules/federation.smk"

    # The persistence study runs only when the MS registry's treatment table is delivered.
    if PERSISTENCE:

        include: "workflow/rules/persistence.smk"

    # The trial emulation runs only when the treatments, relapses and EDSS are delivered.
    if TRIAL_EMULATION:

        include: "workflow/rules/trial_emulation.smk"


include: "workflow/rules/candidates.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        FINAL_TARGETS,
    default_target: True
