"""An attacker's library (tests only): read what leaves the secure server and return the small cells it reveals.

Every attack reads only released files (the export folder and its manifest, the report's HTML and tables, a
site package, the answer to a federation round) and returns the cells it claims, each an interval
[lo, hi] for a count the release hides or never shows (a difference of two shown counts). A claim becomes a
*recovery* only when the interval lies inside [1, min_cell - 1] (an exact value for exact releases) and the
truth - the unreleased internal files under results/ (the screen's raw parts or internal fits, cohort flow,
validation report) - lies in it. So the figures are real recoveries, never guesses.

The attacker's knowledge model (independent of how the defence is written):
- a shown count c under rounding base b (from the manifest/provenance when stamped, else the config's
  `disclosure.rounding_base`, default 1) is the interval [c - floor(b/2), c + floor((b-1)/2)] (halves up);
  a null, an empty cell or text such as `<5` is hidden: [0, inf);
- a shown SE of a screen fit gives its exposed cases d from se^2 = 1/d + 1/(n_cases - d) (1/se^2 without
  n_cases), nearest integer; the SE comes from the CI width when not shown, or from |log HR| and p.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import yaml

KEYS = ["atc_code", "atc_level", "lag_years", "sex"]
COUNTS = ["n_persons", "n_exposed", "n_cases", "n_exposed_cases"]
INF = 10**12
Z975 = 1.959963984540054
# ATC code length per level (A, A10, A10B, A10BA, A10BA02).
CODE_LENGTH = {1: 1, 2: 3, 3: 4, 4: 5, 5: 7}


@dataclass(frozen=True)
class Policy:
    """What the attacker knows of the release policy: the minimum cell and the rounding base."""

    min_cell: int
    base: int = 1


# --------------------------------------------------------------------------------------------------
# Reading released values
# --------------------------------------------------------------------------------------------------


def as_count(series: pl.Series) -> pl.Series:
    """Counts as Int64 with nulls for hidden cells, whatever the format (Int64, float, text `<5`, `1,234`)."""
    if series.dtype == pl.String:
        text = series.str.strip_chars().str.replace_all(",", "").str.replace_all("\u00a0", "")
        return text.cast(pl.Float64, strict=False).round(0).cast(pl.Int64).alias(series.name)
    if series.dtype.is_numeric():
        return series.cast(pl.Float64).round(0).cast(pl.Int64)
    return pl.Series(series.name, [None] * len(series), dtype=pl.Int64)


def as_float(series: pl.Series) -> pl.Series:
    """Numbers as Float64 (text that is not a number, e.g. `<5` or `suppressed`, becomes null)."""
    if series.dtype == pl.String:
        return series.str.strip_chars().str.replace_all(",", "").cast(pl.Float64, strict=False)
    if series.dtype.is_numeric():
        return series.cast(pl.Float64)
    return pl.Series(series.name, [None] * len(series), dtype=pl.Float64)


def read_table(path: Path) -> pl.DataFrame:
    """A released CSV or Parquet table, every CSV column as text (the attacker parses values itself)."""
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    return pl.read_csv(path, infer_schema=False)


def _find_key(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = _find_key(item, key)
            if found is not None:
                return found
    return None


def stamped_policy(folders: Iterable[Path], config: Mapping[str, Any]) -> Policy:
    """The policy stamped in a manifest or provenance (JSON, YAML or CSV) under `folders`, else the config's."""
    disclosure = dict(config.get("disclosure") or {})
    base, min_cell = None, None
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or not any(w in path.name for w in ("manifest", "provenance", "policy")):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            data: Any = None
            try:
                data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) if path.suffix in (
                    ".yaml", ".yml") else None
            except (ValueError, yaml.YAMLError):
                data = None
            if data is None and path.suffix == ".csv":
                frame = pl.read_csv(path, infer_schema=False)
                data = {c: frame[c].to_list()[0] for c in frame.columns if frame.height}
            if data is not None:
                base = base or _find_key(data, "rounding_base")
                min_cell = min_cell or _find_key(data, "min_cell")
    base = base or disclosure.get("rounding_base") or 1
    min_cell = min_cell or disclosure.get("min_cell") or 5
    return Policy(min_cell=int(float(min_cell)), base=int(float(base)))


def interval_columns(frame: pl.DataFrame, columns: Iterable[str], base: int) -> pl.DataFrame:
    """Add `<c>_lo`, `<c>_hi` for each count column: the attacker's interval (hidden: [0, INF])."""
    out = []
    for c in columns:
        value = pl.col(c)
        out += [
            pl.when(value.is_null()).then(0).otherwise(pl.max_horizontal(value - base // 2, 0)).alias(f"{c}_lo"),
            pl.when(value.is_null()).then(INF).otherwise(value + (base - 1) // 2).alias(f"{c}_hi"),
        ]
    return frame.with_columns(out)


def screen_rows(frame: pl.DataFrame, *, main_lag: float | None = None) -> pl.DataFrame | None:
    """A released table with the screen's keys, as KEYS + COUNTS + se (null where not shown), or None.

    A drug ranking (no sex column) describes the both-sexes fit at its row's `lag_years` (at the main lag when
    it has no such column, as before issue 19)."""
    if not {"atc_code", "atc_level"} <= set(frame.columns):
        return None
    if "lag_years" not in frame.columns:  # an older drug ranking: every row at the main lag
        if main_lag is None:
            return None
        frame = frame.with_columns(lag_years=pl.lit(main_lag))
    if "sex" not in frame.columns:  # a drug ranking: the both-sexes fit at the lag its row states
        frame = frame.with_columns(sex=pl.lit("all"))
    out = frame.select(
        pl.col("atc_code").cast(pl.String),
        as_count(frame["atc_level"]).alias("atc_level"),
        as_float(frame["lag_years"]).alias("lag_years"),
        pl.col("sex").cast(pl.String),
    )
    for c in COUNTS:
        out = out.with_columns(as_count(frame[c]) if c in frame.columns else pl.lit(None, pl.Int64).alias(c))
    for c in ("se", "ci_lower", "ci_upper", "log_hr", "hr", "p_value"):
        out = out.with_columns(as_float(frame[c]) if c in frame.columns else pl.lit(None, pl.Float64).alias(c))
    return out.with_columns(se=se_shown())


def se_shown() -> pl.Expr:
    """The SE as shown, else from the CI width, else from |log HR| and the two-sided p."""
    log_hr = pl.coalesce(pl.col("log_hr"), pl.col("hr").log())
    from_ci = (pl.col("ci_upper") / pl.col("ci_lower")).log() / (2 * Z975)
    z = pl.col("p_value").map_elements(_z_of_p, return_dtype=pl.Float64)
    from_p = log_hr.abs() / z
    se = pl.coalesce(pl.col("se"), from_ci, from_p)
    return pl.when(se.is_finite() & (se > 0)).then(se).otherwise(None)


def _z_of_p(p: float) -> float | None:
    if p is None or not 0 < p < 1:
        return None
    low, high = 0.0, 40.0  # invert 2 * (1 - Phi(z)) = p by bisection (no scipy needed here)
    for _ in range(100):
        mid = (low + high) / 2
        if math.erfc(mid / math.sqrt(2)) > p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def invert_se(se: float | None, n_cases: float | None) -> int | None:
    """Exposed cases d from se^2 = 1/d + 1/(n_cases - d) (smaller root), or 1/se^2 when n_cases is unknown."""
    if se is None or not se > 0:
        return None
    v = se * se
    if n_cases is None or n_cases <= 0:
        return round(1 / v)
    disc = n_cases * n_cases - 4 * n_cases / v
    d = (n_cases - math.sqrt(disc)) / 2 if disc >= 0 else n_cases / 2
    return round(d)


def knowledge(rows: pl.DataFrame, policy: Policy, *, use_se: bool) -> pl.DataFrame:
    """One row per fit: the interval of each count (`<c>_lo`, `<c>_hi`), narrowed to the SE-derived exposed
    cases where `use_se` and that value is consistent with the shown interval."""
    rows = rows.unique(subset=KEYS, keep="first")
    k = interval_columns(rows, COUNTS, policy.base)
    if not use_se:
        return k
    n_cases = pl.when(pl.col("n_cases_hi") < INF).then((pl.col("n_cases_lo") + pl.col("n_cases_hi")) / 2)
    k = k.with_columns(
        pl.struct(se=pl.col("se"), n=n_cases).map_elements(
            lambda s: invert_se(s["se"], s["n"]), return_dtype=pl.Int64).alias("d_se")
    )
    fits = (pl.col("d_se") >= pl.col("n_exposed_cases_lo")) & (pl.col("d_se") <= pl.col("n_exposed_cases_hi"))
    return k.with_columns(
        pl.when(fits.fill_null(False)).then(pl.col("d_se")).otherwise(pl.col("n_exposed_cases_lo")).alias("n_exposed_cases_lo"),
        pl.when(fits.fill_null(False)).then(pl.col("d_se")).otherwise(pl.col("n_exposed_cases_hi")).alias("n_exposed_cases_hi"),
    )


def combine(frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """The union of several sources' knowledge: per fit the intersection of every source's interval."""
    stacked = pl.concat([f.select(KEYS + [f"{c}_{s}" for c in COUNTS for s in ("lo", "hi")]) for f in frames])
    return stacked.group_by(KEYS).agg(
        [pl.col(f"{c}_lo").max() for c in COUNTS] + [pl.col(f"{c}_hi").min() for c in COUNTS]
    )


# --------------------------------------------------------------------------------------------------
# Truth (internal, unreleased) and the recovery rule
# --------------------------------------------------------------------------------------------------


def screen_truth(results: Path) -> pl.DataFrame:
    """Exact counts per fit from the internal files: screen/fits.parquet when present, else the raw parts."""
    internal = results / "screen" / "fits.parquet"
    paths = [internal] if internal.is_file() else sorted((results / "screen" / "parts").rglob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no internal screen counts under {results / 'screen'}")
    frame = pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
    return frame.select(
        pl.col("atc_code").cast(pl.String), pl.col("atc_level").cast(pl.Int64),
        pl.col("lag_years").cast(pl.Float64), pl.col("sex").cast(pl.String),
        *[pl.col(c).cast(pl.Int64).alias(f"{c}_true") for c in COUNTS],
    ).unique(subset=KEYS, keep="first")  # fmt: skip


def recovered(lo: pl.Expr, hi: pl.Expr, truth: pl.Expr, min_cell: int, *, signed: bool = False) -> pl.Expr:
    """The claim [lo, hi] pins a small cell ([1, min_cell - 1]; also [-(min_cell-1), -1] when `signed`) and the
    truth lies in it."""
    inside = (lo >= 1) & (hi <= min_cell - 1)
    if signed:
        inside = inside | ((lo >= -(min_cell - 1)) & (hi <= -1))
    return (inside & (truth >= lo) & (truth <= hi)).fill_null(False)


def already_small(column: str, min_cell: int) -> pl.Expr:
    """The shown interval of `column` is itself inside the small range (counted by `shown_small`, not again)."""
    return (pl.col(f"{column}_lo") >= 1) & (pl.col(f"{column}_hi") <= min_cell - 1)


# --------------------------------------------------------------------------------------------------
# Screen attacks: each takes knowledge (see `knowledge`), the truth and the policy; returns the count
# --------------------------------------------------------------------------------------------------


def attack_shown_small(k: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """Counts shown as they are (or as a rounded value) that are themselves small."""
    j = k.join(truth, on=KEYS, how="inner")
    return int(sum(
        j.select(recovered(pl.col(f"{c}_lo"), pl.col(f"{c}_hi"), pl.col(f"{c}_true"), policy.min_cell).sum()).item()
        for c in COUNTS
    ))  # fmt: skip


def _with_noncases(frame: pl.DataFrame, suffix: str = "") -> pl.DataFrame:
    """Exposed non-cases (n_exposed - n_exposed_cases) as an interval (and its truth)."""
    lo = pl.max_horizontal(pl.col(f"n_exposed_lo{suffix}") - pl.col(f"n_exposed_cases_hi{suffix}"), 0)
    hi = pl.col(f"n_exposed_hi{suffix}") - pl.col(f"n_exposed_cases_lo{suffix}")
    out = frame.with_columns(lo.alias(f"n_noncases_lo{suffix}"), hi.alias(f"n_noncases_hi{suffix}"))
    if f"n_exposed_true{suffix}" in frame.columns:
        out = out.with_columns(
            (pl.col(f"n_exposed_true{suffix}") - pl.col(f"n_exposed_cases_true{suffix}")).alias(f"n_noncases_true{suffix}"))
    return out


def attack_within_row(k: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """n_exposed - n_exposed_cases, n_cases - n_exposed_cases and n_persons - n_exposed of one row."""
    j = k.join(truth, on=KEYS, how="inner")
    total = 0
    for whole, part in (("n_exposed", "n_exposed_cases"), ("n_cases", "n_exposed_cases"), ("n_persons", "n_exposed")):
        lo = pl.col(f"{whole}_lo") - pl.col(f"{part}_hi")
        hi = pl.col(f"{whole}_hi") - pl.col(f"{part}_lo")
        t = pl.col(f"{whole}_true") - pl.col(f"{part}_true")
        total += int(j.select(recovered(lo, hi, t, policy.min_cell).sum()).item())
    return total


def attack_across_lags(k: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """Every pair of lags of one class x sex: differences of exposed, exposed cases and exposed non-cases."""
    j = _with_noncases(k.join(truth, on=KEYS, how="inner"))
    pairs = j.join(j, on=["atc_code", "atc_level", "sex"], suffix="_b").filter(pl.col("lag_years") < pl.col("lag_years_b"))
    total = 0
    for c in ("n_exposed", "n_exposed_cases", "n_noncases"):
        lo = pl.col(f"{c}_lo") - pl.col(f"{c}_hi_b")
        hi = pl.col(f"{c}_hi") - pl.col(f"{c}_lo_b")
        t = pl.col(f"{c}_true") - pl.col(f"{c}_true_b")
        total += int(pairs.select(recovered(lo, hi, t, policy.min_cell, signed=True).sum()).item())
    return total


def attack_across_sex(k: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """all - F = M and all - M = F, for every count (a hidden stratum pinned by the shown other two)."""
    j = k.join(truth, on=KEYS, how="inner")
    by = ["atc_code", "atc_level", "lag_years"]
    every = j.filter(pl.col("sex") == "all")
    total = 0
    for target, other in (("F", "M"), ("M", "F")):
        t = j.filter(pl.col("sex") == target).join(every, on=by, suffix="_all").join(
            j.filter(pl.col("sex") == other), on=by, suffix="_o")
        for c in COUNTS:
            lo = pl.max_horizontal(pl.col(f"{c}_lo_all") - pl.col(f"{c}_hi_o"), pl.col(f"{c}_lo"))
            hi = pl.min_horizontal(pl.col(f"{c}_hi_all") - pl.col(f"{c}_lo_o"), pl.col(f"{c}_hi"))
            hit = recovered(lo, hi, pl.col(f"{c}_true"), policy.min_cell) & ~already_small(c, policy.min_cell)
            total += int(t.select(hit.sum()).item())
    return total


def attack_across_tree(k: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """A parent class minus its shown children (same lag and sex) pins a single hidden child; and a parent
    minus one child is the rest of its children (persons seldom use two substances of one class)."""
    j = k.join(truth, on=KEYS, how="inner").filter(pl.col("atc_level") > 1)
    parent_length = pl.col("atc_level").map_elements(lambda lv: CODE_LENGTH.get(lv - 1, 0), return_dtype=pl.Int64)
    children = j.with_columns(
        parent_code=pl.col("atc_code").str.slice(0, parent_length), parent_level=pl.col("atc_level") - 1)
    parents = j.rename({c: f"{c}_p" for c in j.columns if c not in ("atc_code", "atc_level", "lag_years", "sex")})
    family = children.join(parents, left_on=["parent_code", "parent_level", "lag_years", "sex"],
                           right_on=["atc_code", "atc_level", "lag_years", "sex"], how="inner")
    group = ["parent_code", "parent_level", "lag_years", "sex"]
    total = 0
    for c in ("n_exposed", "n_exposed_cases"):
        sums = family.with_columns(
            pl.col(f"{c}_lo").sum().over(group).alias("sum_lo"),
            pl.col(f"{c}_hi").clip(upper_bound=INF).sum().over(group).alias("sum_hi"),
        )
        other_lo, other_hi = pl.col("sum_lo") - pl.col(f"{c}_lo"), pl.col("sum_hi") - pl.col(f"{c}_hi")
        lo = pl.max_horizontal(pl.col(f"{c}_lo_p") - other_hi, pl.col(f"{c}_lo"))
        hi = pl.min_horizontal(pl.col(f"{c}_hi_p") - other_lo, pl.col(f"{c}_hi"))
        hit = recovered(lo, hi, pl.col(f"{c}_true"), policy.min_cell) & ~already_small(c, policy.min_cell)
        total += int(sums.select(hit.sum()).item())
        rest_lo, rest_hi = pl.col(f"{c}_lo_p") - pl.col(f"{c}_hi"), pl.col(f"{c}_hi_p") - pl.col(f"{c}_lo")
        total += int(family.select(
            recovered(rest_lo, rest_hi, pl.col(f"{c}_true_p") - pl.col(f"{c}_true"), policy.min_cell).sum()).item())
    return total


def attack_se_inversion(rows: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """Hidden exposed cases recovered from the shown SE (or CI, or HR and p) of the fit."""
    plain = knowledge(rows, policy, use_se=False)
    with_se = knowledge(rows, policy, use_se=True)
    j = with_se.join(plain.select(KEYS + ["n_exposed_cases_lo", "n_exposed_cases_hi"]), on=KEYS, suffix="_shown")
    j = j.join(truth, on=KEYS, how="inner")
    small_shown = (pl.col("n_exposed_cases_lo_shown") >= 1) & (pl.col("n_exposed_cases_hi_shown") <= policy.min_cell - 1)
    hit = recovered(pl.col("d_se"), pl.col("d_se"), pl.col("n_exposed_cases_true"), policy.min_cell) & ~small_shown
    return int(j.select(hit.sum()).item())


SCREEN_ATTACKS = {
    "shown small counts": attack_shown_small,
    "within a row": attack_within_row,
    "across lags": attack_across_lags,
    "across sex": attack_across_sex,
    "across the ATC tree": attack_across_tree,
}


# --------------------------------------------------------------------------------------------------
# Summary tables (cohort flow, validation): a linear system solved by interval propagation
# --------------------------------------------------------------------------------------------------

Cell = tuple[str, str]  # (table, item)
ITEM_ALIASES = {"read": "total", "rows read": "total"}  # how the report's HTML words a table's total


def summary_truth(flow: Mapping[str, Any], validation: Mapping[str, Any]) -> dict[Cell, int]:
    """The exact (table, item) counts of the cohort flow and validation report (internal JSON files)."""
    cells: dict[Cell, int] = {("flow", "total"): flow["persons_in_population"], ("flow", "in cohort"): flow["persons_in_cohort"]}
    for step, n in flow["excluded"].items():
        cells[("flow", f"excluded: {step.replace('_', ' ')}")] = n
    for name, total, parts in (
        ("events by sex", flow["events"], flow.get("events_by_sex", {})),
        ("events by outcome source", flow["events"], flow.get("events_by_outcome_source", {})),
        ("exit reasons", flow["persons_in_cohort"], flow.get("exit_reasons", {})),
    ):
        cells[(name, "total")] = total
        cells.update({(name, str(k)): v for k, v in parts.items()})
    for extract, entry in validation["extracts"].items():
        cells[(extract, "total")] = entry["rows_read"]
        cells[(extract, "kept")] = entry["rows_kept"]
        cells[(extract, "rejected")] = entry["rows_rejected"]
        cells[(f"{extract} rejects", "total")] = entry["rows_rejected"]
        cells.update({(f"{extract} rejects", reason): n for reason, n in entry["rejected_by_reason"].items()})
    return cells


def summary_cells(frame: pl.DataFrame, policy: Policy, prefix: str = "") -> dict[Cell, tuple[float, float]]:
    """(table, item) -> interval from a released long table (table, item, n); rows of other sites skipped."""
    if not {"table", "item", "n"} <= set(frame.columns):
        return {}
    out: dict[Cell, tuple[float, float]] = {}
    counts = as_count(frame["n"]).to_list()
    for table, item, n in zip(frame["table"].cast(pl.String).to_list(), frame["item"].cast(pl.String).to_list(), counts, strict=True):
        if prefix and not table.startswith(prefix):
            continue
        table, item = table.removeprefix(prefix), ITEM_ALIASES.get(item, item)
        out[(table, item)] = (0.0, math.inf) if n is None else (max(n - policy.base // 2, 0), n + (policy.base - 1) // 2)
    return out


def summary_equations(cells: Iterable[Cell]) -> list[list[tuple[int, Cell]]]:
    """The additive structure an attacker knows: each table's total is the sum of its other items (the flow:
    total = exclusions + in cohort; an extract: total = kept + rejected), and the tables' shared totals."""
    cells = set(cells)
    tables: dict[str, list[Cell]] = {}
    for cell in cells:
        tables.setdefault(cell[0], []).append(cell)
    equations = []
    for table, items in tables.items():
        if (table, "total") in cells:
            parts = [c for c in items if c[1] != "total"]
            if table in {t.removesuffix(" rejects") for t in tables if t.endswith(" rejects")}:
                parts = [c for c in parts if c[1] in ("kept", "rejected")]
            if parts:
                equations.append([(1, (table, "total"))] + [(-1, c) for c in parts])
    same = [
        (("events by sex", "total"), ("events by outcome source", "total")),
        (("events by sex", "total"), ("exit reasons", "outcome")),
        (("events by sex", "total"), ("exit reasons", "ms")),
        (("exit reasons", "total"), ("flow", "in cohort")),
        (("population", "kept"), ("flow", "total")),
    ] + [((f"{t}", "rejected"), (f"{t} rejects", "total")) for t in tables if f"{t} rejects" in tables]
    equations += [[(1, a), (-1, b)] for a, b in same if a in cells and b in cells]
    return equations


def propagate(cells: dict[Cell, tuple[float, float]], equations: list[list[tuple[int, Cell]]]) -> dict[Cell, tuple[float, float]]:
    """Narrow every interval with every equation (sum of coef * cell = 0) until nothing changes."""
    bounds = dict(cells)
    for _ in range(100):
        changed = False
        for equation in equations:
            for coef, cell in equation:
                lo = hi = 0.0
                for other_coef, other in equation:
                    if other is cell:
                        continue
                    a, b = bounds[other]
                    terms = (-other_coef * a, -other_coef * b)
                    lo, hi = lo + min(terms), hi + max(terms)
                new = sorted((lo / coef, hi / coef))
                old = bounds[cell]
                narrowed = (max(old[0], new[0]), min(old[1], new[1]))
                if narrowed != old and narrowed[0] <= narrowed[1]:
                    bounds[cell], changed = narrowed, True
        if not changed:
            break
    return bounds


def attack_summaries(sources: list[dict[Cell, tuple[float, float]]], truth: Mapping[Cell, int], policy: Policy) -> int:
    """Hidden flow/validation cells pinned by the linear system over the union of `sources`."""
    cells: dict[Cell, tuple[float, float]] = {}
    for source in sources:
        for cell, (lo, hi) in source.items():
            old = cells.get(cell, (0.0, math.inf))
            cells[cell] = (max(old[0], lo), min(old[1], hi))
    shown = dict(cells)
    solved = propagate(cells, summary_equations(cells))
    hits = 0
    for cell, (lo, hi) in solved.items():
        was_small = 1 <= shown[cell][0] and shown[cell][1] <= policy.min_cell - 1
        if cell in truth and not was_small and 1 <= lo and hi <= policy.min_cell - 1 and lo <= truth[cell] <= hi:
            hits += 1
        elif cell in truth and was_small and shown[cell][0] <= truth[cell] <= shown[cell][1]:
            hits += 1  # shown small
    return hits


# --------------------------------------------------------------------------------------------------
# The HTML report: every table, and the numbers of its summary text
# --------------------------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """Collects the text of every <table> (rows of cells) and of everything outside tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._depth = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._depth += 1
            self.tables.append([])
        elif tag == "tr" and self._depth:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(self._skip - 1, 0)
        elif tag == "table":
            self._depth = max(self._depth - 1, 0)
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[-1].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._cell is not None:
            self._cell.append(data)
        elif not self._depth:
            self.text.append(data)


def html_tables(path: Path) -> tuple[list[pl.DataFrame], str]:
    """Every table of an HTML page as a text frame (first row = header), and the page's other text."""
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    frames = []
    for rows in parser.tables:
        if len(rows) < 2:
            continue
        header = [h or f"column_{i}" for i, h in enumerate(rows[0])]
        header = [h if header.count(h) == 1 else f"{h}_{i}" for i, h in enumerate(header)]
        body = [r + [""] * (len(header) - len(r)) for r in rows[1:]]
        frames.append(pl.DataFrame([r[: len(header)] for r in body], schema=header, orient="row"))
    return frames, " ".join(" ".join(parser.text).split())


def normalise_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Map a shown table's headers (`ATC code`, `Exposed cases`, `n`) to the file columns when recognisable."""
    names = {
        "atc_code": ("atc", "atc code", "code", "class"), "atc_level": ("level", "atc level"),
        "lag_years": ("lag", "lag (years)", "lag years"), "sex": ("sex",),
        "n_exposed": ("exposed", "n exposed"), "n_exposed_cases": ("exposed cases", "n exposed cases"),
        "n_cases": ("cases", "n cases"), "n_persons": ("persons", "n persons"),
        "table": ("table", "extract"), "item": ("item", "step", "rows"), "n": ("n", "count", "persons / rows"),
    }  # fmt: skip
    rename = {}
    for column in frame.columns:
        key = column.strip().lower().replace("_", " ")
        for target, aliases in names.items():
            if (key == target.replace("_", " ") or key in aliases) and target not in frame.columns and target not in rename.values():
                rename[column] = target
                break
    return frame.rename(rename)


# --------------------------------------------------------------------------------------------------
# Collecting every released source
# --------------------------------------------------------------------------------------------------


@dataclass
class Release:
    """What left the server, by source: screen-like rows and (table, item) summary cells."""

    policy: Policy
    screens: dict[str, pl.DataFrame] = field(default_factory=dict)
    summaries: dict[str, dict[Cell, tuple[float, float]]] = field(default_factory=dict)


def _add_table(release: Release, source: str, frame: pl.DataFrame, main_lag: float) -> None:
    frame = normalise_columns(frame)
    rows = screen_rows(frame, main_lag=main_lag)
    if rows is not None and rows.height:
        release.screens[source] = pl.concat([release.screens[source], rows]) if source in release.screens else rows
    cells = summary_cells(frame, release.policy)
    if cells:
        release.summaries.setdefault(source, {}).update(cells)


def read_release(export_dir: Path | None, report_dir: Path | None, package_dir: Path | None,
                 config: Mapping[str, Any]) -> Release:
    """Every released table of the export folder, the report (HTML and tables/*.csv) and a site package."""
    main_lag = float((config.get("candidates") or {}).get("main_lag_years", 2))
    folders = [d for d in (export_dir, package_dir) if d is not None]
    release = Release(policy=stamped_policy(folders, config))
    for name, folder in (("export", export_dir), ("site package", package_dir)):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix in (".csv", ".parquet") and "manifest" not in path.name:
                _add_table(release, f"{name}: {path.relative_to(folder).as_posix()}", read_table(path), main_lag)
    if report_dir is not None:
        for path in sorted((report_dir / "tables").glob("*.csv")):
            _add_table(release, f"report tables: {path.name}", read_table(path), main_lag)
        html = report_dir / "index.html"
        if html.is_file():
            frames, text = html_tables(html)
            for frame in frames:
                _add_table(release, "report html", frame, main_lag)
            release.summaries.setdefault("report html", {}).update(text_cells(text, release.policy))
    return release


def text_cells(text: str, policy: Policy) -> dict[Cell, tuple[float, float]]:
    """Flow facts written in the report's text (`8,000 persons in the population`, `123 events`)."""
    patterns = {
        ("flow", "total"): r"(?:persons|people) in (?:the )?population:?\s+([\d,]+)\b",
        ("flow", "in cohort"): r"(?:persons|people) in (?:the )?cohort:?\s+([\d,]+)\b",
        ("events by sex", "total"): r"\(events\):?\s+([\d,]+)\b",
    }
    out: dict[Cell, tuple[float, float]] = {}
    for cell, pattern in patterns.items():
        found = re.search(pattern, text, flags=re.IGNORECASE)
        if found:
            n = int(found.group(1).replace(",", ""))
            out[cell] = (max(n - policy.base // 2, 0), n + (policy.base - 1) // 2)
    return out


def run_screen_attacks(release: Release, truth: pl.DataFrame) -> dict[tuple[str, str], int]:
    """{(attack, source): recovered cells} for every screen attack on every source and on their union."""
    policy = release.policy
    out: dict[tuple[str, str], int] = {}
    plain = {s: knowledge(rows, policy, use_se=False) for s, rows in release.screens.items()}
    with_se = {s: knowledge(rows, policy, use_se=True) for s, rows in release.screens.items()}
    for source, rows in release.screens.items():
        out[("SE inversion", source)] = attack_se_inversion(rows, truth, policy)
        for name, attack in SCREEN_ATTACKS.items():
            out[(name, source)] = attack(plain[source], truth, policy)
            if name != "shown small counts":
                out[(f"{name} (with SE)", source)] = attack(with_se[source], truth, policy)
    if len(release.screens) > 1:
        union_rows = pl.concat(list(release.screens.values()), how="vertical_relaxed")
        union_plain, union_se = combine(plain.values()), combine(with_se.values())
        out[("SE inversion", "union")] = attack_se_inversion(union_rows, truth, policy)
        for name, attack in SCREEN_ATTACKS.items():
            out[(name, "union")] = attack(union_plain, truth, policy)
            if name != "shown small counts":
                out[(f"{name} (with SE)", "union")] = attack(union_se, truth, policy)
    return out


def run_summary_attacks(release: Release, truth: Mapping[Cell, int]) -> dict[tuple[str, str], int]:
    """{("across tables", source): recovered cells} per source and on the union of all sources."""
    out = {("across tables", s): attack_summaries([c], truth, release.policy) for s, c in release.summaries.items()}
    out[("across tables", "union")] = attack_summaries(list(release.summaries.values()), truth, release.policy)
    return out


# --------------------------------------------------------------------------------------------------
# The federation round as an oracle, and the export gate
# --------------------------------------------------------------------------------------------------

ROUND_BETAS = (-30.0, -12.0)  # at a very negative beta the exposure score is the number of exposed cases


def craft_round(fits: pl.DataFrame, protocol_hash: str | None, beta: float, number: int) -> pl.DataFrame:
    """A round file in the protocol's format asking for `fits` (KEYS) at exposure coefficient `beta`."""
    keys = fits.select(KEYS).unique().sort(KEYS)
    return keys.with_row_index("fit_id").with_columns(
        pl.col("fit_id").cast(pl.Int64),
        pl.col("atc_level").cast(pl.Int64),
        pl.col("lag_years").cast(pl.Float64),
        round=pl.lit(number, pl.Int64),
        protocol_hash=pl.lit(protocol_hash, pl.String),
        covariate_levels=pl.lit("{}"),
        design_names=pl.lit(["exposed"], pl.List(pl.String)),
        evaluate=pl.lit(True),
        beta=pl.lit([beta], pl.List(pl.Float64)),
        phase=pl.lit("start"),
    )


def hidden_fits(package_fits: pl.DataFrame, policy: Policy) -> pl.DataFrame:
    """The fits of a site package whose exposed cases the site does not show exactly."""
    rows = screen_rows(package_fits)
    if rows is None:
        return pl.DataFrame(schema={"atc_code": pl.String, "atc_level": pl.Int64, "lag_years": pl.Float64, "sex": pl.String})
    k = knowledge(rows, policy, use_se=False)
    return k.filter(pl.col("n_exposed_cases_lo") != pl.col("n_exposed_cases_hi")).select(KEYS)


def oracle_recoveries(response: pl.DataFrame, truth: pl.DataFrame, policy: Policy) -> int:
    """Fits whose returned exposure score, rounded, is their hidden exposed-case count (1 .. min_cell - 1)."""
    if response.height == 0 or "score" not in response.columns:
        return 0
    answers = response.select(
        pl.col("atc_code").cast(pl.String), pl.col("atc_level").cast(pl.Int64), pl.col("lag_years").cast(pl.Float64),
        pl.col("sex").cast(pl.String), pl.col("score").list.first().round(0).cast(pl.Int64).alias("d"),
    ).join(truth, on=KEYS, how="inner")
    return int(answers.select(recovered(pl.col("d"), pl.col("d"), pl.col("n_exposed_cases_true"), policy.min_cell).sum()).item())


def gate_plants(cohort: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Files an attacker (or a careless analyst) leaves among the aggregate outputs, by results-relative path:
    identifier and date aliases of the data dictionary as column names, a column of dates under an innocent
    name, and a table with one row per person (no identifier column). Identifier values are row numbers."""
    n = 40
    rows = cohort.select([c for c, t in cohort.schema.items() if c in ("sex", "education", "event")]) \
        .with_columns(pl.all().cast(pl.String))
    return {
        "candidates/planted_registry_ids.csv": pl.DataFrame({"pasient_lopenr": range(n), "n_exposed": [10] * n}),
        "report/tables/planted_person_rows.csv": pl.DataFrame(
            {"id": range(n), "birth_year": [1960] * n, "death_date": ["2010-05-01"] * n}),
        "candidates/planted_dates.csv": pl.DataFrame({"when": ["2011-03-04"] * n, "n_exposed": [10] * n}),
        "candidates/planted_one_row_per_person.csv": rows,
    }


def plant(results: Path, cohort: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """Write the planted files into `results` and a stale file from an earlier run (old mtime): the planted
    tables by name, and the stale file's name."""
    planted = gate_plants(cohort)
    for name, frame in planted.items():
        path = results / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.write_csv(path)
    stale = results / "report" / "tables" / "stale_from_earlier_run.csv"
    pl.DataFrame({"table": ["flow"], "item": ["total"], "n": [12345]}).write_csv(stale)
    old = 946_684_800  # 2000-01-01: long before this run
    os.utime(stale, (old, old))
    return planted, [stale.relative_to(results).as_posix()]


def _has_dates(column: pl.Series) -> bool:
    """The column holds dates (typed, or text that parses as ISO dates)."""
    if column.dtype.is_temporal():
        return True
    try:
        return column.cast(pl.String).str.to_date(strict=False).drop_nulls().len() > 0
    except pl.exceptions.PolarsError:
        return False


def _still_disclosive(exported_file: Path, planted: pl.DataFrame, stale: bool) -> bool:
    """The exported copy still holds what made the planted file unsafe: a planted identifier/date column,
    a column of dates, one row per planted person (or, for the stale file, anything at all)."""
    if stale:
        return True
    frame = read_table(exported_file)
    if set(frame.columns) & {"pasient_lopenr", "id", "birth_year", "death_date", "when"}:
        return True
    if any(_has_dates(frame[c]) for c in frame.columns):
        return True
    return planted.height > 40 and frame.height >= planted.height


def exported(export_dir: Path, planted: Mapping[str, pl.DataFrame], stale: Iterable[str]) -> int:
    """How many planted files (results-relative names) reached the export folder still disclosive."""
    stale = set(stale)
    found = 0
    for name in [*planted, *stale]:
        path = export_dir / name
        if path.is_file() and _still_disclosive(path, planted.get(name, pl.DataFrame()), name in stale):
            found += 1
    return found


def attack_active_comparator(ranking: pl.DataFrame, truth: Mapping[str, int | None], policy: Policy) -> int:
    """Active-comparator estimates released from 1 .. min_cell - 1 comparator cases (the issue's finding):
    a shown HR/CI with its comparator-case count hidden, whose true count (`truth`, recomputed on the
    person-level data) is small. The CI width then pins se^2 ~ 1/d_drug + 1/d_comp on a small cell."""
    needed = {"atc_code", "ci_lower_active_comparator", "ci_upper_active_comparator", "n_active_comparator_cases"}
    if not needed <= set(ranking.columns):
        return 0
    lower, upper = as_float(ranking["ci_lower_active_comparator"]), as_float(ranking["ci_upper_active_comparator"])
    hits = 0
    for code, lo, hi in zip(ranking["atc_code"].to_list(), lower, upper, strict=True):
        true = truth.get(code)
        if lo is not None and hi is not None and 0 < lo < hi and true is not None and 1 <= true <= policy.min_cell - 1:
            hits += 1
    return hits
