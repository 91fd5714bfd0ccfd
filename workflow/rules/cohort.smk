# The study cohort: entry, exit and outcome on the age scale, with the flow of exclusions.
rule cohort:
    input:
        population=rules.validate_registers.output.population,
        ms_registry=rules.validate_registers.output.ms_registry,
        ms_registry_unusable=rules.validate_registers.output.ms_registry_unusable,
        **OUTCOME_INPUTS,
    output:
        cohort=PATHS.cohort(),
        flow=PATHS.cohort_flow(),
    params:
        settings=rerun_settings(run_cohort, config),
    log:
        PATHS.log("cohort"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=30,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
