# The target trial emulation of early high-efficacy therapy versus escalation (issue 17). Included by the
# Snakefile only when trial_emulation.enabled and inputs.ms_treatments, ms_relapses and ms_edss are configured;
# the validated clinical extracts come from the validation rules. Sick leave and the diagnosis extract (the safety
# outcome, serious infection) are optional inputs: without them those outcomes are listed as not available.
from repurpose.trial_emulation import run_trial_emulation

TRIAL_EMULATION_OPTIONAL = {
    name: PATHS.validated(name) for name in ("sick_leave", "diagnoses") if config["inputs"].get(name)
}


rule trial_emulation:
    input:
        population=PATHS.validated("population"),
        ms_registry=PATHS.validated("ms_registry"),
        ms_treatments=PATHS.validated("ms_treatments"),
        ms_relapses=PATHS.validated("ms_relapses"),
        ms_edss=PATHS.validated("ms_edss"),
        **TRIAL_EMULATION_OPTIONAL,
    output:
        cohort=PATHS.trial_emulation_cohort(),
        target_trial=PATHS.trial_emulation_table("target_trial"),
        flow=PATHS.trial_emulation_table("flow"),
        estimates_csv=PATHS.trial_emulation_table("estimates"),
        curves=PATHS.trial_emulation_table("curves"),
        balance=PATHS.trial_emulation_table("balance"),
        weights=PATHS.trial_emulation_table("weights"),
        positivity_csv=PATHS.trial_emulation_table("positivity"),
        counts=PATHS.trial_emulation_table("counts"),
        html=PATHS.trial_emulation_html(),
    params:
        settings=rerun_settings(run_trial_emulation, config),
    log:
        PATHS.log("trial_emulation"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=30,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


FINAL_TARGETS.extend(TRIAL_EMULATION_RELEASED)
