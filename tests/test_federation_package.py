"""A site package is built only from results made with the protocol it is stamped with (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_federation import INPUTS, PROTOCOL, fake_dwas, protocol_file, site_config  # noqa: F401 (fixture)

from repurpose.cli import main as cli_main
from repurpose.federation.package import PackageError, write_site_package
from repurpose.layout import results_layout
from repurpose.release.provenance import provenance, sha256_file
from repurpose.study_config import load_config


def screen_rows(lags: tuple[float, ...]) -> list[dict]:
    return [{"atc_code": code, "lag": lag, "log_hr": -0.1, "se": 0.2} for code in ("N02BE01", "C10AA01") for lag in lags]


def test_a_package_stamped_with_fewer_lags_than_the_results_hold_is_refused(tmp_path, protocol_file):  # noqa: F811
    config = site_config(tmp_path, protocol_file, "north")  # protocol lags [0, 2]
    fake_dwas(screen_rows((0, 2, 5, 10))).write_parquet(tmp_path / "dwas.parquet")
    with pytest.raises(PackageError, match=r"screen.lags_years: the results hold fits at \[5.0, 10.0\] outside the protocol's \[0.0, 2.0\]"):
        write_site_package(config, dwas=tmp_path / "dwas.parquet", flow=None, validation=None, package=tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_a_package_whose_protocol_lag_is_missing_from_the_results_is_refused(tmp_path, protocol_file):  # noqa: F811
    config = site_config(tmp_path, protocol_file, "north")
    fake_dwas(screen_rows((0,))).write_parquet(tmp_path / "dwas.parquet")
    with pytest.raises(PackageError, match=r"the protocol's \[2.0\] are missing from the results"):
        write_site_package(config, dwas=tmp_path / "dwas.parquet", flow=None, validation=None, package=tmp_path / "pkg")


def _results(tmp_path: Path, run_config: dict | None) -> Path:
    """A results directory with a screen and, when `run_config` is given, the report provenance of that run."""
    results = tmp_path / "results"
    paths = results_layout(results)
    Path(paths.dwas()).parent.mkdir(parents=True)
    fake_dwas(screen_rows((0, 2))).write_parquet(paths.dwas())
    if run_config is not None:
        Path(paths.report_provenance()).parent.mkdir(parents=True)
        Path(paths.report_provenance()).write_text(json.dumps(provenance(run_config, [paths.dwas()])))
    return results


def test_site_package_command_refuses_results_made_with_another_design(tmp_path, protocol_file):  # noqa: F811
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"inputs": INPUTS, "protocol": str(protocol_file), "site_label": "north"}))
    other = tmp_path / "other.yaml"  # the run was made with min_dispensings 3, the protocol says 2 (default)
    other.write_text(yaml.safe_dump({"inputs": INPUTS, **PROTOCOL, "screen": {**PROTOCOL["screen"], "min_dispensings": 3}}))
    results = _results(tmp_path, load_config(other))
    with pytest.raises(PackageError, match=r"screen.min_dispensings: protocol 2.0, results made with 3.0"):
        cli_main(["site-package", "--config", str(site_yaml), "--results", str(results), "--out", str(tmp_path / "pkg")])
    assert not (tmp_path / "pkg").exists()


def test_site_package_command_needs_a_record_of_the_run(tmp_path, protocol_file):  # noqa: F811
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"inputs": INPUTS, "protocol": str(protocol_file), "site_label": "north"}))
    results = _results(tmp_path, None)
    with pytest.raises(PackageError, match=r"no record of the run that made .*dwas.parquet names it by checksum"):
        cli_main(["site-package", "--config", str(site_yaml), "--results", str(results)])


def test_site_package_command_accepts_the_runs_own_design_and_records_it(tmp_path, protocol_file):  # noqa: F811
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(yaml.safe_dump({"inputs": INPUTS, "protocol": str(protocol_file), "site_label": "north"}))
    results = _results(tmp_path, load_config(site_yaml))
    assert cli_main(["site-package", "--config", str(site_yaml), "--results", str(results)]) == 0
    manifest = json.loads(Path(results_layout(results).site_package_manifest()).read_text())
    assert manifest["results"]["screen_sha256"] == sha256_file(results_layout(results).dwas())
    # the package manifest the run wrote is itself a record: without the report's, the command still checks
    Path(results_layout(results).report_provenance()).unlink()
    assert cli_main(["site-package", "--config", str(site_yaml), "--results", str(results), "--out", str(tmp_path / "again")]) == 0
    other_protocol = tmp_path / "other_protocol.yaml"  # another design: the DAG's manifest does not match it
    other_protocol.write_text(yaml.safe_dump({**PROTOCOL, "screen": {**PROTOCOL["screen"], "min_dispensings": 3}}))
    other_site = tmp_path / "other_site.yaml"
    other_site.write_text(yaml.safe_dump({"inputs": INPUTS, "protocol": str(other_protocol), "site_label": "north"}))
    with pytest.raises(PackageError, match="the run that made the results had design"):
        cli_main(["site-package", "--config", str(other_site), "--results", str(results), "--out", str(tmp_path / "x")])
