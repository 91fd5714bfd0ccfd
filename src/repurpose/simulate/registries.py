"""Simulated linked registries (population, NorPD-style prescriptions, MS registry) with a planted truth.

Why: the drug-wide association screen needs data on which we know the answer. Every substance of the
package's ATC catalog (except MS treatments, see `NOT_SIMULATED`) is prescribed with realistic age/sex
patterns, and a few are given a planted role. The roles are fixed in the package data table
`repurpose/data/simulator/ms_planted_substances.csv` (not drawn), so every seed plants the same truth (a run
may plant another table, `planted_substances`; what follows is the packaged one):

* `causal_protective` (the MS onset hazard is multiplied by `planted_hr` < 1):
  R06AA04 clemastine 0.55, J01AA08 minocycline 0.60, A11CC05 colecalciferol 0.65,
  P01BA02 hydroxychloroquine 0.50.
* `causal_harmful`: L04AB04 adalimumab 2.0, G03AA07 levonorgestrel and ethinylestradiol 1.5 (women only),
  D10BA01 isotretinoin 1.8.
* `mechanism` (protective through one shared target, ADRB2 agonism; HR 0.65 each, across the level-3
  classes R03A and R03C): R03AC02 salbutamol, R03AC03 terbutaline, R03AC12 salmeterol, R03AC13 formoterol,
  R03CC02 salbutamol (systemic). The catalog holds no other beta-2 agonist, so the target is clean.
* `prodromal` (no effect; cases get extra dispensings in the 5 years before onset, denser towards onset):
  N06AB06 sertraline, G04BD07 tolterodine, N07CA01 betahistine.
* `confounded` (no effect; use rises with a latent person factor U ~ N(0, 1), think smoking/obesity,
  which also raises the MS hazard by `LATENT_LOG_HR_PER_SD` per SD): N07BA03 varenicline, A08AB01 orlistat,
  N06AX12 bupropion.
* every other simulated substance: `null` (HR 1).

The model the data follow exactly:

* Prescribing: for each person and calendar year at risk, first treatment episodes of each substance start
  as a Poisson process with rate rate_j * age_profile_j(age) * sex_factor_j (* exp(U - 1/2) for
  `confounded`); the rates are calibrated so that the share of the population that ever uses the substance
  over the window matches `EVER_USE_PERCENT_BY_ATC2` (rounded from published Norwegian use; split among
  the substances of the group) or the planted substance's own target. Each first episode is followed by
  Geometric(`REPEAT_EPISODES_MEAN`) repeat episodes after exponential gaps. An episode has
  1 + Geometric(refills) dispensings ~30-120 days apart with a typical number of DDD each. No dispensing
  outside [study_start, study_end], on/after death or emigration.
* MS onset hazard h(t) = h0(age band) * sex_factor * exp(sum_j log(hr_j) * exposed_j(t) + gamma * U), with
  exposed_j(t) = 1 from the person's second dispensing of substance j onward (for ever after), h0
  piecewise constant on age bands with an MS-like peak at 20-40 years, female:male 2.5:1. Onset is drawn
  exactly by inverting the cumulative hazard with one Exp(1) draw per person from birth (so prevalent
  cases with onset before study start exist; no drug data, hence no drug effects, before study start)
  until death, emigration, or study end + 5 years (onsets after study end are never reported, but their
  prodromal dispensings fall inside the window, as in real data). The default
  `baseline_incidence_per_100k` is inflated about tenfold over real MS incidence so that a 50,000-person
  demo has several hundred incident cases.
* Diagnosis = onset + lognormal delay (median 1.5 years); the registry lists patients diagnosed alive and
  resident on or before study end; onset is missing for ~10%.
* Diagnosis records (`diagnoses.parquet`, patient-registry style): the registry's patients have a G35
  record on their diagnosis date and follow-up visits after it, kept inside the window (`diagnoses`).
* MS clinical data (`clinical`, on by default; `disease_course` documents the model): each registry patient's
  clinic and country, relapses, EDSS visits, treatment episodes with reason-specific stops (planted clinic
  effects), sick leave, and the dispensings of the pharmacy-dispensed MS therapies after diagnosis. Drawn on
  streams of their own and added after everything above, so nothing above changes.
* Optional second outcome (`parkinson={"enabled": True}`): a Parkinson-like disease with its own hazard,
  planted substances, prodrome, G20 records and levodopa proxy (`parkinson`); off by default, and then
  nothing above changes.

With the default settings this gives ~5 dispensings per person-year and ~1.6% of persons with onset in a
20-year window. The same arguments always give identical data (persons are simulated in chunks of
`chunk_size`, each with its own random stream, so changing `chunk_size` changes the draws). Optional
invalid rows (`n_corrupt_rows`) use null-role substances or persons outside the MS registry, so they never
change the planted truth. The hidden per-person truth (exact birth date, latent factor U, true onset
including undiagnosed ones) is written to `ground_truth_persons.parquet` so the truth can be checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from repurpose.atc import load_builtin_catalog
from repurpose.simulate.clinical_model import (
    CLINICAL_STREAM,
    CLINICS_STREAM,
    MS_REIMBURSEMENT_CODE,
    ClinicalSettings,
    Clinics,
    DrugTable,
)
from repurpose.simulate.corrupt import (
    MALFORMED_ATC_CODES,
    CorruptPlan,
    plan_corrupt_dispensings,
    spread_corrupt_rows,
)
from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow
from repurpose.simulate.diagnoses import (
    DIAGNOSES_FILE,
    MS_ICD10_CODE,
    MS_RECORDS_STREAM,
    MS_SINGLE_RECORD_SHARE,
    MS_VISITS_PER_YEAR,
    DiagnosisRecords,
    diagnoses_table,
    visit_records,
)
from repurpose.simulate.ground_truth import ground_truth, truth_persons_table
from repurpose.simulate.infections import INFECTION_STREAM
from repurpose.simulate.ms_registry import ms_registry_rows, ms_registry_table
from repurpose.simulate.ms_treatments import (
    ClinicalChunk,
    ClinicalModel,
    add_registry_columns,
    clinical_tables,
    clinical_truth,
    remove_clinical_tables,
    simulate_clinical_chunk,
    write_clinical_tables,
)
from repurpose.simulate.native import write_native_extracts
from repurpose.simulate.onset import (
    DEFAULT_BASELINE_INCIDENCE_PER_100K,
    LATENT_LOG_HR_PER_SD,
    ONSET_HORIZON_AFTER_STUDY_END_YEARS,
    SEX_HAZARD_FACTOR,
    baseline_hazard_per_day,
    prodromal_dispensings,
    simulate_onset_days,
)
from repurpose.simulate.parkinson import (
    PARKINSON_STREAM,
    PARKINSON_TRUTH_PERSONS_FILE,
    ParkinsonChunk,
    ParkinsonModel,
    ParkinsonSettings,
    parkinson_truth,
    parkinson_truth_persons_table,
    simulate_parkinson_chunk,
)
from repurpose.simulate.population import Population, population_table, simulate_population
from repurpose.simulate.prescriptions import (
    PRESCRIPTIONS_SCHEMA,
    Dispensings,
    SubstanceTable,
    build_substance_table,
    prescription_file_name,
    second_dispensing_days,
    simulate_dispensings,
    simulated_prescription_files,
    write_dispensings,
)
from repurpose.simulate.profiles import PlantedTable, load_planted

__all__ = ["simulate_registries", "simulated_prescription_files", "write_native_extracts"]
"""The entry points; the last two live in `prescriptions` and `native` and stay importable from here, where
they were before the split, so code written against `repurpose.simulate.registries` keeps working."""


@dataclass
class _SimulationModel:
    """Everything fixed across chunks: substances, rate tables, hazard constants, output dictionaries."""

    study: StudyWindow
    substances: SubstanceTable
    rate_table: np.ndarray
    causal_substances: np.ndarray
    log_hr: np.ndarray
    baseline_per_day: np.ndarray
    log_sex_factor: np.ndarray  # [female, male]
    hazard_horizon_day: int
    atc_dictionary: pa.Array
    reimbursement_dictionary: pa.Array
    parkinson: ParkinsonModel | None
    clinical: ClinicalModel | None

    @staticmethod
    def build(
        study: StudyWindow,
        baseline_incidence_per_100k: float,
        parkinson: ParkinsonSettings,
        clinical: ClinicalSettings,
        clinics_rng: np.random.Generator,
        planted: PlantedTable,
    ) -> _SimulationModel:
        substances = build_substance_table(load_builtin_catalog(), study, planted)
        horizon_days = int(round(ONSET_HORIZON_AFTER_STUDY_END_YEARS * DAYS_PER_YEAR))
        atc_codes = substances.codes + list(MALFORMED_ATC_CODES)
        reimbursement_codes = substances.reimbursement_codes or [""]
        clinical_model = None
        if clinical.enabled:
            drugs = DrugTable.build()
            pharmacy = np.flatnonzero(drugs.pharmacy)
            clinical_model = ClinicalModel(
                settings=clinical,
                drugs=drugs,
                clinics=Clinics.draw(clinical, clinics_rng),
                pharmacy_drugs=pharmacy,
                atc_offset=len(atc_codes),
                reimbursement_index=len(reimbursement_codes),
            )
            # the DMT codes and G35 come after every existing entry, so existing rows keep their values
            atc_codes = atc_codes + [drugs.codes[d] for d in pharmacy]
            reimbursement_codes = reimbursement_codes + [MS_REIMBURSEMENT_CODE]
        return _SimulationModel(
            study=study,
            substances=substances,
            rate_table=substances.rate_table(),
            causal_substances=np.flatnonzero(substances.planted_hr != 1.0),
            log_hr=np.log(substances.planted_hr),
            baseline_per_day=baseline_hazard_per_day(baseline_incidence_per_100k),
            log_sex_factor=np.log(np.array([SEX_HAZARD_FACTOR["F"], SEX_HAZARD_FACTOR["M"]])),
            hazard_horizon_day=study.end_day + 1 + horizon_days,
            atc_dictionary=pa.array(atc_codes, type=pa.string()),
            reimbursement_dictionary=pa.array(reimbursement_codes, type=pa.string()),
            parkinson=ParkinsonModel.build(parkinson, substances, study) if parkinson.enabled else None,
            clinical=clinical_model,
        )


@dataclass
class _ChunkStreams:
    """The random streams of one chunk: MS draws, the G35 records, the Parkinson-like outcome, the clinical
    course, the serious infections (each on its own stream, so enabling one changes none of the others' draws)."""

    ms: np.random.Generator
    ms_records: np.random.Generator
    parkinson: np.random.Generator
    clinical: np.random.Generator
    infections: np.random.Generator

    @staticmethod
    def of(seed: int, chunk_index: int) -> _ChunkStreams:
        return _ChunkStreams(
            ms=np.random.default_rng([seed, 2, chunk_index]),
            ms_records=np.random.default_rng([seed, MS_RECORDS_STREAM, chunk_index]),
            parkinson=np.random.default_rng([seed, PARKINSON_STREAM, chunk_index]),
            clinical=np.random.default_rng([seed, CLINICAL_STREAM, chunk_index]),
            infections=np.random.default_rng([seed, INFECTION_STREAM, chunk_index]),
        )


@dataclass
class _ChunkResult:
    """What the final summary needs from one chunk (its dispensings are already written)."""

    onset_day: np.ndarray
    registry: dict[str, np.ndarray]  # registry rows, `person` as global population index
    n_users: np.ndarray  # persons with >= 1 dispensing, per substance
    n_exposed: np.ndarray  # persons with >= 2 dispensings, per substance
    n_dispensings_valid: int
    n_prodromal_extra: int
    ms_records: DiagnosisRecords  # G35 records of the chunk's registry patients
    parkinson: ParkinsonChunk | None  # None when the Parkinson-like outcome is disabled
    clinical: ClinicalChunk | None  # None when the clinical data are disabled


def _simulate_chunk(
    model: _SimulationModel,
    chunk: Population,
    chunk_start: int,
    rngs: _ChunkStreams,
    corrupt: CorruptPlan,
    writers: dict[int, pq.ParquetWriter],
) -> _ChunkResult:
    """Prescriptions, then MS onset from the exposure history, then prodromal extras; write the rows.

    The optional Parkinson-like outcome follows from the same exposure history on its own stream, and its
    dispensings are appended after the MS rows (ties in the written order keep generation order), so
    it only adds rows. The clinical course of the registry patients comes last, on its own stream; its
    DMT dispensings (pharmacy drugs, after diagnosis) are added rows too, left out of the chunk's counts.
    """
    rng = rngs.ms
    study, substances = model.study, model.substances
    dispensings = simulate_dispensings(chunk, substances, model.rate_table, rng, study)

    exposure_person, exposure_substance, exposure_day = second_dispensing_days(
        dispensings, model.causal_substances
    )
    onset_day = simulate_onset_days(
        birth_day=chunk.birth_day.astype(np.float64),
        log_person_factor=model.log_sex_factor[chunk.is_male.astype(np.int64)]
        + LATENT_LOG_HR_PER_SD * chunk.latent_factor,
        hazard_end_day=np.minimum(
            np.minimum(chunk.true_death_day, chunk.emigration_day), model.hazard_horizon_day
        ).astype(np.float64),
        unit_exponential=rng.exponential(size=len(chunk)),
        exposure_person=exposure_person,
        exposure_day=exposure_day,
        exposure_log_hr=model.log_hr[exposure_substance],
        baseline_per_day=model.baseline_per_day,
    )
    prodromal = prodromal_dispensings(chunk, substances, rng, study, onset_day)
    registry = ms_registry_rows(chunk, rng, study, onset_day)
    clinical = None
    if model.clinical is not None:
        clinical = simulate_clinical_chunk(
            model.clinical, chunk, chunk_start, registry, rngs.clinical, study, rngs.infections
        )
    registry["person"] = registry["person"] + chunk_start

    dispensings = Dispensings.concat([dispensings, prodromal])
    ms_records = visit_records(
        rngs.ms_records,
        registry["person"],
        registry["diagnosis_day"],
        chunk.exit_day(study)[registry["person"] - chunk_start],
        study,
        MS_ICD10_CODE,
        MS_SINGLE_RECORD_SHARE,
        MS_VISITS_PER_YEAR,
    )
    parkinson = None
    if model.parkinson is not None:
        parkinson = simulate_parkinson_chunk(
            model.parkinson, chunk, chunk_start, substances, dispensings, rngs.parkinson, study
        )
        dispensings = Dispensings.concat([dispensings, parkinson.prodromal, parkinson.proxy])
    pairs, per_pair = np.unique(
        dispensings.person * len(substances) + dispensings.substance, return_counts=True
    )
    pair_substance = pairs % len(substances)
    result = _ChunkResult(
        onset_day=onset_day,
        registry=registry,
        n_users=np.bincount(pair_substance, minlength=len(substances)),
        n_exposed=np.bincount(pair_substance[per_pair >= 2], minlength=len(substances)),
        n_dispensings_valid=len(dispensings),
        n_prodromal_extra=len(prodromal),
        ms_records=ms_records,
        parkinson=parkinson,
        clinical=clinical,
    )
    # added rows (the DMT dispensings, the invalid rows) in one concatenation; DMT codes never tie with
    # another row in the written order (own ATC dictionary entries), so every other row keeps its place
    parts, person_ids = [dispensings], [chunk.person_id[dispensings.person]]
    if clinical is not None and len(clinical.dispensings):
        parts.append(clinical.dispensings)
        person_ids.append(chunk.person_id[clinical.dispensings.person])
    if len(corrupt.host):
        parts.append(
            Dispensings(
                person=corrupt.host - chunk_start,
                day=corrupt.day,
                substance=corrupt.substance,
                ddd=corrupt.ddd,
                reimbursement=np.full(len(corrupt.host), -1, dtype=np.int64),
            )
        )
        person_ids.append(corrupt.person_id)
    if len(parts) > 1:
        dispensings = Dispensings.concat(parts)
    person_id = np.concatenate(person_ids) if len(person_ids) > 1 else person_ids[0]
    dispensings.person_id = person_id
    # unknown-person rows carry an id just above their host's, so they sort right after the host
    person_rank = 2 * dispensings.person + (person_id != chunk.person_id[dispensings.person])
    write_dispensings(
        writers, study, dispensings, person_rank, model.atc_dictionary, model.reimbursement_dictionary
    )
    return result


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def simulate_registries(
    out_dir: str | Path,
    *,
    n_persons: int = 50_000,
    seed: int = 2024,
    study_start: str = "2004-01-01",
    study_end: str = "2023-12-31",
    baseline_incidence_per_100k: float = DEFAULT_BASELINE_INCIDENCE_PER_100K,
    n_corrupt_rows: int = 0,
    chunk_size: int = 200_000,
    parkinson: Mapping[str, Any] | None = None,
    clinical: Mapping[str, Any] | None = None,
    planted_substances: str | Path | None = None,
) -> dict[str, Any]:
    """Write simulated population, prescription, MS registry and diagnosis extracts plus the planted truth.

    Writes `population.parquet`, `prescriptions/dispensings_{year}.parquet`, `ms_registry.parquet`,
    `diagnoses.parquet` (G35 records of the registry's patients, G20 records when the Parkinson-like
    outcome is enabled, and the patients' serious infections with the clinical data unless
    `serious_infection_rate_per_1000_years` is 0), `ground_truth.json` and `ground_truth_persons.parquet` (hidden per-person truth)
    under `out_dir`, and returns the summary counts also stored in ground_truth.json. `parkinson` is the
    `simulate.parkinson` config section (`enabled`, `baseline_incidence_per_100k`); when enabled,
    ground_truth.json gains a `parkinson` key and `ground_truth_parkinson_persons.parquet` is written.
    `clinical` is the `simulate.clinical` section (None = defaults, enabled): the MS registry gains
    `clinic_id` and `country`, `ms_treatments.parquet`, `ms_relapses.parquet`, `ms_edss.parquet` and
    `sick_leave.parquet` are written, the pharmacy-dispensed DMTs are added to the prescription files and
    ground_truth.json gains a `clinical` key (repurpose.simulate.disease_course). Every other output is the
    same with the clinical data on or off. `planted_substances` is a CSV of the MS truth laid out as the
    packaged `ms_planted_substances.csv` (None = that table: the output is then the same as without the
    option); ground_truth.json's `parameters` name it when given.
    """
    started = time.perf_counter()
    if n_persons < 1:
        raise ValueError(f"n_persons must be positive, got {n_persons}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    parkinson_settings = ParkinsonSettings.from_config(parkinson)
    clinical_settings = ClinicalSettings.from_config(clinical)
    planted = load_planted(planted_substances)
    study = StudyWindow.from_iso(study_start, study_end)
    if study.end_day <= study.start_day:
        raise ValueError(f"study_start {study_start} must be before study_end {study_end}")
    out = Path(out_dir)
    prescriptions_dir = out / "prescriptions"
    prescriptions_dir.mkdir(parents=True, exist_ok=True)
    for stale in prescriptions_dir.glob("dispensings_*.parquet"):
        stale.unlink()

    clinics_rng = np.random.default_rng([seed, CLINICS_STREAM])
    model = _SimulationModel.build(
        study, baseline_incidence_per_100k, parkinson_settings, clinical_settings, clinics_rng, planted
    )
    substances = model.substances

    population = simulate_population(n_persons, np.random.default_rng([seed, 0]), study)
    pq.write_table(population_table(population, study), out / "population.parquet")

    corrupt_counts = spread_corrupt_rows(n_corrupt_rows)
    corrupt_rng = np.random.default_rng([seed, 1])
    corrupt_plan = plan_corrupt_dispensings(corrupt_rng, population, substances, study, corrupt_counts)

    writers = {
        year: pq.ParquetWriter(prescriptions_dir / prescription_file_name(year), PRESCRIPTIONS_SCHEMA)
        for year in study.years
    }
    results: list[_ChunkResult] = []
    try:
        for chunk_index, chunk_start in enumerate(range(0, n_persons, chunk_size)):
            chunk_stop = min(chunk_start + chunk_size, n_persons)
            in_chunk = (corrupt_plan.host >= chunk_start) & (corrupt_plan.host < chunk_stop)
            results.append(
                _simulate_chunk(
                    model,
                    population.take(slice(chunk_start, chunk_stop)),
                    chunk_start,
                    _ChunkStreams.of(seed, chunk_index),
                    corrupt_plan.take(in_chunk),
                    writers,
                )
            )
    finally:
        for writer in writers.values():
            writer.close()

    onset_day = np.concatenate([result.onset_day for result in results])
    registry = {
        key: np.concatenate([result.registry[key] for result in results]) for key in results[0].registry
    }
    n_users = np.sum([result.n_users for result in results], axis=0)
    n_exposed = np.sum([result.n_exposed for result in results], axis=0)
    n_dispensings_valid = sum(result.n_dispensings_valid for result in results)
    n_prodromal_extra = sum(result.n_prodromal_extra for result in results)
    registry_table, corrupt_ms_ids = ms_registry_table(
        population, registry, corrupt_rng, study, corrupt_counts
    )
    clinical_parts = [result.clinical for result in results if result.clinical is not None]
    tables = None
    if model.clinical is not None:
        registry_table = add_registry_columns(
            registry_table, model.clinical, population, clinical_parts, clinics_rng
        )
        tables = clinical_tables(model.clinical, population, clinical_parts)
        write_clinical_tables(out, tables)
    else:
        remove_clinical_tables(out)
    pq.write_table(registry_table, out / "ms_registry.parquet")
    pq.write_table(truth_persons_table(population, onset_day), out / "ground_truth_persons.parquet")
    records = [result.ms_records for result in results]
    parkinson_parts = [result.parkinson for result in results if result.parkinson is not None]
    records += [part.records for part in parkinson_parts]
    records += [r for part in clinical_parts if part.infections is not None for r in part.infections.records]
    pq.write_table(diagnoses_table(population.person_id, records), out / DIAGNOSES_FILE)

    incident = np.isfinite(onset_day) & (onset_day >= study.start_day) & (onset_day < study.end_day + 1)
    prevalent = np.isfinite(onset_day) & (onset_day < study.start_day)
    registry_sex = population.is_male[registry["person"]]
    person_years = float(((population.exit_day(study) - population.entry_day) / DAYS_PER_YEAR).sum())
    n_corrupt_total = sum(corrupt_counts.values())
    counts = {
        "persons": int(n_persons),
        "person_years_at_risk": round(person_years, 1),
        "dispensings": int(n_dispensings_valid + len(corrupt_plan.host)),
        "dispensings_valid": int(n_dispensings_valid),
        "prodromal_extra_dispensings": int(n_prodromal_extra),
        "dispensings_per_person_year": round(n_dispensings_valid / max(person_years, 1e-9), 3),
        "ms_registry_rows": int(registry_table.num_rows),
        "ms_registry_rows_valid": int(len(registry["person"])),
        "ms_cases_by_sex": {"F": int((~registry_sex).sum()), "M": int(registry_sex.sum())},
        "incident_onsets_in_window": int(incident.sum()),
        "incident_onsets_in_window_by_sex": {
            "F": int((incident & ~population.is_male).sum()),
            "M": int((incident & population.is_male).sum()),
        },
        "prevalent_onsets_before_window": int(prevalent.sum()),
        "corrupt_rows": int(n_corrupt_total),
    }
    truth = ground_truth(
        substances,
        n_users,
        n_exposed,
        counts,
        corrupt_counts,
        corrupt_plan,
        corrupt_ms_ids,
        parameters={
            "n_persons": n_persons,
            "seed": seed,
            "study_start": study_start,
            "study_end": study_end,
            "baseline_incidence_per_100k": baseline_incidence_per_100k,
            "n_corrupt_rows": n_corrupt_rows,
            "chunk_size": chunk_size,
            **({"planted_substances": str(planted_substances)} if planted_substances is not None else {}),
        },
        baseline_incidence_per_100k=baseline_incidence_per_100k,
    )
    parkinson_persons = out / PARKINSON_TRUTH_PERSONS_FILE
    parkinson_persons.unlink(missing_ok=True)
    if model.parkinson is not None:
        diagnosis_day = np.concatenate([part.diagnosis_day for part in parkinson_parts])
        pq.write_table(parkinson_truth_persons_table(population.person_id, diagnosis_day), parkinson_persons)
        truth["parkinson"] = parkinson_truth(
            model.parkinson,
            substances,
            n_users,
            n_exposed,
            _parkinson_counts(population, study, diagnosis_day, parkinson_parts),
        )
    if model.clinical is not None and tables is not None:
        truth["clinical"] = clinical_truth(model.clinical, population, clinical_parts, tables)
    (out / "ground_truth.json").write_text(
        json.dumps(truth, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    summary = {
        **counts,
        "corrupt_rows_by_kind": corrupt_counts,
        "diagnosis_records": int(sum(len(part) for part in records)),
        **({"parkinson": truth["parkinson"]["counts"]} if "parkinson" in truth else {}),
        **({"clinical": truth["clinical"]["counts"]} if "clinical" in truth else {}),
        "out_dir": str(out),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def _parkinson_counts(
    population: Population, study: StudyWindow, diagnosis_day: np.ndarray, parts: list[ParkinsonChunk]
) -> dict[str, Any]:
    """Counts of the Parkinson-like outcome for ground_truth.json (diagnoses, records, added dispensings)."""
    incident = (
        np.isfinite(diagnosis_day)
        & (diagnosis_day >= population.entry_day)
        & (diagnosis_day < population.exit_day(study))
    )
    prevalent = np.isfinite(diagnosis_day) & (diagnosis_day < study.start_day)
    record_person = np.concatenate([part.records.person for part in parts])
    _, records_per_person = np.unique(record_person, return_counts=True)
    return {
        "incident_diagnoses_in_window": int(incident.sum()),
        "incident_diagnoses_in_window_by_sex": {
            "F": int((incident & ~population.is_male).sum()),
            "M": int((incident & population.is_male).sum()),
        },
        "prevalent_diagnoses_before_window": int(prevalent.sum()),
        "diagnosis_records": int(len(record_person)),
        "persons_with_records": int(len(records_per_person)),
        "persons_with_one_record": int((records_per_person == 1).sum()),
        "cases_with_proxy_dispensings": int(sum(part.n_treated for part in parts)),
        "proxy_dispensings": int(sum(len(part.proxy) for part in parts)),
        "prodromal_extra_dispensings": int(sum(len(part.prodromal) for part in parts)),
    }
