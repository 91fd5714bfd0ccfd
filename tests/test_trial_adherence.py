"""The sustained per-protocol estimand: adherence deviations worked by hand on constructed treatment histories
(each kind, the stop gap, the escalation indication), the sustained clones' rows and stabilised weights by hand,
its weighted estimates against lifelines, and its agreement with the start-only estimand when no one deviates
after the start (docs/methods.md, "Trial emulation: design and estimation", Sustained strategies)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import CoxTimeVaryingFitter, KaplanMeierFitter

from repurpose.config import validate_config
from repurpose.trial_emulation.adherence import (
    ADHERENCE_COVARIATES,
    Adherence,
    adherence_covariates,
    deviations,
)
from repurpose.trial_emulation.analysis import SUSTAINED, build_trial_data, estimates, fit_all, fit_weights
from repurpose.trial_emulation.clones import build_clones, weights_from
from repurpose.trial_emulation.cohort import TIME_VARYING
from repurpose.trial_emulation.estimators import fit_cox, kaplan_meier, survival_at
from repurpose.trial_emulation.protocol import TrialProtocol

INPUTS = {"population": {"path": "p"}, "prescriptions": {"path": "p"}, "ms_registry": {"path": "m"}}
ZERO = date(2015, 1, 1)
NATALIZUMAB, OCRELIZUMAB, DIMETHYL_FUMARATE, TERIFLUNOMIDE = "L04AA23", "L04AA36", "L04AX07", "L04AA31"


def protocol(**trial) -> TrialProtocol:
    return TrialProtocol.from_config(validate_config({"inputs": INPUTS, "trial_emulation": trial}))


def day(d: int | None) -> date | None:
    return None if d is None else ZERO + timedelta(days=d)


# person -> (treatment episodes (code, start day, stop day or None), relapse days, EDSS visits (day, score),
#            expected high-efficacy deviation (day, kind), expected escalation deviation (day, kind));
# defaults: stop gap 180 days, indication window 365 days, confirmation 168 days, grace 180 days
HISTORIES = {
    1: ([(NATALIZUMAB, 10, None)], [], [], (None, None), (None, None)),                       # on HE throughout
    2: ([(NATALIZUMAB, 10, 400), (OCRELIZUMAB, 580, None)], [], [], (None, None), (None, None)),  # gap of 180: in time
    3: ([(NATALIZUMAB, 10, 400), (OCRELIZUMAB, 581, None)], [], [], (580, "stop"), (None, None)),  # gap of 181
    4: ([(NATALIZUMAB, 10, 400)], [], [], (580, "stop"), (None, None)),                       # stopped for good
    5: ([(NATALIZUMAB, 10, None), (DIMETHYL_FUMARATE, 700, None)], [], [], (700, "switch"), (None, None)),
    6: ([(NATALIZUMAB, 10, 100), (DIMETHYL_FUMARATE, 150, None)], [], [], (150, "switch"), (None, None)),
    7: ([(DIMETHYL_FUMARATE, 20, 800), (NATALIZUMAB, 800, None)], [700], [], (None, None), (None, None)),  # relapse
    8: ([(DIMETHYL_FUMARATE, 20, 800), (NATALIZUMAB, 800, None)], [], [], (None, None), (800, "unindicated_escalation")),
    9: ([(DIMETHYL_FUMARATE, 20, None), (NATALIZUMAB, 800, None)], [435], [], (None, None), (None, None)),  # first window day
    10: ([(DIMETHYL_FUMARATE, 20, None), (NATALIZUMAB, 800, None)], [434], [], (None, None), (800, "unindicated_escalation")),
    # confirmed worsening from the baseline 2.0: 3.0 at day 500 confirmed at 700 (>= 168 days), in the window
    11: ([(DIMETHYL_FUMARATE, 20, None), (NATALIZUMAB, 800, None)], [], [(500, 3.0), (700, 3.0)], (None, None), (None, None)),
    # worsening at 300 (confirmed at 500): before the window
    12: ([(DIMETHYL_FUMARATE, 20, None), (NATALIZUMAB, 800, None)], [], [(300, 3.0), (500, 3.0)], (None, None),
         (800, "unindicated_escalation")),
    # worsening at 700 confirmed only at 900, after the switch: not known on the day
    13: ([(DIMETHYL_FUMARATE, 20, None), (NATALIZUMAB, 800, None)], [], [(700, 3.0), (900, 3.0)], (None, None),
         (800, "unindicated_escalation")),
    # a stop of 150 days then an indicated escalation: adherent; a moderate-to-moderate switch is not a deviation
    14: ([(DIMETHYL_FUMARATE, 20, 300), (NATALIZUMAB, 450, None)], [400], [], (None, None), (None, None)),
    15: ([(DIMETHYL_FUMARATE, 20, 300), (TERIFLUNOMIDE, 320, None)], [], [], (None, None), (None, None)),
    16: ([(DIMETHYL_FUMARATE, 20, 300)], [], [], (None, None), (480, "stop")),
    # the stop comes first, then an unindicated escalation
    17: ([(DIMETHYL_FUMARATE, 20, 300), (NATALIZUMAB, 900, None)], [], [], (None, None), (480, "stop")),
    # overlapping episodes: covered to the later stop (600), so the gap runs from there
    18: ([(NATALIZUMAB, 10, 600), (OCRELIZUMAB, 300, 400)], [], [], (780, "stop"), (None, None)),
    19: ([], [], [], (None, None), (None, None)),                                              # never treated
    20: ([(NATALIZUMAB, 200, 300)], [], [], (None, None), (None, None)),                       # started after grace
}  # fmt: skip


def hand_tables() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Baseline (the columns `deviations` reads), treatments, relapses and EDSS (a 2.0 at time zero for all)."""
    ids = list(HISTORIES)
    first = []
    for i in ids:
        episodes = HISTORIES[i][0]
        if not episodes:
            first.append((None, None))
            continue
        s = min(e[1] for e in episodes)
        high = any(e[0] in (NATALIZUMAB, OCRELIZUMAB) for e in episodes if e[1] == s)
        first.append((s, "high_efficacy" if high else "moderate"))
    baseline = pl.DataFrame({"person_id": ids, "time_zero": [ZERO] * len(ids),
                             "first_start_day": [f[0] for f in first], "first_class": [f[1] for f in first]},
                            schema_overrides={"first_start_day": pl.Int64, "first_class": pl.String})  # fmt: skip
    treatments = pl.DataFrame(
        [(i, code, day(a), day(b)) for i in ids for code, a, b in HISTORIES[i][0]],
        schema={"person_id": pl.Int64, "treatment_atc_code": pl.String, "start_date": pl.Date, "stop_date": pl.Date}, orient="row",
    )  # fmt: skip
    relapses = pl.DataFrame([(i, day(d)) for i in ids for d in HISTORIES[i][1]],
                            schema={"person_id": pl.Int64, "relapse_date": pl.Date}, orient="row")  # fmt: skip
    edss = pl.DataFrame([(i, ZERO, 2.0) for i in ids] + [(i, day(d), v) for i in ids for d, v in HISTORIES[i][2]],
                        schema={"person_id": pl.Int64, "visit_date": pl.Date, "edss": pl.Float64}, orient="row")  # fmt: skip
    return baseline, treatments, relapses, edss


def test_deviations_by_hand_on_constructed_histories():
    baseline, treatments, relapses, edss = hand_tables()
    table = deviations(protocol(), baseline, treatments=treatments, relapses=relapses, edss=edss)
    for row in table.iter_rows(named=True):
        _, _, _, high, escalation = HISTORIES[row["person_id"]]
        got_high = (None if row["high_efficacy_deviation_day"] is None else int(row["high_efficacy_deviation_day"]),
                    row["high_efficacy_deviation"])  # fmt: skip
        got_escalation = (None if row["escalation_deviation_day"] is None else int(row["escalation_deviation_day"]),
                          row["escalation_deviation"])  # fmt: skip
        assert (row["person_id"], got_high, got_escalation) == (row["person_id"], high, escalation)


def test_the_stop_gap_and_the_indication_window_are_the_configured_ones():
    baseline, treatments, relapses, edss = hand_tables()
    wide = deviations(protocol(stop_gap_days=200, escalation_indication_window_days=366), baseline,
                      treatments=treatments, relapses=relapses, edss=edss)  # fmt: skip
    by_person = {r["person_id"]: r for r in wide.iter_rows(named=True)}
    assert by_person[3]["high_efficacy_deviation"] is None  # a gap of 181 days is in time with 200 allowed
    assert by_person[4]["high_efficacy_deviation_day"] == 600.0
    assert by_person[10]["escalation_deviation"] is None  # the relapse 366 days before is now in the window
    assert by_person[16]["escalation_deviation_day"] == 500.0


def test_a_treatment_extract_without_stop_dates_sees_no_stop():
    baseline, treatments, relapses, edss = hand_tables()
    table = deviations(protocol(), baseline, treatments=treatments.drop("stop_date"), relapses=relapses, edss=edss)
    assert "stop" not in table["high_efficacy_deviation"].to_list() + table["escalation_deviation"].to_list()
    assert table.filter(pl.col("person_id") == 5)["high_efficacy_deviation"].item() == "switch"


def test_adherence_covariates_by_hand():
    baseline, treatments, _, _ = hand_tables()
    x = adherence_covariates(baseline, treatments, protocol(), np.array([0.0, 365.25, 730.5]))
    at = {name: x[..., j] for j, name in enumerate(ADHERENCE_COVARIATES)}
    i = list(HISTORIES).index(4)  # natalizumab from 10 to 400
    assert at["years_since_time_zero"][i].tolist() == [0.0, 1.0, 2.0]
    assert at["years_on_strategy"][i] == pytest.approx([0.0, 355.25 / 365.25, 720.5 / 365.25])
    assert at["high_efficacy_started"][i].tolist() == [0.0, 1.0, 1.0]
    assert at["off_therapy"][i].tolist() == [1.0, 0.0, 1.0]
    j = list(HISTORIES).index(7)  # dimethyl fumarate from 20, natalizumab from 800
    assert at["high_efficacy_started"][j].tolist() == [0.0, 0.0, 0.0]
    assert at["off_therapy"][j].tolist() == [1.0, 0.0, 0.0]


# sustained clones on the hand-made persons of test_trial_clones (grace 180, 30-day grace intervals, then 90-day)
PERSONS = [
    (10, "high_efficacy", 2000),   # 0: HE at 10, deviates at 400 (HE clone); the escalation clone censored at 10
    (100, "moderate", 2000),       # 1: moderate at 100, never deviates: escalation clone to 2000
    (None, None, 2000),            # 2: never treated: both censored at 180
    (20, "high_efficacy", 300),    # 3: HE at 20, deviates at 25 (moved to 30, its grace interval's end); follow-up to 300
    (150, "moderate", 500),        # 4: moderate at 150, deviates at 600 after follow-up ended (500): not censored
]  # fmt: skip
DEVIATION = {1: np.array([400.0, np.nan, np.nan, 25.0, np.nan]), 0: np.array([np.nan, np.nan, np.nan, np.nan, 600.0])}


def hand_sustained(p: TrialProtocol):
    from test_trial_clones import hand_baseline

    baseline, covariates = hand_baseline(PERSONS)
    bounds = p.interval_bounds(sustained=True)
    k = len(bounds) - 1
    varying = np.broadcast_to(np.array([1.0, 1.0, 2.0]), (len(PERSONS), k, len(TIME_VARYING))).copy()
    extra = np.zeros((len(PERSONS), k, len(ADHERENCE_COVARIATES)))
    adherent = Adherence(DEVIATION, bounds, varying, extra)
    return baseline, covariates, build_clones(baseline, covariates, p, adherent)


def test_sustained_clones_rows_by_hand():
    p = protocol(interval_days=30, max_years=5.5, horizons_years=[2, 5])
    _, _, clones = hand_sustained(p)
    n = len(PERSONS)
    bounds = p.interval_bounds(sustained=True)
    assert bounds[:8].tolist() == [0, 30, 60, 90, 120, 150, 180, 270]
    # (arm 1 = first n clones) stops and censoring
    assert clones.stop[:n].tolist() == [400.0, 100.0, 180.0, 30.0, 150.0]
    assert clones.censored[:n].tolist() == [True, True, True, True, True]
    assert clones.stop[n:].tolist() == [10.0, 2000.0, 180.0, 20.0, 500.0]
    assert clones.censored[n:].tolist() == [True, False, True, True, False]

    def rows_of(c):
        m = clones.model_clone == c
        return list(zip(clones.model_interval[m].tolist(), clones.model_phase[m].tolist(), clones.model_deviates[m].tolist(), strict=True))

    # HE clone of person 0: start in interval 0 (grace row), adherent from interval 1 (grace intervals 1-5, then
    # 90-day ones), deviates at 400 in interval 8, (360, 450]
    assert rows_of(0) == [(0, 0, False)] + [(k, 1, False) for k in range(1, 8)] + [(8, 1, True)]
    # person 3's deviation at 25 moves to 30: the first adherence interval (30, 60] holds it, with no time
    assert rows_of(3) == [(0, 0, False), (1, 1, True)]
    # escalation clone of person 1: grace rows to the start's interval (3), then adherent to the end of follow-up
    last = int(np.searchsorted(bounds, 1999, "right") - 1)
    assert rows_of(n + 1) == [(k, 0, False) for k in range(4)] + [(k, 1, False) for k in range(4, last + 1)]
    # escalation clone of person 4: its deviation after the end of follow-up is not one
    assert rows_of(n + 4)[-1] == (int(np.searchsorted(bounds, 499, "right") - 1), 1, False)
    # estimation rows of a clone tile (0, stop] without gaps, each inside one interval
    for c in range(2 * n):
        m = clones.row_clone == c
        starts, stops = clones.row_start[m], clones.row_stop[m]
        assert starts[0] == 0 and stops[-1] == clones.stop[c] and np.all(starts[1:] == stops[:-1])
        assert np.all(np.searchsorted(bounds, starts, "right") == np.searchsorted(bounds, stops, "left"))


def test_stabilised_weights_by_hand():
    """Deviation probability 0.2 in every adherence row and 0.5 in every grace row: the denominator of a clone's
    weight is its own product, the numerator the arm's share of adherence rows that deviate per interval."""
    p = protocol(interval_days=30, max_years=5.5, horizons_years=[2, 5])
    _, _, clones = hand_sustained(p)
    prob = np.where(clones.model_phase == 1, 0.2, 0.5)
    fit = weights_from(clones, prob, 100.0)
    n = len(PERSONS)
    # HE arm adherence rows: person 0 intervals 1-8 (deviates in 8), person 3 interval 1 (deviates)
    share = {1: 1 / 2, 8: 1.0}
    numerator = {k: np.prod([1 - share.get(j, 0.0) for j in range(1, k)]) for k in range(1, 11)}
    m = clones.row_clone == 0
    weight_row = clones.row_weight_row[m]
    expected = [1.0 if r < 0 else (1 / 0.5) * (1 / 0.8) ** (clones.model_interval[r] - 0) * numerator[clones.model_interval[r] + 1]
                for r in weight_row]  # fmt: skip
    np.testing.assert_allclose(fit.row_weight[m], expected, rtol=1e-12)
    # no escalation adherence row deviates (person 4's deviation comes after its follow-up): numerator 1
    assert fit.final_weight[n + 1] == pytest.approx(0.5**-4 * 0.8 ** -(int(clones.model_interval[clones.final_weight_row[n + 1]]) - 3))


def sustained_trial(n: int, seed: int, p: TrialProtocol, deviate: bool = True):
    """The synthetic trial of test_trial_emulation on sustained clones: deviations after the start at a rate that
    rises with a covariate of the adherence model (informative censoring), or none; returns (sustained data,
    the start-only data of the same persons)."""
    from test_trial_emulation import synthetic_inputs

    baseline, covariates, outcome = synthetic_inputs(n, seed, p)
    rng = np.random.default_rng(seed + 100)
    bounds = p.interval_bounds(sustained=True)
    k = len(bounds) - 1
    grace = covariates.sort("person_id", "interval").select(TIME_VARYING).to_numpy().reshape(n, p.n_grace_intervals, -1)
    varying = np.concatenate([grace, np.repeat(grace[:, -1:, :], k - p.n_grace_intervals, axis=1)], axis=1)
    activity = grace[:, 0, 0]
    extra = np.zeros((n, k, len(ADHERENCE_COVARIATES)))
    extra[..., 0] = bounds[:-1] / 365.25
    extra[..., 1] = extra[..., 0] ** 2
    day = {a: np.where(rng.random(n) < 0.6, rng.exponential(900 / (1 + activity)).round() + 1, np.nan) for a in (0, 1)}
    if not deviate:
        day = {a: np.full(n, np.nan) for a in (0, 1)}
    sustained = build_clones(baseline, covariates, p, Adherence(day, bounds, varying, extra))
    start_only = build_clones(baseline, covariates, p)
    return build_trial_data(sustained, p, **outcome, analysis=SUSTAINED), build_trial_data(start_only, p, **outcome)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.filterwarnings("ignore::lifelines.exceptions.StatisticalWarning")
def test_sustained_weighted_estimates_equal_lifelines(seed):
    p = protocol(max_years=5, horizons_years=[2, 5])
    data, _ = sustained_trial(600, seed, p)
    assert data.clones.censored.sum() > 0 and (data.clones.model_deviates & (data.clones.model_phase == 1)).sum() > 20
    fit = fit_weights(data)
    assert np.unique(np.round(fit.row_weight, 12)).size > 50  # time-varying weights
    point = estimates(data, fit)
    event = data.events["confirmed_worsening"]
    w = fit.row_weight[event.source]
    frame = pd.DataFrame({"id": data.clones.row_clone[event.source], "arm": event.rows.arm, "start": event.rows.start,
                          "stop": event.rows.stop, "event": event.rows.event, "w": w})  # fmt: skip
    tables = event.rows.tables(w)
    for a, label in ((1, "high_efficacy"), (0, "escalation")):
        part = frame[frame["arm"] == a]
        km = KaplanMeierFitter().fit(part["stop"], part["event"], entry=part["start"], weights=part["w"])
        curve = km.survival_function_["KM_estimate"]
        ours = survival_at(event.rows.times, kaplan_meier(tables[f"n{a}"], tables[f"d{a}"]), curve.index.to_numpy())
        np.testing.assert_allclose(ours, curve.to_numpy(), atol=1e-6)
        reference = 1.0 - float(curve[curve.index <= 5 * 365.25].iloc[-1])
        assert point[(SUSTAINED, "confirmed_worsening", f"risk_{label}_5y")] == pytest.approx(reference, abs=1e-6)
    ctv = CoxTimeVaryingFitter().fit(frame, id_col="id", event_col="event", start_col="start", stop_col="stop", weights_col="w")
    assert fit_cox(tables).log_hr == pytest.approx(float(ctv.params_["arm"]), abs=1e-6)
    assert point[(SUSTAINED, "confirmed_worsening", "hazard_ratio")] == pytest.approx(float(np.exp(ctv.params_["arm"])), rel=1e-6)


def test_without_deviations_after_the_start_the_sustained_estimates_equal_the_start_only_ones():
    p = protocol(max_years=5, horizons_years=[2, 5])
    sustained, start_only = sustained_trial(800, 3, p, deviate=False)
    assert np.array_equal(sustained.clones.censored, start_only.clones.censored)
    assert not (sustained.clones.model_deviates & (sustained.clones.model_phase == 1)).any()
    ours = estimates(sustained, fit_weights(sustained))
    theirs = {k: v for k, v in estimates(start_only, fit_weights(start_only)).items() if k[0] == "emulation"}
    assert len(ours) == len(theirs) > 10
    for (_, outcome, measure), value in theirs.items():
        assert ours[(SUSTAINED, outcome, measure)] == pytest.approx(value, rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A small simulated registry (its clinical extracts) and the protocol it is emulated with."""
    from repurpose.simulate import simulate_registries
    from repurpose.trial_emulation.study import read_validated

    folder = tmp_path_factory.mktemp("sustained_registry")
    simulate_registries(folder, n_persons=20_000, seed=5)
    names = ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss")
    frames = {n: read_validated(n, folder / f"{n}.parquet") for n in names}
    p = protocol(bootstrap_replicates=0, diagnosis_from="2006-09-01", outcomes=["confirmed_worsening", "first_relapse", "relapse_rate"])
    return frames, p


def test_on_the_simulator_every_deviation_kind_occurs_and_censors_the_sustained_clones(simulated):
    """The counterfactual registries plant the effect of the initiation strategies only (the first therapy forced,
    later treatment as in practice, simulate/counterfactual.py): no sustained strategy has a planted value, so
    what is tested is the censoring the simulator's treatment histories produce."""
    from repurpose.trial_emulation.adherence import adherence
    from repurpose.trial_emulation.study import emulate

    frames, p = simulated
    result = emulate(p, frames, None)
    _, table = adherence(p, result["baseline"], treatments=frames["ms_treatments"], relapses=frames["ms_relapses"],
                         edss=frames["ms_edss"])  # fmt: skip
    assert set(table["high_efficacy_deviation"].drop_nulls()) == {"stop", "switch"}
    assert set(table["escalation_deviation"].drop_nulls()) == {"stop", "unindicated_escalation"}
    start_only, sustained = result["data"].clones, result["data"].sustained.clones
    assert np.all(sustained.stop <= start_only.stop) and np.all(sustained.censored >= start_only.censored)
    assert sustained.censored.sum() > start_only.censored.sum()
    counts = result["counts"].filter(pl.col("outcome") == "confirmed_worsening")
    for strategy in ("high_efficacy", "escalation"):
        by = {r["analysis"]: r for r in counts.filter(pl.col("strategy") == strategy).iter_rows(named=True)}
        assert by["sustained"]["n_censored_deviation"] > by["emulation"]["n_censored_deviation"]
        assert by["sustained"]["n_events"] <= by["emulation"]["n_events"]
    shown = result["estimates"].filter(pl.col("analysis") == "sustained")
    assert shown.height == result["estimates"].filter(pl.col("analysis") == "emulation").height
    weights = result["weights"].filter((pl.col("analysis") == "sustained") & (pl.col("statistic") == "mean"))
    assert weights.height == 2 and weights["value"].is_finite().all()


def test_on_the_simulator_without_later_treatment_the_sustained_estimates_equal_the_start_only_ones(simulated):
    """Each person's treatment cut to the first episode, never stopped: no deviation after the start, so the
    sustained estimand is the start-only one (same clones, censoring and weights)."""
    from repurpose.trial_emulation.study import emulate

    frames, p = simulated
    first = frames["ms_treatments"].sort("person_id", "start_date").group_by("person_id", maintain_order=True).first()
    result = emulate(p, {**frames, "ms_treatments": first.with_columns(pl.lit(None, pl.Date).alias("stop_date"))}, None)
    values = {(r["analysis"], r["outcome"], r["measure"]): r["estimate"] for r in result["estimates"].iter_rows(named=True)}
    compared = [(k, v) for k, v in values.items() if k[0] == "emulation" and v is not None]
    assert len(compared) > 20
    for (_, outcome, measure), value in compared:
        assert values[("sustained", outcome, measure)] == pytest.approx(value, rel=1e-9, abs=1e-12)


def test_the_sustained_clones_share_the_grace_models_and_one_fit_serves_both():
    p = protocol(max_years=5, horizons_years=[2, 5])
    sustained, start_only = sustained_trial(500, 4, p)
    start_only.sustained = sustained
    assert start_only.shares_grace_models
    frequency = np.random.default_rng(1).multinomial(500, np.full(500, 1 / 500))
    shared = fit_all(start_only, frequency)[1]
    alone = fit_weights(sustained, frequency)
    np.testing.assert_allclose(shared.p_deviate, alone.p_deviate, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(shared.row_weight, alone.row_weight, rtol=1e-9)


def test_sustained_weighted_estimates_equal_r_survival(tmp_path):
    """The same weighted rows through R survival: coxph (Efron ties, case weights, (start, stop] rows) and survfit."""
    import subprocess

    from r_survival import r_survival_missing

    reason = r_survival_missing()
    if reason:
        pytest.skip(reason)
    p = protocol(max_years=5, horizons_years=[2, 5])
    data, _ = sustained_trial(600, 5, p)
    fit = fit_weights(data)
    point = estimates(data, fit)
    event = data.events["confirmed_worsening"]
    frame = pd.DataFrame({"arm": event.rows.arm, "start": event.rows.start, "stop": event.rows.stop,
                          "event": event.rows.event.astype(int), "w": fit.row_weight[event.source]})  # fmt: skip
    frame.to_csv(tmp_path / "rows.csv", index=False)
    script = (
        "suppressMessages(library(survival)); d <- read.csv(commandArgs(TRUE)[1]); "
        "f <- coxph(Surv(start, stop, event) ~ arm, data = d, weights = w, ties = 'efron'); "
        "s <- summary(survfit(Surv(start, stop, event) ~ arm, data = d, weights = w), times = 5 * 365.25, extend = TRUE); "
        "cat(sprintf('%.15g', c(coef(f), 1 - s$surv)), sep = '\\n')"
    )
    out = subprocess.run(["Rscript", "-e", script, str(tmp_path / "rows.csv")], capture_output=True, text=True, check=True, timeout=300)
    log_hr, risk0, risk1 = (float(v) for v in out.stdout.split())
    assert np.log(point[(SUSTAINED, "confirmed_worsening", "hazard_ratio")]) == pytest.approx(log_hr, abs=1e-6)
    assert point[(SUSTAINED, "confirmed_worsening", "risk_escalation_5y")] == pytest.approx(risk0, abs=1e-6)
    assert point[(SUSTAINED, "confirmed_worsening", "risk_high_efficacy_5y")] == pytest.approx(risk1, abs=1e-6)
