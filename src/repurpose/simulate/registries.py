"""Simulated linked registries (population, NorPD-style prescriptions, MS registry) with a planted truth.

Why: the drug-wide association screen needs data on which we know the answer. Every substance of the
package's ATC catalog (except MS treatments, see `NOT_SIMULATED`) is prescribed with realistic age/sex
patterns, and a few are given a planted role. The roles are fixed here (not drawn), so every seed plants
the same truth:

* `causal_protective` (the MS onset hazard is multiplied by `planted_hr` < 1):
  R06AA04 clemastine 0.55, J01AA08 minocycline 0.60, A11CC05 colecalciferol 0.65,
  P01BA02 hydroxychloroquine 0.50.
* `causal_harmful`: L04AB04 adalimumab 2.0, G03AA07 levonorgestrel and ethinylestradiol 1.5 (women only),
  D10BA01 isotretinoin 1.8.
* `mechanism` (protective through one shared target, ADRB2 agonism; HR 0.65 each, across the level-3
  classes R03A and R03C): R03AC02 salbutamol, R03AC03 terbutaline, R03AC12 salmeterol, R03AC13 formoterol,
  R03CC02 salbutamol (systemic). The catalog holds no other beta-2 agonist, so the target is clean.
* `prodromal` (no effect; cases get extra dispensings in the 5 years before onset, denser towards onset):
  N06AB06 sertraline, G04BD07 tolterodine, N07CA01 betahistine.
* `confounded` (no effect; use rises with a latent person factor U ~ N(0, 1), think smoking/obesity,
  which also raises the MS hazard by `LATENT_LOG_HR_PER_SD` per SD): N07BA03 varenicline, A08AB01 orlistat,
  N06AX12 bupropion.
* every other simulated substance: `null` (HR 1).

The model the data follow exactly:

* Prescribing: for each person and calendar year at risk, first treatment episodes of each substance start
  as a Poisson process with rate rate_j * age_profile_j(age) * sex_factor_j (* exp(U - 1/2) for
  `confounded`); the rates are calibrated so that the share of the population that ever uses the substance
  over the window matches `EVER_USE_PERCENT_BY_ATC2` (rounded from published Norwegian use; split among
  the substances of the group) or the planted substance's own target. Each first episode is followed by
  Geometric(`REPEAT_EPISODES_MEAN`) repeat episodes after exponential gaps. An episode has
  1 + Geometric(refills) dispensings ~30-120 days apart with a typical number of DDD each. No dispensing
  outside [study_start, study_end], on/after death or emigration.
* MS onset hazard h(t) = h0(age band) * sex_factor * exp(sum_j log(hr_j) * exposed_j(t) + gamma * U), with
  exposed_j(t) = 1 from the person's second dispensing of substance j onward (for ever after), h0
  piecewise constant on age bands with an MS-like peak at 20-40 years, female:male 2.5:1. Onset is drawn
  exactly by inverting the cumulative hazard with one Exp(1) draw per person from birth (so prevalent
  cases with onset before study start exist; no drug data, hence no drug effects, before study start)
  until death, emigration, or study end + 5 years (onsets after study end are never reported, but their
  prodromal dispensings fall inside the window, as in real data). The default
  `baseline_incidence_per_100k` is inflated about tenfold over real MS incidence so that a 50,000-person
  demo has several hundred incident cases.
* Diagnosis = onset + lognormal delay (median 1.5 years); the registry lists patients diagnosed alive and
  resident on or before study end; onset is missing for ~10%.

With the default settings this gives ~5 dispensings per person-year and ~1.6% of persons with onset in a
20-year window. The same arguments always give identical data (persons are simulated in chunks of
`chunk_size`, each with its own random stream, so changing `chunk_size` changes the draws). Optional
invalid rows (`n_corrupt_rows`) use null-role substances or persons outside the MS registry, so they never
change the planted truth. The hidden per-person truth (exact birth date, latent factor U, true onset
including undiagnosed ones) is written to `ground_truth_persons.parquet` so the truth can be checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from repurpose.atc import load_builtin_catalog

# --------------------------------------------------------------------------------------------------
# Planted truth
# --------------------------------------------------------------------------------------------------

CAUSAL_PROTECTIVE = "causal_protective"
CAUSAL_HARMFUL = "causal_harmful"
MECHANISM = "mechanism"
PRODROMAL = "prodromal"
CONFOUNDED = "confounded"
NULL = "null"
ROLES = (CAUSAL_PROTECTIVE, CAUSAL_HARMFUL, MECHANISM, PRODROMAL, CONFOUNDED, NULL)


@dataclass(frozen=True)
class PlantedSubstance:
    """A substance with a planted role; `ever_use` is its target share of persons with >= 1 dispensing."""

    role: str
    planted_hr: float
    ever_use: float
    rationale: str


MECHANISM_GENE = "ADRB2"
MECHANISM_ACTION_TYPE = "AGONIST"
MECHANISM_HR = 0.65

PLANTED: dict[str, PlantedSubstance] = {
    "R06AA04": PlantedSubstance(CAUSAL_PROTECTIVE, 0.55, 0.15, "antihistamine; remyelination candidate"),
    "J01AA08": PlantedSubstance(
        CAUSAL_PROTECTIVE, 0.60, 0.08, "tetracycline; slowed conversion in a CIS trial"
    ),
    "A11CC05": PlantedSubstance(CAUSAL_PROTECTIVE, 0.65, 0.15, "vitamin D"),
    "P01BA02": PlantedSubstance(CAUSAL_PROTECTIVE, 0.50, 0.08, "antimalarial immunomodulator"),
    "L04AB04": PlantedSubstance(CAUSAL_HARMFUL, 2.0, 0.07, "TNF inhibitors can trigger demyelination"),
    "G03AA07": PlantedSubstance(CAUSAL_HARMFUL, 1.5, 0.15, "combined oral contraceptive (women only)"),
    "D10BA01": PlantedSubstance(CAUSAL_HARMFUL, 1.8, 0.06, "systemic retinoid (adolescents)"),
    "R03AC02": PlantedSubstance(MECHANISM, MECHANISM_HR, 0.15, "inhaled short-acting beta-2 agonist"),
    "R03AC03": PlantedSubstance(MECHANISM, MECHANISM_HR, 0.08, "inhaled short-acting beta-2 agonist"),
    "R03AC12": PlantedSubstance(MECHANISM, MECHANISM_HR, 0.08, "inhaled long-acting beta-2 agonist"),
    "R03AC13": PlantedSubstance(MECHANISM, MECHANISM_HR, 0.10, "inhaled long-acting beta-2 agonist"),
    "R03CC02": PlantedSubstance(
        MECHANISM, MECHANISM_HR, 0.07, "systemic beta-2 agonist (other level-3 class)"
    ),
    "N06AB06": PlantedSubstance(PRODROMAL, 1.0, 0.06, "antidepressant: mood symptoms precede MS onset"),
    "G04BD07": PlantedSubstance(PRODROMAL, 1.0, 0.04, "urological: bladder symptoms precede MS onset"),
    "N07CA01": PlantedSubstance(PRODROMAL, 1.0, 0.05, "antivertigo: dizziness precedes MS onset"),
    "N07BA03": PlantedSubstance(CONFOUNDED, 1.0, 0.08, "smoking cessation; use follows the latent factor"),
    "A08AB01": PlantedSubstance(CONFOUNDED, 1.0, 0.08, "antiobesity; use follows the latent factor"),
    "N06AX12": PlantedSubstance(CONFOUNDED, 1.0, 0.08, "smoking cessation/antidepressant; latent factor"),
}

NOT_SIMULATED: tuple[str, ...] = (
    "L03AB07",  # interferon beta-1a
    "L03AB08",  # interferon beta-1b
    "L03AX13",  # glatiramer acetate
    "L04AA23",  # natalizumab
    "L04AA27",  # fingolimod
    "L04AA31",  # teriflunomide
    "L04AX07",  # dimethyl fumarate
    "N07XX07",  # fampridine
)
"""Catalog substances not simulated: MS treatments, which real data show only after diagnosis."""

# --------------------------------------------------------------------------------------------------
# MS hazard model
# --------------------------------------------------------------------------------------------------

AGE_BAND_LOWER_YEARS: tuple[float, ...] = (0, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70)
# fmt: off
AGE_BAND_RELATIVE_HAZARD: tuple[float, ...] = (
    0.01, 0.08, 0.35, 0.75, 1.0, 1.0, 0.85, 0.65, 0.45, 0.30, 0.18, 0.10, 0.05, 0.02,
)
# fmt: on
"""MS onset hazard by age band relative to the peak (25-34 years)."""

FEMALE_TO_MALE_HAZARD_RATIO = 2.5
SEX_HAZARD_FACTOR: dict[str, float] = {
    "F": 2 * FEMALE_TO_MALE_HAZARD_RATIO / (1 + FEMALE_TO_MALE_HAZARD_RATIO),
    "M": 2 / (1 + FEMALE_TO_MALE_HAZARD_RATIO),
}
"""Multipliers of the baseline hazard; their mean is 1, so the baseline is the average of the sexes."""

LATENT_LOG_HR_PER_SD = 0.4
"""log-HR of MS onset per SD of the latent factor U (gamma)."""

CONFOUNDED_USE_LOG_RATE_PER_SD = 1.0
"""log rate ratio of episode starts of `confounded` substances per SD of U."""

DEFAULT_BASELINE_INCIDENCE_PER_100K = 240.0
"""Onset incidence per 100,000 person-years at the peak ages, averaged over sexes, unexposed, U = 0.

Real MS incidence at the peak is ~10-20 per 100,000; this default is inflated for statistical power so
that ~1.5% of a simulated population has onset during a 20-year window."""

ONSET_HORIZON_AFTER_STUDY_END_YEARS = 5.0
DIAGNOSIS_DELAY_MEDIAN_YEARS = 1.5
DIAGNOSIS_DELAY_LOG_SD = 0.8
ONSET_MISSING_SHARE = 0.10
EDSS_MISSING_SHARE = 0.08
MS_COURSE_SHARES: dict[str, float] = {"RR": 0.85, "SP": 0.10, "PP": 0.05}

PRODROMAL_WINDOW_YEARS = 5.0
PRODROMAL_USER_PROBABILITY = 0.08
"""Probability that a case gets prodromal dispensings of a given prodromal substance."""
PRODROMAL_EXTRA_DISPENSINGS_MEAN = 1.5
"""Prodromal users get 2 + Poisson(this) extra dispensings, density rising linearly towards onset."""

def prescription_file_name(year: int) -> str:
    """File name of the simulated prescription extract of one dispensing year (one file per year, as delivered)."""
    return f"dispensings_{year}.parquet"


def simulated_prescription_files(study_start: str, study_end: str) -> list[str]:
    """The yearly prescription files the simulator writes for a study window (known before it runs)."""
    study = StudyWindow(_day_number(study_start), _day_number(study_end))
    return [prescription_file_name(year) for year in study.years]


# --------------------------------------------------------------------------------------------------
# Population model
# --------------------------------------------------------------------------------------------------

FIRST_BIRTH_YEAR = 1924
BIRTH_YEAR_ANCHORS = (1924, 1940, 1950, 1990, 2005, 2022)
BIRTH_YEAR_WEIGHTS = (0.25, 0.8, 1.0, 1.0, 0.9, 0.5)
GOMPERTZ_MORTALITY_AT_AGE_0 = 2.1e-5
"""Gompertz mortality h(age) = a * exp(b * age) per year: ~0.4/1000 at 30, ~5% at 80."""
GOMPERTZ_MORTALITY_SLOPE = 0.097
EMIGRATION_SHARE = 0.03
BIRTH_MONTH_MISSING_SHARE = 0.02
EDUCATION_SHARES = (0.04, 0.25, 0.37, 0.21, 0.13)
EDUCATION_MISSING_SHARE = 0.05

# --------------------------------------------------------------------------------------------------
# Prescribing model
# --------------------------------------------------------------------------------------------------

MAX_AGE = 110
# fmt: off
AGE_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # name: (anchor ages, relative use at those ages); interpolated linearly, peak scaled to 1
    "general": ((0, 2, 6, 15, 30, 50, 70, 90, 110), (0.7, 0.8, 0.5, 0.45, 0.5, 0.6, 0.8, 0.9, 0.9)),
    "child_peak": ((0, 2, 6, 12, 20, 40, 60, 80, 110), (0.9, 1.0, 0.7, 0.4, 0.5, 0.45, 0.55, 0.8, 0.8)),
    "respiratory": ((0, 2, 6, 15, 30, 50, 70, 85, 110), (0.7, 1.0, 0.8, 0.5, 0.45, 0.55, 0.9, 1.0, 1.0)),
    "adult": ((0, 10, 16, 25, 40, 60, 80, 110), (0.0, 0.03, 0.4, 0.7, 0.85, 1.0, 1.0, 1.0)),
    "chronic": ((0, 20, 30, 40, 50, 60, 70, 80, 110), (0.0, 0.005, 0.02, 0.07, 0.2, 0.45, 0.8, 1.0, 1.0)),
    "elderly": ((0, 40, 50, 60, 70, 80, 110), (0.0, 0.01, 0.04, 0.15, 0.45, 1.0, 1.0)),
    "young_female": ((0, 12, 15, 18, 25, 35, 45, 52, 110), (0.0, 0.0, 0.4, 0.9, 1.0, 0.7, 0.35, 0.0, 0.0)),
    "menopause": ((0, 35, 45, 52, 60, 70, 110), (0.0, 0.0, 0.4, 1.0, 0.6, 0.2, 0.05)),
    "adolescent": ((0, 10, 13, 16, 20, 30, 45, 110), (0.0, 0.0, 0.5, 1.0, 0.8, 0.25, 0.03, 0.0)),
    "middle": ((0, 10, 18, 30, 45, 60, 75, 110), (0.0, 0.02, 0.3, 0.8, 1.0, 0.9, 0.6, 0.4)),
    "young_adult": ((0, 12, 18, 25, 40, 55, 70, 110), (0.0, 0.1, 0.7, 1.0, 1.0, 0.6, 0.4, 0.3)),
    "youth": ((0, 5, 8, 12, 18, 30, 45, 110), (0.0, 0.0, 0.6, 1.0, 0.8, 0.4, 0.1, 0.02)),
}
# fmt: on


@dataclass(frozen=True)
class UseProfile:
    """How a group of substances is prescribed: who gets it, how long episodes last, what is dispensed."""

    age_profile: str
    female_share: float  # share of use by women at equal numbers of men and women (1.0 = women only)
    refills_mean: float  # mean number of refills after the first dispensing of an episode (geometric)
    refill_interval_days: float  # mean days between dispensings of an episode
    ddd_per_dispensing: float  # typical number of DDD dispensed at once
    reimbursed_share: float = 0.0  # share of episodes with a reimbursement code
    reimbursement_codes: tuple[str, ...] = ()  # ICD-10 / ICPC-2 codes drawn for reimbursed episodes


# fmt: off
def _use(
    age: str, female: float, refills: float, interval: float, ddd: float, reimbursed: float = 0.0,
    codes: tuple[str, ...] = (),
) -> UseProfile:
    return UseProfile(age, female, refills, interval, ddd, reimbursed, codes)
# fmt: on


# fmt: off
USE_PROFILES: dict[str, UseProfile] = {
    # keyed by ATC prefix; the longest matching prefix wins (a level-5 code overrides its groups)
    "A01": _use("general", 0.55, 0.3, 60, 20),
    "A02": _use("adult", 0.55, 3, 60, 56, 0.3, ("K21", "D84")),
    "A03": _use("adult", 0.6, 0.5, 45, 30),
    "A04": _use("adult", 0.6, 0.5, 30, 10, 0.1, ("R11", "D09")),
    "A05": _use("adult", 0.6, 4, 90, 100, 0.8, ("K74", "D97")),
    "A06": _use("elderly", 0.58, 2, 60, 30, 0.3, ("K59", "D12")),
    "A07": _use("adult", 0.55, 2, 60, 50, 0.5, ("K50", "K51", "D94")),
    "A08": _use("adult", 0.65, 2, 60, 60),
    "A09": _use("adult", 0.5, 6, 90, 100, 0.9, ("K86",)),
    "A10": _use("chronic", 0.45, 20, 90, 100, 0.95, ("E11", "T90")),
    "A10A": _use("adult", 0.45, 15, 90, 100, 0.95, ("E10", "T89", "E11", "T90")),
    "A11": _use("adult", 0.7, 3, 90, 100, 0.4, ("E55", "T91")),
    "A11CC05": _use("young_adult", 0.7, 5, 90, 100, 0.3, ("E55", "T91")),
    "A12": _use("elderly", 0.65, 4, 90, 100, 0.4, ("M81", "L95", "E87")),
    "A14": _use("adult", 0.35, 2, 90, 10, 0.5, ("D61",)),
    "A16": _use("adult", 0.5, 10, 90, 30, 1.0, ("E75",)),
    "B01": _use("chronic", 0.47, 18, 90, 100, 0.8, ("I48", "K78", "I63", "I26")),
    "B01AB": _use("adult", 0.6, 1, 30, 10, 0.3, ("I80", "K94")),
    "B02": _use("adult", 0.75, 1, 60, 20, 0.2, ("N92", "X06")),
    "B03": _use("adult", 0.75, 2, 90, 100, 0.5, ("D50", "B80", "D51")),
    "B05": _use("elderly", 0.5, 1, 30, 10, 0.5, ("E86",)),
    "C01": _use("chronic", 0.44, 10, 90, 100, 0.9, ("I48", "K78", "I20", "K74")),
    "C02": _use("chronic", 0.5, 10, 90, 100, 0.9, ("I10", "K86")),
    "C03": _use("chronic", 0.56, 10, 90, 100, 0.9, ("I10", "K86", "I50", "K77")),
    "C04": _use("chronic", 0.5, 4, 90, 100, 0.9, ("I73",)),
    "C05": _use("adult", 0.55, 0.3, 60, 20),
    "C07": _use("chronic", 0.52, 18, 90, 100, 0.9, ("I10", "K86", "I20", "K74", "I48")),
    "C07AA05": _use("adult", 0.65, 4, 90, 100, 0.5, ("G43", "N89", "I10")),
    "C08": _use("chronic", 0.5, 18, 90, 100, 0.9, ("I10", "K86")),
    "C09": _use("chronic", 0.47, 20, 90, 100, 0.95, ("I10", "K86", "I50")),
    "C10": _use("chronic", 0.44, 20, 90, 100, 0.95, ("E78", "T93", "I25", "K76")),
    "D01": _use("general", 0.52, 0.3, 60, 15),
    "D02": _use("general", 0.57, 1, 60, 50, 0.5, ("L20", "S87")),
    "D05": _use("adult", 0.5, 4, 90, 60, 0.8, ("L40", "S91")),
    "D06": _use("general", 0.52, 0.2, 30, 15),
    "D07": _use("general", 0.57, 0.8, 60, 30, 0.2, ("L20", "S87")),
    "D10": _use("adolescent", 0.57, 2, 60, 30, 0.1, ("L70", "S96")),
    "D10BA01": _use("adolescent", 0.5, 4, 30, 30, 0.1, ("L70", "S96")),
    "D11": _use("adult", 0.55, 1, 60, 30, 0.3, ("L20", "S87")),
    "G01": _use("adult", 1.0, 0.3, 30, 3),
    "G02": _use("young_female", 1.0, 0.5, 365, 1),
    "G02C": _use("adult", 0.9, 1, 60, 8, 0.2, ("E22",)),
    "G03": _use("young_female", 1.0, 4, 90, 84, 0.05, ("N94", "X09")),
    "G03B": _use("adult", 0.0, 6, 90, 30, 0.7, ("E29", "Y99")),
    "G03C": _use("menopause", 1.0, 5, 90, 84, 0.2, ("N95", "X11")),
    "G03D": _use("menopause", 1.0, 3, 90, 30, 0.2, ("N92", "X07")),
    "G03G": _use("young_female", 1.0, 1, 30, 10, 0.5, ("N97", "W15")),
    "G03X": _use("menopause", 1.0, 8, 90, 84, 0.9, ("M81", "L95")),
    "G04BD": _use("adult", 0.65, 4, 90, 90, 0.5, ("N39", "U04", "R32")),
    "G04BE": _use("adult", 0.0, 1, 90, 12),
    "G04C": _use("elderly", 0.0, 12, 90, 100, 0.8, ("N40", "Y85")),
    "H01": _use("adult", 0.5, 6, 90, 30, 0.9, ("E23", "T99")),
    "H02": _use("general", 0.55, 0.8, 45, 30, 0.3, ("J45", "M35", "L40")),
    "H03": _use("adult", 0.8, 20, 90, 100, 0.95, ("E03", "T86", "E05", "T85")),
    "H04": _use("adult", 0.5, 0.5, 180, 1, 0.9, ("E10", "T89")),
    "H05": _use("elderly", 0.65, 6, 60, 30, 0.9, ("M81", "E21")),
    "J01": _use("child_peak", 0.58, 0.1, 30, 10),
    "J01AA": _use("general", 0.55, 0.8, 45, 30, 0.1, ("L70",)),
    "J01AA08": _use("adolescent", 0.55, 3, 45, 30, 0.1, ("L70", "S96")),
    "J01X": _use("adult", 0.85, 0.3, 30, 7, 0.2, ("N30", "U71")),
    "J02": _use("adult", 0.65, 0.2, 30, 7),
    "J04": _use("adult", 0.5, 4, 30, 30, 1.0, ("A15", "A70")),
    "J05": _use("adult", 0.57, 0.5, 60, 15, 0.2, ("B00", "B02")),
    "J05AF": _use("adult", 0.35, 12, 90, 30, 1.0, ("B18", "B20")),
    "J06": _use("adult", 0.5, 4, 30, 10, 1.0, ("D80",)),
    "J07": _use("general", 0.55, 0.0, 30, 1),
    "L01": _use("chronic", 0.5, 4, 30, 30, 1.0, ("C50", "C18", "C61")),
    "L02": _use("chronic", 0.7, 12, 90, 100, 1.0, ("C50", "C61")),
    "L03": _use("adult", 0.5, 4, 30, 10, 1.0, ("D70",)),
    "L04": _use("middle", 0.55, 10, 60, 30, 1.0, ("M05", "L40", "K50", "K51", "M45")),
    "M01": _use("adult", 0.55, 0.8, 45, 30, 0.1, ("M06", "M15", "L88")),
    "M02": _use("adult", 0.55, 0.3, 60, 1),
    "M03": _use("adult", 0.57, 1.5, 60, 30, 0.2, ("M62",)),
    "M04": _use("chronic", 0.23, 8, 90, 100, 0.8, ("M10", "T92")),
    "M05": _use("elderly", 0.8, 10, 90, 84, 0.9, ("M81", "L95")),
    "N01": _use("adult", 0.55, 0.0, 30, 1),
    "N02": _use("adult", 0.58, 1.0, 45, 30, 0.2, ("M54", "L03", "R52")),
    "N02C": _use("adult", 0.75, 2, 60, 12, 0.4, ("G43", "N89")),
    "N03": _use("adult", 0.52, 10, 90, 100, 0.9, ("G40", "N88", "G62", "F31")),
    "N04": _use("elderly", 0.44, 12, 90, 100, 0.95, ("G20", "N87")),
    "N05A": _use("adult", 0.5, 8, 60, 60, 0.8, ("F20", "P72", "F31", "P73")),
    "N05B": _use("adult", 0.64, 1.5, 45, 30, 0.05, ("F41", "P74")),
    "N05C": _use("adult", 0.62, 2, 45, 30, 0.05, ("G47", "P06")),
    "N06A": _use("adult", 0.66, 6, 60, 60, 0.6, ("F32", "P76", "F41", "P74")),
    "N06B": _use("youth", 0.3, 12, 60, 30, 0.95, ("F90", "P81")),
    "N06D": _use("elderly", 0.6, 10, 90, 100, 0.95, ("F00", "P70")),
    "N07A": _use("adult", 0.5, 10, 90, 100, 0.9, ("G70", "N99")),
    "N07B": _use("adult", 0.4, 2, 30, 28, 0.3, ("F17", "P17", "F10", "P15")),
    "N07C": _use("adult", 0.62, 2, 60, 50, 0.2, ("H81", "N17", "R42")),
    "N07X": _use("adult", 0.5, 10, 90, 100, 1.0, ("G12",)),
    "P01": _use("adult", 0.5, 0.1, 30, 10),
    "P01BA": _use("young_adult", 0.8, 8, 90, 100, 0.9, ("M05", "M32", "L99")),
    "P02": _use("child_peak", 0.55, 0.1, 14, 6),
    "P03": _use("child_peak", 0.55, 0.1, 14, 1),
    "R01": _use("general", 0.56, 0.7, 60, 30, 0.05, ("J30", "R97")),
    "R03": _use("respiratory", 0.55, 4, 60, 60, 0.6, ("J45", "R96", "J44", "R95")),
    "R03BB": _use("chronic", 0.5, 8, 60, 30, 0.8, ("J44", "R95")),
    "R03CC02": _use("respiratory", 0.55, 3, 45, 30, 0.3, ("J45", "R96")),
    "R05": _use("general", 0.56, 0.2, 30, 10),
    "R06": _use("general", 0.56, 1.0, 60, 30, 0.1, ("J30", "R97", "L50", "S98")),
    "R06AA04": _use("general", 0.55, 3, 45, 30, 0.1, ("J30", "R97", "L50", "S98")),
    "S01": _use("general", 0.56, 0.5, 60, 30),
    "S01E": _use("elderly", 0.55, 12, 90, 90, 0.95, ("H40", "F93")),
    "S01L": _use("elderly", 0.57, 6, 60, 1, 1.0, ("H35", "F84")),
    "S02": _use("general", 0.52, 0.2, 30, 10),
    "S03": _use("general", 0.52, 0.2, 30, 10),
    "V01": _use("youth", 0.5, 4, 90, 30, 1.0, ("J30", "R97")),
    "V03": _use("chronic", 0.5, 4, 90, 30, 0.5, ("N18", "U99")),
    "V04": _use("chronic", 0.45, 8, 90, 100, 0.9, ("E11", "T90")),
    "V08": _use("elderly", 0.5, 0.0, 30, 1),
}
# fmt: on

# fmt: off
EVER_USE_PERCENT_BY_ATC2: dict[str, float] = {
    # Share (%) of persons with >= 1 dispensing in the group over the window; rounded from published
    # Norwegian prescription-register use counts (adults, 2004-2019), not exact.
    "A01": 2, "A02": 25, "A03": 6, "A04": 3, "A05": 0.3, "A06": 5, "A07": 5, "A08": 1, "A09": 0.5,
    "A10": 8, "A11": 10, "A12": 11, "A14": 0.1, "A16": 0.05,
    "B01": 28, "B02": 1.5, "B03": 12, "B05": 0.3,
    "C01": 9, "C02": 1.5, "C03": 16, "C04": 0.2, "C05": 5, "C07": 22, "C08": 15, "C09": 28, "C10": 26,
    "D01": 11, "D02": 1.2, "D05": 2.5, "D06": 8, "D07": 26, "D10": 2.5, "D11": 1.5,
    "G01": 2, "G02": 3, "G03": 12, "G04": 15,
    "H01": 1.2, "H02": 18, "H03": 8, "H04": 0.3, "H05": 0.2,
    "J01": 70, "J02": 3, "J04": 0.15, "J05": 3, "J06": 0.05, "J07": 6,
    "L01": 1.2, "L02": 2.8, "L03": 1, "L04": 2,
    "M01": 60, "M02": 4.5, "M03": 2.5, "M04": 3.5, "M05": 5,
    "N01": 1, "N02": 55, "N03": 8, "N04": 2, "N05": 37, "N06": 20, "N07": 3,
    "P01": 4, "P02": 0.1, "P03": 1,
    "R01": 22, "R03": 4, "R05": 32, "R06": 22,
    "S01": 35, "S02": 1.2, "S03": 5,
    "V01": 0.5, "V03": 0.5, "V04": 0.5, "V08": 0.1,
}
# fmt: on

# fmt: off
POPULARITY: dict[str, float] = {
    # relative weight of a substance within its ATC level-2 group (default 1)
    "A02BC05": 3, "A02BC02": 2, "A02BC01": 2, "A10BA02": 5, "A12AA04": 3, "B01AC06": 6, "B01AA03": 2,
    "B01AF01": 2, "B01AF02": 2, "B03AA07": 3, "B03BA01": 3, "C03CA01": 4, "C03AA03": 2, "C07AB02": 6,
    "C08CA01": 5, "C09CA01": 3, "C09CA06": 2, "C09AA05": 2, "C10AA01": 5, "C10AA05": 4, "D01AC01": 2,
    "D06AX01": 3, "D07AA02": 3, "D07AB02": 3, "D07AC13": 4, "G03AC09": 2, "G03CA03": 2, "G04CA02": 4,
    "G04BE03": 2, "H02AB06": 6, "H03AA01": 8, "J01CE02": 6, "J01CA08": 3, "J01CA04": 3, "J01EA01": 2,
    "J01AA02": 3, "J01FA01": 2, "J01XX05": 2, "M01AE01": 6, "M01AB05": 4, "M01AE02": 3,
    "N02BE01": 8, "N02AA59": 6, "N02AX02": 3, "N05CF01": 6, "N05BA01": 4, "N05BA04": 2,
    "N06AB10": 3, "N06AB04": 2, "N06AX11": 2, "R01AD09": 3, "R01AA07": 2, "R03BA02": 3,
    "R05DA04": 3, "R05CB01": 2, "R06AX27": 4, "R06AE07": 4, "R06AX13": 2, "S01AA01": 6,
}
# fmt: on

REPEAT_EPISODES_MEAN = 1.2
"""Mean number of later episodes (Geometric) following a person's first episode of a substance."""
REPEAT_GAP_MEAN_YEARS = 2.0
"""Mean time (exponential) from one episode's start to the next repeat episode's start."""
DDD_PACK_MULTIPLIERS = (0.5, 1.0, 2.0)
DDD_PACK_MULTIPLIER_SHARES = (0.15, 0.7, 0.15)
REFILL_INTERVAL_BOUNDS_DAYS = (30.0, 120.0)
CALIBRATION_PERSONS = 4000
CALIBRATION_SEED = 20240101

# --------------------------------------------------------------------------------------------------
# Injected invalid rows (to exercise validation)
# --------------------------------------------------------------------------------------------------

CORRUPT_KINDS: tuple[str, ...] = (
    "malformed_atc_code",
    "negative_ddd",
    "unknown_person_dispensing",
    "dispense_date_outside_window",
    "ms_registry_unknown_person",
    "diagnosis_before_birth",
)
MALFORMED_ATC_CODES: tuple[str, ...] = ("N06AB6", "R03AC0X", "J01CA", "1234567", "N06AB066", "C1OAA01")

# --------------------------------------------------------------------------------------------------
# Registry-native layout
# --------------------------------------------------------------------------------------------------

# fmt: off
NATIVE_COLUMNS: dict[str, dict[str, str]] = {
    "population": {
        "person_id": "løpenr", "sex": "kjønn", "birth_year": "fødselsår", "birth_month": "fødselsmåned",
        "death_date": "dødsdato", "emigration_date": "utvandringsdato", "education": "utdanning",
    },
    "prescriptions": {
        "person_id": "løpenr", "dispense_date": "utleveringsdato", "atc_code": "atckode", "ddd": "ddd",
        "reimbursement_code": "refusjonskode",
    },
    "ms_registry": {
        "person_id": "løpenr", "onset_date": "debutdato", "diagnosis_date": "diagnosedato",
        "ms_course": "forløp", "edss_at_diagnosis": "edss_ved_diagnose",
    },
}
# fmt: on
NATIVE_DATE_FORMAT = "%d.%m.%Y"
NATIVE_SEPARATOR = ";"
NATIVE_ENCODING = "latin-1"
NATIVE_SEX_CODES: dict[str, int] = {"M": 1, "F": 2}
"""Statistics Norway sex coding: 1 = male, 2 = female."""

DAYS_PER_YEAR = 365.25
PRESCRIPTIONS_SCHEMA = pa.schema(
    [
        ("person_id", pa.int64()),
        ("dispense_date", pa.date32()),
        ("atc_code", pa.string()),
        ("ddd", pa.float64()),
        ("reimbursement_code", pa.string()),
    ]
)


# --------------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------------


def _day_number(iso: str | date) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return int(np.datetime64(str(iso), "D").astype(np.int64))


def _year_start_day(years: np.ndarray) -> np.ndarray:
    """Day number of 1 January of each year."""
    return (
        (np.asarray(years, dtype=np.int64) - 1970)
        .astype("datetime64[Y]")
        .astype("datetime64[D]")
        .astype(np.int64)
    )


def _year_of_day(days: np.ndarray) -> np.ndarray:
    """Calendar year of each day number."""
    return (
        np.asarray(days, dtype=np.int64).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)
        + 1970
    )


def _date_array(days: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Arrow date32 array from day numbers; entries where `valid` is False become null."""
    mask = None if valid is None else ~np.asarray(valid, dtype=bool)
    return pa.array(np.asarray(days, dtype=np.int32), type=pa.int32(), mask=mask).cast(pa.date32())


@dataclass(frozen=True)
class StudyWindow:
    """The study window as day numbers (days since 1970-01-01); `end_day` is the last day included."""

    start_day: int
    end_day: int

    @property
    def first_year(self) -> int:
        return int(_year_of_day(np.array([self.start_day]))[0])

    @property
    def last_year(self) -> int:
        return int(_year_of_day(np.array([self.end_day]))[0])

    @property
    def years(self) -> list[int]:
        return list(range(self.first_year, self.last_year + 1))


# --------------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------------


@dataclass
class Population:
    """Simulated persons (one array entry each, sorted by person_id) with their hidden true values."""

    person_id: np.ndarray  # int64, sorted, unique, non-sequential
    is_male: np.ndarray  # bool
    birth_day: np.ndarray  # int64 day number of the true birth date
    birth_year: np.ndarray  # int32
    birth_month_recorded: np.ndarray  # int8, 0 where missing in the register
    latent_factor: np.ndarray  # float64 U ~ N(0, 1)
    entry_day: np.ndarray  # int64 first day at risk in the window: max(birth, study start)
    true_death_day: np.ndarray  # int64 day of death (may lie after study end)
    emigration_day: np.ndarray  # int64, huge where the person never emigrates during the window
    education: np.ndarray  # int8, -1 where missing

    def __len__(self) -> int:
        return len(self.person_id)

    def exit_day(self, study: StudyWindow) -> np.ndarray:
        """First day no longer at risk in the window (exclusive): death, emigration or day after study end."""
        return np.minimum(np.minimum(self.true_death_day, self.emigration_day), study.end_day + 1)

    def take(self, index: slice | np.ndarray) -> Population:
        return Population(**{name: value[index] for name, value in self.__dict__.items()})


NEVER = np.iinfo(np.int64).max // 4


def _unique_random_ids(
    rng: np.random.Generator, n: int, low: int = 10_000_000, high: int = 9_999_999_999
) -> np.ndarray:
    """`n` sorted unique random int64 ids in [low, high)."""
    ids = np.unique(rng.integers(low, high, size=n + n // 10 + 100, dtype=np.int64))
    while len(ids) < n:  # practically never: collisions are rare in a 10-billion range
        ids = np.unique(np.concatenate([ids, rng.integers(low, high, size=n, dtype=np.int64)]))
    keep = np.sort(rng.choice(len(ids), size=n, replace=False))
    return ids[keep]


def simulate_population(n_persons: int, rng: np.random.Generator, study: StudyWindow) -> Population:
    """Draw persons resident at study start or born during the window, with Gompertz mortality."""
    person_id = _unique_random_ids(rng, n_persons)
    is_male = rng.random(n_persons) < 0.5
    candidate_years = np.arange(FIRST_BIRTH_YEAR, study.last_year)
    weights = np.interp(candidate_years, BIRTH_YEAR_ANCHORS, BIRTH_YEAR_WEIGHTS)
    birth_year = rng.choice(candidate_years, size=n_persons, p=weights / weights.sum())
    year_start = _year_start_day(birth_year)
    year_length = _year_start_day(birth_year + 1) - year_start
    birth_day = year_start + np.floor(rng.random(n_persons) * year_length).astype(np.int64)
    birth_month = (
        birth_day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    ).astype(np.int8)
    birth_month_recorded = np.where(rng.random(n_persons) < BIRTH_MONTH_MISSING_SHARE, 0, birth_month).astype(
        np.int8
    )
    latent_factor = rng.standard_normal(n_persons)
    entry_day = np.maximum(birth_day, study.start_day)

    # Gompertz death age conditional on being alive at entry: invert H(age) = a/b (exp(b age) - 1).
    entry_age = (entry_day - birth_day) / DAYS_PER_YEAR
    unit_exponential = rng.exponential(size=n_persons)
    a, b = GOMPERTZ_MORTALITY_AT_AGE_0, GOMPERTZ_MORTALITY_SLOPE
    death_age = np.log(np.exp(b * entry_age) + b * unit_exponential / a) / b
    true_death_day = np.maximum(
        birth_day + np.floor(death_age * DAYS_PER_YEAR).astype(np.int64), entry_day + 1
    )

    emigrates = rng.random(n_persons) < EMIGRATION_SHARE
    emigration_candidate = (
        entry_day
        + 1
        + np.floor(rng.random(n_persons) * np.maximum(study.end_day - entry_day, 1)).astype(np.int64)
    )
    emigrates &= (emigration_candidate <= study.end_day) & (emigration_candidate < true_death_day)
    emigration_day = np.where(emigrates, emigration_candidate, NEVER)

    education = rng.choice(len(EDUCATION_SHARES), size=n_persons, p=EDUCATION_SHARES).astype(np.int8)
    education = np.where(rng.random(n_persons) < EDUCATION_MISSING_SHARE, -1, education).astype(np.int8)
    return Population(
        person_id=person_id,
        is_male=is_male,
        birth_day=birth_day,
        birth_year=birth_year.astype(np.int32),
        birth_month_recorded=birth_month_recorded,
        latent_factor=latent_factor,
        entry_day=entry_day,
        true_death_day=true_death_day,
        emigration_day=emigration_day,
        education=education,
    )


def _population_table(population: Population, study: StudyWindow) -> pa.Table:
    """The population register extract (canonical columns) of the simulated persons."""
    death_observed = (population.true_death_day <= study.end_day) & (population.emigration_day == NEVER)
    emigrated = population.emigration_day != NEVER
    return pa.table(
        {
            "person_id": pa.array(population.person_id, type=pa.int64()),
            "sex": pa.array(np.where(population.is_male, "M", "F"), type=pa.string()),
            "birth_year": pa.array(population.birth_year, type=pa.int32()),
            "birth_month": pa.array(
                population.birth_month_recorded, type=pa.int8(), mask=population.birth_month_recorded == 0
            ),
            "death_date": _date_array(np.where(death_observed, population.true_death_day, 0), death_observed),
            "emigration_date": _date_array(np.where(emigrated, population.emigration_day, 0), emigrated),
            "education": pa.array(population.education, type=pa.int8(), mask=population.education < 0),
        }
    )


# --------------------------------------------------------------------------------------------------
# Substances and their prescribing parameters
# --------------------------------------------------------------------------------------------------


@dataclass
class SubstanceTable:
    """Per simulated substance (index j) its role and calibrated prescribing parameters."""

    codes: list[str]
    names: list[str]
    roles: list[str]
    planted_hr: np.ndarray
    target_ever_use: np.ndarray
    profile_index: np.ndarray  # index into AGE_PROFILES order
    sex_factor: np.ndarray  # shape (J, 2): [female, male] multipliers of the episode rate
    episode_rate: np.ndarray  # episodes per person-year at the age-profile peak for sex factor 1
    refills_mean: np.ndarray
    refill_interval_days: np.ndarray
    ddd_per_dispensing: np.ndarray
    reimbursed_share: np.ndarray
    code_start: np.ndarray  # first index into `reimbursement_codes` of the substance's candidate codes
    code_count: np.ndarray
    reimbursement_codes: list[str]

    def __len__(self) -> int:
        return len(self.codes)

    def indices(self, role: str) -> np.ndarray:
        return np.array([j for j, r in enumerate(self.roles) if r == role], dtype=np.int64)

    def rate_table(self) -> np.ndarray:
        """Episode start rates per person-year, shape (MAX_AGE + 1, 2 sexes, J) (before the U factor)."""
        profiles = _age_profile_matrix()  # (P, ages)
        by_age = profiles[self.profile_index].T  # (ages, J)
        return by_age[:, None, :] * self.sex_factor.T[None, :, :] * self.episode_rate[None, None, :]


def _age_profile_matrix() -> np.ndarray:
    """Relative use by single year of age (0..MAX_AGE) for each named age profile, peak 1."""
    ages = np.arange(MAX_AGE + 1)
    rows = []
    for anchors, weights in AGE_PROFILES.values():
        curve = np.interp(ages, anchors, weights)
        rows.append(curve / curve.max())
    return np.array(rows)


def _use_profile(code: str) -> UseProfile:
    """The use profile of the longest ATC prefix of `code` listed in USE_PROFILES."""
    for length in (7, 5, 4, 3):
        profile = USE_PROFILES.get(code[:length])
        if profile is not None:
            return profile
    raise KeyError(f"no prescribing profile for ATC group {code[:3]} ({code})")


def _person_years(
    population: Population, study: StudyWindow
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each person's time at risk into calendar years: (person index, start day, days, age in years)."""
    entry_day = population.entry_day
    exit_day = population.exit_day(study)
    first_year = _year_of_day(entry_day)
    last_year = _year_of_day(exit_day - 1)
    n_years = np.maximum(last_year - first_year + 1, 0)
    person = np.repeat(np.arange(len(population)), n_years)
    offsets = np.cumsum(n_years) - n_years
    year = first_year[person] + (np.arange(len(person)) - offsets[person])
    year_start = _year_start_day(year)
    start = np.maximum(year_start, entry_day[person])
    end = np.minimum(_year_start_day(year + 1), exit_day[person])
    age = np.clip(year - population.birth_year[person], 0, MAX_AGE)
    return person, start, end - start, age


def build_substance_table(catalog: pl.DataFrame, study: StudyWindow) -> SubstanceTable:
    """Assign roles and prescribing parameters to every simulated level-5 catalog substance.

    Episode rates are calibrated on a fixed reference population so that each substance's ever-use share
    over the window hits its target whatever the seed and size of the simulated population.
    """
    level5 = catalog.filter((pl.col("atc_level") == 5) & ~pl.col("atc_code").is_in(list(NOT_SIMULATED)))
    level5 = level5.sort("atc_code")
    codes = level5["atc_code"].to_list()
    names = level5["atc_name"].to_list()
    profile_names = list(AGE_PROFILES)
    profiles = [_use_profile(code) for code in codes]

    weights = np.array([POPULARITY.get(code, 1.0) for code in codes])
    group = np.array([code[:3] for code in codes])
    target = np.zeros(len(codes))
    for atc2 in np.unique(group):
        members = (group == atc2) & np.array([code not in PLANTED for code in codes])
        if members.any():
            share = EVER_USE_PERCENT_BY_ATC2.get(str(atc2), 0.5) / 100.0
            target[members] = share * weights[members] / weights[members].sum()
    roles = []
    planted_hr = np.ones(len(codes))
    for j, code in enumerate(codes):
        planted = PLANTED.get(code)
        roles.append(planted.role if planted else NULL)
        if planted:
            planted_hr[j] = planted.planted_hr
            target[j] = planted.ever_use

    female_share = np.array([p.female_share for p in profiles])
    sex_factor = np.column_stack([2 * female_share, 2 * (1 - female_share)])
    profile_index = np.array([profile_names.index(p.age_profile) for p in profiles])

    code_list: list[str] = []
    code_start = np.zeros(len(codes), dtype=np.int64)
    code_count = np.zeros(len(codes), dtype=np.int64)
    for j, profile in enumerate(profiles):
        code_start[j] = len(code_list)
        code_count[j] = len(profile.reimbursement_codes)
        code_list.extend(profile.reimbursement_codes)

    table = SubstanceTable(
        codes=codes,
        names=names,
        roles=roles,
        planted_hr=planted_hr,
        target_ever_use=target,
        profile_index=profile_index,
        sex_factor=sex_factor,
        episode_rate=np.zeros(len(codes)),
        refills_mean=np.array([p.refills_mean for p in profiles]),
        refill_interval_days=np.clip(
            np.array([p.refill_interval_days for p in profiles]), *REFILL_INTERVAL_BOUNDS_DAYS
        ),
        ddd_per_dispensing=np.array([p.ddd_per_dispensing for p in profiles], dtype=np.float64),
        reimbursed_share=np.array([p.reimbursed_share if p.reimbursement_codes else 0.0 for p in profiles]),
        code_start=code_start,
        code_count=code_count,
        reimbursement_codes=code_list,
    )
    table.episode_rate = _calibrate_episode_rates(table, study)
    return table


def _calibrate_episode_rates(table: SubstanceTable, study: StudyWindow) -> np.ndarray:
    """Per substance, solve mean_i(1 - exp(-rate * exposure_i)) = target ever-use on reference persons."""
    reference = simulate_population(CALIBRATION_PERSONS, np.random.default_rng(CALIBRATION_SEED), study)
    person, _, days, age = _person_years(reference, study)
    profiles = _age_profile_matrix()
    # profile-weighted person-years per reference person and profile: (P, persons)
    weighted_years = np.zeros((len(profiles), len(reference)))
    for k in range(len(profiles)):
        weighted_years[k] = np.bincount(
            person, weights=profiles[k, age] * days / DAYS_PER_YEAR, minlength=len(reference)
        )
    sex_column = reference.is_male.astype(np.int64)
    confounded = np.array([role == CONFOUNDED for role in table.roles])
    latent_multiplier = np.exp(
        CONFOUNDED_USE_LOG_RATE_PER_SD * reference.latent_factor - CONFOUNDED_USE_LOG_RATE_PER_SD**2 / 2
    )
    exposure = weighted_years[table.profile_index] * table.sex_factor[:, sex_column]  # (J, persons)
    exposure[confounded] *= latent_multiplier[None, :]

    target = np.clip(table.target_ever_use, 0.0, 0.95)
    log_low = np.full(len(target), np.log(1e-9))
    log_high = np.full(len(target), np.log(50.0))
    for _ in range(45):  # bisection on log(rate), all substances at once
        log_mid = (log_low + log_high) / 2
        ever_use = 1.0 - np.exp(-np.exp(log_mid)[:, None] * exposure).mean(axis=1)
        too_high = ever_use > target
        log_high = np.where(too_high, log_mid, log_high)
        log_low = np.where(too_high, log_low, log_mid)
    rate = np.exp((log_low + log_high) / 2)
    return np.where(target > 0, rate, 0.0)


# --------------------------------------------------------------------------------------------------
# Dispensings
# --------------------------------------------------------------------------------------------------


@dataclass
class Dispensings:
    """Dispensing rows of one chunk; `person` indexes the chunk's persons, `substance` the ATC dictionary."""

    person: np.ndarray  # int64 index into the chunk (or -1 with explicit person_id for unknown persons)
    day: np.ndarray  # int64 day number
    substance: np.ndarray  # int64 index into the ATC code dictionary (catalog codes, then malformed codes)
    ddd: np.ndarray  # float64
    reimbursement: np.ndarray  # int64 index into reimbursement codes, -1 = none
    person_id: np.ndarray | None = None  # int64 ids, filled when rows are finalised

    def __len__(self) -> int:
        return len(self.day)

    @staticmethod
    def concat(parts: list[Dispensings]) -> Dispensings:
        return Dispensings(
            person=np.concatenate([p.person for p in parts]),
            day=np.concatenate([p.day for p in parts]),
            substance=np.concatenate([p.substance for p in parts]),
            ddd=np.concatenate([p.ddd for p in parts]),
            reimbursement=np.concatenate([p.reimbursement for p in parts]),
        )


def _draw_ddd(rng: np.random.Generator, substances: SubstanceTable, substance: np.ndarray) -> np.ndarray:
    pack = np.searchsorted(
        np.cumsum(DDD_PACK_MULTIPLIER_SHARES)[:-1], rng.random(len(substance)), side="right"
    )
    multiplier = np.array(DDD_PACK_MULTIPLIERS)[pack]
    return substances.ddd_per_dispensing[substance] * multiplier


def _draw_reimbursement(
    rng: np.random.Generator, substances: SubstanceTable, substance: np.ndarray
) -> np.ndarray:
    reimbursed = rng.random(len(substance)) < substances.reimbursed_share[substance]
    pick = np.floor(rng.random(len(substance)) * np.maximum(substances.code_count[substance], 1)).astype(
        np.int64
    )
    return np.where(reimbursed, substances.code_start[substance] + pick, -1)


def simulate_dispensings(
    population: Population,
    substances: SubstanceTable,
    rate_table: np.ndarray,
    rng: np.random.Generator,
    study: StudyWindow,
) -> Dispensings:
    """Treatment episodes (Poisson starts per person-year) expanded to their dispensings."""
    person, start, days, age = _person_years(population, study)
    sex = population.is_male.astype(np.int64)[person]
    years_at_risk = days / DAYS_PER_YEAR
    confounded = substances.indices(CONFOUNDED)
    ordinary = np.setdiff1d(np.arange(len(substances)), confounded)

    # Ordinary substances: draw the total number of episodes per person-year, then which substance.
    ordinary_rates = rate_table[:, :, ordinary]  # (ages, 2, J_ordinary)
    total_rate = ordinary_rates.sum(axis=2)
    n_episodes = rng.poisson(total_rate[age, sex] * years_at_risk)
    episode_py = np.repeat(np.arange(len(person)), n_episodes)
    cumulative = np.cumsum(ordinary_rates, axis=2) / np.maximum(total_rate, 1e-300)[:, :, None]
    cumulative[:, :, -1] = 1.0
    n_cells = cumulative.shape[0] * cumulative.shape[1]
    cell = age[episode_py] * 2 + sex[episode_py]
    shifted = (cumulative.reshape(n_cells, -1) + np.arange(n_cells)[:, None]).ravel()
    position = np.searchsorted(shifted, cell + rng.random(len(episode_py)), side="right")
    episode_substance = ordinary[np.minimum(position - cell * len(ordinary), len(ordinary) - 1)]

    # Confounded substances: their own Poisson draws, rate multiplied by exp(beta * U - beta^2 / 2).
    latent_multiplier = np.exp(
        CONFOUNDED_USE_LOG_RATE_PER_SD * population.latent_factor - CONFOUNDED_USE_LOG_RATE_PER_SD**2 / 2
    )[person]
    py_parts, substance_parts = [episode_py], [episode_substance]
    for j in confounded:
        n_conf = rng.poisson(rate_table[age, sex, j] * latent_multiplier * years_at_risk)
        py_parts.append(np.repeat(np.arange(len(person)), n_conf))
        substance_parts.append(np.full(int(n_conf.sum()), j, dtype=np.int64))
    episode_py = np.concatenate(py_parts)
    episode_substance = np.concatenate(substance_parts)
    episode_start = start[episode_py] + np.floor(rng.random(len(episode_py)) * days[episode_py]).astype(
        np.int64
    )
    episode_person = person[episode_py]
    episode_person, episode_start, episode_substance = _add_repeat_episodes(
        population, rng, study, episode_person, episode_start, episode_substance
    )
    return _expand_episodes(
        population, substances, rng, study, episode_person, episode_start, episode_substance
    )


def _add_repeat_episodes(
    population: Population,
    rng: np.random.Generator,
    study: StudyWindow,
    episode_person: np.ndarray,
    episode_start: np.ndarray,
    episode_substance: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Append Geometric(REPEAT_EPISODES_MEAN) later episodes of the same substance to each first episode.

    Users get several courses, as in real data, while the ever-use share stays set by the first episodes.
    """
    n_repeats = rng.geometric(1.0 / (1.0 + REPEAT_EPISODES_MEAN), len(episode_start)) - 1
    source = np.repeat(np.arange(len(episode_start)), n_repeats)
    first_row = (np.cumsum(n_repeats) - n_repeats)[source]
    gap_days = np.ceil(rng.exponential(REPEAT_GAP_MEAN_YEARS * DAYS_PER_YEAR, len(source))).astype(np.int64)
    cumulative_gap = np.cumsum(gap_days)
    days_after_first = cumulative_gap - (cumulative_gap[first_row] - gap_days[first_row])
    repeat_start = episode_start[source] + days_after_first
    repeat_person = episode_person[source]
    keep = repeat_start < population.exit_day(study)[repeat_person]
    return (
        np.concatenate([episode_person, repeat_person[keep]]),
        np.concatenate([episode_start, repeat_start[keep]]),
        np.concatenate([episode_substance, episode_substance[source][keep]]),
    )


def _expand_episodes(
    population: Population,
    substances: SubstanceTable,
    rng: np.random.Generator,
    study: StudyWindow,
    episode_person: np.ndarray,
    episode_start: np.ndarray,
    episode_substance: np.ndarray,
) -> Dispensings:
    """Turn episodes into dispensings: 1 + Geometric refills at jittered intervals, cut at exit."""
    n_refills = rng.geometric(1.0 / (1.0 + substances.refills_mean[episode_substance])) - 1
    n_dispensings = 1 + n_refills
    episode_reimbursement = _draw_reimbursement(rng, substances, episode_substance)
    row_episode = np.repeat(np.arange(len(episode_person)), n_dispensings)
    first_row = np.cumsum(n_dispensings) - n_dispensings
    ordinal = np.arange(len(row_episode)) - first_row[row_episode]
    substance = episode_substance[row_episode]
    gap = np.rint(substances.refill_interval_days[substance] * rng.uniform(0.75, 1.25, len(row_episode)))
    gap = np.where(ordinal == 0, 0, np.maximum(gap, 1)).astype(np.int64)
    cumulative_gap = np.cumsum(gap)
    day = episode_start[row_episode] + cumulative_gap - cumulative_gap[first_row][row_episode]
    person = episode_person[row_episode]
    keep = day < population.exit_day(study)[person]
    substance = substance[keep]
    return Dispensings(
        person=person[keep],
        day=day[keep],
        substance=substance,
        ddd=_draw_ddd(rng, substances, substance),
        reimbursement=episode_reimbursement[row_episode][keep],
    )


def second_dispensing_days(
    dispensings: Dispensings, substances: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(person, substance, day) of each person's second dispensing of each of `substances`."""
    relevant = np.isin(dispensings.substance, substances)
    person = dispensings.person[relevant]
    substance = dispensings.substance[relevant]
    day = dispensings.day[relevant]
    order = np.lexsort((day, substance, person))
    person, substance, day = person[order], substance[order], day[order]
    new_group = np.ones(len(person), dtype=bool)
    new_group[1:] = (person[1:] != person[:-1]) | (substance[1:] != substance[:-1])
    group_start = np.flatnonzero(new_group)
    group_size = np.diff(np.append(group_start, len(person)))
    second = group_start[group_size >= 2] + 1
    return person[second], substance[second], day[second]


# --------------------------------------------------------------------------------------------------
# MS onset
# --------------------------------------------------------------------------------------------------


def baseline_hazard_per_day(baseline_incidence_per_100k: float) -> np.ndarray:
    """h0 per day in each age band (average of the sexes, unexposed, U = 0)."""
    return baseline_incidence_per_100k / 1e5 / DAYS_PER_YEAR * np.array(AGE_BAND_RELATIVE_HAZARD)


def simulate_onset_days(
    birth_day: np.ndarray,
    log_person_factor: np.ndarray,
    hazard_end_day: np.ndarray,
    unit_exponential: np.ndarray,
    exposure_person: np.ndarray,
    exposure_day: np.ndarray,
    exposure_log_hr: np.ndarray,
    baseline_per_day: np.ndarray,
) -> np.ndarray:
    """Exact onset times (fractional day numbers, NaN if none before `hazard_end_day`).

    The hazard is piecewise constant between change points (age-band boundaries and exposure starts);
    onset is where the person's cumulative hazard first reaches their Exp(1) draw.
    """
    n = len(birth_day)
    n_bands = len(AGE_BAND_LOWER_YEARS)
    band_person = np.repeat(np.arange(n), n_bands)
    band_index = np.tile(np.arange(n_bands), n)
    band_time = birth_day[band_person] + np.tile(np.array(AGE_BAND_LOWER_YEARS) * DAYS_PER_YEAR, n)
    person = np.concatenate([band_person, exposure_person])
    event_time = np.concatenate([band_time.astype(np.float64), exposure_day.astype(np.float64)])
    band = np.concatenate([band_index, np.full(len(exposure_person), -1)])
    delta_log_hr = np.concatenate([np.zeros(len(band_person)), exposure_log_hr])
    inside = event_time < hazard_end_day[person]
    person, event_time, band, delta_log_hr = (
        person[inside],
        event_time[inside],
        band[inside],
        delta_log_hr[inside],
    )
    order = np.lexsort((band < 0, event_time, person))
    person, event_time, band, delta_log_hr = (
        person[order],
        event_time[order],
        band[order],
        delta_log_hr[order],
    )

    first_event = np.searchsorted(person, np.arange(n))  # each person's birth (band 0) event
    last_band_row = np.maximum.accumulate(np.where(band >= 0, np.arange(len(band)), 0))
    band = band[last_band_row]
    cumulative_log_hr = np.cumsum(delta_log_hr)
    log_hr = cumulative_log_hr - cumulative_log_hr[first_event][person]

    same_person_next = np.append(person[1:] == person[:-1], False)
    next_time = np.append(event_time[1:], np.inf)
    segment_end = np.minimum(np.where(same_person_next, next_time, np.inf), hazard_end_day[person])
    rate = baseline_per_day[band] * np.exp(log_person_factor[person] + log_hr)
    segment_hazard = rate * (segment_end - event_time)
    cumulative = np.cumsum(segment_hazard)
    before_segment = cumulative - segment_hazard
    hazard_before = before_segment - before_segment[first_event][person]
    threshold = unit_exponential[person]
    hit = (hazard_before < threshold) & (threshold <= hazard_before + segment_hazard)
    onset = np.full(n, np.nan)
    onset[person[hit]] = event_time[hit] + (threshold[hit] - hazard_before[hit]) / rate[hit]
    return onset


def _prodromal_dispensings(
    population: Population,
    substances: SubstanceTable,
    rng: np.random.Generator,
    study: StudyWindow,
    onset_day: np.ndarray,
) -> Dispensings:
    """Extra dispensings of prodromal substances before onset, denser towards onset (cases only)."""
    prodromal = substances.indices(PRODROMAL)
    cases = np.flatnonzero(np.isfinite(onset_day) & (onset_day >= study.start_day))
    user = rng.random((len(cases), len(prodromal))) < PRODROMAL_USER_PROBABILITY
    case_row, substance_column = np.nonzero(user)
    n_extra = 2 + rng.poisson(PRODROMAL_EXTRA_DISPENSINGS_MEAN, len(case_row))
    person = np.repeat(cases[case_row], n_extra)
    substance = np.repeat(prodromal[substance_column], n_extra)
    # density proportional to (window - years before onset): years before = W (1 - sqrt(1 - u))
    years_before = PRODROMAL_WINDOW_YEARS * (1.0 - np.sqrt(1.0 - rng.random(len(person))))
    days_before = np.maximum(np.rint(years_before * DAYS_PER_YEAR), 1).astype(np.int64)
    day = np.floor(onset_day[person]).astype(np.int64) - days_before
    keep = (day >= population.entry_day[person]) & (day < population.exit_day(study)[person])
    person, substance, day = person[keep], substance[keep], day[keep]
    return Dispensings(
        person=person,
        day=day,
        substance=substance,
        ddd=_draw_ddd(rng, substances, substance),
        reimbursement=_draw_reimbursement(rng, substances, substance),
    )


# --------------------------------------------------------------------------------------------------
# MS registry
# --------------------------------------------------------------------------------------------------


def _ms_registry_rows(
    population: Population, rng: np.random.Generator, study: StudyWindow, onset_day: np.ndarray
) -> dict[str, np.ndarray]:
    """Registry rows of persons diagnosed alive and resident on or before study end."""
    has_onset = np.flatnonzero(np.isfinite(onset_day))
    delay_days = np.exp(
        np.log(DIAGNOSIS_DELAY_MEDIAN_YEARS * DAYS_PER_YEAR)
        + DIAGNOSIS_DELAY_LOG_SD * rng.standard_normal(len(has_onset))
    )
    onset = np.floor(onset_day[has_onset]).astype(np.int64)
    diagnosis = np.floor(onset_day[has_onset] + delay_days).astype(np.int64)
    alive_resident = diagnosis < np.minimum(population.true_death_day, population.emigration_day)[has_onset]
    course = rng.choice(len(MS_COURSE_SHARES), size=len(has_onset), p=list(MS_COURSE_SHARES.values()))
    edss = np.choose(
        course,
        [
            rng.gamma(2.0, 1.0, len(has_onset)),
            4.0 + rng.gamma(2.0, 0.75, len(has_onset)),
            3.0 + rng.gamma(2.0, 0.75, len(has_onset)),
        ],
    )
    edss = np.clip(np.round(edss * 2) / 2, 0.0, 10.0)
    onset_known = rng.random(len(has_onset)) >= ONSET_MISSING_SHARE
    edss_known = rng.random(len(has_onset)) >= EDSS_MISSING_SHARE
    keep = alive_resident & (diagnosis <= study.end_day)
    return {
        "person": has_onset[keep],
        "onset_day": onset[keep],
        "onset_known": onset_known[keep],
        "diagnosis_day": diagnosis[keep],
        "course": course[keep],
        "edss": edss[keep],
        "edss_known": edss_known[keep],
    }


# --------------------------------------------------------------------------------------------------
# Corrupt rows
# --------------------------------------------------------------------------------------------------


def _corrupt_counts(n_corrupt_rows: int) -> dict[str, int]:
    """Spread `n_corrupt_rows` as evenly as possible over CORRUPT_KINDS (earlier kinds get the remainder)."""
    base, remainder = divmod(max(n_corrupt_rows, 0), len(CORRUPT_KINDS))
    return {kind: base + (i < remainder) for i, kind in enumerate(CORRUPT_KINDS)}


def _unknown_person_ids(rng: np.random.Generator, known_ids: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Ids absent from `known_ids`, each just above the id at index `near` (so sorted order is kept)."""
    result = []
    for index in near:
        upper = known_ids[index + 1] if index + 1 < len(known_ids) else known_ids[index] + 1000
        if upper - known_ids[index] < 2:
            upper = known_ids[index] + 2  # adjacent ids: fall back to the only free value, checked below
        candidate = int(known_ids[index] + 1 + rng.integers(0, max(int(upper - known_ids[index] - 1), 1)))
        while np.isin(candidate, known_ids):
            candidate += 1
        result.append(candidate)
    return np.array(result, dtype=np.int64)


@dataclass
class CorruptPlan:
    """Invalid dispensing rows to inject, by global person index (written with that person's chunk)."""

    host: np.ndarray  # global person index each row sits next to
    kind: np.ndarray  # index into CORRUPT_KINDS
    day: np.ndarray
    substance: np.ndarray  # index into the ATC dictionary
    ddd: np.ndarray
    person_id: np.ndarray  # id written in the row (unknown ids for unknown-person rows)

    def take(self, rows: np.ndarray) -> CorruptPlan:
        return CorruptPlan(**{name: value[rows] for name, value in self.__dict__.items()})


def _plan_corrupt_dispensings(
    rng: np.random.Generator,
    population: Population,
    substances: SubstanceTable,
    study: StudyWindow,
    counts: dict[str, int],
) -> CorruptPlan:
    """Choose hosts, dates and values of the invalid dispensing rows (null-role substances only)."""
    null_substances = substances.indices(NULL)
    null_substances = null_substances[substances.episode_rate[null_substances] > 0]
    exit_day = population.exit_day(study)
    whole_window = np.flatnonzero((population.entry_day == study.start_day) & (exit_day == study.end_day + 1))
    hosts, kinds, days, atc, ddd, ids = [], [], [], [], [], []
    for kind_index, kind in enumerate(CORRUPT_KINDS[:4]):
        n = counts[kind]
        if n == 0:
            continue
        pool = (
            whole_window
            if kind == "dispense_date_outside_window" and len(whole_window)
            else np.arange(len(population))
        )
        host = np.sort(rng.choice(pool, size=n, replace=len(pool) < n))
        span = exit_day[host] - population.entry_day[host]
        day = population.entry_day[host] + np.floor(rng.random(n) * span).astype(np.int64)
        substance = rng.choice(null_substances, size=n)
        dose = substances.ddd_per_dispensing[substance].copy()
        person_id = population.person_id[host].copy()
        if kind == "malformed_atc_code":
            substance = len(substances) + rng.integers(0, len(MALFORMED_ATC_CODES), size=n)
        elif kind == "negative_ddd":
            dose = -dose
        elif kind == "unknown_person_dispensing":
            person_id = _unknown_person_ids(rng, population.person_id, host)
        elif kind == "dispense_date_outside_window":
            before = rng.random(n) < 0.5
            offset = 1 + rng.integers(0, 180, size=n)
            day = np.where(before, study.start_day - offset, study.end_day + offset)
        hosts.append(host)
        kinds.append(np.full(n, kind_index))
        days.append(day)
        atc.append(substance)
        ddd.append(dose)
        ids.append(person_id)
    if not hosts:
        empty = np.zeros(0, dtype=np.int64)
        return CorruptPlan(empty, empty, empty, empty, np.zeros(0), empty)
    return CorruptPlan(
        host=np.concatenate(hosts),
        kind=np.concatenate(kinds),
        day=np.concatenate(days),
        substance=np.concatenate(atc),
        ddd=np.concatenate(ddd),
        person_id=np.concatenate(ids),
    )


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _write_dispensings(
    writers: dict[int, pq.ParquetWriter],
    study: StudyWindow,
    dispensings: Dispensings,
    person_rank: np.ndarray,
    atc_dictionary: pa.Array,
    reimbursement_dictionary: pa.Array,
) -> None:
    """Sort a chunk's rows by person_id, date and append them as one row group per yearly file.

    `person_rank` orders the rows' person ids (cheaper to sort than the ids); rows are sorted on one
    packed int64 key (year file, person, day, substance), ties keep their generation order.
    """
    assert dispensings.person_id is not None
    year_index = np.clip(_year_of_day(dispensings.day), study.first_year, study.last_year) - study.first_year
    day_offset = dispensings.day - dispensings.day.min() if len(dispensings) else dispensings.day
    fields = [
        (year_index, len(study.years)),
        (person_rank, int(person_rank.max(initial=0)) + 1),
        (day_offset, int(day_offset.max(initial=0)) + 1),
        (dispensings.substance, len(atc_dictionary)),
    ]
    widths = [max(int(size - 1).bit_length(), 1) for _, size in fields]
    if sum(widths) <= 62:
        key = np.zeros(len(dispensings), dtype=np.int64)
        for (values, _), width in zip(fields, widths, strict=True):
            key = (key << width) | values.astype(np.int64)
        order = np.argsort(key, kind="stable")
    else:  # unusually long windows or huge chunks: sort on the separate keys
        order = np.lexsort((dispensings.substance, dispensings.day, person_rank, year_index))
    rows_per_year = np.bincount(year_index, minlength=len(study.years))
    row_start = np.cumsum(rows_per_year) - rows_per_year
    for offset, (year, writer) in enumerate(writers.items()):
        rows = order[row_start[offset] : row_start[offset] + rows_per_year[offset]]
        reimbursement = dispensings.reimbursement[rows]
        table = pa.table(
            {
                "person_id": pa.array(dispensings.person_id[rows], type=pa.int64()),
                "dispense_date": _date_array(dispensings.day[rows]),
                "atc_code": atc_dictionary.take(pa.array(dispensings.substance[rows])),
                "ddd": pa.array(dispensings.ddd[rows], type=pa.float64()),
                "reimbursement_code": reimbursement_dictionary.take(
                    pa.array(np.maximum(reimbursement, 0), mask=reimbursement < 0)
                ),
            },
            schema=PRESCRIPTIONS_SCHEMA,
        )
        assert year == study.first_year + offset
        writer.write_table(table)


@dataclass
class _SimulationModel:
    """Everything fixed across chunks: substances, rate tables, hazard constants, output dictionaries."""

    study: StudyWindow
    substances: SubstanceTable
    rate_table: np.ndarray
    causal_substances: np.ndarray
    log_hr: np.ndarray
    baseline_per_day: np.ndarray
    log_sex_factor: np.ndarray  # [female, male]
    hazard_horizon_day: int
    atc_dictionary: pa.Array
    reimbursement_dictionary: pa.Array

    @staticmethod
    def build(study: StudyWindow, baseline_incidence_per_100k: float) -> _SimulationModel:
        substances = build_substance_table(load_builtin_catalog(), study)
        horizon_days = int(round(ONSET_HORIZON_AFTER_STUDY_END_YEARS * DAYS_PER_YEAR))
        return _SimulationModel(
            study=study,
            substances=substances,
            rate_table=substances.rate_table(),
            causal_substances=np.flatnonzero(substances.planted_hr != 1.0),
            log_hr=np.log(substances.planted_hr),
            baseline_per_day=baseline_hazard_per_day(baseline_incidence_per_100k),
            log_sex_factor=np.log(np.array([SEX_HAZARD_FACTOR["F"], SEX_HAZARD_FACTOR["M"]])),
            hazard_horizon_day=study.end_day + 1 + horizon_days,
            atc_dictionary=pa.array(substances.codes + list(MALFORMED_ATC_CODES), type=pa.string()),
            reimbursement_dictionary=pa.array(substances.reimbursement_codes or [""], type=pa.string()),
        )


@dataclass
class _ChunkResult:
    """What the final summary needs from one chunk (its dispensings are already written)."""

    onset_day: np.ndarray
    registry: dict[str, np.ndarray]  # registry rows, `person` as global population index
    n_users: np.ndarray  # persons with >= 1 dispensing, per substance
    n_exposed: np.ndarray  # persons with >= 2 dispensings, per substance
    n_dispensings_valid: int
    n_prodromal_extra: int


def _simulate_chunk(
    model: _SimulationModel,
    chunk: Population,
    chunk_start: int,
    rng: np.random.Generator,
    corrupt: CorruptPlan,
    writers: dict[int, pq.ParquetWriter],
) -> _ChunkResult:
    """Prescriptions, then MS onset from the exposure history, then prodromal extras; write the rows."""
    study, substances = model.study, model.substances
    dispensings = simulate_dispensings(chunk, substances, model.rate_table, rng, study)

    exposure_person, exposure_substance, exposure_day = second_dispensing_days(
        dispensings, model.causal_substances
    )
    onset_day = simulate_onset_days(
        birth_day=chunk.birth_day.astype(np.float64),
        log_person_factor=model.log_sex_factor[chunk.is_male.astype(np.int64)]
        + LATENT_LOG_HR_PER_SD * chunk.latent_factor,
        hazard_end_day=np.minimum(
            np.minimum(chunk.true_death_day, chunk.emigration_day), model.hazard_horizon_day
        ).astype(np.float64),
        unit_exponential=rng.exponential(size=len(chunk)),
        exposure_person=exposure_person,
        exposure_day=exposure_day,
        exposure_log_hr=model.log_hr[exposure_substance],
        baseline_per_day=model.baseline_per_day,
    )
    prodromal = _prodromal_dispensings(chunk, substances, rng, study, onset_day)
    registry = _ms_registry_rows(chunk, rng, study, onset_day)
    registry["person"] = registry["person"] + chunk_start

    dispensings = Dispensings.concat([dispensings, prodromal])
    pairs, per_pair = np.unique(
        dispensings.person * len(substances) + dispensings.substance, return_counts=True
    )
    pair_substance = pairs % len(substances)
    result = _ChunkResult(
        onset_day=onset_day,
        registry=registry,
        n_users=np.bincount(pair_substance, minlength=len(substances)),
        n_exposed=np.bincount(pair_substance[per_pair >= 2], minlength=len(substances)),
        n_dispensings_valid=len(dispensings),
        n_prodromal_extra=len(prodromal),
    )

    person_id = chunk.person_id[dispensings.person]
    if len(corrupt.host):
        bad_rows = Dispensings(
            person=corrupt.host - chunk_start,
            day=corrupt.day,
            substance=corrupt.substance,
            ddd=corrupt.ddd,
            reimbursement=np.full(len(corrupt.host), -1, dtype=np.int64),
        )
        dispensings = Dispensings.concat([dispensings, bad_rows])
        person_id = np.concatenate([person_id, corrupt.person_id])
    dispensings.person_id = person_id
    # unknown-person rows carry an id just above their host's, so they sort right after the host
    person_rank = 2 * dispensings.person + (person_id != chunk.person_id[dispensings.person])
    _write_dispensings(
        writers, study, dispensings, person_rank, model.atc_dictionary, model.reimbursement_dictionary
    )
    return result


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def simulate_registries(
    out_dir: str | Path,
    *,
    n_persons: int = 50_000,
    seed: int = 2024,
    study_start: str = "2004-01-01",
    study_end: str = "2023-12-31",
    baseline_incidence_per_100k: float = DEFAULT_BASELINE_INCIDENCE_PER_100K,
    n_corrupt_rows: int = 0,
    chunk_size: int = 200_000,
) -> dict[str, Any]:
    """Write simulated population, prescription and MS registry extracts plus the planted truth.

    Writes `population.parquet`, `prescriptions/dispensings_{year}.parquet`, `ms_registry.parquet`,
    `ground_truth.json` and `ground_truth_persons.parquet` (hidden per-person truth) under `out_dir`, and
    returns the summary counts also stored in ground_truth.json.
    """
    started = time.perf_counter()
    if n_persons < 1:
        raise ValueError(f"n_persons must be positive, got {n_persons}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    study = StudyWindow(_day_number(study_start), _day_number(study_end))
    if study.end_day <= study.start_day:
        raise ValueError(f"study_start {study_start} must be before study_end {study_end}")
    out = Path(out_dir)
    prescriptions_dir = out / "prescriptions"
    prescriptions_dir.mkdir(parents=True, exist_ok=True)
    for stale in prescriptions_dir.glob("dispensings_*.parquet"):
        stale.unlink()

    model = _SimulationModel.build(study, baseline_incidence_per_100k)
    substances = model.substances

    population = simulate_population(n_persons, np.random.default_rng([seed, 0]), study)
    pq.write_table(_population_table(population, study), out / "population.parquet")

    corrupt_counts = _corrupt_counts(n_corrupt_rows)
    corrupt_rng = np.random.default_rng([seed, 1])
    corrupt_plan = _plan_corrupt_dispensings(corrupt_rng, population, substances, study, corrupt_counts)

    writers = {
        year: pq.ParquetWriter(prescriptions_dir / prescription_file_name(year), PRESCRIPTIONS_SCHEMA)
        for year in study.years
    }
    results: list[_ChunkResult] = []
    try:
        for chunk_index, chunk_start in enumerate(range(0, n_persons, chunk_size)):
            chunk_stop = min(chunk_start + chunk_size, n_persons)
            in_chunk = (corrupt_plan.host >= chunk_start) & (corrupt_plan.host < chunk_stop)
            results.append(
                _simulate_chunk(
                    model,
                    population.take(slice(chunk_start, chunk_stop)),
                    chunk_start,
                    np.random.default_rng([seed, 2, chunk_index]),
                    corrupt_plan.take(in_chunk),
                    writers,
                )
            )
    finally:
        for writer in writers.values():
            writer.close()

    onset_day = np.concatenate([result.onset_day for result in results])
    registry = {
        key: np.concatenate([result.registry[key] for result in results]) for key in results[0].registry
    }
    n_users = np.sum([result.n_users for result in results], axis=0)
    n_exposed = np.sum([result.n_exposed for result in results], axis=0)
    n_dispensings_valid = sum(result.n_dispensings_valid for result in results)
    n_prodromal_extra = sum(result.n_prodromal_extra for result in results)
    registry_table, corrupt_ms_ids = _registry_table(population, registry, corrupt_rng, study, corrupt_counts)
    pq.write_table(registry_table, out / "ms_registry.parquet")
    pq.write_table(_truth_persons_table(population, onset_day), out / "ground_truth_persons.parquet")

    incident = np.isfinite(onset_day) & (onset_day >= study.start_day) & (onset_day < study.end_day + 1)
    prevalent = np.isfinite(onset_day) & (onset_day < study.start_day)
    registry_sex = population.is_male[registry["person"]]
    person_years = float(((population.exit_day(study) - population.entry_day) / DAYS_PER_YEAR).sum())
    n_corrupt_total = sum(corrupt_counts.values())
    counts = {
        "persons": int(n_persons),
        "person_years_at_risk": round(person_years, 1),
        "dispensings": int(n_dispensings_valid + len(corrupt_plan.host)),
        "dispensings_valid": int(n_dispensings_valid),
        "prodromal_extra_dispensings": int(n_prodromal_extra),
        "dispensings_per_person_year": round(n_dispensings_valid / max(person_years, 1e-9), 3),
        "ms_registry_rows": int(registry_table.num_rows),
        "ms_registry_rows_valid": int(len(registry["person"])),
        "ms_cases_by_sex": {"F": int((~registry_sex).sum()), "M": int(registry_sex.sum())},
        "incident_onsets_in_window": int(incident.sum()),
        "incident_onsets_in_window_by_sex": {
            "F": int((incident & ~population.is_male).sum()),
            "M": int((incident & population.is_male).sum()),
        },
        "prevalent_onsets_before_window": int(prevalent.sum()),
        "corrupt_rows": int(n_corrupt_total),
    }
    truth = _ground_truth(
        substances,
        n_users,
        n_exposed,
        counts,
        corrupt_counts,
        corrupt_plan,
        corrupt_ms_ids,
        parameters={
            "n_persons": n_persons,
            "seed": seed,
            "study_start": study_start,
            "study_end": study_end,
            "baseline_incidence_per_100k": baseline_incidence_per_100k,
            "n_corrupt_rows": n_corrupt_rows,
            "chunk_size": chunk_size,
        },
        baseline_incidence_per_100k=baseline_incidence_per_100k,
    )
    (out / "ground_truth.json").write_text(
        json.dumps(truth, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    summary = {
        **counts,
        "corrupt_rows_by_kind": corrupt_counts,
        "out_dir": str(out),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def _registry_table(
    population: Population,
    registry: dict[str, np.ndarray],
    rng: np.random.Generator,
    study: StudyWindow,
    corrupt_counts: dict[str, int],
) -> tuple[pa.Table, dict[str, list[int]]]:
    """The MS registry extract (sorted by person_id) with the planned invalid registry rows added."""
    person_id = population.person_id[registry["person"]]
    onset_day, onset_known = registry["onset_day"], registry["onset_known"]
    diagnosis_day, course, edss, edss_known = (
        registry["diagnosis_day"],
        registry["course"],
        registry["edss"],
        registry["edss_known"],
    )
    corrupt_ids: dict[str, list[int]] = {}
    n_unknown = corrupt_counts["ms_registry_unknown_person"]
    n_before_birth = corrupt_counts["diagnosis_before_birth"]
    if n_unknown or n_before_birth:
        unknown_ids = _unknown_person_ids(
            rng, population.person_id, rng.choice(len(population), size=n_unknown)
        )
        unknown_diagnosis = study.start_day + rng.integers(0, study.end_day - study.start_day, size=n_unknown)
        non_cases = np.setdiff1d(np.arange(len(population)), registry["person"])
        hosts = rng.choice(non_cases, size=n_before_birth, replace=False)
        # a day in a calendar year before the birth year, so even birth year alone reveals the error
        years_before = 1 + rng.integers(0, 3, size=n_before_birth)
        before_birth = _year_start_day(population.birth_year[hosts] - years_before) + rng.integers(
            0, 365, size=n_before_birth
        )
        extra_ids = np.concatenate([unknown_ids, population.person_id[hosts]])
        extra_diagnosis = np.concatenate([unknown_diagnosis, before_birth])
        n_extra = n_unknown + n_before_birth
        person_id = np.concatenate([person_id, extra_ids])
        onset_day = np.concatenate([onset_day, extra_diagnosis - 200])
        onset_known = np.concatenate([onset_known, np.ones(n_extra, dtype=bool)])
        diagnosis_day = np.concatenate([diagnosis_day, extra_diagnosis])
        course = np.concatenate([course, np.zeros(n_extra, dtype=course.dtype)])
        edss = np.concatenate([edss, np.full(n_extra, 2.0)])
        edss_known = np.concatenate([edss_known, np.ones(n_extra, dtype=bool)])
        corrupt_ids = {
            "ms_registry_unknown_person": [int(i) for i in unknown_ids],
            "diagnosis_before_birth": [int(i) for i in population.person_id[hosts]],
        }
    order = np.argsort(person_id, kind="stable")
    course_names = np.array(list(MS_COURSE_SHARES))
    table = pa.table(
        {
            "person_id": pa.array(person_id[order], type=pa.int64()),
            "onset_date": _date_array(onset_day[order], onset_known[order]),
            "diagnosis_date": _date_array(diagnosis_day[order]),
            "ms_course": pa.array(course_names[course[order]], type=pa.string()),
            "edss_at_diagnosis": pa.array(edss[order], type=pa.float64(), mask=~edss_known[order]),
        }
    )
    return table, corrupt_ids


def _truth_persons_table(population: Population, onset_day: np.ndarray) -> pa.Table:
    """Hidden per-person truth: exact birth date, latent factor and true onset (diagnosed or not)."""
    has_onset = np.isfinite(onset_day)
    return pa.table(
        {
            "person_id": pa.array(population.person_id, type=pa.int64()),
            "true_birth_date": _date_array(population.birth_day),
            "latent_factor": pa.array(population.latent_factor, type=pa.float64()),
            "true_onset_day": pa.array(
                np.where(has_onset, onset_day, 0.0), type=pa.float64(), mask=~has_onset
            ),
            "true_onset_date": _date_array(
                np.where(has_onset, np.floor(np.nan_to_num(onset_day)), 0), has_onset
            ),
        }
    )


def _ground_truth(
    substances: SubstanceTable,
    n_users: np.ndarray,
    n_exposed: np.ndarray,
    counts: dict[str, Any],
    corrupt_counts: dict[str, int],
    corrupt_plan: CorruptPlan,
    corrupt_ms_ids: dict[str, list[int]],
    parameters: dict[str, Any],
    baseline_incidence_per_100k: float,
) -> dict[str, Any]:
    """The planted truth as a JSON-ready dict."""
    substance_truth = {
        code: {
            "atc_name": substances.names[j],
            "role": substances.roles[j],
            "planted_hr": float(substances.planted_hr[j]),
            "target_ever_use": round(float(substances.target_ever_use[j]), 6),
            "n_users": int(n_users[j]),
            "n_exposed": int(n_exposed[j]),
        }
        for j, code in enumerate(substances.codes)
    }
    mechanism = [code for code, planted in PLANTED.items() if planted.role == MECHANISM]
    corrupt_person_ids = {kind: [] for kind in CORRUPT_KINDS}
    for kind_index, person_id in zip(corrupt_plan.kind, corrupt_plan.person_id, strict=True):
        corrupt_person_ids[CORRUPT_KINDS[kind_index]].append(int(person_id))
    corrupt_person_ids.update(corrupt_ms_ids)
    return {
        "description": "Planted truth of the simulated registries (repurpose.simulate.registries).",
        "parameters": parameters,
        "substances": substance_truth,
        "roles": {
            role: [c for c in substances.codes if substance_truth[c]["role"] == role] for role in ROLES
        },
        "mechanism": {
            "gene": MECHANISM_GENE,
            "action_type": MECHANISM_ACTION_TYPE,
            "substances": sorted(mechanism),
            "substance_names": [substance_truth[c]["atc_name"] for c in sorted(mechanism)],
            "planted_hr": MECHANISM_HR,
            "note": "each substance multiplies the hazard by planted_hr from its own second dispensing",
        },
        "planted": {code: asdict(planted) for code, planted in PLANTED.items()},
        "not_simulated": list(NOT_SIMULATED),
        "hazard_model": {
            "formula": "h(t) = h0(age band) * sex_factor * exp(sum_j log(hr_j) * exposed_j(t) + gamma * U)",
            "age_in_years": "(day - true birth day) / 365.25",
            "age_band_lower_years": list(AGE_BAND_LOWER_YEARS),
            "baseline_per_100k_person_years": [
                round(baseline_incidence_per_100k * r, 6) for r in AGE_BAND_RELATIVE_HAZARD
            ],
            "baseline_incidence_per_100k_at_peak": baseline_incidence_per_100k,
            "sex_factor": SEX_HAZARD_FACTOR,
            "latent_factor_log_hr_per_sd": LATENT_LOG_HR_PER_SD,
            "exposure_definition": (
                "exposed from the day of the person's second dispensing of the substance, for ever after"
            ),
            "onset_simulated_from": "birth (no drug data and so no drug effects before study start)",
            "onset_simulated_until": (
                f"death, emigration or study end + {ONSET_HORIZON_AFTER_STUDY_END_YEARS} years"
            ),
            "confounded_use_log_rate_per_sd": CONFOUNDED_USE_LOG_RATE_PER_SD,
            "prodromal": {
                "window_years": PRODROMAL_WINDOW_YEARS,
                "user_probability_per_case_and_substance": PRODROMAL_USER_PROBABILITY,
                "extra_dispensings": f"2 + Poisson({PRODROMAL_EXTRA_DISPENSINGS_MEAN})",
                "timing": "density rising linearly from 0 at window start to its peak at onset",
            },
            "diagnosis_delay": {
                "median_years": DIAGNOSIS_DELAY_MEDIAN_YEARS,
                "log_sd": DIAGNOSIS_DELAY_LOG_SD,
            },
        },
        "counts": counts,
        "corrupt_rows": corrupt_counts,
        "corrupt_row_person_ids": corrupt_person_ids,
        "files": {
            "population": "population.parquet",
            "prescriptions": "prescriptions/",
            "ms_registry": "ms_registry.parquet",
            "hidden_person_truth": "ground_truth_persons.parquet",
        },
    }


# --------------------------------------------------------------------------------------------------
# Registry-native copy (semicolon CSV, Latin-1, Norwegian headers)
# --------------------------------------------------------------------------------------------------


def _write_native_csv(frames: Iterable[pl.DataFrame], path: Path) -> None:
    """Write polars frames as one semicolon-separated Latin-1 CSV with dd.mm.yyyy dates."""
    with path.open("wb") as handle:
        for index, frame in enumerate(frames):
            text = frame.write_csv(
                separator=NATIVE_SEPARATOR, date_format=NATIVE_DATE_FORMAT, include_header=index == 0
            )
            handle.write(text.encode(NATIVE_ENCODING))


def _to_native(frame: pl.DataFrame, extract: str) -> pl.DataFrame:
    if extract == "population":
        frame = frame.with_columns(pl.col("sex").replace_strict(NATIVE_SEX_CODES, return_dtype=pl.Int8))
    return frame.select(list(NATIVE_COLUMNS[extract])).rename(NATIVE_COLUMNS[extract])


def write_native_extracts(canonical_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Copy canonical simulated extracts into a registry-native layout, to exercise column maps.

    Writes `population.csv`, `prescriptions/resepter_{year}.csv` and `ms_registry.csv` (semicolon
    separated, Latin-1, Norwegian headers, dates dd.mm.yyyy, sex 1 = male / 2 = female). Returns
    `{"date_format", "sep", "encoding", "sex_codes", "columns": {extract: {canonical: native}},
    "inputs": {extract: {"path", "sep", "encoding", "date_format", "columns"}}}` where `inputs` can be
    pasted into a run configuration.
    """
    source = Path(canonical_dir)
    out = Path(out_dir)
    (out / "prescriptions").mkdir(parents=True, exist_ok=True)
    for stale in (out / "prescriptions").glob("resepter_*.csv"):
        stale.unlink()

    _write_native_csv(
        [_to_native(pl.read_parquet(source / "population.parquet"), "population")], out / "population.csv"
    )
    _write_native_csv(
        [_to_native(pl.read_parquet(source / "ms_registry.parquet"), "ms_registry")], out / "ms_registry.csv"
    )
    for part in sorted((source / "prescriptions").glob("dispensings_*.parquet")):
        year = part.stem.removeprefix("dispensings_")
        batches = pq.ParquetFile(part).iter_batches(batch_size=1_000_000)
        frames = (
            _to_native(pl.from_arrow(pa.Table.from_batches([batch])), "prescriptions") for batch in batches
        )
        _write_native_csv(
            _with_header_if_empty(frames, "prescriptions"), out / "prescriptions" / f"resepter_{year}.csv"
        )

    paths = {
        "population": str(out / "population.csv"),
        "prescriptions": str(out / "prescriptions"),
        "ms_registry": str(out / "ms_registry.csv"),
    }
    return {
        "date_format": NATIVE_DATE_FORMAT,
        "sep": NATIVE_SEPARATOR,
        "encoding": NATIVE_ENCODING,
        "sex_codes": {str(code): sex for sex, code in NATIVE_SEX_CODES.items()},
        "columns": {extract: dict(columns) for extract, columns in NATIVE_COLUMNS.items()},
        "inputs": {
            extract: {
                "path": paths[extract],
                "sep": NATIVE_SEPARATOR,
                "encoding": NATIVE_ENCODING,
                "date_format": NATIVE_DATE_FORMAT,
                "columns": dict(NATIVE_COLUMNS[extract]),
            }
            for extract in NATIVE_COLUMNS
        },
    }


def _with_header_if_empty(frames: Iterable[pl.DataFrame], extract: str) -> Iterator[pl.DataFrame]:
    """Yield the frames, or one empty frame with the native header when there are none."""
    produced = False
    for frame in frames:
        produced = True
        yield frame
    if not produced:
        yield pl.DataFrame({name: [] for name in NATIVE_COLUMNS[extract].values()})
