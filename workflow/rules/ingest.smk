# Validate the registry extracts against the data dictionary: the registers first, then each prescription
# part (one job per delivered file, so a new yearly file is validated alone), then one report.
rule validate_registers:
    input:
        population=extract_path("population"),
        ms_registry=extract_path("ms_registry"),
        **DIAGNOSES,
    output:
        population=f"{RESULTS}/validated/population.parquet",
        ms_registry=f"{RESULTS}/validated/ms_registry.parquet",
        population_rejects=f"{RESULTS}/validation/rejects/population.parquet",
        ms_registry_rejects=f"{RESULTS}/validation/rejects/ms_registry.parquet",
        report=f"{RESULTS}/validation/parts/registers.json",
        **VALIDATED_DIAGNOSES,
    params:
        settings=settings("inputs.population", "inputs.ms_registry", "inputs.diagnoses", "study", "validation"),
    log:
        f"{RESULTS}/logs/validate_registers.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], "repurpose.registry.ingest:validate_registers", config, f"{RESULTS}/validated", f"{RESULTS}/validation")


rule validate_prescriptions:
    input:
        part=lambda wildcards: PRESCRIPTION_PARTS[wildcards.part],
        population=rules.validate_registers.output.population,
        registers=rules.validate_registers.output.report,
    output:
        clean=f"{RESULTS}/validated/prescriptions/{{part}}.parquet",
        rejects=f"{RESULTS}/validation/rejects/prescriptions/{{part}}.parquet",
        report=f"{RESULTS}/validation/parts/prescriptions_{{part}}.json",
    params:
        settings=settings("inputs.prescriptions", "study", "validation", drop=("path",)),
    log:
        f"{RESULTS}/logs/validate_prescriptions_{{part}}.log",
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], "repurpose.registry.ingest:validate_prescription_part", config, input.part, input.population, input.registers, output.clean, output.rejects, output.report)


rule validate:
    input:
        registers=rules.validate_registers.output.report,
        parts=expand(f"{RESULTS}/validation/parts/prescriptions_{{part}}.json", part=PRESCRIPTION_PARTS),
    output:
        report=f"{RESULTS}/validation/report.json",
        summary=f"{RESULTS}/validation/report.md",
    log:
        f"{RESULTS}/logs/validate.log",
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    run:
        run_logged(log[0], "repurpose.registry.ingest:merge_validation_reports", input.registers, list(input.parts), output.report, output.summary)
