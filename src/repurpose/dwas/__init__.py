"""The drug-wide association study: exposure windows, the Cox screen and the candidate rankings.

Owns: exposure starts per person and drug class (`exposure`), the exposure window at a lag (`window`: the
one place the rule is written), the risk sets shared by the screen, the person-level models and the
distributed fits (`risk_sets`), the screen (`screen`), empirical calibration (`calibration`), drug
candidates (`candidates`: evidence from the screen table, score and ranking; `person_models`: the
person-level Cox models) and mechanism candidates (`mechanisms`). May import `repurpose.cox`,
`repurpose.schemas`, `repurpose.release.disclosure`, `repurpose.registry.outcome` (the drugs of a
drug-proxy outcome, left out of exposure) and the shared top-level modules; it reads the cohort only
through the files the registry stage writes.
"""
