"""The censoring models' Newton-Raphson logistic fit against scikit-learn's unpenalised model solved to convergence,
and the properties the bootstrap relies on: frequency weights equal duplicated rows, and the start does not change
the maximum."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from repurpose.trial_emulation.logistic import (
    PersonDesign,
    WarmStart,
    fit_logistic,
    probabilities,
    with_intercept,
)


def design(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous and binary covariates, a column collinear with two others, an outcome and frequencies 0-3."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n), rng.poisson(0.7, n)]).astype(float)
    x = np.column_stack([x, x[:, 1] + 2 * x[:, 2]])
    eta = -2.0 + 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.4 * x[:, 2]
    y = rng.random(n) < 1 / (1 + np.exp(-eta))
    return x, y, rng.integers(0, 4, n).astype(float)


def sklearn_probabilities(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    model = LogisticRegression(C=np.inf, solver="newton-cg", tol=1e-12, max_iter=1000).fit(x, y, sample_weight=w)
    return model.predict_proba(x)[:, 1]


def test_the_fit_equals_scikit_learn_with_frequency_weights_and_a_collinear_column():
    x, y, w = design(3000, 1)
    keep = w > 0
    fit = fit_logistic(with_intercept(x)[keep], y[keep], w[keep])
    assert fit.converged
    np.testing.assert_allclose(probabilities(with_intercept(x), fit.coef), sklearn_probabilities(x, y, w), atol=1e-9)


def test_frequency_weights_equal_duplicated_rows_and_the_start_does_not_change_the_maximum():
    x, y, w = design(2000, 2)
    keep = w > 0
    weighted = fit_logistic(with_intercept(x)[keep], y[keep], w[keep])
    repeat = np.repeat(np.arange(len(y)), w.astype(int))
    duplicated = fit_logistic(with_intercept(x)[repeat], y[repeat], np.ones(len(repeat)))
    far = fit_logistic(with_intercept(x)[keep], y[keep], w[keep], start=weighted.coef + np.array([0.5, -0.5, 0.5, -0.5, 0.5]))
    x1 = with_intercept(x)
    for other in (duplicated, far):
        np.testing.assert_allclose(probabilities(x1, other.coef), probabilities(x1, weighted.coef), atol=1e-10)
    warm = fit_logistic(x1[keep], y[keep], w[keep] * 1.0, start=weighted.coef)
    assert warm.n_iter < weighted.n_iter


def test_a_separated_group_goes_to_probability_one_and_the_other_rows_keep_their_own_fit():
    # rows of group g = 1 all have y = 1: the group's coefficient grows without bound; the other rows' probabilities
    # converge to the fit without the group (its indicator is then constant 0 and drops out)
    x, y, _ = design(1500, 3)
    group = (np.arange(len(y)) % 7 == 0).astype(float)
    y = y | (group == 1)
    full = np.column_stack([x[:, :3], group])
    fit = fit_logistic(with_intercept(full), y, np.ones(len(y)))
    assert fit.converged
    p = probabilities(with_intercept(full), fit.coef)
    assert np.all(p[group == 1] > 1 - 1e-9)
    rest = group == 0
    np.testing.assert_allclose(p[rest], sklearn_probabilities(x[rest, :3], y[rest], np.ones(rest.sum())), atol=1e-8)


def test_the_design_stored_by_person_and_pattern_gives_the_dense_products_and_fit():
    # rows of persons (a person-level covariate and the intercept are constant over a person's rows; the others,
    # including an all-zero column, vary): the stored design's products and fit are the dense matrix's
    x, y, w = design(3000, 4)
    rng = np.random.default_rng(4)
    person = rng.integers(0, 500, len(y))
    w = np.where(np.isin(person, rng.choice(500, 150, replace=False)), 0.0, 1.0 + (person % 3))  # whole persons drawn 0 times
    x1 = with_intercept(np.column_stack([rng.normal(size=500)[person], x[:, :3], np.zeros(len(y)), x[:, 3]]))
    stored = PersonDesign.build(x1, person)
    assert set(stored.person_columns) >= {0, 1, 5} and set(stored.row_columns) == {2, 3, 4, 6}
    b, v = rng.normal(size=x1.shape[1]), rng.random(len(y))
    np.testing.assert_allclose(stored.dot(b), x1 @ b, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(stored.rdot(v), x1.T @ v, rtol=1e-13, atol=1e-11)
    np.testing.assert_allclose(stored.gram(v), (x1 * v[:, None]).T @ x1, rtol=1e-13, atol=1e-10)
    keep = w > 0
    drawn = stored.rows_of(keep)
    np.testing.assert_allclose(drawn.gram(v[keep]), (x1[keep] * v[keep, None]).T @ x1[keep], rtol=1e-13, atol=1e-10)
    dense, by_parts = fit_logistic(x1[keep], y[keep], w[keep]), fit_logistic(drawn, y[keep], w[keep])
    assert by_parts.converged and by_parts.n_iter == dense.n_iter
    np.testing.assert_allclose(probabilities(stored, by_parts.coef), probabilities(x1, dense.coef), rtol=0, atol=1e-12)


def test_a_warm_start_gives_the_first_step_from_per_person_sums_and_the_same_fit():
    # a replicate's frequencies per person (some 0): the log-likelihood, score and information at the start from
    # the per-person parts equal the row sums, and the fit from them takes the same steps to the same maximum
    x, y, _ = design(3000, 5)
    rng = np.random.default_rng(5)
    person = rng.integers(0, 400, len(y))
    x1 = with_intercept(np.column_stack([rng.normal(size=400)[person], x[:, :3], x[:, 3]]))
    stored = PersonDesign.build(x1, person)
    start = fit_logistic(stored, y, np.ones(len(y))).coef
    warm = WarmStart.at(stored, y, start)
    f = rng.multinomial(400, np.full(400, 1 / 400)).astype(float)
    w = f[person]
    loglik, score, information = warm.at_frequencies(stored, w[stored.person_row])
    p = probabilities(x1, start)
    assert np.isclose(loglik, np.sum(w * (np.where(y, np.log(p), np.log1p(-p)))), rtol=1e-12)
    np.testing.assert_allclose(score, x1.T @ (w * (y - p)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(information, (x1 * (w * p * (1 - p))[:, None]).T @ x1, rtol=1e-12, atol=1e-10)
    keep = w > 0
    rows = stored.rows_of(keep)
    plain = fit_logistic(rows, y[keep], w[keep], start)
    from_sums = fit_logistic(rows, y[keep], w[keep], start, at_start=(loglik, score, information))
    assert from_sums.converged and from_sums.n_iter == plain.n_iter
    np.testing.assert_allclose(from_sums.coef, plain.coef, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(from_sums.fitted, probabilities(x1[keep], plain.coef), rtol=1e-12, atol=1e-14)
