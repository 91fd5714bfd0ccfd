"""Cox proportional-hazards engines on aggregated risk sets.

Owns: the general Efron engine with covariates (`engine`) and the exposure-only fast path used by the
screen (`binary`), with the fit result and its Wald summary. Pure numerics: imports numpy, scipy and
pandas only, never a stage of the pipeline.
"""
