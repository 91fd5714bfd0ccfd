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
    run:
        run_logged(log[0], run_mechanisms, config, **input, **output)


rule candidates:
    input:
        # The exact fits (the ranking's release hides what the released screen hides); a pooled run has only its table.
        dwas=PATHS.dwas() if POOLED else PATHS.screen_fits(),
        cohort=person_level(PATHS.cohort()),
        exposures=person_level([PATHS.exposure(level) for level in ATC_LEVELS]),
        prescriptions=person_level(VALIDATED_PRESCRIPTIONS),
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
    run:
        run_logged(log[0], run_candidates, config, **stage_inputs(input, ["exposures", "prescriptions"]), **output)
