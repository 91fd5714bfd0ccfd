# Reference Cox fits (Efron ties) with R survival::coxph for tests/test_coxph.py.
#
# Input : coxph_r_cohort.csv (counting-process rows id, start, stop, event, exposed, level, stratum;
#         simulated by tests/test_coxph.py::simulate_cohort(600, seed=20240611, n_strata=2,
#         n_levels=3, zero_exposed_event_stratum=None), see that file's write_r_cohort()).
# Output: coxph_r_reference.csv (model, term, coef, se, loglik_null, loglik, n_iter), full precision.
#
# Usage : Rscript coxph_r_reference.R [input.csv] [output.csv]
# Produced with R 4.2.2 and survival 3.5.3 (Debian bookworm r-base-core, r-cran-survival).

suppressPackageStartupMessages(library(survival))

args <- commandArgs(trailingOnly = TRUE)
here <- tryCatch(dirname(normalizePath(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE)))),
                 error = function(e) ".")
input <- if (length(args) >= 1) args[[1]] else file.path(here, "coxph_r_cohort.csv")
output <- if (length(args) >= 2) args[[2]] else file.path(here, "coxph_r_reference.csv")

cohort <- read.csv(input)
cohort$level <- factor(cohort$level)
control <- coxph.control(eps = 1e-12, iter.max = 100, toler.chol = 1e-14)

models <- list(
  exposed_only = Surv(start, stop, event) ~ exposed,
  exposed_strata = Surv(start, stop, event) ~ exposed + strata(stratum),
  exposed_level_strata = Surv(start, stop, event) ~ exposed + level + strata(stratum)
)

rows <- list()
for (name in names(models)) {
  fit <- coxph(models[[name]], data = cohort, ties = "efron", control = control)
  rows[[name]] <- data.frame(
    model = name,
    term = names(coef(fit)),
    coef = sprintf("%.17g", unname(coef(fit))),
    se = sprintf("%.17g", sqrt(diag(vcov(fit)))),
    loglik_null = sprintf("%.17g", fit$loglik[1]),
    loglik = sprintf("%.17g", fit$loglik[2]),
    n_iter = fit$iter
  )
}
write.csv(do.call(rbind, rows), output, row.names = FALSE, quote = FALSE)
