"""How well a drug ranking recovers planted truth: average precision of planted causal protective substances
and null substances in the top 20, for four orderings of the same run's level-5 substances.

Used by `benchmarks/bench_ranking.py` and the slow recovery test; nothing here is read by the pipeline.
The orderings (every level-5 substance of the screen; substances an ordering leaves out go to the bottom
as ties: the figures are their expectation over a random order of them, exact for the nulls in the top 20
and the mean over `SHUFFLES` seeded shuffles for the average precision, so no ordering gains or loses by
where the left-out substances' codes fall in the alphabet):

- `screen_z_order`: the plain Wald z of the both-sexes screen estimate at the main lag, most protective first;
- `previous_order`: the ranking before issue 19, reproduced on this run's evidence: only classes with q <
  alpha (Wald, lag 0 or main lag) are listed; protective before harmful, rows suspected of reverse
  causation after the others, then the old points score (one per supporting line, no minimum of cases),
  then the calibrated p;
- `ranking_order`: the drug ranking's protective list by rank, then its harmful list from the weakest to
  the strongest harmful signal;
- `short_list_order`: the drug ranking read as its report's key findings: the candidates (protective by
  rank, then harmful by rank), then the other rows as in `ranking_order`.

`fewest_nulls_in_top` is the floor every ordering shares: a top 20 holds at least 20 minus the number of
substances that are not null. The previous short list also counts harmful, confounded and prodromal hits in
its top 20, so an ordering that lists the protective direction first cannot have fewer nulls there than 20
minus the planted protective substances.

Planted truth comes from the simulator's ground_truth.json (`roles`), so nothing here depends on which
substances a simulator plants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from repurpose.schemas import is_candidate

PROTECTIVE_ROLES = ("causal_protective", "mechanism")
"""Roles of the simulator's ground truth that count as true protective substances."""


def average_precision(is_positive: list[bool]) -> float:
    """Mean over positives of the precision at each positive's position (positives never listed count 0)."""
    hits, precisions = 0, []
    for k, positive in enumerate(is_positive, start=1):
        if positive:
            hits += 1
            precisions.append(hits / k)
    return float(np.mean(precisions)) if precisions else 0.0


SHUFFLES = 1000
"""Random orders of the left-out substances averaged over for the average precision."""


def split_listed(order: list[str], substances: list[str]) -> tuple[list[str], list[str]]:
    """`order`'s substances in its order, and the substances it leaves out (in code order)."""
    listed = [c for c in dict.fromkeys(order) if c in set(substances)]
    return listed, sorted(set(substances) - set(listed))


def screen_z_order(dwas: pl.DataFrame, main_lag: float) -> list[str]:
    """Level-5 substances by the z of their both-sexes main-lag estimate, most protective first."""
    rows = dwas.filter(
        (pl.col("atc_level") == 5) & (pl.col("sex") == "all") & (pl.col("lag_years") == main_lag) & (pl.col("status") == "ok")
        & pl.col("se").is_finite() & (pl.col("se") > 0)
    )  # fmt: skip
    return rows.with_columns(z=pl.col("log_hr") / pl.col("se")).sort("z", "atc_code")["atc_code"].to_list()


def previous_points(row: dict[str, Any], settings: dict[str, Any]) -> int:
    """The old score (before issue 19) of one row: one point per supporting line, without a minimum of cases."""
    alpha, protective = settings["fdr_alpha"], row["direction"] == "protective"
    sign = -1 if protective else 1

    def finite(name: str) -> bool:
        value = row.get(name)
        return value is not None and bool(np.isfinite(value))

    def side(hr: str, lo: str, hi: str) -> bool:
        return finite(hr) and finite(lo) and finite(hi) and (row[hi] < 1 if protective else row[lo] > 1)

    points = 0
    points += finite("calibrated_q") and row["calibrated_q"] < alpha
    points += bool(not row.get("reverse_causation_suspected") and finite("lag_retained_fraction")
                   and row["lag_retained_fraction"] >= settings["reverse_causation"]["max_retained_fraction"])  # fmt: skip
    points += finite("dose_trend_p") and row["dose_trend_p"] < alpha and finite("dose_trend_hr") and np.sign(np.log(row["dose_trend_hr"])) == sign
    points += bool(finite("hr_F") and finite("hr_M") and np.sign(np.log(row["hr_F"])) == sign and np.sign(np.log(row["hr_M"])) == sign
                   and finite("sex_heterogeneity_p") and row["sex_heterogeneity_p"] >= alpha)  # fmt: skip
    points += bool(finite("sibling_pooled_p") and row["sibling_pooled_p"] < alpha and finite("sibling_pooled_hr")
                   and np.sign(np.log(row["sibling_pooled_hr"])) == sign)  # fmt: skip
    points += side("hr_confirmation", "ci_lower_confirmation", "ci_upper_confirmation")
    points += side("hr_active_comparator", "ci_lower_active_comparator", "ci_upper_active_comparator")
    points += finite("e_value_ci") and row["e_value_ci"] >= settings["min_e_value"]
    points += row.get("evidence_mechanism") == "supported"
    return int(points)


def previous_order(dwas: pl.DataFrame, ranking: pl.DataFrame, settings: dict[str, Any]) -> list[str]:
    """Level-5 substances in the order of the ranking before issue 19 (module docstring)."""
    main_lag = float(settings["main_lag_years"])
    hits = dwas.filter(
        (pl.col("sex") == "all") & pl.col("lag_years").is_in([0.0, main_lag]) & (pl.col("q_value") < settings["fdr_alpha"])
        & (pl.col("status") == "ok") & (pl.col("atc_level") == 5)
    )["atc_code"].unique().to_list()  # fmt: skip
    rows = ranking.filter(pl.col("atc_code").is_in(hits))
    rows = rows.with_columns(
        _points=pl.Series([previous_points(r, settings) for r in rows.iter_rows(named=True)], dtype=pl.Int64),
        _rc=pl.col("flags").fill_null("").str.contains("reverse_causation_suspected"),
        _p=pl.coalesce("calibrated_p", "p_value"),
    )
    ordered = rows.sort([pl.col("direction") == "harmful", "_rc", "_points", "_p", "atc_code"], descending=[False, False, True, False, False], nulls_last=True)
    return ordered["atc_code"].to_list()


def ranking_order(ranking: pl.DataFrame) -> list[str]:
    """Level-5 codes of the drug ranking: the protective list by rank, then the harmful list weakest first."""
    protective = ranking.filter(pl.col("direction") == "protective").sort("rank")["atc_code"].to_list()
    harmful = ranking.filter(pl.col("direction") == "harmful").sort("rank", descending=True)["atc_code"].to_list()
    return protective + harmful


def short_list_order(ranking: pl.DataFrame, alpha: float) -> list[str]:
    """Level-5 codes with the candidates first (protective by rank, then harmful by rank), then the rest as
    `ranking_order` lists them."""
    candidates = ranking.filter(is_candidate(ranking, alpha)).sort([pl.col("direction") != "protective", "rank"])["atc_code"].to_list()
    chosen = set(candidates)
    return candidates + [code for code in ranking_order(ranking) if code not in chosen]


def fewest_nulls_in_top(roles: dict[str, str], *, top: int = 20) -> int:
    """The fewest null substances any ordering of `roles` can have in its top `top`."""
    return max(min(top, len(roles)) - sum(role != "null" for role in roles.values()), 0)


def recovery(order: list[str], roles: dict[str, str], *, top: int = 20) -> dict[str, float]:
    """Average precision of the planted protective substances; null substances in the top `top`, and all
    substances there that are not planted protective (nulls and the harmful, confounded and prodromal ones)."""
    listed, left_out = split_listed(order, sorted(roles))
    rng = np.random.default_rng(0)
    shuffles = [listed + [left_out[i] for i in rng.permutation(len(left_out))] for _ in range(SHUFFLES if left_out else 1)]
    slots = max(top - len(listed), 0)
    left_out_nulls = sum(roles[c] == "null" for c in left_out)
    left_out_other = sum(roles[c] not in PROTECTIVE_ROLES for c in left_out)
    return {
        "average_precision": float(np.mean([average_precision([roles[c] in PROTECTIVE_ROLES for c in full]) for full in shuffles])),
        "nulls_in_top": sum(roles[c] == "null" for c in listed[:top]) + (slots * left_out_nulls / len(left_out) if left_out else 0.0),
        "not_protective_in_top": sum(roles[c] not in PROTECTIVE_ROLES for c in listed[:top])
        + (slots * left_out_other / len(left_out) if left_out else 0.0),
        "n_substances": len(roles),
        "n_positive": sum(role in PROTECTIVE_ROLES for role in roles.values()),
        "n_listed": len(listed),
    }


def compare_orderings(dwas: pl.DataFrame, ranking: pl.DataFrame, truth: dict[str, Any], settings: dict[str, Any]) -> pl.DataFrame:
    """One row per ordering (previous, screen_z, new, new with its candidates first) with its average precision
    and nulls in the top 20, over the level-5 substances that the screen fitted at any lag (the others have
    nothing to rank), and the fewest nulls any ordering could have there."""
    fitted = set(dwas.filter((pl.col("atc_level") == 5) & (pl.col("status") == "ok"))["atc_code"].to_list())
    roles = {code: s["role"] for code, s in truth["substances"].items() if code in fitted}
    orderings = {
        "previous (q < alpha classes, points score)": previous_order(dwas, ranking, settings),
        "screen z at the main lag": screen_z_order(dwas, float(settings["main_lag_years"])),
        "new (signals, tiers, shrunken z)": ranking_order(ranking),
        "new, candidates of both directions first": short_list_order(ranking, settings["fdr_alpha"]),
    }
    rows = [{"ordering": name, **recovery(order, roles)} for name, order in orderings.items()]
    return pl.DataFrame(rows).with_columns(fewest_nulls_possible=pl.lit(fewest_nulls_in_top(roles)))
