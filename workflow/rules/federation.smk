# Federated analysis, site side: the site package (aggregates only) that travels to the coordinating centre.
rule site_package:
    input:
        dwas=rules.screen_gather.output.parquet,
        flow=rules.cohort.output.flow,
        validation=rules.validate.output.report,
    output:
        manifest=f"{RESULTS}/site_package/manifest.json",
        fits=f"{RESULTS}/site_package/fits.parquet",
    params:
        settings=settings("protocol", "site_label", "run_label", "disclosure", "inputs.atc_index"),
    log:
        f"{RESULTS}/logs/site_package.log",
    threads: 1
    resources:
        mem_mb=2048,
        runtime=10,
    run:
        run_logged(log[0], "repurpose.federation.package:write_site_package", config, input.dwas, input.flow, input.validation, f"{RESULTS}/site_package")
