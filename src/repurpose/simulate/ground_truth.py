"""The planted truth written beside the simulated extracts (ground_truth.json and the hidden per-person truth).

Owns: the JSON-ready description of the MS truth (roles, hazard model, counts, corrupt rows) and the
table of hidden per-person values. Imports numpy, pyarrow and the simulator's other modules (never an
analysis stage: the truth must not be derived from the methods).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

from repurpose.simulate.corrupt import CORRUPT_KINDS, CorruptPlan
from repurpose.simulate.dates import date_array
from repurpose.simulate.ms_registry import DIAGNOSIS_DELAY_LOG_SD, DIAGNOSIS_DELAY_MEDIAN_YEARS
from repurpose.simulate.onset import (
    LATENT_LOG_HR_PER_SD,
    ONSET_HORIZON_AFTER_STUDY_END_YEARS,
    PRODROMAL_EXTRA_DISPENSINGS_MEAN,
    PRODROMAL_USER_PROBABILITY,
    PRODROMAL_WINDOW_YEARS,
    SEX_HAZARD_FACTOR,
)
from repurpose.simulate.population import Population
from repurpose.simulate.prescriptions import CONFOUNDED_USE_LOG_RATE_PER_SD, SubstanceTable
from repurpose.simulate.profiles import (
    AGE_BAND_LOWER_YEARS,
    AGE_BAND_RELATIVE_HAZARD,
    MECHANISM,
    NOT_SIMULATED,
    ROLES,
)


def truth_persons_table(population: Population, onset_day: np.ndarray) -> pa.Table:
    """Hidden per-person truth: exact birth date, latent factor and true onset (diagnosed or not)."""
    has_onset = np.isfinite(onset_day)
    return pa.table(
        {
            "person_id": pa.array(population.person_id, type=pa.int64()),
            "true_birth_date": date_array(population.birth_day),
            "latent_factor": pa.array(population.latent_factor, type=pa.float64()),
            "true_onset_day": pa.array(
                np.where(has_onset, onset_day, 0.0), type=pa.float64(), mask=~has_onset
            ),
            "true_onset_date": date_array(
                np.where(has_onset, np.floor(np.nan_to_num(onset_day)), 0), has_onset
            ),
        }
    )


def ground_truth(
    substances: SubstanceTable,
    n_users: np.ndarray,
    n_exposed: np.ndarray,
    counts: dict[str, Any],
    corrupt_counts: dict[str, int],
    corrupt_plan: CorruptPlan,
    corrupt_ms_ids: dict[str, list[int]],
    parameters: dict[str, Any],
    baseline_incidence_per_100k: float,
) -> dict[str, Any]:
    """The planted truth as a JSON-ready dict."""
    substance_truth = {
        code: {
            "atc_name": substances.names[j],
            "role": substances.roles[j],
            "planted_hr": float(substances.planted_hr[j]),
            "target_ever_use": round(float(substances.target_ever_use[j]), 6),
            "n_users": int(n_users[j]),
            "n_exposed": int(n_exposed[j]),
        }
        for j, code in enumerate(substances.codes)
    }
    mechanism = substances.planted.codes(MECHANISM)
    target = substances.planted.mechanism_target  # None when the table plants no mechanism
    corrupt_person_ids = {kind: [] for kind in CORRUPT_KINDS}
    for kind_index, person_id in zip(corrupt_plan.kind, corrupt_plan.person_id, strict=True):
        corrupt_person_ids[CORRUPT_KINDS[kind_index]].append(int(person_id))
    corrupt_person_ids.update(corrupt_ms_ids)
    return {
        "description": "Planted truth of the simulated registries (repurpose.simulate.registries).",
        "parameters": parameters,
        "substances": substance_truth,
        "roles": {
            role: [c for c in substances.codes if substance_truth[c]["role"] == role] for role in ROLES
        },
        "mechanism": None
        if target is None
        else {
            "gene": target[0],
            "action_type": target[1],
            "substances": sorted(mechanism),
            "substance_names": [substance_truth[c]["atc_name"] for c in sorted(mechanism)],
            "planted_hr": substances.planted.mechanism_hr(),
            "note": "each substance multiplies the hazard by planted_hr from its own second dispensing",
        },
        "planted": {code: asdict(planted) for code, planted in substances.planted.substances.items()},
        "not_simulated": list(NOT_SIMULATED),
        "hazard_model": {
            "formula": "h(t) = h0(age band) * sex_factor * exp(sum_j log(hr_j) * exposed_j(t) + gamma * U)",
            "age_in_years": "(day - true birth day) / 365.25",
            "age_band_lower_years": list(AGE_BAND_LOWER_YEARS),
            "baseline_per_100k_person_years": [
                round(baseline_incidence_per_100k * r, 6) for r in AGE_BAND_RELATIVE_HAZARD
            ],
            "baseline_incidence_per_100k_at_peak": baseline_incidence_per_100k,
            "sex_factor": SEX_HAZARD_FACTOR,
            "latent_factor_log_hr_per_sd": LATENT_LOG_HR_PER_SD,
            "exposure_definition": (
                "exposed from the day of the person's second dispensing of the substance, for ever after"
            ),
            "onset_simulated_from": "birth (no drug data and so no drug effects before study start)",
            "onset_simulated_until": (
                f"death, emigration or study end + {ONSET_HORIZON_AFTER_STUDY_END_YEARS} years"
            ),
            "confounded_use_log_rate_per_sd": CONFOUNDED_USE_LOG_RATE_PER_SD,
            "prodromal": {
                "window_years": PRODROMAL_WINDOW_YEARS,
                "user_probability_per_case_and_substance": PRODROMAL_USER_PROBABILITY,
                "extra_dispensings": f"2 + Poisson({PRODROMAL_EXTRA_DISPENSINGS_MEAN})",
                "timing": "density rising linearly from 0 at window start to its peak at onset",
            },
            "diagnosis_delay": {
                "median_years": DIAGNOSIS_DELAY_MEDIAN_YEARS,
                "log_sd": DIAGNOSIS_DELAY_LOG_SD,
            },
        },
        "counts": counts,
        "corrupt_rows": corrupt_counts,
        "corrupt_row_person_ids": corrupt_person_ids,
        "files": {
            "population": "population.parquet",
            "prescriptions": "prescriptions/",
            "ms_registry": "ms_registry.parquet",
            "hidden_person_truth": "ground_truth_persons.parquet",
        },
    }
