"""The results layout: every path a stage writes or another stage reads, defined once.

Snakemake rules take their `input`/`output` paths from here (called with no arguments, a method returns the
pattern with its `{wildcard}`; called with values, a concrete path), and package code that must find a
stage's file (the distributed Cox rounds at a site, the command line, the export gate) asks here too, so a
file is renamed in one place. Which files are person-level (never leave the secure server) and which are
aggregate outputs (may be exported after disclosure control) is declared here beside the paths.

Imports nothing of the package: every stage may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = "results"
# The workflow of this source checkout (src/repurpose/layout.py -> the repository root's Snakefile).
WORKFLOW_SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"
REPORT_TABLES = ("cohort_flow", "validation", "exposure_prevalence")
PERSISTENCE_TABLES = ("survival", "curves", "reasons", "cox", "clinics", "variance", "agreement")
TRIAL_EMULATION_TABLES = ("target_trial", "flow", "estimates", "curves", "balance", "weights", "positivity", "counts")


@dataclass(frozen=True)
class ResultsLayout:
    """Paths under one results directory (`root`, relative to the Snakemake working directory or absolute)."""

    root: str = DEFAULT_ROOT

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    # -- simulated registries (the demo) ------------------------------------------------------------
    def simulated_dir(self) -> str:
        return self._path("simulated")

    def simulated(self, name: str) -> str:
        """A simulated extract or the ground truth: population.parquet, ms_registry.parquet, ground_truth.json..."""
        return self._path(f"simulated/{name}")

    def simulated_prescriptions_dir(self) -> str:
        return self._path("simulated/prescriptions")

    # -- validation (person-level: stays on the server) -----------------------------------------------
    def validated_dir(self) -> str:
        return self._path("validated")

    def validated(self, extract: str = "{extract}") -> str:
        """The clean rows of a register extract (population, ms_registry, ...)."""
        return self._path(f"validated/{extract}.parquet")

    def validated_prescriptions(self, part: str = "{part}") -> str:
        """The clean rows of one delivered prescription file (one yearly part)."""
        return self._path(f"validated/prescriptions/{part}.parquet")

    def unusable_registry_persons(self) -> str:
        """Persons whose every MS registry row was rejected (their outcome cannot be dated; the cohort leaves them out)."""
        return self._path("validated/ms_registry_unusable.parquet")

    def validation_dir(self) -> str:
        return self._path("validation")

    def rejects(self, extract: str = "{extract}") -> str:
        return self._path(f"validation/rejects/{extract}.parquet")

    def prescription_rejects(self, part: str = "{part}") -> str:
        return self._path(f"validation/rejects/prescriptions/{part}.parquet")

    def registers_report(self) -> str:
        return self._path("validation/parts/registers.json")

    def prescriptions_report(self, part: str = "{part}") -> str:
        return self._path(f"validation/parts/prescriptions_{part}.json")

    def clinical_report(self) -> str:
        """Report part of the MS registry's clinical extracts (validate_clinical), when any is configured."""
        return self._path("validation/parts/clinical.json")

    def validation_report(self) -> str:
        return self._path("validation/report.json")

    def validation_summary(self) -> str:
        return self._path("validation/report.md")

    # -- cohort and exposure (person-level) --------------------------------------------------------------
    def cohort(self) -> str:
        return self._path("cohort/cohort.parquet")

    def cohort_flow(self) -> str:
        return self._path("cohort/flow.json")

    def exposure(self, level: int | str = "{level}") -> str:
        return self._path(f"exposure/atc_level_{level}.parquet")

    def healthcare_use(self) -> str:
        return self._path("exposure/healthcare_use.parquet")

    # -- screen ---------------------------------------------------------------------------------------
    def screen_part(self, level: int | str = "{level}", group: str = "{group}") -> str:
        return self._path(f"screen/parts/atc_level_{level}/{group}.parquet")

    def screen_fits(self) -> str:
        """Every fit with exact counts and estimates: internal (the ranking reads it), never exported."""
        return self._path("screen/fits.parquet")

    def dwas(self) -> str:
        """The released screen table (`repurpose.release.screen_release.release_screen` of the fits)."""
        return self._path("screen/dwas.parquet")

    def screen_disclosure(self) -> str:
        """The disclosure policy applied to the screen and the rows it hid per reason (item, value): exported with it."""
        return self._path("screen/disclosure.csv")

    def dwas_csv(self) -> str:
        return self._path("screen/dwas.csv")

    # -- candidates -------------------------------------------------------------------------------------
    def mechanism_ranking(self) -> str:
        return self._path("candidates/mechanism_ranking.csv")

    def substance_targets(self) -> str:
        return self._path("candidates/substance_targets.csv")

    def drug_ranking(self) -> str:
        return self._path("candidates/drug_ranking.csv")

    def candidates_readme(self) -> str:
        return self._path("candidates/README.md")

    # -- report and release -------------------------------------------------------------------------------
    def report_html(self) -> str:
        return self._path("report/index.html")

    def report_provenance(self) -> str:
        """The run's times and input checksums: the one file that differs between runs on the same inputs."""
        return self._path("report/provenance.json")

    def report_tables_dir(self) -> str:
        return self._path("report/tables")

    def report_table(self, name: str = "{name}") -> str:
        return self._path(f"report/tables/{name}.csv")

    def export_dir(self) -> str:
        return self._path("export")

    def export_manifest(self) -> str:
        return self._path("export/manifest.csv")

    # -- persistence study (issue 16) -------------------------------------------------------------------
    def persistence_new_users(self) -> str:
        """The new users with both stop definitions and their case mix (person-level: never exported)."""
        return self._path("persistence/new_users.parquet")

    def persistence_table(self, name: str = "{name}") -> str:
        """A released table of the persistence study: survival, curves, reasons, cox, clinics, variance, agreement."""
        return self._path(f"persistence/{name}.csv")

    def persistence_html(self) -> str:
        """The persistence study's report page."""
        return self._path("report/persistence.html")

    # -- trial emulation (issue 17) -----------------------------------------------------------------
    def trial_emulation_cohort(self) -> str:
        """The eligible persons with time zero, follow-up, baseline covariates and first therapy (person-level)."""
        return self._path("trial_emulation/cohort.parquet")

    def trial_emulation_table(self, name: str = "{name}") -> str:
        """A released table of the emulation: target_trial (the protocol as run), flow (eligibility), estimates,
        curves, balance, weights, positivity, counts."""
        return self._path(f"trial_emulation/{name}.csv")

    def trial_emulation_html(self) -> str:
        """The trial emulation's report page."""
        return self._path("report/trial_emulation.html")

    # -- federation (site side) ---------------------------------------------------------------------------
    def site_package_dir(self) -> str:
        return self._path("site_package")

    def site_package_manifest(self) -> str:
        return self._path("site_package/manifest.json")

    def site_package_fits(self) -> str:
        return self._path("site_package/fits.parquet")

    def site_round_ledger(self) -> str:
        """A site's ledger of the distributed-fit evaluations it answered (never leaves the site)."""
        return self._path("site_rounds/ledger.json")

    # -- logs -------------------------------------------------------------------------------------------
    def log(self, name: str) -> str:
        return self._path(f"logs/{name}.log")


# Globs relative to the results directory. Aggregate outputs may be exported (after disclosure control);
# person-level files never are, whatever a caller asks.
AGGREGATE_OUTPUTS: tuple[str, ...] = (
    "screen/dwas.parquet",
    "screen/dwas.csv",
    "screen/disclosure.csv",
    "candidates/*.csv",
    "candidates/README.md",
    "report/index.html",
    "report/tables/*.csv",
    "persistence/*.csv",
    "report/persistence.html",
    "trial_emulation/*.csv",
    "report/trial_emulation.html",
)
PERSON_LEVEL: tuple[str, ...] = (
    "simulated/*",
    "validated/*",
    "validation/rejects/*",
    "cohort/cohort.parquet",
    "exposure/*",
    "screen/parts/*",
    "screen/fits.parquet",
    "tmp/*",
    "logs/*",
    "*/ground_truth_persons.parquet",
    "persistence/new_users.parquet",
    "trial_emulation/cohort.parquet",
)


def results_layout(root: str | Path = DEFAULT_ROOT) -> ResultsLayout:
    """The layout under `root` (a results directory)."""
    return ResultsLayout(str(root).rstrip("/") or ".")
