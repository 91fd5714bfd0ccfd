"""The persistence study (issue 16): why patients stop a disease-modifying therapy, across clinics and countries.

Modules and what each owns:
- `newusers`: the new-user table (first start of the drug per person with the case mix at start), from the
  validated MS registry, treatments, relapses, EDSS and population; the registry definition of stopping.
- `dispensing`: the dispensing definition of stopping (the gap rule, AdhereR-style), read from the
  prescription parts with DuckDB filtered to the drug codes; the agreement of the two definitions.
- `survival`: drug survival (Kaplan-Meier, Aalen-Johansen by reason, the Cox model of stopping by clinic),
  with lifelines.
- `clinics`: between-clinic variation (tau^2 with its Q-profile CI, the overdispersed funnel plot's limits
  and outliers) and the disclosure control of the clinic-level tables.
- `page`: the figures and the report page (report/persistence.html).
- `study`: the stage function `run_persistence` that the rule calls.

The package may import the top level (`layout`, `stages`, `meta`) and `release` (disclosure policy and
functions, the figure helper); nothing imports it but the workflow.
"""

from repurpose.persistence.study import run_persistence

__all__ = ["run_persistence"]
