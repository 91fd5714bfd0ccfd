"""The planted model of the simulated MS clinical data: drugs, clinics, hazards, settings and their truth.

Owns: the disease-modifying therapies (availability, efficacy, which are dispensed at pharmacies), the
clinics of the two simulated countries with their planted effects on discontinuation, the reason-specific
discontinuation hazards, the `simulate.clinical` settings, and the JSON-ready truth (ground_truth.json key
`clinical`). The simulation itself is in `disease_course` (course, treatments, sick leave) and
`ms_treatments` (dispensings and tables). Imports numpy and the simulator's `dates`.

Every number here is a planted modelling choice, rounded from published orders of magnitude (pivotal
trials' relapse rate ratios, Nordic registry persistence), not fitted to anything and not tuned to make a
method look good. `disease_course` documents the model as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from repurpose.simulate.dates import day_number

CLINICAL_STREAM = 5
"""Random stream id of the clinical draws per chunk (0 population, 1 corrupt rows, 2 chunks, 3 Parkinson,
4 G35 records)."""
CLINICS_STREAM = 6
"""Random stream id of the clinic set-up (sizes, effects) and the clinics of invalid registry rows."""

STOP_REASONS = ("adverse_event", "lack_of_efficacy", "pregnancy", "patient_wish", "other")
"""Reasons with their own hazard; a share of stops is recorded as `unknown` (masking, independent of reason)."""
UNKNOWN_REASON = "unknown"
COURSES_AT_DIAGNOSIS = ("RR", "SP", "PP", "CIS", "unknown")

BASELINE_STOP_HAZARD_PER_YEAR: dict[str, float] = {
    "adverse_event": 0.08,
    "lack_of_efficacy": 0.02,
    "pregnancy": 0.06,
    "patient_wish": 0.04,
    "other": 0.02,
}
"""Reason-specific hazards of stopping (per year on drug) for a reference patient: ordinary drug, clinic
log HR 0, after the first half year, no relapse on drug in the last 12 months; pregnancy for women aged
25-34 (half of it at 18-24 and 35-44, none otherwise or for men)."""
ADVERSE_EVENT_EARLY_FACTOR = 2.5
"""Adverse-event hazard multiplier in the first `ADVERSE_EVENT_EARLY_YEARS` on a drug."""
ADVERSE_EVENT_EARLY_YEARS = 0.5
LACK_OF_EFFICACY_LOG_HR_PER_RELAPSE = 2.3
"""log HR of stopping for lack of efficacy per relapse on the drug in the last 12 months (HR 10: a relapse on
a drug usually leads to a switch within months; the baseline stands for activity on MRI, not simulated)."""
LACK_OF_EFFICACY_HIGH_EFFICACY_FACTOR = 0.5
"""Lack-of-efficacy hazard multiplier on a high-efficacy drug (a neurologist escalates less from it)."""
PREGNANCY_AGE_FACTORS: tuple[tuple[float, float, float], ...] = ((18, 25, 0.5), (25, 35, 1.0), (35, 45, 0.5))
"""(from age, to age, factor) of the pregnancy hazard for women; 0 outside."""
NATALIZUMAB_OTHER_FACTOR_AFTER_2_YEARS = 4.0
"""`other` hazard multiplier on natalizumab after two years on it (JCV antibody / PML risk stops)."""

RESTART: dict[str, tuple[float, float]] = {
    "adverse_event": (0.85, 60.0),
    "lack_of_efficacy": (0.95, 30.0),
    "pregnancy": (0.80, 450.0),
    "patient_wish": (0.50, 365.0),
    "other": (0.70, 90.0),
}
"""Per reason: (probability of a later start, median days to it; lognormal, log SD `RESTART_DELAY_LOG_SD`)."""
RESTART_DELAY_LOG_SD = 0.6
MIN_SWITCH_DAYS = 14

DEFAULT_CLINICS_PER_COUNTRY: dict[str, int] = {"NO": 8, "DK": 6}
DEFAULT_CLINIC_LOG_HR_SD = 0.2
DEFAULT_OUTLIER_HAZARD_RATIOS: tuple[float, ...] = (2.5, 0.4)
DEFAULT_UNKNOWN_STOP_REASON_SHARE = 0.08
DEFAULT_SERIOUS_INFECTION_RATE_PER_1000_YEARS = 15.0
DEFAULT_SERIOUS_INFECTION_HIGH_EFFICACY_RATE_RATIO = 2.0
"""Serious infections (repurpose.simulate.infections): about 15 per 1,000 patient-years in MS, about twice that
on B-cell depletion or natalizumab (the order of magnitude of Swedish registry estimates, Luna et al. 2020)."""
CLINIC_SIZE_LOG_SD = 0.7
"""Clinic sizes (shares of the patients) are proportional to lognormal(0, CLINIC_SIZE_LOG_SD) weights."""


@dataclass(frozen=True)
class Drug:
    """One disease-modifying therapy of the simulation."""

    atc_code: str
    name: str
    available_from: str  # ISO date from which the drug can be started
    pharmacy: bool  # dispensed at pharmacies (so in the prescription register); else hospital infusion
    high_efficacy: bool
    relapse_rate_ratio: float  # planted: relapse rate on the drug / off any drug
    progression_hr: float  # planted: hazard ratio of EDSS worsening on the drug
    adverse_event_factor: float  # multiplier of the adverse-event stop hazard
    choice_log_weight: float  # base log preference at a start (before era, country and activity)


DRUGS: tuple[Drug, ...] = (
    Drug("L03AB07", "interferon beta-1a", "1996-01-01", True, False, 0.70, 0.85, 1.3, 1.0),
    Drug("L03AB08", "interferon beta-1b", "1996-01-01", True, False, 0.70, 0.85, 1.3, 0.3),
    Drug("L03AX13", "glatiramer acetate", "1996-01-01", True, False, 0.70, 0.85, 1.0, 0.7),
    Drug("L04AA31", "teriflunomide", "2013-09-01", True, False, 0.70, 0.75, 1.1, 0.6),
    Drug("L04AX07", "dimethyl fumarate", "2013-06-01", True, False, 0.50, 0.75, 1.2, 1.4),
    Drug("L04AA27", "fingolimod", "2011-06-01", True, True, 0.45, 0.70, 0.9, 0.4),
    Drug("L04AA23", "natalizumab", "2006-09-01", False, True, 0.30, 0.60, 0.6, -0.3),
    Drug("L04AA34", "alemtuzumab", "2014-01-01", False, True, 0.30, 0.55, 0.8, -1.2),
    Drug("L04AA36", "ocrelizumab", "2018-03-01", False, True, 0.35, 0.60, 0.5, 0.6),
    Drug("L01XC02", "rituximab", "2010-01-01", False, True, 0.35, 0.60, 0.5, -0.2),
)
"""The simulated therapies. Rituximab is off-label: popular in Norway (and Sweden), rare in Denmark."""
COUNTRY_CHOICE_LOG_WEIGHT: dict[str, dict[str, float]] = {
    "NO": {"L01XC02": 2.0},
    "DK": {"L01XC02": -2.5, "L04AA31": 0.4, "L04AX07": 0.3},
}
"""Country-specific additions to a drug's log preference."""
OLDER_DRUGS_DECLINE_PER_YEAR = 0.15
"""log preference lost per calendar year after 2012 by the interferons and glatiramer (newer orals arrive)."""
HIGH_EFFICACY_LOG_WEIGHT_PER_ACTIVITY = 0.8
"""Confounding by indication: log preference of a high-efficacy drug per unit of disease activity
(relapses in the last 24 months + 0.4 * (last recorded EDSS - 2), as the records show them that day)."""
ESCALATION_LOG_WEIGHT = 1.5
"""Extra log preference of a high-efficacy drug after a stop for lack of efficacy."""
RESUME_LOG_WEIGHT = 1.5
"""Extra log preference of the drug stopped for a pregnancy, when treatment resumes."""
PROGRESSIVE_ONLY = ("L04AA36", "L01XC02")
"""The drugs a primary progressive patient may start (anti-CD20 therapies)."""

PHARMACY_SUPPLY_DAYS = 90
"""Days of supply of a refill (1 DDD a day at the standard dose, so ddd = days of supply)."""
FIRST_SUPPLY_DAYS = 30
"""Days of supply of the first dispensing of an episode (a starter pack)."""
REFILL_TIMING = (0.80, 1.05)
"""A refill comes after uniform(low, high) times the previous supply (patients refill a little early)."""
LATE_REFILL_SHARE = 0.02
"""Share of refills collected late (a lapse in adherence): uniform(30, 120) days added to the interval."""
LATE_REFILL_EXTRA_DAYS = (30, 120)
DDD_PER_DAY = 1.0
MS_REIMBURSEMENT_CODE = "G35"


@dataclass(frozen=True)
class ClinicalSettings:
    """The `simulate.clinical` config section."""

    enabled: bool = True
    clinics_per_country: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CLINICS_PER_COUNTRY))
    clinic_log_hr_sd: float = DEFAULT_CLINIC_LOG_HR_SD
    outlier_hazard_ratios: tuple[float, ...] = DEFAULT_OUTLIER_HAZARD_RATIOS
    unknown_stop_reason_share: float = DEFAULT_UNKNOWN_STOP_REASON_SHARE
    serious_infection_rate_per_1000_years: float = DEFAULT_SERIOUS_INFECTION_RATE_PER_1000_YEARS
    serious_infection_high_efficacy_rate_ratio: float = DEFAULT_SERIOUS_INFECTION_HIGH_EFFICACY_RATE_RATIO

    @staticmethod
    def from_config(section: Mapping[str, Any] | None) -> ClinicalSettings:
        """Settings from the config section (None or {} gives the defaults: enabled)."""
        section = dict(section or {})
        known = {
            "enabled",
            "clinics_per_country",
            "clinic_log_hr_sd",
            "outlier_hazard_ratios",
            "unknown_stop_reason_share",
            "serious_infection_rate_per_1000_years",
            "serious_infection_high_efficacy_rate_ratio",
        }
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"simulate.clinical: unknown settings {unknown}")
        if "outlier_hazard_ratios" in section:
            section["outlier_hazard_ratios"] = tuple(float(x) for x in section["outlier_hazard_ratios"])
        if "clinics_per_country" in section:
            section["clinics_per_country"] = {
                str(k): int(v) for k, v in section["clinics_per_country"].items()
            }
        settings = ClinicalSettings(**section)
        n_clinics = sum(settings.clinics_per_country.values())
        if not settings.clinics_per_country or min(settings.clinics_per_country.values()) < 1:
            raise ValueError("simulate.clinical.clinics_per_country needs at least one clinic per country")
        if len(settings.outlier_hazard_ratios) >= n_clinics:
            raise ValueError(
                f"simulate.clinical.outlier_hazard_ratios: {len(settings.outlier_hazard_ratios)} outliers "
                f"need more than that many clinics, got {n_clinics}"
            )
        if any(hr <= 0 for hr in settings.outlier_hazard_ratios):
            raise ValueError("simulate.clinical.outlier_hazard_ratios must be positive")
        if settings.clinic_log_hr_sd < 0:
            raise ValueError("simulate.clinical.clinic_log_hr_sd must not be negative")
        if not 0 <= settings.unknown_stop_reason_share < 1:
            raise ValueError("simulate.clinical.unknown_stop_reason_share must be in [0, 1)")
        if settings.serious_infection_rate_per_1000_years < 0 or settings.serious_infection_high_efficacy_rate_ratio <= 0:
            raise ValueError(
                "simulate.clinical.serious_infection_rate_per_1000_years must not be negative and "
                "serious_infection_high_efficacy_rate_ratio must be positive"
            )
        return settings

    @property
    def serious_infections(self) -> bool:
        """Whether serious-infection diagnoses are simulated (a positive rate)."""
        return self.serious_infection_rate_per_1000_years > 0


@dataclass
class Clinics:
    """The simulated clinics: ids, countries, size weights and planted log hazard ratios of stopping."""

    ids: list[str]
    country: np.ndarray  # str per clinic
    size_share: np.ndarray  # probability that a patient is followed at the clinic
    random_log_hr: np.ndarray  # u_c ~ N(0, tau^2) (drawn for every clinic; an outlier's is not used)
    outlier_log_hr: np.ndarray  # log of an outlier clinic's planted HR (0 for ordinary clinics)
    outliers: list[str]

    @property
    def log_hr(self) -> np.ndarray:
        """Each clinic's planted log HR of stopping (every reason): u_c, or an outlier's own planted log HR.

        An outlier's effect replaces its draw from the between-clinic distribution rather than adding to it:
        an outlier is a clinic outside that distribution, which a draw plus an extra effect need not be (a
        draw of -0.5 tau plus log 2 is an ordinary clinic)."""
        return np.where(self.outlier_log_hr != 0, self.outlier_log_hr, self.random_log_hr)

    @staticmethod
    def draw(settings: ClinicalSettings, rng: np.random.Generator) -> Clinics:
        """Clinic sizes and effects; outliers are drawn among the clinics at or above the median size (a
        tiny outlier clinic would be a truth no method can see)."""
        ids, countries = [], []
        for country, n in settings.clinics_per_country.items():
            ids += [f"{country}-{k + 1:02d}" for k in range(n)]
            countries += [country] * n
        weight = np.exp(CLINIC_SIZE_LOG_SD * rng.standard_normal(len(ids)))
        random_log_hr = settings.clinic_log_hr_sd * rng.standard_normal(len(ids))
        large = np.flatnonzero(weight >= np.median(weight))
        n_outliers = len(settings.outlier_hazard_ratios)
        if n_outliers > len(large):
            large = np.arange(len(ids))
        chosen = np.sort(rng.choice(large, size=n_outliers, replace=False))
        outlier_log_hr = np.zeros(len(ids))
        outlier_log_hr[chosen] = np.log(np.array(settings.outlier_hazard_ratios))
        return Clinics(
            ids=ids,
            country=np.array(countries),
            size_share=weight / weight.sum(),
            random_log_hr=random_log_hr,
            outlier_log_hr=outlier_log_hr,
            outliers=[ids[c] for c in chosen],
        )


@dataclass
class DrugTable:
    """The drug constants as arrays indexed like DRUGS, and the day numbers of availability."""

    codes: list[str]
    available_day: np.ndarray
    pharmacy: np.ndarray
    high_efficacy: np.ndarray
    log_relapse_rr: np.ndarray
    log_progression_hr: np.ndarray
    adverse_event_factor: np.ndarray
    choice_log_weight: np.ndarray
    older: np.ndarray  # interferons and glatiramer
    progressive_ok: np.ndarray
    natalizumab: int

    @staticmethod
    def build() -> DrugTable:
        codes = [d.atc_code for d in DRUGS]
        return DrugTable(
            codes=codes,
            available_day=np.array([day_number(d.available_from) for d in DRUGS], dtype=np.int64),
            pharmacy=np.array([d.pharmacy for d in DRUGS]),
            high_efficacy=np.array([d.high_efficacy for d in DRUGS]),
            log_relapse_rr=np.log([d.relapse_rate_ratio for d in DRUGS]),
            log_progression_hr=np.log([d.progression_hr for d in DRUGS]),
            adverse_event_factor=np.array([d.adverse_event_factor for d in DRUGS]),
            choice_log_weight=np.array([d.choice_log_weight for d in DRUGS]),
            older=np.array([c[:5] in ("L03AB", "L03AX") for c in codes]),
            progressive_ok=np.array([c in PROGRESSIVE_ONLY for c in codes]),
            natalizumab=codes.index("L04AA23"),
        )

    def country_log_weight(self, countries: list[str]) -> np.ndarray:
        """(countries, drugs) additions to the log preference."""
        table = np.zeros((len(countries), len(self.codes)))
        for i, country in enumerate(countries):
            for code, value in COUNTRY_CHOICE_LOG_WEIGHT.get(country, {}).items():
                table[i, self.codes.index(code)] = value
        return table
