# Validate the registry extracts against the data dictionary; clean Parquet, rejects and a report.
rule validate:
    input:
        population=extract_path("population"),
        prescriptions=extract_path("prescriptions"),
        ms_registry=extract_path("ms_registry"),
    output:
        population=f"{RESULTS}/validated/population.parquet",
        prescriptions=directory(f"{RESULTS}/validated/prescriptions"),
        ms_registry=f"{RESULTS}/validated/ms_registry.parquet",
        rejects=directory(f"{RESULTS}/validation/rejects"),
        report=f"{RESULTS}/validation/report.json",
        summary=f"{RESULTS}/validation/report.md",
    log:
        f"{RESULTS}/logs/validate.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=120,
    run:
        run_logged(log[0], "repurpose.ingest:validate_extracts", config, f"{RESULTS}/validated", f"{RESULTS}/validation")
