"""A simple, independent generator of the persistence study's validated inputs with planted clinic effects.

Written for the persistence tests and benchmark only (the simulator's realistic clinical data are another
module's work): new users of one drug start between 2014 and 2021, stop with a constant hazard that depends on
age, EDSS, relapses and the clinic's planted log hazard ratio, for a reason drawn with fixed shares (so the
cause-specific hazards are proportional and the cumulative incidence of each reason is its share of all
stopping), and are censored at study end. Dispensings of 90 DDD every 84 days (carry-forward keeps a slight
oversupply) run from the start to the registry stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

DRUG = "L04AX07"
REASONS = ("adverse_event", "lack_of_efficacy", "pregnancy", "patient_wish", "other", "unknown")
REASON_SHARES = (0.4, 0.2, 0.05, 0.15, 0.1, 0.1)
STUDY_END = date(2023, 12, 31)
MONTHLY_HAZARD = 0.02


@dataclass
class Synthetic:
    """The generated tables and the planted truth."""

    population: pl.DataFrame
    ms_registry: pl.DataFrame
    ms_treatments: pl.DataFrame
    ms_relapses: pl.DataFrame
    ms_edss: pl.DataFrame
    prescriptions: pl.DataFrame
    clinic_effects: dict[str, float]
    outliers: list[str]

    def write(self, folder: Path, n_parts: int = 1) -> dict[str, object]:
        """Write every table as parquet under `folder`; the stage function's input keywords."""
        folder.mkdir(parents=True, exist_ok=True)
        paths: dict[str, object] = {}
        for name in ("population", "ms_registry", "ms_treatments", "ms_relapses", "ms_edss"):
            paths[name] = str(folder / f"{name}.parquet")
            getattr(self, name).write_parquet(paths[name])
        parts = []
        years = self.prescriptions["dispense_date"].dt.year()
        for k, chunk in enumerate(np.array_split(np.sort(years.unique().to_numpy()), n_parts)):
            part = folder / f"prescriptions_{k}.parquet"
            self.prescriptions.filter(years.is_in(chunk.tolist())).write_parquet(part)
            parts.append(str(part))
        paths["prescriptions"] = parts
        return paths


def generate(
    *, n_clinics: int = 40, size_range: tuple[int, int] = (40, 300), tau: float = 0.25,
    outliers: dict[int, float] | None = None, seed: int = 1, n_other_persons: int = 0,
    n_other_dispensings: int = 0, small_clinics: int = 0,
) -> Synthetic:  # fmt: skip
    """New users in `n_clinics` clinics (+ `small_clinics` of 1-4 patients) with log-normal clinic effects (sd
    `tau`) and planted outliers {clinic index: log HR}; `n_other_persons` persons without MS and
    `n_other_dispensings` dispensings of other drugs give a registry its national scale."""
    rng = np.random.default_rng(seed)
    outliers = outliers or {}
    clinics = [f"C{c:03d}" for c in range(n_clinics + small_clinics)]
    effects = rng.normal(0.0, tau, n_clinics + small_clinics)
    for index, value in outliers.items():
        effects[index] = value
    sizes = np.concatenate([rng.integers(size_range[0], size_range[1] + 1, n_clinics), rng.integers(1, 5, small_clinics)])
    country = np.where(np.arange(len(clinics)) % 3 == 0, "DK", "NO")
    clinic_of = np.repeat(np.arange(len(clinics)), sizes)
    n = len(clinic_of)
    person = np.arange(1, n + 1, dtype=np.int64)
    sex = np.where(rng.random(n) < 0.7, "F", "M")
    start = np.datetime64("2014-01-01") + rng.integers(0, 8 * 365, n).astype("timedelta64[D]")
    age = rng.uniform(20, 60, n)
    birth_year = (start.astype("datetime64[Y]").astype(int) + 1970 - np.floor(age)).astype(np.int64)
    edss = np.round(rng.uniform(0, 6, n) * 2) / 2
    relapses = rng.poisson(0.6, n)
    lp = 0.02 * (age - 40) + 0.1 * (edss - 3) + 0.15 * relapses + effects[clinic_of]
    months = rng.exponential(1.0 / (MONTHLY_HAZARD * np.exp(lp)))
    days = np.maximum(1, np.round(months * 30.4375)).astype(int)
    stop = start + days.astype("timedelta64[D]")
    end = np.datetime64(STUDY_END)
    stopped = stop <= end
    reason = np.array(REASONS)[rng.choice(len(REASONS), n, p=REASON_SHARES)]
    prior = rng.random(n) < 0.4
    population = pl.DataFrame({
        "person_id": np.concatenate([person, np.arange(n + 1, n + 1 + n_other_persons, dtype=np.int64)]),
        "sex": np.concatenate([sex, np.where(rng.random(n_other_persons) < 0.5, "F", "M")]),
        "birth_year": np.concatenate([birth_year, rng.integers(1930, 2005, n_other_persons)]),
    }).with_columns(pl.lit(None, pl.Int64).alias("birth_month"), pl.lit(None, pl.Date).alias("death_date"),
                    pl.lit(None, pl.Date).alias("emigration_date"))  # fmt: skip
    registry = pl.DataFrame({
        "person_id": person, "onset_date": start - rng.integers(200, 4000, n).astype("timedelta64[D]"),
        "clinic_id": np.array(clinics)[clinic_of], "country": country[clinic_of],
    }).with_columns(pl.col("onset_date").alias("diagnosis_date"))  # fmt: skip
    drug = pl.DataFrame({
        "person_id": person, "treatment_atc_code": DRUG, "start_date": start,
        "stop_date": np.where(stopped, stop, np.datetime64("NaT")), "stop_reason": np.where(stopped, reason, ""),
        "clinic_id": np.array(clinics)[clinic_of],
    }).with_columns(pl.col("start_date").cast(pl.Date), pl.col("stop_date").cast(pl.Date),
                    pl.col("stop_reason").replace("", None))  # fmt: skip
    prior_rows = pl.DataFrame({
        "person_id": person[prior], "treatment_atc_code": "L03AB07",
        "start_date": start[prior] - np.timedelta64(700, "D"), "stop_date": start[prior] - np.timedelta64(10, "D"),
        "stop_reason": "lack_of_efficacy", "clinic_id": np.array(clinics)[clinic_of][prior],
    }).with_columns(pl.col("start_date").cast(pl.Date), pl.col("stop_date").cast(pl.Date))  # fmt: skip
    treatments = pl.concat([drug, prior_rows]).sort("person_id", "start_date")
    edss_rows = pl.DataFrame({"person_id": person, "visit_date": start - np.timedelta64(60, "D"), "edss": edss}).with_columns(
        pl.col("visit_date").cast(pl.Date))  # fmt: skip
    relapse_person = np.repeat(person, relapses)
    relapse_rows = pl.DataFrame({
        "person_id": relapse_person,
        "relapse_date": np.repeat(start, relapses) - rng.integers(1, 365, len(relapse_person)).astype("timedelta64[D]"),
    }).with_columns(pl.col("relapse_date").cast(pl.Date))  # fmt: skip
    last = np.where(stopped, stop, end)
    n_disp = np.maximum(1, ((last - start).astype(int) // 84) + 1)
    disp_person = np.repeat(person, n_disp)
    offsets = np.arange(n_disp.sum()) - np.repeat(np.cumsum(n_disp) - n_disp, n_disp)
    disp_date = np.repeat(start, n_disp) + (offsets * 84).astype("timedelta64[D]")
    keep = disp_date <= end
    other_dates = np.datetime64("2014-01-01") + rng.integers(0, 10 * 365, n_other_dispensings).astype("timedelta64[D]")
    prescriptions = pl.DataFrame({
        "person_id": np.concatenate([disp_person[keep], rng.integers(1, n + n_other_persons + 1, n_other_dispensings)]),
        "dispense_date": np.concatenate([disp_date[keep], other_dates]),
        "atc_code": np.concatenate([np.full(keep.sum(), DRUG), rng.choice(["N02BE01", "C10AA05", "A02BC02", "N06AB06"], n_other_dispensings)]),
        "ddd": np.concatenate([np.full(keep.sum(), 90.0), rng.choice([10.0, 30.0, 100.0], n_other_dispensings)]),
    }).with_columns(pl.col("dispense_date").cast(pl.Date))  # fmt: skip
    return Synthetic(
        population=population, ms_registry=registry, ms_treatments=treatments, ms_relapses=relapse_rows,
        ms_edss=edss_rows, prescriptions=prescriptions, clinic_effects=dict(zip(clinics, effects.tolist(), strict=True)),
        outliers=[clinics[i] for i in outliers],
    )  # fmt: skip


def study_config(**persistence: object) -> dict:
    """A config holding what the persistence stage reads (defaults as in the schema)."""
    settings = {
        "drug": [DRUG], "grace_days": 60, "ddd_per_day": {}, "lookback_days": 30, "horizons_months": [12, 24],
        "funnel_horizon_months": 24, "min_clinic_size": 10, "funnel_overdispersion": "additive",
        "agreement_days": 90,
        "adjust": ["age_years", "sex", "disease_duration_years", "edss", "relapses_prior_year", "calendar_year", "prior_dmt"],
    }  # fmt: skip
    settings.update(persistence)
    return {"persistence": settings, "study": {"end": STUDY_END.isoformat()},
            "disclosure": {"min_cell": 5, "rounding_base": 5}, "resources": {"threads": 2, "memory_gb": 2}}  # fmt: skip
