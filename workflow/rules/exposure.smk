# Exposure starts per person and drug class at every configured ATC level, from one pass over the dispensings
# (repurpose.dwas.exposure): one job writes every level's table and each person's health-care use.
rule exposure:
    input:
        prescriptions=VALIDATED_PRESCRIPTIONS,
        cohort=rules.cohort.output.cohort,
    output:
        exposures=[PATHS.exposure(level) for level in ATC_LEVELS],
        healthcare_use=PATHS.healthcare_use(),
    params:
        settings=rerun_settings(build_exposures, config),
    log:
        PATHS.log("exposure"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
