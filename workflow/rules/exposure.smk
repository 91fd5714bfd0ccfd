# Exposure starts per person and drug class: one window pass over all dispensings per (person, substance),
# then one table per ATC level built from it (only mixed-substance dose histories are windowed again).
rule exposure_substances:
    input:
        prescriptions=VALIDATED_PRESCRIPTIONS,
        cohort=rules.cohort.output.cohort,
    output:
        substances=PATHS.substance_exposures(),
    params:
        settings=rerun_settings(build_substance_exposures, config),
    log:
        PATHS.log("exposure_substances"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], build_substance_exposures, config, **stage_inputs(input, ["prescriptions"]), **output)


rule exposure:
    input:
        prescriptions=VALIDATED_PRESCRIPTIONS,
        cohort=rules.cohort.output.cohort,
        substances=rules.exposure_substances.output.substances,
    output:
        exposure=PATHS.exposure(),
    wildcard_constraints:
        level="[1-5]",
    params:
        settings=rerun_settings(build_exposures, config),
    log:
        PATHS.log("exposure_atc_level_{level}"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], build_exposures, config, **stage_inputs(input, ["prescriptions"]), level=int(wildcards.level), **output)
