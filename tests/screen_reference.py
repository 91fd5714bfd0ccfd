"""The screen's reference in the tests: the same model by the general engine on risk sets built by binary search
over sorted keys (`risk_sets.build_risk_sets`, `fit_efron`), slower than and independent of the screen's fast
paths (`screen_binary`, `screen_covariates`), which tests/test_screen.py compares with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl

from repurpose.cox.engine import fit_efron
from repurpose.dwas.risk_sets import build_risk_sets, cell_layout, exposed_rows, total_counts
from repurpose.dwas.screen_counts import ClassCounts, class_results, classes_to_fit
from repurpose.schemas import DAYS_PER_YEAR


def screen_general(
    cohort: pl.DataFrame, exposures: pl.DataFrame, classes: list[str], screen: dict[str, Any], time_span: int
) -> Iterator[list[tuple[str, float, pl.DataFrame]]]:
    """The screen with the general engine (any covariates): per sex group and lag, a (sex group, lag, part)."""
    adjust, min_cases = screen["adjust"], screen["min_exposed_cases"]
    for sex_group in screen["sex_strata"]:
        layout = cell_layout(cohort, sex_group, adjust["strata"], adjust["covariates"])
        totals = total_counts(cohort, layout, time_span)
        members = layout.cell_of_person >= 0
        group_size = (int(members.sum()), int(cohort["event"].to_numpy()[members].sum()))
        for lag in screen["lags_years"]:
            class_index, cell, start, exit_, event = exposed_rows(cohort, exposures, layout, lag)
            counts = ClassCounts(
                np.bincount(class_index, minlength=len(classes)),
                np.bincount(class_index[event], minlength=len(classes)),
                np.bincount(class_index, weights=(exit_ - start) / DAYS_PER_YEAR, minlength=len(classes)),
            )
            fit_of_class = classes_to_fit(counts, min_cases)
            n_fits = int(fit_of_class.max()) + 1
            result = None
            if n_fits:
                table = build_risk_sets(
                    layout, totals, class_index, cell, start, exit_, event, fit_of_class, n_fits, time_span
                )
                result = fit_efron(table)
            yield [(sex_group, lag, class_results(classes, counts, fit_of_class, result, lag, sex_group, group_size, min_cases))]
