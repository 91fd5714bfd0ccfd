"""The emulation against the simulator's planted strategy effect (issue 17, "done when").

The simulator plants confounding by indication (more active patients start high-efficacy therapy) and a
known effect of the first therapy's class. The truth is computed here, not stored: the same registry's
patients are simulated twice with every treated patient's first therapy forced into each class within the
grace period (`repurpose.simulate.counterfactual`), and the package's outcome definitions
(`trial_emulation.outcomes`, through the helpers of tests/test_simulate_counterfactual.py) give the 5-year
risks and the hazard ratio of 24-week confirmed disability worsening (CDW) in the eligible patients. The
emulation runs on the factual registry with the same diagnosis window, ages and courses. The truth's
population is the eligible patients who are ever treated (the counterfactual forces only them); the
emulation cannot know at time zero who will be treated, so its population also holds the never treated
(whose treatment in the simulator depends on age and course only, not on disease activity).

Tolerance: the emulation's 95% bootstrap interval (100 replicates) must cover the truth (averaged over two
counterfactual replicates) for the 5-year risk difference and the hazard ratio (follow-up 5 years, as the
truth's Cox model) in every seed; the naive as-started comparison must miss it (interval not covering) for
the risk difference or the hazard ratio in every seed. Nothing is tuned to the simulator: the protocol is the
default one but for the window (from the first high-efficacy drug's availability, so both strategies are
possible), the 5-year follow-up, and fingolimod counted as high-efficacy, as the simulator's drug classes
(`clinical_model.DRUGS`, whose flag the counterfactual forcing uses) count it: the strategies compared must be
the truth's. The figures are printed. Measured 2026-12-07 with the default protocol (10-day grace intervals)
after the simulator's fixes of the first therapy's choice (it saw relapses dated after the start, and then the
unrecorded true EDSS; with the first and 30-day intervals no seed met the criterion): see KNOWN_FAILURES for any
seed that does not (strict: it fails the run if it starts to pass) and docs/methods.md for the figures.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import CoxPHFitter
from test_simulate_counterfactual import FIRST_HIGH_EFFICACY_DAY, eligible, risk_at, survival_data

from repurpose.config import validate_config
from repurpose.persistence.newusers import DAYS_PER_YEAR
from repurpose.simulate.counterfactual import (
    counterfactual_clinical_tables,
    factual_clinical_tables,
    registry_patients,
)
from repurpose.trial_emulation.outcomes import confirmed_worsening
from repurpose.trial_emulation.protocol import TrialProtocol
from repurpose.trial_emulation.study import emulate

pytestmark = pytest.mark.slow

N_PERSONS = 600_000
SEEDS = (21, 22, 23)
TRUTH_REPLICATES = 2
BOOTSTRAP = 100
STUDY_END = date(2023, 12, 31)
INPUTS = {"population": {"path": "p"}, "prescriptions": {"path": "p"}, "ms_registry": {"path": "m"}}


def planted_cdw(config: dict, patients, grace_days: int) -> tuple[float, float]:
    """The planted 5-year CDW risk difference (high-efficacy minus moderate first) and hazard ratio (Cox,
    follow-up cut at 5 years), averaged over counterfactual replicates (the HR geometrically)."""
    horizon = 5 * DAYS_PER_YEAR
    differences, log_hrs = [], []
    for replicate in range(TRUTH_REPLICATES):
        arms = {}
        for first_class in ("high_efficacy", "moderate"):
            tables = counterfactual_clinical_tables(config, first_class=first_class, grace_days=grace_days,
                                                    replicate=replicate, patients=patients)  # fmt: skip
            baseline = eligible(tables, window=(FIRST_HIGH_EFFICACY_DAY, STUDY_END), ages=(18.0, 65.0), study_end=STUDY_END)
            worsening = confirmed_worsening(tables["ms_edss"], tables["ms_relapses"], baseline)
            arms[first_class] = survival_data(worsening, "worsening_date", baseline)
        differences.append(risk_at(*arms["high_efficacy"], horizon) - risk_at(*arms["moderate"], horizon))
        days = np.concatenate([arms["high_efficacy"][0], arms["moderate"][0]])
        event = np.concatenate([arms["high_efficacy"][1], arms["moderate"][1]]).astype(int) * (days <= horizon)
        high = np.repeat([1, 0], [len(arms["high_efficacy"][0]), len(arms["moderate"][0])])
        frame = pd.DataFrame({"days": np.minimum(days, horizon), "event": event, "high": high})
        log_hrs.append(float(CoxPHFitter().fit(frame, duration_col="days", event_col="event").params_["high"]))
    return float(np.mean(differences)), float(np.exp(np.mean(log_hrs)))


KNOWN_FAILURES: dict[int, str] = {}


@pytest.mark.parametrize("seed", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[s])) if s in KNOWN_FAILURES else s
    for s in SEEDS
])  # fmt: skip
def test_emulation_covers_the_planted_effect_and_the_naive_comparison_does_not(seed):
    config = {"n_persons": N_PERSONS, "seed": seed}
    patients = registry_patients(config)
    study = validate_config({"inputs": INPUTS, "trial_emulation": {
        "diagnosis_from": str(FIRST_HIGH_EFFICACY_DAY), "diagnosis_to": str(STUDY_END), "max_years": 5,
        "horizons_years": [5], "bootstrap_replicates": BOOTSTRAP, "seed": seed, "fingolimod_is_high_efficacy": True,
        "outcomes": ["confirmed_worsening"]}})  # fmt: skip
    protocol = TrialProtocol.from_config(study)
    true_rd, true_hr = planted_cdw(config, patients, protocol.grace_days)
    factual = factual_clinical_tables(patients)
    result = emulate(protocol, factual, None, workers=2)
    table = result["estimates"].filter(pl.col("outcome") == "confirmed_worsening")

    def interval(analysis: str, measure: str) -> tuple[float, float, float]:
        row = table.filter((pl.col("analysis") == analysis) & (pl.col("measure") == measure)).row(0, named=True)
        return row["estimate"], row["lower"], row["upper"]

    lines = [f"seed {seed}: {result['baseline'].height} eligible; planted RD {true_rd:+.4f}, HR {true_hr:.3f}"]
    covered = {}
    for analysis in ("emulation", "naive"):
        for measure, truth in (("risk_difference_5y", true_rd), ("hazard_ratio", true_hr)):
            estimate, lower, upper = interval(analysis, measure)
            covered[(analysis, measure)] = lower <= truth <= upper
            lines.append(f"  {analysis:9s} {measure:18s} {estimate:+.4f} ({lower:+.4f}, {upper:+.4f}) covers: {covered[(analysis, measure)]}")
    print("\n".join(lines))
    assert covered[("emulation", "risk_difference_5y")] and covered[("emulation", "hazard_ratio")]
    assert not (covered[("naive", "risk_difference_5y")] and covered[("naive", "hazard_ratio")])
