"""Incremental runs: a new yearly prescription file or a new ATC level reruns only what depends on it.

Checked the way a user would: complete a small run, change one thing, and read Snakemake's dry-run plan.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import planned_jobs as planned_to
from conftest import snakemake_output

from repurpose.atc import ANATOMICAL_GROUPS

pytestmark = pytest.mark.slow

TARGET = "results/screen/dwas.parquet"


def snakemake(workdir: Path, config: Path) -> str:
    return snakemake_output(workdir, config, targets=(TARGET,))


def planned_jobs(workdir: Path, config: Path) -> dict[str, int]:
    """Rule -> number of jobs Snakemake would run now to the screen."""
    return planned_to(workdir, config, targets=(TARGET,))


def write_config(path: Path, delivery: Path, levels: list[int]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "inputs": {
                    "population": {"path": str(delivery / "population.parquet")},
                    "prescriptions": {"path": str(delivery / "prescriptions")},
                    "ms_registry": {"path": str(delivery / "ms_registry.parquet")},
                },
                "screen": {"atc_levels": levels, "lags_years": [0, 2], "sex_strata": ["all"], "split_by": "anatomical_group"},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def completed_run(tmp_path_factory, registries_24k) -> tuple[Path, Path, Path]:
    """A finished run on 2004-2022 deliveries (copied from the shared simulation); the 2023 file is held back."""
    root = tmp_path_factory.mktemp("incremental")
    simulated = registries_24k
    delivery = root / "delivery"
    (delivery / "prescriptions").mkdir(parents=True)
    for name in ("population.parquet", "ms_registry.parquet"):
        shutil.copy(simulated / name, delivery / name)
    for year in range(2004, 2023):
        shutil.copy(simulated / f"prescriptions/dispensings_{year}.parquet", delivery / "prescriptions")
    workdir = root / "work"
    workdir.mkdir()
    config = write_config(root / "study.yaml", delivery, [2])
    snakemake(workdir, config)
    return workdir, config, simulated


def test_finished_run_is_up_to_date(completed_run):
    workdir, config, _ = completed_run
    assert planned_jobs(workdir, config) == {}


def test_new_yearly_file_validates_only_that_file(completed_run):
    workdir, config, simulated = completed_run
    delivery = Path(yaml.safe_load(config.read_text())["inputs"]["prescriptions"]["path"])
    new_file = delivery / "dispensings_2023.parquet"
    shutil.copy(simulated / "prescriptions/dispensings_2023.parquet", new_file)
    try:
        jobs = planned_jobs(workdir, config)
    finally:
        new_file.unlink()
    assert jobs["validate_prescriptions"] == 1  # the new year only, not the 19 validated ones
    assert "validate_registers" not in jobs and "cohort" not in jobs
    assert jobs["exposure"] == 1  # exposures depend on every year's dispensings
    assert jobs["screen_gather"] == 1


def test_new_atc_level_reruns_the_exposure_pass_not_the_validation(completed_run, tmp_path):
    """Every level's table comes from one pass over the dispensings, so a new level reruns that one job (and the
    screens of every level it rewrites); validation and the cohort stay."""
    workdir, config, _ = completed_run
    settings = yaml.safe_load(config.read_text())
    delivery = Path(settings["inputs"]["population"]["path"]).parent
    wider = write_config(tmp_path / "wider.yaml", delivery, [2, 3])
    jobs = planned_jobs(workdir, wider)
    assert jobs["exposure"] == 1
    assert jobs["screen_part"] == 2 * len(ANATOMICAL_GROUPS)
    assert not {"validate_prescriptions", "validate_registers", "validate", "cohort"} & set(jobs)


def test_changed_screen_setting_reruns_the_screen_not_the_exposures(completed_run, tmp_path):
    workdir, config, _ = completed_run
    settings = yaml.safe_load(config.read_text())
    settings["screen"]["lags_years"] = [0, 2, 5]  # the main lag (2) stays screened
    changed = tmp_path / "lags.yaml"
    changed.write_text(yaml.safe_dump(settings))
    jobs = planned_jobs(workdir, changed)
    assert jobs["screen_part"] == len(ANATOMICAL_GROUPS)
    assert not {"exposure", "validate_prescriptions"} & set(jobs)


def test_changed_fdr_alpha_reruns_only_the_stages_that_read_it(completed_run, tmp_path):
    workdir, config, _ = completed_run
    settings = yaml.safe_load(config.read_text())
    settings["screen"]["fdr_alpha"] = 0.01
    changed = tmp_path / "alpha.yaml"
    changed.write_text(yaml.safe_dump(settings))
    # The screen parts declare (in @stage) that they do not read fdr_alpha; the gathered table does.
    assert planned_jobs(workdir, changed) == {"screen_gather": 1}
