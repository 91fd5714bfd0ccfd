"""Counterfactual MS clinical tables: the same registry with every treated patient's first therapy forced.

Why: the trial emulation of early high-efficacy therapy versus escalation (issue 17) needs the planted
effect of the *strategy*, which no single drug's constant states: it includes the later switches, stops,
relapses and disability that follow the first choice. The simulator plants it by running the registry's
patients twice, once with every treated patient's first disease-modifying therapy drawn among the
high-efficacy drugs and once among the moderate-efficacy ones, each within a grace period of diagnosis
(`disease_course.FirstTherapyForcing`). The tests then apply the package's outcome definitions
(`repurpose.trial_emulation.outcomes`) to both and compare: the truth is computed, not stored, so each
outcome is defined once.

The same registry: population, prescriptions, MS onset and registry rows are made exactly as
`simulate_registries` makes them (same seed, same streams, chunk by chunk), and so are each patient's
clinic, recorded course at diagnosis, frailty, whether they are ever treated and their natural delay to the
first start. From the first 30-day step on, the course is drawn from its own stream
(seed, `COUNTERFACTUAL_STREAM`, chunk, replicate), the same for both classes, so a replicate changes only
what follows the patients' set-up and the truth can be averaged over replicates. Imports numpy, polars,
pyarrow and the simulator's modules.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from repurpose.atc import load_builtin_catalog
from repurpose.simulate.clinical_model import (
    CLINICAL_STREAM,
    CLINICS_STREAM,
    ClinicalSettings,
    Clinics,
    DrugTable,
)
from repurpose.simulate.corrupt import plan_corrupt_dispensings, spread_corrupt_rows
from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow
from repurpose.simulate.disease_course import FirstTherapyForcing, PatientInput, simulate_course
from repurpose.simulate.ms_registry import ms_registry_rows, ms_registry_table
from repurpose.simulate.ms_treatments import (
    ClinicalChunk,
    ClinicalModel,
    add_registry_columns,
    clinical_tables,
    recorded_reasons,
)
from repurpose.simulate.onset import (
    LATENT_LOG_HR_PER_SD,
    ONSET_HORIZON_AFTER_STUDY_END_YEARS,
    SEX_HAZARD_FACTOR,
    baseline_hazard_per_day,
    prodromal_dispensings,
    simulate_onset_days,
)
from repurpose.simulate.population import Population, population_table, simulate_population
from repurpose.simulate.prescriptions import (
    Dispensings,
    build_substance_table,
    second_dispensing_days,
    simulate_dispensings,
)
from repurpose.simulate.registries import simulate_registries

COUNTERFACTUAL_STREAM = 7
"""Random stream id of the counterfactual courses (0-6: see `clinical_model.CLINICAL_STREAM`, `CLINICS_STREAM`)."""
FIRST_CLASSES: dict[str, bool] = {"high_efficacy": True, "moderate": False}
"""`first_class` -> the `Drug.high_efficacy` flag of the drugs a first start may draw."""
SETTINGS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(simulate_registries).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}
"""The `simulate_registries` settings and their defaults: a config is what that function is called with."""
TABLES = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss", "sick_leave")


@dataclass
class _Chunk:
    index: int
    start: int
    persons: Population
    registry: dict[str, np.ndarray]  # registry rows, `person` local to the chunk


@dataclass
class RegistryPatients:
    """The registry and its patients before their clinical course, as `simulate_registries` makes them.

    Built once by `registry_patients` and reusable for both classes and every replicate (the slow part,
    prescriptions and onset, is not repeated)."""

    settings: dict[str, Any]
    study: StudyWindow
    clinical: ClinicalSettings
    population: Population
    chunks: list[_Chunk]
    registry_table: pa.Table  # the MS registry extract before its clinical columns


def simulate_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the defaults of `simulate_registries` filled in; unknown keys are an error."""
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        raise ValueError(f"counterfactual simulation: unknown settings {unknown}; known: {sorted(SETTINGS)}")
    return {**SETTINGS, **dict(config)}


def registry_patients(config: Mapping[str, Any]) -> RegistryPatients:
    """Population, MS onset and registry rows of the registry `config` describes (no files written)."""
    settings = simulate_settings(config)
    seed, chunk_size = settings["seed"], settings["chunk_size"]
    clinical = ClinicalSettings.from_config(settings["clinical"])
    if not clinical.enabled:
        raise ValueError("counterfactual simulation needs the clinical data (simulate.clinical.enabled)")
    study = StudyWindow.from_iso(settings["study_start"], settings["study_end"])
    substances = build_substance_table(load_builtin_catalog(), study)
    rate_table = substances.rate_table()
    causal = np.flatnonzero(substances.planted_hr != 1.0)
    log_hr = np.log(substances.planted_hr)
    baseline_per_day = baseline_hazard_per_day(settings["baseline_incidence_per_100k"])
    log_sex_factor = np.log(np.array([SEX_HAZARD_FACTOR["F"], SEX_HAZARD_FACTOR["M"]]))
    horizon_day = study.end_day + 1 + int(round(ONSET_HORIZON_AFTER_STUDY_END_YEARS * DAYS_PER_YEAR))

    population = simulate_population(settings["n_persons"], np.random.default_rng([seed, 0]), study)
    chunks = []
    for index, start in enumerate(range(0, settings["n_persons"], chunk_size)):
        persons = population.take(slice(start, min(start + chunk_size, settings["n_persons"])))
        rng = np.random.default_rng(
            [seed, 2, index]
        )  # the chunk's MS stream, drawn in simulate_registries' order
        dispensings = simulate_dispensings(persons, substances, rate_table, rng, study)
        exposure_person, exposure_substance, exposure_day = second_dispensing_days(dispensings, causal)
        onset_day = simulate_onset_days(
            birth_day=persons.birth_day.astype(np.float64),
            log_person_factor=log_sex_factor[persons.is_male.astype(np.int64)]
            + LATENT_LOG_HR_PER_SD * persons.latent_factor,
            hazard_end_day=np.minimum(
                np.minimum(persons.true_death_day, persons.emigration_day), horizon_day
            ).astype(np.float64),
            unit_exponential=rng.exponential(size=len(persons)),
            exposure_person=exposure_person,
            exposure_day=exposure_day,
            exposure_log_hr=log_hr[exposure_substance],
            baseline_per_day=baseline_per_day,
        )
        prodromal_dispensings(persons, substances, rng, study, onset_day)
        chunks.append(_Chunk(index, start, persons, ms_registry_rows(persons, rng, study, onset_day)))
    registry = {
        key: np.concatenate(
            [c.registry[key] + c.start if key == "person" else c.registry[key] for c in chunks]
        )
        for key in chunks[0].registry
    }
    corrupt_counts = spread_corrupt_rows(settings["n_corrupt_rows"])
    corrupt_rng = np.random.default_rng([seed, 1])
    plan_corrupt_dispensings(corrupt_rng, population, substances, study, corrupt_counts)
    registry_table, _ = ms_registry_table(population, registry, corrupt_rng, study, corrupt_counts)
    return RegistryPatients(settings, study, clinical, population, chunks, registry_table)


def _tables(
    patients: RegistryPatients, forcing: dict[str, Any] | None, replicate: int
) -> dict[str, pl.DataFrame]:
    """The clinical tables of the registry's patients; `forcing` (high_efficacy, grace_days) or None for the
    simulator's own registry (then the same draws as `simulate_registries`)."""
    seed, study = patients.settings["seed"], patients.study
    clinics_rng = np.random.default_rng([seed, CLINICS_STREAM])
    # only the clinical tables are made: the dispensing fields of the model are not used
    model = ClinicalModel(
        settings=patients.clinical,
        drugs=DrugTable.build(),
        clinics=Clinics.draw(patients.clinical, clinics_rng),
        pharmacy_drugs=np.zeros(0, dtype=np.int64),
        atc_offset=0,
        reimbursement_index=0,
    )
    parts = []
    for chunk in patients.chunks:
        rng = np.random.default_rng([seed, CLINICAL_STREAM, chunk.index])
        registry, persons = chunk.registry, chunk.persons
        person = registry["person"]
        course_patients = PatientInput.from_registry(registry, persons, study)
        first = None
        if forcing is not None:
            course_rng = np.random.default_rng([seed, COUNTERFACTUAL_STREAM, chunk.index, replicate])
            first = FirstTherapyForcing(forcing["high_efficacy"], forcing["grace_days"], course_rng)
        course = simulate_course(course_patients, model.clinics, model.drugs, rng, study, first)
        reasons = recorded_reasons(model.settings, course, rng if first is None else first.course_rng)
        empty = np.zeros(0, dtype=np.int64)
        parts.append(
            ClinicalChunk(
                person=person + chunk.start,
                course=course,
                reason_recorded=reasons,
                dispensings=Dispensings(
                    person=empty, day=empty, substance=empty, ddd=empty, reimbursement=empty
                ),
            )
        )
    tables = clinical_tables(model, patients.population, parts)
    tables["ms_registry"] = add_registry_columns(
        patients.registry_table, model, patients.population, parts, clinics_rng
    )
    tables["population"] = population_table(patients.population, study)
    return {name: pl.from_arrow(tables[name]) for name in TABLES}


def counterfactual_clinical_tables(
    config: Mapping[str, Any],
    *,
    first_class: str,
    grace_days: int,
    replicate: int = 0,
    patients: RegistryPatients | None = None,
) -> dict[str, pl.DataFrame]:
    """The simulated clinical tables of the registry `config` describes (the keyword arguments of
    `simulate_registries`, defaults filled in), with every patient who is ever treated starting the first
    therapy within `grace_days` of diagnosis (the natural delay, capped) and drawing it only among the
    available drugs of `first_class` ("high_efficacy" or "moderate"; module docstring of `disease_course`
    for the exceptions). `replicate` changes the random stream of what follows the patients' set-up (the
    same stream for both classes). Keys: ms_registry, ms_treatments, ms_relapses, ms_edss, sick_leave in the
    simulator's canonical columns (person-level, as the simulator writes them), and population (the same
    as the simulator's). `patients` (from `registry_patients(config)`) skips remaking the registry."""
    if first_class not in FIRST_CLASSES:
        raise ValueError(f"first_class must be one of {sorted(FIRST_CLASSES)}, got {first_class!r}")
    if grace_days < 0:
        raise ValueError(f"grace_days must not be negative, got {grace_days}")
    if replicate < 0:
        raise ValueError(f"replicate must not be negative, got {replicate}")
    if patients is None:
        patients = registry_patients(config)
    elif patients.settings != simulate_settings(config):
        raise ValueError("patients were made from another config than the one given")
    forcing = {"high_efficacy": FIRST_CLASSES[first_class], "grace_days": int(grace_days)}
    return _tables(patients, forcing, replicate)


def factual_clinical_tables(patients: RegistryPatients) -> dict[str, pl.DataFrame]:
    """The simulator's own tables from the same patients (no forcing): equal to the files
    `simulate_registries` writes, which shows that the counterfactual tables are of the same registry."""
    return _tables(patients, None, 0)
