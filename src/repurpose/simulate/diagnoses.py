"""The simulated diagnosis extract (patient-registry style): one row per visit with a diagnosis code.

Owns: the layout of `diagnoses.parquet` (`person_id`, `diagnosis_date`, `icd10_code`) and the visit
model shared by every simulated disease: a first record on the diagnosis date, then, unless the person
has a single record, follow-up visits as a Poisson process until death, emigration or study end. Only
visits inside the study window are in the extract (the registry covers the window), so a patient
diagnosed before study start appears with follow-up visits only. Imports numpy, pyarrow and the
simulator's `dates`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow, date_array

DIAGNOSES_FILE = "diagnoses.parquet"
DIAGNOSES_SCHEMA = pa.schema(
    [("person_id", pa.int64()), ("diagnosis_date", pa.date32()), ("icd10_code", pa.string())]
)

MS_RECORDS_STREAM = 4
"""Random stream id of the G35 records (0 population, 1 corrupt rows, 2 chunks, 3 Parkinson)."""
MS_ICD10_CODE = "G35"
MS_SINGLE_RECORD_SHARE = 0.10
MS_VISITS_PER_YEAR = 1.0
"""Visit model of the MS patients' G35 records (the registry's diagnosed patients, always written)."""


@dataclass
class DiagnosisRecords:
    """Diagnosis records of one disease: `person` indexes the population, `code` is one ICD-10 code."""

    person: np.ndarray  # int64 global person index
    day: np.ndarray  # int64 day number
    code: str

    def __len__(self) -> int:
        return len(self.day)


def visit_records(
    rng: np.random.Generator,
    person: np.ndarray,
    diagnosis_day: np.ndarray,
    exit_day: np.ndarray,
    study: StudyWindow,
    code: str,
    single_record_share: float,
    visits_per_year: float,
) -> DiagnosisRecords:
    """Records of `code` for persons diagnosed on `diagnosis_day` and observed until `exit_day` (exclusive).

    A share `single_record_share` of patients has only the first record; the others get
    Poisson(`visits_per_year` * years observed after diagnosis) follow-up visits spread uniformly over
    that time. Records outside the study window or on/after exit are dropped.
    """
    end_day = np.minimum(exit_day, study.end_day + 1)
    single = rng.random(len(person)) < single_record_share
    days_after = np.maximum(end_day - diagnosis_day - 1, 0)
    n_visits = np.where(single, 0, rng.poisson(visits_per_year * days_after / DAYS_PER_YEAR))
    visit_of = np.repeat(np.arange(len(person)), n_visits)
    visit_day = diagnosis_day[visit_of] + 1 + np.floor(rng.random(len(visit_of)) * days_after[visit_of])
    row_person = np.concatenate([np.arange(len(person)), visit_of])
    row_day = np.concatenate([diagnosis_day, visit_day.astype(np.int64)])
    keep = (row_day >= study.start_day) & (row_day < end_day[row_person])
    return DiagnosisRecords(person=person[row_person[keep]], day=row_day[keep], code=code)


def diagnoses_table(person_id: np.ndarray, records: list[DiagnosisRecords]) -> pa.Table:
    """The diagnosis extract sorted by person_id, date and code (`person_id` maps person index to id)."""
    codes = sorted({part.code for part in records})
    row_id = np.concatenate([person_id[part.person] for part in records] + [np.zeros(0, dtype=np.int64)])
    row_day = np.concatenate([part.day for part in records] + [np.zeros(0, dtype=np.int64)])
    row_code = np.concatenate(
        [np.full(len(part), codes.index(part.code)) for part in records] + [np.zeros(0, dtype=np.int64)]
    )
    order = np.lexsort((row_code, row_day, row_id))
    return pa.table(
        {
            "person_id": pa.array(row_id[order], type=pa.int64()),
            "diagnosis_date": date_array(row_day[order]),
            "icd10_code": pa.array(np.array(codes or [""], dtype=object)[row_code[order]], type=pa.string()),
        },
        schema=DIAGNOSES_SCHEMA,
    )
