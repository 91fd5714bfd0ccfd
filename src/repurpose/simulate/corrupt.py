"""Invalid rows injected into the simulated extracts, to exercise validation.

Owns: the kinds of invalid rows, how `n_corrupt_rows` is spread over them and where the invalid
dispensing rows go (null-role substances only, so they never change the planted truth). Imports numpy
and the simulator's `population`, `prescriptions` and `profiles`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repurpose.simulate.dates import StudyWindow
from repurpose.simulate.population import Population
from repurpose.simulate.prescriptions import SubstanceTable
from repurpose.simulate.profiles import NULL

CORRUPT_KINDS: tuple[str, ...] = (
    "malformed_atc_code",
    "negative_ddd",
    "unknown_person_dispensing",
    "dispense_date_outside_window",
    "ms_registry_unknown_person",
    "diagnosis_before_birth",
)
MALFORMED_ATC_CODES: tuple[str, ...] = ("N06AB6", "R03AC0X", "J01CA", "1234567", "N06AB066", "C1OAA01")


def spread_corrupt_rows(n_corrupt_rows: int) -> dict[str, int]:
    """Spread `n_corrupt_rows` as evenly as possible over CORRUPT_KINDS (earlier kinds get the remainder)."""
    base, remainder = divmod(max(n_corrupt_rows, 0), len(CORRUPT_KINDS))
    return {kind: base + (i < remainder) for i, kind in enumerate(CORRUPT_KINDS)}


def unknown_person_ids(rng: np.random.Generator, known_ids: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Ids absent from `known_ids`, each just above the id at index `near` (so sorted order is kept)."""
    result = []
    for index in near:
        upper = known_ids[index + 1] if index + 1 < len(known_ids) else known_ids[index] + 1000
        if upper - known_ids[index] < 2:
            upper = known_ids[index] + 2  # adjacent ids: fall back to the only free value, checked below
        candidate = int(known_ids[index] + 1 + rng.integers(0, max(int(upper - known_ids[index] - 1), 1)))
        while np.isin(candidate, known_ids):
            candidate += 1
        result.append(candidate)
    return np.array(result, dtype=np.int64)


@dataclass
class CorruptPlan:
    """Invalid dispensing rows to inject, by global person index (written with that person's chunk)."""

    host: np.ndarray  # global person index each row sits next to
    kind: np.ndarray  # index into CORRUPT_KINDS
    day: np.ndarray
    substance: np.ndarray  # index into the ATC dictionary
    ddd: np.ndarray
    person_id: np.ndarray  # id written in the row (unknown ids for unknown-person rows)

    def take(self, rows: np.ndarray) -> CorruptPlan:
        return CorruptPlan(**{name: value[rows] for name, value in self.__dict__.items()})


def plan_corrupt_dispensings(
    rng: np.random.Generator,
    population: Population,
    substances: SubstanceTable,
    study: StudyWindow,
    counts: dict[str, int],
) -> CorruptPlan:
    """Choose hosts, dates and values of the invalid dispensing rows (null-role substances only)."""
    null_substances = substances.indices(NULL)
    null_substances = null_substances[substances.episode_rate[null_substances] > 0]
    exit_day = population.exit_day(study)
    whole_window = np.flatnonzero((population.entry_day == study.start_day) & (exit_day == study.end_day + 1))
    hosts, kinds, days, atc, ddd, ids = [], [], [], [], [], []
    for kind_index, kind in enumerate(CORRUPT_KINDS[:4]):
        n = counts[kind]
        if n == 0:
            continue
        pool = (
            whole_window
            if kind == "dispense_date_outside_window" and len(whole_window)
            else np.arange(len(population))
        )
        host = np.sort(rng.choice(pool, size=n, replace=len(pool) < n))
        span = exit_day[host] - population.entry_day[host]
        day = population.entry_day[host] + np.floor(rng.random(n) * span).astype(np.int64)
        substance = rng.choice(null_substances, size=n)
        dose = substances.ddd_per_dispensing[substance].copy()
        person_id = population.person_id[host].copy()
        if kind == "malformed_atc_code":
            substance = len(substances) + rng.integers(0, len(MALFORMED_ATC_CODES), size=n)
        elif kind == "negative_ddd":
            dose = -dose
        elif kind == "unknown_person_dispensing":
            person_id = unknown_person_ids(rng, population.person_id, host)
        elif kind == "dispense_date_outside_window":
            before = rng.random(n) < 0.5
            offset = 1 + rng.integers(0, 180, size=n)
            day = np.where(before, study.start_day - offset, study.end_day + offset)
        hosts.append(host)
        kinds.append(np.full(n, kind_index))
        days.append(day)
        atc.append(substance)
        ddd.append(dose)
        ids.append(person_id)
    if not hosts:
        empty = np.zeros(0, dtype=np.int64)
        return CorruptPlan(empty, empty, empty, empty, np.zeros(0), empty)
    return CorruptPlan(
        host=np.concatenate(hosts),
        kind=np.concatenate(kinds),
        day=np.concatenate(days),
        substance=np.concatenate(atc),
        ddd=np.concatenate(ddd),
        person_id=np.concatenate(ids),
    )
