# The persistence study (issue 16): drug survival of new users of persistence.drug across clinics and countries.
# Included by the Snakefile only when inputs.ms_treatments is configured; its validated clinical extracts come
# from the validation rules. Relapses and EDSS are optional inputs; the prescription parts give the dispensing
# definition of stopping.
from repurpose.persistence import run_persistence

PERSISTENCE_OPTIONAL = {
    name: PATHS.validated(name) for name in ("ms_relapses", "ms_edss") if config["inputs"].get(name)
}


rule persistence:
    input:
        population=PATHS.validated("population"),
        ms_registry=PATHS.validated("ms_registry"),
        ms_treatments=PATHS.validated("ms_treatments"),
        prescriptions=VALIDATED_PRESCRIPTIONS,
        **PERSISTENCE_OPTIONAL,
    output:
        new_users=PATHS.persistence_new_users(),
        html=PATHS.persistence_html(),
        **{name: PATHS.persistence_table(name) for name in PERSISTENCE_TABLES},
    params:
        settings=rerun_settings(run_persistence, config),
    log:
        PATHS.log("persistence"),
    threads: THREADS
    resources:
        mem_mb=MEM_MB,
        runtime=30,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


FINAL_TARGETS.extend(PERSISTENCE_RELEASED)
