"""Unit tests of the candidate ranking: reverse-causation rule, ATC relations, and the person-level models
(confirmation, dose-response, likelihood-ratio fits) against the screen and lifelines where they must agree.
The evidence lines, signals, shrinkage and order are tested in test_candidates_ranking.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import stats

from repurpose.config import validate_config
from repurpose.cox.engine import fit_efron
from repurpose.cox.risk_set_table import aggregate_counting_process
from repurpose.dwas import risk_sets
from repurpose.dwas.candidates import (
    lag_fade,
    reverse_causation_suspected,
    select_signals,
    siblings_of,
)
from repurpose.dwas.person_models import (
    HCU_BINS,
    ModelCohort,
    aggregated_cohort,
    candidate_pool,
    comparator_classes,
    confirmation_fit,
    dose_response,
    level_exposures,
    model_cohort,
    segments,
    segments_table,
    separated_lag_estimates,
    split_time_varying,
    submit_level_models,
    switch_segments,
)
from repurpose.dwas.screen import screen_exposures
from repurpose.dwas.window import NEVER_EXPOSED, exposed_from, lag_days
from repurpose.schemas import dose_column

RULE = {"reverse_causation": {"max_retained_fraction": 0.5, "alpha": 0.05}}


def config_for(adjust=None, **candidates):
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    screen = {"lags_years": [0, 2], "sex_strata": ["all"], **({"adjust": adjust} if adjust else {})}
    return validate_config({**base, "screen": screen, "candidates": candidates})


def test_prodromal_pattern_is_flagged():
    # Strong at lag 0, gone by lag 5 (sertraline-like): flagged.
    estimates = {0.0: (1.3, 0.06), 2.0: (0.75, 0.09), 5.0: (-0.05, 0.16), 10.0: (-0.3, 0.3)}
    flagged, retained, fade_p = reverse_causation_suspected(estimates, RULE)
    assert flagged and fade_p < 1e-6


def test_persistent_effect_is_not_flagged_even_when_noisy_at_long_lags():
    estimates = {0.0: (-0.6, 0.1), 2.0: (-0.6, 0.11), 5.0: (-0.63, 0.14), 10.0: (-0.2, 0.4)}
    flagged, retained, _ = reverse_causation_suspected(estimates, RULE)
    assert not flagged  # lag 10 keeps a third, but is far too noisy to differ from lag 0
    assert retained == pytest.approx(-0.2 / -0.6)


def test_sign_flip_counts_as_fading_and_no_lags_means_untested():
    assert reverse_causation_suspected({0.0: (0.5, 0.05), 5.0: (-0.2, 0.1)}, RULE)[0]
    assert reverse_causation_suspected({0.0: (0.5, 0.05)}, RULE) == (False, pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True))


def test_lag_fade_by_hand():
    retained, p = lag_fade(1.0, 0.06, 0.0, 0.1)
    assert retained == 0.0
    assert p == pytest.approx(2 * (1 - __import__("scipy").stats.norm.cdf(1.0 / 0.08)))


def test_atc_relations():
    codes = ["R03AC02", "R03AC03", "R03AK06", "R03BA01", "R06AA04", "R03AC", "R03AK", "R03BA", "R03A", "R03B", "R06A"]
    assert siblings_of("R03AC02", codes) == ["R03AC03"]
    assert siblings_of("R03AC", codes) == ["R03AK"]
    assert siblings_of("R03A", codes) == ["R03B"]
    assert comparator_classes("R03AC02", codes) == ["R03AK06"]  # same level 3 (R03A), other level 4
    assert comparator_classes("R03AC", codes) == ["R03AK"]
    assert comparator_classes("R03A", codes) == ["R03B"]


def test_select_signals_uses_lag_zero_or_main_lag_both_sexes_only():
    dwas = pl.DataFrame({
        "atc_code": ["A", "B", "C", "D"], "atc_level": [5, 5, 5, 5], "lag_years": [0.0, 2.0, 5.0, 0.0],
        "sex": ["all", "all", "all", "F"], "q_value": [0.01, 0.01, 0.01, 0.01], "status": ["ok"] * 4,
        "se": [0.1] * 4,
    })
    assert select_signals(dwas, 0.05, 2.0)["atc_code"].to_list() == ["A", "B"]


def test_segments_split_at_increasing_boundaries():
    entry, exit_ = np.array([0, 0, 10]), np.array([100, 100, 50])
    person, start, stop, category = segments(entry, exit_, [np.array([20, 200, 0]), np.array([60, 300, 5])])
    pieces = sorted(zip(person.tolist(), start.tolist(), stop.tolist(), category.tolist(), strict=True))
    assert pieces == [(0, 0, 20, 0), (0, 20, 60, 1), (0, 60, 100, 2), (1, 0, 100, 0), (2, 10, 50, 2)]


# --- person-level models agree with the screen where nothing is added -------------------------------


def synthetic(n: int = 3000, seed: int = 3) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    entry = rng.integers(18 * 365, 40 * 365, n)
    exit_ = entry + rng.integers(300, 15 * 365, n)
    exit_ = np.maximum(entry + 1, (exit_ // 30) * 30)  # ties
    cohort = pl.DataFrame({
        "person_id": np.arange(n) + 1,
        "sex": rng.choice(["F", "M"], n),
        "birth_year": rng.integers(1950, 1990, n).astype(np.int32),
        "education": pl.Series(rng.choice([1, 2, 3], n), dtype=pl.Int32),
        "entry_age_days": entry.astype(np.int32),
        "exit_age_days": exit_.astype(np.int32),
        "event": rng.random(n) < 0.25,
    })
    rows = []
    for code, share in (("A01", 0.3), ("B02", 0.2), ("C03", 0.25)):
        user = rng.random(n) < share
        start = entry + rng.integers(-3 * 365, 10 * 365, n)
        rows.append(pl.DataFrame({
            "person_id": cohort["person_id"].to_numpy()[user], "atc_code": code,
            "exposure_start_age_days": start[user].astype(np.int32),
            "first_dispense_age_days": (start[user] - 30).astype(np.int32),
            dose_column(100): pl.Series([None] * int(user.sum()), dtype=pl.Int32),
            dose_column(365): pl.Series([None] * int(user.sum()), dtype=pl.Int32),
        }))
    return cohort, pl.concat(rows)


@pytest.fixture(scope="module")
def models():
    cohort, exposures = synthetic()
    config = config_for()
    screen = screen_exposures(cohort, exposures, config, 2).filter(pl.col("sex") == "all")
    return cohort, exposures, config, screen, model_cohort(cohort, config)


@pytest.mark.parametrize("engine", ["lifelines", "aggregated"])
def test_confirmation_with_nothing_added_equals_the_screen(models, engine):
    _, exposures, config, screen, model = models
    for lag in (0.0, 2.0):
        result = confirmation_fit(model, exposures, "B02", [], config, round(lag * 365.25), engine)
        expected = screen.filter((pl.col("atc_code") == "B02") & (pl.col("lag_years") == lag)).row(0, named=True)
        assert result["log_hr_confirmation"] == pytest.approx(expected["log_hr"], abs=1e-6)
        assert result["se_confirmation"] == pytest.approx(expected["se"], rel=1e-5)


def test_confirmation_engines_agree_with_added_covariates(models):
    cohort, exposures, config, _, _ = models
    hcu = cohort.select("person_id", n_classes_year_before_entry=pl.col("person_id") % 9)
    model = model_cohort(cohort, config, hcu)
    fits = [confirmation_fit(model, exposures, "B02", ["A01", "C03"], config, 730, e) for e in ("lifelines", "aggregated")]
    assert fits[0]["log_hr_confirmation"] == pytest.approx(fits[1]["log_hr_confirmation"], abs=1e-6)
    assert fits[0]["confirmation_adjusted_for"] == "A01, C03, health-care use"


def test_dose_model_without_dose_data_reproduces_the_screen(models):
    _, exposures, _, screen, model = models
    result = dose_response(model, exposures, "A01", [100.0, 365.0], 730)
    expected = screen.filter((pl.col("atc_code") == "A01") & (pl.col("lag_years") == 2.0))["hr"][0]
    assert result["hr_dose_1"] == pytest.approx(expected, rel=1e-6)
    assert np.isnan(result["hr_dose_2"]) and np.isnan(result["dose_trend_p"])


def test_separated_lag_equals_the_screen_when_nobody_starts_during_follow_up(models):
    cohort, exposures, config, _, model = models
    early = exposures.join(cohort.select("person_id", "entry_age_days"), on="person_id").with_columns(
        exposure_start_age_days=pl.col("entry_age_days") - 3 * 366
    )
    result = separated_lag_estimates(model, early, "C03", [2.0])
    screen = screen_exposures(cohort, early, config, 2).filter((pl.col("sex") == "all") & (pl.col("atc_code") == "C03"))
    assert result["log_hr_separated_lag2"] == pytest.approx(screen.filter(pl.col("lag_years") == 2.0)["log_hr"][0], abs=1e-6)


# --- the person-level models count only the exposed persons: the same fits as on the whole split cohort -----

ADJUSTMENTS = [None, {"strata": ["sex"], "covariates": ["education", "birth_cohort"]}]


def with_doses(exposures: pl.DataFrame, seed: int = 4) -> pl.DataFrame:
    """Dose crossings after the exposure start (some never reached), so every dose category is filled."""
    rng = np.random.default_rng(seed)
    n = exposures.height
    first = exposures["exposure_start_age_days"].to_numpy() + rng.integers(30, 4 * 365, n)
    second = first + rng.integers(30, 4 * 365, n)
    return exposures.with_columns(
        pl.when(pl.Series(rng.random(n) < 0.7)).then(pl.Series(first)).otherwise(None).cast(pl.Int32).alias(dose_column(100)),
        pl.when(pl.Series(rng.random(n) < 0.4)).then(pl.Series(second)).otherwise(None).cast(pl.Int32).alias(dose_column(365)),
    )


def whole_cohort_fit(model, exposures, code, columns, lags, design_of_category):
    """The models as fitted before the cohort was counted once: every person's follow-up split at the class's
    ages (`segments` over the whole cohort), aggregated by `aggregate_counting_process`; constant columns dropped."""
    prepared = model.prepared
    joined = prepared.select("person_id").join(
        exposures.filter(pl.col("atc_code") == code).select("person_id", *dict.fromkeys(columns)), on="person_id", how="left", maintain_order="left"
    )
    entry, exit_ = prepared["entry"].to_numpy(), prepared["exit"].to_numpy()
    cuts = [exposed_from(entry, joined[c].cast(pl.Int64).fill_null(NEVER_EXPOSED).to_numpy(), lag) for c, lag in zip(columns, lags, strict=True)]
    person, start, stop, category = segments(entry, exit_, cuts)
    event = prepared["event"].to_numpy()[person] & (stop == exit_[person])
    design = np.column_stack([design_of_category[category], model.covariates[person]])
    varying = np.flatnonzero(design.max(axis=0) > design.min(axis=0))
    fit = fit_efron(aggregate_counting_process(start, stop, event, design[:, varying], strata=model.stratum[person]))
    coef = np.full(design.shape[1], np.nan)
    coef[varying] = fit.coef[0]
    se = np.full(design.shape[1], np.nan)
    se[varying] = fit.se[0]
    return coef, se


@pytest.mark.parametrize("adjust", ADJUSTMENTS)
def test_dose_and_separated_lag_models_equal_the_whole_cohort_fits(adjust):
    cohort, exposures = synthetic(n=2500, seed=11)
    exposures = with_doses(exposures)
    config = config_for(adjust)
    model = model_cohort(cohort, config)
    result = dose_response(model, exposures, "A01", [100.0, 365.0], 730)
    columns = ["exposure_start_age_days", dose_column(100), dose_column(365)]
    coef, se = whole_cohort_fit(model, exposures, "A01", columns, [730] * 3, np.vstack([np.zeros(3), np.eye(3)]))
    assert all(np.isfinite(coef[:3]))
    for k in range(3):
        assert np.log(result[f"hr_dose_{k + 1}"]) == pytest.approx(coef[k], abs=1e-8)
    trend = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    coef, se = whole_cohort_fit(model, exposures, "A01", columns, [730] * 3, trend)
    assert np.log(result["dose_trend_hr"]) == pytest.approx(coef[1], abs=1e-8)
    assert result["dose_trend_p"] == pytest.approx(2 * stats.norm.sf(abs(coef[1] / se[1])), rel=1e-6)
    # Every lag's model from the one table cut at all lags equals its own cut (recent exposure, then lagged).
    separated = separated_lag_estimates(model, exposures, "C03", [0.0, 5.0, 2.0])
    assert not any("lag0" in key for key in separated)
    for lag in (2, 5):
        separation = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        coef, se = whole_cohort_fit(model, exposures, "C03", ["exposure_start_age_days"] * 2, [0, lag_days(lag)], separation)
        assert np.isfinite(coef[1])
        assert separated[f"log_hr_separated_lag{lag}"] == pytest.approx(coef[1], abs=1e-8)
        assert separated[f"se_separated_lag{lag}"] == pytest.approx(se[1], rel=1e-8)


@pytest.mark.parametrize("adjust", ADJUSTMENTS)
def test_confirmation_equals_the_split_cohort_fit_and_lifelines(adjust):
    cohort, exposures = synthetic(n=2500, seed=12)
    config = config_for(adjust)
    hcu = cohort.select("person_id", n_classes_year_before_entry=(pl.col("person_id") * 7) % 10)
    model = model_cohort(cohort, config, hcu)
    fit = confirmation_fit(model, exposures, "B02", ["A01", "C03"], config, 730, "aggregated")
    # before: the whole cohort split at every switch (split_time_varying), aggregated row by row
    data = split_time_varying(model.prepared, exposures, ["B02", "A01", "C03"], 730).join(
        model.prepared.select("cohort_row", "hcu"), on="cohort_row"
    )
    cells = model.layout.cell_of_person[data["cohort_row"].to_numpy()]
    design = np.column_stack([data.select("B02", "A01", "C03").to_numpy(), model.layout.covariate_design[cells]])
    reference = fit_efron(aggregate_counting_process(
        data["start"].to_numpy(), data["stop"].to_numpy(), data["event"].to_numpy(), design.astype(np.float64),
        strata=model.layout.stratum_of_cell[cells],
    ))
    assert model.layout.covariate_names[-1].startswith("hcu=")
    assert fit["log_hr_confirmation"] == pytest.approx(reference.coef[0, 0], abs=1e-8)
    assert fit["se_confirmation"] == pytest.approx(reference.se[0, 0], rel=1e-8)
    lifelines = confirmation_fit(model, exposures, "B02", ["A01", "C03"], config, 730, "lifelines")
    assert fit["log_hr_confirmation"] == pytest.approx(lifelines["log_hr_confirmation"], abs=1e-6)
    assert fit["se_confirmation"] == pytest.approx(lifelines["se_confirmation"], rel=1e-5)


def test_a_use_category_without_events_is_left_out_at_the_limit_of_its_fit():
    """A health-care-use category in which nobody has the event has coefficient minus infinity: the
    confirmation cohort leaves its persons out (no follow-up, same row numbers), which is the fit's limit:
    the exposure estimate equals the fit on the cohort without them, and that of the plain fit, whose
    category coefficient walks towards minus infinity, to within its distance from the limit."""
    cohort, exposures = synthetic(n=2500, seed=15)
    config = config_for(ADJUSTMENTS[1])
    heavy = (pl.col("person_id") % 7 == 0) & ~pl.col("event")  # 7+ classes: never a case
    hcu = cohort.select("person_id", n_classes_year_before_entry=pl.when(heavy).then(9).otherwise(pl.col("person_id") % 4))
    model = model_cohort(cohort, config, hcu)
    assert model.hcu_left_out == ("7+",) and not any("hcu_4" in name for name in model.layout.covariate_names)
    assert model.prepared.height == cohort.height  # the same rows: one exposure index for every model
    fit = confirmation_fit(model, exposures, "B02", ["A01", "C03"], config, 730, "aggregated")
    kept = cohort.filter(~cohort.select(heavy).to_series())
    without = confirmation_fit(model_cohort(kept, config, hcu), exposures, "B02", ["A01", "C03"], config, 730, "aggregated")
    assert fit["log_hr_confirmation"] == pytest.approx(without["log_hr_confirmation"], abs=1e-12)
    assert fit["se_confirmation"] == pytest.approx(without["se_confirmation"], rel=1e-10)
    lifelines = confirmation_fit(model, exposures, "B02", ["A01", "C03"], config, 730, "lifelines")
    assert fit["log_hr_confirmation"] == pytest.approx(lifelines["log_hr_confirmation"], abs=1e-6)
    # The plain fit with the category's own column: the same estimate, after Newton steps towards -inf.
    plain = model_cohort(cohort, config)
    count = plain.prepared.join(hcu, on="person_id", maintain_order="left")["n_classes_year_before_entry"].to_numpy()
    labelled = plain.prepared.with_columns(hcu=pl.lit("hcu_") + pl.Series(np.searchsorted(HCU_BINS, count, side="right")).cast(pl.String))
    pieces, design = switch_segments(plain, exposures, ["B02", "A01", "C03"], 730)
    layout = risk_sets.cell_layout(labelled, "all", ["sex"], ["education", "birth_cohort", "hcu"])
    walked = fit_efron(segments_table(
        ModelCohort(labelled, layout, risk_sets.total_counts(labelled, layout, plain.time_span), plain.time_span), pieces, design
    ))
    assert walked.status[0] == "separation" and walked.coef[0, -1] < -10
    assert fit["log_hr_confirmation"] == pytest.approx(walked.coef[0, 0], abs=1e-6)


def test_switch_segments_cut_only_the_users_at_each_start_by_hand():
    cohort = pl.DataFrame({
        "person_id": [1, 2, 3, 4], "sex": ["F", "M", "F", "M"], "birth_year": pl.Series([1970] * 4, dtype=pl.Int32),
        "education": pl.Series([1, 1, 2, 2], dtype=pl.Int32), "entry_age_days": pl.Series([0, 0, 0, 0], dtype=pl.Int32),
        "exit_age_days": pl.Series([100, 100, 100, 100], dtype=pl.Int32), "event": [True, False, False, True],
    })
    exposures = pl.DataFrame({  # person 1: A and B start together; 2: A before entry, then B; 3: B after exit
        "person_id": [1, 1, 2, 2, 3], "atc_code": ["A", "B", "A", "B", "B"],
        "exposure_start_age_days": pl.Series([10, 10, -5, 50, 200], dtype=pl.Int32),
    })
    model = model_cohort(cohort, config_for())
    pieces, design = switch_segments(model, exposures, ["A", "B"], 0)
    person_id = model.prepared["person_id"].to_numpy()[pieces.person]
    found = sorted(zip(person_id.tolist(), pieces.start.tolist(), pieces.stop.tolist(),
                       [tuple(design[k].tolist()) for k in pieces.category], pieces.event.tolist(), strict=True))
    assert found == [(1, 10, 100, (1.0, 1.0), True), (2, 0, 50, (1.0, 0.0), False), (2, 50, 100, (1.0, 1.0), False)]
    assert design[0].tolist() == [0.0, 0.0]  # the unexposed: everyone else's follow-up, never cut


def test_candidates_in_threads_give_the_same_rows():
    """The person-level models of a level's candidates in a pool of two threads: the same numbers, in order."""
    cohort, exposures = synthetic(n=2500, seed=13)
    config = config_for()
    hcu = cohort.select("person_id", n_classes_year_before_entry=(pl.col("person_id") * 7) % 10)
    model = model_cohort(cohort, config)
    confirmation = aggregated_cohort(model.prepared, config, hcu)
    codes = ["C03", "A01", "B02"]
    frames = []
    for threads in (1, 2):
        with candidate_pool(threads, [model, confirmation], len(codes)) as pool:
            frames.append(submit_level_models(pool, config, model, confirmation, exposures, codes, codes[:2]).rows())
    assert frames[0]["atc_code"].to_list() == codes
    assert frames[0].equals(frames[1])


def test_count_grid_and_binary_search_give_the_same_risk_sets(monkeypatch):
    """`pattern_risk_sets` counts on a dense grid, or by binary searches when the grid would be too large: the
    same table either way."""
    cohort, exposures = synthetic(n=2500, seed=14)
    config = config_for()
    hcu = cohort.select("person_id", n_classes_year_before_entry=(pl.col("person_id") * 3) % 10)
    model = model_cohort(cohort, config, hcu)
    pieces, design = switch_segments(model, exposures, ["B02", "A01", "C03"], 730)
    grid = segments_table(model, pieces, design)
    monkeypatch.setattr(risk_sets, "_GRID_CELLS", 1)
    search = segments_table(model, pieces, design)
    assert grid.n_rows > 1000
    for field in ("fit_index", "risk_set_index", "n_at_risk", "n_events"):
        assert np.array_equal(getattr(grid, field), getattr(search, field)), field
    assert np.array_equal(grid.row_design(), search.row_design())


def test_exposure_rows_by_cohort_row_equal_the_person_id_search():
    """The exposure stage's `cohort_row` (the person's row in the cohort table, here in no particular order)
    indexes the whole cohort and a subset of it as the search by person_id does; a table built from another
    cohort is refused."""
    cohort, exposures = synthetic(n=2000, seed=15)
    cohort = cohort.sample(fraction=1.0, shuffle=True, seed=1)
    config = config_for()
    rows = cohort.with_row_index("cohort_row").select("person_id", pl.col("cohort_row").cast(pl.Int32))
    with_rows = exposures.join(rows, on="person_id", maintain_order="left")
    model = model_cohort(cohort, config)
    half = aggregated_cohort(model.prepared.filter(pl.col("person_id") % 2 == 0), config)
    assert model.row_of_file_row is None and half.row_of_file_row is not None
    for subset in (model, half):
        by_row, by_search = level_exposures(subset, with_rows), level_exposures(subset, exposures)
        assert by_row.bounds == by_search.bounds
        assert by_row.frame.select(by_search.frame.columns).equals(by_search.frame)
    assert level_exposures(half, with_rows).frame.height < with_rows.height
    other = with_rows.with_columns(cohort_row=(pl.col("cohort_row") + 1) % cohort.height)
    for subset in (model, half):
        with pytest.raises(ValueError, match="built from another cohort"):
            level_exposures(subset, other)
