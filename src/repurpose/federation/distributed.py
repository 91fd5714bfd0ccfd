"""Exact pooled Cox across registries by distributed Newton-Raphson, exchanging only aggregate files.

The pooled model is the screen's Cox model (age scale, delayed entry, Efron ties, time-varying ever-use,
stratified by the adjustment strata) additionally stratified by site. Because every risk set lies within
one site, the pooled Efron log partial likelihood, score and information are the *sums* of the site
ones. So the coordinating centre can run Newton-Raphson on the sums without seeing any person:

1. `start_rounds` writes `round_001.parquet`: one row per fit with the point to evaluate (0).
2. Each site runs `site_round` on the round file and returns, per fit, its log-likelihood, score vector
   and information matrix at that point (sums over its persons and event times; no counts).
3. `coordinator_round` sums the responses, does one Newton-Raphson update with step halving per fit
   (the same rules as `repurpose.cox.engine.fit_efron`), and writes the next round file, or, when every fit
   is done, the pooled estimates (`cox.parquet` next to the rounds directory).

All fits travel in one file per round; fits already done are carried along but not re-evaluated.
See docs/federation_newton.md. Owns the round and response files and both sides of a round; may import
`repurpose.cox`, `repurpose.dwas.risk_sets` (the screen's own risk sets), `repurpose.federation.design`,
`repurpose.protocol` and `repurpose.schemas` (never `repurpose.federation.package`, which imports it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.cox.engine import (
    MAX_STEP_HALVINGS,
    SEPARATION_MIN_ABS_COEF,
    SEPARATION_MIN_STEP,
    SINGULAR_RELATIVE_TOL,
    NewtonArrays,
    accept_or_halve,
    efron_log_likelihood,
    newton_step,
)
from repurpose.cox.result import scaled_eigh, variance_and_se, wald
from repurpose.cox.risk_set_table import RiskSetTable
from repurpose.dwas.risk_sets import (
    CellLayout,
    build_risk_sets,
    cell_layout,
    exposed_rows,
    index_screen_inputs,
    total_counts,
)
from repurpose.federation.design import site_design
from repurpose.federation.secure_sum import SecureAggregationError, mask_response, response_totals
from repurpose.federation.site_gate import (
    PackageProtocolError,
    fit_label,
    read_ledger,
    refusals,
    released_fits,
    write_ledger,
)
from repurpose.layout import results_layout
from repurpose.protocol import protocol_hash as design_hash
from repurpose.release.provenance import sha256_file
from repurpose.schemas import FIT_KEYS, SCREEN_EXPOSURE_COLUMNS

log = logging.getLogger(__name__)

KEY_COLUMNS = tuple(FIT_KEYS)
EXPOSURE_COLUMN = "exposed"  # name of the first design column: the time-varying ever-use of the class
DEFAULT_MAX_ITER = 50  # as fit_efron: Newton updates per fit after the start point
DEFAULT_TOL = 1e-9  # as fit_efron: converged when the predicted gain score' I^-1 score / 2 <= tol
RESULT_FILE = "cox.parquet"  # written next to the rounds directory: rounds_dir/../cox.parquet
ROUND_PATTERN = re.compile(r"^round_(\d{3,})\.parquet$")

# What a site needs from the round file; everything else in it is the coordinator's state.
SITE_COLUMNS = (
    "fit_id", *KEY_COLUMNS, "round", "protocol_hash", "covariate_levels", "design_names", "evaluate", "beta"
)
RESPONSE_COLUMNS = (
    "fit_id", *KEY_COLUMNS, "round", "site_label", "protocol_hash", "design_names",
    "has_events", "refused", "loglik", "score", "information", "masked", "peers",
)
REFUSED_STATUS = "refused_by_site"
RESULT_COLUMNS = (
    *KEY_COLUMNS, "log_hr", "se", "hr", "ci_lower", "ci_upper", "p_value", "n_rounds", "n_iter", "converged",
    "status", "loglik", "loglik_null", "design_names", "coefficients", "standard_errors", "protocol_hash",
)
# Columns that must never appear in a round or response file (they would be person-level or small counts).
FORBIDDEN_COLUMNS = (
    "person_id", "birth_date", "birth_year", "entry_date", "exit_date", "entry_age_days", "exit_age_days",
    "exposure_start_age_days", "exposure_start_date", "n_persons", "n_exposed", "n_cases", "n_exposed_cases",
    "n_at_risk", "n_events",
)


class DistributedCoxError(ValueError):
    """A round or response file is inconsistent (wrong round, unknown fit, mismatched design)."""


class ProtocolMismatchError(DistributedCoxError):
    """The round file was made for another protocol than the one this site runs."""


# --------------------------------------------------------------------------------------------------
# Round files (coordinator)
# --------------------------------------------------------------------------------------------------


def round_path(rounds_dir: str | Path, number: int) -> Path:
    """Path of round `number` (1-based): rounds_dir/round_001.parquet."""
    return Path(rounds_dir) / f"round_{number:03d}.parquet"


def latest_round(rounds_dir: str | Path) -> Path:
    """The round file with the highest number in `rounds_dir`."""
    found = sorted(
        (int(m.group(1)), p) for p in Path(rounds_dir).glob("round_*.parquet") if (m := ROUND_PATTERN.match(p.name))
    )
    if not found:
        raise DistributedCoxError(f"no round_NNN.parquet in {rounds_dir}; start with start_rounds (or `pool-round`)")
    return found[-1][1]


def result_path_for(rounds_dir: str | Path) -> Path:
    """Where the pooled estimates are written: next to the rounds directory."""
    return Path(rounds_dir).resolve().parent / RESULT_FILE


def design_names_for(sex: str, covariate_levels: dict[str, list[str]]) -> list[str]:
    """Design columns of one fit: the exposure, then one dummy per non-reference covariate level.

    `sex` is dropped as a covariate within a single-sex fit, as in `screen.cell_layout`.
    """
    names = [EXPOSURE_COLUMN]
    for variable, levels in covariate_levels.items():
        if sex != "all" and variable == "sex":
            continue
        names.extend(f"{variable}={level}" for level in levels[1:])  # the first level is the reference
    return names


def start_rounds(
    fits: pl.DataFrame,
    rounds_dir: str | Path,
    *,
    protocol_hash: str | None = None,
    covariate_levels: dict[str, list[str]] | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    early_separation: bool = True,
) -> Path:
    """Write round_001.parquet: every distinct fit (atc_code, atc_level, lag_years, sex) at coefficients 0.

    `covariate_levels` ({variable: [reference, level, ...]}) is needed only with `screen.adjust.covariates`:
    the coordinator fixes the global coding so that the sites' dummies line up by name. `early_separation`
    stops a fit as `separation` as soon as a coefficient beyond |8| is still moving outwards by >= 0.1
    (fit_efron's numeric criterion, applied at every round instead of at the end), which saves the ~20
    rounds a monotone likelihood needs to flatten out. Returns the path.
    """
    missing = [c for c in KEY_COLUMNS if c not in fits.columns]
    if missing:
        raise DistributedCoxError(f"fits need the key columns {list(KEY_COLUMNS)}; missing {missing}")
    if max_iter < 1 or not tol > 0:
        raise DistributedCoxError(f"max_iter must be >= 1 and tol > 0; got {max_iter}, {tol}")
    levels = {str(k): [str(v) for v in vs] for k, vs in (covariate_levels or {}).items()}
    keys = (
        fits.select(
            pl.col("atc_code").cast(pl.String),
            pl.col("atc_level").cast(pl.Int64),
            pl.col("lag_years").cast(pl.Float64),
            pl.col("sex").cast(pl.String),
        )
        .unique()
        .sort(list(KEY_COLUMNS))
    )
    if keys.height == 0:
        raise DistributedCoxError("no fits to pool")
    names = [design_names_for(sex, levels) for sex in keys["sex"]]
    p = [len(n) for n in names]
    state = keys.with_row_index("fit_id").with_columns(
        pl.col("fit_id").cast(pl.Int64),
        round=pl.lit(1, pl.Int64),
        protocol_hash=pl.lit(protocol_hash, pl.String),
        covariate_levels=pl.lit(json.dumps(levels, sort_keys=True)),
        design_names=pl.Series(names, dtype=pl.List(pl.String)),
        evaluate=pl.lit(True),
        beta=pl.Series([[0.0] * k for k in p], dtype=pl.List(pl.Float64)),
        phase=pl.lit("start"),
        accepted_beta=pl.Series([[0.0] * k for k in p], dtype=pl.List(pl.Float64)),
        accepted_loglik=pl.lit(0.0),
        accepted_score=pl.Series([[0.0] * k for k in p], dtype=pl.List(pl.Float64)),
        accepted_information=pl.Series([[0.0] * k * k for k in p], dtype=pl.List(pl.Float64)),
        loglik_null=pl.lit(0.0),
        step=pl.Series([[0.0] * k for k in p], dtype=pl.List(pl.Float64)),
        last_step=pl.Series([[0.0] * k for k in p], dtype=pl.List(pl.Float64)),
        decrement=pl.lit(0.0),
        halvings=pl.lit(0, pl.Int64),
        n_iter=pl.lit(0, pl.Int64),
        converged=pl.lit(False),
        status=pl.lit("", pl.String),
        max_iter=pl.lit(int(max_iter), pl.Int64),
        tol=pl.lit(float(tol)),
        early_separation=pl.lit(bool(early_separation)),
        sites=pl.lit("[]"),  # JSON list of the site labels, fixed by the responses to round 1
    )
    rounds_dir = Path(rounds_dir)
    rounds_dir.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in rounds_dir.glob("round_*.parquet")]
    if stale:
        raise DistributedCoxError(f"{rounds_dir} already holds round files {sorted(stale)[:3]}...; use a new directory")
    path = round_path(rounds_dir, 1)
    state.write_parquet(path)
    log.info("round 1: %d fits written to %s", state.height, path)
    return path


# --------------------------------------------------------------------------------------------------
# Site round
# --------------------------------------------------------------------------------------------------


def site_protocol_hash(config: dict[str, Any]) -> str:
    """The hash of the protocol this site runs (as in its site package).

    With a `protocol` file named in the config it is that file's hash (the config is checked against it);
    without, the hash of the config's own design.
    """
    return design_hash(site_design(config))


def _global_layout(
    layout: CellLayout, cohort: pl.DataFrame, covariates: list[str], names: list[str], levels: dict[str, list[str]]
) -> CellLayout:
    """The layout with its covariate dummies recoded to the round's global levels.

    `cell_layout` codes each variable against the site's own first level, which need not be the global
    reference; the level of each cell is read from one of its persons and the dummies rebuilt by name.
    """
    if not covariates:
        return layout
    expected = [f"{v}={lv}" for v in covariates for lv in levels.get(v, [])[1:]]
    if names[1:] != expected:
        raise DistributedCoxError(f"design columns of the round {names} do not match the site covariates {covariates}")
    cells, first_person = np.unique(layout.cell_of_person, return_index=True)
    first_person = first_person[cells >= 0]
    columns = []
    for variable in covariates:
        level_of_cell = np.asarray(cohort[variable].cast(pl.String).to_numpy()[first_person], dtype=object)
        unknown = sorted(set(level_of_cell.tolist()) - set(levels[variable]))
        if unknown:
            raise DistributedCoxError(
                f"covariate {variable!r} has levels {unknown} at this site that the round file does not code; "
                "the coordinator must list every level of every site in covariate_levels"
            )
        columns.extend((level_of_cell == level).astype(np.float64) for level in levels[variable][1:])
    design = np.column_stack(columns) if columns else np.zeros((layout.n_cells, 0))
    return dataclasses.replace(layout, covariate_design=design, covariate_names=names[1:])


def _varying_columns(table: RiskSetTable) -> np.ndarray:
    """(n_fits, p) bool: the column varies among those at risk in at least one risk set with events.

    Where it does not, the site's score entry and information row/column are exactly 0 in theory (the
    column is constant within each of its risk sets); they are set to 0 so that rounding noise cannot
    make a non-identifiable coefficient look identifiable once summed over sites.
    """
    varies = np.zeros((table.n_fits, table.n_covariates), dtype=bool)
    if table.n_rows == 0:
        return varies
    starts = np.flatnonzero(np.diff(table.risk_set_index, prepend=-1))
    design = table.row_design()
    x_max = np.maximum.reduceat(design, starts, axis=0)
    x_min = np.minimum.reduceat(design, starts, axis=0)
    has_events = np.add.reduceat(table.n_events, starts) > 0
    per_set = (x_min < x_max) & has_events[:, None]
    set_fit = table.fit_index[starts]
    for j in range(table.n_covariates):
        varies[:, j] = np.bincount(set_fit, weights=per_set[:, j], minlength=table.n_fits) > 0
    return varies


def evaluate_site_fits(
    config: dict[str, Any],
    cohort: pl.DataFrame,
    exposures_by_level: dict[int, pl.DataFrame],
    fits: pl.DataFrame,
) -> pl.DataFrame:
    """Log-likelihood, score and information of each fit at its `beta`, on this site's data.

    `fits` has fit_id, the key columns, design_names, covariate_levels (JSON) and beta. Uses the screen's
    own risk-set construction, so each site evaluates exactly the screen's model on its persons. Fits
    whose class has no exposed person at the site contribute zeros (has_events False).
    """
    screen = config["screen"]
    strata = list(screen["adjust"]["strata"])
    covariates_all = list(screen["adjust"]["covariates"])
    n = fits.height
    levels: dict[str, list[str]] = json.loads(fits["covariate_levels"][0]) if n else {}
    if sorted(covariates_all) != sorted(levels):
        raise DistributedCoxError(
            f"the site adjusts for covariates {covariates_all} but the round file codes {sorted(levels)}; "
            "sites and coordinator must run the same protocol"
        )
    design_names = fits["design_names"].to_list()
    betas = fits["beta"].to_list()
    loglik = np.zeros(n)
    scores: list[list[float]] = [[0.0] * len(b) for b in betas]
    informations: list[list[float]] = [[0.0] * len(b) ** 2 for b in betas]
    has_events = np.zeros(n, dtype=bool)
    fits = fits.with_row_index("position")
    for (level,), level_fits in fits.group_by(["atc_level"], maintain_order=True):
        exposures = exposures_by_level.get(int(level))
        if exposures is None:
            raise DistributedCoxError(f"the site has no exposure table for ATC level {level}")
        indexed_cohort, indexed_exposures, classes, time_span = index_screen_inputs(cohort, exposures, screen)
        class_of_code = {code: i for i, code in enumerate(classes)}
        for (sex,), sex_fits in level_fits.group_by(["sex"], maintain_order=True):
            covariates = [v for v in covariates_all if sex == "all" or v != "sex"]
            layout = cell_layout(indexed_cohort, sex, strata, covariates)
            if layout.n_cells == 0:
                continue  # nobody of this sex group at the site
            layout = _global_layout(
                layout, indexed_cohort, covariates, sex_fits["design_names"][0].to_list(), levels
            )
            totals = total_counts(indexed_cohort, layout, time_span)
            for (lag,), lag_fits in sex_fits.group_by(["lag_years"], maintain_order=True):
                codes = lag_fits["atc_code"].to_list()
                positions = lag_fits["position"].to_numpy()
                local = [(i, class_of_code[c]) for i, c in enumerate(codes) if c in class_of_code]
                if not local:
                    continue
                class_index, cell, start, exit_, event = exposed_rows(indexed_cohort, indexed_exposures, layout, lag)
                fit_of_class = np.full(len(classes), -1)
                for k, (_, class_i) in enumerate(local):
                    fit_of_class[class_i] = k
                if not np.any(fit_of_class[class_index] >= 0):
                    continue  # none of these classes has exposed follow-up at this lag
                table = build_risk_sets(
                    layout, totals, class_index, cell, start, exit_, event, fit_of_class, len(local), time_span
                )
                beta = np.array([betas[positions[i]] for i, _ in local], dtype=np.float64)
                if beta.shape[1] != table.n_covariates:
                    raise DistributedCoxError(
                        f"round coefficients have {beta.shape[1]} columns, the site design {table.n_covariates}"
                    )
                derivs = efron_log_likelihood(table, beta)
                varies = _varying_columns(table)
                events = np.bincount(table.fit_index, weights=table.n_events, minlength=table.n_fits) > 0
                for k, (i, _) in enumerate(local):
                    row = positions[i]
                    keep = varies[k]
                    score = np.where(keep, derivs.score[k], 0.0)
                    information = derivs.information[k] * np.outer(keep, keep)
                    loglik[row] = derivs.loglik[k]
                    scores[row] = score.tolist()
                    informations[row] = information.reshape(-1).tolist()
                    has_events[row] = events[k]
    return pl.DataFrame(
        {
            "fit_id": fits["fit_id"],
            **{c: fits[c] for c in KEY_COLUMNS},
            "design_names": pl.Series(design_names, dtype=pl.List(pl.String)),
            "has_events": has_events,
            "loglik": loglik,
            "score": pl.Series(scores, dtype=pl.List(pl.Float64)),
            "information": pl.Series(informations, dtype=pl.List(pl.Float64)),
        }
    )


def read_site_inputs(config: dict[str, Any], results_dir: str | Path, levels: Iterable[int]) -> tuple[
    pl.DataFrame, dict[int, pl.DataFrame]
]:
    """The site's cohort and exposure tables of the requested ATC levels from its results directory."""
    paths = results_layout(results_dir)
    configured = set(config["screen"]["atc_levels"])
    wanted = sorted(set(int(level) for level in levels))
    not_screened = [level for level in wanted if level not in configured]
    if not_screened:
        raise DistributedCoxError(f"the round asks for ATC levels {not_screened} outside screen.atc_levels")
    cohort = pl.read_parquet(paths.cohort())
    exposures = {level: pl.read_parquet(paths.exposure(level), columns=SCREEN_EXPOSURE_COLUMNS) for level in wanted}
    return cohort, exposures


def _zero_answers(fits: pl.DataFrame) -> pl.DataFrame:
    """Zero log-likelihood, score and information for `fits` (the layout of `evaluate_site_fits`)."""
    sizes = [len(b) for b in fits["beta"].to_list()]
    return pl.DataFrame({
        "fit_id": fits["fit_id"], **{c: fits[c] for c in KEY_COLUMNS},
        "design_names": fits["design_names"].cast(pl.List(pl.String)),
        "has_events": pl.Series([False] * fits.height, dtype=pl.Boolean),
        "loglik": pl.Series([0.0] * fits.height, dtype=pl.Float64),
        "score": pl.Series([[0.0] * k for k in sizes], dtype=pl.List(pl.Float64)),
        "information": pl.Series([[0.0] * k * k for k in sizes], dtype=pl.List(pl.Float64)),
    })  # fmt: skip


def site_round(
    config: dict[str, Any],
    results_dir: str | Path,
    round_path: str | Path,
    out_dir: str | Path,
    site_label: str,
    *,
    protocol_hash: str | None = None,
    package: str | Path | None = None,
) -> Path:
    """Evaluate the fits of the round file that the site would publish; write out_dir/response_<NNN>_<site>.parquet.

    The response holds per fit only the log partial likelihood, score vector and information matrix
    (sums over the site's persons), a has_events flag, a `refused` flag and labels: nothing person-level,
    no counts. A round whose protocol hash differs from the site's (`protocol_hash`, else
    `site_protocol_hash`) is refused with ProtocolMismatchError. Each fit is answered only when the site's
    protocol has it, its released site package (`package`, default results/site_package) shows its counts,
    its coefficients lie within federation.max_abs_log_hr and the site's ledger
    (results/site_rounds/ledger.json) has counted fewer than federation.max_rounds evaluations of it;
    otherwise it is answered as refused (zeros, refused = true) and the coordinator stops that fit.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", site_label):
        raise DistributedCoxError(f"site_label must be letters, digits, '_', '.' or '-'; got {site_label!r}")
    round_frame = pl.read_parquet(round_path, columns=list(SITE_COLUMNS))
    number = int(round_frame["round"][0])
    round_hash = round_frame["protocol_hash"][0]
    own_hash = protocol_hash
    if own_hash is None and round_hash is not None:
        own_hash = site_protocol_hash(config)
    if round_hash is not None and own_hash is not None and round_hash != own_hash:
        raise ProtocolMismatchError(
            f"round {number} was made for protocol {round_hash} but this site runs protocol {own_hash}; "
            "refusing to evaluate it (check that both use the same protocol file)"
        )
    if round_hash is None or own_hash is None:
        log.info("round %d: protocol hash not checked (round %s, site %s)", number, round_hash, own_hash)
    paths = results_layout(results_dir)
    try:
        released = released_fits(package if package is not None else paths.site_package_dir(), own_hash)
    except PackageProtocolError as error:
        raise ProtocolMismatchError(str(error)) from error
    ledger_path = Path(paths.site_round_ledger())
    ledger = read_ledger(ledger_path)
    todo = round_frame.filter(pl.col("evaluate"))
    configured = {int(v) for v in config["screen"]["atc_levels"]}
    levels = sorted({int(v) for v in todo["atc_level"].unique().to_list()} & configured)
    cohort, exposures = read_site_inputs(config, results_dir, levels)
    site_codes = {level: set(frame["atc_code"].unique().to_list()) for level, frame in exposures.items()}
    reasons = refusals(config, todo, released, site_codes, ledger)
    answered = pl.Series([r is None for r in reasons])
    asked = todo.filter(answered)
    evaluated = evaluate_site_fits(config, cohort, exposures, asked) if asked.height else _zero_answers(asked)
    refused = todo.filter(~answered)
    zeros = _zero_answers(refused)
    response = (
        pl.concat([evaluated.with_columns(refused=pl.lit(False)), zeros.with_columns(refused=pl.lit(True))], how="vertical_relaxed")
        .sort("fit_id")
        .with_columns(round=pl.lit(number, pl.Int64), site_label=pl.lit(site_label), protocol_hash=pl.lit(round_hash, pl.String))
    )
    secure = (config.get("federation") or {}).get("secure_aggregation")
    if secure:
        response = mask_response(response, site_label, secure["peers"], secure["secrets_dir"], sha256_file(round_path))
    else:
        response = response.with_columns(masked=pl.lit(None, pl.List(pl.UInt64)), peers=pl.lit(None, pl.String))
    response = response.select(RESPONSE_COLUMNS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"response_{number:03d}_{site_label}.parquet"
    for key in (fit_label(*row) for row in todo.filter(answered).select(KEY_COLUMNS).iter_rows()):
        ledger["evaluations"][key] = int(ledger["evaluations"].get(key, 0)) + 1
    ledger["rounds"].append({"round": number, "protocol_hash": round_hash, "round_sha256": sha256_file(round_path),
                             "answered": int(answered.sum()), "refused": refused.height})  # fmt: skip
    write_ledger(ledger_path, ledger)  # counted before the answer exists: a crash never hands out an uncounted one
    response.write_parquet(path)
    by_reason: dict[str, int] = {}
    for reason in reasons:
        if reason is not None:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    log.info("site %s round %d: %d fits evaluated, refused %s -> %s", site_label, number, int(answered.sum()), by_reason, path)
    return path


# --------------------------------------------------------------------------------------------------
# Coordinator round
# --------------------------------------------------------------------------------------------------


def _pad_vectors(values: list[list[float]], width: int) -> np.ndarray:
    """Ragged per-fit vectors as an (n, width) array, padded with 0."""
    out = np.zeros((len(values), width))
    for i, v in enumerate(values):
        out[i, : len(v)] = v
    return out


def _pad_matrices(values: list[list[float]], width: int, *, identity: bool) -> np.ndarray:
    """Flattened per-fit p x p matrices as an (n, width, width) array, padded with 0 or the identity.

    Identity padding keeps the padded directions decoupled: they get a zero Newton step and do not
    change the decrement or the variances of the real coefficients.
    """
    out = np.tile(np.eye(width), (len(values), 1, 1)) if identity else np.zeros((len(values), width, width))
    for i, v in enumerate(values):
        k = int(round(np.sqrt(len(v))))
        out[i, :k, :k] = np.asarray(v, dtype=np.float64).reshape(k, k)
    return out


def _ragged(values: np.ndarray, sizes: np.ndarray, matrix: bool = False) -> list[list[float]]:
    """Inverse of `_pad_vectors` / `_pad_matrices`: the first `size` entries (or size x size block, flattened) of each fit."""
    if matrix:
        return [values[i, :k, :k].reshape(-1).tolist() for i, k in enumerate(sizes)]
    return [values[i, :k].tolist() for i, k in enumerate(sizes)]


def sum_responses(state: pl.DataFrame, response_paths: Iterable[str | Path]) -> dict[str, np.ndarray]:
    """Sum the site responses per fit of the round; checks round number, protocol hash, fits and designs."""
    number = int(state["round"][0])
    round_hash = state["protocol_hash"][0]
    n = state.height
    sizes = state["design_names"].list.len().to_numpy()
    width = int(sizes.max())
    loglik = np.zeros(n)
    score = np.zeros((n, width))
    information = np.zeros((n, width, width))
    has_events = np.zeros(n, dtype=bool)
    refused = np.zeros(n, dtype=bool)
    evaluated = state["evaluate"].to_numpy()
    sites: set[str] = set()
    position_of_fit = {fit: i for i, fit in enumerate(state["fit_id"].to_list())}
    paths = list(response_paths)
    secure_responses: list[pl.DataFrame] = []
    if not paths:
        raise DistributedCoxError(f"round {number}: no site responses given")
    for path in paths:
        response = pl.read_parquet(path)
        extra = [c for c in response.columns if c not in RESPONSE_COLUMNS]
        if extra:
            raise DistributedCoxError(f"{path}: unexpected columns {extra} in a site response")
        if response.height == 0:
            raise DistributedCoxError(f"{path}: empty response (a site answers every fit it is asked, zeros if absent)")
        label = response["site_label"][0]
        if label in sites:
            raise DistributedCoxError(f"round {number}: two responses from site {label!r}")
        sites.add(label)
        if set(response["round"].unique().to_list()) != {number}:
            raise DistributedCoxError(f"{path} answers round {response['round'].unique().to_list()}, not {number}")
        if response["protocol_hash"][0] != round_hash:
            raise ProtocolMismatchError(f"{path} answers protocol {response['protocol_hash'][0]}, not {round_hash}")
        fit_ids = response["fit_id"].to_list()
        unknown = [f for f in fit_ids if f not in position_of_fit]
        if unknown:
            raise DistributedCoxError(f"{path}: fits {unknown[:5]} are not in round {number}")
        rows = np.array([position_of_fit[f] for f in fit_ids], dtype=np.int64)
        if not evaluated[rows].all() or len(set(rows.tolist())) != len(rows) or len(rows) != evaluated.sum():
            raise DistributedCoxError(
                f"{path}: a response must answer each fit of the round with evaluate = true exactly once "
                f"({int(evaluated.sum())} fits); it answers {len(rows)}"
            )
        same_keys = response.select(KEY_COLUMNS).equals(state[rows.tolist()].select(KEY_COLUMNS))
        same_design = response["design_names"].to_list() == state["design_names"][rows.tolist()].to_list()
        if not (same_keys and same_design):
            raise DistributedCoxError(f"{path}: fit keys or design columns differ from round {number}")
        loglik[rows] += response["loglik"].to_numpy()
        score[rows] += _pad_vectors(response["score"].to_list(), width)
        information[rows] += _pad_matrices(response["information"].to_list(), width, identity=False)
        has_events[rows] |= response["has_events"].to_numpy()
        refused[rows] |= response["refused"].to_numpy() if "refused" in response.columns else False
        if "masked" in response.columns and response["masked"].null_count() == 0:
            secure_responses.append(response)
    if secure_responses:
        if len(secure_responses) != len(paths):
            raise SecureAggregationError(f"round {number}: some sites masked their answers and some did not")
        order = np.flatnonzero(evaluated)  # fit_id order = the round's row order
        totals = response_totals(secure_responses, sizes[order].tolist())
        for row, (events, fit_loglik, fit_score, fit_information) in zip(order, totals, strict=True):
            k = sizes[row]
            has_events[row], loglik[row] = events, fit_loglik
            score[row, :k] = fit_score
            information[row, :k, :k] = np.asarray(fit_information).reshape(k, k)
    padding = np.arange(width)[None, :] >= sizes[:, None]
    information[:, np.arange(width), np.arange(width)] += padding  # as _pad_matrices(identity=True)
    expected_sites = json.loads(state["sites"][0])
    if expected_sites and sorted(sites) != expected_sites:
        raise DistributedCoxError(
            f"round {number}: responses from sites {sorted(sites)}, but the exchange started with {expected_sites}; "
            "every site must answer every round (the pooled likelihood is the sum over all of them)"
        )
    return {"loglik": loglik, "score": score, "information": information, "has_events": has_events,
            "refused": refused, "sites": sorted(sites)}


def _singular(information: np.ndarray) -> np.ndarray:
    """Pooled information not positive in some direction at the start point: the fit is not identifiable."""
    diag = np.diagonal(information, axis1=1, axis2=2)
    singular = np.any(~(diag > 0), axis=1)
    if information.shape[1] > 1 and np.any(~singular):
        ok = ~singular
        _, eigenvalues, _ = scaled_eigh(information[ok])
        singular[ok] = eigenvalues[:, 0] <= SINGULAR_RELATIVE_TOL
    return singular


def coordinator_round(
    rounds_dir: str | Path, response_paths: list[str | Path], *, result_path: str | Path | None = None
) -> Path | None:
    """Sum the sites' responses to the latest round, update every fit, write the next round file.

    Per fit, the same rules as `fit_efron`: Newton step I^-1 U from the last accepted point; a trial
    point whose pooled log-likelihood is lower than the accepted one is rejected and the step halved
    (the likelihood is only known after the sites evaluated the point, so the round file keeps the
    accepted point, its log-likelihood, score, information and step); a fit is converged when a full
    step with predicted gain U' I^-1 U / 2 <= tol was taken, and its estimates and SEs are those at
    the new point. Returns the next round file, or None after writing the pooled result file
    (default rounds_dir/../cox.parquet) when every fit is done.
    """
    rounds_dir = Path(rounds_dir)
    current = latest_round(rounds_dir)
    state = pl.read_parquet(current)
    number = int(state["round"][0])
    pooled = sum_responses(state, response_paths)
    sizes = state["design_names"].list.len().to_numpy()
    width = int(sizes.max())
    n = state.height
    max_iter = int(state["max_iter"][0])
    tol = float(state["tol"][0])
    early_separation = bool(state["early_separation"][0])

    phase = state["phase"].to_numpy().astype(object)
    status = state["status"].to_numpy().astype(object)
    converged = state["converged"].to_numpy().copy()
    n_iter = state["n_iter"].to_numpy().copy()
    halvings = state["halvings"].to_numpy().copy()
    decrement = state["decrement"].to_numpy().copy()
    loglik = state["accepted_loglik"].to_numpy().copy()
    loglik_null = state["loglik_null"].to_numpy().copy()
    trial = _pad_vectors(state["beta"].to_list(), width)
    beta = _pad_vectors(state["accepted_beta"].to_list(), width)
    score = _pad_vectors(state["accepted_score"].to_list(), width)
    information = _pad_matrices(state["accepted_information"].to_list(), width, identity=True)
    step = _pad_vectors(state["step"].to_list(), width)
    last_step = _pad_vectors(state["last_step"].to_list(), width)

    # A fit any site refused (not released there, beyond its bounds, too many rounds) cannot be pooled exactly:
    # it stops without an estimate (the meta-analysis of the released site estimates still covers it).
    refused = state["evaluate"].to_numpy() & pooled["refused"]
    status[refused], converged[refused] = REFUSED_STATUS, False
    evaluate = state["evaluate"].to_numpy() & ~refused

    # Start point (beta = 0): null log-likelihood, no-event and identifiability checks, first Newton step.
    starting = np.flatnonzero(evaluate & (phase == "start"))
    if starting.size:
        loglik_null[starting] = pooled["loglik"][starting]
        beta[starting] = trial[starting]
        loglik[starting] = pooled["loglik"][starting]
        score[starting] = pooled["score"][starting]
        information[starting] = pooled["information"][starting]
        no_events = starting[~pooled["has_events"][starting]]
        status[no_events] = "no_events"
        with_events = np.setdiff1d(starting, no_events)
        singular = with_events[_singular(information[with_events])] if with_events.size else with_events
        status[singular] = "singular_information"
        phase[np.union1d(no_events, singular)] = "done"
        moving = np.setdiff1d(with_events, singular)
        step[moving] = newton_step(information[moving], score[moving])
        decrement[moving] = np.einsum("fp,fp->f", score[moving], step[moving])
        trial[moving] = beta[moving] + step[moving]
        phase[moving] = "iterate"

    # Trial points: accept or halve, as in fit_efron's loop.
    idx = np.flatnonzero(evaluate & (state["phase"].to_numpy() == "iterate"))
    if idx.size:
        new_loglik, new_score, new_info = (pooled[k][idx] for k in ("loglik", "score", "information"))
        newton = NewtonArrays(beta, trial, step, last_step, loglik, score, information, decrement, halvings, converged, n_iter)
        done_now, moving = accept_or_halve(newton, idx, new_loglik, new_score, new_info, tol)
        finished = idx[done_now | (n_iter[idx] >= max_iter) | (halvings[idx] > MAX_STEP_HALVINGS)]
        if early_separation and moving.size:
            outwards = np.any(
                (np.abs(step[moving]) >= SEPARATION_MIN_STEP)
                & (np.abs(beta[moving]) >= SEPARATION_MIN_ABS_COEF)
                & (step[moving] * beta[moving] > 0),
                axis=1,
            )
            finished = np.union1d(finished, moving[outwards])
        phase[finished] = "done"
        for i in finished:  # fit_efron's final status: not converged, or separation seen numerically
            status[i] = "ok" if converged[i] else "not_converged"
            moving_step = last_step[i] if converged[i] else step[i]
            large = np.abs(beta[i]) >= SEPARATION_MIN_ABS_COEF
            still_moving = (np.abs(moving_step) >= SEPARATION_MIN_STEP) & (moving_step * beta[i] > 0)
            # A large coefficient where the information has vanished (exp underflow): the likelihood has
            # flattened out towards its supremum at infinity. fit_efron catches these with its exact
            # data-based check, which needs the risk sets; the coordinator only sees the information.
            flat = ~(np.diagonal(information[i]) > 0)
            if np.any(large & (still_moving | flat)):
                status[i], converged[i] = "separation", False
        trial[finished] = beta[finished]

    phase[refused] = "done"
    active = phase != "done"
    log.info(
        "round %d: %d sites, %d fits evaluated, %d still iterating", number, len(pooled["sites"]),
        int(state["evaluate"].sum()), int(active.sum()),
    )
    next_state = state.with_columns(
        round=pl.lit(number + 1, pl.Int64),
        sites=pl.lit(json.dumps(pooled["sites"])),
        evaluate=pl.Series(active),
        beta=pl.Series(_ragged(trial, sizes), dtype=pl.List(pl.Float64)),
        phase=pl.Series(phase.astype(str)),
        accepted_beta=pl.Series(_ragged(beta, sizes), dtype=pl.List(pl.Float64)),
        accepted_loglik=pl.Series(loglik),
        accepted_score=pl.Series(_ragged(score, sizes), dtype=pl.List(pl.Float64)),
        accepted_information=pl.Series(_ragged(information, sizes, matrix=True), dtype=pl.List(pl.Float64)),
        loglik_null=pl.Series(loglik_null),
        step=pl.Series(_ragged(step, sizes), dtype=pl.List(pl.Float64)),
        last_step=pl.Series(_ragged(last_step, sizes), dtype=pl.List(pl.Float64)),
        decrement=pl.Series(decrement),
        halvings=pl.Series(halvings),
        n_iter=pl.Series(n_iter),
        converged=pl.Series(converged),
        status=pl.Series(status.astype(str)),
    )
    if active.any():
        path = round_path(rounds_dir, number + 1)
        next_state.write_parquet(path)
        return path
    out = Path(result_path) if result_path is not None else result_path_for(rounds_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    pooled_estimates(next_state).write_parquet(out)
    log.info("all %d fits done after %d rounds: %s", n, number, out)
    return None


def pooled_estimates(state: pl.DataFrame) -> pl.DataFrame:
    """Final per-fit estimates from a finished state: log HR of the exposure, SE from I^-1 at the final point."""
    sizes = state["design_names"].list.len().to_numpy()
    width = int(sizes.max())
    beta = _pad_vectors(state["accepted_beta"].to_list(), width)
    information = _pad_matrices(state["accepted_information"].to_list(), width, identity=True)
    status = state["status"].to_numpy().astype(object)
    converged = state["converged"].to_numpy().copy()
    # The identity padding of the unused directions has variance 1: it never makes a fit look singular.
    _, se = variance_and_se(information, status, converged)
    se = np.where(np.arange(width)[None, :] < sizes[:, None], se, np.nan)
    no_estimate = np.isin(status, ("no_events", "singular_information", REFUSED_STATUS))
    beta[no_estimate] = np.nan
    se[no_estimate] = np.nan
    coef, coef_se = beta[:, 0], se[:, 0]
    summary = wald(coef, coef_se)
    estimates = {
        "log_hr": coef,
        "se": coef_se,
        "hr": summary.hr,
        "ci_lower": summary.ci_lower,
        "ci_upper": summary.ci_upper,
        "p_value": summary.p_value,
    }
    n_iter = state["n_iter"].to_numpy()
    return pl.DataFrame(
        {
            **{c: state[c] for c in KEY_COLUMNS},
            **estimates,
            "n_rounds": (n_iter + 1).astype(np.int64),  # the start point, then one per update
            "n_iter": n_iter,
            "converged": converged,
            "status": status.astype(str),
            "loglik": state["accepted_loglik"],
            "loglik_null": state["loglik_null"],
            "design_names": state["design_names"],
            "coefficients": pl.Series(_ragged(beta, sizes), dtype=pl.List(pl.Float64)),
            "standard_errors": pl.Series(_ragged(se, sizes), dtype=pl.List(pl.Float64)),
            "protocol_hash": state["protocol_hash"],
        },
        strict=False,
    ).select(RESULT_COLUMNS)
