"""Drives the distributed Cox exchange in one process through its files (tests only): every site, then the
coordinator, round after round, as the sites and the coordinating centre would with `repurpose site-round`
and `repurpose pool-round`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.federation.distributed import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    coordinator_round,
    latest_round,
    result_path_for,
    site_round,
    start_rounds,
)
from repurpose.layout import results_layout
from repurpose.release.provenance import sha256_file

SiteRun = Callable[[Path], Path]


def write_release(
    results_dir: str | Path, fits: pl.DataFrame, *, protocol_hash: str | None = None, suppressed: pl.DataFrame | None = None
) -> Path:
    """A site package (fits.parquet + manifest.json) in which the site shows the counts of every fit of `fits`
    but those in `suppressed` (key columns): what `site_round` checks a round against. Counts are placeholders
    (10); the exchange tests are about what is answered, the package tests (test_federation.py) about its content."""
    directory = Path(results_layout(results_dir).site_package_dir())
    directory.mkdir(parents=True, exist_ok=True)
    keys = fits.select("atc_code", "atc_level", "lag_years", "sex").unique()
    hidden = pl.lit(False)
    if suppressed is not None:
        hidden = pl.struct(keys.columns).is_in(suppressed.select(keys.columns).to_struct().implode())
    package = keys.with_columns(
        [pl.when(hidden).then(None).otherwise(10).cast(pl.Int64).alias(c)
         for c in ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")],
        status=pl.lit("ok"), log_hr=pl.lit(0.0),
    )  # fmt: skip
    package.write_parquet(directory / "fits.parquet")
    manifest = {"protocol_hash": protocol_hash, "files": {"fits.parquet": {"sha256": sha256_file(directory / "fits.parquet")}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def site_runner(
    config: dict[str, Any], results_dir: str | Path, out_dir: str | Path, site_label: str,
    *, protocol_hash: str | None = None,
) -> SiteRun:
    """A callable round_path -> response_path running `site_round` for one site (for `run_rounds`)."""

    def run(path: Path) -> Path:
        return site_round(config, results_dir, path, out_dir, site_label, protocol_hash=protocol_hash)

    return run


def run_rounds(
    site_runs: list[SiteRun],
    rounds_dir: str | Path,
    fits: pl.DataFrame | None = None,
    *,
    protocol_hash: str | None = None,
    covariate_levels: dict[str, list[str]] | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    early_separation: bool = True,
    result_path: str | Path | None = None,
) -> Path:
    """Drive the whole exchange through the files: start (if `fits` given), site rounds, coordinator rounds.

    Returns the path of the pooled result file. Each round is one call of every site and one coordinator
    update; the loop ends after at most max_iter + 1 rounds because every fit stops by then.
    """
    path: Path | None
    if fits is not None:
        path = start_rounds(fits, rounds_dir, protocol_hash=protocol_hash, covariate_levels=covariate_levels,
                            max_iter=max_iter, tol=tol, early_separation=early_separation)
    else:
        path = latest_round(rounds_dir)
    while path is not None:
        responses = [run(path) for run in site_runs]
        path = coordinator_round(rounds_dir, responses, result_path=result_path)
    return Path(result_path) if result_path is not None else result_path_for(rounds_dir)
