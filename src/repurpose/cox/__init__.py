"""Cox proportional-hazards engines on aggregated risk sets.

Owns: the risk-set table and its construction from counting-process rows (`risk_set_table`), the general
Efron engine with covariates (`engine`), the exposure-only fast path used by the screen (`binary`), and the
fit result with its Wald summary (`result`: the one place hazard ratios, CIs and p-values are computed).
Pure numerics: imports numpy, scipy and pandas only, never a stage of the pipeline.
"""
