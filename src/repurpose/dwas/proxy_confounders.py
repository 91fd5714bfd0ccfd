"""The confirmation model's proxy confounders: per candidate, the other classes of its level most associated
with both its use and the outcome, chosen by two L1-penalised logistic models (`select_proxy_confounders`).

Owns that selection only; the confirmation model that adjusts for the chosen classes is
`repurpose.dwas.person_models`. Imports numpy, polars, scipy.sparse and scikit-learn (on first use).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from repurpose.lazy import lazy_module

sparse = lazy_module("scipy.sparse")
linear_model = lazy_module("sklearn.linear_model")


def select_proxy_confounders(
    prepared: pl.DataFrame,
    cohort_row: pl.Series,
    bounds: dict[str, tuple[int, int]],
    classes: list[str],
    codes: list[str],
    settings: dict[str, Any],
    seed: int = 0,
) -> dict[str, list[str]]:
    """Per candidate, the other classes of its level most associated with both exposure and outcome.

    Two L1-penalised logistic models on ever-use indicators of every class of the level (persons x
    classes, sparse): outcome ~ all classes (once per level), and candidate ~ all other classes (per
    candidate). Classes with a non-zero coefficient in both are ranked by |coef_outcome| x
    |coef_exposure| and the first `max_adjustment_classes` kept (a high-dimensional proxy adjustment
    in the spirit of hdPS, Schneeweiss et al. 2009, with the lasso doing the selection). Ancestors and
    descendants cannot occur (one level), and the candidate's own ATC siblings are allowed. `cohort_row` and
    `bounds` are the level's table indexed for `prepared`'s persons (`LevelExposures.frame["cohort_row"]`, its
    class slices `LevelExposures.bounds`), `classes` every class of the table.
    """
    confirm = settings["confirmation"]
    column_of = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    n_sample = min(prepared.height, int(confirm["l1_sample_size"]))
    sample = np.sort(rng.choice(prepared.height, n_sample, replace=False))
    outcome = prepared["event"].to_numpy()
    # Outcome model: every case plus the sampled persons (case-base sampling keeps the coefficients).
    outcome_rows = np.union1d(sample, np.flatnonzero(outcome))
    # The ever-use matrix of these persons only (the rows of the whole cohort's matrix: the same entries):
    # their table rows are found with one boolean gather, and each one's class from the slices' starts.
    member = np.zeros(prepared.height, dtype=bool)
    member[outcome_rows] = True
    table_row = cohort_row.to_numpy()
    used = np.flatnonzero(member[table_row])
    sliced = sorted((first, column_of[code]) for code, (first, length) in bounds.items() if length)
    starts = np.array([first for first, _ in sliced], dtype=np.int64)
    columns = np.array([j for _, j in sliced], dtype=np.int64)
    column = columns[np.searchsorted(starts, used, side="right") - 1] if used.size else used
    row = np.searchsorted(outcome_rows, table_row[used])
    matrix = sparse.csr_matrix((np.ones(used.shape[0]), (row, column)), shape=(outcome_rows.shape[0], len(classes)))
    matrix.data[:] = 1.0
    model = linear_model.LogisticRegression(l1_ratio=1.0, solver="liblinear", C=confirm["l1_C"], max_iter=200, random_state=seed)
    model.fit(matrix, outcome[outcome_rows])
    outcome_coef = model.coef_[0]
    chosen: dict[str, list[str]] = {}
    sampled = matrix[np.searchsorted(outcome_rows, sample)]
    for code in codes:
        j = column_of.get(code)
        if j is None:
            chosen[code] = []
            continue
        target = sampled[:, j].toarray().ravel()
        if target.sum() < 5 or target.sum() > len(target) - 5:
            chosen[code] = []
            continue
        others = np.setdiff1d(np.arange(len(classes)), [j])
        exposure_model = linear_model.LogisticRegression(l1_ratio=1.0, solver="liblinear", C=confirm["l1_C"], max_iter=200, random_state=seed)
        exposure_model.fit(sampled[:, others], target)
        strength = np.abs(exposure_model.coef_[0]) * np.abs(outcome_coef[others])
        order = np.argsort(-strength)
        chosen[code] = [classes[others[k]] for k in order[: confirm["max_adjustment_classes"]] if strength[k] > 0]
    return chosen
