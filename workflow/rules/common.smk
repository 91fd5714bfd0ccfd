# Shared helpers of the rules: the results layout, the stage functions the rules call, parts and resources
# derived from the validated config. Every path comes from repurpose.layout; every rule's rerun params come
# from its stage function's @stage declaration (repurpose.stages).
import os

from repurpose.atc import ANATOMICAL_GROUPS
from repurpose.dwas.candidates import run_candidates
from repurpose.dwas.exposure import build_exposures
from repurpose.dwas.mechanisms import run_mechanisms
from repurpose.dwas.screen import gather_screen, screen_level
from repurpose.federation.package import pooled_screen, write_site_package
from repurpose.layout import PERSISTENCE_TABLES, REPORT_TABLES, TRIAL_EMULATION_TABLES, results_layout
from repurpose.persistence.pooled import SITE_TABLES as PERSISTENCE_POOLED_TABLES
from repurpose.trial_emulation.pooled import SITE_TABLES as TRIAL_POOLED_TABLES
from repurpose.logs import run_logged
from repurpose.registry.clinical_ingest import clinical_outputs, configured_clinical_extracts, validate_clinical
from repurpose.registry.cohort import run_cohort
from repurpose.registry.ingest import merge_validation_reports, validate_prescription_part, validate_registers
from repurpose.registry.outcome import outcome_definition
from repurpose.registry.reader import prescription_parts
from repurpose.release.export import export_results
from repurpose.release.report import build_report
from repurpose.simulate import simulate_registries, simulated_clinical_files, simulated_prescription_files
from repurpose.stages import optional, rerun_settings, stage_inputs

PATHS = results_layout()
RESULTS = PATHS.root
# A pooled (federated) run ranks the coordinating centre's pooled estimates: no person-level stage runs.
POOLED = config.get("pooled")
ATC_LEVELS = [int(level) for level in config["screen"]["atc_levels"]]
THREADS = int(config["resources"]["threads"])
MEM_MB = int(config["resources"]["memory_gb"] * 1024)
# One screen job per ATC level x anatomical main group (A, B, C, ...), or one per level.
SCREEN_GROUPS = ANATOMICAL_GROUPS if config["screen"]["split_by"] == "anatomical_group" else ["all"]


# The validation's and the stage rules' jobs (validation -> export) run this script: a bare Python process each,
# importing its stage only, where a `run:` job is a whole Snakemake process that imports Snakemake and parses
# every rule file first.
STAGE_JOB = "../scripts/stage_job.py"


def NO_CONDA_ENV(wildcards):
    """No conda environment: a `script:` job's software is the project's venv (README, offline install).
    Snakemake's lint asks every `script:` rule to name one; this answers "none" for each job."""
    return None


def extract_path(name):
    """Input path of a registry extract (file or directory) from the config."""
    return config["inputs"][name]["path"]


def _prescription_part_files():
    """Part name -> source file of the prescription extract: one validation job per part (a yearly file).

    The simulator's yearly files are known from the study window before it runs; a registry delivery
    is listed from its directory, so adding a yearly file adds one validation job.
    """
    if POOLED:
        return {}
    path = extract_path("prescriptions")
    if os.path.normpath(path) == os.path.normpath(PATHS.simulated_prescriptions_dir()):
        names = simulated_prescription_files(config["study"]["start"], config["study"]["end"])
        return {name.removesuffix(".parquet"): f"{PATHS.simulated_prescriptions_dir()}/{name}" for name in names}
    return {name: str(file) for name, file in prescription_parts(config["inputs"]["prescriptions"]).items()}


PRESCRIPTION_PARTS = _prescription_part_files()
VALIDATED_PRESCRIPTIONS = [PATHS.validated_prescriptions(part) for part in PRESCRIPTION_PARTS]

# The optional diagnosis extract is validated only when configured; the cohort reads the outcome's own source.
OUTCOME = outcome_definition(config["study"]["outcome"])
DIAGNOSES = {"diagnoses": extract_path("diagnoses")} if config["inputs"].get("diagnoses") else {}
VALIDATED_DIAGNOSES = (
    {"diagnoses": PATHS.validated("diagnoses"), "diagnoses_rejects": PATHS.rejects("diagnoses")} if DIAGNOSES else {}
)
# The optional clinical extracts of the MS registry (treatments, relapses, EDSS) and sick leave: validated by
# their own job (validate_clinical) only when configured, so adding them reruns nothing of the screen.
CLINICAL = [] if POOLED else configured_clinical_extracts(config)
CLINICAL_REPORT = {"clinical": PATHS.clinical_report()} if CLINICAL else {}
OUTCOME_INPUTS = {
    "ms_registry": {},
    "diagnoses": {"diagnoses": PATHS.validated("diagnoses")},
    "drug_proxy": {"prescriptions": VALIDATED_PRESCRIPTIONS},
}[OUTCOME.source]


def person_level(path):
    """A person-level input, given in every run but a pooled one (where the stage function gets None)."""
    return [] if POOLED else path


def pooled_file(name):
    """A file of the coordinating centre's pooled directory (a pooled run only; absent files are left out)."""
    path = os.path.join(POOLED["dir"], name) if POOLED else ""
    return [path] if POOLED and os.path.isfile(path) else []


def simulated_truth():
    """The simulator's planted truth when the study reads the simulated registries (the demo), else nothing."""
    path = config["inputs"]["prescriptions"].get("path") or ""
    simulated = not POOLED and os.path.normpath(path) == os.path.normpath(PATHS.simulated_prescriptions_dir())
    return [PATHS.simulated("ground_truth.json")] if simulated else []


# The persistence study runs when the MS registry's treatment table is delivered (workflow/rules/persistence.smk).
PERSISTENCE = not POOLED and bool(config["inputs"].get("ms_treatments"))
PERSISTENCE_RELEASED = (
    [PATHS.persistence_html(), *[PATHS.persistence_table(name) for name in PERSISTENCE_TABLES]] if PERSISTENCE else []
)
# The trial emulation runs when enabled and the treatments, relapses and EDSS are delivered (trial_emulation.smk).
TRIAL_EMULATION = (
    not POOLED
    and config.get("trial_emulation", {}).get("enabled", True)
    and all(config["inputs"].get(name) for name in ("ms_treatments", "ms_relapses", "ms_edss"))
)
TRIAL_EMULATION_RELEASED = (
    [PATHS.trial_emulation_html(), *[PATHS.trial_emulation_table(name) for name in TRIAL_EMULATION_TABLES]] if TRIAL_EMULATION else []
)
# The released tables a site package carries for the coordinating centre (repurpose.federation.package SITE_STUDIES).
SITE_STUDY_TABLES = {
    **({f"persistence_{name}": PATHS.persistence_table(name) for name in PERSISTENCE_POOLED_TABLES} if PERSISTENCE else {}),
    **({f"trial_emulation_{name}": PATHS.trial_emulation_table(name) for name in TRIAL_POOLED_TABLES} if TRIAL_EMULATION else {}),
}


FINAL_TARGETS = [
    PATHS.dwas(),
    PATHS.dwas_csv(),
    PATHS.drug_ranking(),
    PATHS.mechanism_ranking(),
    PATHS.candidates_readme(),
    PATHS.report_html(),
    PATHS.export_manifest(),
] + ([] if POOLED else [PATHS.validation_report(), PATHS.cohort_flow()])
