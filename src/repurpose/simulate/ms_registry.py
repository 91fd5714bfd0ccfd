"""The simulated MS registry: diagnosis after onset, course, EDSS, and the registry extract.

Owns: the diagnosis delay, the registry's missing values and courses, the registry rows of persons
diagnosed alive and resident, and the extract with its injected invalid rows. Imports numpy, pyarrow and
the simulator's `dates`, `population` and `corrupt`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from repurpose.simulate.corrupt import unknown_person_ids
from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow, date_array, year_start_day
from repurpose.simulate.population import Population

DIAGNOSIS_DELAY_MEDIAN_YEARS = 1.5
DIAGNOSIS_DELAY_LOG_SD = 0.8
ONSET_MISSING_SHARE = 0.10
EDSS_MISSING_SHARE = 0.08
MS_COURSE_SHARES: dict[str, float] = {"RR": 0.85, "SP": 0.10, "PP": 0.05}


def ms_registry_rows(
    population: Population, rng: np.random.Generator, study: StudyWindow, onset_day: np.ndarray
) -> dict[str, np.ndarray]:
    """Registry rows of persons diagnosed alive and resident on or before study end."""
    has_onset = np.flatnonzero(np.isfinite(onset_day))
    delay_days = np.exp(
        np.log(DIAGNOSIS_DELAY_MEDIAN_YEARS * DAYS_PER_YEAR)
        + DIAGNOSIS_DELAY_LOG_SD * rng.standard_normal(len(has_onset))
    )
    onset = np.floor(onset_day[has_onset]).astype(np.int64)
    diagnosis = np.floor(onset_day[has_onset] + delay_days).astype(np.int64)
    alive_resident = diagnosis < np.minimum(population.true_death_day, population.emigration_day)[has_onset]
    course = rng.choice(len(MS_COURSE_SHARES), size=len(has_onset), p=list(MS_COURSE_SHARES.values()))
    edss = np.choose(
        course,
        [
            rng.gamma(2.0, 1.0, len(has_onset)),
            4.0 + rng.gamma(2.0, 0.75, len(has_onset)),
            3.0 + rng.gamma(2.0, 0.75, len(has_onset)),
        ],
    )
    edss = np.clip(np.round(edss * 2) / 2, 0.0, 10.0)
    onset_known = rng.random(len(has_onset)) >= ONSET_MISSING_SHARE
    edss_known = rng.random(len(has_onset)) >= EDSS_MISSING_SHARE
    keep = alive_resident & (diagnosis <= study.end_day)
    return {
        "person": has_onset[keep],
        "onset_day": onset[keep],
        "onset_known": onset_known[keep],
        "diagnosis_day": diagnosis[keep],
        "course": course[keep],
        "edss": edss[keep],
        "edss_known": edss_known[keep],
    }


def ms_registry_table(
    population: Population,
    registry: dict[str, np.ndarray],
    rng: np.random.Generator,
    study: StudyWindow,
    corrupt_counts: dict[str, int],
) -> tuple[pa.Table, dict[str, list[int]]]:
    """The MS registry extract (sorted by person_id) with the planned invalid registry rows added."""
    person_id = population.person_id[registry["person"]]
    onset_day, onset_known = registry["onset_day"], registry["onset_known"]
    diagnosis_day, course, edss, edss_known = (
        registry["diagnosis_day"],
        registry["course"],
        registry["edss"],
        registry["edss_known"],
    )
    corrupt_ids: dict[str, list[int]] = {}
    n_unknown = corrupt_counts["ms_registry_unknown_person"]
    n_before_birth = corrupt_counts["diagnosis_before_birth"]
    if n_unknown or n_before_birth:
        unknown_ids = unknown_person_ids(
            rng, population.person_id, rng.choice(len(population), size=n_unknown)
        )
        unknown_diagnosis = study.start_day + rng.integers(0, study.end_day - study.start_day, size=n_unknown)
        non_cases = np.setdiff1d(np.arange(len(population)), registry["person"])
        hosts = rng.choice(non_cases, size=n_before_birth, replace=False)
        # a day in a calendar year before the birth year, so even birth year alone reveals the error
        years_before = 1 + rng.integers(0, 3, size=n_before_birth)
        before_birth = year_start_day(population.birth_year[hosts] - years_before) + rng.integers(
            0, 365, size=n_before_birth
        )
        extra_ids = np.concatenate([unknown_ids, population.person_id[hosts]])
        extra_diagnosis = np.concatenate([unknown_diagnosis, before_birth])
        n_extra = n_unknown + n_before_birth
        person_id = np.concatenate([person_id, extra_ids])
        onset_day = np.concatenate([onset_day, extra_diagnosis - 200])
        onset_known = np.concatenate([onset_known, np.ones(n_extra, dtype=bool)])
        diagnosis_day = np.concatenate([diagnosis_day, extra_diagnosis])
        course = np.concatenate([course, np.zeros(n_extra, dtype=course.dtype)])
        edss = np.concatenate([edss, np.full(n_extra, 2.0)])
        edss_known = np.concatenate([edss_known, np.ones(n_extra, dtype=bool)])
        corrupt_ids = {
            "ms_registry_unknown_person": [int(i) for i in unknown_ids],
            "diagnosis_before_birth": [int(i) for i in population.person_id[hosts]],
        }
    order = np.argsort(person_id, kind="stable")
    course_names = np.array(list(MS_COURSE_SHARES))
    table = pa.table(
        {
            "person_id": pa.array(person_id[order], type=pa.int64()),
            "onset_date": date_array(onset_day[order], onset_known[order]),
            "diagnosis_date": date_array(diagnosis_day[order]),
            "ms_course_at_diagnosis": pa.array(course_names[course[order]], type=pa.string()),
            "edss_at_diagnosis": pa.array(edss[order], type=pa.float64(), mask=~edss_known[order]),
        }
    )
    return table, corrupt_ids
