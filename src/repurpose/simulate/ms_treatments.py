"""The simulated MS clinical extracts: per chunk the course and the matching pharmacy dispensings, then the
tables (ms_treatments, ms_relapses, ms_edss, sick_leave), the registry's clinical columns and the truth.

Owns: the dispensings of the pharmacy-dispensed therapies (a 30-day starter supply, then 90-day refills
collected after uniform(0.80, 1.05) times the previous supply, 2% of refills late by 30-120 days, the
last one before the registry's stop date; ddd = days of supply, reimbursement code G35; only inside the
study window, like the prescription register), the clinical tables in the canonical columns of the data
dictionary, and ground_truth.json's `clinical` key. The infusion therapies (natalizumab, alemtuzumab,
ocrelizumab, rituximab) are given in hospital and never dispensed. The model is in `disease_course`;
its constants in `clinical_model`. Imports numpy, pyarrow and the simulator's modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from repurpose.simulate.clinical_model import (
    ADVERSE_EVENT_EARLY_FACTOR,
    ADVERSE_EVENT_EARLY_YEARS,
    BASELINE_STOP_HAZARD_PER_YEAR,
    COUNTRY_CHOICE_LOG_WEIGHT,
    DDD_PER_DAY,
    DRUGS,
    ESCALATION_LOG_WEIGHT,
    FIRST_SUPPLY_DAYS,
    HIGH_EFFICACY_LOG_WEIGHT_PER_ACTIVITY,
    LACK_OF_EFFICACY_HIGH_EFFICACY_FACTOR,
    LACK_OF_EFFICACY_LOG_HR_PER_RELAPSE,
    LATE_REFILL_EXTRA_DAYS,
    LATE_REFILL_SHARE,
    MS_REIMBURSEMENT_CODE,
    NATALIZUMAB_OTHER_FACTOR_AFTER_2_YEARS,
    OLDER_DRUGS_DECLINE_PER_YEAR,
    PHARMACY_SUPPLY_DAYS,
    PREGNANCY_AGE_FACTORS,
    REFILL_TIMING,
    RESTART,
    RESTART_DELAY_LOG_SD,
    RESUME_LOG_WEIGHT,
    STOP_REASONS,
    UNKNOWN_REASON,
    ClinicalSettings,
    Clinics,
    DrugTable,
)
from repurpose.simulate.dates import StudyWindow, date_array
from repurpose.simulate.disease_course import (
    COURSE_LABELS,
    PROGRESSION_RATE,
    RECORDS_FROM_YEARS_BEFORE_STUDY,
    RELAPSE_COURSE_FACTOR,
    RELAPSE_DECLINE_PER_YEAR,
    RELAPSE_MIN_SEPARATION_DAYS,
    RELAPSE_RATE_AT_ONSET,
    RELAPSE_RATE_RATIO_PER_DECADE,
    RELAPSE_WORSENING_PROBABILITY,
    ClinicalCourse,
    PatientInput,
    simulate_course,
)
from repurpose.simulate.infections import INFECTION_CODES, InfectionChunk, simulate_infections
from repurpose.simulate.population import Population
from repurpose.simulate.prescriptions import Dispensings

CLINICAL_FILES: dict[str, str] = {
    "ms_treatments": "ms_treatments.parquet",
    "ms_relapses": "ms_relapses.parquet",
    "ms_edss": "ms_edss.parquet",
    "sick_leave": "sick_leave.parquet",
}
"""Extract name -> file written beside ms_registry.parquet."""
UNKNOWN_REASON_CODE = len(STOP_REASONS)


def simulated_clinical_files(clinical: Mapping[str, Any] | None) -> dict[str, str]:
    """Extract name -> file name of the clinical extracts the simulator writes with these `simulate.clinical`
    settings (none when disabled), known before it runs (the rule's outputs)."""
    return dict(CLINICAL_FILES) if ClinicalSettings.from_config(clinical).enabled else {}


@dataclass
class ClinicalModel:
    """Everything fixed across chunks: settings, drugs, clinics, where the DMT codes sit in the ATC and
    reimbursement dictionaries of the prescription files."""

    settings: ClinicalSettings
    drugs: DrugTable
    clinics: Clinics
    pharmacy_drugs: np.ndarray  # drug indices dispensed at pharmacies
    atc_offset: int  # index of the first pharmacy drug code in the prescription ATC dictionary
    reimbursement_index: int  # index of G35 in the reimbursement dictionary

    @property
    def pharmacy_codes(self) -> list[str]:
        return [self.drugs.codes[d] for d in self.pharmacy_drugs]


@dataclass
class ClinicalChunk:
    """One chunk's clinical records with `person` as global population index of each patient."""

    person: np.ndarray  # per registry patient
    course: ClinicalCourse
    reason_recorded: np.ndarray  # per episode: index into STOP_REASONS + unknown, -1 ongoing
    dispensings: Dispensings  # chunk-local person indices, substance = ATC dictionary index
    infections: InfectionChunk | None = None  # serious-infection diagnoses (settings.serious_infections)


def pharmacy_dispensings(
    model: ClinicalModel,
    course: ClinicalCourse,
    end_day: np.ndarray,
    rng: np.random.Generator,
    study: StudyWindow,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patient, day, pharmacy drug position, days of supply) of the dispensings of the pharmacy episodes.

    `end_day` is each patient's first day no longer followed; an episode without a stop runs until then.
    """
    pharmacy_position = np.full(len(model.drugs.codes), -1, dtype=np.int64)
    pharmacy_position[model.pharmacy_drugs] = np.arange(len(model.pharmacy_drugs))
    episodes = np.flatnonzero(pharmacy_position[course.episode_drug] >= 0)
    patient = course.episode_patient[episodes]
    start = course.episode_start[episodes]
    stop = course.episode_stop[episodes]
    end = np.where(stop >= 0, stop, end_day[patient])
    if len(episodes) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    min_interval = FIRST_SUPPLY_DAYS * REFILL_TIMING[0]
    width = 2 + int(np.ceil(max(int((end - start).max()), 1) / (PHARMACY_SUPPLY_DAYS * REFILL_TIMING[0])))
    supply = np.full((len(episodes), width), PHARMACY_SUPPLY_DAYS, dtype=np.int64)
    supply[:, 0] = FIRST_SUPPLY_DAYS
    interval = np.rint(supply[:, :-1] * rng.uniform(*REFILL_TIMING, (len(episodes), width - 1)))
    late = rng.random((len(episodes), width - 1)) < LATE_REFILL_SHARE
    interval += late * rng.integers(LATE_REFILL_EXTRA_DAYS[0], LATE_REFILL_EXTRA_DAYS[1] + 1, late.shape)
    interval = np.maximum(interval, min_interval).astype(np.int64)
    offsets = np.concatenate(
        [np.zeros((len(episodes), 1), dtype=np.int64), np.cumsum(interval, axis=1)], axis=1
    )
    day = start[:, None] + offsets
    keep = (day < end[:, None]) & (day >= study.start_day) & (day <= study.end_day)
    rows, columns = np.nonzero(keep)
    return (
        patient[rows],
        day[rows, columns],
        pharmacy_position[course.episode_drug[episodes]][rows],
        supply[rows, columns],
    )


def recorded_reasons(settings: ClinicalSettings, course: ClinicalCourse, rng: np.random.Generator) -> np.ndarray:
    """Per episode the recorded stop reason (index into STOP_REASONS + unknown, -1 ongoing): the true reason,
    or unknown for a share of the stops drawn independently of the reason."""
    stopped = course.episode_reason >= 0
    masked = stopped & (rng.random(len(stopped)) < settings.unknown_stop_reason_share)
    return np.where(masked, UNKNOWN_REASON_CODE, course.episode_reason)


def simulate_clinical_chunk(
    model: ClinicalModel,
    chunk: Population,
    chunk_start: int,
    registry: dict[str, np.ndarray],
    rng: np.random.Generator,
    study: StudyWindow,
    infection_rng: np.random.Generator | None = None,
) -> ClinicalChunk:
    """The clinical course of the chunk's registry patients (`registry["person"]` local to the chunk), the
    DMT dispensings to add to the chunk's prescription rows and, with `infection_rng` when the settings ask
    for them, their serious-infection diagnoses (repurpose.simulate.infections; on that stream only)."""
    person = registry["person"]
    patients = PatientInput.from_registry(registry, chunk, study)
    course = simulate_course(patients, model.clinics, model.drugs, rng, study)
    reason_recorded = recorded_reasons(model.settings, course, rng)
    patient, day, position, supply = pharmacy_dispensings(model, course, patients.end_day, rng, study)
    dispensings = Dispensings(
        person=person[patient],
        day=day,
        substance=model.atc_offset + position,
        ddd=supply * DDD_PER_DAY,
        reimbursement=np.full(len(day), model.reimbursement_index, dtype=np.int64),
    )
    infections = None
    if infection_rng is not None and model.settings.serious_infections:
        infections = simulate_infections(
            infection_rng, course, model.drugs, person + chunk_start, patients.diagnosis_day, patients.end_day,
            study, model.settings.serious_infection_rate_per_1000_years,
            model.settings.serious_infection_high_efficacy_rate_ratio,
        )  # fmt: skip
    return ClinicalChunk(
        person=person + chunk_start, course=course, reason_recorded=reason_recorded, dispensings=dispensings,
        infections=infections,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _sorted(person_id: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    return np.lexsort(tuple(reversed(keys)) + (person_id,))


def clinical_tables(
    model: ClinicalModel, population: Population, parts: list[ClinicalChunk]
) -> dict[str, pa.Table]:
    """The four clinical extracts in canonical columns, sorted by person_id and date."""

    def gather(name: str) -> np.ndarray:
        return np.concatenate([getattr(part.course, name) for part in parts])

    def person_ids(name: str) -> np.ndarray:
        return np.concatenate(
            [population.person_id[part.person[getattr(part.course, name)]] for part in parts]
        )

    codes = np.array(model.drugs.codes)
    reasons = np.array([*STOP_REASONS, UNKNOWN_REASON])
    clinic_ids = np.array(model.clinics.ids)

    pid = person_ids("episode_patient")
    start, stop = gather("episode_start"), gather("episode_stop")
    reason = np.concatenate([part.reason_recorded for part in parts])
    clinic = np.concatenate([part.course.clinic[part.course.episode_patient] for part in parts])
    drug = gather("episode_drug")
    order = _sorted(pid, start)
    ongoing = stop[order] < 0
    treatments = pa.table(
        {
            "person_id": pa.array(pid[order], type=pa.int64()),
            "treatment_atc_code": pa.array(codes[drug[order]], type=pa.string()),
            "start_date": date_array(start[order]),
            "stop_date": date_array(np.maximum(stop[order], 0), ~ongoing),
            "stop_reason": pa.array(reasons[np.maximum(reason[order], 0)], type=pa.string(), mask=ongoing),
            "clinic_id": pa.array(clinic_ids[clinic[order]], type=pa.string()),
        }
    )
    pid = person_ids("relapse_patient")
    day = gather("relapse_day")
    order = _sorted(pid, day)
    relapses = pa.table(
        {"person_id": pa.array(pid[order], type=pa.int64()), "relapse_date": date_array(day[order])}
    )
    pid = person_ids("visit_patient")
    day, edss = gather("visit_day"), gather("visit_edss")
    order = _sorted(pid, day)
    visits = pa.table(
        {
            "person_id": pa.array(pid[order], type=pa.int64()),
            "visit_date": date_array(day[order]),
            "edss": pa.array(edss[order], type=pa.float64()),
        }
    )
    pid = person_ids("leave_patient")
    start, end, percent = gather("leave_start"), gather("leave_end"), gather("leave_percent")
    order = _sorted(pid, start)
    sick_leave = pa.table(
        {
            "person_id": pa.array(pid[order], type=pa.int64()),
            "start_date": date_array(start[order]),
            "end_date": date_array(end[order]),
            "percent": pa.array(percent[order], type=pa.int32()),
        }
    )
    return {"ms_treatments": treatments, "ms_relapses": relapses, "ms_edss": visits, "sick_leave": sick_leave}


def write_clinical_tables(out: Path, tables: dict[str, pa.Table]) -> None:
    for name, table in tables.items():
        pq.write_table(table, out / CLINICAL_FILES[name])


def remove_clinical_tables(out: Path) -> None:
    """Remove clinical extracts of an earlier run (the feature is off now)."""
    for name in CLINICAL_FILES.values():
        (out / name).unlink(missing_ok=True)


def add_registry_columns(
    table: pa.Table,
    model: ClinicalModel,
    population: Population,
    parts: list[ClinicalChunk],
    rng: np.random.Generator,
) -> pa.Table:
    """The MS registry extract with `clinic_id`, `country` and the recorded course at diagnosis (CIS and
    unknown added); invalid rows (persons not simulated as patients) get a clinic drawn by size."""
    patient_ids = population.person_id[np.concatenate([part.person for part in parts])]
    clinic = np.concatenate([part.course.clinic for part in parts])
    label = np.concatenate([part.course.course_label for part in parts])
    order = np.argsort(patient_ids)
    patient_ids, clinic, label = patient_ids[order], clinic[order], label[order]
    row_ids = table.column("person_id").to_numpy()
    position = np.minimum(np.searchsorted(patient_ids, row_ids), max(len(patient_ids) - 1, 0))
    found = (patient_ids[position] == row_ids) if len(patient_ids) else np.zeros(len(row_ids), dtype=bool)
    drawn = rng.choice(len(model.clinics.ids), size=len(row_ids), p=model.clinics.size_share)
    row_clinic = np.where(found, clinic[position] if len(clinic) else drawn, drawn)
    course = np.array(table.column("ms_course_at_diagnosis").to_pylist(), dtype=object)
    if len(label):
        course = np.where(found, COURSE_LABELS[label[position]], course)
    table = table.set_column(
        table.schema.get_field_index("ms_course_at_diagnosis"),
        "ms_course_at_diagnosis",
        pa.array(course.tolist(), type=pa.string()),
    )
    index = table.schema.get_field_index("diagnosis_date") + 1
    table = table.add_column(
        index, "clinic_id", pa.array(np.array(model.clinics.ids)[row_clinic], type=pa.string())
    )
    return table.add_column(
        index + 1, "country", pa.array(model.clinics.country[row_clinic], type=pa.string())
    )


# --------------------------------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------------------------------


def clinical_truth(
    model: ClinicalModel, population: Population, parts: list[ClinicalChunk], tables: dict[str, pa.Table]
) -> dict[str, Any]:
    """ground_truth.json's `clinical` key: clinic effects, hazards, drug effects, dispensing parameters."""
    clinics = model.clinics
    clinic = np.concatenate([part.course.clinic for part in parts])
    per_clinic = np.bincount(clinic, minlength=len(clinics.ids))
    treatments = tables["ms_treatments"]
    drug_counts = dict(
        zip(
            *np.unique(
                treatments.column("treatment_atc_code").to_numpy(zero_copy_only=False), return_counts=True
            ),
            strict=True,
        )
    )
    reason_values = treatments.column("stop_reason").drop_null().to_numpy(zero_copy_only=False)
    reason_counts = dict(zip(*np.unique(reason_values, return_counts=True), strict=True))
    n_dispensings = sum(len(part.dispensings) for part in parts)
    return {
        "description": (
            "Planted truth of the simulated MS clinical data (repurpose.simulate.disease_course: model; "
            "clinical_model: constants; ms_treatments: dispensings and tables)."
        ),
        "settings": {
            "clinics_per_country": dict(model.settings.clinics_per_country),
            "clinic_log_hr_sd": model.settings.clinic_log_hr_sd,
            "outlier_hazard_ratios": list(model.settings.outlier_hazard_ratios),
            "unknown_stop_reason_share": model.settings.unknown_stop_reason_share,
        },
        "files": dict(CLINICAL_FILES),
        "clinics": {
            "tau": model.settings.clinic_log_hr_sd,
            "outlier_clinic_ids": list(clinics.outliers),
            "effect_on": "every stop reason's hazard is multiplied by exp(log_hr) (all-cause hazards are proportional)",
            "per_clinic": {
                clinic_id: {
                    "country": str(clinics.country[c]),
                    "size_share": round(float(clinics.size_share[c]), 6),
                    "n_patients": int(per_clinic[c]),
                    "random_log_hr": round(float(clinics.random_log_hr[c]), 6),
                    "outlier_log_hr": round(float(clinics.outlier_log_hr[c]), 6),
                    "log_hr": round(float(clinics.log_hr[c]), 6),
                }
                for c, clinic_id in enumerate(clinics.ids)
            },
        },
        "discontinuation": {
            "model": (
                "competing reasons; hazard_r(t) = baseline_r * covariate factors_r * exp(clinic log_hr), "
                "evaluated in 30-day steps"
            ),
            "baseline_hazard_per_year": dict(BASELINE_STOP_HAZARD_PER_YEAR),
            "adverse_event": {
                "drug_factor": {d.atc_code: d.adverse_event_factor for d in DRUGS},
                "early_factor": ADVERSE_EVENT_EARLY_FACTOR,
                "early_years": ADVERSE_EVENT_EARLY_YEARS,
            },
            "lack_of_efficacy": {
                "log_hr_per_relapse_on_drug_last_12_months": LACK_OF_EFFICACY_LOG_HR_PER_RELAPSE,
                "high_efficacy_factor": LACK_OF_EFFICACY_HIGH_EFFICACY_FACTOR,
            },
            "pregnancy": {
                "women_age_factors": [list(band) for band in PREGNANCY_AGE_FACTORS],
                "men": 0.0,
            },
            "other": {"natalizumab_factor_after_2_years": NATALIZUMAB_OTHER_FACTOR_AFTER_2_YEARS},
            "unknown_reason_share": model.settings.unknown_stop_reason_share,
            "restart_after_stop": {
                reason: {"probability": p, "median_days": m, "log_sd": RESTART_DELAY_LOG_SD}
                for reason, (p, m) in RESTART.items()
            },
            "censoring": "episodes running at death, emigration or the extraction date (study end) have no stop",
        },
        "treatment_choice": {
            "base_log_weight": {d.atc_code: d.choice_log_weight for d in DRUGS},
            "country_log_weight": COUNTRY_CHOICE_LOG_WEIGHT,
            "older_drugs_decline_per_year_after_2012": OLDER_DRUGS_DECLINE_PER_YEAR,
            "high_efficacy_log_weight_per_activity": HIGH_EFFICACY_LOG_WEIGHT_PER_ACTIVITY,
            "activity": "relapses in the last 24 months + 0.4 * (last recorded EDSS - 2)",
            "escalation_log_weight": ESCALATION_LOG_WEIGHT,
            "resume_after_pregnancy_log_weight": RESUME_LOG_WEIGHT,
        },
        "drugs": {
            d.atc_code: {
                "name": d.name,
                "available_from": d.available_from,
                "pharmacy_dispensed": d.pharmacy,
                "high_efficacy": d.high_efficacy,
                "relapse_rate_ratio": d.relapse_rate_ratio,
                "progression_hr": d.progression_hr,
            }
            for d in DRUGS
        },
        "disease_course": {
            "relapse_rate_at_onset_per_year": RELAPSE_RATE_AT_ONSET,
            "relapse_min_separation_days": RELAPSE_MIN_SEPARATION_DAYS,
            "relapse_steps": "30-day steps, at most one relapse in a step (probability 1 - exp(-rate * step))",
            "relapse_decline_per_year_since_onset": RELAPSE_DECLINE_PER_YEAR,
            "relapse_rate_ratio_per_decade_of_age_over_30": RELAPSE_RATE_RATIO_PER_DECADE,
            "relapse_course_factor": dict(zip(("RR", "SP", "PP"), RELAPSE_COURSE_FACTOR, strict=True)),
            "edss_half_steps_per_year": dict(zip(("RR", "SP", "PP"), PROGRESSION_RATE, strict=True)),
            "relapse_worsening_probability": RELAPSE_WORSENING_PROBABILITY,
            "frailty": "Gamma(2, 1/2) multiplies the relapse rate; its square root the progression hazard",
            "records_from_years_before_study_start": RECORDS_FROM_YEARS_BEFORE_STUDY,
        },
        "dispensings": {
            "pharmacy_drugs": model.pharmacy_codes,
            "infusion_drugs": [d.atc_code for d in DRUGS if not d.pharmacy],
            "first_supply_days": FIRST_SUPPLY_DAYS,
            "refill_supply_days": PHARMACY_SUPPLY_DAYS,
            "ddd_per_day": DDD_PER_DAY,
            "refill_after_supply_times": list(REFILL_TIMING),
            "late_refill_share": LATE_REFILL_SHARE,
            "late_refill_extra_days": list(LATE_REFILL_EXTRA_DAYS),
            "reimbursement_code": MS_REIMBURSEMENT_CODE,
            "last_dispensing": "the last refill due before the registry's stop date (none after it)",
            "window": "dispensings only inside the study window, before death or emigration",
        },
        **serious_infection_truth(model, parts),
        "counts": {
            "patients": int(len(clinic)),
            "treatment_episodes": int(treatments.num_rows),
            "episodes_by_drug": {str(k): int(v) for k, v in sorted(drug_counts.items())},
            "stops_by_reason": {str(k): int(v) for k, v in sorted(reason_counts.items())},
            "ongoing_episodes": int(treatments.column("stop_date").null_count),
            "relapses": int(tables["ms_relapses"].num_rows),
            "edss_visits": int(tables["ms_edss"].num_rows),
            "sick_leave_episodes": int(tables["sick_leave"].num_rows),
            "dmt_dispensings": int(n_dispensings),
        },
    }


def serious_infection_truth(model: ClinicalModel, parts: list[ClinicalChunk]) -> dict[str, Any]:
    """ground_truth.json's `clinical.serious_infections` (empty when none are simulated): the planted rates and
    the events and person-years on and off high-efficacy therapy inside the study window."""
    chunks = [part.infections for part in parts if part.infections is not None]
    if not model.settings.serious_infections or not chunks:
        return {}
    years_on, years_off = sum(c.years_on for c in chunks), sum(c.years_off for c in chunks)
    events_on, events_off = sum(c.events_on for c in chunks), sum(c.events_off for c in chunks)
    return {
        "serious_infections": {
            "model": (
                "Poisson process from MS diagnosis to death, emigration or study end; the rate is multiplied by "
                "high_efficacy_rate_ratio while a high-efficacy treatment episode runs [start, stop); one "
                "diagnosis record per infection in diagnoses.parquet, inside the study window"
            ),
            "rate_per_1000_years_off_high_efficacy": model.settings.serious_infection_rate_per_1000_years,
            "high_efficacy_rate_ratio": model.settings.serious_infection_high_efficacy_rate_ratio,
            "high_efficacy_codes": [c for c, he in zip(model.drugs.codes, model.drugs.high_efficacy, strict=True) if he],
            "code_shares": dict(INFECTION_CODES),
            "counts": {
                "events_on_high_efficacy": events_on,
                "events_off_high_efficacy": events_off,
                "years_on_high_efficacy": round(years_on, 1),
                "years_off_high_efficacy": round(years_off, 1),
            },
        }
    }
