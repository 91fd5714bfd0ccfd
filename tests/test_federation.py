"""Federation, fast: the shared protocol, site packages (aggregates only) and their meta-analysis.

The meta-analysis of the pooled packages is checked against (1) a three-site example computed here by
hand with the formulas written out (fixed effect, DerSimonian-Laird, REML by its fixed-point equation,
Cochran's Q, I^2) and (2) a published worked example: the 13 BCG trials (Colditz et al. 1994) pooled as
13 "sites", against the values of R metafor's documented `rma(yi, vi, data = dat.bcg)` (Viechtbauer 2010).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import polars as pl
import pytest
import yaml
from scipy import stats

from repurpose.config import ConfigError
from repurpose.federation.package import (
    COUNT_COLUMNS,
    PackageError,
    pool_packages,
    pooled_screen_table,
    rank_pooled,
    read_site_package,
    write_site_package,
)
from repurpose.protocol import ProtocolError, design_of_config, protocol_hash, read_protocol
from repurpose.release.disclosure import small_counts_left
from repurpose.schemas import SCREEN_COLUMNS
from repurpose.study_config import load_config

INPUTS = {n: {"path": f"{n}.csv"} for n in ("population", "prescriptions", "ms_registry")}
PROTOCOL = {"screen": {"atc_levels": [5], "lags_years": [0, 2], "sex_strata": ["all", "F", "M"]},
            "candidates": {"main_lag_years": 2}, "disclosure": {"min_cell": 5}}  # fmt: skip
# A three-site example: log HRs and SEs of one fit at three sites.
HAND_Y = np.array([-0.35, -0.10, -0.60])
HAND_SE = np.array([0.12, 0.20, 0.25])
# BCG trials (tpos, tneg, cpos, cneg), as in tests/test_meta.py.
BCG = np.array(
    [[4, 119, 11, 128], [6, 300, 29, 274], [3, 228, 11, 209], [62, 13536, 248, 12619], [33, 5036, 47, 5761],
     [180, 1361, 372, 1079], [8, 2537, 10, 619], [505, 87886, 499, 87892], [29, 7470, 45, 7232],
     [17, 1699, 65, 1600], [186, 50448, 141, 27197], [5, 2493, 3, 2338], [27, 16886, 29, 17825]], dtype=float,
)  # fmt: skip


@pytest.fixture
def protocol_file(tmp_path):
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(PROTOCOL))
    return path


def site_config(tmp_path, protocol_file, label: str, **extra) -> dict:
    path = tmp_path / f"{label}.yaml"
    path.write_text(yaml.safe_dump({"inputs": INPUTS, "protocol": str(protocol_file), "site_label": label, **extra}))
    return load_config(path)


def fake_dwas(rows: list[dict]) -> pl.DataFrame:
    """A screen table (dwas.parquet layout) from a few rows: keys, counts, log_hr, se."""
    out = []
    for r in rows:
        b, se = r.get("log_hr"), r.get("se")
        fitted = b is not None
        z = b / se if fitted else None
        out.append({
            "atc_code": r["atc_code"], "atc_name": r.get("atc_name", "name"), "atc_level": 5, "lag_years": float(r["lag"]),
            "sex": r.get("sex", "all"), "n_persons": r.get("n_persons", 1000), "n_exposed": r.get("n_exposed", 100),
            "n_cases": r.get("n_cases", 50), "n_exposed_cases": r.get("n_exposed_cases", 10),
            "person_years_exposed": 500.0, "hr": math.exp(b) if fitted else None,
            "ci_lower": math.exp(b - 1.96 * se) if fitted else None, "ci_upper": math.exp(b + 1.96 * se) if fitted else None,
            "log_hr": b, "se": se, "p_value": float(2 * stats.norm.sf(abs(z))) if fitted else None, "q_value": None,
            "significant": False, "converged": fitted, "n_iter": 4, "status": "ok" if fitted else "skipped",
            "reason": None if fitted else "too few exposed cases",
        })  # fmt: skip
    return pl.DataFrame(out, infer_schema_length=None).with_columns(
        pl.col("atc_level").cast(pl.Int8), pl.col("q_value").cast(pl.Float64), pl.col("reason").cast(pl.String)
    ).select(SCREEN_COLUMNS)


def make_package(tmp_path, protocol_file, label: str, estimates: dict[str, tuple[float, float]],
                 studies: dict[str, dict[str, str]] | None = None, **config_extra):  # fmt: skip
    """A site package with one fitted row per (code, lag) from `estimates` {code: (log_hr, se)}, both lags, and
    the released tables of the studies beside the screen {study: {table: csv path}} when given."""
    config = site_config(tmp_path, protocol_file, label, **config_extra)
    rows = [{"atc_code": code, "lag": lag, "log_hr": b, "se": se} for code, (b, se) in estimates.items() for lag in (0, 2)]
    dwas = tmp_path / f"{label}_dwas.parquet"
    fake_dwas(rows).write_parquet(dwas)
    flow = {"persons_in_population": 1200, "excluded": {"too_young": 200}, "persons_in_cohort": 1000, "events": 50,
            "events_by_sex": {"F": 35, "M": 15}, "exit_reasons": {"end": 900, "death": 50, "event": 50}}  # fmt: skip
    flow_path = tmp_path / f"{label}_flow.json"
    flow_path.write_text(json.dumps(flow))
    write_site_package(config, dwas=dwas, flow=flow_path, validation=None, package=tmp_path / label,
                       **{f"{study}_{name}": path for study, tables in (studies or {}).items() for name, path in tables.items()})  # fmt: skip
    return tmp_path / label


# ---------------------------------------------------------------- protocol


def test_protocol_hash_ignores_formatting_comments_order_and_number_types(tmp_path, protocol_file):
    other = tmp_path / "other.yaml"
    other.write_text(
        "# the same design, written differently\n"
        "disclosure: {min_cell: 5}\ncandidates:\n  main_lag_years: 2.0\n"
        "screen:\n  sex_strata: [F, M, all]\n  lags_years: [2.0, 0]\n  atc_levels: [5]\n"
    )
    assert protocol_hash(read_protocol(other)) == protocol_hash(read_protocol(protocol_file))
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**PROTOCOL, "study": {"washout_years": 2}}))
    assert protocol_hash(read_protocol(changed)) != protocol_hash(read_protocol(protocol_file))


def test_example_protocol_is_the_demo_design():
    demo = load_config("config/config.yaml")
    assert protocol_hash(read_protocol("config/protocol.yaml")) == protocol_hash(design_of_config(demo))


def test_site_config_gets_the_protocol_design(tmp_path, protocol_file):
    config = site_config(tmp_path, protocol_file, "a")
    assert config["screen"]["lags_years"] == [0.0, 2.0] and config["screen"]["atc_levels"] == [5]
    assert config["candidates"]["main_lag_years"] == 2.0


def test_site_config_contradicting_the_protocol_is_refused_naming_each_key(tmp_path, protocol_file):
    with pytest.raises(ConfigError) as error:
        site_config(tmp_path, protocol_file, "a", screen={"lags_years": [0, 5], "min_exposed_cases": 3},
                    disclosure={"min_cell": 3})  # fmt: skip
    message = str(error.value)
    assert "`screen.lags_years`: site config [0.0, 5.0], protocol [0.0, 2.0]" in message
    assert "`screen.min_exposed_cases`: site config 3.0, protocol 5.0" in message
    assert "`disclosure.min_cell`: site config 3.0, protocol 5.0" in message


def test_a_site_may_suppress_more_but_restating_the_protocol_is_fine(tmp_path, protocol_file):
    config = site_config(tmp_path, protocol_file, "a", disclosure={"min_cell": 10}, screen={"lags_years": [2, 0]})
    assert config["disclosure"]["min_cell"] == 10


def test_how_the_work_is_split_is_a_site_matter(tmp_path, protocol_file):
    config = site_config(tmp_path, protocol_file, "a", screen={"split_by": "level"}, resources={"threads": 8})
    assert protocol_hash(design_of_config(config)) == protocol_hash(read_protocol(protocol_file))


def test_protocol_with_site_keys_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**PROTOCOL, "inputs": INPUTS, "resources": {"threads": 4}}))
    with pytest.raises(ProtocolError, match=r"design keys only.*inputs\.population\.path.*resources\.threads"):
        read_protocol(path)


# ---------------------------------------------------------------- site package


def test_site_package_holds_aggregates_only_with_a_checked_manifest(tmp_path, protocol_file):
    config = site_config(tmp_path, protocol_file, "north")
    rows = [
        {"atc_code": "N02BE01", "lag": 0, "log_hr": -0.2, "se": 0.1, "n_exposed_cases": 11},
        {"atc_code": "N02BE01", "lag": 0, "log_hr": -0.2, "se": 0.1, "sex": "F", "n_exposed_cases": 3},  # small
        {"atc_code": "N02BE01", "lag": 0, "log_hr": -0.2, "se": 0.1, "sex": "M", "n_exposed_cases": 8},
        {"atc_code": "C10AA01", "lag": 0, "log_hr": 0.1, "se": 0.2, "n_cases": 52, "n_exposed_cases": 50},  # 52 - 50
        {"atc_code": "A10BA02", "lag": 2, "n_exposed_cases": 2},  # skipped
    ]
    fake_dwas(rows).write_parquet(tmp_path / "dwas.parquet")
    manifest_path = write_site_package(config, dwas=tmp_path / "dwas.parquet", flow=None, validation=None, package=tmp_path / "pkg")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["site_label"] == "north" and manifest["protocol_hash"] == protocol_hash(read_protocol(protocol_file))
    assert manifest["atc_index_version"].startswith("builtin:") and manifest["pipeline_version"]
    assert not re.search(r"\d{4}-\d{2}-\d{2}", manifest_path.read_text())  # no date of any kind travels
    fits = pl.read_parquet(tmp_path / "pkg/fits.parquet")
    assert "person_id" not in fits.columns and not [c for c, t in fits.schema.items() if t.is_temporal()]
    assert small_counts_left(fits, COUNT_COLUMNS, 5) == {}
    paracetamol = fits.filter(pl.col("atc_code") == "N02BE01")
    assert paracetamol["n_exposed_cases"].null_count() >= 2  # F = 3 hidden, and a second cell so all - M cannot reveal it
    assert fits.filter(pl.col("atc_code") == "C10AA01")["n_exposed_cases"][0] is None  # 52 - 50 would reveal 2
    package = read_site_package(tmp_path / "pkg")
    assert package.label == "north" and package.fits.height == 5


def test_altered_package_is_refused(tmp_path, protocol_file):
    path = make_package(tmp_path, protocol_file, "a", {"N02BE01": (-0.2, 0.1)})
    fits = pl.read_parquet(path / "fits.parquet").with_columns(log_hr=pl.col("log_hr") * 2)
    fits.write_parquet(path / "fits.parquet")
    with pytest.raises(PackageError, match="differs from its manifest checksum"):
        read_site_package(path)


# ---------------------------------------------------------------- pooling


def test_pooled_meta_analysis_matches_a_hand_computation(tmp_path, protocol_file):
    packages = [make_package(tmp_path, protocol_file, label, {"N02BE01": (float(b), float(s))})
                for label, b, s in zip(("a", "b", "c"), HAND_Y, HAND_SE, strict=True)]  # fmt: skip
    summary = pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    assert summary["sites"] == ["a", "b", "c"]
    row = pl.read_parquet(tmp_path / "pooled/meta.parquet").filter(pl.col("lag_years") == 2.0).row(0, named=True)

    y, v = HAND_Y, HAND_SE**2
    w = 1 / v
    fixed = np.sum(w * y) / np.sum(w)  # -0.3319...
    fixed_se = np.sqrt(1 / np.sum(w))
    q = np.sum(w * (y - fixed) ** 2)
    tau2_dl = max(0.0, (q - 2) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_dl = 1 / (v + tau2_dl)
    dl = np.sum(w_dl * y) / np.sum(w_dl)
    tau2_reml = tau2_dl
    for _ in range(500):  # REML fixed point (Viechtbauer 2005, eq. 6)
        w_r = 1 / (v + tau2_reml)
        mu = np.sum(w_r * y) / np.sum(w_r)
        tau2_reml = max(0.0, np.sum(w_r**2 * ((y - mu) ** 2 - v)) / np.sum(w_r**2) + 1 / np.sum(w_r))
    w_r = 1 / (v + tau2_reml)
    reml = np.sum(w_r * y) / np.sum(w_r)

    assert row["k_sites"] == 3 and row["sites"] == "a, b, c"
    assert row["fe_log_hr"] == pytest.approx(fixed, abs=1e-12)
    assert row["fe_se"] == pytest.approx(fixed_se, abs=1e-12)
    assert row["fe_ci_lower"] == pytest.approx(math.exp(fixed - 1.959963984540054 * fixed_se), rel=1e-12)
    assert row["q"] == pytest.approx(q, abs=1e-12)
    assert row["q_p_value"] == pytest.approx(math.exp(-q / 2), abs=1e-12)  # chi-square on 2 df
    assert row["i2"] == pytest.approx(max(0.0, (q - 2) / q), abs=1e-12)
    assert row["dl_tau2"] == pytest.approx(tau2_dl, abs=1e-12)
    assert row["dl_log_hr"] == pytest.approx(dl, abs=1e-12)
    assert row["dl_se"] == pytest.approx(np.sqrt(1 / np.sum(w_dl)), abs=1e-12)
    assert row["reml_tau2"] == pytest.approx(tau2_reml, abs=1e-7)
    assert row["reml_log_hr"] == pytest.approx(reml, abs=1e-7)
    assert row["n_exposed_cases"] == 30 and row["n_cases"] == 150  # sums of the sites' released counts


def test_pooled_meta_analysis_reproduces_the_published_bcg_example(tmp_path, protocol_file):
    tpos, tneg, cpos, cneg = BCG.T
    log_rr = np.log(tpos / (tpos + tneg)) - np.log(cpos / (cpos + cneg))
    se = np.sqrt(1 / tpos - 1 / (tpos + tneg) + 1 / cpos - 1 / (cpos + cneg))
    packages = [make_package(tmp_path, protocol_file, f"trial{k:02d}", {"J07AN01": (float(b), float(s))})
                for k, (b, s) in enumerate(zip(log_rr, se, strict=True))]  # fmt: skip
    pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    row = pl.read_parquet(tmp_path / "pooled/meta.parquet").filter(pl.col("lag_years") == 0.0).row(0, named=True)
    published = {"fe_log_hr": -0.4303, "fe_se": 0.0405, "dl_log_hr": -0.7141, "dl_se": 0.1787, "dl_tau2": 0.3088,
                 "reml_log_hr": -0.7145, "reml_se": 0.1798, "reml_tau2": 0.3132, "pm_tau2": 0.3181, "i2": 0.9212}  # fmt: skip
    for column, value in published.items():
        assert row[column] == pytest.approx(value, abs=1e-4), column
    assert row["q"] == pytest.approx(152.2330, abs=1e-3) and row["k_sites"] == 13


def test_packages_with_different_protocols_are_refused_naming_the_settings(tmp_path, protocol_file):
    first = make_package(tmp_path, protocol_file, "a", {"N02BE01": (-0.2, 0.1)})
    other_protocol = tmp_path / "other_protocol.yaml"
    other_protocol.write_text(yaml.safe_dump({**PROTOCOL, "study": {"washout_years": 2, "min_age": 20}}))
    second = make_package(tmp_path, other_protocol, "b", {"N02BE01": (-0.1, 0.1)})
    with pytest.raises(PackageError) as error:
        pool_packages([first, second], tmp_path / "pooled", start_distributed=False)
    message = str(error.value)
    assert "`study.washout_years`: a 1.0, b 2.0" in message and "`study.min_age`: a 18.0, b 20.0" in message


def test_version_mismatch_is_refused_unless_allowed_and_labels_must_be_unique(tmp_path, protocol_file):
    first = make_package(tmp_path, protocol_file, "a", {"N02BE01": (-0.2, 0.1)})
    second = make_package(tmp_path, protocol_file, "b", {"N02BE01": (-0.1, 0.1)})
    manifest = json.loads((second / "manifest.json").read_text())
    manifest["atc_index_version"] = "who-index:0123"
    (second / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="atc_index_version differs"):
        pool_packages([first, second], tmp_path / "pooled", start_distributed=False)
    summary = pool_packages([first, second], tmp_path / "pooled", allow_version_mismatch=True, start_distributed=False)
    assert summary["warnings"] and "atc_index_version" in summary["warnings"][0]
    with pytest.raises(PackageError, match="site labels must be unique"):
        pool_packages([first, first], tmp_path / "pooled2", start_distributed=False)


def test_pooled_screen_prefers_the_converged_exact_cox_estimate(tmp_path, protocol_file):
    packages = [make_package(tmp_path, protocol_file, label, {"N02BE01": (-0.3, 0.1), "C10AA01": (0.2, 0.2)})
                for label in ("a", "b")]  # fmt: skip
    pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    meta = pl.read_parquet(tmp_path / "pooled/meta.parquet")
    cox = pl.DataFrame({"atc_code": ["N02BE01", "C10AA01"], "atc_level": [5, 5], "lag_years": [0.0, 0.0],
                        "sex": ["all", "all"], "log_hr": [-0.25, 9.9], "se": [0.05, 1.0], "status": ["ok", "failed"]})  # fmt: skip
    table = pooled_screen_table(meta, cox, 0.05, 5)
    lag0 = {r["atc_code"]: r for r in table.filter(pl.col("lag_years") == 0.0).to_dicts()}
    assert lag0["N02BE01"]["estimate_source"] == "pooled_cox" and lag0["N02BE01"]["log_hr"] == -0.25
    assert lag0["C10AA01"]["estimate_source"] == "fixed_effect_meta" and lag0["C10AA01"]["log_hr"] == pytest.approx(0.2)
    assert table["q_value"].is_not_null().all() and table.columns[: len(SCREEN_COLUMNS)] == SCREEN_COLUMNS


def test_pooled_ranking_and_report_run_without_person_level_inputs(tmp_path, protocol_file):
    estimates = {"N02BE01": (-0.5, 0.1), "N02BE51": (-0.4, 0.12), "C10AA01": (0.05, 0.1), "C10AA05": (0.0, 0.1),
                 "A10BA02": (-0.02, 0.1), "R03AC02": (0.1, 0.15)}  # fmt: skip
    packages = [make_package(tmp_path, protocol_file, label, estimates) for label in ("a", "b", "c")]
    pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    outputs = rank_pooled(tmp_path / "pooled")
    drugs = pl.read_csv(outputs["drugs"])
    assert "N02BE01" in drugs["atc_code"].to_list() and drugs["hr_confirmation"].is_null().all()
    html = open(outputs["report"], encoding="utf-8").read()
    assert 'id="federation"' in html and 'class="forest"' in html
    flow = pl.read_csv(tmp_path / "pooled/results/report/tables/cohort_flow.csv", infer_schema=False)
    assert "a: flow" in flow["table"].to_list()
    assert flow.filter((pl.col("table") == "flow") & (pl.col("item") == "in cohort"))["n"][0] == "3000"


def test_pool_command_writes_the_meta_analysis_and_starts_the_cox_rounds(tmp_path, protocol_file, capsys):
    from repurpose.cli import main

    packages = [make_package(tmp_path, protocol_file, label, {"N02BE01": (-0.3, 0.1), "C10AA01": (0.2, 0.2)})
                for label in ("a", "b")]  # fmt: skip
    assert main(["pool", *map(str, packages), "--out", str(tmp_path / "pooled")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == ["a", "b"] and summary["pooled_fits"] == 4
    for name in ("meta.parquet", "meta.csv", "sites.csv", "site_fits.parquet", "site_summaries.csv", "protocol.yaml"):
        assert (tmp_path / "pooled" / name).is_file(), name
    if summary["rounds"] is not None:  # repurpose.federation.distributed installed: the first round names every pooled fit
        first = pl.read_parquet(summary["rounds"])
        assert first.select("atc_code", "lag_years").unique().height == 4
        assert first["protocol_hash"][0] == summary["protocol_hash"]
