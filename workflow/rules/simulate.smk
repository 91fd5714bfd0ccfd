# Simulated registries with planted truth: the demo input and the test bed.
rule simulate:
    output:
        population=f"{RESULTS}/simulated/population.parquet",
        prescriptions=directory(f"{RESULTS}/simulated/prescriptions"),
        ms_registry=f"{RESULTS}/simulated/ms_registry.parquet",
        truth=f"{RESULTS}/simulated/ground_truth.json",
    params:
        settings=config["simulate"],
        study=config["study"],
    log:
        f"{RESULTS}/logs/simulate.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        from repurpose.simulate import simulate_registries

        with log_to(log[0]):
            simulate_registries(
                f"{RESULTS}/simulated",
                n_persons=params.settings["n_persons"],
                seed=params.settings["seed"],
                n_corrupt_rows=params.settings["n_corrupt_rows"],
                study_start=params.study["start"],
                study_end=params.study["end"],
            )
