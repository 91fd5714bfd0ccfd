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
        from repurpose.screen import screen_level

        with log_to(log[0]):
            screen_level(config, input.cohort, input.exposure, int(wildcards.level), output[0])


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
        from repurpose.screen import gather_screen

        with log_to(log[0]):
            gather_screen(config, input, output.parquet, output.csv)
