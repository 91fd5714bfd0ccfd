"""Evidence lines of a drug signal as supported / against / not assessed, the flags that demote, and the order.

Each line (EVIDENCE_LINES) is judged only from an estimate whose own counts reach
`candidates.min_evidence_cases` exposed cases (for an active comparator: cases in both groups); below
that, or when the estimate does not exist, the line is `not assessed: <why>` and counts neither for nor
against. An assessed line is `supported` when its criterion holds and `against` otherwise. The score is
"supported of assessed" (`evidence_supported` of `evidence_assessed`); it is shown, not used to sort.

Order within a direction (protective and harmful are separate lists): the short list first (candidates
with no demoting flag; DEMOTING_FLAGS: reverse causation, not confirmed after adjustment, not significant
after calibration, small numbers, main lag not estimable), then every other row, then rows suspected of
reverse causation or shown at lag 0; within each, by the shrunken estimate's posterior z
(`repurpose.dwas.shrinkage`), strongest first. The rules are in docs/methods.md ("Drug ranking").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from repurpose.schemas import EVIDENCE_LINES

SUPPORTED, AGAINST, NOT_ASSESSED = "supported", "against", "not assessed"

DEMOTING_FLAGS = (
    "reverse_causation_suspected",
    "not_confirmed_after_adjustment",
    "not_significant_after_calibration",
    "small_numbers",
    "main_lag_not_estimable",
)
"""Flags that move a row below every row of its direction with fewer of them."""


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, int | float) and bool(np.isfinite(value))


def _count(value: Any) -> int | None:
    return int(value) if _finite(value) else None


def _not_assessed(why: str) -> str:
    return f"{NOT_ASSESSED}: {why}"


def _few(what: str, n: int | None, minimum: int) -> str | None:
    """The reason a line is not assessed for lack of cases, or None when `n` reaches `minimum`."""
    if n is None:
        return _not_assessed(f"{what} not counted")
    if n < minimum:
        return _not_assessed(f"{what} below {minimum}")
    return None


def _side(hr: Any, lower: Any, upper: Any, protective: bool) -> str:
    """supported when the CI excludes 1 on the row's side, else against."""
    if protective:
        return SUPPORTED if upper < 1 else AGAINST
    return SUPPORTED if lower > 1 else AGAINST


def evidence_lines(row: dict[str, Any], settings: dict[str, Any]) -> dict[str, str]:
    """The value of every evidence line of one row (module docstring); `row` holds the ranking's inputs."""
    alpha, minimum = settings["fdr_alpha"], settings["min_evidence_cases"]
    protective = row["direction"] == "protective"
    sign = -1 if protective else 1
    cases = _count(row.get("n_exposed_cases"))
    person_level = row.get("person_level_reason")
    out: dict[str, str] = {}

    few = _few("exposed cases", cases, minimum)
    if row.get("main_lag_not_estimable"):
        out["calibrated"] = _not_assessed("no estimate at the main lag")
    elif not _finite(row.get("calibrated_q")):
        out["calibrated"] = _not_assessed(f"no empirical null at ATC level {row.get('atc_level')}")
    else:
        out["calibrated"] = few or (SUPPORTED if row["calibrated_q"] < alpha else AGAINST)

    if row.get("reverse_causation_suspected"):
        out["lag_robust"] = few or AGAINST
    elif not row.get("lags_tested"):
        out["lag_robust"] = _not_assessed("no estimate at a lag > 0 beside lag 0")
    else:
        retained = row.get("lag_retained_fraction")
        lag_few = _few("exposed cases at some lag", _count(row.get("lag_min_exposed_cases")), minimum)
        ok = _finite(retained) and retained >= settings["reverse_causation"]["max_retained_fraction"]
        out["lag_robust"] = lag_few or (SUPPORTED if ok else AGAINST)

    if person_level:
        out["dose_response"] = _not_assessed(person_level)
    elif not _finite(row.get("dose_trend_p")) or not _finite(row.get("dose_trend_hr")):
        out["dose_response"] = _not_assessed("trend not estimable (a dose category is empty)")
    else:
        trend_same_side = np.sign(np.log(row["dose_trend_hr"])) == sign
        out["dose_response"] = _few("exposed cases in the dose model", _count(row.get("dose_exposed_cases")), minimum) or (
            SUPPORTED if row["dose_trend_p"] < alpha and trend_same_side else AGAINST
        )

    if not (_finite(row.get("hr_F")) and _finite(row.get("hr_M"))):
        out["sex_consistent"] = _not_assessed("no estimate in one sex")
    else:
        sex_cases = [_count(row.get("n_exposed_cases_F")), _count(row.get("n_exposed_cases_M"))]
        smallest = None if None in sex_cases else min(sex_cases)  # type: ignore[type-var]
        same = np.sign(np.log(row["hr_F"])) == sign and np.sign(np.log(row["hr_M"])) == sign
        homogeneous = _finite(row.get("sex_heterogeneity_p")) and row["sex_heterogeneity_p"] >= alpha
        out["sex_consistent"] = _few("exposed cases in a sex", smallest, minimum) or (
            SUPPORTED if same and homogeneous else AGAINST
        )

    if not row.get("n_siblings") or not _finite(row.get("sibling_pooled_p")):
        out["class_consistent"] = _not_assessed("no fitted ATC sibling")
    else:
        same = np.sign(row["sibling_pooled_log_hr"]) == sign
        out["class_consistent"] = _few("exposed cases of the siblings", _count(row.get("sibling_exposed_cases")), minimum) or (
            SUPPORTED if row["sibling_pooled_p"] < alpha and same else AGAINST
        )

    if person_level:
        out["confirmed"] = _not_assessed(person_level)
    elif not _finite(row.get("hr_confirmation")):
        out["confirmed"] = _not_assessed(row.get("confirmation_reason") or "confirmation model not estimable")
    else:
        out["confirmed"] = few or _side(
            row["hr_confirmation"], row["ci_lower_confirmation"], row["ci_upper_confirmation"], protective
        )

    if person_level:
        out["active_comparator"] = _not_assessed(person_level)
    elif row.get("n_active_comparator") is None:
        out["active_comparator"] = _not_assessed("no comparator class with the same indication")
    else:
        comparator_cases = _count(row.get("n_active_comparator_cases"))
        candidate_cases = _count(row.get("n_active_comparator_candidate_cases"))
        reason = _few("comparator cases", comparator_cases, minimum) or _few("new-user cases", candidate_cases, minimum)
        if reason:
            out["active_comparator"] = reason
        elif not _finite(row.get("hr_active_comparator")):
            out["active_comparator"] = _not_assessed("comparator model not estimable")
        else:
            out["active_comparator"] = _side(
                row["hr_active_comparator"], row["ci_lower_active_comparator"], row["ci_upper_active_comparator"], protective
            )

    if not _finite(row.get("e_value_ci")):
        out["robust_to_confounding"] = _not_assessed("no estimate")
    else:
        out["robust_to_confounding"] = few or (SUPPORTED if row["e_value_ci"] >= settings["min_e_value"] else AGAINST)

    mechanism = row.get("mechanism_evidence")
    if mechanism:
        out["mechanism"] = mechanism
    elif row.get("atc_level") is not None and int(row["atc_level"]) < 5:
        out["mechanism"] = _not_assessed("a class, not a substance (targets are mapped to substances)")
    else:
        out["mechanism"] = _not_assessed("no target shared with another screened substance")
    out["replication"] = replication_line(row, settings)
    return out


def replication_line(row: dict[str, Any], settings: dict[str, Any]) -> str:
    """The split-sample `replication` line (`repurpose.dwas.replication`): supported when the discovery half's
    estimate lies on the row's side of 1 and the held-out half's estimate lies on it with p < alpha; against
    otherwise; not assessed when off, not fitted in the halves, or either half has fewer than the minimum of
    exposed cases."""
    if not settings.get("replication", {}).get("enabled"):
        return _not_assessed("split-sample replication is off (candidates.replication.enabled)")
    if row.get("person_level_reason"):
        return _not_assessed(row["person_level_reason"])
    if row.get("replication_n_exposed_cases") is None:
        return _not_assessed(f"not fitted in the halves ({row.get('confirmation_reason') or 'no confirmation model'})")
    minimum = settings["min_evidence_cases"]
    reason = _few("exposed cases in the discovery half", _count(row.get("discovery_n_exposed_cases")), minimum) or _few(
        "exposed cases in the held-out half", _count(row.get("replication_n_exposed_cases")), minimum
    )
    if reason:
        return reason
    if not (_finite(row.get("log_hr_discovery")) and _finite(row.get("hr_replication")) and _finite(row.get("p_replication"))):
        return _not_assessed("the model is not estimable in a half")
    sign = -1 if row["direction"] == "protective" else 1
    discovery_side = np.sign(row["log_hr_discovery"]) == sign
    held_out_side = np.sign(np.log(row["hr_replication"])) == sign
    return SUPPORTED if discovery_side and held_out_side and row["p_replication"] < settings["fdr_alpha"] else AGAINST


def flags_of(row: dict[str, Any], lines: dict[str, str], settings: dict[str, Any]) -> list[str]:
    """Flags of one row: the demoting ones (DEMOTING_FLAGS) and the informative ones (evidence against)."""
    sign = -1 if row["direction"] == "protective" else 1
    flags = []
    if row.get("main_lag_not_estimable"):
        flags.append("main_lag_not_estimable")
    if row.get("reverse_causation_suspected"):
        flags.append("reverse_causation_suspected")
    if not row.get("lags_tested"):
        flags.append("lag_untestable")
    if lines["calibrated"] == AGAINST:
        flags.append("not_significant_after_calibration")
    if lines["confirmed"] == AGAINST:
        flags.append("not_confirmed_after_adjustment")
    cases = _count(row.get("n_exposed_cases"))
    if cases is None or cases < settings["small_numbers_cases"]:
        flags.append("small_numbers")
    if _finite(row.get("dose_trend_p")) and row["dose_trend_p"] < settings["fdr_alpha"] and _finite(row.get("dose_trend_hr")):
        if np.sign(np.log(row["dose_trend_hr"])) != sign:
            flags.append("inverse_dose_response")
    if _finite(row.get("sex_heterogeneity_p")) and row["sex_heterogeneity_p"] < settings["fdr_alpha"]:
        flags.append("sex_heterogeneity")
    if lines["class_consistent"] == AGAINST and _finite(row.get("sibling_pooled_p")) and row["sibling_pooled_p"] < settings["fdr_alpha"]:
        flags.append("siblings_disagree")
    if lines["replication"] == AGAINST and _finite(row.get("p_replication")) and row["p_replication"] < settings["fdr_alpha"]:
        if np.sign(np.log(row["hr_replication"])) != sign:
            flags.append("replication_disagrees")
    if lines["active_comparator"] == AGAINST and _finite(row.get("hr_active_comparator")):
        if np.sign(np.log(row["hr_active_comparator"])) != sign:
            flags.append("active_comparator_disagrees")
    return flags


def score_rows(frame: pl.DataFrame, settings: dict[str, Any]) -> pl.DataFrame:
    """Add `evidence_<line>`, `evidence_supported`, `evidence_assessed` and `flags`."""
    added = []
    for row in frame.iter_rows(named=True):
        lines = evidence_lines(row, settings)
        flags = flags_of(row, lines, settings)
        added.append(
            {
                **{f"evidence_{name}": lines[name] for name in EVIDENCE_LINES},
                "evidence_supported": sum(v == SUPPORTED for v in lines.values()),
                "evidence_assessed": sum(not v.startswith(NOT_ASSESSED) for v in lines.values()),
                "flags": ";".join(flags),
            }
        )
    schema = {
        **{f"evidence_{name}": pl.String for name in EVIDENCE_LINES},
        "evidence_supported": pl.Int64,
        "evidence_assessed": pl.Int64,
        "flags": pl.String,
    }
    return pl.concat([frame.drop([c for c in schema if c in frame.columns]), pl.DataFrame(added, schema=schema)], how="horizontal")


def tier(candidate: bool, flags: list[str]) -> int:
    """The list a row sits in within its direction: 0 = candidates without a demoting flag (the short list);
    1 = every other row; 2 = rows suspected of reverse causation or shown at lag 0 (not at the main lag)."""
    if "reverse_causation_suspected" in flags or "main_lag_not_estimable" in flags:
        return 2
    if candidate and not any(f in DEMOTING_FLAGS for f in flags):
        return 0
    return 1


def order_rows(scored: pl.DataFrame) -> pl.DataFrame:
    """Rank within direction: by `tier` (the short list of clean candidates first, rows suspected of reverse
    causation last), then the larger posterior z of the shrunken estimate on the row's side (`shrunken_z`),
    then the code. Protective rows come first in the file."""
    tiers = [tier(bool(c), (f or "").split(";")) for c, f in scored.select("candidate", "flags").iter_rows()]
    side_z = pl.when(pl.col("direction") == "protective").then(-pl.col("shrunken_z")).otherwise(pl.col("shrunken_z"))
    ordered = scored.with_columns(_tier=pl.Series(tiers, dtype=pl.Int64), _side_z=side_z.fill_nan(None)).sort(
        [pl.col("direction") == "harmful", "_tier", "_side_z", "atc_code"],
        descending=[False, False, True, False],
        nulls_last=True,
    )
    return ordered.with_columns(rank=pl.int_range(1, pl.len() + 1).over("direction")).drop("_tier", "_side_z")
