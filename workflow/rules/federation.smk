# Federated analysis, site side: the site package (aggregates only) that travels to the coordinating centre.
rule site_package:
    input:
        dwas=rules.screen_gather.output.dwas,
        flow=rules.cohort.output.flow,
        validation=rules.validate.output.report,
        **SITE_STUDY_TABLES,
    output:
        manifest=PATHS.site_package_manifest(),
        fits=PATHS.site_package_fits(),
    params:
        settings=rerun_settings(write_site_package, config),
    log:
        PATHS.log("site_package"),
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], write_site_package, config, **input, package=PATHS.site_package_dir())
