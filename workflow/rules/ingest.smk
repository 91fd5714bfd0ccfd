# Validate the registry extracts against the data dictionary: the registers first, then each prescription
# part (one job per delivered file, so a new yearly file is validated alone) and the clinical extracts when
# configured, then one report. Each job is a bare Python process running STAGE_JOB (Snakemake's
# `script:`), not a whole Snakemake process: a national extract has a job per yearly file.
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
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


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
    # One thread per part: the parts run side by side (each a streaming pass, small in memory), their job
    # start-ups overlap, and a single-threaded pass writes the rows in their source order every run.
    threads: 1
    resources:
        mem_mb=MEM_MB,
        runtime=60,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


if CLINICAL:

    # The MS registry's clinical extracts (and sick leave), checked against the validated population and MS
    # registry: a job of its own, so configuring them reruns nothing of the screen.
    rule validate_clinical:
        input:
            population=rules.validate_registers.output.population,
            ms_registry=rules.validate_registers.output.ms_registry,
            registers=rules.validate_registers.output.report,
            sources=[extract_path(name) for name in CLINICAL],
        output:
            report=PATHS.clinical_report(),
            **clinical_outputs(PATHS, CLINICAL),
        params:
            settings=rerun_settings(validate_clinical, config),
        log:
            PATHS.log("validate_clinical"),
        threads: THREADS
        resources:
            mem_mb=MEM_MB,
            runtime=30,
        conda:
            NO_CONDA_ENV
        script:
            STAGE_JOB


rule validate:
    input:
        registers=rules.validate_registers.output.report,
        parts=expand(PATHS.prescriptions_report(), part=PRESCRIPTION_PARTS),
        **CLINICAL_REPORT,
    output:
        report=PATHS.validation_report(),
        summary=PATHS.validation_summary(),
    log:
        PATHS.log("validate"),
    threads: 1
    resources:
        mem_mb=1024,
        runtime=5,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
