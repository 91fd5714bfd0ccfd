# From screen hits to ranked candidates: mechanisms (targets pooled across substances), then drug classes.
rule mechanisms:
    input:
        dwas=rules.screen_gather.output.parquet,
    output:
        ranking=f"{RESULTS}/candidates/mechanism_ranking.csv",
        matches=f"{RESULTS}/candidates/substance_targets.csv",
    params:
        settings=settings("candidates", "inputs.atc_index", "inputs.drug_targets"),
    log:
        f"{RESULTS}/logs/mechanisms.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], "repurpose.dwas.mechanisms:run_mechanisms", config, input.dwas, output.ranking, output.matches)


rule candidates:
    input:
        dwas=rules.screen_gather.output.parquet,
        cohort=rules.cohort.output.cohort,
        exposures=expand(f"{RESULTS}/exposure/atc_level_{{level}}.parquet", level=ATC_LEVELS),
        prescriptions=VALIDATED_PRESCRIPTIONS,
        matches=rules.mechanisms.output.matches,
        mechanisms=rules.mechanisms.output.ranking,
    output:
        ranking=f"{RESULTS}/candidates/drug_ranking.csv",
        readme=f"{RESULTS}/candidates/README.md",
    params:
        settings=settings("candidates", "screen", "disclosure", drop=("atc_levels", "split_by")),
    log:
        f"{RESULTS}/logs/candidates.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], "repurpose.dwas.candidates:run_candidates", config, input.dwas, input.cohort, list(input.exposures), f"{RESULTS}/validated/prescriptions", input.matches, input.mechanisms, output.ranking, output.readme)
