"""The registry simulator with planted truth: the demo input and the test bed.

Owns: simulated population, prescription and MS registry extracts (with the registry's clinical tables,
and the optional Parkinson-like second outcome with its diagnosis records) and their ground truth. Imports only the shared top-level
modules, never an analysis stage (the truth must not be derived from the methods).

Modules: `registries` (the entry point, chunk by chunk), `population`, `prescriptions`, `onset` (planted
hazards, prodromes), `ms_registry`, `corrupt` (invalid rows), `ground_truth`, `native` (registry-native
CSV copy), `profiles` (the profile tables, read from `repurpose/data/simulator/`), and the MS clinical
data: `clinical_model` (therapies, clinics, stop hazards, settings), `disease_course` (relapses, EDSS,
treatments, sick leave) and `ms_treatments` (DMT dispensings, the clinical tables and their truth).
"""

from repurpose.simulate.ms_treatments import simulated_clinical_files
from repurpose.simulate.native import write_native_extracts
from repurpose.simulate.prescriptions import simulated_prescription_files
from repurpose.simulate.registries import simulate_registries

__all__ = [
    "simulate_registries",
    "simulated_clinical_files",
    "simulated_prescription_files",
    "write_native_extracts",
]
