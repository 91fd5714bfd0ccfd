"""Day numbers and the study window of the simulator.

Owns: the day-number arithmetic (days since 1970-01-01 as int64) every simulator module shares. Imports
numpy and pyarrow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

DAYS_PER_YEAR = 365.25
NEVER = np.iinfo(np.int64).max // 4
"""Day number standing for "not during the simulation" (e.g. no emigration)."""


def day_number(iso: str | date) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return int(np.datetime64(str(iso), "D").astype(np.int64))


def year_start_day(years: np.ndarray) -> np.ndarray:
    """Day number of 1 January of each year."""
    return (
        (np.asarray(years, dtype=np.int64) - 1970)
        .astype("datetime64[Y]")
        .astype("datetime64[D]")
        .astype(np.int64)
    )


def year_of_day(days: np.ndarray) -> np.ndarray:
    """Calendar year of each day number."""
    return (
        np.asarray(days, dtype=np.int64).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)
        + 1970
    )


def date_array(days: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Arrow date32 array from day numbers; entries where `valid` is False become null."""
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pa.array(np.asarray(days, dtype=np.int32), type=pa.int32(), mask=mask).cast(pa.date32())


@dataclass(frozen=True)
class StudyWindow:
    """The study window as day numbers (days since 1970-01-01); `end_day` is the last day included."""

    start_day: int
    end_day: int

    @staticmethod
    def from_iso(study_start: str, study_end: str) -> StudyWindow:
        return StudyWindow(day_number(study_start), day_number(study_end))

    @property
    def first_year(self) -> int:
        return int(year_of_day(np.array([self.start_day]))[0])

    @property
    def last_year(self) -> int:
        return int(year_of_day(np.array([self.end_day]))[0])

    @property
    def years(self) -> list[int]:
        return list(range(self.first_year, self.last_year + 1))
