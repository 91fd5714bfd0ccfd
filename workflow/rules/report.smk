# The reviewer's report and the export folder (the only files meant to leave the secure server).


rule report:
    input:
        validation=rules.validate.output.report,
        flow=rules.cohort.output.flow,
        dwas=rules.screen_gather.output.parquet,
        exposure=f"{RESULTS}/exposure/atc_level_{min(ATC_LEVELS)}.parquet",
        drugs=rules.candidates.output.ranking,
        mechanisms=rules.mechanisms.output.ranking,
    output:
        html=f"{RESULTS}/report/index.html",
        tables=expand(f"{RESULTS}/report/tables/{{name}}.csv", name=["cohort_flow", "validation", "exposure_prevalence"]),
    params:
        settings=settings("report", "disclosure", "candidates"),
    log:
        f"{RESULTS}/logs/report.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=20,
    run:
        run_logged(log[0], "repurpose.release.report:build_report", config, input.validation, input.flow, input.dwas, input.exposure, output.html, f"{RESULTS}/report/tables", input.drugs, input.mechanisms)


rule export:
    input:
        rules.report.output.html,
        rules.report.output.tables,
        rules.screen_gather.output.parquet,
        rules.screen_gather.output.csv,
        rules.candidates.output.ranking,
        rules.candidates.output.readme,
        rules.mechanisms.output.ranking,
    output:
        manifest=f"{RESULTS}/export/manifest.csv",
    params:
        settings=settings("disclosure"),
    log:
        f"{RESULTS}/logs/export.log",
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    run:
        run_logged(log[0], "repurpose.release.export:export_results", config, RESULTS, f"{RESULTS}/export", output.manifest)
