# The reviewer's report and the export folder (the only files meant to leave the secure server).
rule report:
    input:
        validation=person_level(PATHS.validation_report()),
        flow=person_level(PATHS.cohort_flow()),
        exposure=person_level(PATHS.exposure(min(ATC_LEVELS))),
        dwas=PATHS.dwas(),
        drugs=PATHS.drug_ranking(),
        mechanisms=PATHS.mechanism_ranking(),
        site_fits=pooled_file("site_fits.parquet"),
        meta=pooled_file("meta.parquet"),
        site_summaries=pooled_file("site_summaries.csv"),
        sites_table=pooled_file("sites.csv"),
        ground_truth=simulated_truth(),
        persistence=PERSISTENCE_RELEASED[:1],
        trial_emulation=TRIAL_EMULATION_RELEASED[:1],
    output:
        html=PATHS.report_html(),
        provenance_json=PATHS.report_provenance(),
        tables=[PATHS.report_table(name) for name in REPORT_TABLES],
    params:
        settings=rerun_settings(build_report, config),
    log:
        PATHS.log("report"),
    threads: 1
    resources:
        mem_mb=2048,
        runtime=20,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB


rule export:
    input:
        sources=[
            PATHS.report_html(),
            *[PATHS.report_table(name) for name in REPORT_TABLES],
            PATHS.dwas(),
            PATHS.dwas_csv(),
            *([] if POOLED else [PATHS.screen_disclosure()]),
            PATHS.drug_ranking(),
            PATHS.candidates_readme(),
            PATHS.mechanism_ranking(),
            *PERSISTENCE_RELEASED,
            *TRIAL_EMULATION_RELEASED,
        ],
    output:
        manifest=PATHS.export_manifest(),
    params:
        settings=rerun_settings(export_results, config),
        folders={"results_dir": RESULTS, "export_dir": PATHS.export_dir()},
    log:
        PATHS.log("export"),
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    conda:
        NO_CONDA_ENV
    script:
        STAGE_JOB
