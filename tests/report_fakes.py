"""Small fakes of the candidate files (the colleague's column contract) for the report and export tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from repurpose.release.report import DRUG_COLUMNS, MECHANISM_COLUMNS, SCREEN_COUNTS


def write_fake_candidates(dwas_parquet: str | Path, out_dir: str | Path, n: int = 15) -> tuple[Path, Path]:
    """drug_ranking.csv from the most significant screen classes, and a mechanism_ranking.csv for them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dwas = pl.read_parquet(dwas_parquet)
    main = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == 0) & pl.col("p_value").is_finite())
    top = main.sort("p_value").head(n)
    targets = ["ADRB2", "HMGCR", "VDR"]
    drugs = top.with_row_index("rank", offset=1).select(
        "rank", "atc_code", "atc_name", "atc_level",
        pl.when(pl.col("hr") < 1).then(pl.lit("protective")).otherwise(pl.lit("harmful")).alias("direction"),
        "hr", "ci_lower", "ci_upper", "q_value",
        (pl.col("p_value") * 3).clip(upper_bound=1).alias("calibrated_p"),
        (pl.col("hr") * 1.02).alias("hr_lag5"), (pl.col("hr") * 1.05).alias("hr_lag10"),
        pl.lit(0.01).alias("dose_trend_p"), (pl.col("hr") * 0.97).alias("hr_F"), (pl.col("hr") * 1.04).alias("hr_M"),
        (pl.col("hr") * 1.01).alias("hr_confirmation"), (pl.col("hr") * 1.08).alias("hr_active_comparator"),
        pl.lit(2.1).alias("e_value"), pl.lit("").alias("flags"),
        pl.Series("targets", [targets[i % 3] for i in range(top.height)]),
        (10 - pl.col("p_value").rank()).alias("evidence_score"),
    )  # fmt: skip
    assert drugs.columns == DRUG_COLUMNS
    # optional columns of the full ranking (docs/schemas.md), used when present
    drugs = drugs.with_columns(
        pl.col("hr").alias("hr_dose_1"), (pl.col("hr") * 1.2).alias("hr_dose_2"), (pl.col("hr") * 1.4).alias("hr_dose_3"),
        (pl.col("hr") * 0.95).alias("ci_lower_confirmation"), (pl.col("hr") * 1.07).alias("ci_upper_confirmation"),
        pl.col("hr").alias("calibrated_hr"), pl.col("ci_lower").alias("calibrated_ci_lower"),
        (pl.col("ci_upper") * 1.2).alias("calibrated_ci_upper"),
        pl.Series("n_exposed", [3] + [40] * (top.height - 1)),  # a small count the report must suppress
    )  # fmt: skip
    mechanisms = pl.DataFrame({
        "rank": [1, 2, 3], "target": targets, "target_name": ["beta-2 adrenergic receptor", "HMG-CoA reductase",
                                                             "vitamin D receptor"],
        "action_type": ["AGONIST", "INHIBITOR", "AGONIST"], "n_substances": [4, 3, 2], "n_atc3_classes": [2, 1, 1],
        "substances": ["salbutamol;terbutaline", "simvastatin;atorvastatin", "calcitriol"],
        "pooled_hr": [0.7, 0.9, 1.1], "ci_lower": [0.55, 0.7, 0.8], "ci_upper": [0.89, 1.15, 1.5],
        "p_value": [0.003, 0.4, 0.6], "q_value": [0.01, 0.6, 0.6], "i2": [0.0, 12.5, 40.0],
        "evidence_score": [3, 1, 0],
    })  # fmt: skip
    assert mechanisms.columns == MECHANISM_COLUMNS
    drugs_path, mechanisms_path = out_dir / "drug_ranking.csv", out_dir / "mechanism_ranking.csv"
    drugs.write_csv(drugs_path)
    mechanisms.write_csv(mechanisms_path)
    return drugs_path, mechanisms_path


PERSON_ID_BASE = 731_000_000  # fake person ids: 9 digits, easy to search for in exported files


def fake_dwas(rng: np.random.Generator, n_level5: int = 1000, lags: tuple[float, ...] = (0.0, 5.0)) -> pl.DataFrame:
    """A raw (unsuppressed) screen table: level 2 from the catalog, ~n_level5 synthetic level-5 classes,
    sex strata whose counts add up (F + M = all), small counts included."""
    from repurpose.atc import load_atc_names

    names = load_atc_names(None)
    level2 = names.filter(pl.col("atc_level") == 2)["atc_code"].to_list()
    level4 = names.filter(pl.col("atc_level") == 4)["atc_code"].to_list()
    level5 = sorted({f"{code}{k:02d}" for code in level4 for k in range(1, 5)})[:n_level5]
    rows = []
    for level, codes in ((2, level2), (5, level5)):
        for code in codes:
            exposed_f, exposed_m = (int(v) for v in rng.integers(0, 400, 2))
            cases_f, cases_m = (int(v) for v in rng.integers(0, 12, 2))
            for lag in lags:
                log_hr = float(rng.normal(0, 0.25)) + (0.9 if code.startswith("N06") else 0.0)
                se = 0.15 + float(rng.random()) * 0.3
                for sex, n_exp, n_cases in (("all", exposed_f + exposed_m, cases_f + cases_m),
                                            ("F", exposed_f, cases_f), ("M", exposed_m, cases_m)):  # fmt: skip
                    fitted = n_cases >= 5
                    z = log_hr / se
                    p = float(2 * stats.norm.sf(abs(z)))
                    rows.append({
                        "atc_code": code, "atc_name": None, "atc_level": level, "lag_years": lag, "sex": sex,
                        "n_persons": {"all": 20000, "F": 10400, "M": 9600}[sex], "n_exposed": n_exp,
                        "n_cases": {"all": 300, "F": 200, "M": 100}[sex], "n_exposed_cases": n_cases,
                        "person_years_exposed": 7.5 * n_exp,
                        "hr": math.exp(log_hr) if fitted else None,
                        "ci_lower": math.exp(log_hr - 1.96 * se) if fitted else None,
                        "ci_upper": math.exp(log_hr + 1.96 * se) if fitted else None,
                        "log_hr": log_hr if fitted else None, "se": se if fitted else None,
                        "p_value": p if fitted else None, "converged": fitted, "n_iter": 4 if fitted else 0,
                        "status": "ok" if fitted else "skipped",
                        "reason": None if fitted else "fewer than 5 exposed cases",
                    })  # fmt: skip
    frame = pl.DataFrame(rows)
    from repurpose.dwas.screen import add_q_values

    return add_q_values(frame, 0.05)


def write_fake_results(results: str | Path, seed: int = 7, with_candidates: bool = True) -> dict[str, Path]:
    """A results/ tree as the pipeline writes it: validation, flow, screen (released), person-level files."""
    from repurpose.release.disclosure import SCREEN_RULES, for_display, suppress_small_counts

    results = Path(results)
    rng = np.random.default_rng(seed)
    paths = {name: results / rel for name, rel in {
        "validation": "validation/report.json", "flow": "cohort/flow.json", "dwas": "screen/dwas.parquet",
        "dwas_csv": "screen/dwas.csv", "exposure": "exposure/atc_level_2.parquet", "cohort": "cohort/cohort.parquet",
    }.items()}  # fmt: skip
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    extract = {"files": [], "rows_read": 0, "rows_kept": 0, "rows_rejected": 0, "rejected_by_reason": {}}
    validation = {"extracts": {
        "population": {**extract, "rows_read": 20500, "rows_kept": 20497, "rows_rejected": 3,
                       "rejected_by_reason": {"duplicate_person": 3}},
        "prescriptions": {**extract, "rows_read": 100_000, "rows_kept": 99_960, "rows_rejected": 40,
                          "rejected_by_reason": {"negative_ddd": 37, "malformed_atc_code": 3}},
    }}  # fmt: skip
    paths["validation"].write_text(json.dumps(validation))
    flow = {"outcome": {"source": "ms_registry", "label": "MS"},
            "persons_in_population": 20497, "excluded": {"not_of_age_during_study": 300, "died_before_entry": 2,
            "emigrated_before_entry": 95, "prevalent_outcome_at_entry": 100}, "persons_in_cohort": 20000, "events": 300,
            "events_by_outcome_source": {"diagnosis": 4, "onset": 296}, "events_by_sex": {"F": 200, "M": 100},
            "exit_reasons": {"death": 1500, "emigration": 200, "outcome": 300, "study_end": 18000},
            "person_years": 300000.0, "median_followup_years": 15.0, "check": True}  # fmt: skip
    paths["flow"].write_text(json.dumps(flow))
    dwas = fake_dwas(rng)
    released = suppress_small_counts(dwas, SCREEN_COUNTS, 5, **SCREEN_RULES)
    released.write_parquet(paths["dwas"])
    for_display(released, SCREEN_COUNTS, 5).write_csv(paths["dwas_csv"])
    person_ids = PERSON_ID_BASE + np.arange(20000)
    exposure = pl.DataFrame({
        "person_id": np.repeat(person_ids[:3000], 2), "atc_code": ["N06", "C07"] * 3000, "atc_level": 2,
        "n_dispensings": 3,
    })  # fmt: skip
    # one anatomical group with 3 exposed persons: a small count the report must suppress
    exposure = pl.concat([exposure, pl.DataFrame({"person_id": person_ids[5000:5003], "atc_code": ["V03"] * 3,
                                                  "atc_level": 2, "n_dispensings": 3})], how="vertical_relaxed")  # fmt: skip
    exposure.write_parquet(paths["exposure"])
    pl.DataFrame({"person_id": person_ids, "event": rng.random(20000) < 0.015}).write_parquet(paths["cohort"])
    if with_candidates:
        paths["drugs"], paths["mechanisms"] = write_fake_candidates(paths["dwas"], results / "candidates")
    return paths
