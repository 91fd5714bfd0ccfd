# Validate the registry extracts against the data dictionary: the registers first, then each prescription
# part (one job per delivered file, so a new yearly file is validated alone), then one report.
rule validate_registers:
    input:
        population=extract_path("population"),
        ms_registry=extract_path("ms_registry"),
        **DIAGNOSES,
    output:
        population=PATHS.validated("population"),
        ms_registry=PATHS.validated("ms_registry"),
        population_rejects=PATHS.rejects("population"),
        ms_registry_rejects=PATHS.rejects("ms_registry"),
        ms_registry_unusable=PATHS.unusable_registry_persons(),
        report=PATHS.registers_report(),
        **VALIDATED_DIAGNOSES,
    params:
        settings=rerun_settings(validate_registers, config),
    log:
        PATHS.log("validate_registers"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], validate_registers, config, **output)


rule validate_prescriptions:
    input:
        part=lambda wildcards: PRESCRIPTION_PARTS[wildcards.part],
        population=rules.validate_registers.output.population,
        registers=rules.validate_registers.output.report,
    output:
        clean=PATHS.validated_prescriptions(),
        rejects=PATHS.prescription_rejects(),
        report=PATHS.prescriptions_report(),
    params:
        settings=rerun_settings(validate_prescription_part, config),
    log:
        PATHS.log("validate_prescriptions_{part}"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    run:
        run_logged(log[0], validate_prescription_part, config, **input, **output)


rule validate:
    input:
        registers=rules.validate_registers.output.report,
        parts=expand(PATHS.prescriptions_report(), part=PRESCRIPTION_PARTS),
    output:
        report=PATHS.validation_report(),
        summary=PATHS.validation_summary(),
    log:
        PATHS.log("validate"),
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    run:
        run_logged(log[0], merge_validation_reports, config, **stage_inputs(input, ["parts"]), **output)
