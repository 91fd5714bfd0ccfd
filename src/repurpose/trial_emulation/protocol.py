"""The target trial's protocol as one declared object, read from the `trial_emulation` config section.

The code reads the protocol (eligibility, time zero, strategies, grace period, follow-up, outcomes, estimands),
never re-derives it, and the report echoes it as the target-trial table (`target_trial_table`).

Imports numpy, polars, `persistence.newusers` (the names of the therapy classes) and `trial_emulation.outcomes` (the
ICD-10 prefixes of the safety outcome in the extract's form).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl

from repurpose.persistence.newusers import DAYS_PER_YEAR, DMT_CLASSES
from repurpose.trial_emulation.outcomes import normalised_codes

HIGH_EFFICACY = "high_efficacy"
ESCALATION = "escalation"
STRATEGIES = (HIGH_EFFICACY, ESCALATION)
S1P_MODULATOR_PREFIXES = ("L04AA27", "L04AE")


@dataclass(frozen=True)
class TrialProtocol:
    """Eligibility, time zero, strategies, grace period, follow-up and outcomes of the emulated trial."""

    diagnosis_from: date
    diagnosis_to: date
    study_end: date
    min_age: float
    max_age: float
    courses: tuple[str, ...]
    baseline_edss_window_days: int
    time_zero: str
    high_efficacy_codes: tuple[str, ...]
    fingolimod_is_high_efficacy: bool
    grace_days: int
    max_years: float
    horizons_years: tuple[float, ...]
    interval_days: int
    weight_truncation_percentile: float
    bootstrap_replicates: int
    seed: int
    outcomes: tuple[str, ...]
    confirmation_days: int
    negative_control_outcome: str | None
    serious_infection_codes: tuple[str, ...] = ()
    sustained: bool = False
    stop_gap_days: int = 180
    escalation_indication_window_days: int = 365
    adherence_interval_days: int = 90

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialProtocol:
        """The protocol from a validated config (`trial_emulation` and `study.start`/`end`)."""
        trial, study = config["trial_emulation"], config["study"]
        end = date.fromisoformat(str(study["end"]))
        grace = int(trial["grace_days"])
        return cls(
            diagnosis_from=date.fromisoformat(str(trial.get("diagnosis_from") or study["start"])),
            diagnosis_to=date.fromisoformat(str(trial["diagnosis_to"])) if trial.get("diagnosis_to") else end - timedelta(days=grace),
            study_end=end,
            min_age=float(trial["min_age"]),
            max_age=float(trial["max_age"]),
            courses=tuple(trial["courses"]),
            baseline_edss_window_days=int(trial["baseline_edss_window_days"]),
            time_zero=str(trial["time_zero"]),
            high_efficacy_codes=tuple(sorted({str(c).strip().upper() for c in trial["high_efficacy_codes"]})),
            fingolimod_is_high_efficacy=bool(trial["fingolimod_is_high_efficacy"]),
            grace_days=grace,
            max_years=float(trial["max_years"]),
            horizons_years=tuple(float(h) for h in trial["horizons_years"]),
            interval_days=int(trial["interval_days"]),
            weight_truncation_percentile=float(trial["weight_truncation_percentile"]),
            bootstrap_replicates=int(trial["bootstrap_replicates"]),
            seed=int(trial["seed"]),
            outcomes=tuple(trial["outcomes"]),
            confirmation_days=int(trial["confirmation_days"]),
            negative_control_outcome=trial.get("negative_control_outcome"),
            serious_infection_codes=normalised_codes(trial["serious_infection_codes"]),
            sustained=bool(trial["sustained"]),
            stop_gap_days=int(trial["stop_gap_days"]),
            escalation_indication_window_days=int(trial["escalation_indication_window_days"]),
            adherence_interval_days=int(trial["adherence_interval_days"]),
        )  # fmt: skip

    @property
    def max_days(self) -> int:
        """Follow-up length in days (max_years x 365.25, rounded down)."""
        return int(self.max_years * DAYS_PER_YEAR)

    @property
    def n_grace_intervals(self) -> int:
        """Intervals of the censoring model: the grace period [0, grace_days] in steps of interval_days."""
        return -(-self.grace_days // self.interval_days)

    def interval_bounds(self, sustained: bool = False) -> np.ndarray:
        """Bounds (days from time zero) of the censoring models' intervals: the grace period in steps of
        interval_days (the last interval ends on its last day); for the sustained estimand then steps of
        adherence_interval_days to the end of follow-up."""
        grace = np.minimum(np.arange(self.n_grace_intervals + 1) * self.interval_days, self.grace_days).astype(float)
        if not sustained:
            return grace
        after = np.arange(self.grace_days + self.adherence_interval_days, self.max_days + self.adherence_interval_days,
                          self.adherence_interval_days, dtype=float)  # fmt: skip
        return np.concatenate([grace, after])

    def is_high_efficacy(self, codes: pl.Expr) -> pl.Expr:
        """Whether an (upper-case) ATC code is a high-efficacy therapy under this protocol."""
        high = codes.is_in(list(self.high_efficacy_codes))
        if self.fingolimod_is_high_efficacy:
            for prefix in S1P_MODULATOR_PREFIXES:
                high = high | codes.str.starts_with(prefix)
        return high


def class_names(codes: tuple[str, ...]) -> str:
    """The therapy names of ATC codes (persistence.newusers.DMT_CLASSES), for the target-trial table."""
    names = []
    for code in codes:
        name = next((n for prefix, n in DMT_CLASSES if code.startswith(prefix)), code)
        if name not in names:
            names.append(name)
    return ", ".join(names)


def target_trial_table(protocol: TrialProtocol, unavailable: Mapping[str, str] | None = None) -> pl.DataFrame:
    """The protocol echoed as the target-trial table (component, target trial, emulation); `unavailable`: the
    configured outcomes that cannot be estimated, with the reason (their extract not given)."""
    p = protocol
    unavailable = unavailable or {}
    estimated = [o for o in p.outcomes if o not in unavailable]
    missing = "".join(f"; {o} {why}" for o, why in unavailable.items())
    infection = (f"; serious infection: the first diagnosis with an ICD-10 code starting {', '.join(p.serious_infection_codes)}"
                 if "serious_infection" in p.outcomes else "")  # fmt: skip
    high = class_names(p.high_efficacy_codes) + (" and the S1P modulators" if p.fingolimod_is_high_efficacy else "")
    zero = ("the diagnosis date" if p.time_zero == "diagnosis"
            else "the first EDSS-scored visit on or after diagnosis, within the grace period")  # fmt: skip
    rows = [
        ("Eligibility", "Relapsing MS, newly diagnosed, treatment-naive, disability measured at baseline",
         f"Diagnosed {p.diagnosis_from} to {p.diagnosis_to}; course at diagnosis {', '.join(p.courses)}; age "
         f"{p.min_age:g} to under {p.max_age:g} at time zero; no disease-modifying therapy before time zero; an EDSS "
         f"score in the {p.baseline_edss_window_days} days up to time zero; alive and resident at time zero"),
        ("Treatment strategies", "Early high-efficacy: start a high-efficacy therapy first; escalation: start a "
         "moderate-efficacy therapy first, switching up on disease activity",
         f"High-efficacy first: {high} ({', '.join(p.high_efficacy_codes)}) as the first therapy; escalation: any "
         "other disease-modifying therapy as the first therapy; later switches follow clinical practice"),
        ("Assignment", "Randomised at time zero", "Each eligible person is cloned into both strategies; baseline and "
         "time-varying confounding adjusted by inverse-probability-of-censoring weights"),
        ("Time zero", "Randomisation", zero),
        ("Grace period", f"Therapy started within {p.grace_days} days",
         f"A clone is censored when its person starts the other strategy's therapy first, or at day {p.grace_days} "
         "with no therapy started"),
        ("Outcomes", "24-week confirmed disability worsening (primary); first relapse; relapse rate; sick leave; "
         "serious infection (safety)",
         f"From the registry's EDSS visits (confirmation after {p.confirmation_days} days, no visit within 30 days "
         f"of a relapse), relapses, sick-leave spells and the diagnosis extract{infection}; estimated: "
         f"{', '.join(estimated) or 'none'}{missing}"),
        ("Negative control", "An outcome the strategy cannot change",
         "death from the population register" if p.negative_control_outcome == "death" else "none"),
        ("Follow-up", f"From time zero for {p.max_years:g} years",
         f"To the first of the outcome, {p.max_years:g} years, death, emigration, study end ({p.study_end}), or the "
         "clone's censoring"),
        ("Adherence (sustained strategies)", "High-efficacy: stay on high-efficacy therapy; escalation: stay on "
         "therapy, switching up only on disease activity",
         (f"After the start a clone deviates when every therapy stops and none restarts within {p.stop_gap_days} days "
          "(censored on the gap's last day); the high-efficacy clone also when it starts a therapy that is not "
          "high-efficacy; the escalation clone also when it starts a high-efficacy therapy without an indication (a "
          f"relapse, or a confirmed disability worsening confirmed by that day, in the "
          f"{p.escalation_indication_window_days} days before)") if p.sustained else "Not estimated (sustained: false)"),
        ("Causal contrast", "Per-protocol effect of starting each strategy" + ("; per-protocol effect of sustaining it" if p.sustained else ""),
         "Per-protocol effect of the initiation strategies (first therapy's class within the grace period, later "
         "treatment as in practice) by clone-censor-weight"
         + ("; the sustained per-protocol effect (the strategies followed over the whole follow-up, adherence above) "
            "by clone-censor-weight with time-varying weights" if p.sustained else "")
         + "; beside them the naive comparison: those who started a therapy within the grace period grouped by its "
         "class, unweighted, followed from time zero"),
        ("Statistical analysis", "Risks, hazard ratio, rate ratios",
         f"Weighted Kaplan-Meier risks at {', '.join(f'{h:g}' for h in p.horizons_years)} years, risk differences and "
         f"ratios, weighted Cox hazard ratio, weighted Poisson rate ratios; pooled logistic censoring models per "
         f"{p.interval_days}-day interval, weights truncated at the {p.weight_truncation_percentile:g}th percentile; "
         + (f"sustained: pooled logistic adherence models per {p.adherence_interval_days}-day interval after the grace "
            "period (baseline and time-varying covariates: EDSS, relapses in the past 12 and 24 months, time since time "
            "zero and on the strategy, high-efficacy started, off therapy), weights stabilised by the arm's share "
            "remaining adherent per interval; " if p.sustained else "")
         + f"95% percentile CIs from {p.bootstrap_replicates} bootstrap replicates (seed {p.seed})"),
    ]  # fmt: skip
    return pl.DataFrame(rows, schema={"component": pl.String, "target_trial": pl.String, "emulation": pl.String}, orient="row")
