"""Disclosure control of the trial emulation's released tables (docs/methods.md, "Trial emulation: design and
estimation", Release).

* Counts (persons, clones, events, the flow) from 1 to min_cell - 1 are hidden, every other count rounded to the
  policy's base (`DisclosurePolicy.round_count`).
* An outcome's estimates (both arms, the contrasts, the curves) are hidden whole when a strategy holds 1 to
  min_cell - 1 persons or events: an estimate on so few reveals them.
* Curves move only in steps of at least min_cell events (a point after fewer new events repeats the last shown
  value, as the persistence curves do) and are hidden where fewer than min_cell clones are at risk.
* Summaries (weights, positivity, balance means) are released without minima or maxima, and hidden whole when
  their group has fewer than min_cell persons.

Imports numpy, polars and `release.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from repurpose.release.policy import DisclosurePolicy
from repurpose.trial_emulation.protocol import ESCALATION, HIGH_EFFICACY

HIDDEN_NOTE = "hidden: a strategy with too few persons or events"


def _count(value: int | None, policy: DisclosurePolicy) -> int | None:
    if value is None or 0 < int(value) < policy.min_cell:
        return None
    return policy.round_count(int(value))


def release_counts_table(counts: pl.DataFrame, policy: DisclosurePolicy) -> pl.DataFrame:
    """Persons, deviations and events per analysis, strategy and outcome: small counts hidden, the rest rounded."""
    columns = ("n_persons", "n_censored_deviation", "n_events")
    return counts.with_columns([pl.col(c).map_elements(lambda v: _count(v, policy), return_dtype=pl.Int64) for c in columns])


def release_estimates(frame: pl.DataFrame, hidden: set[tuple[str, str]],
                      unavailable: Mapping[str, str] | None = None) -> pl.DataFrame:  # fmt: skip
    """The estimates with those of the hidden (analysis, outcome) pairs blanked and a status column, and one row
    per configured outcome that is not available (`unavailable`: outcome -> reason), never silently dropped."""
    hide = pl.struct("analysis", "outcome").map_elements(lambda r: (r["analysis"], r["outcome"]) in hidden, return_dtype=pl.Boolean)
    frame = frame.with_columns(hide.alias("_hide"))
    released = frame.with_columns(
        [pl.when(pl.col("_hide")).then(None).otherwise(pl.col(c)).alias(c) for c in ("estimate", "lower", "upper")]
        + [pl.when(pl.col("_hide")).then(pl.lit(HIDDEN_NOTE)).otherwise(pl.lit("shown")).alias("status")]
    ).drop("_hide")
    missing = pl.DataFrame({"outcome": list(unavailable or {}), "status": list((unavailable or {}).values())},
                           schema={"outcome": pl.String, "status": pl.String})  # fmt: skip
    return pl.concat([released, missing], how="diagonal_relaxed")


def coarsened_steps(risk: np.ndarray, events: np.ndarray, min_cell: int) -> np.ndarray:
    """Grid indices whose value is shown: a point moves to its own value only when at least min_cell events
    happened since the last shown move; otherwise it repeats the last shown value."""
    shown = np.zeros(len(risk), np.int64)
    last, last_events = 0, 0.0
    for i in range(len(risk)):
        if events[i] - last_events >= min_cell:
            last, last_events = i, events[i]
        shown[i] = last
    return shown


def _grid_counts(start: np.ndarray, stop: np.ndarray, event: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows at risk just after t (start <= t < stop: the number at risk of a risk table) and events by t
    (stop <= t), unweighted, at each grid time."""
    at_risk = np.searchsorted(np.sort(start), grid, "right") - np.searchsorted(np.sort(stop), grid, "right")
    events = np.searchsorted(np.sort(stop[event]), grid, "right")
    return at_risk.astype(np.int64), events.astype(float)


def release_curves(result: Mapping[str, Any], hidden: set[tuple[str, str]], policy: DisclosurePolicy) -> pl.DataFrame:
    """Risk curves (1 - weighted Kaplan-Meier) per analysis, outcome and strategy on a monthly grid with bootstrap
    95% intervals, as released (module doc)."""
    data, grid, point, intervals = result["data"], result["grid"], result["point"], result["intervals"]
    frames = []
    for name, ev in data.events.items():
        parts = [("emulation", ev.rows), ("naive", ev.naive)] + [(p.analysis, p.events[name].rows) for p in data.parts[1:]]
        for analysis, rows in parts:
            if (analysis, name) in hidden:
                continue
            for arm, strategy in ((1, HIGH_EFFICACY), (0, ESCALATION)):
                key = (analysis, name, f"curve_{strategy}")
                mask = rows.arm == arm
                at_risk, events = _grid_counts(rows.start[mask], rows.stop[mask], rows.event[mask], grid)
                shown = coarsened_steps(point[key], events, policy.min_cell)
                lower, upper = intervals[key]
                small = at_risk < policy.min_cell
                frames.append(pl.DataFrame({
                    "analysis": analysis, "outcome": name, "strategy": strategy, "month": np.round(grid / (365.25 / 12)),
                    "risk": np.where(small, np.nan, point[key][shown]), "lower": np.where(small, np.nan, np.asarray(lower)[shown]),
                    "upper": np.where(small, np.nan, np.asarray(upper)[shown]),
                    "n_at_risk": [_count(int(v), policy) if v >= policy.min_cell else None for v in at_risk],
                }))  # fmt: skip
    if not frames:
        return pl.DataFrame(schema={"analysis": pl.String, "outcome": pl.String, "strategy": pl.String, "month": pl.Float64,
                                    "risk": pl.Float64, "lower": pl.Float64, "upper": pl.Float64, "n_at_risk": pl.Int64})  # fmt: skip
    out = pl.concat(frames)
    return out.with_columns([pl.col(c).fill_nan(None) for c in ("risk", "lower", "upper")])


def release_balance(balance: pl.DataFrame, policy: DisclosurePolicy) -> pl.DataFrame:
    """The balance table: a group's means (and the SMDs using them) hidden when it has 1 to min_cell - 1 persons;
    group sizes rounded."""
    out = balance
    for when in ("before", "after"):
        small = pl.any_horizontal([pl.col(f"n_{s}_{when}").is_between(0, policy.min_cell - 1) for s in (HIGH_EFFICACY, ESCALATION)])
        columns = [f"mean_{HIGH_EFFICACY}_{when}", f"mean_{ESCALATION}_{when}", f"smd_{when}"]
        out = out.with_columns([pl.when(small).then(None).otherwise(pl.col(c)).alias(c) for c in columns])
    counts = [c for c in out.columns if c.startswith("n_")]
    return out.with_columns([pl.col(c).map_elements(lambda v: _count(v, policy), return_dtype=pl.Int64) for c in counts])


def release_summaries(frame: pl.DataFrame, count_column: str, policy: DisclosurePolicy) -> pl.DataFrame:
    """Percentile summaries (weights, positivity): hidden for a group of 1 to min_cell - 1; its size rounded."""
    if frame.height == 0:
        return frame
    small = pl.col(count_column).is_between(1, policy.min_cell - 1)
    return frame.with_columns(
        pl.when(small).then(None).otherwise(pl.col("value")).alias("value"),
        pl.col(count_column).map_elements(lambda v: _count(v, policy), return_dtype=pl.Int64),
    )


def release_flow(flow: Sequence[tuple[str, int]], policy: DisclosurePolicy) -> pl.DataFrame:
    """The eligibility flow: persons left after each criterion, small counts hidden, the rest rounded (the step
    between two rounded counts is then an interval, not a count)."""
    return pl.DataFrame({"step": [s for s, _ in flow], "n_persons": [_count(n, policy) for _, n in flow]},
                        schema={"step": pl.String, "n_persons": pl.Int64})  # fmt: skip
