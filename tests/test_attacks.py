"""The attacker suite (issue 15): nothing that leaves the server can be turned back into a small count.

On the 8,000-person demo run (`demo_run`) and the shared 200,000-person full run (`run_200k`), every attack
of tests/attack.py reads only what leaves the server - the export folder and its manifest, the report's HTML
and tables, a site package written by `repurpose site-package`, the answers of `repurpose site-round` to
crafted round files, and what `repurpose export` lets through its gate - and counts the cells it recovers,
each verified against the internal unreleased files (so every count is a real recovery). The table of
recovered cells per attack and source is printed (`pytest -s`, the CI log); each attack must recover 0.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import attack
import polars as pl
import pytest

from repurpose.dwas.person_models import active_comparator, model_cohort
from repurpose.dwas.window import lag_days
from repurpose.layout import results_layout
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]
REPURPOSE = [sys.executable, "-m", "repurpose.cli"]


@dataclass
class Scene:
    """One attacked run: its results, config, what it released, the truth, and the recovered cells."""

    name: str
    results: Path
    config_files: tuple[Path, ...]
    work: Path
    config: dict = field(default_factory=dict)
    release: attack.Release | None = None
    truth: pl.DataFrame | None = None
    summary_truth: dict = field(default_factory=dict)
    recovered: dict[tuple[str, str], int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def cli(*args: object) -> subprocess.CompletedProcess:
    """Run `repurpose ...` as the site (or the analyst) would; never raises (a refusal recovers nothing)."""
    return subprocess.run([*REPURPOSE, *map(str, args)], capture_output=True, text=True, timeout=3600)


def federation_oracle(scene: Scene, package: Path, betas: tuple[float, ...]) -> None:
    """Crafted rounds (the package's protocol hash, the fits whose exposed cases the site hides) answered by
    `repurpose site-round`: fits whose returned score is their hidden small count."""
    manifest = json.loads((package / "manifest.json").read_text())
    ledger_dir = scene.results / "site_rounds"  # the site's round ledger; removed after, as the run was shared
    ledger_existed = ledger_dir.exists()
    fits = attack.read_table(package / "fits.parquet")
    hidden = attack.hidden_fits(fits, scene.release.policy)
    scene.notes.append(f"federation: {hidden.height} fits hidden by the site package asked for")
    for i, beta in enumerate(betas):
        rounds = scene.work / f"rounds_{i}"
        rounds.mkdir(parents=True)
        path = rounds / "round_001.parquet"
        attack.craft_round(hidden, manifest.get("protocol_hash"), beta, 1).write_parquet(path)
        out = scene.work / f"answers_{i}"
        answer = cli("site-round", path, "--config", *scene.config_files, "--results", scene.results,
                     "--package", package, "--out", out, "--site-label", "attacked")  # fmt: skip
        source = f"round at beta={beta:g}"
        if answer.returncode != 0 or not out.is_dir():
            scene.recovered[("federation round", source)] = 0
            scene.notes.append(f"{source}: refused ({answer.stderr.strip().splitlines()[-1:] or ['?']})")
            continue
        responses = [pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))]
        response = pl.concat(responses) if responses else pl.DataFrame()
        scene.recovered[("federation round", source)] = attack.oracle_recoveries(response, scene.truth, scene.release.policy)
    if not ledger_existed:
        shutil.rmtree(ledger_dir, ignore_errors=True)


def comparator_attack(scene: Scene) -> None:
    """Hidden comparator cases from the released active-comparator CIs of the drug ranking, verified against
    the active-comparator model recomputed on the person-level data (the truth is in no internal file)."""
    path = scene.results / "export" / "candidates" / "drug_ranking.csv"
    if not path.is_file():
        scene.recovered[("active comparator", "export: drug ranking (estimates on small cells)")] = 0
        return
    ranking = attack.read_table(path)
    ci = attack.as_float(ranking["ci_lower_active_comparator"]) if "ci_lower_active_comparator" in ranking.columns else None
    cases = attack.as_count(ranking["n_active_comparator_cases"]) if "n_active_comparator_cases" in ranking.columns else None
    truth: dict[str, int | None] = {}
    if ci is not None and cases is not None:
        asked = ranking.filter(ci.is_not_null() & cases.is_null())
        paths = results_layout(scene.results)
        model = model_cohort(pl.read_parquet(paths.cohort()), scene.config)
        main_lag = lag_days(scene.config["candidates"]["main_lag_years"])
        for (level,), rows in asked.group_by(["atc_level"]):
            exposures = pl.read_parquet(paths.exposure(int(level)))
            codes = sorted(exposures["atc_code"].unique().to_list())
            for code in rows["atc_code"].to_list():
                found = active_comparator(model, exposures, code, codes, main_lag)
                truth[code] = found["n_active_comparator_cases"]
        scene.notes.append(f"active comparator: {asked.height} ranking rows show an HR with hidden comparator cases")
    scene.recovered[("active comparator", "export: drug ranking (estimates on small cells)")] = attack.attack_active_comparator(
        ranking, truth, scene.release.policy)


def export_gate(scene: Scene) -> None:
    """Plant identifier/date columns, a column of dates, a row-per-person table and a stale file among the
    aggregate outputs of a copy of the results, run `repurpose export`, count what got through."""
    copy = scene.work / "gate_results"
    shutil.copytree(scene.results, copy, ignore=shutil.ignore_patterns("simulated", "tmp", "export"))
    cohort = pl.read_parquet(copy / "cohort" / "cohort.parquet")
    planted, stale = attack.plant(copy, cohort)
    out = copy / "export"
    answer = cli("export", "--config", *scene.config_files, "--results", copy, "--out", out)
    through = attack.exported(out, planted, stale) if answer.returncode == 0 else 0
    scene.recovered[("export gate", "planted files exported")] = through
    scene.notes.append(f"export gate: {len(planted) + len(stale)} files planted, exit code {answer.returncode}")


def attack_scene(name: str, results: Path, config_files: tuple[Path, ...], work: Path, betas: tuple[float, ...]) -> Scene:
    """Run every attack on one run and print the table of recovered cells."""
    scene = Scene(name, results, config_files, work)
    scene.config = load_config(*config_files)
    package = work / "site_package"
    made = cli("site-package", "--config", *config_files, "--results", results, "--out", package)
    assert made.returncode == 0, made.stderr[-2000:]
    scene.release = attack.read_release(results / "export", results / "report", package, scene.config)
    scene.truth = attack.screen_truth(results)
    scene.summary_truth = attack.summary_truth(
        json.loads((results / "cohort" / "flow.json").read_text()),
        json.loads((results / "validation" / "report.json").read_text()),
    )
    scene.recovered.update(attack.run_screen_attacks(scene.release, scene.truth))
    scene.recovered.update(attack.run_summary_attacks(scene.release, scene.summary_truth))
    comparator_attack(scene)
    federation_oracle(scene, package, betas)
    export_gate(scene)
    print(report_table(scene))
    return scene


def report_table(scene: Scene) -> str:
    """The recovered cells per attack and source, as printed in the test log."""
    policy = scene.release.policy
    lines = [f"\n== attacker suite on the {scene.name} run (min_cell {policy.min_cell}, rounding base {policy.base}) =="]
    width = max(len(a) for a, _ in scene.recovered)
    for (name, source), n in sorted(scene.recovered.items()):
        lines.append(f"{name:<{width}}  {n:>7,}  {source}")
    lines += [f"note: {n}" for n in scene.notes]
    return "\n".join(lines)


@pytest.fixture(scope="module", params=["demo", "200k"])
def scene(request, tmp_path_factory) -> Scene:
    """The attacked run: the 8,000-person demo, or the shared 200,000-person full run."""
    work = tmp_path_factory.mktemp(f"attack_{request.param}")
    if request.param == "demo":
        results = request.getfixturevalue("demo_run")
        configs = (REPO / "config" / "config.yaml", results.parent / "small.yaml")
        return attack_scene("8,000-person demo", results, configs, work, attack.ROUND_BETAS)
    results, configs = request.getfixturevalue("run_200k")
    return attack_scene("200,000-person", results, tuple(configs), work, attack.ROUND_BETAS[:1])


def recovered(scene: Scene, prefix: str) -> dict[str, int]:
    """The non-zero recoveries of the attacks whose name starts with `prefix`, by attack and source."""
    return {f"{a} / {s}": n for (a, s), n in scene.recovered.items() if a.startswith(prefix) and n}


@pytest.mark.slow
def test_the_release_is_checked_against_the_truth(scene):
    """Every released screen row and summary cell has its internal truth, so a zero below is no blind spot."""
    assert scene.release.screens, "no released screen table found"
    for source, rows in scene.release.screens.items():
        unmatched = rows.select(attack.KEYS).join(scene.truth, on=attack.KEYS, how="anti")
        assert unmatched.height == 0, f"{source}: {unmatched.height} released fits without internal counts"
    assert scene.release.summaries, "no released flow or validation table found"
    for source, cells in scene.release.summaries.items():
        unknown = [cell for cell in cells if cell not in scene.summary_truth]
        assert not unknown, f"{source}: released cells without internal truth {unknown[:5]}"


@pytest.mark.slow
def test_no_small_count_is_shown(scene):
    assert recovered(scene, "shown small counts") == {}


@pytest.mark.slow
def test_nothing_recovered_within_a_row(scene):
    assert recovered(scene, "within a row") == {}


@pytest.mark.slow
def test_nothing_recovered_across_lags(scene):
    assert recovered(scene, "across lags") == {}


@pytest.mark.slow
def test_nothing_recovered_across_sex(scene):
    assert recovered(scene, "across sex") == {}


@pytest.mark.slow
def test_nothing_recovered_across_the_atc_tree(scene):
    assert recovered(scene, "across the ATC tree") == {}


@pytest.mark.slow
def test_nothing_recovered_by_se_inversion(scene):
    assert recovered(scene, "SE inversion") == {}


@pytest.mark.slow
def test_nothing_recovered_across_tables(scene):
    assert recovered(scene, "across tables") == {}


@pytest.mark.slow
def test_nothing_recovered_from_the_union_of_release_report_and_site_package(scene):
    union = {k: n for k, n in scene.recovered.items() if k[1] == "union" and n}
    assert union == {}


@pytest.mark.slow
def test_nothing_recovered_from_the_active_comparator(scene):
    assert recovered(scene, "active comparator") == {}


@pytest.mark.slow
def test_the_federation_round_is_no_oracle(scene):
    assert recovered(scene, "federation round") == {}


@pytest.mark.slow
def test_the_export_gate_lets_nothing_planted_through(scene):
    assert recovered(scene, "export gate") == {}


# -- the attacks themselves, on hand-made releases (fast) ------------------------------------------------


def screen_frame(rows: list[tuple]) -> pl.DataFrame:
    """Released screen rows (atc_code, level, lag, sex, n_persons, n_exposed, n_cases, n_exposed_cases, se)."""
    columns = [*attack.KEYS, *attack.COUNTS, "se"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    return attack.screen_rows(frame.with_columns(pl.col("se").cast(pl.Float64)))


def truth_of(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(*attack.KEYS, *[pl.col(c).alias(f"{c}_true") for c in attack.COUNTS])


def test_a_rounded_count_is_an_interval_and_a_hidden_one_is_unbounded():
    frame = pl.DataFrame({"n": [10, 0, None]}, schema={"n": pl.Int64})
    five = attack.interval_columns(frame, ["n"], 5)
    assert five["n_lo"].to_list() == [8, 0, 0] and five["n_hi"].to_list() == [12, 2, attack.INF]
    exact = attack.interval_columns(frame, ["n"], 1)
    assert exact["n_lo"].to_list()[:2] == [10, 0] and exact["n_hi"].to_list()[:2] == [10, 0]
    assert attack.as_count(pl.Series("n", ["<5", " 1,234", "7", ""])).to_list() == [None, 1234, 7, None]


def test_se_inversion_recovers_the_exposed_cases_of_a_hand_calculation():
    # d = 3 exposed of n = 100 cases: se^2 = 1/3 + 1/97
    assert attack.invert_se(math.sqrt(1 / 3 + 1 / 97), 100) == 3
    assert attack.invert_se(math.sqrt(1 / 4), None) == 4
    hidden = screen_frame([("R03", 3, 0.0, "all", 1000, 60, 100, None, math.sqrt(1 / 3 + 1 / 97))])
    truth = truth_of(hidden.with_columns(n_exposed_cases=pl.lit(3, pl.Int64)))
    assert attack.attack_se_inversion(hidden, truth, attack.Policy(5)) == 1
    wrong = truth.with_columns(n_exposed_cases_true=pl.lit(9, pl.Int64))
    assert attack.attack_se_inversion(hidden, wrong, attack.Policy(5)) == 0  # a guess the truth denies is no recovery


def test_differencing_across_lags_sex_tree_and_within_rows_on_the_issues_examples():
    policy = attack.Policy(5)
    released = screen_frame([
        ("R03", 3, 0.0, "F", 500, 60, 50, 23, None), ("R03", 3, 2.0, "F", 500, 57, 50, 19, None),
        ("N05CF", 4, 0.0, "all", 900, 9, 90, 6, None), ("N05CF01", 5, 0.0, "all", 900, 5, 90, 5, None),
        ("N05CF02", 5, 0.0, "all", 900, None, 90, None, None),
        ("A10", 2, 0.0, "all", 900, 30, 90, 27, None),
    ])  # fmt: skip
    truth = truth_of(released.with_columns(
        n_exposed=pl.when(pl.col("atc_code") == "N05CF02").then(4).otherwise(pl.col("n_exposed")),
        n_exposed_cases=pl.when(pl.col("atc_code") == "N05CF02").then(1).otherwise(pl.col("n_exposed_cases")),
    ))
    k = attack.knowledge(released, policy, use_se=False)
    # 23 - 19 exposed cases and 60 - 57 exposed lost between lags; non-cases 37 vs 38 differ by 1
    assert attack.attack_across_lags(k, truth, policy) == 3
    # N05CF 9 - 5 = N05CF02 4 exposed, 6 - 5 = 1 exposed case; and parent - shown child = 4 and 1 again
    assert attack.attack_across_tree(k, truth, policy) == 4
    # 30 exposed, 27 exposed cases: 3 exposed non-cases (A10); N05CF: 9 - 6 = 3; N05CF01: 5 - 5 = 0
    assert attack.attack_within_row(k, truth, policy) == 2
    sexes = screen_frame([
        ("C10", 3, 0.0, "all", 900, 40, 90, 12, None), ("C10", 3, 0.0, "F", 500, 38, 50, 9, None),
        ("C10", 3, 0.0, "M", 400, None, 40, None, None),
    ])  # fmt: skip
    truth = truth_of(sexes.with_columns(pl.col("n_exposed").fill_null(2), pl.col("n_exposed_cases").fill_null(3)))
    assert attack.attack_across_sex(attack.knowledge(sexes, policy, use_se=False), truth, policy) == 2
    rounded = attack.knowledge(sexes, attack.Policy(5, base=5), use_se=False)
    assert attack.attack_across_sex(rounded, truth, attack.Policy(5, base=5)) == 0  # 40 - 38 within +-4


def test_the_linear_system_of_flow_and_validation_finds_the_issues_hidden_cells():
    policy = attack.Policy(5)
    flow = {"persons_in_population": 19_997, "excluded": {"not_of_age": 2_000, "prevalent_ms_at_entry": 97},
            "persons_in_cohort": 17_900, "events": 300, "events_by_sex": {"F": 210, "M": 90},
            "events_by_outcome_source": {"onset": 290, "diagnosis": 10},
            "exit_reasons": {"death": 1_000, "emigration": 3, "outcome": 300, "study_end": 16_597}}  # fmt: skip
    validation = {"extracts": {"population": {"rows_read": 20_000, "rows_kept": 19_997, "rows_rejected": 3,
                                              "rejected_by_reason": {"duplicate_person": 3}}}}  # fmt: skip
    truth = attack.summary_truth(flow, validation)
    hidden = {("population", "rejected"), ("population rejects", "total"), ("population rejects", "duplicate_person"),
              ("exit reasons", "emigration"), ("exit reasons", "outcome"), ("population", "kept")}  # fmt: skip
    rows = [(t, i, None if (t, i) in hidden else n) for (t, i), n in truth.items()]
    released = pl.DataFrame(rows, schema={"table": pl.String, "item": pl.String, "n": pl.Int64}, orient="row")
    cells = attack.summary_cells(released, policy)
    # rejects: 20,000 read - 19,997 in the flow; emigration: 17,900 - 1,000 - 300 (events) - 16,597
    assert attack.attack_summaries([cells], truth, policy) == 4
    assert attack.attack_summaries([attack.summary_cells(released, attack.Policy(5, base=5))], truth, policy) == 0
