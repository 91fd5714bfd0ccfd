"""The drug-wide association study: exposure windows, the Cox screen and the candidate rankings.

Owns: exposure starts per person and drug class (`exposure`), the screen (`screen`), empirical
calibration (`calibration`), drug candidates (`candidates`) and mechanism candidates (`mechanisms`).
May import `repurpose.cox`, `repurpose.release.disclosure`, `repurpose.registry.outcome` (the drugs of a
drug-proxy outcome, left out of exposure) and the shared top-level modules; it reads the cohort only through
the files the registry stage writes.
"""
