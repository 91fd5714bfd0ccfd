"""Whether R with the `survival` package can run the reference fits (tests only): one check shared by the
test modules that compare with R."""

from __future__ import annotations

import shutil
import subprocess


def r_survival_missing() -> str | None:
    """Why R `survival` cannot run here (the skip reason), or None when it can."""
    if shutil.which("Rscript") is None:
        return "Rscript is not on PATH (apt-get install r-base-core r-cran-survival)"
    probe = subprocess.run(["Rscript", "-e", "library(survival)"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return "R is installed but library(survival) does not load"
    return None
