"""The release policy: each rule of `release_screen` on hand-built frames, rounding, idempotence, the ranking's
release, and the config rules. The attacks on a whole run live in the attacker suite; here a small attacker
(`recoverable`) checks the invariants the rules promise on random nested tables."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from repurpose.config import ConfigError, validate_config
from repurpose.release.disclosure import (
    SCREEN_RULES,
    DisclosurePolicy,
    Partition,
    disclosure_table,
    mask_counts_in_text,
    release_counts,
    release_ranking,
    release_screen,
    release_summary,
    suppress_small_counts,
    text_rows,
)
from repurpose.release.policy import round_counts
from repurpose.release.report import released_summaries
from repurpose.release.screen_release import screen_hidden_reasons
from repurpose.schemas import RANKING_COUNT_COLUMNS, SCREEN_COLUMNS

POLICY = DisclosurePolicy(min_cell=5, rounding_base=5)
EXACT = DisclosurePolicy(min_cell=5, rounding_base=1)
N_PERSONS, N_CASES = 1000, 200


def fit(code: str, lag: float, sex: str, exposed: int, cases: int, n_persons: int = N_PERSONS,
        n_cases: int = N_CASES, status: str = "ok") -> dict:
    """One screen row with the estimate its counts imply (se^2 = 1/d + 1/(n - d): what an attacker inverts)."""
    se = float(np.sqrt(1 / cases + 1 / max(exposed - cases, 1))) if cases else None
    return {
        "atc_code": code, "atc_name": code, "atc_level": {3: 2, 4: 3, 5: 4, 7: 5}[len(code)], "lag_years": float(lag),
        "sex": sex, "n_persons": n_persons, "n_exposed": exposed, "n_cases": n_cases, "n_exposed_cases": cases,
        "person_years_exposed": exposed * 3.3, "hr": 1.2, "ci_lower": 0.9, "ci_upper": 1.6, "log_hr": 0.18,
        "se": se, "p_value": 0.2, "q_value": 0.4, "significant": False, "converged": True, "n_iter": 4,
        "status": status, "reason": None,
    }  # fmt: skip


def screen(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows).select(SCREEN_COLUMNS)


def row(frame: pl.DataFrame, code: str, lag: float = 0.0, sex: str = "all") -> dict:
    return frame.filter((pl.col("atc_code") == code) & (pl.col("lag_years") == lag) & (pl.col("sex") == sex)).row(0, named=True)


# ------------------------------------------------------------------------------------------ primary rule
@pytest.mark.parametrize(
    ("exposed", "cases", "n_cases", "n_persons"),
    [(40, 3, N_CASES, N_PERSONS),  # exposed cases
     (30, 27, N_CASES, N_PERSONS),  # exposed non-cases (the 30 and 27)
     (60, 57, 60, N_PERSONS),  # unexposed cases: 60 - 57
     (997, 50, N_CASES, N_PERSONS)],  # unexposed persons: 1000 - 997
)  # fmt: skip
def test_a_row_with_one_small_cell_is_hidden_whole_estimates_included(exposed, cases, n_cases, n_persons):
    frame = screen([fit("A10BA02", 0, "all", exposed, cases, n_persons=n_persons, n_cases=n_cases)])
    out = release_screen(frame, POLICY).row(0, named=True)
    assert out["status"] == "suppressed" and out["reason"] == "small cell"
    for column in ("n_exposed", "n_exposed_cases", "n_persons", "n_cases", "person_years_exposed", "se", "hr", "p_value"):
        assert out[column] is None, column


def test_a_skipped_row_keeps_its_status_but_not_its_counts():
    frame = screen([fit("A10BA02", 0, "all", 40, 3, status="skipped") | {"reason": "fewer than 5 exposed cases"}])
    out = release_screen(frame, POLICY).row(0, named=True)
    assert out["status"] == "skipped" and out["reason"] == "fewer than 5 exposed cases"
    assert out["n_exposed_cases"] is None and out["n_exposed"] is None


def test_zero_exposed_is_shown():
    frame = screen([fit("A10BA02", 0, "all", 0, 0, status="skipped")])
    out = release_screen(frame, POLICY).row(0, named=True)
    assert out["n_exposed"] == 0 and out["n_exposed_cases"] == 0 and out["n_persons"] == N_PERSONS


# ------------------------------------------------------------------------------------------ complementary rules
def test_a_three_lag_chain_with_a_difference_of_3_hides_the_longer_lag():
    # exposed cases 30, 27, 20 at lags 0, 2, 5: 30 - 27 = 3 cases lost between lags 0 and 2.
    frame = screen([fit("R03AC02", 0, "all", 100, 30), fit("R03AC02", 2, "all", 95, 27), fit("R03AC02", 5, "all", 80, 20)])
    reasons = screen_hidden_reasons(frame, POLICY)
    assert reasons == [None, "complementary: lag", None]
    out = release_screen(frame, POLICY)
    assert row(out, "R03AC02", 2.0)["status"] == "suppressed" and row(out, "R03AC02", 2.0)["se"] is None
    assert row(out, "R03AC02", 5.0)["n_exposed_cases"] == 20


def test_the_lag_rule_keeps_the_main_lag_first_then_lag_0():
    frame = screen([fit("R03AC02", 0, "all", 100, 30), fit("R03AC02", 2, "all", 97, 27), fit("R03AC02", 5, "all", 94, 24)])
    # main lag 5: (0, 2) differ by 3 -> 2 hidden; (0, 5) differ by 6: both kept.
    assert screen_hidden_reasons(frame, DisclosurePolicy(main_lag_years=5.0)) == [None, "complementary: lag", None]
    # main lag 2: (0, 2) differ by 3 -> lag 0 hidden; then (2, 5) differ by 3 -> 5 hidden.
    assert screen_hidden_reasons(frame, DisclosurePolicy(main_lag_years=2.0)) == ["complementary: lag", None, "complementary: lag"]
    frame = screen([fit("R03AC02", 2, "all", 97, 27), fit("R03AC02", 5, "all", 94, 24)])
    assert screen_hidden_reasons(frame, DisclosurePolicy(main_lag_years=5.0)) == ["complementary: lag", None]
    assert screen_hidden_reasons(frame, DisclosurePolicy(main_lag_years=2.0)) == [None, "complementary: lag"]


def test_one_hidden_sex_hides_the_other_when_all_is_shown():
    frame = screen([fit("N05CF", 0, "F", 40, 3), fit("N05CF", 0, "M", 60, 20), fit("N05CF", 0, "all", 100, 23)])
    # F has 3 exposed cases; `all` - M would give them. all - F: 60 non-cases... no small difference with M.
    assert screen_hidden_reasons(frame, POLICY) == ["small cell", "complementary: sex", None]


def test_a_hidden_total_hides_one_sex():
    frame = screen([fit("N05CF", 0, "F", 40, 10, n_persons=500, n_cases=100),
                    fit("N05CF", 0, "M", 60, 20, n_persons=500, n_cases=100),
                    fit("N05CF", 0, "all", 997, 30)])  # fmt: skip
    assert screen_hidden_reasons(frame, POLICY) == ["complementary: sex", None, "small cell"]


def test_a_class_minus_a_shown_substance_hides_the_class():
    # The N05CF: 9 exposed; N05CF01 shown with 5, N05CF02 hidden with 4 -> 9 - 5 = 4.
    frame = screen([fit("N05CF", 0, "all", 90, 9), fit("N05CF01", 0, "all", 50, 5), fit("N05CF02", 0, "all", 40, 4)])
    assert screen_hidden_reasons(frame, POLICY) == ["complementary: tree", None, "small cell"]


def test_a_class_minus_its_shown_children_hides_the_class_when_a_child_is_hidden():
    # 30 exposed cases = 12 + 15 + 3: each pair differs by >= 5 but the residual 30 - 27 = 3 pins the hidden child.
    frame = screen([fit("N05CF", 0, "all", 300, 30), fit("N05CF01", 0, "all", 120, 12),
                    fit("N05CF02", 0, "all", 150, 15), fit("N05CF03", 0, "all", 30, 3)])  # fmt: skip
    assert screen_hidden_reasons(frame, POLICY) == ["complementary: tree", None, None, "small cell"]


def test_the_tree_rule_cascades_to_the_grandparent():
    # N05C holds only N05CF: N05C - N05CF01 = 4 = N05CF02 (any depth), so the level-3 class goes too.
    frame = screen([fit("N05C", 0, "all", 90, 9), fit("N05CF", 0, "all", 90, 9),
                    fit("N05CF01", 0, "all", 50, 5), fit("N05CF02", 0, "all", 40, 4)])  # fmt: skip
    reasons = screen_hidden_reasons(frame, POLICY)
    assert reasons[0] == "complementary: tree" and reasons[1] == "complementary: tree"


# ------------------------------------------------------------------------------------------ rounding
@pytest.mark.parametrize(("value", "base", "expected"),
                         [(0, 5, 0), (5, 5, 5), (7, 5, 5), (8, 5, 10), (12, 5, 10), (13, 5, 15), (6, 4, 8), (10, 4, 12),
                          (3, 10, 10), (1234, 1, 1234)])  # fmt: skip
def test_rounding_goes_to_the_nearest_multiple_with_halves_up(value, base, expected):
    assert DisclosurePolicy(min_cell=2, rounding_base=base).round_count(value) == expected
    frame = pl.DataFrame({"n": [value, None]})
    assert round_counts(frame, ["n"], base)["n"].to_list() == [expected, None]


def test_a_rounding_base_below_the_minimum_cell_is_raised_to_it():
    config = {"disclosure": {"min_cell": 10, "rounding_base": 5}}
    assert DisclosurePolicy.from_config(config).rounding_base == 10
    assert DisclosurePolicy.from_config({"disclosure": {"min_cell": 10, "rounding_base": 1}}).rounding_base == 1


def test_released_counts_are_rounded_and_person_years_whole():
    frame = screen([fit("R03AC02", 0, "all", 103, 27)])
    out = release_screen(frame, POLICY).row(0, named=True)
    assert (out["n_exposed"], out["n_exposed_cases"], out["n_persons"], out["n_cases"]) == (105, 25, 1000, 200)
    assert out["person_years_exposed"] == round(103 * 3.3)


# ------------------------------------------------------------------------------------------ random nested tables
def nested_screen(seed: int, n_classes: int = 6) -> pl.DataFrame:
    """Classes (level 4) with 3 substances each, lags 0/2/5 (exposed shrink with lag), sexes F + M = all."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_classes):
        parent = f"N0{k}AA"
        for sex in ("F", "M"):
            sizes = rng.integers(0, 40, size=3)
            cases = [int(rng.integers(0, s + 1)) for s in sizes]
            for lag in (0, 2, 5):
                keep = [int(s * (1 - 0.04 * lag) - rng.integers(0, 3)) for s in sizes]
                kept_cases = [min(c, max(e, 0)) - int(rng.integers(0, 2)) for c, e in zip(cases, keep, strict=True)]
                for j in range(3):
                    e, d = max(keep[j], 0), max(min(kept_cases[j], keep[j]), 0)
                    rows.append(fit(f"{parent}0{j + 1}", lag, sex, e, d, n_persons=500, n_cases=100))
                rows.append(fit(parent, lag, sex, sum(max(e, 0) for e in keep),
                                sum(max(min(c, e), 0) for c, e in zip(kept_cases, keep, strict=True)),
                                n_persons=500, n_cases=100))  # fmt: skip
    frame = pl.DataFrame(rows)
    total = frame.group_by("atc_code", "lag_years").agg(
        pl.col("n_exposed").sum(), pl.col("n_exposed_cases").sum(), pl.col("person_years_exposed").sum()
    )
    template = frame.filter(pl.col("sex") == "F").drop("n_exposed", "n_exposed_cases", "person_years_exposed")
    both = template.join(total, on=["atc_code", "lag_years"]).with_columns(
        sex=pl.lit("all"), n_persons=pl.lit(1000, dtype=pl.Int64), n_cases=pl.lit(200, dtype=pl.Int64)
    )
    return pl.concat([frame, both.select(frame.columns)]).select(SCREEN_COLUMNS)


def recoverable(exact: pl.DataFrame, released: pl.DataFrame, min_cell: int) -> int:
    """Small cells an attacker gets from the shown rows' EXACT counts (an estimate reveals them): within a row,
    between two lags, between sexes and between a class and one substance or its shown substances."""
    shown = exact.join(released.filter(pl.col("n_exposed").is_not_null()).select("atc_code", "lag_years", "sex"),
                       on=["atc_code", "lag_years", "sex"])  # fmt: skip
    cells = {(r["atc_code"], r["lag_years"], r["sex"]): (r["n_exposed_cases"], r["n_exposed"] - r["n_exposed_cases"],
                                                         r["n_cases"] - r["n_exposed_cases"], r["n_persons"] - r["n_exposed"])
             for r in shown.iter_rows(named=True)}  # fmt: skip
    small = lambda v: 1 <= abs(v) < min_cell  # noqa: E731
    found = sum(small(v) for c in cells.values() for v in c)
    for (a, b) in itertools.combinations(cells, 2):
        same_class_sex = a[0] == b[0] and a[2] == b[2]
        same_lag_sex_nested = a[1] == b[1] and a[2] == b[2] and (a[0].startswith(b[0]) or b[0].startswith(a[0]))
        if same_class_sex or same_lag_sex_nested:
            found += sum(small(x - y) for x, y in zip(cells[a][:2], cells[b][:2], strict=True))
    codes = {k[0] for k in cells}
    for code, lag in {(k[0], k[1]) for k in cells}:  # F + M = all with one sex hidden
        present = [s for s in ("F", "M", "all") if (code, lag, s) in cells]
        if len(present) == 2 and "all" in present:
            found += 1
    for (code, lag, sex), c in cells.items():  # class minus its shown substances, when one substance is hidden
        children = [k for k in exact.filter(pl.col("atc_code").str.starts_with(code) & (pl.col("atc_code") != code))
                    ["atc_code"].unique().to_list()]  # fmt: skip
        shown_children = [cells[(k, lag, sex)] for k in children if (k, lag, sex) in cells]
        if children and len(shown_children) < len(children) and codes:
            found += sum(small(c[i] - sum(s[i] for s in shown_children)) for i in (0, 1))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_no_small_cell_is_recoverable_from_shown_rows_of_random_nested_tables(seed):
    exact = nested_screen(seed)
    released = release_screen(exact, POLICY)
    assert recoverable(exact, released, POLICY.min_cell) == 0
    # and the attacker is not blind: on the exact table it finds small cells
    assert recoverable(exact, exact, POLICY.min_cell) > 0


@pytest.mark.parametrize("policy", [POLICY, EXACT, DisclosurePolicy(min_cell=10, rounding_base=10, main_lag_years=2.0)])
@pytest.mark.parametrize("seed", range(3))
def test_releasing_a_released_table_changes_nothing(policy, seed):
    released = release_screen(nested_screen(seed), policy)
    assert release_screen(released, policy).equals(released)
    # and the export gate's re-check hides nothing more
    counts = ["n_persons", "n_exposed", "n_cases", "n_exposed_cases"]
    assert suppress_small_counts(released, counts, policy.min_cell, **SCREEN_RULES).equals(released)


def test_the_summary_counts_rows_hidden_per_reason():
    exact = nested_screen(1)
    summary = release_summary(exact, POLICY)
    reasons = screen_hidden_reasons(exact, POLICY)
    assert sum(summary["rows_hidden"].values()) == sum(r is not None for r in reasons) > 0
    assert summary["min_cell"] == 5 and summary["rounding_base"] == 5
    table = disclosure_table(summary)
    assert table.columns == ["item", "value"] and "rows hidden: small cell" in table["item"].to_list()


# ------------------------------------------------------------------------------------------ ranking
def test_the_ranking_hides_estimates_of_hidden_screen_rows_and_small_comparators():
    exact = screen([
        fit("R03AC02", 0, "all", 100, 30), fit("R03AC02", 2, "all", 95, 27), fit("R03AC02", 5, "all", 80, 20),
        fit("R03AC02", 2, "F", 40, 3), fit("R03AC02", 2, "M", 55, 24),
        fit("C10AA01", 0, "all", 300, 60), fit("C10AA01", 2, "all", 280, 50), fit("C10AA01", 5, "all", 250, 40),
        fit("C10AA01", 2, "F", 150, 25), fit("C10AA01", 2, "M", 130, 25),
    ])  # fmt: skip
    policy = DisclosurePolicy(main_lag_years=2.0)
    released = release_screen(exact, policy)
    ranking = pl.DataFrame({
        "rank": [1, 2], "atc_code": ["R03AC02", "C10AA01"], "hr": [0.5, 0.7], "se": [0.2, 0.1],
        "n_exposed": [95, 281], "n_exposed_cases": [27, 52], "hr_lag0": [0.6, 0.7], "hr_lag2": [0.5, 0.7],
        "hr_lag5": [0.4, 0.8], "hr_separated_lag5": [0.3, 0.9], "hr_F": [0.5, 0.6], "hr_M": [0.5, 0.8],
        "sex_heterogeneity_p": [0.9, 0.3], "lag_fade_p": [0.5, 0.5], "hr_active_comparator": [0.8, 0.9],
        "n_active_comparator": [50, 200], "n_active_comparator_cases": [30, 3], "evidence_text": ["x", "y"],
    })  # fmt: skip
    out = release_ranking(ranking, released, policy, lags=[0.0, 2.0, 5.0], count_columns=RANKING_COUNT_COLUMNS)
    r, c = out.row(0, named=True), out.row(1, named=True)
    # R03AC02: lag 0 hidden (30 vs 27 at the main lag 2), F hidden (3 cases) -> M hidden too.
    assert r["hr"] == 0.5 and r["n_exposed"] == 95 and r["n_exposed_cases"] == 25 and r["hr_lag2"] == 0.5
    assert r["hr_lag0"] is None and r["hr_separated_lag5"] is None and r["lag_fade_p"] is None and r["hr_lag5"] == 0.4
    assert r["hr_F"] is None and r["hr_M"] is None and r["sex_heterogeneity_p"] is None
    assert r["evidence_text"] == "x" and r["n_active_comparator"] == 50 and r["hr_active_comparator"] == 0.8
    # a main fit hidden takes the main estimate and its counts with it
    hidden_main = release_ranking(ranking, released.with_columns(
        n_exposed=pl.when((pl.col("atc_code") == "C10AA01") & (pl.col("lag_years") == 2.0) & (pl.col("sex") == "all"))
        .then(None).otherwise(pl.col("n_exposed"))), policy, lags=[0.0, 2.0, 5.0], count_columns=RANKING_COUNT_COLUMNS)
    assert hidden_main.row(1, named=True)["hr"] is None and hidden_main.row(1, named=True)["n_exposed"] is None
    # C10AA01 shown; its comparator has 3 cases: its HR and counts are hidden; counts rounded.
    assert c["hr"] == 0.7 and c["n_exposed"] == 280 and c["n_exposed_cases"] == 50
    assert c["hr_active_comparator"] is None and c["n_active_comparator_cases"] is None
    assert c["n_active_comparator"] is None


# ------------------------------------------------------------------------------------------ count tables
def test_count_tables_are_suppressed_then_rounded():
    frame = pl.DataFrame({"table": ["flow"] * 4, "item": ["total", "a", "b", "c"], "n": [107, 3, 52, 52]})
    out = release_counts(frame, ["n"], POLICY, partitions=[Partition(("table",), "item", "total")])
    assert out["n"].to_list() == [105, None, None, 50]


# ------------------------------------------------------------------------------------------ config
INPUTS = {n: {"path": f"{n}.csv"} for n in ("population", "prescriptions", "ms_registry")}


@pytest.mark.parametrize(
    ("override", "message"),
    [({"disclosure": {"min_cell": 1}}, r"`disclosure.min_cell`: 1 is less than the minimum of 2"),
     ({"screen": {"min_exposed_cases": 3}},
      r"`screen.min_exposed_cases` \(3\) and `disclosure.min_cell` \(5\): a fit on fewer exposed cases"),
     ({"disclosure": {"min_cell": 10}}, r"`screen.min_exposed_cases` \(5\) and `disclosure.min_cell` \(10\)"),
     ({"disclosure": {"rounding_base": 0}}, r"`disclosure.rounding_base`: 0 is less than the minimum of 1")],
)  # fmt: skip
def test_disclosure_config_mistakes_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"inputs": dict(INPUTS), **override})


def test_default_policy_is_min_cell_5_rounded_to_5():
    config = validate_config({"inputs": dict(INPUTS)})
    assert DisclosurePolicy.from_config(config) == DisclosurePolicy(min_cell=5, rounding_base=5)


def test_validation_and_flow_are_one_structure():
    """The issue's case: 20,000 read, 19,997 kept (3 rejects hidden) and a flow total of 19,997; the flow's
    emigration (3) hidden while the events total equals the exit reason `outcome`."""
    validation = {"extracts": {"population": {"rows_read": 20000, "rows_kept": 19997, "rows_rejected": 3,
                                              "rejected_by_reason": {"bad date": 3}}}}  # fmt: skip
    flow = {"persons_in_population": 19997, "excluded": {"too old": 997}, "persons_in_cohort": 19000, "events": 700,
            "events_by_sex": {"F": 450, "M": 250}, "events_by_outcome_source": {"ms_registry": 700},
            "exit_reasons": {"death": 1297, "emigration": 3, "outcome": 700, "study_end": 17000}}  # fmt: skip
    flow_out, validation_out = released_summaries(flow, validation, POLICY)
    cells = {(t, i): n for t, i, n in pl.concat([flow_out, validation_out]).iter_rows()}
    assert cells[("population", "rejected")] is None
    # kept is hidden with the rejects, so the flow total holding the same count is hidden too
    assert cells[("population", "kept")] is None and cells[("flow", "total")] is None
    # emigration hidden: its partner in the exit reasons may not be `outcome` (shown as the events total)
    assert cells[("exit reasons", "emigration")] is None
    hidden_partner = [i for (t, i), n in cells.items() if t == "exit reasons" and i != "emigration" and n is None]
    assert hidden_partner and all(cells[("exit reasons", i)] is None for i in hidden_partner)
    if cells[("exit reasons", "outcome")] is None:
        assert cells[("events by sex", "total")] is None and cells[("events by outcome source", "total")] is None
    # shown counts are rounded to the base
    assert all(n % 5 == 0 for n in cells.values() if n is not None)


def test_a_hidden_total_is_not_the_sum_of_shown_parts():
    frame = pl.DataFrame({"table": ["t"] * 3, "item": ["total", "a", "b"], "n": [None, 40, 52]},
                         schema={"table": pl.String, "item": pl.String, "n": pl.Int64})  # fmt: skip
    out = suppress_small_counts(frame, ["n"], 5, partitions=[Partition(("table",), "item", "total")])
    assert out["n"].to_list() == [None, None, 52]


def test_an_unreleased_part_is_hidden_first_when_a_second_cell_must_go():
    """total = within + after, `after` never released: with the total hidden, hiding `after` protects it (the
    reader cannot add the parts), so `within` stays shown; without the declaration the smaller part goes."""
    frame = pl.DataFrame({"table": ["t"] * 3, "item": ["total", "within", "after"], "n": [None, 38, 46]},
                         schema_overrides={"n": pl.Int64})  # fmt: skip
    plain = suppress_small_counts(frame, ["n"], 5, partitions=[Partition(("table",), "item", "total")])
    assert plain["n"].to_list() == [None, None, 46]
    declared = suppress_small_counts(frame, ["n"], 5, partitions=[Partition(("table",), "item", "total", ("after",))])
    assert declared["n"].to_list() == [None, 38, None]
    # a small unreleased part still takes a shown part with it when the total is shown
    small = frame.with_columns(pl.Series("n", [41, 38, 3]))
    out = suppress_small_counts(small, ["n"], 5, partitions=[Partition(("table",), "item", "total", ("after",))])
    assert out["n"].to_list() == [41, None, None]


def test_counts_in_free_text_are_released_like_table_counts():
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    assert mask_counts_in_text("3 persons of the population; 4 of 8000 cases; n = 2", policy) == (
        "<5 persons of the population; <5 of about 8,000 cases; n = <5"
    )
    # an exact count >= min_cell beside rounded tables would let a reader subtract: it is rounded like them
    assert mask_counts_in_text("1234 persons, 7 rows rejected, 0 persons", policy) == "about 1,235 persons, about 5 rows rejected, 0 persons"
    # numbers that count no persons or records stay: ATC levels, classes, lags, estimates
    kept = "ATC level 2: 3 of 40 classes at lag 5; HR 1.5 cases"
    assert mask_counts_in_text(kept, policy) == kept


def test_text_rows_mark_suppressed_counts_and_hidden_estimates():
    frame = pl.DataFrame({"n_events": [12, None], "estimate": [0.123456, None], "label": ["a", "b"]})
    header, rows = text_rows(frame, 5)
    assert header == ["n_events", "estimate", "label"]
    assert rows == [["12", "0.123", "a"], ["<5", "<5", "b"]]  # one marker for every suppressed cell
    assert text_rows(frame, 5, "hidden")[1] == [["12", "0.123", "a"], ["<5", "hidden", "b"]]
