"""Drives the distributed Cox exchange in one process through its files (tests only): every site, then the
coordinator, round after round, as the sites and the coordinating centre would with `repurpose site-round`
and `repurpose pool-round`."""

from __future__ import annotations

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

SiteRun = Callable[[Path], Path]


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
