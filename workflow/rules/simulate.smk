# Simulated registries with planted truth: the demo input and the test bed.
rule simulate:
    output:
        population=f"{RESULTS}/simulated/population.parquet",
        prescriptions=[
            f"{SIMULATED_PRESCRIPTIONS}/{name}"
            for name in simulated_prescription_files(config["study"]["start"], config["study"]["end"])
        ],
        ms_registry=f"{RESULTS}/simulated/ms_registry.parquet",
        diagnoses=f"{RESULTS}/simulated/diagnoses.parquet",
        truth=f"{RESULTS}/simulated/ground_truth.json",
    params:
        settings=config["simulate"],
        window={"study_start": config["study"]["start"], "study_end": config["study"]["end"]},
    log:
        f"{RESULTS}/logs/simulate.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], "repurpose.simulate:simulate_registries", f"{RESULTS}/simulated", **params.settings, **params.window)
