"""The simulated MS clinical course of the registry's patients: relapses, EDSS, treatments and sick leave.

Why: the persistence study (issue 16) and the trial emulation of early high-efficacy therapy (issue 17)
need registry-like clinical tables with a known truth. The model, in 30-day steps from the registry's
record start (`RECORDS_FROM_YEARS_BEFORE_STUDY` before study start) to the end of follow-up (death,
emigration or the extraction date = study end), per patient:

* Clinic and country: each patient is followed at one clinic, drawn with the clinics' unequal size shares
  (`clinical_model.Clinics`; default 8 Norwegian and 6 Danish clinics). The course at diagnosis is the
  registry's (RR, SP, PP); a quarter of the RR patients diagnosed within a year of onset are recorded as
  CIS, and 4% of all as `unknown` (they are simulated as their underlying course).
* Disease activity: a patient frailty F ~ Gamma(2, 1/2) (mean 1) multiplies the relapse rate, and
  sqrt(F) the progression hazard.
* Relapses: a Poisson process from onset (at most one per 30-day step, and none within 30 days of the
  previous one: new symptoms within 30 days are the same relapse) with rate per year
  `RELAPSE_RATE_AT_ONSET * exp(-RELAPSE_DECLINE_PER_YEAR * years since onset)
  * RELAPSE_RATE_RATIO_PER_DECADE ** ((age - 30) / 10) * F * course factor * RR(drug)`, where RR(drug) is
  the drug's planted relapse rate ratio while a drug is taken (`clinical_model.DRUGS`).
* Disability: an underlying EDSS that starts at the registry's EDSS at diagnosis and rises by 0.5 at the
  events of a worsening process with hazard per year `PROGRESSION_RATE[course] * exp(0.02 (age - 40))
  * sqrt(F) * HR(drug)` (HR(drug) planted, lowest on the high-efficacy drugs), plus 0.5 with probability
  `RELAPSE_WORSENING_PROBABILITY` at each relapse after diagnosis; capped at 9.5. Visits from diagnosis
  (none at diagnosis when the registry lacks the EDSS) every ~6 months in the first two years, then
  yearly (intervals x uniform(0.8, 1.25)); the recorded EDSS is off by 0.5 at 20% of the later visits.
* Treatment: a patient is ever treated with probability `TREATED_SHARE[course]` (halved from age 55 at
  diagnosis). The first start follows diagnosis (or the first drug's availability) after a lognormal delay
  (median 90 days from 2008, 180 before). At a start the drug is drawn among those available on that day
  (not used before; anti-CD20 only for PP) with log preference = base + country + era (the interferons and
  glatiramer lose `OLDER_DRUGS_DECLINE_PER_YEAR` a year after 2012) + for high-efficacy drugs
  0.8 * activity (relapses in the last 24 months before the start day + 0.4 (the last recorded EDSS on
  the start day, the registry's at diagnosis or a visit's, - 2; no EDSS term while none is recorded): only
  what the records show that day, so a registry analysis can adjust for all of it): confounding by
  indication, + 1.5
  after a stop for lack of efficacy (escalation), + 1.5 for the drug stopped for a pregnancy.
* Discontinuation: competing reasons with hazards (per year) `BASELINE_STOP_HAZARD_PER_YEAR[reason]`
  times: adverse events x the drug's factor x 2.5 in the first half year; lack of efficacy
  x exp(2.3 * relapses on the drug in the last 12 months) x 0.5 on a high-efficacy drug; pregnancy only
  for women 18-44 (x 1 at 25-34, 0.5 otherwise); `other` x 4 on natalizumab after two years (JCV); and
  every reason x exp(clinic log HR) (u_c ~ N(0, tau^2), plus the outlier clinics' planted extra effect).
  After a stop, a later start follows with a reason-specific probability and delay (`RESTART`). A share
  of recorded reasons is `unknown`. Episodes still running at the end of follow-up have no stop date.
* Sick leave (working age 18-66, inside the study window, after onset): an episode starts at a relapse
  with probability 0.6 (median 35 days, mostly 100%), or otherwise at rate 0.12 * exp(0.25 EDSS) per
  year (median 30 * (1 + 0.3 EDSS) days, capped at a year; 100% or a partial grade 20-80%).

Steps are 30 days: the drug, EDSS and counts at a step's start apply for the whole step. Imports numpy
and the simulator's `dates`, `clinical_model` and `population`.

Counterfactual mode (`FirstTherapyForcing`, used by `counterfactual`): the same patients (clinic, recorded
course, frailty, ever treated, natural delay to the first start: the simulator's own draws) with the first
therapy forced: the delay capped at `grace_days` after diagnosis, and the first drug drawn by the same
preference model but only among the available drugs of one class (high-efficacy or not, `Drug.high_efficacy`;
fingolimod counts as high-efficacy). When no drug of the class is available yet (a high-efficacy first start
before natalizumab, 2006-09-01) the start waits for the first one; a primary progressive patient (anti-CD20
only) forced to a moderate first drug is never treated. Everything else follows the model above, drawn from
the forcing's own stream from the first 30-day step on. Without forcing nothing changes (same draws).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from repurpose.simulate.clinical_model import (
    ADVERSE_EVENT_EARLY_FACTOR,
    ADVERSE_EVENT_EARLY_YEARS,
    BASELINE_STOP_HAZARD_PER_YEAR,
    ESCALATION_LOG_WEIGHT,
    HIGH_EFFICACY_LOG_WEIGHT_PER_ACTIVITY,
    LACK_OF_EFFICACY_HIGH_EFFICACY_FACTOR,
    LACK_OF_EFFICACY_LOG_HR_PER_RELAPSE,
    MIN_SWITCH_DAYS,
    NATALIZUMAB_OTHER_FACTOR_AFTER_2_YEARS,
    OLDER_DRUGS_DECLINE_PER_YEAR,
    PREGNANCY_AGE_FACTORS,
    RESTART,
    RESTART_DELAY_LOG_SD,
    RESUME_LOG_WEIGHT,
    STOP_REASONS,
    Clinics,
    DrugTable,
)
from repurpose.simulate.dates import DAYS_PER_YEAR, NEVER, StudyWindow, year_of_day
from repurpose.simulate.population import Population

STEP_DAYS = 30
RECORDS_FROM_YEARS_BEFORE_STUDY = 10
"""The registry's clinical records (relapses, visits, treatments) start this many years before study start."""
RELAPSE_RATE_AT_ONSET = 0.9
RELAPSE_DECLINE_PER_YEAR = 0.08
RELAPSE_RATE_RATIO_PER_DECADE = 0.8
RELAPSE_MIN_SEPARATION_DAYS = 30
RELAPSE_COURSE_FACTOR = (1.0, 0.35, 0.05)  # RR (and CIS), SP, PP
PROGRESSION_RATE = (0.18, 0.6, 0.7)  # EDSS half-steps per year, RR, SP, PP
PROGRESSION_LOG_HR_PER_YEAR_OF_AGE = 0.02
RELAPSE_WORSENING_PROBABILITY = 0.3
EDSS_MAX = 9.5
EDSS_VISIT_ERROR_SHARE = 0.2
FRAILTY_SHAPE = 2.0
TREATED_SHARE = (0.88, 0.5, 0.3)  # RR (and CIS), SP, PP
TREATED_SHARE_FACTOR_FROM_AGE_55 = 0.5
FIRST_START_MEDIAN_DAYS = (180.0, 90.0)  # diagnosed before 2008, from 2008
FIRST_START_LOG_SD = 0.8
CIS_SHARE_OF_EARLY_RR = 0.25
UNKNOWN_COURSE_SHARE = 0.04
SICK_LEAVE_AGES = (18.0, 67.0)
SICK_LEAVE_AT_RELAPSE = 0.6
SICK_LEAVE_RATE_PER_YEAR = 0.12
SICK_LEAVE_LOG_RATE_PER_EDSS = 0.25
SICK_LEAVE_PARTIAL_GRADES = (20, 40, 50, 60, 80)
SICK_LEAVE_MAX_DAYS = 365
SICK_LEAVE_PARTIAL_SHARE = (0.2, 0.45)  # at a relapse, otherwise

COURSE_LABELS = np.array(["RR", "SP", "PP", "CIS", "unknown"])


@dataclass(frozen=True)
class FirstTherapyForcing:
    """The counterfactual first therapy (module docstring): the class of the first drug, the grace period
    from diagnosis, and the stream of everything from the first step on (the patients' set-up keeps the
    simulator's stream, so they are the same patients)."""

    high_efficacy: bool
    grace_days: int
    course_rng: np.random.Generator


@dataclass
class PatientInput:
    """The registry patients of one chunk (indices into the chunk) and their registry values."""

    person: np.ndarray
    birth_day: np.ndarray
    is_female: np.ndarray
    onset_day: np.ndarray
    diagnosis_day: np.ndarray
    end_day: np.ndarray  # first day no longer followed: death, emigration or the day after study end
    course: np.ndarray  # 0 RR, 1 SP, 2 PP
    edss_at_diagnosis: np.ndarray
    edss_known: np.ndarray

    @classmethod
    def from_registry(cls, registry: Mapping[str, np.ndarray], persons: Population, study: StudyWindow) -> PatientInput:
        """The chunk's registry patients from its MS registry rows (`ms_registry.ms_registry_rows`: person local to
        the chunk, onset, diagnosis, course, EDSS) and its population: the one place the simulator and its
        counterfactual runs (`counterfactual`) take the same patients from."""
        person = registry["person"]
        return cls(
            person=person,
            birth_day=persons.birth_day[person],
            is_female=~persons.is_male[person],
            onset_day=registry["onset_day"],
            diagnosis_day=registry["diagnosis_day"],
            end_day=persons.exit_day(study)[person],
            course=registry["course"],
            edss_at_diagnosis=registry["edss"],
            edss_known=registry["edss_known"],
        )


@dataclass
class ClinicalCourse:
    """The simulated clinical records of one chunk; `*_patient` index the chunk's registry patients."""

    clinic: np.ndarray  # per patient, index into Clinics
    course_label: np.ndarray  # per patient, index into COURSE_LABELS
    relapse_patient: np.ndarray
    relapse_day: np.ndarray
    visit_patient: np.ndarray
    visit_day: np.ndarray
    visit_edss: np.ndarray
    episode_patient: np.ndarray
    episode_drug: np.ndarray
    episode_start: np.ndarray
    episode_stop: np.ndarray  # -1 = ongoing at the end of follow-up
    episode_reason: np.ndarray  # index into STOP_REASONS, -1 = ongoing
    leave_patient: np.ndarray
    leave_start: np.ndarray
    leave_end: np.ndarray
    leave_percent: np.ndarray


class _Records:
    """Growing lists of record arrays, concatenated once at the end."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {}

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self.parts.setdefault(name, []).append(np.asarray(values))

    def get(self, name: str, dtype: type) -> np.ndarray:
        parts = self.parts.get(name, [])
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _pregnancy_factor(age: np.ndarray, is_female: np.ndarray) -> np.ndarray:
    factor = np.zeros(len(age))
    for low, high, value in PREGNANCY_AGE_FACTORS:
        factor[(age >= low) & (age < high)] = value
    return np.where(is_female, factor, 0.0)


def _lognormal_days(
    rng: np.random.Generator, median: np.ndarray | float, log_sd: float, n: int
) -> np.ndarray:
    return np.exp(np.log(median) + log_sd * rng.standard_normal(n))


def simulate_course(
    patients: PatientInput,
    clinics: Clinics,
    drugs: DrugTable,
    rng: np.random.Generator,
    study: StudyWindow,
    forcing: FirstTherapyForcing | None = None,
) -> ClinicalCourse:
    """The clinical records of one chunk's registry patients (see the module docstring for the model);
    `forcing` gives the counterfactual first therapy (None: the simulator's registry)."""
    n, n_drugs = len(patients.person), len(drugs.codes)
    records_from = study.start_day - int(round(RECORDS_FROM_YEARS_BEFORE_STUDY * DAYS_PER_YEAR))
    n_steps = max(int(np.ceil((study.end_day + 1 - records_from) / STEP_DAYS)), 1)

    clinic = rng.choice(len(clinics.ids), size=n, p=clinics.size_share)
    clinic_log_hr = clinics.log_hr[clinic]
    country_weight = drugs.country_log_weight(sorted(set(clinics.country)))
    country_index = np.searchsorted(np.array(sorted(set(clinics.country))), clinics.country[clinic])
    course = patients.course.astype(np.int64)
    early = (patients.diagnosis_day - patients.onset_day) < DAYS_PER_YEAR
    label = course.copy()
    label[(course == 0) & early & (rng.random(n) < CIS_SHARE_OF_EARLY_RR)] = 3
    label[rng.random(n) < UNKNOWN_COURSE_SHARE] = 4
    frailty = rng.gamma(FRAILTY_SHAPE, 1.0 / FRAILTY_SHAPE, n)
    age_at_diagnosis = (patients.diagnosis_day - patients.birth_day) / DAYS_PER_YEAR
    treated_share = np.array(TREATED_SHARE)[course] * np.where(
        age_at_diagnosis >= 55, TREATED_SHARE_FACTOR_FROM_AGE_55, 1.0
    )
    treated = rng.random(n) < treated_share
    first_available = int(drugs.available_day.min())
    median_delay = np.where(
        year_of_day(patients.diagnosis_day) >= 2008, FIRST_START_MEDIAN_DAYS[1], FIRST_START_MEDIAN_DAYS[0]
    )
    median_delay = np.where(patients.diagnosis_day < first_available, 2 * DAYS_PER_YEAR, median_delay)
    delay = np.maximum(np.ceil(_lognormal_days(rng, median_delay, FIRST_START_LOG_SD, n)), 1).astype(np.int64)
    if forcing is not None:
        delay = np.minimum(delay, forcing.grace_days)
    next_start = np.where(treated, np.maximum(patients.diagnosis_day, first_available) + delay, NEVER)

    # state
    edss = patients.edss_at_diagnosis.astype(np.float64).copy()
    before_records = patients.diagnosis_day < records_from
    years_before = np.maximum(records_from - patients.diagnosis_day, 0) / DAYS_PER_YEAR
    edss = np.where(
        before_records,
        np.minimum(edss + 0.5 * rng.poisson(np.array(PROGRESSION_RATE)[course] * years_before), EDSS_MAX),
        edss,
    )
    drug = np.full(n, -1, dtype=np.int64)
    episode_start = np.zeros(n, dtype=np.int64)
    episode_start_step = np.zeros(n, dtype=np.int64)
    episode_row = np.full(n, -1, dtype=np.int64)
    escalate = np.zeros(n, dtype=bool)
    resume_drug = np.full(n, -1, dtype=np.int64)
    used = np.zeros((n, n_drugs), dtype=bool)
    next_visit = np.where(
        before_records,
        records_from + rng.integers(0, 365, n),
        np.where(patients.edss_known, patients.diagnosis_day, patients.diagnosis_day + 182),
    )
    leave_until = np.full(n, -1, dtype=np.int64)
    # the EDSS the records show: the registry's score at diagnosis, then each visit's
    recorded_edss = np.where(patients.edss_known, patients.edss_at_diagnosis, np.nan).astype(np.float64)
    recorded_day = np.where(patients.edss_known, patients.diagnosis_day, -NEVER).astype(np.int64)
    last_relapse = np.full(n, -NEVER, dtype=np.int64)
    cumulative_relapses = np.zeros((n, n_steps + 1), dtype=np.int32)
    ever_started = np.zeros(n, dtype=bool)
    if forcing is not None:
        rng = forcing.course_rng
        first_class = drugs.high_efficacy == forcing.high_efficacy

    relapses, visits, leaves = _Records(), _Records(), _Records()
    ep_patient: list[np.ndarray] = []
    ep_drug: list[np.ndarray] = []
    ep_start: list[np.ndarray] = []
    n_episodes = 0
    stop_rows: list[np.ndarray] = []
    stop_days: list[np.ndarray] = []
    stop_reasons: list[np.ndarray] = []
    stop_hazards = np.array([BASELINE_STOP_HAZARD_PER_YEAR[r] for r in STOP_REASONS])
    restart_probability = np.array([RESTART[r][0] for r in STOP_REASONS])
    restart_median = np.array([RESTART[r][1] for r in STOP_REASONS])
    pregnancy_reason = STOP_REASONS.index("pregnancy")
    lack_reason = STOP_REASONS.index("lack_of_efficacy")

    for step in range(n_steps):
        d0 = records_from + step * STEP_DAYS
        d1 = d0 + STEP_DAYS
        span_start = np.maximum(d0, patients.onset_day + 1)
        span_end = np.minimum(d1, patients.end_day)
        span_end = np.minimum(span_end, study.end_day + 1)
        active = span_end > span_start
        span_years = np.where(active, span_end - span_start, 0) / DAYS_PER_YEAR
        age = (d0 - patients.birth_day) / DAYS_PER_YEAR
        on_drug = drug >= 0
        drug_index = np.maximum(drug, 0)
        diagnosed = patients.diagnosis_day < d0
        at_diagnosis = (patients.diagnosis_day >= d0) & (patients.diagnosis_day < d1)
        edss = np.where(at_diagnosis, patients.edss_at_diagnosis, edss)

        # relapses
        rate = (
            RELAPSE_RATE_AT_ONSET
            * np.exp(-RELAPSE_DECLINE_PER_YEAR * np.maximum(d0 - patients.onset_day, 0) / DAYS_PER_YEAR)
            * RELAPSE_RATE_RATIO_PER_DECADE ** ((age - 30.0) / 10.0)
            * frailty
            * np.array(RELAPSE_COURSE_FACTOR)[course]
            * np.exp(np.where(on_drug, drugs.log_relapse_rr[drug_index], 0.0))
        )
        # at most one relapse in a step, and none within RELAPSE_MIN_SEPARATION_DAYS of the previous one
        # (new symptoms within 30 days belong to the same relapse)
        relapse_day = span_start + np.floor(rng.random(n) * (span_end - span_start)).astype(np.int64)
        relapsed = active & (rng.random(n) < -np.expm1(-rate * span_years))
        relapsed &= relapse_day - last_relapse >= RELAPSE_MIN_SEPARATION_DAYS
        n_relapses = relapsed.astype(np.int64)
        who = np.flatnonzero(relapsed)
        relapses.add(patient=who, day=relapse_day[who])
        last_relapse[who] = relapse_day[who]
        first_relapse = np.where(relapsed, relapse_day, NEVER)
        cumulative_relapses[:, step + 1] = cumulative_relapses[:, step] + n_relapses
        worsening = rng.binomial(n_relapses, RELAPSE_WORSENING_PROBABILITY) * diagnosed
        progression = (
            np.array(PROGRESSION_RATE)[course]
            * np.exp(PROGRESSION_LOG_HR_PER_YEAR_OF_AGE * (age - 40.0))
            * np.sqrt(frailty)
            * np.exp(np.where(on_drug, drugs.log_progression_hr[drug_index], 0.0))
        )
        steps_up = rng.poisson(progression * span_years) * diagnosed + worsening
        edss = np.minimum(edss + 0.5 * steps_up, np.maximum(EDSS_MAX, edss))  # (the registry has a few 10s)

        # EDSS visits
        recorded_before_step = recorded_edss.copy()
        due = active & (next_visit < span_end) & (next_visit >= patients.diagnosis_day)
        due_index = np.flatnonzero(due)
        if len(due_index):
            day = np.maximum(next_visit[due_index], span_start[due_index])
            error = (rng.random(len(due_index)) < EDSS_VISIT_ERROR_SHARE) & (
                day != patients.diagnosis_day[due_index]
            )
            sign = np.where(rng.random(len(due_index)) < 0.5, -0.5, 0.5)
            observed = np.clip(edss[due_index] + error * sign, 0.0, np.maximum(EDSS_MAX, edss[due_index]))
            visits.add(patient=due_index, day=day, edss=observed)
            recorded_edss[due_index] = observed
            recorded_day[due_index] = day
            early_years = (day - patients.diagnosis_day[due_index]) < 2 * DAYS_PER_YEAR
            interval = np.where(early_years, 182.0, 365.0) * rng.uniform(0.8, 1.25, len(due_index))
            next_visit[due_index] = day + np.maximum(np.rint(interval).astype(np.int64), 30)

        # discontinuation (competing reasons)
        stopping_candidates = np.flatnonzero(on_drug & active & (episode_start + 1 < span_end))
        if len(stopping_candidates):
            c = stopping_candidates
            dc = drug[c]
            years_on = (d0 - episode_start[c]) / DAYS_PER_YEAR
            relapses_on = (
                cumulative_relapses[c, step + 1]
                - cumulative_relapses[c, np.maximum(episode_start_step[c], step - 11)]
            )
            hazards = np.tile(stop_hazards, (len(c), 1))
            hazards[:, 0] *= drugs.adverse_event_factor[dc] * np.where(
                years_on < ADVERSE_EVENT_EARLY_YEARS, ADVERSE_EVENT_EARLY_FACTOR, 1.0
            )
            hazards[:, 1] *= np.exp(LACK_OF_EFFICACY_LOG_HR_PER_RELAPSE * relapses_on) * np.where(
                drugs.high_efficacy[dc], LACK_OF_EFFICACY_HIGH_EFFICACY_FACTOR, 1.0
            )
            hazards[:, 2] *= _pregnancy_factor(age[c], patients.is_female[c])
            hazards[:, 4] *= np.where(
                (dc == drugs.natalizumab) & (years_on >= 2), NATALIZUMAB_OTHER_FACTOR_AFTER_2_YEARS, 1.0
            )
            hazards *= np.exp(clinic_log_hr[c])[:, None]
            low = np.maximum(span_start[c], episode_start[c] + 1)
            exposure_years = (span_end[c] - low) / DAYS_PER_YEAR
            total = hazards.sum(axis=1)
            stops = rng.random(len(c)) < 1.0 - np.exp(-total * exposure_years)
            reason_draw = rng.random(len(c))
            if stops.any():
                s = c[stops]
                cumulative = np.cumsum(hazards[stops], axis=1) / total[stops, None]
                reason = np.minimum(
                    (reason_draw[stops, None] > cumulative).sum(axis=1), len(STOP_REASONS) - 1
                )
                stop_day = low[stops] + np.floor(rng.random(len(s)) * (span_end[s] - low[stops])).astype(
                    np.int64
                )
                stop_rows.append(episode_row[s])
                stop_days.append(stop_day)
                stop_reasons.append(reason)
                stopped_drug = drug[s]
                pregnancy = reason == pregnancy_reason
                used[s[pregnancy], stopped_drug[pregnancy]] = False
                resume_drug[s] = np.where(pregnancy, stopped_drug, -1)
                escalate[s] = reason == lack_reason
                restart = rng.random(len(s)) < restart_probability[reason]
                wait = np.maximum(
                    np.ceil(_lognormal_days(rng, restart_median[reason], RESTART_DELAY_LOG_SD, len(s))),
                    MIN_SWITCH_DAYS,
                ).astype(np.int64)
                next_start[s] = np.where(restart, stop_day + wait, NEVER)
                drug[s] = -1

        # starts
        starting = np.flatnonzero((drug < 0) & active & (next_start < span_end) & (next_start < NEVER))
        if len(starting):
            s = starting
            start_day = np.maximum(next_start[s], span_start[s])
            available = (drugs.available_day[None, :] <= start_day[:, None]) & ~used[s]
            progressive_primary = course[s] == 2
            available &= ~progressive_primary[:, None] | drugs.progressive_ok[None, :]
            later = (drugs.available_day[None, :] > start_day[:, None]) & ~used[s]
            later &= ~progressive_primary[:, None] | drugs.progressive_ok[None, :]
            if forcing is not None:
                forced = ever_started[s][:, None] | first_class[None, :]  # the class binds the first start only
                available &= forced
                later &= forced
            # the activity in the records on the start day: relapses before it (this step's only if dated
            # earlier) and the last recorded EDSS (a visit of this step only if on or before it; no EDSS term
            # while none is recorded)
            relapses_24m = (
                cumulative_relapses[s, step] - cumulative_relapses[s, max(step - 23, 0)]
                + (first_relapse[s] < start_day)
            )
            known_edss = np.where(recorded_day[s] <= start_day, recorded_edss[s], recorded_before_step[s])
            activity = relapses_24m + 0.4 * (np.nan_to_num(known_edss, nan=2.0) - 2.0)
            year = year_of_day(start_day)
            score = (
                drugs.choice_log_weight[None, :]
                + country_weight[country_index[s]]
                - OLDER_DRUGS_DECLINE_PER_YEAR * np.maximum(year - 2012, 0)[:, None] * drugs.older[None, :]
                + drugs.high_efficacy[None, :]
                * (HIGH_EFFICACY_LOG_WEIGHT_PER_ACTIVITY * activity + ESCALATION_LOG_WEIGHT * escalate[s])[
                    :, None
                ]
                + RESUME_LOG_WEIGHT * (np.arange(n_drugs)[None, :] == resume_drug[s][:, None])
            )
            score = score + rng.gumbel(size=score.shape)
            score[~available] = -np.inf
            can_start = available.any(axis=1)
            # nothing available now: wait for a later drug (retried next step) or stop treating
            next_start[s[~can_start & ~later.any(axis=1)]] = NEVER
            go = s[can_start]
            if len(go):
                chosen = np.argmax(score[can_start], axis=1)
                drug[go] = chosen
                used[go, chosen] = True
                episode_start[go] = start_day[can_start]
                episode_start_step[go] = step
                episode_row[go] = n_episodes + np.arange(len(go))
                n_episodes += len(go)
                ep_patient.append(go)
                ep_drug.append(chosen)
                ep_start.append(start_day[can_start])
                next_start[go] = NEVER
                ever_started[go] = True
                escalate[go] = False
                resume_drug[go] = -1

        # sick leave
        working = (
            active & (age >= SICK_LEAVE_AGES[0]) & (age < SICK_LEAVE_AGES[1]) & (leave_until < span_start)
        )
        working &= span_start >= study.start_day
        at_relapse = working & (n_relapses > 0) & (rng.random(n) < SICK_LEAVE_AT_RELAPSE)
        background_rate = SICK_LEAVE_RATE_PER_YEAR * np.exp(SICK_LEAVE_LOG_RATE_PER_EDSS * edss)
        background = working & ~at_relapse & (rng.random(n) < 1.0 - np.exp(-background_rate * span_years))
        leave = np.flatnonzero(at_relapse | background)
        if len(leave):
            relapse_led = at_relapse[leave]
            start = np.where(
                relapse_led,
                first_relapse[leave] + rng.integers(0, 8, len(leave)),
                span_start[leave]
                + np.floor(rng.random(len(leave)) * (span_end - span_start)[leave]).astype(np.int64),
            )
            median = np.where(relapse_led, 35.0, 30.0 * (1.0 + 0.3 * edss[leave]))
            duration = np.clip(
                np.ceil(_lognormal_days(rng, median, np.where(relapse_led, 0.6, 0.9), len(leave))),
                1,
                SICK_LEAVE_MAX_DAYS,
            ).astype(np.int64)
            partial = rng.random(len(leave)) < np.where(relapse_led, *SICK_LEAVE_PARTIAL_SHARE)
            grade = np.array(SICK_LEAVE_PARTIAL_GRADES)[
                rng.integers(0, len(SICK_LEAVE_PARTIAL_GRADES), len(leave))
            ]
            percent = np.where(partial, grade, 100)
            end = np.minimum(start + duration - 1, np.minimum(patients.end_day[leave] - 1, study.end_day))
            ok = start <= end
            leaves.add(patient=leave[ok], start=start[ok], end=end[ok], percent=percent[ok])
            leave_until[leave[ok]] = end[ok]

    episode_stop = np.full(n_episodes, -1, dtype=np.int64)
    episode_reason = np.full(n_episodes, -1, dtype=np.int64)
    if stop_rows:
        rows = np.concatenate(stop_rows)
        episode_stop[rows] = np.concatenate(stop_days)
        episode_reason[rows] = np.concatenate(stop_reasons)
    empty = np.zeros(0, dtype=np.int64)
    return ClinicalCourse(
        clinic=clinic,
        course_label=label,
        relapse_patient=relapses.get("patient", np.int64),
        relapse_day=relapses.get("day", np.int64),
        visit_patient=visits.get("patient", np.int64),
        visit_day=visits.get("day", np.int64),
        visit_edss=visits.get("edss", np.float64),
        episode_patient=np.concatenate(ep_patient) if ep_patient else empty,
        episode_drug=np.concatenate(ep_drug) if ep_drug else empty,
        episode_start=np.concatenate(ep_start) if ep_start else empty,
        episode_stop=episode_stop,
        episode_reason=episode_reason,
        leave_patient=leaves.get("patient", np.int64),
        leave_start=leaves.get("start", np.int64),
        leave_end=leaves.get("end", np.int64),
        leave_percent=leaves.get("percent", np.int32),
    )
