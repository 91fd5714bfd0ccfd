"""The simulated prescription register: substances, treatment episodes and their dispensings.

Owns: the per-substance prescribing parameters (from the profile tables, with episode rates calibrated
to the target ever-use shares), the episode and dispensing model, the exposure start (second dispensing)
used by the planted hazards, and the yearly prescription files with their schema. Imports numpy, polars,
pyarrow and the simulator's `dates`, `profiles` and `population`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from repurpose.simulate.dates import DAYS_PER_YEAR, StudyWindow, date_array, year_of_day
from repurpose.simulate.population import MAX_AGE, Population, person_years, simulate_population
from repurpose.simulate.profiles import (
    AGE_PROFILES,
    CONFOUNDED,
    EVER_USE_PERCENT_BY_ATC2,
    NOT_SIMULATED,
    NULL,
    PLANTED_TABLE,
    POPULARITY,
    USE_PROFILES,
    PlantedTable,
    ProfileTableError,
    UseProfile,
)

CONFOUNDED_USE_LOG_RATE_PER_SD = 1.0
"""log rate ratio of episode starts of `confounded` substances per SD of the latent factor U."""
REPEAT_EPISODES_MEAN = 1.2
"""Mean number of later episodes (Geometric) following a person's first episode of a substance."""
REPEAT_GAP_MEAN_YEARS = 2.0
"""Mean time (exponential) from one episode's start to the next repeat episode's start."""
DDD_PACK_MULTIPLIERS = (0.5, 1.0, 2.0)
DDD_PACK_MULTIPLIER_SHARES = (0.15, 0.7, 0.15)
REFILL_INTERVAL_BOUNDS_DAYS = (30.0, 120.0)
CALIBRATION_PERSONS = 4000
CALIBRATION_SEED = 20240101

PRESCRIPTIONS_SCHEMA = pa.schema(
    [
        ("person_id", pa.int64()),
        ("dispense_date", pa.date32()),
        ("atc_code", pa.string()),
        ("ddd", pa.float64()),
        ("reimbursement_code", pa.string()),
    ]
)


def prescription_file_name(year: int) -> str:
    """File name of the simulated prescription extract of one dispensing year (one file per year, as delivered)."""
    return f"dispensings_{year}.parquet"


def simulated_prescription_files(study_start: str, study_end: str) -> list[str]:
    """The yearly prescription files the simulator writes for a study window (known before it runs)."""
    study = StudyWindow.from_iso(study_start, study_end)
    return [prescription_file_name(year) for year in study.years]


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
    planted: PlantedTable  # the table the roles and planted HRs came from

    def __len__(self) -> int:
        return len(self.codes)

    def indices(self, role: str) -> np.ndarray:
        return np.array([j for j, r in enumerate(self.roles) if r == role], dtype=np.int64)

    def rate_table(self) -> np.ndarray:
        """Episode start rates per person-year, shape (MAX_AGE + 1, 2 sexes, J) (before the U factor)."""
        profiles = age_profile_matrix()  # (P, ages)
        by_age = profiles[self.profile_index].T  # (ages, J)
        return by_age[:, None, :] * self.sex_factor.T[None, :, :] * self.episode_rate[None, None, :]


def age_profile_matrix() -> np.ndarray:
    """Relative use by single year of age (0..MAX_AGE) for each named age profile, peak 1."""
    ages = np.arange(MAX_AGE + 1)
    rows = []
    for anchors, weights in AGE_PROFILES.values():
        curve = np.interp(ages, anchors, weights)
        rows.append(curve / curve.max())
    return np.array(rows)


def use_profile(code: str) -> UseProfile:
    """The use profile of the longest ATC prefix of `code` listed in USE_PROFILES."""
    for length in (7, 5, 4, 3):
        profile = USE_PROFILES.get(code[:length])
        if profile is not None:
            return profile
    raise KeyError(f"no prescribing profile for ATC group {code[:3]} ({code})")


def build_substance_table(
    catalog: pl.DataFrame, study: StudyWindow, planted_table: PlantedTable = PLANTED_TABLE
) -> SubstanceTable:
    """Assign roles (from `planted_table`, the packaged MS truth by default) and prescribing parameters to
    every simulated level-5 catalog substance.

    Episode rates are calibrated on a fixed reference population so that each substance's ever-use share
    over the window hits its target whatever the seed and size of the simulated population. A planted code
    the simulator does not dispense raises naming the table's file and line.
    """
    level5 = catalog.filter((pl.col("atc_level") == 5) & ~pl.col("atc_code").is_in(list(NOT_SIMULATED)))
    level5 = level5.sort("atc_code")
    codes = level5["atc_code"].to_list()
    planted_by_code, simulated = planted_table.substances, set(codes)
    for code, line in planted_table.lines.items():
        if code not in simulated:
            raise ProfileTableError(
                f"{planted_table.source} line {line}: column 'atc_code' {code!r} is not a substance the simulator "
                "dispenses (a level-5 code of the package's ATC catalog, not an MS treatment)"
            )
    names = level5["atc_name"].to_list()
    profile_names = list(AGE_PROFILES)
    profiles = [use_profile(code) for code in codes]

    weights = np.array([POPULARITY.get(code, 1.0) for code in codes])
    group = np.array([code[:3] for code in codes])
    target = np.zeros(len(codes))
    for atc2 in np.unique(group):
        members = (group == atc2) & np.array([code not in planted_by_code for code in codes])
        if members.any():
            share = EVER_USE_PERCENT_BY_ATC2.get(str(atc2), 0.5) / 100.0
            target[members] = share * weights[members] / weights[members].sum()
    roles = []
    planted_hr = np.ones(len(codes))
    for j, code in enumerate(codes):
        planted = planted_by_code.get(code)
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
        planted=planted_table,
    )
    table.episode_rate = _calibrate_episode_rates(table, study)
    return table


def _calibrate_episode_rates(table: SubstanceTable, study: StudyWindow) -> np.ndarray:
    """Per substance, solve mean_i(1 - exp(-rate * exposure_i)) = target ever-use on reference persons."""
    reference = simulate_population(CALIBRATION_PERSONS, np.random.default_rng(CALIBRATION_SEED), study)
    person, _, days, age = person_years(reference, study)
    profiles = age_profile_matrix()
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


def draw_ddd(rng: np.random.Generator, substances: SubstanceTable, substance: np.ndarray) -> np.ndarray:
    pack = np.searchsorted(
        np.cumsum(DDD_PACK_MULTIPLIER_SHARES)[:-1], rng.random(len(substance)), side="right"
    )
    multiplier = np.array(DDD_PACK_MULTIPLIERS)[pack]
    return substances.ddd_per_dispensing[substance] * multiplier


def draw_reimbursement(
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
    person, start, days, age = person_years(population, study)
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
    episode_reimbursement = draw_reimbursement(rng, substances, episode_substance)
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
        ddd=draw_ddd(rng, substances, substance),
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


def write_dispensings(
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
    year_index = np.clip(year_of_day(dispensings.day), study.first_year, study.last_year) - study.first_year
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
                "dispense_date": date_array(dispensings.day[rows]),
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
