"""What a site agrees to answer in a distributed-fit round: the site's side of the exchange's disclosure gate.

`repurpose.federation.distributed.site_round` evaluates a fit only when (`refusals`) the site's protocol has
it (ATC level, lag, sex stratum), the site's released package shows its counts and estimate
(`released_fits`; a class the site does not have is answered with zeros, as its absence from the package
already tells), its coefficients are within `federation.max_abs_log_hr` and the site's ledger
(`read_ledger`, results/site_rounds/ledger.json) counts fewer than `federation.max_rounds` evaluations of
it. docs/federation.md (threat model) says why. Imports `repurpose.release.provenance` and
`repurpose.schemas` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from repurpose.release.provenance import sha256_file
from repurpose.schemas import FIT_KEYS, SCREEN_COUNT_COLUMNS

KEY_COLUMNS = tuple(FIT_KEYS)
DEFAULT_MAX_ABS_LOG_HR = math.log(20.0)  # config federation.max_abs_log_hr
DEFAULT_MAX_ROUNDS = 60  # config federation.max_rounds


class NotReleasedError(ValueError):
    """The site has no released site package (or an altered one) to check the round against."""


class PackageProtocolError(ValueError):
    """The site's package was released for another protocol than the one the site runs."""


def released_fits(package_dir: str | Path, own_hash: str | None) -> pl.DataFrame:
    """The fits of the site's released package (key columns) with `released`: True where the package shows
    every count of the fit (and its estimate, when the screen fitted it). Refuses a missing or altered
    package, or one made for another protocol than the site's."""
    package_dir = Path(package_dir)
    manifest_path, fits_path = package_dir / "manifest.json", package_dir / "fits.parquet"
    if not manifest_path.is_file() or not fits_path.is_file():
        raise NotReleasedError(
            f"{package_dir} holds no site package (manifest.json, fits.parquet): a site answers only fits it has "
            "released; write its package first (`repurpose site-package` or the site_package rule)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("files", {}).get("fits.parquet", {}).get("sha256") != sha256_file(fits_path):
        raise NotReleasedError(f"{fits_path} differs from its manifest checksum: not the package the site released")
    package_hash = manifest.get("protocol_hash")
    if own_hash is not None and package_hash is not None and package_hash != own_hash:
        raise PackageProtocolError(f"{package_dir} was released for protocol {package_hash}, the site runs {own_hash}")
    fits = pl.read_parquet(fits_path)
    shown = [pl.col(c).is_not_null() for c in SCREEN_COUNT_COLUMNS if c in fits.columns]
    withheld = (pl.col("status") == "ok") & pl.col("log_hr").is_null() if {"status", "log_hr"} <= set(fits.columns) else pl.lit(False)
    return fits.select(
        pl.col("atc_code").cast(pl.String), pl.col("atc_level").cast(pl.Int64), pl.col("lag_years").cast(pl.Float64),
        pl.col("sex").cast(pl.String), released=pl.all_horizontal(shown or [pl.lit(True)]) & ~withheld.fill_null(False),
    )


def fit_label(atc_code: str, atc_level: int, lag_years: float, sex: str) -> str:
    """One fit as a ledger key: code|level|lag|sex."""
    return f"{atc_code}|{int(atc_level)}|{float(lag_years):g}|{sex}"


def read_ledger(path: str | Path) -> dict[str, Any]:
    """The site's ledger: evaluations answered per fit, and one entry per answered round file."""
    path = Path(path)
    if not path.is_file():
        return {"evaluations": {}, "rounds": []}
    return json.loads(path.read_text(encoding="utf-8"))


def write_ledger(path: Path, ledger: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(ledger, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def site_limits(config: dict[str, Any]) -> tuple[float, int]:
    """(max |coefficient|, max evaluations per fit) from config `federation` (defaults when absent)."""
    settings = config.get("federation") or {}
    return (float(settings.get("max_abs_log_hr", DEFAULT_MAX_ABS_LOG_HR)),
            int(settings.get("max_rounds", DEFAULT_MAX_ROUNDS)))  # fmt: skip


def refusals(
    config: dict[str, Any],
    todo: pl.DataFrame,
    released: pl.DataFrame,
    site_codes: dict[int, set[str]],
    ledger: dict[str, Any],
) -> list[str | None]:
    """Per fit of the round, why the site refuses to evaluate it (None: answered). In this order: not in
    the site's protocol (level, lag, sex); not released in its package (suppressed counts or estimate, or
    absent from a package although the class exists at the site; a class the site does not have is answered,
    with zeros, as its absence from the package already tells); a coefficient beyond federation.max_abs_log_hr;
    the fit already evaluated federation.max_rounds times."""
    screen = config["screen"]
    levels = {int(v) for v in screen["atc_levels"]}
    lags = {float(v) for v in screen["lags_years"]}
    sexes = {str(v) for v in screen.get("sex_strata", ["all", "F", "M"])}
    max_abs, max_rounds = site_limits(config)
    shown = {fit_label(*k[:4]): bool(k[4]) for k in released.iter_rows()}
    reasons: list[str | None] = []
    for code, level, lag, sex, beta in todo.select(*KEY_COLUMNS, "beta").iter_rows():
        key = fit_label(code, level, lag, sex)
        if int(level) not in levels or float(lag) not in lags or sex not in sexes:
            reasons.append("not in the site's protocol")
        elif key in shown and not shown[key]:
            reasons.append("suppressed in the site package")
        elif key not in shown and code in site_codes.get(int(level), set()):
            reasons.append("not in the site package")
        elif not all(math.isfinite(b) and abs(b) <= max_abs for b in beta):
            reasons.append(f"coefficient beyond +-{max_abs:.4g}")
        elif int(ledger["evaluations"].get(key, 0)) >= max_rounds:
            reasons.append(f"already evaluated {max_rounds} times")
        else:
            reasons.append(None)
    return reasons
