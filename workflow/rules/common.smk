# Shared helpers of the rules: paths, parts and resources derived from the validated config.
import os

from repurpose.atc import ANATOMICAL_GROUPS
from repurpose.registry.ingest import prescription_parts
from repurpose.logs import run_logged
from repurpose.registry.outcome import outcome_definition
from repurpose.simulate.registries import simulated_prescription_files

RESULTS = "results"
ATC_LEVELS = [int(level) for level in config["screen"]["atc_levels"]]
THREADS = int(config["resources"]["threads"])
MEM_MB = int(config["resources"]["memory_gb"] * 1024)
SIMULATED_PRESCRIPTIONS = f"{RESULTS}/simulated/prescriptions"
# One screen job per ATC level x anatomical main group (A, B, C, ...), or one per level.
SCREEN_GROUPS = ANATOMICAL_GROUPS if config["screen"]["split_by"] == "anatomical_group" else ["all"]


def extract_path(name):
    """Input path of a registry extract (file or directory) from the config."""
    return config["inputs"][name]["path"]


def _prescription_part_files():
    """Part name -> source file of the prescription extract: one validation job per part (a yearly file).

    The simulator's yearly files are known from the study window before it runs; a registry delivery
    is listed from its directory, so adding a yearly file adds one validation job.
    """
    path = extract_path("prescriptions")
    if os.path.normpath(path) == os.path.normpath(SIMULATED_PRESCRIPTIONS):
        names = simulated_prescription_files(config["study"]["start"], config["study"]["end"])
        return {name.removesuffix(".parquet"): f"{SIMULATED_PRESCRIPTIONS}/{name}" for name in names}
    return {name: str(file) for name, file in prescription_parts(config["inputs"]["prescriptions"]).items()}


PRESCRIPTION_PARTS = _prescription_part_files()
VALIDATED_PRESCRIPTIONS = [f"{RESULTS}/validated/prescriptions/{part}.parquet" for part in PRESCRIPTION_PARTS]

# The optional diagnosis extract is validated only when configured; the cohort reads the outcome's own source.
OUTCOME = outcome_definition(config["study"]["outcome"])
DIAGNOSES = {"diagnoses": extract_path("diagnoses")} if config["inputs"].get("diagnoses") else {}
VALIDATED_DIAGNOSES = {
    "diagnoses": f"{RESULTS}/validated/diagnoses.parquet",
    "diagnoses_rejects": f"{RESULTS}/validation/rejects/diagnoses.parquet",
} if DIAGNOSES else {}
OUTCOME_INPUTS = {
    "ms_registry": {},
    "diagnoses": {"diagnoses": f"{RESULTS}/validated/diagnoses.parquet"},
    "drug_proxy": {"prescriptions": VALIDATED_PRESCRIPTIONS},
}[OUTCOME.source]


def outcome_paths(rule_input):
    """The cohort's keyword arguments naming the outcome's own validated source (see OUTCOME_INPUTS)."""
    return {"diagnoses": rule_input.get("diagnoses"), "prescriptions": list(rule_input.get("prescriptions", []))}


def settings(*keys, drop=()):
    """The config sections a rule's result depends on (dotted keys), as its `params`: Snakemake reruns a job
    whose params changed, and only those jobs (adding an ATC level reruns no other level: `drop`)."""
    chosen = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        chosen[key] = {k: v for k, v in value.items() if k not in drop} if isinstance(value, dict) else value
    return chosen
