"""The export gate reads content and releases only the current run's outputs (issue 15).

Each refusal is tried on a results tree whose report was really built (`build_report`), so the file
under test is otherwise a valid output of the run: only the check under test can refuse it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_fakes import write_fake_results

from repurpose.layout import REPORT_TABLES, results_layout
from repurpose.release.export import Cohort, ExportRefused, export_results, export_table
from repurpose.release.report import build_report
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]
MIN_CELL = 5


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(REPO / "config/config.yaml")


def _build(results: Path, config: dict, sparse_ids: bool = True) -> dict[str, Path]:
    """A fake results tree with its report built; person ids drawn sparsely from a large range (as registries'
    pseudonymous numbers are) unless `sparse_ids` is False."""
    paths = write_fake_results(results)
    if sparse_ids:
        ids = np.random.default_rng(3).choice(9_000_000_000, size=20_000, replace=False) + 1_000_000_000
        pl.DataFrame({"person_id": ids, "event": np.zeros(20_000, bool)}).write_parquet(paths["cohort"])
    build_report(
        config, validation=paths["validation"], flow=paths["flow"], dwas=paths["dwas"], exposure=paths["exposure"],
        drugs=paths["drugs"], mechanisms=paths["mechanisms"], html=results / "report/index.html",
        tables={name: results / f"report/tables/{name}.csv" for name in REPORT_TABLES},
    )  # fmt: skip
    return {**paths, "results": results}


@pytest.fixture()
def run(tmp_path, config) -> dict[str, Path]:
    return _build(tmp_path / "results", config)


def _export(config: dict, run: dict[str, Path]) -> list[dict]:
    return export_results(config, results_dir=run["results"], export_dir=run["results"] / "export")


def _rewrite_keeping_mtime(path: Path, frame: pl.DataFrame) -> None:
    """Replace a table written by the run with `frame`, keeping its time: only its content differs."""
    stat = path.stat()
    frame.write_csv(path)
    os.utime(path, (stat.st_atime, stat.st_mtime))


def _assert_nothing_exported(run: dict[str, Path]) -> None:
    results = run["results"]
    assert not (results / "export").exists()
    assert not [p for p in results.iterdir() if p.name.startswith(".export.building-")]


def test_a_clean_run_is_exported_with_its_run_id(config, run):
    entries = _export(config, run)
    run_id = json.loads((run["results"] / "report/provenance.json").read_text())["run_id"]
    assert len(run_id) == 32
    with open(run["results"] / "export/manifest.csv", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    assert {r["run_id"] for r in manifest} == {run_id}
    how = {r["file"]: r["provenance"] for r in manifest}
    assert how["screen/dwas.parquet"] == "checksum recorded by the report"
    assert how["screen/dwas.csv"] == "written with screen/dwas.parquet"
    assert how["report/index.html"] == "written by the report job"
    assert len(entries) == len(manifest)


def test_a_dictionary_identifier_or_date_alias_is_refused(config, run):
    table = run["results"] / "report/tables/cohort_flow.csv"
    frame = pl.read_csv(table, infer_schema=False)
    for column in ["pasient_lopenr", "ID", "birth_year", "death_date", "Dodsdato", "dx_date"]:
        _rewrite_keeping_mtime(table, frame.with_columns(pl.lit("1").alias(column)))
        with pytest.raises(ExportRefused, match=rf"cohort_flow.csv has person-identifier or date column\(s\) \['{column}'\]"):
            _export(config, run)
        _assert_nothing_exported(run)


def test_a_text_column_of_iso_dates_is_refused_whatever_its_name(config, run):
    table = run["results"] / "report/tables/validation.csv"
    frame = pl.read_csv(table, infer_schema=False)
    when = ["2011-03-04" if i == 2 else "later" for i in range(frame.height)]  # one date hidden in text
    _rewrite_keeping_mtime(table, frame.with_columns(pl.Series("when", when)))
    with pytest.raises(ExportRefused, match=r"validation.csv has column\(s\) of dates \['when'\]"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_a_temporal_column_is_refused(tmp_path):
    source = tmp_path / "t.parquet"
    pl.DataFrame({"group": ["a", "b"], "start": pl.Series([0, 1]).cast(pl.Date)}).write_parquet(source)
    with pytest.raises(ExportRefused, match=r"t.parquet has column\(s\) of dates \['start'\]"):
        export_table(source, tmp_path / "out.parquet", MIN_CELL)
    assert not (tmp_path / "out.parquet").exists()


def test_a_renamed_person_id_column_is_refused_by_its_values(config, run):
    table = run["results"] / "report/tables/exposure_prevalence.csv"
    frame = pl.read_csv(table, infer_schema=False)
    ids = pl.read_parquet(run["cohort"])["person_id"].head(frame.height).cast(pl.String)
    _rewrite_keeping_mtime(table, frame.with_columns(ids.alias("group_code")))
    with pytest.raises(ExportRefused, match=r"exposure_prevalence.csv is a table with a row per person \(column 'group_code' holds"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_a_table_with_a_row_per_person_is_refused_without_any_id(tmp_path):
    """Dense ids (any integer looks like one) and no id column at all: the length and a distinct key refuse it."""
    ids = np.arange(1, 1001)
    cohort_path = tmp_path / "cohort.parquet"
    pl.DataFrame({"person_id": ids}).write_parquet(cohort_path)
    cohort = Cohort.read(cohort_path)
    assert cohort is not None and cohort.ids_dense
    source = tmp_path / "per_person.csv"
    rng = np.random.default_rng(1)
    pl.DataFrame({"row_key": [f"k{i}" for i in range(600)], "sex": rng.choice(["F", "M"], 600),
                  "age_at_exit": rng.integers(20, 90, 600)}).write_csv(source)  # fmt: skip
    with pytest.raises(ExportRefused, match=r"600 rows for a cohort of 1000 persons, with distinct values in column 'row_key'"):
        export_table(source, tmp_path / "out.csv", MIN_CELL, cohort)
    # the same table cut to far fewer rows than persons is an ordinary aggregate by this rule
    pl.read_csv(source).head(100).write_csv(source)
    assert export_table(source, tmp_path / "out.csv", MIN_CELL, cohort) == 100


def test_the_screen_of_a_real_shape_is_not_a_per_person_table(config, run):
    """The screen has many rows but no single distinct column: the rule must not refuse it."""
    dwas = pl.read_parquet(run["dwas"])
    small = Cohort(n_persons=dwas.height, ids=frozenset(), ids_dense=True)  # as many rows as persons
    assert export_table(run["dwas"], run["results"] / "x.parquet", MIN_CELL, small) == dwas.height


def test_a_screen_newer_than_the_report_is_refused(config, run):
    """A later run rewrote the screen and failed before its report: the old report must not go out beside it."""
    dwas = pl.read_parquet(run["dwas"])
    dwas.with_columns(pl.col("hr") * 1.01).write_parquet(run["dwas"])
    with pytest.raises(ExportRefused, match=r"dwas.parquet changed after the report of run [0-9a-f]{32} read it"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_a_report_table_older_than_the_report_job_is_refused(config, run):
    table = run["results"] / "report/tables/validation.csv"
    old = table.stat().st_mtime - 3600
    os.utime(table, (old, old))
    with pytest.raises(ExportRefused, match=r"validation.csv was not written by the report job of run"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_a_screen_csv_from_an_earlier_run_is_refused(config, run):
    old = run["dwas"].stat().st_mtime - 3600
    os.utime(run["dwas_csv"], (old, old))
    with pytest.raises(ExportRefused, match=r"dwas.csv was not written with .*dwas.parquet"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_a_file_outside_the_runs_dag_is_refused(config, run):
    extra = run["results"] / "candidates/extra.csv"
    pl.DataFrame({"atc_code": ["N06A"], "n_exposed": [50]}).write_csv(extra)
    with pytest.raises(ExportRefused, match=r"extra.csv is not an output of the current run's DAG"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_no_report_provenance_no_export(config, run):
    (run["results"] / "report/provenance.json").unlink()
    with pytest.raises(ExportRefused, match=r"provenance.json is missing: there is no finished run to export"):
        _export(config, run)
    _assert_nothing_exported(run)


def test_the_export_is_rebuilt_whole_and_a_refusal_leaves_no_earlier_export(config, run):
    export = run["results"] / "export"
    export.mkdir()
    (export / "report").mkdir()
    (export / "report/old_index.html").write_text("<p>an earlier run</p>")
    _export(config, run)
    assert not (export / "report/old_index.html").exists()
    assert (export / "report/index.html").is_file()
    (run["results"] / "candidates/extra.csv").write_text("atc_code,n_exposed\nN06A,50\n")
    with pytest.raises(ExportRefused):
        _export(config, run)
    _assert_nothing_exported(run)


def test_the_manifest_lists_only_what_the_layout_reads(config, run):
    """The paths the gate reads come from the layout (the cohort for its ids, the report's provenance)."""
    layout = results_layout(run["results"])
    assert Path(layout.report_provenance()).is_file() and Path(layout.cohort()).is_file()
    files = {e["file"] for e in _export(config, run)}
    assert "report/provenance.json" not in files and not any(f.startswith("cohort/") for f in files)
