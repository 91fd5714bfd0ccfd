"""Federation end to end: one simulated population split into three registries, pooled without person-level data.

The population is simulated once and its persons split 50/30/20 into three "registries" with different
native layouts (Norwegian-header Latin-1 CSV, Parquet with other column names, comma CSV with yet other
names), each with its own config (column maps) naming one shared protocol. Each site runs the Snakemake
DAG to its site package; the coordinating centre pools them, drives the exact pooled Cox rounds through
files (when `repurpose.federation.distributed` is installed) and ranks the pooled results. Checked: the issue's
done-when list (exactness vs the single-dataset Cox stratified by site, refusal of a mismatched protocol,
nothing person-level and no small count in packages and round files).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import SNAKEMAKE_THREADED

from repurpose.federation.package import PackageError, pool_packages, rank_pooled
from repurpose.release.disclosure import small_counts_left
from repurpose.release.export import IDENTIFIER_COLUMNS
from repurpose.schemas import FIT_KEYS
from repurpose.schemas import SCREEN_COUNT_COLUMNS as COUNT_COLUMNS
from repurpose.simulate import write_native_extracts
from repurpose.study_config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
SHARES = {"norway": 0.5, "sweden": 0.3, "denmark": 0.2}
PROTOCOL = {
    "study": {"start": "2004-01-01", "end": "2023-12-31", "washout_years": 1, "min_age": 18, "outcome": "onset"},
    "screen": {
        "atc_levels": [3, 5], "lags_years": [0, 2], "sex_strata": ["all", "F", "M"],
        "adjust": {"strata": ["sex", "birth_cohort", "education"], "covariates": []},
    },
    "candidates": {"main_lag_years": 2},
    "disclosure": {"min_cell": 5},
}  # fmt: skip
# Native column names per site (canonical -> native); norway uses the simulator's Norwegian CSV layout.
SWEDEN_NAMES = {
    "population": {"person_id": "lopnr_se", "sex": "kon", "birth_year": "fodelsear", "birth_month": "fodelsemanad",
                   "death_date": "dodsdatum", "emigration_date": "utvandringsdatum", "education": "sun_niva"},
    "prescriptions": {"person_id": "lopnr_se", "dispense_date": "edatum", "atc_code": "atc_se", "ddd": "antal_ddd",
                      "reimbursement_code": "formanstyp"},
    "ms_registry": {"person_id": "lopnr_se", "onset_date": "debut_datum", "diagnosis_date": "diagnos_datum",
                    "ms_course_at_diagnosis": "forlopp", "edss_at_diagnosis": "edss_vid_diagnos"},
}  # fmt: skip
DENMARK_NAMES = {
    extract: {canonical: f"dk_{canonical.upper()}" for canonical in names} for extract, names in SWEDEN_NAMES.items()
}


def run_sites(runs: list[tuple[Path, Path]], target: str) -> None:
    """Run each site's DAG (workdir, config file) to `target`, the three sites side by side on one core each."""
    processes = []
    for workdir, config_file in runs:
        command = [str(SNAKEMAKE), *SNAKEMAKE_THREADED, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1", "--quiet",
                   "progress", "--configfile", str(config_file), "--", target]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for process in processes:
        output, _ = process.communicate(timeout=1200)
        assert process.returncode == 0, output[-4000:]


def split_population(simulated: Path, out: Path, seed: int = 11) -> dict[str, Path]:
    """Canonical extracts of each site: persons assigned at random in the SHARES proportions."""
    population = pl.read_parquet(simulated / "population.parquet")
    rng = np.random.default_rng(seed)
    site_of = rng.choice(list(SHARES), size=population.height, p=list(SHARES.values()))
    assignment = pl.DataFrame({"person_id": population["person_id"], "site": site_of})
    dirs = {}
    for site in SHARES:
        ids = assignment.filter(pl.col("site") == site).select("person_id")
        target = out / site / "canonical"
        (target / "prescriptions").mkdir(parents=True)
        population.join(ids, on="person_id").write_parquet(target / "population.parquet")
        pl.read_parquet(simulated / "ms_registry.parquet").join(ids, on="person_id").write_parquet(target / "ms_registry.parquet")
        # one part per site (not one per year) keeps the number of Snakemake validation jobs small
        parts = [pl.read_parquet(part).join(ids, on="person_id") for part in sorted((simulated / "prescriptions").glob("*.parquet"))]
        pl.concat(parts).write_parquet(target / "prescriptions" / "dispensings_all.parquet")
        dirs[site] = target
    return dirs


def renamed_inputs(canonical: Path, out: Path, names: dict[str, dict[str, str]], as_csv: bool) -> dict:
    """Write the canonical extracts with the site's own column names (Parquet or comma CSV); its config inputs."""
    out.mkdir(parents=True)
    (out / "prescriptions").mkdir()
    suffix = ".csv" if as_csv else ".parquet"

    def write(frame: pl.DataFrame, path: Path, extract: str) -> None:
        frame = frame.rename(names[extract])
        if as_csv:
            frame.write_csv(path.with_suffix(suffix))
        else:
            frame.write_parquet(path.with_suffix(suffix))

    write(pl.read_parquet(canonical / "population.parquet"), out / "population", "population")
    write(pl.read_parquet(canonical / "ms_registry.parquet"), out / "ms_registry", "ms_registry")
    for part in sorted((canonical / "prescriptions").glob("*.parquet")):
        write(pl.read_parquet(part), out / "prescriptions" / part.stem, "prescriptions")
    return {
        "population": {"path": str(out / f"population{suffix}"), "columns": names["population"]},
        "prescriptions": {"path": str(out / "prescriptions"), "columns": names["prescriptions"]},
        "ms_registry": {"path": str(out / f"ms_registry{suffix}"), "columns": names["ms_registry"]},
    }


@pytest.fixture(scope="module")
def federation(tmp_path_factory, registries_24k) -> dict:
    """Three sites run to their packages, then pooled (and the Cox rounds driven, when available)."""
    root = tmp_path_factory.mktemp("federation")
    canonical = split_population(registries_24k, root / "sites")
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(PROTOCOL))
    inputs = {
        "norway": write_native_extracts(canonical["norway"], root / "sites/norway/native")["inputs"],
        "sweden": renamed_inputs(canonical["sweden"], root / "sites/sweden/native", SWEDEN_NAMES, as_csv=False),
        "denmark": renamed_inputs(canonical["denmark"], root / "sites/denmark/native", DENMARK_NAMES, as_csv=True),
    }
    site_dirs = {}
    for site, site_inputs in inputs.items():
        workdir = root / "sites" / site
        (workdir / "site.yaml").write_text(yaml.safe_dump(
            {"run_label": f"federation test {site}", "site_label": site, "protocol": str(protocol), "inputs": site_inputs,
             "screen": {"split_by": "level"}},  # a site matter (jobs), not a design key: few jobs in a test
            allow_unicode=True,
        ))  # fmt: skip
        site_dirs[site] = workdir
    run_sites([(w, w / "site.yaml") for w in site_dirs.values()], "results/site_package/manifest.json")
    pooled = root / "pooled"
    summary = pool_packages([site_dirs[s] / "results/site_package" for s in SHARES], pooled)
    cox_path = drive_rounds(site_dirs, pooled, summary)
    ranked = rank_pooled(pooled, cox_path=cox_path)
    return {"root": root, "sites": site_dirs, "pooled": pooled, "summary": summary, "cox": cox_path,
            "ranked": ranked, "protocol": protocol}  # fmt: skip


def drive_rounds(site_dirs: dict[str, Path], pooled: Path, summary: dict) -> Path | None:
    """Exchange round files between the coordinator and the sites until the pooled Cox model converges."""
    if importlib.util.find_spec("repurpose.federation.distributed") is None or summary["rounds"] is None:
        return None
    from repurpose.federation.distributed import coordinator_round, site_round

    rounds_dir = pooled / "rounds"
    round_path = Path(summary["rounds"])
    for _ in range(50):
        responses = []
        for site, workdir in site_dirs.items():
            config = load_config(workdir / "site.yaml")
            responses.append(site_round(config, workdir / "results", round_path, workdir / "outbox", site))
        following = coordinator_round(rounds_dir, responses)
        if following is None:
            break
        round_path = Path(following)
    found = sorted(p for p in pooled.rglob("*.parquet") if "cox" in p.name and "round" not in p.name)
    return found[-1] if found else None


def test_each_site_package_is_aggregate_only(federation):
    for site, workdir in federation["sites"].items():
        package = workdir / "results/site_package"
        manifest = json.loads((package / "manifest.json").read_text())
        assert manifest["site_label"] == site and manifest["min_cell"] == 5
        assert {"fits.parquet", "fits.csv", "cohort_flow.csv", "validation.csv", "protocol.yaml"} <= set(manifest["files"])
        fits = pl.read_parquet(package / "fits.parquet")
        assert not [c for c in fits.columns if c.lower() in IDENTIFIER_COLUMNS or c.endswith(("_date", "_age_days"))]
        assert not [c for c, t in fits.schema.items() if t.is_temporal()]
        assert small_counts_left(fits, COUNT_COLUMNS, 5) == {}
        # complements cannot reveal a small count: unexposed cases / persons and F + M = all
        for total, part in (("n_cases", "n_exposed_cases"), ("n_persons", "n_exposed")):
            difference = (fits[total] - fits[part]).drop_nulls()
            assert not ((difference >= 1) & (difference < 5)).any(), (site, total, part)
        for count in COUNT_COLUMNS:  # F + M = all: all - F (or all - M) shown may not reveal a small count
            wide = fits.pivot(on="sex", index=["atc_code", "atc_level", "lag_years"], values=count)
            for sex in ("F", "M"):
                difference = (wide["all"] - wide[sex]).drop_nulls()
                assert not ((difference >= 1) & (difference < 5)).any(), (site, count, sex)
        flow = pl.read_csv(package / "cohort_flow.csv", infer_schema=False)
        assert small_counts_left(flow, ["n"], 5) == {}
        text = "".join(p.read_text(encoding="utf-8") for p in package.glob("*.csv"))
        assert "person_id" not in text and "løpenr" not in text


def test_sites_hold_unequal_shares_of_one_population(federation):
    cohorts = {s: pl.read_parquet(w / "results/cohort/cohort.parquet").height for s, w in federation["sites"].items()}
    assert cohorts["norway"] > cohorts["sweden"] > cohorts["denmark"] > 0
    sites = pl.read_csv(federation["pooled"] / "sites.csv")
    assert sites["site"].to_list() == list(SHARES) and sites["protocol_hash"].n_unique() == 1


def test_pooled_meta_matches_a_hand_computation_from_the_packages(federation):
    meta = pl.read_parquet(federation["pooled"] / "meta.parquet")
    site_fits = pl.read_parquet(federation["pooled"] / "site_fits.parquet")
    three = meta.filter(pl.col("k_sites") == 3)
    # Each site's release hides a fit whole where one of its cells is small there (docs/methods.md), so fewer
    # fits reach all three sites than were fitted (12 in this run); the hand computation needs a few only.
    assert three.height >= 5
    row = three.sort("fe_p_value").row(0, named=True)
    key = pl.all_horizontal([pl.col(k) == row[k] for k in FIT_KEYS])
    sites = site_fits.filter(key & (pl.col("status") == "ok"))
    y, v = sites["log_hr"].to_numpy(), sites["se"].to_numpy() ** 2
    w = 1 / v
    fixed = np.sum(w * y) / np.sum(w)
    q = np.sum(w * (y - fixed) ** 2)
    tau2 = max(0.0, (q - 2) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_re = 1 / (v + tau2)
    assert row["fe_log_hr"] == pytest.approx(fixed, abs=1e-12)
    assert row["q"] == pytest.approx(q, abs=1e-10)
    assert row["dl_tau2"] == pytest.approx(tau2, abs=1e-12)
    assert row["dl_log_hr"] == pytest.approx(np.sum(w_re * y) / np.sum(w_re), abs=1e-12)


def test_a_package_made_under_another_protocol_is_refused(federation, tmp_path):
    rogue = tmp_path / "rogue"
    shutil.copytree(federation["sites"]["denmark"] / "results/site_package", rogue / "site_package")
    config = load_config(federation["sites"]["denmark"] / "site.yaml")
    config["screen"]["lags_years"] = [0.0, 5.0]
    config["candidates"]["main_lag_years"] = 5.0  # a consistent design of its own, only not the protocol's
    config["protocol"] = None
    config["site_label"] = "rogue"
    from repurpose.federation.package import write_site_package

    results = federation["sites"]["denmark"] / "results"
    # A package is built only from results made with its protocol: the rogue's screen has lags 0 and 5.
    screen = pl.read_parquet(results / "screen/dwas.parquet")
    screen.with_columns(lag_years=pl.when(pl.col("lag_years") == 2.0).then(5.0).otherwise(pl.col("lag_years"))).write_parquet(rogue / "dwas.parquet")
    write_site_package(config, dwas=rogue / "dwas.parquet", flow=results / "cohort/flow.json",
                       validation=results / "validation/report.json", package=rogue / "site_package")  # fmt: skip
    with pytest.raises(PackageError, match=r"screen\.lags_years.*norway \[0\.0, 2\.0\].*rogue \[0\.0, 5\.0\]"):
        pool_packages([federation["sites"]["norway"] / "results/site_package", rogue / "site_package"], tmp_path / "p")


def test_pooled_ranking_and_report_are_written(federation):
    ranked = federation["ranked"]
    for name in ("dwas", "drugs", "mechanisms", "readme", "report"):
        assert Path(ranked[name]).is_file(), name
    dwas = pl.read_parquet(ranked["dwas"])
    assert set(dwas["estimate_source"].drop_nulls().unique()) <= {"pooled_cox", "fixed_effect_meta"}
    assert small_counts_left(dwas, COUNT_COLUMNS, 5) == {}
    html = Path(ranked["report"]).read_text(encoding="utf-8")
    assert 'id="federation"' in html and "norway" in html
    drugs = pl.read_csv(ranked["drugs"], infer_schema=False)
    if drugs.height:
        assert drugs["hr_confirmation"].is_null().all()  # person-level evidence is not available when pooled
        assert html.count('class="forest"') >= 1


def test_distributed_pooled_cox_equals_the_single_dataset_cox_stratified_by_site(federation):
    if federation["cox"] is None:
        pytest.skip("repurpose.federation.distributed is not available (or wrote no pooled Cox table)")
    from repurpose.dwas.screen import screen_exposures

    cohorts, exposures = [], {3: [], 5: []}
    for site, workdir in federation["sites"].items():
        cohort = pl.read_parquet(workdir / "results/cohort/cohort.parquet")
        # site as an extra stratum: folded into education, which is one of the protocol's strata
        cohorts.append(cohort.with_columns(education=pl.lit(site + "-") + pl.col("education").cast(pl.String).fill_null("missing")))
        for level in exposures:
            exposures[level].append(pl.read_parquet(workdir / f"results/exposure/atc_level_{level}.parquet"))
    combined = pl.concat(cohorts, how="vertical_relaxed")
    config = load_config(federation["sites"]["norway"] / "site.yaml")
    cox = pl.read_parquet(federation["cox"])
    ok = cox.filter(pl.col("status").is_in(["ok", "converged"]) & pl.col("log_hr").is_finite())
    # A site answers only fits its released package shows (issue 15): at 24,000 persons split 50/30/20, 12 of
    # the 106 pooled fits are shown at all three sites; the others are refused by a site and get no estimate.
    assert ok.height >= 10
    assert cox.filter(~pl.col("status").is_in(["ok", "converged"]))["status"].unique().to_list() in ([], ["refused_by_site"])
    compared = 0
    for level in exposures:
        reference = screen_exposures(combined, pl.concat(exposures[level], how="vertical_relaxed"), config, level)
        reference = reference.filter(pl.col("status") == "ok").select(*FIT_KEYS[:1], "lag_years", "sex", pl.col("log_hr").alias("ref"))
        joined = ok.filter(pl.col("atc_level") == level).join(reference, on=["atc_code", "lag_years", "sex"])
        if joined.height:
            assert (joined["log_hr"] - joined["ref"]).abs().max() < 1e-6
            compared += joined.height
    assert compared >= 10


def test_round_and_response_files_hold_nothing_person_level_and_no_count(federation):
    if federation["cox"] is None:
        pytest.skip("repurpose.federation.distributed is not available")
    files = sorted((federation["pooled"] / "rounds").glob("*.parquet"))
    files += [p for w in federation["sites"].values() for p in sorted((w / "outbox").glob("*.parquet"))]
    assert len(files) > 3
    for path in files:
        frame = pl.read_parquet(path)
        assert not [c for c in frame.columns if c.lower() in IDENTIFIER_COLUMNS or c.endswith(("_date", "_age_days"))], path
        assert not [c for c, t in frame.schema.items() if t.is_temporal()], path
        assert not [c for c in frame.columns if c.startswith("n_") and c not in ("n_iter",)], path  # no person counts
        assert frame.height == frame.select(FIT_KEYS).unique().height  # one row per fit, not per person or time


def test_site_config_contradicting_the_protocol_is_refused_by_the_dag(federation, tmp_path):
    site = federation["sites"]["sweden"]
    config = yaml.safe_load((site / "site.yaml").read_text(encoding="utf-8"))
    config["screen"]["lags_years"] = [0, 5]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    command = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--configfile",
               str(tmp_path / "site.yaml"), "--", "results/site_package/manifest.json"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "`screen.lags_years`: site config [0.0, 5.0], protocol [0.0, 2.0]" in completed.stdout + completed.stderr


def test_site_package_command_rebuilds_the_same_fits(federation, tmp_path):
    from repurpose.cli import main

    site = federation["sites"]["denmark"]
    assert main(["site-package", "--config", str(site / "site.yaml"), "--results", str(site / "results"),
                 "--out", str(tmp_path / "package")]) == 0  # fmt: skip
    ours = json.loads((tmp_path / "package/manifest.json").read_text())["files"]
    dag = json.loads((site / "results/site_package/manifest.json").read_text())["files"]
    assert ours["fits.parquet"]["sha256"] == dag["fits.parquet"]["sha256"]
