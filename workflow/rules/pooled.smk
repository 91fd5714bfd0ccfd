# A pooled (federated) run at the coordinating centre: the screen table from the pooled estimates of the
# site packages (docs/federation.md); candidates, report and export then run as in a single-site run.
POOLED_COX = POOLED.get("cox") or os.path.join(POOLED["dir"], "cox.parquet")


rule pooled_screen:
    input:
        meta=os.path.join(POOLED["dir"], "meta.parquet"),
        cox=[POOLED_COX] if os.path.isfile(POOLED_COX) else [],
    output:
        dwas=PATHS.dwas(),
        dwas_csv=PATHS.dwas_csv(),
    params:
        settings=rerun_settings(pooled_screen, config),
    log:
        PATHS.log("pooled_screen"),
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], pooled_screen, config, **stage_inputs(input), **output)
