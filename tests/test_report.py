"""The reviewer's report, disclosure control at every export boundary, and the export folder."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from report_fakes import PERSON_ID_BASE, fake_dwas, write_fake_results

from repurpose.cli import main as cli_main
from repurpose.layout import REPORT_TABLES
from repurpose.release.disclosure import (
    SCREEN_RULES,
    Partition,
    for_display,
    person_count_columns,
    small_counts_left,
    suppress_small_counts,
)
from repurpose.release.export import ExportRefused, export_results, export_table
from repurpose.release.provenance import file_record, git_commit, package_versions, provenance, sha256_file
from repurpose.release.report import build_report, flow_table, prevalence_table, validation_table
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]
COUNTS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")
MIN_CELL = 5


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(REPO / "config/config.yaml")


@pytest.fixture(scope="module")
def built(tmp_path_factory, config) -> dict[str, Path]:
    """A fake results tree with the report built on it (about 5 s)."""
    results = tmp_path_factory.mktemp("results")
    paths = write_fake_results(results)
    logs = results / "logs"
    logs.mkdir()
    (logs / "validate_registers.log").write_text(
        "2026-01-01 10:00:00,001 INFO repurpose.registry.ingest: read 8000 rows\n"
        "2026-01-01 10:00:01,002 WARNING repurpose.registry.ingest: ms_registry: 3 persons of the population have only rejected rows\n"
        "2026-01-01 10:00:02,003 WARNING repurpose.registry.ingest: ms_registry: 1234 persons lack a birth date\n"
    )  # fmt: skip
    (logs / "candidates.log").write_text("2026-01-01 10:01:00,000 WARNING repurpose.dwas.candidates: empirical null level 4: degenerate (sigma = 0)\n" * 2)
    (logs / "export.log").write_text("2026-01-01 09:00:00,000 WARNING repurpose.release.export: an old export's warning\n")
    paths["html"] = build_report(
        config, validation=paths["validation"], flow=paths["flow"], dwas=paths["dwas"], exposure=paths["exposure"],
        drugs=paths["drugs"], mechanisms=paths["mechanisms"], html=results / "report/index.html",
        tables={name: results / f"report/tables/{name}.csv" for name in REPORT_TABLES}, run_logs=logs,
    )  # fmt: skip
    paths["results"] = results
    return paths


# ------------------------------------------------------------------ disclosure: primary and complementary


def test_small_counts_are_suppressed_and_zero_kept():
    frame = pl.DataFrame({"n": [0, 1, 4, 5, 100, None]})
    out = suppress_small_counts(frame, ["n"], MIN_CELL)
    assert out["n"].to_list() == [0, None, None, 5, 100, None]
    assert for_display(out, ["n"], MIN_CELL)["n"].to_list() == ["0", "<5", "<5", "5", "100", "<5"]


def test_the_other_sex_stratum_is_suppressed_so_F_is_not_all_minus_M():
    frame = pl.DataFrame({"atc_code": ["A"] * 3, "atc_level": [2] * 3, "lag_years": [0.0] * 3,
                          "sex": ["all", "F", "M"], "n_exposed_cases": [20, 3, 17]})  # fmt: skip
    out = suppress_small_counts(frame, ["n_exposed_cases"], MIN_CELL, **SCREEN_RULES)
    assert out["n_exposed_cases"].to_list() == [20, None, None]


def test_exposed_cases_hidden_when_unexposed_cases_are_few():
    frame = pl.DataFrame({"n_cases": [7, 40], "n_exposed_cases": [5, 30]})
    out = suppress_small_counts(frame, ["n_cases", "n_exposed_cases"], MIN_CELL, **SCREEN_RULES)
    assert out["n_exposed_cases"].to_list() == [None, 30]  # 7 - 5 = 2 unexposed cases would be revealed


def test_derived_person_years_follow_their_count():
    frame = pl.DataFrame({"n_exposed": [3, 50], "person_years_exposed": [11.5, 400.0]})
    out = suppress_small_counts(frame, ["n_exposed"], MIN_CELL, **SCREEN_RULES)
    assert out["person_years_exposed"].to_list() == [None, 400.0]


def test_partition_hides_the_smallest_other_part():
    frame = pl.DataFrame({"table": ["t"] * 4, "item": ["total", "a", "b", "c"], "n": [112, 2, 0, 110]})
    out = suppress_small_counts(frame, ["n"], MIN_CELL, partitions=[Partition(("table",), "item", "total")])
    assert out["n"].to_list() == [112, None, 0, None]


def _attack(frame: pl.DataFrame, truth: pl.DataFrame) -> list[tuple[int, str, int]]:
    """Recover hidden cells by every complement a reader has (F + M = all; total - part), repeatedly;
    return the recovered cells whose true value is disclosive."""
    known = {c: frame[c].to_list() for c in COUNTS}
    true = {c: truth[c].to_list() for c in COUNTS}
    keys = frame.select("atc_code", "atc_level", "lag_years").rows()
    sexes = frame["sex"].to_list()
    groups: dict[tuple, dict[str, int]] = {}
    for i, (key, sex) in enumerate(zip(keys, sexes, strict=True)):
        groups.setdefault(key, {})[sex] = i
    leaks = []
    changed = True
    while changed:
        changed = False
        for c in COUNTS:
            for rows in groups.values():
                a, f, m = rows["all"], rows["F"], rows["M"]
                cells = [known[c][a], known[c][f], known[c][m]]
                if cells.count(None) == 1:
                    if cells[0] is None:
                        known[c][a] = known[c][f] + known[c][m]
                        idx = a
                    else:
                        idx = f if cells[1] is None else m
                        known[c][idx] = known[c][a] - (known[c][m] if idx == f else known[c][f])
                    changed = True
                    if 1 <= true[c][idx] < MIN_CELL:
                        leaks.append((idx, c, true[c][idx]))
        # unexposed cases / persons are never published, so total - part gives nothing new beyond the above
    return leaks


def test_no_suppressed_cell_is_recovered_from_complements():
    rng = np.random.default_rng(11)
    raw = fake_dwas(rng, n_level5=300)
    released = suppress_small_counts(raw, COUNTS, MIN_CELL, **SCREEN_RULES)
    assert released["n_exposed_cases"].null_count() > 50  # the fake has plenty of small cells
    assert _attack(released, raw) == []
    assert small_counts_left(released, COUNTS, MIN_CELL) == {}
    unexposed = (released["n_cases"] - released["n_exposed_cases"]).drop_nulls()
    assert not ((unexposed >= 1) & (unexposed < MIN_CELL)).any()
    # the attack itself works: on primary suppression alone it recovers small cells
    primary = suppress_small_counts(raw, COUNTS, MIN_CELL)
    assert _attack(primary, raw)


# ------------------------------------------------------------------ report pieces


def test_summary_tables_suppress_small_counts_and_their_complements(built):
    flow = flow_table({"persons_in_population": 100, "excluded": {"a": 3, "b": 40}, "persons_in_cohort": 57,
                       "events": 20, "events_by_sex": {"F": 18, "M": 2}}, MIN_CELL)  # fmt: skip
    items = dict(zip(flow["table"] + ":" + flow["item"], flow["n"], strict=True))
    assert items["flow:excluded: a"] is None and items["flow:excluded: b"] is None  # 100 - 57 - b would reveal a
    assert items["events by sex:M"] is None and items["events by sex:F"] is None
    checks = validation_table({"extracts": {"x": {"rows_read": 50, "rows_kept": 47, "rows_rejected": 3,
                                                  "rejected_by_reason": {"bad": 3}}}}, MIN_CELL)  # fmt: skip
    assert checks.filter(pl.col("item") != "total")["n"].null_count() == 3
    names = pl.DataFrame({"atc_code": ["N", "V"], "atc_name": ["NERVOUS", "VARIOUS"], "atc_level": [1, 1]})
    prevalence = prevalence_table(built["exposure"], 20000, names, MIN_CELL)
    various = prevalence.filter(pl.col("atc_group") == "V").row(0, named=True)
    assert various["n_exposed"] is None and various["percent_exposed"] is None  # 3 persons: 0.015% reveals it


def test_drug_wide_plot_labels_do_not_overlap_with_1000_classes():
    import matplotlib.pyplot as plt

    from repurpose.release.report_figures import _place_labels

    fig, ax = plt.subplots(figsize=(11, 4.2))
    x = np.arange(1000)
    y = 5 + np.random.default_rng(1).random(1000)  # 1,000 classes, all near the top: worst case for labels
    ax.scatter(x, y)
    ax.set_xlim(-1, 1000)
    ax.set_ylim(0, 7)
    placed = _place_labels(ax, [(float(a), float(b), f"N06AB{k:02d}") for k, (a, b) in enumerate(zip(x, y, strict=True))])
    plt.close(fig)
    assert 5 < len(placed) < 200
    assert not any(p.overlaps(q) for p, q in itertools.combinations(placed, 2))


def test_report_is_self_contained_with_all_sections(built):
    text = built["html"].read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text  # opens offline
    assert text.count("data:image/png;base64,") >= 2 * 2 * 2 + 1  # manhattan + volcano per level x lag, flow
    for anchor in ('id="drug-table"', 'id="mechanism-table"', 'id="flow-figure"', 'id="provenance-table"',
                   'id="inputs-table"', "class=\"forest\""):  # fmt: skip
        assert anchor in text
    assert sha256_file(built["dwas"]) in text  # input checksums
    for href in re.findall(r'href="#((?:drug|mech)-[^"]+)"', text):  # every row links to its evidence
        assert f'id="{href}"' in text, href


def test_report_shows_no_small_count_and_no_person_id(built):
    text = built["html"].read_text()
    assert str(PERSON_ID_BASE)[:6] not in text
    for name in ("cohort_flow", "validation", "exposure_prevalence"):
        table = pl.read_csv(built["results"] / f"report/tables/{name}.csv", infer_schema=False)
        counts = [c for c in table.columns if c == "n" or c.startswith("n_")]
        assert small_counts_left(table, counts, MIN_CELL) == {}, name
    drug_rows = re.search(r'<table class="sortable" id="drug-table">(.*?)</table>', text, re.S).group(1)
    assert '<td data-key="" title="&lt;5">&lt;5</td>' in drug_rows  # the ranking's n_exposed = 3 is shown as <5
    cells = re.findall(r"<td[^>]*>(\d+)</td><td[^>]*>(\d+)</td><td[^>]*>(?:\d+(?:\.\d+)?)?</td></tr>", text)
    assert cells  # the prevalence rows
    assert all(not (1 <= int(n) < MIN_CELL) for pair in cells for n in pair)


def test_the_run_warnings_are_in_the_report_with_person_counts_as_released_counts(built):
    text = built["html"].read_text()
    assert "the run logged 3 warnings" in text
    rows = re.findall(r"<tr><td>(\w+)</td><td>(.*?)</td></tr>", re.search(r'id="run-warnings-table">(.*?)</table>', text, re.S).group(1))
    assert rows == [
        ("candidates", "empirical null level 4: degenerate (sigma = 0)"),  # once, though logged twice; level 4 is no count
        ("validate_registers", "ms_registry: &lt;5 persons of the population have only rejected rows"),
        ("validate_registers", "ms_registry: about 1,235 persons lack a birth date"),  # rounded like the flow table
    ]
    assert "old export" not in text  # the export runs after the report: its log is an earlier run's


def test_report_without_candidate_files_says_so(tmp_path, config):
    paths = write_fake_results(tmp_path, with_candidates=False)
    html = build_report(config, validation=paths["validation"], flow=paths["flow"], dwas=paths["dwas"],
                        exposure=paths["exposure"], drugs=tmp_path / "candidates/drug_ranking.csv", mechanisms=None,
                        html=tmp_path / "report/index.html",
                        tables={name: tmp_path / f"report/tables/{name}.csv" for name in REPORT_TABLES})  # fmt: skip
    text = html.read_text()
    assert 'id="no-candidates"' in text and "was not available in this run" in text
    assert 'class="forest"' in text  # top screen hits instead


# ------------------------------------------------------------------ provenance


def test_provenance_has_checksums_versions_and_config_hash(tmp_path, config):
    f = tmp_path / "x.txt"
    f.write_text("abc")
    record = file_record(f)
    assert record["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert record["bytes"] == 3
    assert package_versions()["polars"] == pl.__version__
    prov = provenance(config, [f, tmp_path / "missing.csv"])
    assert len(prov["config_hash"]) == 16 and prov["inputs"][1]["missing"]
    commit = git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)


# ------------------------------------------------------------------ export


def test_export_copies_aggregates_with_a_manifest(built, config):
    out = built["results"] / "export"
    entries = export_results(config, results_dir=built["results"], export_dir=out)
    files = {e["file"] for e in entries}
    assert {"screen/dwas.csv", "screen/dwas.parquet", "report/index.html", "candidates/drug_ranking.csv",
            "report/tables/cohort_flow.csv"} <= files  # fmt: skip
    assert not any(f.startswith(("exposure/", "cohort/", "validated/")) for f in files)
    with open(out / "manifest.csv", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    for row in manifest:
        assert sha256_file(out / row["file"]) == row["sha256"]
    assert int(next(r for r in manifest if r["file"] == "screen/dwas.parquet")["rows"]) == pl.read_parquet(built["dwas"]).height
    # no person identifier and no disclosive count anywhere in the export
    ids = {str(PERSON_ID_BASE + k) for k in range(0, 20000, 97)} | {str(PERSON_ID_BASE + 5000)}
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes().decode("utf-8", "replace")
            assert "person_id" not in blob or path.suffix == ".html", path
            assert not any(i in blob for i in ids), path
        if path.suffix in (".csv", ".parquet") and path.name != "manifest.csv":
            table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
            counts = person_count_columns(table.columns) + (["n"] if "n" in table.columns else [])
            assert small_counts_left(table, counts, MIN_CELL) == {}, path
    released = pl.read_parquet(out / "screen/dwas.parquet")
    assert _attack(released, fake_dwas(np.random.default_rng(7))) == []


def test_export_refuses_person_level_files(built, config, tmp_path):
    with pytest.raises(ExportRefused, match="person-level"):
        export_results(config, results_dir=built["results"], export_dir=tmp_path / "e1", sources=[built["exposure"]])
    sneaky = built["results"] / "candidates/extra.csv"  # an aggregate-looking name with a person column
    pl.DataFrame({"person_id": [PERSON_ID_BASE], "n_exposed": [10]}).write_csv(sneaky)
    try:
        with pytest.raises(ExportRefused, match="person-identifier"):
            export_results(config, results_dir=built["results"], export_dir=tmp_path / "e2")
    finally:
        sneaky.unlink()


def test_export_resuppresses_a_table_written_without_disclosure_control(built, config, tmp_path):
    raw = tmp_path / "raw.csv"
    pl.DataFrame({"atc_code": ["A", "A", "A"], "atc_level": [2] * 3, "lag_years": [0.0] * 3, "sex": ["all", "F", "M"],
                  "n_exposed": [30, 2, 28], "n_substances": [3, 1, 2]}).write_csv(raw)  # fmt: skip
    export_table(raw, tmp_path / "export/raw.csv", MIN_CELL)  # the per-table gate (export_results also needs a run)
    out = pl.read_csv(tmp_path / "export/raw.csv", infer_schema=False)
    assert out["n_exposed"].to_list() == ["30", "<5", "<5"]  # the small one and its complement
    assert out["n_substances"].to_list() == ["3", "1", "2"]  # counts of substances are not person counts


def test_cli_export(built, tmp_path):
    assert cli_main(["export", "--results", str(built["results"]), "--out", str(tmp_path / "cli_export")]) == 0
    assert (tmp_path / "cli_export/manifest.csv").is_file()
    with pytest.raises(ExportRefused):
        cli_main(["export", "--results", str(built["results"]), "--out", str(tmp_path / "x"),
                  "--include", str(built["cohort"])])  # fmt: skip
