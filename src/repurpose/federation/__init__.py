"""Federated analysis across registries that may not pool person-level data.

Owns: the design a site ran (`design`), the site package and its pooling by meta-analysis (`package`,
which starts the distributed rounds) and the exact pooled Cox model by distributed Newton rounds
(`distributed`, which evaluates the screen's risk sets at each site). Imports run one way:
package -> distributed -> design. May import `repurpose.cox`, `repurpose.dwas` (the screen's risk sets
and q-values), `repurpose.release`, `repurpose.schemas`, `repurpose.persistence.pooled` and
`repurpose.trial_emulation.pooled` (pooling those studies' released tables) and the shared top-level modules.
"""
