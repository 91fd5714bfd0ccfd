"""Release of the screen table and of the rankings built on it: row-level, over every structure we publish.

Why row-level: an estimate at full precision reveals the counts behind it (se^2 ~ 1/d + 1/(n - d)), so a
count is only hidden if its whole row is. `release_screen` therefore decides on the EXACT counts which fit
rows are shown, hides the others whole, and only then rounds what is shown:

1. primary: a row is hidden when one of its cells lies in [1, min_cell): exposed cases d, exposed non-cases
   n_exposed - d, unexposed cases n_cases - d, unexposed persons n_persons - n_exposed or unexposed
   non-cases. A row that arrives with a null count (already hidden upstream) counts as hidden;
2. complementary, repeated until nothing changes, over the structures a reader can difference:
   - sex (F + M = all within class x lag): never exactly one hidden row among F, M and all;
   - lags (the exposed at a longer lag are a subset of the exposed at a shorter one): for every pair of
     shown lags of a class x sex whose d, n_exposed or non-cases differ by 1 to min_cell - 1, one is hidden.
     The main lag is kept first (the ranking's headline estimates), then lag 0 (the screen's view), then the
     shorter lag;
   - ATC tree (per lag x sex; a class holds its substances' users): a shown ancestor is hidden when it
     differs from a shown descendant (any depth) by 1 to min_cell - 1, or when one of its direct children is
     hidden and the ancestor minus its shown direct children is from 1 to min_cell - 1. The ancestor is the
     side hidden because it is nearly equal to what is shown beneath it (little is lost) and the substances
     are what the ranking and the mechanisms use;
3. rounding of every shown count to `rounding_base` and of exposed person-years to whole years.

A hidden fitted row gets status `suppressed` and a reason (`small cell`, `complementary: sex|lag|tree`);
a row that was not fitted (`skipped`) keeps its status and reason, with its counts hidden all the same.
Releasing a released table changes nothing (checked by the tests). `release_ranking` hides in a ranking
every estimate that comes from a screen row the released screen hides.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from repurpose.release.policy import DisclosurePolicy, round_counts, round_person_years
from repurpose.schemas import lag_label

COUNTS = ("n_persons", "n_exposed", "n_cases", "n_exposed_cases")
ESTIMATES = ("hr", "ci_lower", "ci_upper", "log_hr", "se", "p_value", "q_value", "significant")
PERSON_YEARS = ("person_years_exposed",)
SUPPRESSED = "suppressed"
UPSTREAM = "hidden upstream"  # a row that arrived with a null count: hidden, its status left as it came
ATC_CODE_LENGTH = {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}


def _cells(d: int, e: int, c: int, n: int) -> tuple[int, ...]:
    """The cells of a fit's 2 x 2 table (exposure x case) and the margins a reader can difference."""
    return d, e - d, c - d, n - e, n - e - c + d, e


class _Rows:
    """The screen's rows as plain lists, with the hidden flag and reason of each."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.code = frame["atc_code"].to_list()
        self.level = [int(v) for v in frame["atc_level"].to_list()]
        self.lag = [float(v) for v in frame["lag_years"].to_list()]
        self.sex = frame["sex"].to_list()
        counts = [frame[c].to_list() for c in COUNTS]
        self.cells: list[tuple[int, ...] | None] = [
            None if None in (n, e, c, d) else _cells(d, e, c, n) for n, e, c, d in zip(*counts, strict=True)
        ]
        self.reason: list[str | None] = [None if cells is not None else UPSTREAM for cells in self.cells]

    def shown(self, i: int) -> bool:
        return self.reason[i] is None

    def hide(self, i: int, reason: str) -> bool:
        if self.reason[i] is not None:
            return False
        self.reason[i] = reason
        return True


def _small_difference(a: tuple[int, ...], b: tuple[int, ...], policy: DisclosurePolicy) -> bool:
    return any(policy.is_small(abs(x - y)) for x, y in zip(a, b, strict=True))


def _sex_rule(rows: _Rows, groups: Iterable[dict[str, int]]) -> bool:
    changed = False
    for group in groups:
        total, parts = group.get("all"), [group[s] for s in ("F", "M") if s in group]
        if total is None or len(parts) != 2:
            continue
        hidden_parts = [i for i in parts if not rows.shown(i)]
        if rows.shown(total) and len(hidden_parts) == 1:
            changed |= rows.hide(next(i for i in parts if rows.shown(i)), "complementary: sex")
        elif not rows.shown(total) and not hidden_parts:
            smaller = min(parts, key=lambda i: (rows.cells[i][0], rows.sex[i]))  # type: ignore[index]
            changed |= rows.hide(smaller, "complementary: sex")
    return changed


def _lag_rule(rows: _Rows, groups: Iterable[list[int]], policy: DisclosurePolicy) -> bool:
    def keep_order(i: int) -> tuple[bool, bool, float]:  # the largest is hidden first
        return rows.lag[i] != policy.main_lag_years, rows.lag[i] != 0.0, rows.lag[i]

    changed = False
    for group in groups:
        again = True
        while again:
            again = False
            shown = [i for i in group if rows.shown(i)]
            for a_index, a in enumerate(shown):
                for b in shown[a_index + 1 :]:
                    if _small_difference(rows.cells[a], rows.cells[b], policy):  # type: ignore[arg-type]
                        changed = again = rows.hide(max(a, b, key=keep_order), "complementary: lag")
                        break
                if again:
                    break
    return changed


def _tree_rule(rows: _Rows, groups: Iterable[dict[str, int]], policy: DisclosurePolicy) -> bool:
    changed = False
    for group in groups:
        codes = sorted(group, key=lambda code: (len(code), code))
        present = set(codes)
        children: dict[str, list[str]] = {}
        for code in codes:
            parents = [code[:n] for n in sorted(ATC_CODE_LENGTH.values(), reverse=True) if n < len(code)]
            parent = next((p for p in parents if p in present), None)
            if parent is not None:
                children.setdefault(parent, []).append(code)
        descendants: dict[str, list[str]] = {a: [] for a in children}  # in `codes` order, by prefix look-up
        lengths = sorted({len(a) for a in children})
        for code in codes:
            for n in lengths:
                if n < len(code) and code[:n] in descendants:
                    descendants[code[:n]].append(code)
        for ancestor in sorted(children, key=lambda code: (-len(code), code)):  # deepest first: it cascades up
            a = group[ancestor]
            if not rows.shown(a):
                continue
            cells_a = rows.cells[a]
            shown_below = [group[c] for c in descendants[ancestor] if rows.shown(group[c])]
            if any(_small_difference(cells_a, rows.cells[i], policy) for i in shown_below):  # type: ignore[arg-type]
                changed |= rows.hide(a, "complementary: tree")
                continue
            direct = [group[c] for c in children[ancestor]]
            if all(rows.shown(i) for i in direct):
                continue
            shown_direct = [rows.cells[i] for i in direct if rows.shown(i)]
            residual = [x - sum(cells[k] for cells in shown_direct) for k, x in enumerate(cells_a)]  # type: ignore[index, arg-type]
            if any(policy.is_small(r) for r in residual):
                changed |= rows.hide(a, "complementary: tree")
    return changed


def screen_hidden_reasons(frame: pl.DataFrame, policy: DisclosurePolicy) -> list[str | None]:
    """Per row of a screen table, why it is hidden (None: shown). Decided on the counts as given (exact)."""
    rows = _Rows(frame)
    for i, cells in enumerate(rows.cells):
        if cells is not None and any(policy.is_small(x) for x in cells):
            rows.hide(i, "small cell")
    by_class_lag: dict[tuple, dict[str, int]] = {}
    by_class_sex: dict[tuple, list[int]] = {}
    by_lag_sex: dict[tuple, dict[str, int]] = {}
    for i in range(len(rows.code)):
        by_class_lag.setdefault((rows.code[i], rows.level[i], rows.lag[i]), {})[rows.sex[i]] = i
        by_class_sex.setdefault((rows.code[i], rows.level[i], rows.sex[i]), []).append(i)
        by_lag_sex.setdefault((rows.lag[i], rows.sex[i]), {})[rows.code[i]] = i
    lag_groups = [sorted(g, key=lambda i: rows.lag[i]) for g in by_class_sex.values() if len(g) > 1]
    tree_groups = list(by_lag_sex.values())
    sex_groups = list(by_class_lag.values())
    while True:  # each pass hides at least one more row or stops
        changed = _sex_rule(rows, sex_groups)
        changed |= _lag_rule(rows, lag_groups, policy)
        changed |= _tree_rule(rows, tree_groups, policy)
        if not changed:
            return rows.reason


def _hide(frame: pl.DataFrame, reasons: Sequence[str | None]) -> pl.DataFrame:
    hidden = pl.Series("_hidden", [r is not None for r in reasons], dtype=pl.Boolean)
    reason = pl.Series("_reason", list(reasons), dtype=pl.String)
    out = frame.with_columns(hidden, reason)
    nulled = [c for c in (*COUNTS, *PERSON_YEARS, *ESTIMATES) if c in frame.columns]
    out = out.with_columns([pl.when(pl.col("_hidden")).then(None).otherwise(pl.col(c)).alias(c) for c in nulled])
    if "status" in out.columns:
        relabel = pl.col("_hidden") & (pl.col("_reason") != UPSTREAM) & (pl.col("status") != "skipped")
        out = out.with_columns(status=pl.when(relabel).then(pl.lit(SUPPRESSED)).otherwise(pl.col("status")))
        if "reason" in out.columns:
            out = out.with_columns(reason=pl.when(relabel).then(pl.col("_reason")).otherwise(pl.col("reason")))
    return out.drop("_hidden", "_reason")


def release_screen(frame: pl.DataFrame, policy: DisclosurePolicy) -> pl.DataFrame:
    """The released screen table: rows hidden by the rules (module doc), then counts and person-years rounded."""
    released = _hide(frame, screen_hidden_reasons(frame, policy))
    released = round_counts(released, [c for c in COUNTS if c in frame.columns], policy.rounding_base)
    return round_person_years(released, PERSON_YEARS)


def release_summary(frame: pl.DataFrame, policy: DisclosurePolicy) -> dict[str, Any]:
    """The policy and the number of rows hidden per reason (for disclosure.json, the report and manifests)."""
    reasons = Counter(r for r in screen_hidden_reasons(frame, policy) if r is not None)
    return {**policy.as_dict(), "rows": frame.height, "rows_hidden": dict(sorted(reasons.items()))}


# ------------------------------------------------------------------------------------------------ rankings
def _hidden_fits(released_screen: pl.DataFrame) -> set[tuple[str, float, str]]:
    """(atc_code, lag_years, sex) of every row the released screen hides (a null count)."""
    hidden = released_screen.filter(pl.any_horizontal([pl.col(c).is_null() for c in COUNTS]))
    return {(c, float(lag), s) for c, lag, s in hidden.select("atc_code", "lag_years", "sex").iter_rows()}


def _null_where(frame: pl.DataFrame, columns: Iterable[str], mask: list[bool]) -> pl.DataFrame:
    columns = [c for c in columns if c in frame.columns]
    if not columns or not any(mask):
        return frame
    flag = pl.Series("_mask", mask, dtype=pl.Boolean)
    return frame.with_columns(flag).with_columns(
        [pl.when(pl.col("_mask")).then(None).otherwise(pl.col(c)).alias(c) for c in columns]
    ).drop("_mask")


MAIN_ESTIMATE_COLUMNS = (
    "hr", "ci_lower", "ci_upper", "p_value", "q_value", "hr_shrunken", "ci_lower_shrunken", "ci_upper_shrunken",
    "calibrated_p", "calibrated_q", "calibrated_hr",
    "calibrated_ci_lower", "calibrated_ci_upper", "e_value", "e_value_ci", "n_exposed", "n_exposed_cases",
    "hr_confirmation", "ci_lower_confirmation", "ci_upper_confirmation",
)  # fmt: skip
"""Ranking columns estimated on the main fit of a class (its screen row at the ranking's lag, both sexes)."""

COMPARATOR_ESTIMATE_COLUMNS = ("hr_active_comparator", "ci_lower_active_comparator", "ci_upper_active_comparator")
ACROSS_LAG_COLUMNS = ("lag_retained_fraction", "lag_fade_p")
SIBLING_COLUMNS = ("sibling_agreement", "sibling_pooled_hr", "sibling_pooled_p")


def release_ranking(
    ranking: pl.DataFrame,
    released_screen: pl.DataFrame,
    policy: DisclosurePolicy,
    *,
    lags: Sequence[float],
    count_columns: Sequence[str],
) -> pl.DataFrame:
    """Hide in a drug ranking every estimate that comes from a screen row the released screen hides; round counts.

    Driven by column names (extra columns are left as they are): the main estimate (at the row's `lag_years`
    when the ranking has it, else the policy's main lag) with the columns of `MAIN_ESTIMATE_COLUMNS`;
    `hr_lag{X}` and `hr_separated_lag{X}` from the lag-X row (and lag 0); the across-lag summaries when any
    lag row is hidden; `hr_F`/`hr_M` and the sex heterogeneity from the sex rows at the main lag; the sibling
    pooling when a sibling class is hidden; the active comparator when its persons, cases or non-cases are
    from 1 to min_cell - 1. Counts (`count_columns`) are then rounded like the screen's.
    """
    hidden = _hidden_fits(released_screen)
    status = {(c, float(lag), s): st for c, lag, s, st in released_screen.select("atc_code", "lag_years", "sex", "status").iter_rows()}
    level_codes: dict[int, set[str]] = {}
    for code, level in released_screen.select("atc_code", "atc_level").unique().iter_rows():
        level_codes.setdefault(int(level), set()).add(code)
    codes = ranking["atc_code"].to_list()
    default_lag = policy.main_lag_years if policy.main_lag_years is not None else 0.0
    row_lags = ranking["lag_years"].to_list() if "lag_years" in ranking.columns else [None] * ranking.height
    main_lags = [default_lag if lag is None else float(lag) for lag in row_lags]

    def is_hidden(code: str, lag: float, sex: str = "all") -> bool:
        return (code, float(lag), sex) in hidden

    def main_hidden(code: str, lag: float) -> bool:  # the ranking falls back to lag 0 when the main fit is not ok
        return is_hidden(code, lag) or (status.get((code, lag, "all")) != "ok" and is_hidden(code, 0.0))

    def siblings_hidden(code: str, lag: float) -> bool:
        level = next((lv for lv, n in ATC_CODE_LENGTH.items() if n == len(code)), 0)
        if level <= 1:
            return False
        parent = code[: ATC_CODE_LENGTH[level - 1]]
        return any(is_hidden(c, lag) for c in level_codes.get(level, ()) if c != code and c.startswith(parent))

    out = ranking
    mains = [main_hidden(c, lag) for c, lag in zip(codes, main_lags, strict=True)]
    out = _null_where(out, MAIN_ESTIMATE_COLUMNS, mains)
    for lag in lags:
        label = lag_label(lag)
        out = _null_where(out, [f"hr_lag{label}"], [is_hidden(c, lag) for c in codes])
        out = _null_where(out, [f"hr_separated_lag{label}"], [is_hidden(c, lag) or is_hidden(c, 0.0) for c in codes])
    out = _null_where(out, ACROSS_LAG_COLUMNS, [any(is_hidden(c, lag) for lag in lags) for c in codes])
    female = [is_hidden(c, lag, "F") for c, lag in zip(codes, main_lags, strict=True)]
    male = [is_hidden(c, lag, "M") for c, lag in zip(codes, main_lags, strict=True)]
    out = _null_where(out, ["hr_F"], female)
    out = _null_where(out, ["hr_M"], male)
    out = _null_where(out, ["sex_heterogeneity_p"], [f or m for f, m in zip(female, male, strict=True)])
    out = _null_where(out, SIBLING_COLUMNS, [siblings_hidden(c, lag) for c, lag in zip(codes, main_lags, strict=True)])
    if {"n_active_comparator", "n_active_comparator_cases"} <= set(out.columns):
        persons, cases = out["n_active_comparator"].to_list(), out["n_active_comparator_cases"].to_list()
        small = [
            policy.is_small(n) or policy.is_small(c) or (n is not None and c is not None and policy.is_small(n - c))
            for n, c in zip(persons, cases, strict=True)
        ]
        out = _null_where(out, [*COMPARATOR_ESTIMATE_COLUMNS, "n_active_comparator", "n_active_comparator_cases"], small)
    counts = [c for c in count_columns if c in out.columns]
    out = out.with_columns(
        [pl.when((pl.col(c) >= 1) & (pl.col(c) < policy.min_cell)).then(None).otherwise(pl.col(c)).alias(c) for c in counts]
    )
    return round_counts(out, counts, policy.rounding_base)
