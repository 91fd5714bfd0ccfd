"""The simulated population register: who lives in the study window, when they die or emigrate.

Owns: the population model (birth cohorts, Gompertz mortality, emigration, education), the `Population`
arrays with their hidden true values, the population extract and the split of time at risk into
calendar years. Imports numpy, pyarrow and the simulator's `dates`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from repurpose.simulate.dates import (
    DAYS_PER_YEAR,
    NEVER,
    StudyWindow,
    date_array,
    year_of_day,
    year_start_day,
)

MAX_AGE = 110
"""Oldest age (years) of the age-indexed tables; older persons use this age's values."""
FIRST_BIRTH_YEAR = 1924
BIRTH_YEAR_ANCHORS = (1924, 1940, 1950, 1990, 2005, 2022)
BIRTH_YEAR_WEIGHTS = (0.25, 0.8, 1.0, 1.0, 0.9, 0.5)
GOMPERTZ_MORTALITY_AT_AGE_0 = 2.1e-5
"""Gompertz mortality h(age) = a * exp(b * age) per year: ~0.4/1000 at 30, ~5% at 80."""
GOMPERTZ_MORTALITY_SLOPE = 0.097
EMIGRATION_SHARE = 0.03
BIRTH_MONTH_MISSING_SHARE = 0.02
EDUCATION_SHARES = (0.04, 0.25, 0.37, 0.21, 0.13)
EDUCATION_MISSING_SHARE = 0.05


@dataclass
class Population:
    """Simulated persons (one array entry each, sorted by person_id) with their hidden true values."""

    person_id: np.ndarray  # int64, sorted, unique, non-sequential
    is_male: np.ndarray  # bool
    birth_day: np.ndarray  # int64 day number of the true birth date
    birth_year: np.ndarray  # int32
    birth_month_recorded: np.ndarray  # int8, 0 where missing in the register
    latent_factor: np.ndarray  # float64 U ~ N(0, 1)
    entry_day: np.ndarray  # int64 first day at risk in the window: max(birth, study start)
    true_death_day: np.ndarray  # int64 day of death (may lie after study end)
    emigration_day: np.ndarray  # int64, huge where the person never emigrates during the window
    education: np.ndarray  # int8, -1 where missing

    def __len__(self) -> int:
        return len(self.person_id)

    def exit_day(self, study: StudyWindow) -> np.ndarray:
        """First day no longer at risk in the window (exclusive): death, emigration or day after study end."""
        return np.minimum(np.minimum(self.true_death_day, self.emigration_day), study.end_day + 1)

    def take(self, index: slice | np.ndarray) -> Population:
        return Population(**{name: value[index] for name, value in self.__dict__.items()})


def _unique_random_ids(
    rng: np.random.Generator, n: int, low: int = 10_000_000, high: int = 9_999_999_999
) -> np.ndarray:
    """`n` sorted unique random int64 ids in [low, high)."""
    ids = np.unique(rng.integers(low, high, size=n + n // 10 + 100, dtype=np.int64))
    while len(ids) < n:  # practically never: collisions are rare in a 10-billion range
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, size=n, dtype=np.int64)]))
    keep = np.sort(rng.choice(len(ids), size=n, replace=False))
    return ids[keep]


def simulate_population(n_persons: int, rng: np.random.Generator, study: StudyWindow) -> Population:
    """Draw persons resident at study start or born during the window, with Gompertz mortality."""
    person_id = _unique_random_ids(rng, n_persons)
    is_male = rng.random(n_persons) < 0.5
    candidate_years = np.arange(FIRST_BIRTH_YEAR, study.last_year)
    weights = np.interp(candidate_years, BIRTH_YEAR_ANCHORS, BIRTH_YEAR_WEIGHTS)
    birth_year = rng.choice(candidate_years, size=n_persons, p=weights / weights.sum())
    year_start = year_start_day(birth_year)
    year_length = year_start_day(birth_year + 1) - year_start
    birth_day = year_start + np.floor(rng.random(n_persons) * year_length).astype(np.int64)
    birth_month = (
        birth_day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    ).astype(np.int8)
    birth_month_recorded = np.where(rng.random(n_persons) < BIRTH_MONTH_MISSING_SHARE, 0, birth_month).astype(
        np.int8
    )
    latent_factor = rng.standard_normal(n_persons)
    entry_day = np.maximum(birth_day, study.start_day)

    # Gompertz death age conditional on being alive at entry: invert H(age) = a/b (exp(b age) - 1).
    entry_age = (entry_day - birth_day) / DAYS_PER_YEAR
    unit_exponential = rng.exponential(size=n_persons)
    a, b = GOMPERTZ_MORTALITY_AT_AGE_0, GOMPERTZ_MORTALITY_SLOPE
    death_age = np.log(np.exp(b * entry_age) + b * unit_exponential / a) / b
    true_death_day = np.maximum(
        birth_day + np.floor(death_age * DAYS_PER_YEAR).astype(np.int64), entry_day + 1
    )

    emigrates = rng.random(n_persons) < EMIGRATION_SHARE
    emigration_candidate = (
        entry_day
        + 1
        + np.floor(rng.random(n_persons) * np.maximum(study.end_day - entry_day, 1)).astype(np.int64)
    )
    emigrates &= (emigration_candidate <= study.end_day) & (emigration_candidate < true_death_day)
    emigration_day = np.where(emigrates, emigration_candidate, NEVER)

    education = rng.choice(len(EDUCATION_SHARES), size=n_persons, p=EDUCATION_SHARES).astype(np.int8)
    education = np.where(rng.random(n_persons) < EDUCATION_MISSING_SHARE, -1, education).astype(np.int8)
    return Population(
        person_id=person_id,
        is_male=is_male,
        birth_day=birth_day,
        birth_year=birth_year.astype(np.int32),
        birth_month_recorded=birth_month_recorded,
        latent_factor=latent_factor,
        entry_day=entry_day,
        true_death_day=true_death_day,
        emigration_day=emigration_day,
        education=education,
    )


def population_table(population: Population, study: StudyWindow) -> pa.Table:
    """The population register extract (canonical columns) of the simulated persons."""
    death_observed = (population.true_death_day <= study.end_day) & (population.emigration_day == NEVER)
    emigrated = population.emigration_day != NEVER
    return pa.table(
        {
            "person_id": pa.array(population.person_id, type=pa.int64()),
            "sex": pa.array(np.where(population.is_male, "M", "F"), type=pa.string()),
            "birth_year": pa.array(population.birth_year, type=pa.int32()),
            "birth_month": pa.array(
                population.birth_month_recorded, type=pa.int8(), mask=population.birth_month_recorded == 0
            ),
            "death_date": date_array(np.where(death_observed, population.true_death_day, 0), death_observed),
            "emigration_date": date_array(np.where(emigrated, population.emigration_day, 0), emigrated),
            "education": pa.array(population.education, type=pa.int8(), mask=population.education < 0),
        }
    )


def person_years(
    population: Population, study: StudyWindow
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each person's time at risk into calendar years: (person index, start day, days, age in years)."""
    entry_day = population.entry_day
    exit_day = population.exit_day(study)
    first_year = year_of_day(entry_day)
    last_year = year_of_day(exit_day - 1)
    n_years = np.maximum(last_year - first_year + 1, 0)
    person = np.repeat(np.arange(len(population)), n_years)
    offsets = np.cumsum(n_years) - n_years
    year = first_year[person] + (np.arange(len(person)) - offsets[person])
    year_start = year_start_day(year)
    start = np.maximum(year_start, entry_day[person])
    end = np.minimum(year_start_day(year + 1), exit_day[person])
    age = np.clip(year - population.birth_year[person], 0, MAX_AGE)
    return person, start, end - start, age
