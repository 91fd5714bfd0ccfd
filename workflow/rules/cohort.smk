# The study cohort: entry, exit and outcome on the age scale, with the flow of exclusions.
rule cohort:
    input:
        population=rules.validate_registers.output.population,
        ms_registry=rules.validate_registers.output.ms_registry,
        **OUTCOME_INPUTS,
    output:
        cohort=f"{RESULTS}/cohort/cohort.parquet",
        flow=f"{RESULTS}/cohort/flow.json",
    params:
        settings=settings("study"),
    log:
        f"{RESULTS}/logs/cohort.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=30,
    run:
        run_logged(log[0], "repurpose.registry.cohort:run_cohort", config, input.population, input.ms_registry, output.cohort, output.flow, **outcome_paths(input))
