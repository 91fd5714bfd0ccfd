# The drug-wide Cox screen: one batch of fits per ATC level, gathered into one table.
rule screen_level:
    input:
        cohort=rules.cohort.output.cohort,
        exposure=f"{RESULTS}/exposure/atc_level_{{level}}.parquet",
    output:
        f"{RESULTS}/screen/parts/atc_level_{{level}}.parquet",
    wildcard_constraints:
        level="[1-5]",
    log:
        f"{RESULTS}/logs/screen_atc_level_{{level}}.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], "repurpose.screen:screen_level", config, input.cohort, input.exposure, int(wildcards.level), output[0])


rule screen_gather:
    input:
        expand(f"{RESULTS}/screen/parts/atc_level_{{level}}.parquet", level=ATC_LEVELS),
    output:
        parquet=f"{RESULTS}/screen/dwas.parquet",
        csv=f"{RESULTS}/screen/dwas.csv",
    log:
        f"{RESULTS}/logs/screen_gather.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], "repurpose.screen:gather_screen", config, list(input), output.parquet, output.csv)
