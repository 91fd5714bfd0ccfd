"""The exposure window: from which age a person counts as exposed to a drug class at a given lag.

Owns the rule, written once and used by the screen, the distributed fits and every person-level model
of the candidates: a person is exposed from max(entry, exposure start + lag) until exit, where the
exposure start is the age of the `screen.min_dispensings`-th dispensing and the lag in days is
round(lag_years x DAYS_PER_YEAR). A person without an exposure start is never exposed
(`NEVER_EXPOSED`), and one whose window opens at or after exit contributes no exposed time.
Imports numpy and `repurpose.schemas` only.
"""

from __future__ import annotations

import numpy as np

from repurpose.schemas import DAYS_PER_YEAR

NEVER_EXPOSED = np.iinfo(np.int64).max // 4
"""Exposure start (age in days) of a person who never reached the exposure definition: beyond every exit,
and far enough from the int64 limit that adding any lag cannot overflow."""


def lag_days(lag_years: float) -> int:
    """A lag in whole days: round(lag_years x DAYS_PER_YEAR)."""
    return round(float(lag_years) * DAYS_PER_YEAR)


def exposed_from(entry: np.ndarray, exposure_start: np.ndarray, lag_in_days: int) -> np.ndarray:
    """Age (days) from which each person counts as exposed: max(entry, exposure start + lag).

    Ages are integer arrays of one dtype per argument; the result has `exposure_start`'s dtype (int32
    keeps the screen's arrays narrow; pass int64 with `NEVER_EXPOSED` for persons never exposed, whose
    result stays beyond every exit). Exposed time is (exposed_from, exit] when exposed_from < exit, else none.
    """
    start = exposure_start + exposure_start.dtype.type(lag_in_days)
    np.maximum(start, entry, out=start)
    return start
