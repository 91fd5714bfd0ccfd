"""The trial emulation's outcome definitions (repurpose.trial_emulation.outcomes) against hand-worked cases.

Every expected value below is worked out by hand from the rule in the function's docstring (and
docs/methods.md, "Trial emulation: outcomes"); the random-data tests compare the vectorised polars code
with a plain per-person loop written directly from the same rule.
"""

from __future__ import annotations

import time
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from repurpose.trial_emulation.outcomes import (
    confirmed_worsening,
    first_diagnosis,
    first_relapse,
    relapse_times,
    sick_leave_days,
    worsening_threshold,
)

T0 = date(2020, 1, 1)
FAR = date(2030, 1, 1)


def day(offset: int) -> date:
    return T0 + timedelta(days=offset)


def edss_table(rows: list[tuple[int, int, float]]) -> pl.DataFrame:
    """(person, day offset from T0, EDSS) rows as a validated ms_edss table."""
    return pl.DataFrame(
        {
            "person_id": [r[0] for r in rows],
            "visit_date": [day(r[1]) for r in rows],
            "edss": [r[2] for r in rows],
        },
        schema={"person_id": pl.Int64, "visit_date": pl.Date, "edss": pl.Float64},
    )


def relapse_table(rows: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"person_id": [r[0] for r in rows], "relapse_date": [day(r[1]) for r in rows]},
        schema={"person_id": pl.Int64, "relapse_date": pl.Date},
    )


def baseline_table(persons: list[int], end: date | list[date] = FAR, time_zero: date = T0) -> pl.DataFrame:
    ends = end if isinstance(end, list) else [end] * len(persons)
    return pl.DataFrame(
        {"person_id": persons, "time_zero": [time_zero] * len(persons), "end_date": ends},
        schema={"person_id": pl.Int64, "time_zero": pl.Date, "end_date": pl.Date},
    )


NO_RELAPSES = relapse_table([])


def worsening_of(
    visits: list[tuple[int, float]], relapses: list[int] = (), end: date = FAR, **options
) -> dict:
    """The one person's row for visits [(day offset, EDSS)] and relapse day offsets."""
    out = confirmed_worsening(
        edss_table([(1, d, e) for d, e in visits]),
        relapse_table([(1, d) for d in relapses]),
        baseline_table([1], end),
        **options,
    )
    assert out.columns == ["person_id", "baseline_edss", "worsening_date", "event"]
    assert out.height == 1
    return out.row(0, named=True)


# --------------------------------------------------------------------------------------------------
# Confirmed disability worsening
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline", "score", "worsened"),
    [
        (0.0, 1.0, False),  # baseline 0 needs +1.5
        (0.0, 1.5, True),
        (0.5, 1.0, False),  # 0.5 takes the +1.0 band (stated in the docstring)
        (0.5, 1.5, True),
        (1.0, 1.5, False),  # 1.0-5.5 needs +1.0
        (1.0, 2.0, True),
        (3.0, 3.5, False),
        (3.0, 4.0, True),
        (5.5, 6.0, False),
        (5.5, 6.5, True),
        (6.0, 6.0, False),  # from 6.0 +0.5
        (6.0, 6.5, True),
        (7.5, 8.0, True),
    ],
)
def test_threshold_bands(baseline: float, score: float, worsened: bool) -> None:
    row = worsening_of([(-10, baseline), (100, score), (300, score)])
    assert row["baseline_edss"] == baseline
    assert row["event"] is worsened
    assert row["worsening_date"] == (day(100) if worsened else None)


def test_threshold_expression_by_hand() -> None:
    frame = pl.DataFrame({"reference": [0.0, 0.5, 1.0, 2.5, 5.5, 6.0, 6.5, 9.0]})
    got = frame.select(worsening_threshold(pl.col("reference"))).to_series().to_list()
    assert got == [1.5, 1.5, 2.0, 3.5, 6.5, 6.5, 7.0, 9.5]


def test_unconfirmed_worsening_that_falls_back() -> None:
    # 3.0 at day 100 falls to 2.5 at day 200: not sustained, and 3.0 at day 400 is never confirmed
    row = worsening_of([(0, 2.0), (100, 3.0), (200, 2.5), (400, 3.0)])
    assert row["event"] is False and row["worsening_date"] is None
    # a fall in between breaks the worsening even when a later visit >= 168 days after the start is high
    row = worsening_of([(0, 2.0), (100, 3.0), (200, 2.5), (300, 3.0)])
    assert row["event"] is False
    # the second worsening (day 400) is confirmed 200 days later: the event starts there
    row = worsening_of([(0, 2.0), (100, 3.0), (200, 2.5), (400, 3.0), (600, 3.5)])
    assert row["event"] is True and row["worsening_date"] == day(400)


def test_confirmed_only_at_a_visit_24_weeks_later() -> None:
    # 100 days later is too early; 168 days later (day 268) confirms; the event is dated at the first visit
    row = worsening_of([(0, 2.0), (100, 3.0), (200, 3.0), (250, 3.5), (268, 3.0)])
    assert row["event"] is True and row["worsening_date"] == day(100)
    row = worsening_of([(0, 2.0), (100, 3.0), (200, 3.0), (250, 3.5), (267, 3.0)])
    assert row["event"] is False
    row = worsening_of([(0, 2.0), (100, 3.0), (267, 3.0)], confirmation_days=167)
    assert row["event"] is True


def test_earliest_confirmed_start_dates_the_event() -> None:
    # two confirmed worsenings: day 100 (to 300) and day 500 (to 900): the first one counts
    row = worsening_of([(0, 2.0), (100, 3.0), (300, 3.0), (400, 2.0), (500, 3.0), (900, 4.0)])
    assert row["worsening_date"] == day(100)
    # an unconfirmed early start does not hide a later confirmed one
    row = worsening_of([(0, 2.0), (50, 3.0), (100, 2.0), (150, 3.5), (400, 3.5)])
    assert row["worsening_date"] == day(150)


def test_visit_within_30_days_after_a_relapse_neither_starts_nor_confirms() -> None:
    # start: the day-100 visit is 10 days after a relapse, so the worsening starts at day 300
    row = worsening_of([(0, 2.0), (100, 3.0), (300, 3.0), (500, 3.0)], relapses=[90])
    assert row["worsening_date"] == day(300)
    # confirmation: the only later high visit (day 280) is 20 days after a relapse
    row = worsening_of([(0, 2.0), (100, 3.0), (280, 3.0)], relapses=[260])
    assert row["event"] is False
    # boundaries: a visit on the relapse day and 30 days after are excluded, 31 days after counts
    assert worsening_of([(0, 2.0), (100, 3.0), (280, 3.0)], relapses=[280])["event"] is False
    assert worsening_of([(0, 2.0), (100, 3.0), (280, 3.0)], relapses=[250])["event"] is False
    assert worsening_of([(0, 2.0), (100, 3.0), (280, 3.0)], relapses=[249])["event"] is True
    # a relapse after the visit does not exclude it
    assert worsening_of([(0, 2.0), (100, 3.0), (280, 3.0)], relapses=[281])["event"] is True
    # an excluded low visit does not break a sustained worsening either
    row = worsening_of([(0, 2.0), (100, 3.0), (160, 2.0), (300, 3.0)], relapses=[150])
    assert row["worsening_date"] == day(100)
    # with a 0-day exclusion only a visit on the relapse day is excluded
    row = worsening_of(
        [(0, 2.0), (100, 3.0), (300, 3.0), (500, 3.0)], relapses=[90], relapse_exclusion_days=0
    )
    assert row["worsening_date"] == day(100)


def test_baseline_visit_rule() -> None:
    # the last valid visit in [time zero - 365, time zero]; visits after time zero are not baseline
    assert worsening_of([(-300, 1.0), (-20, 2.0), (100, 3.0)])["baseline_edss"] == 2.0
    assert worsening_of([(-365, 2.5)])["baseline_edss"] == 2.5
    assert worsening_of([(0, 3.5)])["baseline_edss"] == 3.5
    assert worsening_of([(-60, 1.0)], baseline_window_days=59)["baseline_edss"] is None
    # a visit within 30 days after a relapse is no baseline: the earlier one is
    assert worsening_of([(-200, 1.0), (-20, 3.0)], relapses=[-30])["baseline_edss"] == 1.0


def test_no_baseline_visit_gives_no_event() -> None:
    row = worsening_of([(-366, 1.0), (100, 6.0), (400, 6.0)])
    assert row == {"person_id": 1, "baseline_edss": None, "worsening_date": None, "event": False}


def test_visits_after_end_date_are_ignored() -> None:
    visits = [(0, 2.0), (100, 3.0), (268, 3.0)]
    assert worsening_of(visits, end=day(250))["event"] is False
    assert worsening_of(visits, end=day(268))["event"] is False  # end_date itself is not followed
    assert worsening_of(visits, end=day(269))["event"] is True


def test_roving_reference() -> None:
    # a lower score confirmed at the next visit (2.0, 2.0) re-baselines: 3.0 is then a worsening
    visits = [(0, 4.0), (100, 2.0), (200, 2.0), (300, 3.0), (500, 3.0)]
    assert worsening_of(visits)["event"] is False
    row = worsening_of(visits, roving=True)
    assert row["event"] is True and row["worsening_date"] == day(300)
    assert row["baseline_edss"] == 4.0  # baseline_edss is the baseline, not the moving reference
    # the new reference is the higher of the two lower scores (2.5): 3.0 is not a worsening from it, 3.5 is
    assert (
        worsening_of([(0, 4.0), (100, 2.0), (200, 2.5), (300, 3.0), (500, 3.0)], roving=True)["event"]
        is False
    )
    row = worsening_of([(0, 4.0), (100, 2.0), (200, 2.5), (300, 3.5), (500, 3.5)], roving=True)
    assert row["worsening_date"] == day(300)
    # an unconfirmed lower score (2.0 then back to 4.0) does not move the reference
    assert (
        worsening_of([(0, 4.0), (100, 2.0), (200, 4.0), (300, 3.0), (500, 3.0)], roving=True)["event"]
        is False
    )
    # the reference never moves up: without lower scores roving equals fixed
    visits = [(0, 2.0), (100, 3.0), (200, 2.5), (400, 3.0), (600, 3.5)]
    assert worsening_of(visits, roving=True) == worsening_of(visits)


def test_one_row_per_baseline_person_in_baseline_order() -> None:
    edss = edss_table([(5, 0, 2.0), (5, 100, 3.0), (5, 300, 3.0), (7, 0, 1.0), (9, 0, 2.0)])
    out = confirmed_worsening(edss, NO_RELAPSES, baseline_table([9, 5, 8, 7]))
    assert out.get_column("person_id").to_list() == [9, 5, 8, 7]
    assert out.get_column("event").to_list() == [False, True, False, False]
    assert out.get_column("baseline_edss").to_list() == [2.0, 2.0, None, 1.0]
    assert out.schema["worsening_date"] == pl.Date and out.schema["event"] == pl.Boolean
    # the extract's order does not matter
    shuffled = edss.sample(fraction=1.0, shuffle=True, seed=3)
    assert confirmed_worsening(shuffled, NO_RELAPSES, baseline_table([9, 5, 8, 7])).equals(out)


def test_bad_inputs_name_the_table_and_column() -> None:
    with pytest.raises(ValueError, match="edss: missing column"):
        confirmed_worsening(edss_table([]).drop("edss"), NO_RELAPSES, baseline_table([1]))
    with pytest.raises(ValueError, match="baseline: missing column.*end_date"):
        first_relapse(NO_RELAPSES, baseline_table([1]).drop("end_date"))
    with pytest.raises(ValueError, match="person_id must be unique"):
        relapse_times(NO_RELAPSES, baseline_table([1, 1]))


def _reference_worsening(
    visits: list[tuple[int, float]], relapses: list[int], end: int, roving: bool
) -> tuple[float | None, int | None]:
    """The docstring's rule as a plain loop over one person's visits (day offsets from time zero)."""
    by_day: dict[int, float] = {}
    for d, e in visits:
        by_day[d] = max(e, by_day.get(d, -1.0))
    valid = sorted((d, e) for d, e in by_day.items() if not any(0 <= d - r <= 30 for r in relapses))
    before = [e for d, e in valid if -365 <= d <= 0]
    if not before:
        return None, None
    reference = before[-1]
    follow = [(d, e) for d, e in valid if 0 < d < end]
    thresholds = []
    for i in range(len(follow)):
        if roving and i >= 2:
            pair = max(follow[i - 2][1], follow[i - 1][1])
            reference = min(reference, pair)
        thresholds.append(float(worsening_threshold_value(reference)))
    for i, (d, e) in enumerate(follow):
        if e < thresholds[i]:
            continue
        last = d
        for d2, e2 in follow[i + 1 :]:
            if e2 < thresholds[i]:
                break
            last = d2
        if last - d >= 168:
            return before[-1], d
    return before[-1], None


def worsening_threshold_value(reference: float) -> float:
    return reference + (1.5 if reference == 0 else 1.0 if reference < 6.0 else 0.5)


@pytest.mark.parametrize("roving", [False, True])
def test_matches_a_per_person_loop_on_random_histories(roving: bool) -> None:
    rng = np.random.default_rng(11)
    n = 400
    visit_rows, relapse_rows, ends = [], [], []
    for person in range(n):
        days = np.sort(rng.choice(np.arange(-500, 2000, 15), size=rng.integers(0, 14), replace=False))
        score = rng.choice(np.arange(0, 20) / 2)
        for d in days:
            score = float(np.clip(score + rng.choice([-1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5]), 0, 9.5))
            visit_rows.append((person, int(d), score))
        relapse_rows += [(person, int(r)) for r in rng.integers(-400, 2000, rng.integers(0, 4))]
        ends.append(int(rng.integers(1, 2100)))
    out = confirmed_worsening(
        edss_table(visit_rows),
        relapse_table(relapse_rows),
        baseline_table(list(range(n)), [day(e) for e in ends]),
        roving=roving,
    )
    events = 0
    for person, row in enumerate(out.iter_rows(named=True)):
        visits = [(d, e) for p, d, e in visit_rows if p == person]
        relapses = [r for p, r in relapse_rows if p == person]
        baseline_edss, start = _reference_worsening(visits, relapses, ends[person], roving)
        assert row["baseline_edss"] == baseline_edss, person
        assert row["worsening_date"] == (None if start is None else day(start)), person
        events += row["event"]
    assert 20 < events < n - 20  # the random histories exercise both outcomes


def test_fifty_thousand_patients_with_ten_visits_each_is_vectorised() -> None:
    """Not a timing assertion: the run is reported, and its result is checked against the loop on a sample."""
    rng = np.random.default_rng(5)
    n, k = 50_000, 10
    person = np.repeat(np.arange(n), k)
    offsets = np.tile(np.arange(k) * 180 - 100, n) + rng.integers(0, 60, n * k)
    steps = rng.choice([-0.5, 0.0, 0.0, 0.5, 1.0], (n, k)).cumsum(axis=1).ravel()
    scores = np.clip(2.0 + steps, 0, 9.5)
    edss = pl.DataFrame({"person_id": person, "offset": offsets, "edss": scores}).select(
        "person_id",
        (pl.lit(T0) + pl.duration(days=pl.col("offset"))).cast(pl.Date).alias("visit_date"),
        "edss",
    )
    relapse_person = rng.integers(0, n, n)
    relapse_day = rng.integers(-300, 1700, n)
    relapses = relapse_table(list(zip(relapse_person.tolist(), relapse_day.tolist(), strict=True)))
    started = time.perf_counter()
    out = confirmed_worsening(edss, relapses, baseline_table(list(range(n))))
    print(f"confirmed_worsening on {n} patients x {k} visits: {time.perf_counter() - started:.2f} s")
    assert out.height == n
    for p in rng.choice(n, 50, replace=False).tolist():
        visits = list(
            zip(offsets[p * k : (p + 1) * k].tolist(), scores[p * k : (p + 1) * k].tolist(), strict=True)
        )
        baseline_edss, start = _reference_worsening(
            visits, relapse_day[relapse_person == p].tolist(), 10**6, False
        )
        assert out.row(p, named=True)["worsening_date"] == (None if start is None else day(start))


# --------------------------------------------------------------------------------------------------
# Relapses
# --------------------------------------------------------------------------------------------------


def test_first_relapse_boundaries() -> None:
    relapses = relapse_table([(1, 0), (1, 5), (2, -3), (3, 99), (3, 100), (4, 100), (5, 1), (5, 40)])
    baseline = baseline_table([1, 2, 3, 4, 5, 6], [FAR, FAR, day(100), day(100), day(100), FAR])
    out = first_relapse(relapses, baseline)
    assert out.columns == ["person_id", "relapse_date", "event"]
    # on time zero: not after it; on end_date: not before it
    assert out.get_column("relapse_date").to_list() == [day(5), None, day(99), None, day(1), None]
    assert out.get_column("event").to_list() == [True, False, True, False, True, False]


def test_relapse_times_boundaries_and_order() -> None:
    relapses = relapse_table([(1, 300), (1, 0), (1, 5), (1, 5), (2, -3), (3, 99), (3, 100), (3, 1)])
    baseline = baseline_table([1, 2, 3], [FAR, FAR, day(100)])
    out = relapse_times(relapses, baseline)
    assert out.schema == {"person_id": pl.Int64, "days_from_time_zero": pl.Int64}
    assert out.rows() == [(1, 5), (1, 300), (3, 1), (3, 99)]


def test_relapse_times_per_person_time_zero() -> None:
    relapses = relapse_table([(1, 50), (2, 50)])
    baseline = pl.DataFrame(
        {"person_id": [1, 2], "time_zero": [day(10), day(49)], "end_date": [FAR, FAR]},
        schema={"person_id": pl.Int64, "time_zero": pl.Date, "end_date": pl.Date},
    )
    assert relapse_times(relapses, baseline).rows() == [(1, 40), (2, 1)]


# --------------------------------------------------------------------------------------------------
# Sick leave
# --------------------------------------------------------------------------------------------------


def leave_table(rows: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    """(person, first day offset, last day offset, percent) spells."""
    return pl.DataFrame(
        {
            "person_id": [r[0] for r in rows],
            "start_date": [day(r[1]) for r in rows],
            "end_date": [day(r[2]) for r in rows],
            "percent": [r[3] for r in rows],
        },
        schema={"person_id": pl.Int64, "start_date": pl.Date, "end_date": pl.Date, "percent": pl.Int32},
    )


def leave_by_interval(out: pl.DataFrame, person: int) -> list[float]:
    return out.filter(pl.col("person_id") == person).sort("interval").get_column("sick_leave_days").to_list()


def test_sick_leave_partial_grades_and_interval_boundaries() -> None:
    # 40% on days 25-34 (both included): 5 days in interval 0 and 5 in interval 1, 2.0 days each
    out = sick_leave_days(leave_table([(1, 25, 34, 40)]), baseline_table([1]), horizon_days=90)
    assert out.columns == ["person_id", "interval", "sick_leave_days"]
    assert leave_by_interval(out, 1) == [2.0, 2.0, 0.0]
    # a one-day spell on the first and on the last day of an interval
    out = sick_leave_days(leave_table([(1, 0, 0, 100), (1, 29, 29, 50), (1, 30, 30, 20)]), baseline_table([1]),
                          horizon_days=60)  # fmt: skip
    assert leave_by_interval(out, 1) == [1.5, 0.2]


def test_sick_leave_overlaps_are_capped_at_one_day_per_day() -> None:
    # 60% + 60% on days 10-19 count 1 a day (10), 30% + 40% on days 40-49 count 0.7 a day (7)
    spells = [(1, 10, 19, 60), (1, 10, 19, 60), (1, 40, 49, 30), (1, 45, 49, 40), (1, 40, 44, 40)]
    out = sick_leave_days(leave_table(spells), baseline_table([1]), horizon_days=60)
    assert leave_by_interval(out, 1) == pytest.approx([10.0, 7.0])
    # a full-time spell inside another full-time spell adds nothing
    out = sick_leave_days(
        leave_table([(1, 0, 29, 100), (1, 5, 9, 100)]), baseline_table([1]), horizon_days=30
    )
    assert leave_by_interval(out, 1) == [30.0]


def test_sick_leave_follow_up_window() -> None:
    spells = [(1, -10, 4, 100), (1, 55, 80, 100), (2, 0, 100, 50), (4, 0, 10, 100)]
    baseline = baseline_table([1, 2, 3, 4], [FAR, day(45), FAR, day(0)])
    out = sick_leave_days(leave_table(spells), baseline, interval_days=30, horizon_days=70)
    # person 1: days 0-4 (before time zero cut off), 55-69 (horizon 70 exclusive): last interval is partial
    assert leave_by_interval(out, 1) == [5.0, 5.0, 10.0]
    # person 2: end_date day 45 is not followed: days 0-44 at 50%, intervals 0 and 1 (partial)
    assert leave_by_interval(out, 2) == [15.0, 7.5]
    # person 3: no leave, every interval present with 0; person 4: no follow-up, no rows
    assert leave_by_interval(out, 3) == [0.0, 0.0, 0.0]
    assert leave_by_interval(out, 4) == []
    assert out.schema == {"person_id": pl.Int64, "interval": pl.Int64, "sick_leave_days": pl.Float64}


def test_sick_leave_matches_a_day_by_day_count_on_random_spells() -> None:
    rng = np.random.default_rng(4)
    n, interval, horizon = 200, 30, 400
    spells = []
    for person in range(n):
        for _ in range(rng.integers(0, 6)):
            start = int(rng.integers(-100, 500))
            spells.append(
                (person, start, start + int(rng.integers(0, 90)), int(rng.choice([20, 50, 80, 100])))
            )
    ends = rng.integers(-5, 600, n)
    out = sick_leave_days(leave_table(spells), baseline_table(list(range(n)), [day(int(e)) for e in ends]),
                          interval_days=interval, horizon_days=horizon)  # fmt: skip
    for person in range(n):
        stop = min(int(ends[person]), horizon)
        daily = np.zeros(max(stop, 0))
        for p, a, b, percent in spells:
            if p == person:
                for t in range(max(a, 0), min(b + 1, stop)):
                    daily[t] += percent / 100
        daily = np.minimum(daily, 1.0)
        expected = [daily[k : k + interval].sum() for k in range(0, max(stop, 0), interval)]
        assert leave_by_interval(out, person) == pytest.approx(expected), person


def diagnosis_table(rows: list[tuple[int, int, str]]) -> pl.DataFrame:
    """(person, day offset from T0, ICD-10 code) rows as a validated diagnoses table."""
    return pl.DataFrame(
        {"person_id": [r[0] for r in rows], "diagnosis_date": [day(r[1]) for r in rows], "icd10_code": [r[2] for r in rows]},
        schema={"person_id": pl.Int64, "diagnosis_date": pl.Date, "icd10_code": pl.String},
    )  # fmt: skip


INFECTION_PREFIXES = ("A40", "a41", "J18", "A81.2", "B02")  # as a config may write them


def test_first_diagnosis_hand_worked_sequences() -> None:
    rows = [
        (1, -30, "A419"), (1, 0, "J189"), (1, 12, "G35"), (1, 40, "J181"), (1, 20, "B029"),  # -> day 20, B029
        (2, -1, "A410"),  # before time zero only -> none
        (3, 99, "A812"), (3, 100, "A41"),  # end_date day 100 (exclusive) -> day 99; A81.2 matches A812
        (4, 100, "J18"),  # on end_date -> none
        (5, 7, "A81"), (5, 8, "A8120"), (5, 9, "J17"),  # A81 is not A81.2; A8120 starts with A812 -> day 8
        (6, 5, "J18"), (6, 5, "A40"), (6, 5, "A419"),  # one day, three codes -> the first alphabetically
        (7, 3, "XA41"),  # a prefix matches at the start only
        (9, 1, "A41"),  # not a baseline person
    ]  # fmt: skip
    baseline = baseline_table([1, 2, 3, 4, 5, 6, 7, 8], [FAR, FAR, day(100), day(100), FAR, FAR, FAR, FAR])
    out = first_diagnosis(diagnosis_table(rows), baseline, INFECTION_PREFIXES)
    assert out.columns == ["person_id", "diagnosis_date", "icd10_code", "event"]
    assert out.get_column("person_id").to_list() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert out.get_column("diagnosis_date").to_list() == [day(20), None, day(99), None, day(8), day(5), None, None]
    assert out.get_column("icd10_code").to_list() == ["B029", None, "A812", None, "A8120", "A40", None, None]
    assert out.get_column("event").to_list() == [True, False, True, False, True, True, False, False]


def test_first_diagnosis_reads_a_lazy_extract_and_checks_its_input() -> None:
    rows = [(1, 3, "J181"), (1, 2, "J13"), (2, 50, "N10")]
    baseline = baseline_table([1, 2], [FAR, day(50)])
    lazy = first_diagnosis(diagnosis_table(rows).lazy(), baseline, ["j12", "J13", "N10"])
    assert lazy.get_column("diagnosis_date").to_list() == [day(2), None]
    assert lazy.equals(first_diagnosis(diagnosis_table(rows), baseline, ["J12", "J13", "N10"]))
    with pytest.raises(ValueError, match=r"diagnoses: missing column\(s\) \['icd10_code'\]"):
        first_diagnosis(diagnosis_table(rows).drop("icd10_code"), baseline, ["J13"])
    with pytest.raises(ValueError, match="non-empty"):
        first_diagnosis(diagnosis_table(rows), baseline, [])


def test_first_diagnosis_matches_a_plain_loop_on_random_records() -> None:
    rng = np.random.default_rng(5)
    codes = ["A41", "A419", "J18", "J189", "G35", "G20", "B02", "N10", "L03", "A812"]
    prefixes = ("A41", "J18", "B02", "A812")
    n = 300
    ends = rng.integers(1, 400, n)
    rows = [(int(p), int(d), str(c)) for p, d, c in zip(rng.integers(0, n, 3000), rng.integers(-100, 450, 3000),
                                                         rng.choice(codes, 3000), strict=True)]  # fmt: skip
    out = first_diagnosis(diagnosis_table(rows), baseline_table(list(range(n)), [day(int(e)) for e in ends]), prefixes)
    for person, found in zip(out["person_id"], out["diagnosis_date"], strict=True):
        days = [d for p, d, c in rows if p == person and 0 < d < ends[person] and c.startswith(prefixes)]
        assert found == (day(min(days)) if days else None)
