# From screen hits to ranked candidates: mechanisms (targets pooled across substances), then drug classes.
rule mechanisms:
    input:
        # The released screen: a hidden substance's estimate must not enter a pooled estimate beside shown ones.
        dwas=PATHS.dwas(),
    output:
        ranking=PATHS.mechanism_ranking(),
        matches=PATHS.substance_targets(),
    params:
        settings=rerun_settings(run_mechanisms, config),
    log:
        PATHS.log("mechanisms"),
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


rule candidates:
    input:
        # The exact fits (the ranking's release hides what the released screen hides); a pooled run has only its table.
        dwas=PATHS.dwas() if POOLED else PATHS.screen_fits(),
        cohort=person_level(PATHS.cohort()),
        exposures=person_level([PATHS.exposure(level) for level in ATC_LEVELS]),
        healthcare_use=person_level(PATHS.healthcare_use()),
        matches=rules.mechanisms.output.matches,
        mechanisms=rules.mechanisms.output.ranking,
    output:
        ranking=PATHS.drug_ranking(),
        readme=PATHS.candidates_readme(),
    params:
        settings=rerun_settings(run_candidates, config),
    log:
        PATHS.log("candidates"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
