"""Exact onset times under a planted piecewise-constant hazard, and prodromal dispensings before onset.

Owns: the MS onset hazard model (age-band baseline, sex factor, latent factor, drug effects) and the two
generic draws every planted outcome uses: the onset time that inverts a person's cumulative hazard, and
extra dispensings of prodromal substances in the years before onset. Imports numpy and the simulator's
`dates`, `profiles`, `population` and `prescriptions`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow
from repurpose.simulate.population import Population
from repurpose.simulate.prescriptions import Dispensings, SubstanceTable, draw_ddd, draw_reimbursement
from repurpose.simulate.profiles import AGE_BAND_LOWER_YEARS, AGE_BAND_RELATIVE_HAZARD, PRODROMAL

FEMALE_TO_MALE_HAZARD_RATIO = 2.5
SEX_HAZARD_FACTOR: dict[str, float] = {
    "F": 2 * FEMALE_TO_MALE_HAZARD_RATIO / (1 + FEMALE_TO_MALE_HAZARD_RATIO),
    "M": 2 / (1 + FEMALE_TO_MALE_HAZARD_RATIO),
}
"""Multipliers of the baseline hazard; their mean is 1, so the baseline is the average of the sexes."""

LATENT_LOG_HR_PER_SD = 0.4
"""log-HR of MS onset per SD of the latent factor U (gamma)."""

DEFAULT_BASELINE_INCIDENCE_PER_100K = 240.0
"""Onset incidence per 100,000 person-years at the peak ages, averaged over sexes, unexposed, U = 0.

Real MS incidence at the peak is ~10-20 per 100,000; this default is inflated for statistical power so
that ~1.5% of a simulated population has onset during a 20-year window."""

ONSET_HORIZON_AFTER_STUDY_END_YEARS = 5.0

PRODROMAL_WINDOW_YEARS = 5.0
PRODROMAL_USER_PROBABILITY = 0.08
"""Probability that a case gets prodromal dispensings of a given prodromal substance."""
PRODROMAL_EXTRA_DISPENSINGS_MEAN = 1.5
"""Prodromal users get 2 + Poisson(this) extra dispensings, density rising linearly towards onset."""


def baseline_hazard_per_day(
    baseline_incidence_per_100k: float, relative_hazard: Sequence[float] = AGE_BAND_RELATIVE_HAZARD
) -> np.ndarray:
    """h0 per day in each age band (average of the sexes, unexposed, U = 0); MS bands by default."""
    return baseline_incidence_per_100k / 1e5 / DAYS_PER_YEAR * np.array(relative_hazard)


def simulate_onset_days(
    birth_day: np.ndarray,
    log_person_factor: np.ndarray,
    hazard_end_day: np.ndarray,
    unit_exponential: np.ndarray,
    exposure_person: np.ndarray,
    exposure_day: np.ndarray,
    exposure_log_hr: np.ndarray,
    baseline_per_day: np.ndarray,
    band_lower_years: Sequence[float] = AGE_BAND_LOWER_YEARS,
) -> np.ndarray:
    """Exact onset times (fractional day numbers, NaN if none before `hazard_end_day`).

    The hazard is piecewise constant between change points (age-band boundaries, MS bands by default,
    and exposure starts); onset is where the person's cumulative hazard first reaches their Exp(1) draw.
    `baseline_per_day` holds one rate per band of `band_lower_years` (the first bound must be 0).
    """
    n = len(birth_day)
    n_bands = len(band_lower_years)
    band_person = np.repeat(np.arange(n), n_bands)
    band_index = np.tile(np.arange(n_bands), n)
    band_time = birth_day[band_person] + np.tile(np.array(band_lower_years) * DAYS_PER_YEAR, n)
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


def prodromal_dispensings(
    population: Population,
    substances: SubstanceTable,
    rng: np.random.Generator,
    study: StudyWindow,
    onset_day: np.ndarray,
    prodromal: np.ndarray | None = None,
    user_probability: float | np.ndarray = PRODROMAL_USER_PROBABILITY,
    window_years: float = PRODROMAL_WINDOW_YEARS,
    extra_dispensings_mean: float = PRODROMAL_EXTRA_DISPENSINGS_MEAN,
) -> Dispensings:
    """Extra dispensings of prodromal substances before onset, denser towards onset (cases only).

    Each case with onset in or after the window becomes a user of each `prodromal` substance index
    (default: the substances with the MS `prodromal` role) with `user_probability` (one value, or one per
    substance) and gets 2 + Poisson(`extra_dispensings_mean`) dispensings within `window_years` before
    onset, kept where the person is observed.
    """
    if prodromal is None:
        prodromal = substances.indices(PRODROMAL)
    cases = np.flatnonzero(np.isfinite(onset_day) & (onset_day >= study.start_day))
    user = rng.random((len(cases), len(prodromal))) < user_probability
    case_row, substance_column = np.nonzero(user)
    n_extra = 2 + rng.poisson(extra_dispensings_mean, len(case_row))
    person = np.repeat(cases[case_row], n_extra)
    substance = np.repeat(prodromal[substance_column], n_extra)
    # density proportional to (window - years before onset): years before = W (1 - sqrt(1 - u))
    years_before = window_years * (1.0 - np.sqrt(1.0 - rng.random(len(person))))
    days_before = np.maximum(np.rint(years_before * DAYS_PER_YEAR), 1).astype(np.int64)
    day = np.floor(onset_day[person]).astype(np.int64) - days_before
    keep = (day >= population.entry_day[person]) & (day < population.exit_day(study)[person])
    person, substance, day = person[keep], substance[keep], day[keep]
    return Dispensings(
        person=person,
        day=day,
        substance=substance,
        ddd=draw_ddd(rng, substances, substance),
        reimbursement=draw_reimbursement(rng, substances, substance),
    )
