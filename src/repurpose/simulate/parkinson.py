"""The optional second planted outcome: a Parkinson-like disease with a prodrome and a drug proxy.

Owns: its settings (`simulate.parkinson` in the config), its hazard model (age bands from
`parkinson_age_band_hazard.csv`, men 1.5 times women, planted causal substances from
`parkinson_planted_substances.csv` acting from their second dispensing), the prodrome (extra laxative and
antidepressant dispensings in the years before diagnosis), the G20 diagnosis records and the proxy
(levodopa dispensings after diagnosis), and its part of ground_truth.json. The hazard is that of the
diagnosis date, the date an outcome definition recovers from the first G20 record.

Every draw comes from its own random stream (`[seed, PARKINSON_STREAM, chunk]`), and its dispensings are
appended after the existing rows, so enabling the outcome only adds rows and disabling it leaves the
output byte-identical. Imports numpy, pyarrow and the simulator's modules below `registries`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow, date_array
from repurpose.simulate.diagnoses import DiagnosisRecords, visit_records
from repurpose.simulate.onset import (
    ONSET_HORIZON_AFTER_STUDY_END_YEARS,
    baseline_hazard_per_day,
    prodromal_dispensings,
    simulate_onset_days,
)
from repurpose.simulate.population import Population
from repurpose.simulate.prescriptions import (
    Dispensings,
    SubstanceTable,
    draw_ddd,
    draw_reimbursement,
    second_dispensing_days,
)
from repurpose.simulate.profiles import (
    CAUSAL_HARMFUL,
    CAUSAL_PROTECTIVE,
    NULL,
    PARKINSON_AGE_BAND_LOWER_YEARS,
    PARKINSON_AGE_BAND_RELATIVE_HAZARD,
    PARKINSON_PLANTED,
    PRODROMAL,
    ProfileTableError,
)

PARKINSON_STREAM = 3
"""Random stream id of the Parkinson draws (0 population, 1 corrupt rows, 2 chunks, 4 G35 records)."""

DEFAULT_PARKINSON_INCIDENCE_PER_100K = 800.0
"""Diagnosis incidence per 100,000 person-years at the peak ages (75-84), average of the sexes, unexposed.

Real incidence at those ages is ~150-250 per 100,000; inflated for power like the MS default."""

MALE_TO_FEMALE_HAZARD_RATIO = 1.5
SEX_HAZARD_FACTOR: dict[str, float] = {
    "F": 2 / (1 + MALE_TO_FEMALE_HAZARD_RATIO),
    "M": 2 * MALE_TO_FEMALE_HAZARD_RATIO / (1 + MALE_TO_FEMALE_HAZARD_RATIO),
}
"""Multipliers of the baseline hazard; their mean is 1."""

PARKINSON_TRUTH_PERSONS_FILE = "ground_truth_parkinson_persons.parquet"
ICD10_CODE = "G20"
SINGLE_RECORD_SHARE = 0.15
VISITS_PER_YEAR = 1.5

PRODROME_WINDOW_YEARS = 10.0
PRODROME_EXTRA_DISPENSINGS_MEAN = 2.0
"""Prodromal users get 2 + Poisson(this) extra dispensings within the window before diagnosis."""

PROXY_SUBSTANCE = "N04BA02"
PROXY_ATC_PREFIXES: tuple[str, ...] = ("N04",)
PROXY_TREATED_SHARE = 0.9
PROXY_START_DELAY_MEAN_DAYS = 45.0
PROXY_REFILL_INTERVAL_DAYS = 90.0
"""Treated cases start levodopa after an exponential delay and refill every 90 days (+-25%) until exit."""


@dataclass(frozen=True)
class ParkinsonSettings:
    """The `simulate.parkinson` config section."""

    enabled: bool = False
    baseline_incidence_per_100k: float = DEFAULT_PARKINSON_INCIDENCE_PER_100K

    @staticmethod
    def from_config(section: Mapping[str, Any] | None) -> ParkinsonSettings:
        """Settings from the config section (None or {} gives the defaults: disabled)."""
        section = dict(section or {})
        unknown = sorted(set(section) - {"enabled", "baseline_incidence_per_100k"})
        if unknown:
            raise ValueError(f"simulate.parkinson: unknown settings {unknown}")
        settings = ParkinsonSettings(**section)
        if settings.baseline_incidence_per_100k <= 0:
            raise ValueError(
                "simulate.parkinson.baseline_incidence_per_100k must be positive, "
                f"got {settings.baseline_incidence_per_100k}"
            )
        return settings


@dataclass
class ParkinsonModel:
    """Everything fixed across chunks: substance indices, hazard constants."""

    settings: ParkinsonSettings
    causal: np.ndarray  # substance indices with planted_hr != 1
    log_hr: np.ndarray  # per substance index, 0 where no effect
    prodromal: np.ndarray  # substance indices
    prodrome_user_probability: np.ndarray  # per prodromal substance
    proxy: int  # substance index of the proxy drug
    baseline_per_day: np.ndarray
    log_sex_factor: np.ndarray  # [female, male]
    hazard_horizon_day: int

    @staticmethod
    def build(settings: ParkinsonSettings, substances: SubstanceTable, study: StudyWindow) -> ParkinsonModel:
        index = {code: j for j, code in enumerate(substances.codes)}
        missing = sorted(set(PARKINSON_PLANTED) - set(index)) + (
            [] if PROXY_SUBSTANCE in index else [PROXY_SUBSTANCE]
        )
        if missing:
            raise ProfileTableError(
                f"parkinson_planted_substances.csv: {missing} are not simulated substances"
            )
        with_ms_role = [code for code in PARKINSON_PLANTED if substances.roles[index[code]] != NULL]
        if with_ms_role:
            raise ProfileTableError(
                f"{substances.planted.source}: {with_ms_role} have a planted MS role and a Parkinson role "
                "(parkinson_planted_substances.csv); plant other substances for MS so the two truths stay apart"
            )
        log_hr = np.zeros(len(substances))
        for code, planted in PARKINSON_PLANTED.items():
            log_hr[index[code]] = np.log(planted.planted_hr)
        prodromal = [code for code, planted in PARKINSON_PLANTED.items() if planted.role == PRODROMAL]
        horizon_days = int(round(ONSET_HORIZON_AFTER_STUDY_END_YEARS * DAYS_PER_YEAR))
        return ParkinsonModel(
            settings=settings,
            causal=np.flatnonzero(log_hr != 0.0),
            log_hr=log_hr,
            prodromal=np.array([index[code] for code in prodromal], dtype=np.int64),
            prodrome_user_probability=np.array(
                [PARKINSON_PLANTED[code].prodrome_user_probability for code in prodromal]
            ),
            proxy=index[PROXY_SUBSTANCE],
            baseline_per_day=baseline_hazard_per_day(
                settings.baseline_incidence_per_100k, PARKINSON_AGE_BAND_RELATIVE_HAZARD
            ),
            log_sex_factor=np.log(np.array([SEX_HAZARD_FACTOR["F"], SEX_HAZARD_FACTOR["M"]])),
            hazard_horizon_day=study.end_day + 1 + horizon_days,
        )


@dataclass
class ParkinsonChunk:
    """One chunk's Parkinson draws: diagnosis days, added dispensings and G20 records."""

    diagnosis_day: np.ndarray  # float day number per chunk person, NaN if none before the horizon
    prodromal: Dispensings
    proxy: Dispensings
    records: DiagnosisRecords  # `person` as global population index
    n_treated: int  # cases with >= 1 proxy dispensing in the window


def simulate_parkinson_chunk(
    model: ParkinsonModel,
    chunk: Population,
    chunk_start: int,
    substances: SubstanceTable,
    dispensings: Dispensings,
    rng: np.random.Generator,
    study: StudyWindow,
) -> ParkinsonChunk:
    """Diagnosis from the chunk's exposure history, then prodromal extras, G20 records and the proxy drug."""
    exposure_person, exposure_substance, exposure_day = second_dispensing_days(dispensings, model.causal)
    exit_day = chunk.exit_day(study)
    diagnosis_day = simulate_onset_days(
        birth_day=chunk.birth_day.astype(np.float64),
        log_person_factor=model.log_sex_factor[chunk.is_male.astype(np.int64)],
        hazard_end_day=np.minimum(
            np.minimum(chunk.true_death_day, chunk.emigration_day), model.hazard_horizon_day
        ).astype(np.float64),
        unit_exponential=rng.exponential(size=len(chunk)),
        exposure_person=exposure_person,
        exposure_day=exposure_day,
        exposure_log_hr=model.log_hr[exposure_substance],
        baseline_per_day=model.baseline_per_day,
        band_lower_years=PARKINSON_AGE_BAND_LOWER_YEARS,
    )
    prodromal = prodromal_dispensings(
        chunk,
        substances,
        rng,
        study,
        diagnosis_day,
        prodromal=model.prodromal,
        user_probability=model.prodrome_user_probability,
        window_years=PRODROME_WINDOW_YEARS,
        extra_dispensings_mean=PRODROME_EXTRA_DISPENSINGS_MEAN,
    )
    cases = np.flatnonzero(np.isfinite(diagnosis_day))
    case_day = np.floor(diagnosis_day[cases]).astype(np.int64)
    records = visit_records(
        rng, cases, case_day, exit_day[cases], study, ICD10_CODE, SINGLE_RECORD_SHARE, VISITS_PER_YEAR
    )
    records.person = records.person + chunk_start
    proxy, n_treated = _proxy_dispensings(model, chunk, substances, rng, study, cases, case_day)
    return ParkinsonChunk(diagnosis_day, prodromal, proxy, records, n_treated)


def _proxy_dispensings(
    model: ParkinsonModel,
    chunk: Population,
    substances: SubstanceTable,
    rng: np.random.Generator,
    study: StudyWindow,
    cases: np.ndarray,
    case_day: np.ndarray,
) -> tuple[Dispensings, int]:
    """Levodopa from shortly after diagnosis until exit, for the treated share of cases (in the window)."""
    treated = rng.random(len(cases)) < PROXY_TREATED_SHARE
    start = case_day + np.ceil(rng.exponential(PROXY_START_DELAY_MEAN_DAYS, len(cases))).astype(np.int64)
    exit_day = chunk.exit_day(study)[cases]
    shortest_gap = 0.75 * PROXY_REFILL_INTERVAL_DAYS
    n_max = np.where(treated & (start < exit_day), np.ceil((exit_day - start) / shortest_gap) + 1, 0)
    case_of = np.repeat(np.arange(len(cases)), n_max.astype(np.int64))
    first_row = np.cumsum(n_max.astype(np.int64)) - n_max.astype(np.int64)
    ordinal = np.arange(len(case_of)) - first_row[case_of]
    gap = np.rint(PROXY_REFILL_INTERVAL_DAYS * rng.uniform(0.75, 1.25, len(case_of))).astype(np.int64)
    gap = np.where(ordinal == 0, 0, gap)
    cumulative = np.cumsum(gap)
    day = start[case_of] + cumulative - cumulative[first_row[case_of]]
    person = cases[case_of]
    keep = (day >= chunk.entry_day[person]) & (day < chunk.exit_day(study)[person])
    person, day = person[keep], day[keep]
    substance = np.full(len(person), model.proxy, dtype=np.int64)
    dispensings = Dispensings(
        person=person,
        day=day,
        substance=substance,
        ddd=draw_ddd(rng, substances, substance),
        reimbursement=draw_reimbursement(rng, substances, substance),
    )
    return dispensings, len(np.unique(person))


def parkinson_truth_persons_table(person_id: np.ndarray, diagnosis_day: np.ndarray) -> pa.Table:
    """Hidden truth: the true diagnosis day of every person with one before the horizon (diagnosed or not)."""
    has = np.isfinite(diagnosis_day)
    return pa.table(
        {
            "person_id": pa.array(person_id[has], type=pa.int64()),
            "true_diagnosis_day": pa.array(diagnosis_day[has], type=pa.float64()),
            "true_diagnosis_date": date_array(np.floor(diagnosis_day[has]).astype(np.int64)),
        }
    )


def parkinson_truth(
    model: ParkinsonModel,
    substances: SubstanceTable,
    n_users: np.ndarray,
    n_exposed: np.ndarray,
    counts: dict[str, Any],
) -> dict[str, Any]:
    """The `parkinson` part of ground_truth.json."""
    settings = model.settings
    substance_truth = {}
    for code, planted in PARKINSON_PLANTED.items():
        j = substances.codes.index(code)
        substance_truth[code] = {
            "atc_name": substances.names[j],
            "role": planted.role,
            "planted_hr": planted.planted_hr,
            "prodrome_user_probability": planted.prodrome_user_probability,
            "rationale": planted.rationale,
            "n_users": int(n_users[j]),
            "n_exposed": int(n_exposed[j]),
        }
    return {
        "description": "A Parkinson-like disease planted beside MS (repurpose.simulate.parkinson); "
        "every substance not listed has no effect on it.",
        "settings": {
            "enabled": settings.enabled,
            "baseline_incidence_per_100k": settings.baseline_incidence_per_100k,
        },
        "substances": substance_truth,
        "roles": {
            role: [code for code, s in substance_truth.items() if s["role"] == role]
            for role in (CAUSAL_PROTECTIVE, CAUSAL_HARMFUL, PRODROMAL)
        },
        "hazard_model": {
            "event": "diagnosis (the date of the first G20 record where it falls inside the window)",
            "formula": "h(t) = h0(age band) * sex_factor * exp(sum_j log(hr_j) * exposed_j(t))",
            "age_in_years": "(day - true birth day) / 365.25",
            "age_band_lower_years": list(PARKINSON_AGE_BAND_LOWER_YEARS),
            "baseline_per_100k_person_years": [
                round(settings.baseline_incidence_per_100k * r, 6) for r in PARKINSON_AGE_BAND_RELATIVE_HAZARD
            ],
            "baseline_incidence_per_100k_at_peak": settings.baseline_incidence_per_100k,
            "sex_factor": SEX_HAZARD_FACTOR,
            "latent_factor_log_hr_per_sd": 0.0,
            "exposure_definition": (
                "exposed from the day of the person's second dispensing of the substance, for ever after"
            ),
            "simulated_from": "birth (no drug data and so no drug effects before study start)",
            "simulated_until": f"death, emigration or study end + {ONSET_HORIZON_AFTER_STUDY_END_YEARS} years",
        },
        "prodrome": {
            "substances": [code for code, s in substance_truth.items() if s["role"] == PRODROMAL],
            "window_years_before_diagnosis": PRODROME_WINDOW_YEARS,
            "extra_dispensings": f"2 + Poisson({PRODROME_EXTRA_DISPENSINGS_MEAN})",
            "timing": "density rising linearly from 0 at window start to its peak at diagnosis",
        },
        "diagnosis_records": {
            "file": "diagnoses.parquet",
            "icd10_code": ICD10_CODE,
            "first_record": "on the diagnosis date",
            "single_record_share": SINGLE_RECORD_SHARE,
            "follow_up_visits_per_year": VISITS_PER_YEAR,
            "coverage": "records inside the study window, before death or emigration",
        },
        "drug_proxy": {
            "proxy_atc_prefixes": list(PROXY_ATC_PREFIXES),
            "proxy_substances": [PROXY_SUBSTANCE],
            "treated_share": PROXY_TREATED_SHARE,
            "start_delay_mean_days": PROXY_START_DELAY_MEAN_DAYS,
            "refill_interval_days": PROXY_REFILL_INTERVAL_DAYS,
            "note": "N04 substances are also dispensed to persons without the disease (their null prescribing)",
        },
        "counts": counts,
        "files": {
            "diagnoses": "diagnoses.parquet",
            "hidden_person_truth": PARKINSON_TRUTH_PERSONS_FILE,
        },
    }
