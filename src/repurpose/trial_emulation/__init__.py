"""Target trial emulation of early high-efficacy therapy versus escalation on MS registry data (issue 17).

The trial: newly diagnosed relapsing MS, treatment-naive, with a baseline EDSS, assigned at time zero to start a
high-efficacy therapy first or a moderate-efficacy therapy first (escalation) within a grace period. Emulated by
clone-censor-weight on the registry's clinical extracts; docs/methods.md, "Trial emulation: design and
estimation" and "Trial emulation: outcomes".

Modules: `protocol` (the protocol as one object, echoed as the target-trial table), `cohort` (eligibility, time
zero, baseline and grace-period covariates), `outcomes` (the outcome definitions, also used by the tests on the
simulator's counterfactual registries), `clones` (clone, censor, inverse-probability-of-censoring weights),
`adherence` (deviations from the strategies after their start, for the sustained per-protocol estimand),
`logistic` (the censoring models' fit), `estimators` (weighted Kaplan-Meier, Cox, rates), `analysis` (estimates,
naive comparison, bootstrap),
`diagnostics` (balance, positivity, weights, counts), `release` (disclosure control), `page` (the report page),
`study` (the stage function `run_trial_emulation`).
"""

from repurpose.trial_emulation.study import run_trial_emulation

__all__ = ["run_trial_emulation"]
