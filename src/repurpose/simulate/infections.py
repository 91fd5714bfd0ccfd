"""Serious-infection diagnoses of the simulated MS patients: the planted safety signal of high-efficacy therapy
that the trial emulation's safety outcome (`serious_infection`, issue 17) should find.

Owns: the infection process and its records in the diagnosis extract. A registry patient has serious
infections from the MS diagnosis until death, emigration or study end as a Poisson process of
`rate_per_1000_years` / 1000 per year, multiplied by `high_efficacy_rate_ratio` on the days a high-efficacy
treatment episode runs (its start day included, its stop day excluded; an ongoing episode to the end of
follow-up). Drawn by thinning a process of the larger rate. Each infection is one record of a code drawn with
the weights of `INFECTION_CODES` (categories of the default `trial_emulation.serious_infection_codes`); like
every record of the extract, only those inside the study window are written. The draws use a random stream of
their own per chunk ([seed, INFECTION_STREAM, chunk]), so every other simulated output is the same with the
infections on or off. Imports numpy and the simulator's `dates`, `diagnoses`, `clinical_model` and
`disease_course`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repurpose.simulate.clinical_model import DrugTable
from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow
from repurpose.simulate.diagnoses import DiagnosisRecords
from repurpose.simulate.disease_course import ClinicalCourse

INFECTION_STREAM = 8
"""Random stream id of the serious infections per chunk (0-7: see `counterfactual.COUNTERFACTUAL_STREAM`)."""
INFECTION_CODES: tuple[tuple[str, float], ...] = (
    ("J189", 0.35),  # pneumonia
    ("A419", 0.15),  # sepsis
    ("B029", 0.14),  # herpes zoster
    ("L031", 0.14),  # cellulitis
    ("N10", 0.12),  # acute pyelonephritis
    ("G039", 0.05),  # meningitis
    ("A162", 0.03),  # pulmonary tuberculosis
    ("A812", 0.02),  # progressive multifocal leukoencephalopathy
)
"""Recorded ICD-10 codes (normalised: no dots) and their shares of the infections."""


@dataclass
class InfectionChunk:
    """One chunk's infection records (one part per code, `person` the global population index) and the
    person-time and events on and off high-efficacy therapy inside the study window (for the truth)."""

    records: list[DiagnosisRecords]
    years_on: float
    years_off: float
    events_on: int
    events_off: int


def on_high_efficacy(course: ClinicalCourse, drugs: DrugTable, end_day: np.ndarray, patient: np.ndarray,
                     day: np.ndarray) -> np.ndarray:  # fmt: skip
    """Whether each (patient, day) lies in one of the patient's high-efficacy episodes [start, stop)."""
    he = np.flatnonzero(drugs.high_efficacy[course.episode_drug])
    ep_patient = course.episode_patient[he]
    order = np.argsort(ep_patient, kind="stable")
    ep_patient = ep_patient[order]
    start = course.episode_start[he][order]
    stop = np.where(course.episode_stop[he] >= 0, course.episode_stop[he], end_day[course.episode_patient[he]])[order]
    lo = np.searchsorted(ep_patient, patient, "left")
    hi = np.searchsorted(ep_patient, patient, "right")
    on = np.zeros(len(patient), dtype=bool)
    for k in range(int((hi - lo).max(initial=0))):
        j = np.minimum(lo + k, max(len(start) - 1, 0))
        on |= (lo + k < hi) & (start[j] <= day) & (day < stop[j])
    return on


def _high_efficacy_days(course: ClinicalCourse, drugs: DrugTable, first: np.ndarray, end: np.ndarray) -> float:
    """Days of high-efficacy episodes inside each patient's [first, end) (episodes of a patient do not overlap)."""
    he = np.flatnonzero(drugs.high_efficacy[course.episode_drug])
    patient = course.episode_patient[he]
    stop = np.where(course.episode_stop[he] >= 0, course.episode_stop[he], end[patient])
    lo = np.maximum(course.episode_start[he], first[patient])
    return float(np.maximum(np.minimum(stop, end[patient]) - lo, 0).sum())


def simulate_infections(
    rng: np.random.Generator,
    course: ClinicalCourse,
    drugs: DrugTable,
    person: np.ndarray,
    diagnosis_day: np.ndarray,
    end_day: np.ndarray,
    study: StudyWindow,
    rate_per_1000_years: float,
    high_efficacy_rate_ratio: float,
) -> InfectionChunk:
    """The serious infections of one chunk's registry patients (module doc); `person` is their global
    population index, `end_day` their first day no longer followed."""
    span = np.maximum(end_day - diagnosis_day, 0)
    base = rate_per_1000_years / 1000.0 / DAYS_PER_YEAR
    top = base * max(high_efficacy_rate_ratio, 1.0)
    count = rng.poisson(top * span)
    patient = np.repeat(np.arange(len(person)), count)
    day = diagnosis_day[patient] + np.floor(rng.random(len(patient)) * span[patient]).astype(np.int64)
    on = on_high_efficacy(course, drugs, end_day, patient, day)
    keep = rng.random(len(patient)) < np.where(on, high_efficacy_rate_ratio, 1.0) * base / top
    code = rng.choice(len(INFECTION_CODES), size=int(keep.sum()), p=[w for _, w in INFECTION_CODES])
    patient, day, on = patient[keep], day[keep], on[keep]
    window = (day >= study.start_day) & (day <= study.end_day)
    records = [
        DiagnosisRecords(person=person[patient[window & (code == c)]], day=day[window & (code == c)], code=name)
        for c, (name, _) in enumerate(INFECTION_CODES)
    ]
    first = np.maximum(diagnosis_day, study.start_day)
    last = np.minimum(end_day, study.end_day + 1)
    days_on = _high_efficacy_days(course, drugs, first, np.maximum(last, first))
    days_all = float(np.maximum(last - first, 0).sum())
    return InfectionChunk(records=records, years_on=days_on / DAYS_PER_YEAR, years_off=(days_all - days_on) / DAYS_PER_YEAR,
                          events_on=int((window & on).sum()), events_off=int((window & ~on).sum()))  # fmt: skip
