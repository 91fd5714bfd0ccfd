# The drug-wide Cox screen: one job per ATC level x anatomical main group (screen.split_by), gathered into one table.
rule screen_part:
    input:
        cohort=rules.cohort.output.cohort,
        exposure=f"{RESULTS}/exposure/atc_level_{{level}}.parquet",
    output:
        f"{RESULTS}/screen/parts/atc_level_{{level}}/{{group}}.parquet",
    wildcard_constraints:
        level="[1-5]",
        group="[A-Za-z]+",
    params:
        settings=settings("screen", drop=("atc_levels", "split_by", "fdr_alpha")),
    log:
        f"{RESULTS}/logs/screen_atc_level_{{level}}_{{group}}.log",
    threads: 1
    # Finer levels have more classes and take longest: started first, the coarser ones fill the cores after.
    priority: lambda wildcards: int(wildcards.level)
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], "repurpose.dwas.screen:screen_level", config, input.cohort, input.exposure, int(wildcards.level), output[0], wildcards.group)


rule screen_gather:
    input:
        expand(f"{RESULTS}/screen/parts/atc_level_{{level}}/{{group}}.parquet", level=ATC_LEVELS, group=SCREEN_GROUPS),
    output:
        parquet=f"{RESULTS}/screen/dwas.parquet",
        csv=f"{RESULTS}/screen/dwas.csv",
    params:
        settings=settings("screen.fdr_alpha", "disclosure", "inputs.atc_index"),
    log:
        f"{RESULTS}/logs/screen_gather.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], "repurpose.dwas.screen:gather_screen", config, list(input), output.parquet, output.csv)
