"""Unpenalised logistic regression with frequency weights by Newton-Raphson: the censoring models' fit.

Why not scikit-learn's lbfgs: the censoring models are refitted in every bootstrap replicate on the same rows with
new frequencies, and lbfgs needed 300 to 500 iterations from zero per fit (sometimes stopping at its limit before
converging); Newton's method started from the point estimate's coefficients converges in a few steps to the same
maximum likelihood (quadratically, to machine precision), and a row of frequency 0 is dropped, not carried.

The model: P(y = 1 | x) = 1 / (1 + exp(-(b0 + x b))), maximising sum_i w_i [y_i eta_i - log(1 + exp(eta_i))].
Each step solves H d = g (H = X'WX with W = w p (1 - p), g = X'w(y - p), X with the intercept column) by least
squares, so a design column that is constant or collinear in the rows (an interval indicator of the last interval's
model, a clinic drawn by no one) takes the minimum-norm step and the fitted probabilities, which are unique, are
unaffected; the step is halved until the log-likelihood does not fall. Converged when the step is below `tol` in
every coefficient or the Newton decrement g'd (twice the expected gain) was below `tol` (the step taken then
leaves an error of the order of its square): the second stops a fit
with (quasi-)separation, whose coefficients grow without bound while the probabilities of the separated rows
approach 0 or 1 and every other row's probability converges. Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 100
TOL = 1e-10


@dataclass(frozen=True)
class LogisticFit:
    """Coefficients (intercept first), whether the fit converged and the iterations it took."""

    coef: np.ndarray
    converged: bool
    n_iter: int


def with_intercept(x: np.ndarray) -> np.ndarray:
    """The design with a leading column of ones (the layout `fit_logistic` and `probabilities` take)."""
    return np.hstack([np.ones((x.shape[0], 1)), x])


def _log_likelihood(eta: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """sum w [y eta - log(1 + exp(eta))], computed without overflow."""
    return float(np.sum(w * (np.where(y, eta, 0.0) - (np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta)))))))


def _expit(eta: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(eta))
    return np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def probabilities(x1: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Fitted P(y = 1) of design rows `x1` (with the intercept column)."""
    return _expit(x1 @ coef)


def fit_logistic(x1: np.ndarray, y: np.ndarray, w: np.ndarray, start: np.ndarray | None = None, *,
                 max_iter: int = MAX_ITER, tol: float = TOL) -> LogisticFit:  # fmt: skip
    """Maximum likelihood of the weighted logistic model (module doc) on design `x1` (with the intercept column),
    0/1 outcome `y` and frequency weights `w` (all positive: drop rows of weight 0 before), from `start` (zeros
    when None or when `start` fits worse than zeros)."""
    y = np.asarray(y, bool)
    beta = np.zeros(x1.shape[1])
    loglik = _log_likelihood(np.zeros(len(y)), y, w)
    if start is not None:
        warm = _log_likelihood(x1 @ start, y, w)
        if warm > loglik:
            beta, loglik = np.array(start, float), warm
    for iteration in range(1, max_iter + 1):
        p = probabilities(x1, beta)
        gradient = x1.T @ (w * (np.where(y, 1.0, 0.0) - p))
        hessian = (x1 * (w * p * (1.0 - p))[:, None]).T @ x1
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        decrement = float(gradient @ step)
        for _ in range(40):
            trial = _log_likelihood(x1 @ (beta + step), y, w)
            if trial >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2
        beta, loglik = beta + step, trial
        if decrement < tol or np.max(np.abs(step)) < tol:
            return LogisticFit(beta, True, iteration)
    return LogisticFit(beta, False, max_iter)
