"""Federated analysis across registries that may not pool person-level data.

Owns: the site package and its pooling by meta-analysis (`package`) and the exact pooled Cox model by
distributed Newton rounds (`distributed`). May import `repurpose.cox`, `repurpose.release` and the shared
top-level modules.
"""
