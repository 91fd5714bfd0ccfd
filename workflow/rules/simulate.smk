# Simulated registries with planted truth: the demo input and the test bed.
rule simulate:
    input:
        # a planted table of the user's (simulate.planted_substances): editing it reruns the simulation
        **({"planted": config["simulate"]["planted_substances"]} if config["simulate"].get("planted_substances") else {}),
    output:
        population=PATHS.simulated("population.parquet"),
        prescriptions=[
            f"{PATHS.simulated_prescriptions_dir()}/{name}"
            for name in simulated_prescription_files(config["study"]["start"], config["study"]["end"])
        ],
        ms_registry=PATHS.simulated("ms_registry.parquet"),
        diagnoses=PATHS.simulated("diagnoses.parquet"),
        truth=PATHS.simulated("ground_truth.json"),
        **{
            name: PATHS.simulated(file)
            for name, file in simulated_clinical_files(config["simulate"].get("clinical")).items()
        },
    params:
        settings=config["simulate"],
        window={"study_start": config["study"]["start"], "study_end": config["study"]["end"]},
    log:
        PATHS.log("simulate"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], simulate_registries, PATHS.simulated_dir(), **params.settings, **params.window)
