"""Federated analysis: site packages of aggregates, and their pooling at a coordinating centre.

Several registries run one analysis without person-level data crossing a border (docs/federation.md):

1. every site runs the pipeline on its own extracts with its own config naming the shared protocol
   (`repurpose.protocol`) and writes a *site package* (`write_site_package`, rule `site_package`):
   per fit (ATC class x level x lag x sex stratum) the estimate, SE and disclosure-controlled counts,
   the cohort flow and validation counts (disclosure-controlled), a copy of the protocol and a manifest
   (pipeline version, protocol hash, ATC index version, site label, SHA-256 of every file);
2. the coordinating centre pools the packages (`pool_packages`, `repurpose pool`): it refuses packages
   whose protocols differ (naming the settings), meta-analyses every fit (fixed effect, DerSimonian-Laird,
   REML and Paule-Mandel random effects) and starts the distributed rounds of the exact pooled Cox model
   (`repurpose.federation.distributed`);
3. `rank_pooled` (`repurpose pool-rank`) builds a screen table from the pooled estimates (exact pooled
   Cox where it converged, else the fixed-effect meta-analysis) and runs the mechanism and candidate
   rankings and the report on it, with a per-site forest plot for each top candidate.

Nothing person-level is read at the coordinating centre: only the packages. A package may also carry the
persistence study's and the trial emulation's released tables; the centre pools them
(`repurpose.persistence.pooled`, `repurpose.trial_emulation.pooled`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from repurpose import __version__
from repurpose.config import ConfigError, validate_config
from repurpose.cox.result import wald
from repurpose.dwas.screen import add_q_values
from repurpose.federation.design import site_design
from repurpose.federation.distributed import start_rounds
from repurpose.layout import DEFAULT_ROOT, WORKFLOW_SNAKEFILE, results_layout
from repurpose.meta import pool
from repurpose.persistence.pooled import SITE_TABLES as PERSISTENCE_SITE_TABLES
from repurpose.persistence.pooled import pool_persistence
from repurpose.protocol import (
    DESIGN_BLOCKS,
    NOT_DESIGN_KEYS,
    ProtocolError,
    apply_protocol,
    design_differences,
    normalise_design,
    protocol_hash,
    protocol_yaml,
)
from repurpose.release.disclosure import (
    SCREEN_RULES,
    DisclosurePolicy,
    for_display,
    parse_display,
    person_count_columns,
    release_screen,
    small_counts_left,
    suppress_small_counts,
)
from repurpose.release.export import IDENTIFIER_COLUMNS
from repurpose.release.provenance import sha256_file
from repurpose.release.report import released_summaries
from repurpose.schemas import FIT_KEYS, SCREEN_COLUMNS, SCREEN_COUNT_COLUMNS
from repurpose.stages import stage
from repurpose.trial_emulation.pooled import SITE_TABLES as TRIAL_SITE_TABLES
from repurpose.trial_emulation.pooled import pool_trial_emulation

log = logging.getLogger(__name__)

PACKAGE_FORMAT = "repurpose-site-package/1"
COUNT_COLUMNS = SCREEN_COUNT_COLUMNS
FIT_COLUMNS = [
    *FIT_KEYS, "atc_name", *COUNT_COLUMNS, "person_years_exposed",
    "log_hr", "se", "hr", "ci_lower", "ci_upper", "p_value", "converged", "n_iter", "status", "reason",
]  # fmt: skip
SUMMARY_COLUMNS = ["table", "item", "n"]  # cohort_flow.csv and validation.csv of a package
META_METHODS = ("FE", "DL", "REML", "PM")


class PackageError(ValueError):
    """A site package is incomplete, altered after writing, person-level, or cannot be pooled with the others."""


# --------------------------------------------------------------------------------------------------
# Site side: the package
# --------------------------------------------------------------------------------------------------


def atc_index_version(atc_index: str | Path | None) -> str:
    """The ATC catalogue the classes were named and levelled with: SHA-256 of the WHO index file, or of the
    package's builtin catalogue (prefixed `builtin:`)."""
    if atc_index is None:
        builtin = Path(str(resources.files("repurpose").joinpath("data/atc_catalog.csv")))
        return f"builtin:{sha256_file(builtin)}"
    return f"who-index:{sha256_file(atc_index)}"


def check_aggregate(frame: pl.DataFrame, name: str, count_columns: list[str], min_cell: int) -> None:
    """Refuse a table with a person-identifier column, a date column or a count from 1 to min_cell - 1."""
    identifiers = [c for c in frame.columns if c.lower() in IDENTIFIER_COLUMNS]
    dates = [c for c, dtype in frame.schema.items() if dtype.is_temporal()]
    left = small_counts_left(frame, count_columns, min_cell)
    if identifiers or dates or left:
        raise PackageError(
            f"{name} is not releasable: identifier columns {identifiers}, date columns {dates}, "
            f"small counts {left} (min_cell {min_cell})"
        )


def summary_tables(
    flow_json: str | Path | None, validation_json: str | Path | None, policy: DisclosurePolicy | int
) -> dict[str, pl.DataFrame]:
    """The cohort flow and validation counts of a site as (table, item, n), released as one structure by the
    report's function (`released_summaries`): the package shows the same values as the site's report."""
    flow = json.loads(Path(flow_json).read_text()) if flow_json is not None and Path(flow_json).is_file() else None
    validation = (
        json.loads(Path(validation_json).read_text())
        if validation_json is not None and Path(validation_json).is_file() else None
    )  # fmt: skip
    flow_released, validation_released = released_summaries(flow, validation, policy)
    tables = {}
    if flow_released is not None:
        tables["cohort_flow"] = flow_released
    if validation_released is not None:
        tables["validation"] = validation_released
    return tables


def _file_entry(path: Path, rows: int | None) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rows": rows}


def results_design_mismatches(design: dict[str, Any], fits: pl.DataFrame) -> list[str]:
    """How the screen results differ from the protocol's design in what they show themselves: ATC levels and
    lags (fits outside the protocol, and protocol fits missing from the results)."""
    screen = design.get("screen", {})
    mismatches = []
    for column, key in (("atc_level", "atc_levels"), ("lag_years", "lags_years")):
        if key not in screen:
            continue
        wanted = {float(v) for v in screen[key]}
        found = {float(v) for v in fits[column].unique().drop_nulls().to_list()}
        if found - wanted:
            mismatches.append(f"screen.{key}: the results hold fits at {sorted(found - wanted)} outside the protocol's {sorted(wanted)}")
        if wanted - found:
            mismatches.append(f"screen.{key}: the protocol's {sorted(wanted - found)} are missing from the results")
    return mismatches


def design_hash_without_min_cell(design: dict[str, Any]) -> str:
    """The protocol hash of a design without disclosure.min_cell (a site may suppress more than the protocol)."""
    plain = json.loads(json.dumps(design, default=str))
    plain.get("disclosure", {}).pop("min_cell", None)
    return protocol_hash({k: v for k, v in plain.items() if v != {}})


def _run_record_mismatches(design: dict[str, Any], screen_sha: str, record: dict[str, Any]) -> list[str] | None:
    """Differences between the protocol and the run described by `record` (a report provenance.json or a
    DAG-written package manifest); None when the record is not about this screen file."""
    if "inputs" in record:  # the report's provenance: the full design of its config
        if screen_sha not in {f.get("sha256") for f in record["inputs"]} or "design" not in record:
            return None
        differing = []
        for key, protocol_value, run_value in design_differences(design, record["design"]):
            if key == "disclosure.min_cell" and None not in (protocol_value, run_value) and run_value >= protocol_value:
                continue  # a site may suppress more
            differing.append(f"{key}: protocol {protocol_value!r}, results made with {run_value!r}")
        return differing
    results = record.get("results") or {}
    if results.get("screen_sha256") != screen_sha:
        return None
    if results.get("design_hash") != design_hash_without_min_cell(design):
        return [f"the run that made the results had design {results.get('design_hash')}, the protocol is "
                f"{design_hash_without_min_cell(design)} (compare the configs' screen, study, validation and candidates keys)"]
    return []


def run_design_mismatches(design: dict[str, Any], dwas_path: Path, records: list[Path]) -> list[str]:
    """How the run that made `dwas_path` differs from the protocol, by the first of `records` (written by
    the run's own DAG: the report's provenance.json, the DAG's package manifest) that names this very screen
    file by checksum; refuse when none does (no provenance, or the screen changed since)."""
    screen_sha = sha256_file(dwas_path)
    for path in records:
        if path.is_file():
            found = _run_record_mismatches(design, screen_sha, json.loads(path.read_text(encoding="utf-8")))
            if found is not None:
                return found
    named = ", ".join(str(p) for p in records)
    return [f"no record of the run that made {dwas_path} names it by checksum ({named}): its design cannot be "
            "checked; run the pipeline to the report (or the site package) with the protocol's config first"]


@stage(
    reads=("protocol", "site_label", "run_label", "disclosure", "inputs.atc_index", *DESIGN_BLOCKS),
    drop=tuple(NOT_DESIGN_KEYS),
)
def write_site_package(
    config: dict[str, Any],
    *,
    dwas: str | Path,
    flow: str | Path | None,
    validation: str | Path | None,
    package: str | Path,
    run_provenance: list[str | Path] | None = None,
    **study_tables: str | Path | None,
) -> Path:
    """Write `out_dir` (results/site_package/): fits, summaries, protocol copy and manifest; return the manifest.

    Built only from results made with the stamped protocol: the screen's ATC levels and lags must be the
    protocol's, and with `run_provenance` (records written by the run's DAG: the report's provenance.json, the
    package manifest; `repurpose site-package` always passes them, since its config need not be the one the
    results were made with) the run that made this very screen file must have had the protocol's design.
    Else PackageError names each setting. The manifest records the screen's checksum and the run's design
    hash (`results`), so a later package from the same results can be checked against it.
    The fits pass `release_screen` (rows hidden whole over sex, lags and the ATC tree, counts rounded), the
    summaries the report's release; the written tables are checked again before the manifest is written.
    `study_tables` (`<study>_<table>` = path, for the studies of `SITE_STUDIES`: all of a study's tables or
    none) travel as they were released at the site, for the study's pooling at the centre.
    """
    dwas_path, flow_json, validation_json, out_dir = Path(dwas), flow, validation, Path(package)
    min_cell = int(config["disclosure"]["min_cell"])
    design = site_design(config)
    label = config.get("site_label") or config.get("run_label") or "site"
    policy = DisclosurePolicy.from_config(config, main_lag_years=config["candidates"]["main_lag_years"])
    fits = pl.read_parquet(dwas_path)
    mismatches = results_design_mismatches(design, fits)
    if run_provenance is not None:
        mismatches += run_design_mismatches(design, dwas_path, [Path(p) for p in run_provenance])
    if mismatches:
        raise PackageError(
            f"{dwas_path} was not made with the protocol being stamped ({config.get('protocol') or 'the config'}); "
            "no package written: " + "; ".join(mismatches)
        )
    # The same release as the exported screen (idempotent on the released dwas.parquet the rule passes).
    fits = release_screen(fits, policy)
    fits = fits.select([c for c in FIT_COLUMNS if c in fits.columns]).sort(FIT_KEYS)
    check_aggregate(fits, "fits", COUNT_COLUMNS, min_cell)
    tables = summary_tables(flow_json, validation_json, policy)
    for name, table in tables.items():
        check_aggregate(table, name, ["n"], min_cell)
    study_files = checked_study_tables(study_tables, min_cell)

    if out_dir.exists():
        shutil.rmtree(out_dir)  # rebuilt whole: nothing stale rides along
    out_dir.mkdir(parents=True)
    files: dict[str, dict[str, Any]] = {}
    fits.write_parquet(out_dir / "fits.parquet")
    files["fits.parquet"] = _file_entry(out_dir / "fits.parquet", fits.height)
    for_display(fits, COUNT_COLUMNS, min_cell).write_csv(out_dir / "fits.csv")
    files["fits.csv"] = _file_entry(out_dir / "fits.csv", fits.height)
    for name, table in tables.items():
        for_display(table, ["n"], min_cell).write_csv(out_dir / f"{name}.csv")
        files[f"{name}.csv"] = _file_entry(out_dir / f"{name}.csv", table.height)
    for name, (source, rows) in study_files.items():
        shutil.copyfile(source, out_dir / f"{name}.csv")  # the very bytes the site released
        files[f"{name}.csv"] = _file_entry(out_dir / f"{name}.csv", rows)
    (out_dir / "protocol.yaml").write_text(protocol_yaml(design), encoding="utf-8")
    files["protocol.yaml"] = _file_entry(out_dir / "protocol.yaml", None)
    manifest = {
        "format": PACKAGE_FORMAT,
        "site_label": label,
        "pipeline_version": __version__,
        "protocol_hash": protocol_hash(design),
        "protocol_source": str(config.get("protocol") or "(site config; no shared protocol named)"),
        "atc_index_version": atc_index_version(config["inputs"].get("atc_index")),
        "min_cell": min_cell,
        "disclosure": policy.as_dict(),
        "results": {"screen_sha256": sha256_file(dwas_path), "design_hash": design_hash_without_min_cell(design)},
        "files": files,
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("site package %s: %d fits, protocol %s, in %s", label, fits.height, manifest["protocol_hash"][:12], out_dir)
    return manifest_path


# --------------------------------------------------------------------------------------------------
# Coordinating centre: reading and checking packages
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SitePackage:
    """One site's package as read and verified by the coordinating centre."""

    path: Path
    label: str
    manifest: dict[str, Any]
    design: dict[str, Any]
    fits: pl.DataFrame
    summaries: dict[str, pl.DataFrame]
    studies: dict[str, dict[str, pl.DataFrame]] = field(default_factory=dict)


def read_site_package(path: str | Path) -> SitePackage:
    """Read a package, verifying the checksums of its manifest and that it holds aggregates only."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise PackageError(f"{path} is not a site package (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path}: unknown package format {manifest.get('format')!r} (expected {PACKAGE_FORMAT})")
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file() or sha256_file(file) != entry["sha256"]:
            raise PackageError(f"{path}: {name} is missing or differs from its manifest checksum")
    try:
        design = normalise_design(yaml.safe_load((path / "protocol.yaml").read_text(encoding="utf-8")) or {})
    except ProtocolError as error:
        raise PackageError(f"{path}: its protocol.yaml is not a valid protocol ({error})") from None
    if protocol_hash(design) != manifest["protocol_hash"]:
        raise PackageError(f"{path}: protocol.yaml does not match the protocol hash of the manifest")
    min_cell = int(manifest["min_cell"])
    fits = pl.read_parquet(path / "fits.parquet")
    check_aggregate(fits, f"{path}/fits.parquet", COUNT_COLUMNS, min_cell)
    summaries = {}
    for name in ("cohort_flow", "validation"):
        if f"{name}.csv" in manifest["files"]:
            table = parse_display(pl.read_csv(path / f"{name}.csv", infer_schema=False), ["n"])
            check_aggregate(table, f"{path}/{name}.csv", ["n"], min_cell)
            summaries[name] = table
    studies = {}
    for study in SITE_STUDIES:
        names = [f"{study.name}_{t}.csv" for t in study.tables]
        present = [n for n in names if n in manifest["files"]]
        if present and len(present) != len(names):
            raise PackageError(f"{path}: the {study.name} tables travel together; the package lacks "
                               + ", ".join(sorted(set(names) - set(present))))  # fmt: skip
        if present:
            tables = {t: pl.read_csv(path / f"{study.name}_{t}.csv", infer_schema_length=None) for t in study.tables}
            for t, table in tables.items():
                check_aggregate(table, f"{path}/{study.name}_{t}.csv", person_count_columns(table.columns), min_cell)
            studies[study.name] = tables
    return SitePackage(path, str(manifest["site_label"]), manifest, design, fits, summaries, studies)


@dataclass(frozen=True)
class SiteStudy:
    """A study beside the screen whose released tables a site package may carry, and its pooling."""

    name: str
    tables: tuple[str, ...]
    pool: Callable[[Mapping[str, Mapping[str, pl.DataFrame]], Path], dict[str, str]]


SITE_STUDIES = (
    SiteStudy("persistence", PERSISTENCE_SITE_TABLES, pool_persistence),
    SiteStudy("trial_emulation", TRIAL_SITE_TABLES, pool_trial_emulation),
)
"""The studies whose released tables travel in a site package (`<study>_<table>.csv`) and their pooling."""


def released_study_tables(paths: Any) -> dict[str, str]:
    """The study tables a finished run wrote (`<study>_<table>` -> path under the results layout `paths`), for
    `repurpose site-package` after a run: a study whose tables are all there."""
    located = {"persistence": paths.persistence_table, "trial_emulation": paths.trial_emulation_table}
    out: dict[str, str] = {}
    for study in SITE_STUDIES:
        found = {f"{study.name}_{t}": located[study.name](t) for t in study.tables}
        if all(Path(p).is_file() for p in found.values()):
            out |= found
    return out


def checked_study_tables(paths: Mapping[str, str | Path | None], min_cell: int) -> dict[str, tuple[Path, int]]:
    """The study tables to put in a package (`<study>_<table>` -> (path, rows)): all of a study's tables or none,
    each refused (PackageError) when it holds an identifier, a date or a count from 1 to min_cell - 1."""
    known = {f"{study.name}_{t}": study for study in SITE_STUDIES for t in study.tables}
    unknown = sorted(set(paths) - set(known))
    if unknown:
        raise PackageError(f"not a table of a study a site package carries: {', '.join(unknown)}")
    out: dict[str, tuple[Path, int]] = {}
    for study in SITE_STUDIES:
        given = {f"{study.name}_{t}": paths.get(f"{study.name}_{t}") for t in study.tables}
        if any(given.values()) and not all(given.values()):
            raise PackageError(f"the {study.name} study's tables travel all together or not at all: "
                               + ", ".join(n for n, p in given.items() if not p) + " missing")  # fmt: skip
        for name, path in given.items():
            if path:
                table = pl.read_csv(path, infer_schema_length=None)
                check_aggregate(table, name, person_count_columns(table.columns), min_cell)
                out[name] = (Path(path), table.height)
    return out


def check_compatible(packages: list[SitePackage], *, allow_version_mismatch: bool = False) -> list[str]:
    """Refuse packages that cannot be pooled; return warnings for tolerated differences.

    Refused: duplicate site labels; differing protocols (every differing setting is named, for each
    site against the first); differing ATC index or pipeline versions, unless `allow_version_mismatch`
    (then a warning), because a different catalogue or engine can define or estimate classes differently.
    Differing min_cell is allowed (a site may suppress more).
    """
    if not packages:
        raise PackageError("no site packages given")
    labels = [p.label for p in packages]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise PackageError(f"site labels must be unique; repeated: {duplicates} (config key `site_label`)")
    first = packages[0]
    problems = []
    for other in packages[1:]:
        for key, a, b in design_differences(first.design, other.design):
            problems.append(f"  - `{key}`: {first.label} {a!r}, {other.label} {b!r}")
    if problems:
        raise PackageError("the site packages were made with different protocols; they cannot be pooled:\n" + "\n".join(problems))
    warnings = []
    for setting in ("atc_index_version", "pipeline_version"):
        values = {p.label: p.manifest.get(setting) for p in packages}
        if len(set(values.values())) > 1:
            message = f"{setting} differs between sites: {values}"
            if not allow_version_mismatch:
                raise PackageError(message + " (pass --allow-version-mismatch to pool anyway)")
            warnings.append(message)
            log.warning(message)
    return warnings


# --------------------------------------------------------------------------------------------------
# Coordinating centre: meta-analysis of every fit
# --------------------------------------------------------------------------------------------------


def stack_site_fits(packages: list[SitePackage]) -> pl.DataFrame:
    """The fits of every site in one table with a `site` column (aggregates only)."""
    return pl.concat(
        [p.fits.with_columns(site=pl.lit(p.label)) for p in packages], how="diagonal_relaxed"
    ).select("site", *[c for c in FIT_COLUMNS if c in packages[0].fits.columns])


def _poolable() -> pl.Expr:
    return (pl.col("status") == "ok") & pl.col("log_hr").is_finite() & pl.col("se").is_finite() & (pl.col("se") > 0)


def _sum_if_all_shown(column: str) -> pl.Expr:
    """The pooled count: the sum over the sites holding the row, unknown when one of them suppressed it."""
    return pl.when(pl.col(column).null_count() == 0).then(pl.col(column).sum()).otherwise(None).alias(column)


def meta_row(log_hr: np.ndarray, se: np.ndarray) -> dict[str, float | int]:
    """Every meta-analysis of one fit: per method estimate, SE, HR, 95% CI, p (and tau^2), plus Q, its p, I^2
    and the REML estimate with the Hartung-Knapp CI and p."""
    row: dict[str, float | int] = {"k_sites": int(log_hr.size)}
    for method in META_METHODS:
        result = pool(log_hr, se, method=method)
        prefix = method.lower()
        row.update({
            f"{prefix}_log_hr": result.estimate, f"{prefix}_se": result.se, f"{prefix}_hr": math.exp(result.estimate),
            f"{prefix}_ci_lower": math.exp(result.ci_lower), f"{prefix}_ci_upper": math.exp(result.ci_upper),
            f"{prefix}_p_value": result.p_value,
        })  # fmt: skip
        if method != "FE":
            row[f"{prefix}_tau2"] = result.tau2
        row.update(q=result.q, q_p_value=result.q_p_value, i2=result.i2)
    hk = pool(log_hr, se, method="REML", knapp_hartung=True)
    row.update(reml_hk_ci_lower=math.exp(hk.ci_lower), reml_hk_ci_upper=math.exp(hk.ci_upper), reml_hk_p_value=hk.p_value)
    return row


def meta_analyse(site_fits: pl.DataFrame, min_cell: int) -> pl.DataFrame:
    """One row per fit present at >= 1 site: pooled counts (disclosure-controlled) and every meta-analysis
    over the sites where it was fitted (k_sites; 0 leaves the estimates empty)."""
    counts = site_fits.group_by(FIT_KEYS).agg(
        pl.col("atc_name").drop_nulls().first(),
        pl.len().alias("n_sites_with_row"),
        *[_sum_if_all_shown(c) for c in COUNT_COLUMNS],
        pl.col("site").filter(_poolable()).sort().str.join(", ").alias("sites"),
    )
    counts = suppress_small_counts(counts, COUNT_COLUMNS, min_cell, **SCREEN_RULES)
    poolable = site_fits.filter(_poolable()).sort("site")
    rows = []
    for key, group in poolable.group_by(FIT_KEYS, maintain_order=True):
        rows.append(dict(zip(FIT_KEYS, key, strict=True)) | meta_row(group["log_hr"].to_numpy(), group["se"].to_numpy()))
    empty = {**{k: counts.schema[k] for k in FIT_KEYS}, "k_sites": pl.Int64}
    estimates = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame(schema=empty)
    estimates = estimates.with_columns([pl.col(k).cast(counts.schema[k]) for k in FIT_KEYS])
    meta = counts.join(estimates, on=FIT_KEYS, how="left").with_columns(pl.col("k_sites").fill_null(0))
    return meta.sort(FIT_KEYS)


def pool_packages(
    package_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    allow_version_mismatch: bool = False,
    start_distributed: bool = True,
) -> dict[str, Any]:
    """Check and meta-analyse site packages into `out_dir`; start the distributed Cox rounds if available.

    Writes meta.parquet / meta.csv (every fit), site_fits.parquet (the sites' rows, for forest plots),
    sites.csv (one row per site with its manifest fields), site_summaries.csv (per-site flow and
    validation counts), protocol.yaml (the common design) and, with `repurpose.federation.distributed`,
    rounds/round_001.parquet.
    """
    packages = [read_site_package(p) for p in package_dirs]
    warnings = check_compatible(packages, allow_version_mismatch=allow_version_mismatch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    design = packages[0].design
    min_cell = max(int(p.manifest["min_cell"]) for p in packages)
    site_fits = stack_site_fits(packages)
    meta = meta_analyse(site_fits, min_cell)
    meta.write_parquet(out_dir / "meta.parquet")
    for_display(meta, COUNT_COLUMNS, min_cell).write_csv(out_dir / "meta.csv")
    site_fits.write_parquet(out_dir / "site_fits.parquet")
    (out_dir / "protocol.yaml").write_text(protocol_yaml(design), encoding="utf-8")
    sites = pl.DataFrame([
        {"site": p.label, "path": str(p.path.resolve()), "pipeline_version": p.manifest["pipeline_version"],
         "protocol_hash": p.manifest["protocol_hash"], "atc_index_version": p.manifest["atc_index_version"],
         "min_cell": int(p.manifest["min_cell"]),
         "fits_sha256": p.manifest["files"]["fits.parquet"]["sha256"], "n_fits": p.fits.height,
         "n_fitted": int((p.fits["status"] == "ok").sum())}
        for p in packages
    ])  # fmt: skip
    sites.write_csv(out_dir / "sites.csv")
    summaries = [
        table.with_columns(site=pl.lit(p.label), summary=pl.lit(name)).select("site", "summary", *SUMMARY_COLUMNS)
        for p in packages
        for name, table in p.summaries.items()
    ]
    if summaries:
        for_display(pl.concat(summaries), ["n"], min_cell).write_csv(out_dir / "site_summaries.csv")
    result: dict[str, Any] = {
        "sites": [p.label for p in packages], "fits": meta.height, "pooled_fits": int((meta["k_sites"] > 0).sum()),
        "protocol_hash": protocol_hash(design), "warnings": warnings, "meta": str(out_dir / "meta.parquet"),
        "rounds": None,
    }  # fmt: skip
    for study in SITE_STUDIES:
        carrying = [p for p in packages if study.name in p.studies]
        if len(carrying) >= 2:
            result[study.name] = study.pool({p.label: p.studies[study.name] for p in carrying}, out_dir)
        if 0 < len(carrying) < len(packages):
            warnings.append(f"{study.name} pooled over the sites whose packages carry it: "
                            + ", ".join(p.label for p in carrying))  # fmt: skip
    if start_distributed:
        result["rounds"] = start_distributed_rounds(meta, out_dir / "rounds", protocol_hash(design))
    log.info("pooled %d sites: %d fits, %d with an estimate", len(packages), result["fits"], result["pooled_fits"])
    return result


def start_distributed_rounds(meta: pl.DataFrame, rounds_dir: Path, design_hash: str) -> str | None:
    """Write the first round of the exact pooled Cox model (`repurpose.federation.distributed`)."""
    fits = meta.filter(pl.col("k_sites") > 0).select(FIT_KEYS)
    return str(start_rounds(fits, rounds_dir, protocol_hash=design_hash))


# --------------------------------------------------------------------------------------------------
# Coordinating centre: ranking and report on the pooled results
# --------------------------------------------------------------------------------------------------


def coordinator_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The validated config of the pooled ranking (`raw` names the packages' protocol); design keys may not
    differ from the protocol's. Raises PackageError naming them."""
    try:
        return validate_config(apply_protocol(raw))
    except (ProtocolError, ConfigError) as error:
        raise PackageError(f"coordinating-centre config: {error}") from error


def pooled_screen_table(meta: pl.DataFrame, cox: pl.DataFrame | None, fdr_alpha: float, min_cell: int) -> pl.DataFrame:
    """A table with the screen's columns (dwas.parquet layout) from the pooled results.

    Estimate per fit: the exact pooled Cox model (stratified by site) where it converged, else the
    fixed-effect meta-analysis (`estimate_source` says which); Wald CI and p; BH q-values within each
    level x lag x sex family, as in a single-site screen.
    """
    for column in ("fe_log_hr", "fe_se"):  # absent when no fit converged at any site
        if column not in meta.columns:
            meta = meta.with_columns(pl.lit(None, pl.Float64).alias(column))
    table = meta.select(
        *FIT_KEYS, "atc_name", *COUNT_COLUMNS, "k_sites",
        pl.col("fe_log_hr").alias("log_hr"), pl.col("fe_se").alias("se"),
        pl.when(pl.col("k_sites") > 0).then(pl.lit("fixed_effect_meta")).otherwise(None).alias("estimate_source"),
    )  # fmt: skip
    if cox is not None and cox.height:
        converged = pl.col("converged").fill_null(False) if "converged" in cox.columns else pl.lit(True)
        usable = cox.filter(
            pl.col("log_hr").is_finite() & pl.col("se").is_finite() & (pl.col("se") > 0)
            & (pl.col("status") == "ok") & converged
        ).select(*FIT_KEYS, pl.col("log_hr").alias("cox_log_hr"), pl.col("se").alias("cox_se"))  # fmt: skip
        usable = usable.with_columns([pl.col(k).cast(table.schema[k]) for k in FIT_KEYS])
        table = table.join(usable, on=FIT_KEYS, how="left").with_columns(
            log_hr=pl.coalesce("cox_log_hr", "log_hr"),
            se=pl.when(pl.col("cox_log_hr").is_not_null()).then(pl.col("cox_se")).otherwise(pl.col("se")),
            estimate_source=pl.when(pl.col("cox_log_hr").is_not_null()).then(pl.lit("pooled_cox")).otherwise(pl.col("estimate_source")),
        ).drop("cox_log_hr", "cox_se")  # fmt: skip
    fitted = pl.col("log_hr").is_not_null()
    estimate = wald(table["log_hr"].to_numpy(), table["se"].to_numpy())  # nulls become NaN: put them back
    has_hr, has_ci = pl.col("log_hr").is_not_null(), pl.col("log_hr").is_not_null() & pl.col("se").is_not_null()
    table = table.with_columns(
        hr=pl.when(has_hr).then(pl.lit(pl.Series(estimate.hr))),
        ci_lower=pl.when(has_ci).then(pl.lit(pl.Series(estimate.ci_lower))),
        ci_upper=pl.when(has_ci).then(pl.lit(pl.Series(estimate.ci_upper))),
        p_value=pl.Series(estimate.p_value).fill_nan(None),
        person_years_exposed=pl.lit(None, pl.Float64),
        converged=fitted,
        n_iter=pl.lit(None, pl.Int64),
        status=pl.when(fitted).then(pl.lit("ok")).otherwise(pl.lit("skipped")),
        reason=pl.when(fitted).then(None).otherwise(pl.lit("not fitted at any site")),
    )
    table = add_q_values(table, fdr_alpha)
    table = table.select(*SCREEN_COLUMNS, "estimate_source", "k_sites").sort(["atc_level", "lag_years", "sex", "atc_code"])
    return suppress_small_counts(table, COUNT_COLUMNS, min_cell, **SCREEN_RULES)


@stage(reads=("screen.fdr_alpha", "disclosure"))
def pooled_screen(
    config: dict[str, Any], *, meta: str | Path, cox: str | Path | None, dwas: str | Path, dwas_csv: str | Path
) -> pl.DataFrame:
    """The pooled run's screen table (dwas.parquet and its display CSV) from the pooled meta-analysis and, where
    the distributed rounds finished, the exact pooled Cox estimates (`cox`)."""
    min_cell = int(config["disclosure"]["min_cell"])
    cox_table = pl.read_parquet(cox) if cox is not None else None
    log.info("pooled screen from %s (exact pooled Cox: %s)", meta, cox or "not available, fixed-effect meta")
    screen = pooled_screen_table(pl.read_parquet(meta), cox_table, float(config["screen"]["fdr_alpha"]), min_cell)
    Path(dwas).parent.mkdir(parents=True, exist_ok=True)
    screen.write_parquet(dwas)
    for_display(screen, COUNT_COLUMNS, min_cell).write_csv(dwas_csv)
    return screen


def pooled_run_config(pooled_dir: str | Path, *, cox_path: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of the pooled ranking run: the packages' protocol, the pooled directory, and the centre's own
    non-design keys (`overrides`: inputs.atc_index, inputs.drug_targets, report.*, run_label)."""
    pooled_dir = Path(pooled_dir).resolve()
    raw: dict[str, Any] = {"run_label": "pooled", **(overrides or {})}
    raw["protocol"] = str(pooled_dir / "protocol.yaml")
    raw["pooled"] = {"dir": str(pooled_dir), "cox": str(Path(cox_path).resolve()) if cox_path else None}
    inputs = raw.setdefault("inputs", {})
    for name in ("population", "prescriptions", "ms_registry"):
        inputs.setdefault(name, {"path": "(person-level inputs stay at the sites)"})
    coordinator_config(raw)  # refuse a contradicting config before Snakemake starts
    return raw


def rank_pooled(
    pooled_dir: str | Path,
    *,
    cox_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    cores: int = 1,
) -> dict[str, str]:
    """Screen table, mechanism and drug rankings, report and export of the pooled results, through the
    workflow's own rules (Snakemake in `pooled_dir`, config `pooled`: no person-level input is read).

    Writes under `pooled_dir/results/` the files of a single-site run (the person-level evidence columns of
    the drug ranking stay empty); returns their paths.
    """
    pooled_dir = Path(pooled_dir).resolve()
    config_path = pooled_dir / "pooled_config.yaml"
    config_path.write_text(
        yaml.safe_dump(pooled_run_config(pooled_dir, cox_path=cox_path, overrides=overrides), sort_keys=False),
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "snakemake", "-s", str(WORKFLOW_SNAKEFILE), "-d", str(pooled_dir),
               "--configfile", str(config_path), "--cores", str(cores), "--quiet", "progress"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise PackageError(f"the pooled ranking run failed (logs in {pooled_dir / 'results/logs'}):\n"
                           + (completed.stderr or completed.stdout)[-3000:])  # fmt: skip
    paths = results_layout(pooled_dir / DEFAULT_ROOT)
    outputs = {
        "dwas": paths.dwas(), "dwas_csv": paths.dwas_csv(), "mechanisms": paths.mechanism_ranking(),
        "matches": paths.substance_targets(), "drugs": paths.drug_ranking(), "readme": paths.candidates_readme(),
        "report": paths.report_html(), "export": paths.export_manifest(),
    }  # fmt: skip
    log.info("pooled ranking in %s", paths.root)
    return outputs
