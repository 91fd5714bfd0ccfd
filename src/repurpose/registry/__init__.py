"""Registry input and the study cohort.

Owns: the data dictionary (`dictionary`), validation of the registry extracts against it (`ingest`) and
the cohort with its outcome (`cohort`). May import the shared top-level modules (`config`, `duck`, `atc`,
`logs`); nothing downstream (exposure, screen, candidates, release) is imported here.
"""
