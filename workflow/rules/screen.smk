# The drug-wide Cox screen: one job per ATC level x anatomical main group (screen.split_by), gathered into one table.
rule screen_part:
    input:
        cohort=rules.cohort.output.cohort,
        exposure=PATHS.exposure(),
    output:
        part=PATHS.screen_part(),
    wildcard_constraints:
        level="[1-5]",
        group="[A-Za-z]+",
    params:
        settings=rerun_settings(screen_level, config),
    log:
        PATHS.log("screen_atc_level_{level}_{group}"),
    threads: 1
    # Finer levels have more classes and take longest: started first, the coarser ones fill the cores after.
    priority: lambda wildcards: int(wildcards.level)
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


rule screen_gather:
    input:
        parts=expand(PATHS.screen_part(), level=ATC_LEVELS, group=SCREEN_GROUPS),
    output:
        fits=PATHS.screen_fits(),
        dwas=PATHS.dwas(),
        dwas_csv=PATHS.dwas_csv(),
        disclosure=PATHS.screen_disclosure(),
    params:
        settings=rerun_settings(gather_screen, config),
    log:
        PATHS.log("screen_gather"),
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
