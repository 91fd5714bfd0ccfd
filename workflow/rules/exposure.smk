# Exposure starts per person and drug class: one window pass over all dispensings per (person, substance),
# then one table per ATC level built from it (only mixed-substance dose histories are windowed again).
rule exposure_substances:
    input:
        prescriptions=VALIDATED_PRESCRIPTIONS,
        cohort=rules.cohort.output.cohort,
    output:
        f"{RESULTS}/exposure/substances.parquet",
    params:
        settings=settings("screen.min_dispensings", "screen.dose_cutpoints_ddd", "study.outcome"),
    log:
        f"{RESULTS}/logs/exposure_substances.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], "repurpose.dwas.exposure:build_substance_exposures", config, list(input.prescriptions), input.cohort, output[0])


rule exposure:
    input:
        prescriptions=VALIDATED_PRESCRIPTIONS,
        cohort=rules.cohort.output.cohort,
        substances=rules.exposure_substances.output[0],
    output:
        f"{RESULTS}/exposure/atc_level_{{level}}.parquet",
    wildcard_constraints:
        level="[1-5]",
    params:
        settings=settings("screen.min_dispensings", "screen.dose_cutpoints_ddd", "study.outcome"),
    log:
        f"{RESULTS}/logs/exposure_atc_level_{{level}}.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], "repurpose.dwas.exposure:build_exposures", config, list(input.prescriptions), input.cohort, int(wildcards.level), output[0], input.substances)
