"""Small fakes of the candidate files (the colleague's column contract) for the report and export tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from repurpose.release.report import MECHANISM_COLUMNS, SCREEN_COUNTS, drug_columns


def write_fake_candidates(dwas_parquet: str | Path, out_dir: str | Path, n: int = 15) -> tuple[Path, Path]:
    """drug_ranking.csv from the most significant screen classes, and a mechanism_ranking.csv for them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dwas = pl.read_parquet(dwas_parquet)
    main = dwas.filter((pl.col("sex") == "all") & (pl.col("lag_years") == 0) & pl.col("p_value").is_finite())
    top = main.sort("p_value").head(n)
    targets = ["ADRB2", "HMGCR", "VDR"]
    direction = pl.when(pl.col("hr") < 1).then(pl.lit("protective")).otherwise(pl.lit("harmful"))
    lines = ["evidence_calibrated", "evidence_lag_robust", "evidence_confirmed"]
    drugs = top.with_columns(direction=direction).with_columns(
        rank=pl.col("p_value").rank("ordinal").over("direction").cast(pl.Int64)
    ).select(
        "rank", "direction", (pl.col("rank") <= 4).alias("candidate"), "atc_code", "atc_name", "atc_level",
        pl.col("atc_code").str.slice(0, 3).alias("also_seen_at"), pl.col("lag_years"),
        "hr", "ci_lower", "ci_upper", "p_value", "q_value", (pl.col("hr") ** 0.8).alias("hr_shrunken"),
        pl.Series("n_exposed", [3] + [40] * (top.height - 1)),  # a small count the report must suppress
        pl.lit(12).alias("n_exposed_cases"), pl.lit(2).alias("evidence_supported"), pl.lit(3).alias("evidence_assessed"),
        pl.lit("small_numbers").alias("flags"), pl.Series("targets", [targets[i % 3] for i in range(top.height)]),
        pl.col("hr").alias("hr_lag0"), (pl.col("hr") * 1.02).alias("hr_lag5"), (pl.col("hr") * 0.97).alias("hr_F"),
        (pl.col("hr") * 1.04).alias("hr_M"),
    ).sort("direction", "rank", descending=[True, False])  # fmt: skip
    assert drugs.columns == drug_columns([0.0, 5.0], 0.0)
    drugs = drugs.with_columns(
        pl.lit("supported").alias(lines[0]), pl.lit("against").alias(lines[1]),
        pl.lit("not assessed: fewer than 10 exposed cases in the confirmation model").alias(lines[2]),
        pl.col("hr").alias("hr_dose_1"), (pl.col("hr") * 1.2).alias("hr_dose_2"), (pl.col("hr") * 1.4).alias("hr_dose_3"),
        (pl.col("hr") * 0.7).alias("ci_lower_dose_1"), (pl.col("hr") * 1.4).alias("ci_upper_dose_1"),
        pl.lit(3).alias("n_exposed_cases_dose_1"), pl.lit(40).alias("n_exposed_dose_1"),
        pl.lit(0.01).alias("dose_trend_p"), (pl.col("hr") * 1.01).alias("hr_confirmation"),
        (pl.col("hr") * 0.95).alias("ci_lower_confirmation"), (pl.col("hr") * 1.07).alias("ci_upper_confirmation"),
    )  # fmt: skip
    mechanisms = pl.DataFrame({
        "rank": [1, 2, 1], "direction": ["protective", "protective", "harmful"], "target": ["ADRB2", "HMGCR", "TLR7;TLR9"],
        "target_name": ["beta-2 adrenergic receptor", "HMG-CoA reductase", "Toll-like receptors 7 and 9"],
        "action_type": ["AGONIST", "INHIBITOR", "ANTAGONIST"], "n_substances": [4, 3, 2], "n_supporting": [4, 2, 1],
        "n_atc3_classes": [2, 1, 1],
        "substances": ["R03AC02 salbutamol 0.70 (0.50-0.98); R03AC03 terbutaline 0.72 (0.50-1.03)",
                       "C10AA01 simvastatin 0.9 (0.7-1.2); C10AA05 atorvastatin 0.9 (0.7-1.2)",
                       "P01BA01 chloroquine 1.3 (0.8-2.0); P01BA02 hydroxychloroquine 1.4 (0.9-2.2)"],
        "not_counted": [None, "C10AA07: fewer than 10 exposed cases", "P01BA01: reverse causation suspected"],
        "pooled_hr": [0.7, 0.9, 1.4], "ci_lower": [0.55, 0.7, 0.9], "ci_upper": [0.89, 1.15, 2.2],
        "p_value": [0.003, 0.4, 0.1], "p_leave_one_out": [0.02, 0.6, None], "q_value": [0.01, 0.6, None], "re_hr": [0.71, 0.9, 1.4], "re_ci_lower": [0.5, 0.6, 0.8],
        "re_ci_upper": [0.99, 1.3, 2.4], "tau": [0.1, 0.2, 0.0], "i2": [0.0, 0.12, 0.0], "q_heterogeneity_p": [0.9, 0.3, None],
        "evidence_score": [3, 1, 0], "score_points": ["significant, replicated_across_atc3_classes, consistent", "consistent", ""],
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
