"""Between-clinic variation of stopping, and the disclosure control of the clinic-level tables.

Each clinic's case-mix-adjusted discontinuation is the indirectly standardised ratio O/E of its observed stops
within the horizon (24 months) to the stops expected from a Cox model of the case mix without clinic
(`survival.expected_stops`). The funnel plot shows O/E against E (the clinic's size in expected stops) with
control limits around 1 at 95% and 99.8% (Spiegelhalter 2005, "Funnel plots for comparing institutional
performance", Stat Med 24:1185):

- z_i = (O_i - E_i) / sqrt(E_i) (Poisson variance of O/E is 1/E);
- overdispersion from the z-scores winsorised at the 10th and 90th percentiles: phi = mean(z_w^2), then
  re-estimated (not winsorised) from the clinics inside the 99.8% limits, about their own pooled O/E, until
  that set is stable (`robust_overdispersion`: the outliers do not widen the limits that judge them);
- `additive` (default): tau^2 = max(0, (k phi - (k - 1)) / (sum w - sum w^2 / sum w)), w_i = E_i, and limits
  1 +/- z_p sqrt(1/E + tau^2); `multiplicative`: limits 1 +/- z_p sqrt(phi / E) when phi > 1; `none`: Poisson;
- a clinic is an outlier only outside the adjusted 99.8% limits, an alert outside the adjusted 95% limits.

The between-clinic variance on the log-hazard scale is the random-effects tau^2 (REML, `repurpose.meta`) of the
clinics' log(O/E) over all stops (standard error 1/sqrt(O)), with its Q-profile 95% CI (Viechtbauer 2007).

Disclosure: a clinic with fewer new users than `min_clinic_size` (never below the release policy's min_cell) is
merged into "other clinics"; when that group would hold 1 to min_cell - 1 patients the smallest shown clinics
join it until it holds at least min_cell, so that subtracting the shown clinics from the total never reveals a
small count. The counts of the clinic table are then released as one structure (`release_clinic_table`: small
cells hidden and every cell that would reveal one by a row's or a column's sum, counts rounded), and the ratios
of a row whose stops are hidden are hidden with them (O = ratio x E).

Imports the top level (`meta`) and `release` (the disclosure policy and functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from repurpose.lazy import lazy_module
from repurpose.meta import pool
from repurpose.release.disclosure import Partition, release_linked
from repurpose.release.policy import DisclosurePolicy

optimize = lazy_module("scipy.optimize")
stats = lazy_module("scipy.stats")

OTHER_CLINICS = "other clinics"
ALL_CLINICS = "all clinics"
OVERDISPERSION = ("additive", "multiplicative", "none")
MIN_FUNNEL_CLINICS = 3
"""Fewer clinics give no between-clinic spread to estimate: the funnel then shows them without a judgement."""


@dataclass(frozen=True)
class Overdispersion:
    """The funnel's overdispersion estimate: winsorised phi, additive tau^2 and the method used."""

    phi: float
    tau2: float
    method: str


def z_scores(observed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Poisson z-scores of O/E against 1."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    return (observed - expected) / np.sqrt(expected)


def winsorise(values: np.ndarray, share: float = 0.1) -> np.ndarray:
    """Values clipped to their `share` and 1 - `share` quantiles (numpy's linear interpolation)."""
    if share <= 0:
        return values
    low, high = np.quantile(values, [share, 1 - share])
    return np.clip(values, low, high)


def overdispersion(observed: np.ndarray, expected: np.ndarray, method: str = "additive", share: float = 0.1) -> Overdispersion:
    """phi and tau^2 of the funnel (module doc) from winsorised z-scores."""
    if method not in OVERDISPERSION:
        raise ValueError(f"persistence.funnel_overdispersion must be one of {OVERDISPERSION}, got {method!r}")
    expected = np.asarray(expected, float)
    z = winsorise(z_scores(observed, expected), share)
    k = len(z)
    phi = float(np.mean(z**2))
    w = expected
    denominator = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max(0.0, (k * phi - (k - 1)) / denominator) if denominator > 0 else 0.0
    return Overdispersion(phi=phi, tau2=tau2, method=method)


def robust_overdispersion(observed: np.ndarray, expected: np.ndarray, method: str = "additive",
                          level: float = 0.998, max_iterations: int = 20) -> tuple[Overdispersion, np.ndarray]:  # fmt: skip
    """Overdispersion estimated without the outliers it is meant to judge, and the outlier flags.

    Starts from the winsorised estimate; then, while clinics lie outside the `level` limits and that set keeps
    changing, re-estimates phi and tau^2 (not winsorised) from the clinics inside them, about their own pooled
    O/E (with a large outlier left out the others' O/E is no longer 1, and that shift is not spread). When no
    clinic is left outside, the last estimate stands: it never falls back to the plain estimate over all
    clinics, which lets the outliers widen the limits that judge them. Winsorising alone at 10% clips true
    between-clinic spread as much as outliers and leaves the limits too narrow when many clinics differ a
    little. Returns the estimate and a boolean array (True = outside the limits)."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    spread = overdispersion(observed, expected, method)
    outside = np.zeros(len(observed), bool)
    for iteration in range(max_iterations):
        lower, upper = funnel_limits(expected, level, spread)
        ratio = observed / expected
        now = (ratio < lower) | (ratio > upper)
        if iteration > 0 and np.array_equal(now, outside):
            break
        outside = now
        if not outside.any() or (~outside).sum() < 3:
            break
        centre = observed[~outside].sum() / expected[~outside].sum()
        spread = overdispersion(observed[~outside], centre * expected[~outside], method, share=0.0)
    return spread, outside


def funnel_limits(expected: np.ndarray | float, level: float, spread: Overdispersion) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper control limits of O/E at `level` (two-sided) for clinics of size `expected`."""
    expected = np.asarray(expected, float)
    z = stats.norm.ppf(0.5 + level / 2)
    if spread.method == "additive":
        sd = np.sqrt(1.0 / expected + spread.tau2)
    elif spread.method == "multiplicative":
        sd = np.sqrt(max(spread.phi, 1.0) / expected)
    else:
        sd = np.sqrt(1.0 / expected)
    return 1.0 - z * sd, 1.0 + z * sd


def funnel_table(clinics: Sequence[str], observed: np.ndarray, expected: np.ndarray, method: str) -> tuple[pl.DataFrame, Overdispersion]:
    """Per clinic: O, E, O/E, z, the adjusted 95% and 99.8% limits and the flags (module doc)."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    if len(observed) < MIN_FUNNEL_CLINICS:  # no spread between clinics to estimate: shown, never judged
        nothing = np.full(len(observed), np.nan)
        frame = pl.DataFrame({
            "clinic_id": list(clinics), "observed_stops": observed, "expected_stops": expected,
            "ratio": observed / expected, "z": z_scores(observed, expected), "lower_95": nothing, "upper_95": nothing,
            "lower_998": nothing, "upper_998": nothing,
            "funnel": [f"not assessed: fewer than {MIN_FUNNEL_CLINICS} clinics"] * len(observed),
        }, schema_overrides={"clinic_id": pl.String, "funnel": pl.String})  # fmt: skip
        return frame, Overdispersion(phi=float("nan"), tau2=float("nan"), method=method)
    spread, _ = robust_overdispersion(observed, expected, method)
    lo95, hi95 = funnel_limits(expected, 0.95, spread)
    lo998, hi998 = funnel_limits(expected, 0.998, spread)
    ratio = observed / expected
    frame = pl.DataFrame({
        "clinic_id": list(clinics), "observed_stops": observed, "expected_stops": expected, "ratio": ratio,
        "z": z_scores(observed, expected), "lower_95": lo95, "upper_95": hi95, "lower_998": lo998, "upper_998": hi998,
    })  # fmt: skip
    flag = (
        pl.when((pl.col("ratio") > pl.col("upper_998")) | (pl.col("ratio") < pl.col("lower_998"))).then(pl.lit("outlier"))
        .when((pl.col("ratio") > pl.col("upper_95")) | (pl.col("ratio") < pl.col("lower_95"))).then(pl.lit("alert"))
        .otherwise(pl.lit("in control"))
    )  # fmt: skip
    return frame.with_columns(flag.alias("funnel")), spread


def q_profile_ci(estimates: np.ndarray, se: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Q-profile confidence interval of tau^2: the tau^2 where the generalised Q equals the chi-square
    (k - 1) quantiles (Viechtbauer 2007); a bound is 0 when Q at tau^2 = 0 is already below its quantile."""
    y, s = np.asarray(estimates, float), np.asarray(se, float)
    k = len(y)
    if k < 2:
        return 0.0, float("inf")

    def q_gen(tau2: float) -> float:
        w = 1.0 / (s**2 + tau2)
        mean = np.sum(w * y) / np.sum(w)
        return float(np.sum(w * (y - mean) ** 2))

    def bound(target: float) -> float:
        if q_gen(0.0) <= target:
            return 0.0
        upper = max(1.0, float(np.var(y)) * 10)
        while q_gen(upper) > target:
            upper *= 10
        return float(optimize.brentq(lambda t: q_gen(t) - target, 0.0, upper, xtol=1e-12))

    alpha = 1 - level
    return bound(stats.chi2.ppf(1 - alpha / 2, k - 1)), bound(stats.chi2.ppf(alpha / 2, k - 1))


def between_clinic_variance(observed_all: np.ndarray, expected_all: np.ndarray) -> dict[str, float | int | str]:
    """tau^2 of the clinics' log(O/E) (all follow-up) by REML with its Q-profile CI; clinics without stops are
    left out (their log ratio is undefined)."""
    observed_all, expected_all = np.asarray(observed_all, float), np.asarray(expected_all, float)
    keep = observed_all > 0
    if keep.sum() < 2:
        nan = float("nan")
        return {"method": "not estimable: fewer than 2 clinics with a stop", "k_clinics": int(keep.sum()), "tau2": nan,
                "tau2_lower": nan, "tau2_upper": nan, "tau": nan, "i2": nan, "q": nan, "q_p_value": nan}  # fmt: skip
    y = np.log(observed_all[keep] / expected_all[keep])
    se = 1.0 / np.sqrt(observed_all[keep])
    result = pool(y, se, method="REML")
    lower, upper = q_profile_ci(y, se)
    return {"method": "REML, Q-profile CI", "k_clinics": int(keep.sum()), "tau2": result.tau2,
            "tau2_lower": lower, "tau2_upper": upper, "tau": float(np.sqrt(result.tau2)),
            "i2": result.i2, "q": result.q, "q_p_value": result.q_p_value}  # fmt: skip


def disclosed_clinics(sizes: dict[str, int], min_clinic_size: int, policy: DisclosurePolicy) -> dict[str, str]:
    """Clinic -> the group it is shown as (itself or "other clinics"), by the merge rule of the module doc."""
    threshold = max(int(min_clinic_size), policy.min_cell)
    shown = {c for c, n in sizes.items() if n >= threshold}
    while True:
        other = sum(n for c, n in sizes.items() if c not in shown)
        if other == 0 or other >= policy.min_cell or not shown:
            break
        shown.remove(min(shown, key=lambda c: (sizes[c], c)))
    return {c: (c if c in shown else OTHER_CLINICS) for c in sizes}


REASON_PREFIX = "n_stopped_"


def release_clinic_table(table: pl.DataFrame, count_columns: Sequence[str], policy: DisclosurePolicy,
                         derived: dict[str, Sequence[str]],
                         by_country: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame | None]:  # fmt: skip
    """The clinic table (one row per shown clinic and one `all clinics` row) as released, and the countries'
    new users and stops released in the same structure: small counts and the cells that would reveal one
    hidden, counts rounded; `derived` columns hidden with their counts.

    One structure (`release_linked`) in which every sum a reader can form is a partition: the clinic rows
    add up to `all clinics` in every column; within a row, stops plus those still on the drug make the new
    users, stops within the horizon plus later stops make all stops, and the stops by reason make all stops;
    the countries add up to all clinics, and a country is its clinics (a reader knows which clinic is where)
    plus its unreleased share of any group spanning countries ("other clinics"). `by_country` holds the exact
    n_new_users and n_stopped per (clinic_id, country); the countries come back as (country, n_new_users,
    n_stopped). A count that appears in several places (a row's stops in its three row partitions, a clinic of
    one country in the country's partition) is hidden everywhere once hidden anywhere."""
    table = _protect_outliers(table, count_columns, policy)
    # Few stops after the horizon: the row's stops over all follow-up go, not those within the horizon (the
    # funnel's O), which the generic rule would take as the smaller part.
    later = pl.col("n_stopped") - pl.col("n_stopped_within_horizon")
    table = table.with_columns(pl.when((later >= 1) & (later < policy.min_cell)).then(None).otherwise(pl.col("n_stopped")).alias("n_stopped"))
    reasons = [c for c in count_columns if c.startswith(REASON_PREFIX) and c != "n_stopped_within_horizon"]
    users = {"total": pl.col("n_new_users"), "stopped": pl.col("n_stopped"), "not stopped": pl.col("n_new_users") - pl.col("n_stopped")}
    families: dict[str, dict[str, pl.Expr]] = {
        "users": users,
        "horizon": {"total": pl.col("n_stopped"), "within": pl.col("n_stopped_within_horizon"),
                    "after": pl.col("n_stopped") - pl.col("n_stopped_within_horizon")},
        "reasons": {"total": pl.col("n_stopped"), **{c.removeprefix(REASON_PREFIX): pl.col(c) for c in reasons}},
    }  # fmt: skip
    columns = {("users", "total"): "n_new_users", ("users", "stopped"): "n_stopped",
               ("horizon", "within"): "n_stopped_within_horizon",
               **{("reasons", c.removeprefix(REASON_PREFIX)): c for c in reasons}}  # fmt: skip

    def rows(frame: pl.DataFrame, level: str, part: pl.Expr, chosen: dict[str, dict[str, pl.Expr]]) -> list[pl.DataFrame]:
        return [frame.select(pl.lit(family).alias("family"), pl.lit(level).alias("level"), part.alias("part"),
                             pl.lit(item).alias("item"), value.cast(pl.Int64).alias("n"))
                for family, items in chosen.items() for item, value in items.items()]  # fmt: skip

    group = pl.when(pl.col("clinic_id") == ALL_CLINICS).then(pl.lit(TOTAL)).otherwise(pl.col("clinic_id"))
    long = rows(table, "clinic", group, families)
    links: list[list[tuple[str, str]]] = [
        [(f"{f}|clinic|{c}", i) for f, i in (("users", "stopped"), ("horizon", "total"), ("reasons", "total"))]
        for c in [TOTAL if c == ALL_CLINICS else c for c in table["clinic_id"]]
    ]  # fmt: skip
    unreleased = ["not stopped", "after"]
    if by_country is not None:
        long, links, split_names = _country_rows(by_country, long, links, rows, users)
        unreleased += split_names
    frame = pl.concat(long).with_columns((pl.col("family") + "|" + pl.col("level") + "|" + pl.col("part")).alias("table"))
    partitions = [Partition(by=("family", "level", "part"), part_column="item", total_value="total",
                            unreleased_parts=("not stopped", "after")),
                  Partition(by=("family", "level", "item"), part_column="part", total_value=TOTAL,
                            unreleased_parts=tuple(unreleased))]  # fmt: skip
    released = release_linked(frame, policy, partitions=partitions, links=links)
    values = {(f, lv, p, i): n for f, lv, p, i, n in released.select("family", "level", "part", "item", "n").iter_rows()}
    keys = [TOTAL if c == ALL_CLINICS else c for c in table["clinic_id"]]
    out = table.with_columns([
        pl.Series(column, [values[(family, "clinic", k, item)] for k in keys], dtype=pl.Int64)
        for (family, item), column in columns.items()
    ])  # fmt: skip
    for column, sources in derived.items():
        hidden = pl.any_horizontal([pl.col(s).is_null() for s in sources])
        out = out.with_columns(pl.when(hidden).then(None).otherwise(pl.col(column)).alias(column))
    countries = None
    if by_country is not None:
        names = sorted(by_country["country"].unique().to_list())
        countries = pl.DataFrame({"country": names,
                                  "n_new_users": [values[("users", "country", c, "total")] for c in names],
                                  "n_stopped": [values[("users", "country", c, "stopped")] for c in names]},
                                 schema_overrides={"n_new_users": pl.Int64, "n_stopped": pl.Int64})  # fmt: skip
    return out, countries


TOTAL = "(total)"
"""The part name of a partition's total row in the long release table."""


def _country_rows(by_country: pl.DataFrame, long: list[pl.DataFrame], links: list, rows, users: dict) -> tuple[list, list, list[str]]:  # noqa: ANN001
    """The country levels of the clinic release (users family only: the countries show new users and stops):
    `country` (the countries and the total), `in <country>` (its clinic groups and its total) and `split
    <group>` for a group spanning countries (its unreleased per-country shares and the group's total)."""
    exact = by_country.group_by("clinic_id", "country").agg(pl.col("n_new_users", "n_stopped").sum())
    spans = exact.group_by("clinic_id").agg(pl.col("country").n_unique().alias("k"))
    mixed = set(spans.filter(pl.col("k") > 1)["clinic_id"].to_list())
    share = pl.col("clinic_id") + " in " + pl.col("country")
    part = pl.when(pl.col("clinic_id").is_in(list(mixed))).then(share).otherwise(pl.col("clinic_id"))
    countries = exact.group_by("country").agg(pl.col("n_new_users", "n_stopped").sum())
    total = countries.select(pl.col("n_new_users", "n_stopped").sum())
    with_total = pl.concat([countries.with_columns(pl.col("country").alias("part")),
                            total.with_columns(pl.lit(TOTAL).alias("part"))], how="diagonal")  # fmt: skip
    chosen = {"users": users}
    long = [*long, *rows(with_total, "country", pl.col("part"), chosen)]
    for item in ("total", "stopped", "not stopped"):
        links.append([(f"users|clinic|{TOTAL}", item), (f"users|country|{TOTAL}", item)])
    split_names: list[str] = []
    for country in countries["country"].to_list():
        inside = exact.filter(pl.col("country") == country).with_columns(part.alias("part"))
        inside = pl.concat([inside, countries.filter(pl.col("country") == country).with_columns(pl.lit(TOTAL).alias("part"))],
                           how="diagonal")  # fmt: skip
        long.extend(rows(inside, f"in {country}", pl.col("part"), chosen))
        for item in ("total", "stopped", "not stopped"):
            links.append([(f"users|country|{country}", item), (f"users|in {country}|{TOTAL}", item)])
            for name, clinic in inside.filter(pl.col("part") != TOTAL).select("part", "clinic_id").iter_rows():
                if clinic in mixed:
                    links.append([(f"users|in {country}|{name}", item), (f"users|split {clinic}|{name}", item)])
                    split_names.append(name)
                else:
                    links.append([(f"users|in {country}|{name}", item), (f"users|clinic|{name}", item)])
    for clinic in sorted(mixed):
        shares = exact.filter(pl.col("clinic_id") == clinic).with_columns(share.alias("part"))
        long.extend(rows(shares, f"split {clinic}", pl.col("part"), chosen))
        whole = exact.filter(pl.col("clinic_id") == clinic).select(pl.col("n_new_users", "n_stopped").sum()).with_columns(pl.lit(TOTAL).alias("part"))
        long.extend(rows(whole, f"split {clinic}", pl.col("part"), chosen))
        for item in ("total", "stopped", "not stopped"):
            links.append([(f"users|split {clinic}|{TOTAL}", item), (f"users|clinic|{clinic}", item)])
    return long, links, sorted(set(split_names))


def _protect_outliers(table: pl.DataFrame, count_columns: Sequence[str], policy: DisclosurePolicy) -> pl.DataFrame:
    """The complementary cell chosen before `release_counts` would choose it: where exactly one clinic row's count
    is small, the smallest non-zero count of a clinic in control (or of "other clinics") is hidden with it, so
    that the secondary suppression (which takes the smallest count) does not hide an outlier clinic's count,
    often the smallest when it keeps its patients on the drug."""
    parts = pl.col("clinic_id") != ALL_CLINICS
    preferred = (pl.col("funnel") == "in control") | (pl.col("clinic_id") == OTHER_CLINICS)
    if "funnel" not in table.columns:
        return table
    for column in count_columns:
        values = table[column].to_list()
        is_part = table.select(parts).to_series().to_list()
        prefer = table.select(preferred.fill_null(False)).to_series().to_list()
        small = [i for i, v in enumerate(values) if is_part[i] and policy.is_small(v)]
        if len(small) != 1:
            continue
        candidates = [i for i, v in enumerate(values) if is_part[i] and prefer[i] and i not in small and v and v > 0]
        if candidates:
            victim = min(candidates, key=lambda i: values[i])
            values[small[0]] = values[victim] = None
            table = table.with_columns(pl.Series(column, values, dtype=table.schema[column]))
    return table
