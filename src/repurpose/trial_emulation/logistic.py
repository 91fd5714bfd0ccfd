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
approach 0 or 1 and every other row's probability converges.

A censoring model's rows are person x interval, and most of its columns (the intercept, the baseline covariates, the
clinic indicators) are the same on every row of a person: `PersonDesign` stores them once per person and the other
columns (time-varying covariates, interval indicators) once per distinct pattern, so that the products a Newton step
needs (X b, X'r, X'WX) cost persons x columns plus rows x a few columns instead of rows x columns x columns (the
bootstrap refits every model in every replicate). A replicate's refit starts from the point estimate, where each
person's part of the log-likelihood, score and information is known once (`WarmStart`): its first Newton step is
then sums over persons weighted by the replicate's frequencies, without a pass over the rows. Imports numpy and
scipy.sparse.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

MAX_ITER = 100
TOL = 1e-10


@dataclass(frozen=True)
class LogisticFit:
    """Coefficients (intercept first), whether the fit converged, the iterations it took and the fitted P(y = 1)
    of the fitted rows (the caller needs them: no second pass over the design)."""

    coef: np.ndarray
    converged: bool
    n_iter: int
    fitted: np.ndarray


def with_intercept(x: np.ndarray) -> np.ndarray:
    """The design with a leading column of ones (the layout `fit_logistic` and `probabilities` take)."""
    return np.hstack([np.ones((x.shape[0], 1)), x])


@dataclass(frozen=True)
class PersonDesign:
    """A design matrix whose rows belong to persons, stored by parts: the columns constant over each person's rows
    (`person_columns`, values per person in `person_x`) and the others (`row_columns`, values per distinct pattern
    in `pattern_x`); row r is person `row_person[r]` with pattern `row_pattern[r]`. Same products as the dense
    matrix (up to the order of summation)."""

    person_x: np.ndarray
    row_person: np.ndarray
    pattern_x: np.ndarray
    row_pattern: np.ndarray
    person_columns: np.ndarray
    row_columns: np.ndarray
    by_person: sparse.csr_matrix  # persons x rows incidence: sums over each person's rows

    @classmethod
    def build(cls, x1: np.ndarray, person: np.ndarray) -> PersonDesign:
        """The parts of dense design `x1` whose rows belong to `person` (any codes)."""
        codes, first, row_person = np.unique(person, return_index=True, return_inverse=True)
        constant = np.all(x1 == x1[first[row_person]], axis=0)
        person_columns, row_columns = np.flatnonzero(constant), np.flatnonzero(~constant)
        pattern_x, row_pattern = _distinct_rows(x1[:, row_columns])
        return cls(np.ascontiguousarray(x1[first][:, person_columns]), row_person, pattern_x, row_pattern,
                   person_columns, row_columns, _incidence(row_person, len(codes)))  # fmt: skip

    def rows_of(self, keep: np.ndarray) -> PersonDesign:
        """The design of the rows where `keep` (a bootstrap replicate's persons drawn: the others' rows weigh 0)."""
        kept_person = np.zeros(len(self.person_x), bool)
        kept_person[self.row_person[keep]] = True
        row_person = (np.cumsum(kept_person) - 1)[self.row_person[keep]]
        return PersonDesign(self.person_x[kept_person], row_person, self.pattern_x, self.row_pattern[keep], self.person_columns,
                            self.row_columns, _incidence(row_person, int(kept_person.sum())))  # fmt: skip

    @cached_property
    def person_row(self) -> np.ndarray:
        """A row of each person (its first), in the persons' order: per-row values constant over a person's rows
        (a bootstrap frequency) read per person."""
        return self.by_person.indices[self.by_person.indptr[:-1]]

    @cached_property
    def person_pattern(self) -> sparse.csr_matrix:
        """Persons x patterns, one entry per row (its person's row, its pattern's column; in `by_person`'s order):
        the structure of the cross term of `gram`, built once."""
        return sparse.csr_matrix((np.ones(len(self.row_person)), self.row_pattern[self.by_person.indices], self.by_person.indptr),
                                 shape=(len(self.person_x), len(self.pattern_x)))  # fmt: skip

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_person), len(self.person_columns) + len(self.row_columns)

    def dot(self, coef: np.ndarray) -> np.ndarray:
        """X b per row."""
        return (self.person_x @ coef[self.person_columns])[self.row_person] + (self.pattern_x @ coef[self.row_columns])[self.row_pattern]

    def rdot(self, r: np.ndarray) -> np.ndarray:
        """X'r."""
        out = np.empty(self.shape[1])
        out[self.person_columns] = self.person_x.T @ (self.by_person @ r)
        out[self.row_columns] = self.pattern_x.T @ np.bincount(self.row_pattern, weights=r, minlength=len(self.pattern_x))
        return out

    def gram(self, v: np.ndarray) -> np.ndarray:
        """X' diag(v) X."""
        pc, rc = self.person_columns, self.row_columns
        out = np.empty((self.shape[1], self.shape[1]))
        out[np.ix_(pc, pc)] = (self.person_x * (self.by_person @ v)[:, None]).T @ self.person_x
        counts = np.bincount(self.row_pattern, weights=v, minlength=len(self.pattern_x))
        out[np.ix_(rc, rc)] = (self.pattern_x * counts[:, None]).T @ self.pattern_x
        person_pattern = self.person_pattern.copy()  # same structure, this call's values
        person_pattern.data = v[self.by_person.indices]
        cross = self.person_x.T @ (person_pattern @ self.pattern_x)
        out[np.ix_(pc, rc)] = cross
        out[np.ix_(rc, pc)] = cross.T
        return out

    def same_as(self, other: PersonDesign) -> bool:
        """Whether two designs are the same matrix stored the same way."""
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in
                   ("person_x", "row_person", "pattern_x", "row_pattern", "person_columns", "row_columns"))  # fmt: skip


def _incidence(row_person: np.ndarray, n_persons: int) -> sparse.csr_matrix:
    """Persons x rows incidence (a person's row holds a 1 in each of its rows' columns, in row order), built
    directly as CSR (a stable sort by person) instead of through COO."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(row_person, minlength=n_persons))])
    return sparse.csr_matrix((np.ones(len(row_person)), np.argsort(row_person, kind="stable"), indptr),
                             shape=(n_persons, len(row_person)))  # fmt: skip


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of `x` and each row's index among them (a mixed-radix code of the columns' value ranks:
    faster than np.unique(axis=0))."""
    code, size = np.zeros(len(x), np.int64), 1
    for column in x.T:
        if np.all((column == 0) | (column == 1)):  # an indicator is its own rank (no sort)
            n_values, rank = 2, column.astype(np.int64)
        else:
            values, rank = np.unique(column, return_inverse=True)
            n_values = len(values)
        if size * n_values >= 2**62:
            size, code = len(code), np.unique(code, return_inverse=True)[1]
        code, size = code * n_values + rank, size * n_values
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    return x[first], inverse


class _Dense:
    """A dense design matrix with `PersonDesign`'s products."""

    def __init__(self, x1: np.ndarray) -> None:
        self.x1, self.shape = x1, x1.shape

    def dot(self, coef: np.ndarray) -> np.ndarray:
        return self.x1 @ coef

    def rdot(self, r: np.ndarray) -> np.ndarray:
        return self.x1.T @ r

    def gram(self, v: np.ndarray) -> np.ndarray:
        return (self.x1 * v[:, None]).T @ self.x1


Design = np.ndarray | PersonDesign
"""A design with the intercept column: dense, or stored by parts (`PersonDesign`)."""


def _as_design(x1: Design) -> PersonDesign | _Dense:
    return x1 if isinstance(x1, PersonDesign) else _Dense(x1)


@dataclass(frozen=True)
class WarmStart:
    """Coefficients to start refits of a `PersonDesign` from (a bootstrap replicate's, from the point estimate's),
    with each person's part of the log-likelihood, score and information at them (every row of weight 1). A refit
    with per-person frequencies f gets its first Newton step's quantities as f-weighted sums over persons
    (`at_frequencies`) instead of a pass over the rows: the same sums in another order, so the same steps up to
    rounding."""

    coef: np.ndarray
    loglik: np.ndarray  # per person
    score: np.ndarray  # persons x columns
    information: np.ndarray  # per person: sum of p (1 - p) over its rows
    cross: np.ndarray  # persons x row columns: sum of p (1 - p) z over its rows (z: the row's pattern)
    by_pattern: sparse.csr_matrix  # persons x patterns: p (1 - p) of each row

    @classmethod
    def at(cls, design: PersonDesign, y: np.ndarray, coef: np.ndarray) -> WarmStart:
        """The per-person parts at `coef` of design `design` with outcome `y`."""
        y = np.asarray(y, bool)
        eta = design.dot(coef)
        e = np.exp(-np.abs(eta))
        p = _expit(eta, e)
        v, r = p * (1.0 - p), np.where(y, 1.0, 0.0) - p
        terms = np.where(y, eta, 0.0) - (np.maximum(eta, 0.0) + np.log1p(e))
        by_person, z = design.by_person, design.pattern_x[design.row_pattern]
        score = np.empty((len(design.person_x), design.shape[1]))
        score[:, design.person_columns] = design.person_x * (by_person @ r)[:, None]
        score[:, design.row_columns] = by_person @ (z * r[:, None])
        by_pattern = design.person_pattern.copy()
        by_pattern.data = v[by_person.indices]
        return cls(np.array(coef, float), by_person @ terms, score, by_person @ v, by_person @ (z * v[:, None]), by_pattern)

    def at_frequencies(self, design: PersonDesign, f: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(log-likelihood, score, information) at `coef` with rows weighted by their person's frequency `f`
        (per person, in `design`'s person order), as `fit_logistic`'s `at_start`."""
        pc, rc = design.person_columns, design.row_columns
        information = np.empty((design.shape[1], design.shape[1]))
        information[np.ix_(pc, pc)] = (design.person_x * (f * self.information)[:, None]).T @ design.person_x
        cross = (design.person_x * f[:, None]).T @ self.cross
        information[np.ix_(pc, rc)] = cross
        information[np.ix_(rc, pc)] = cross.T
        counts = self.by_pattern.T @ f
        information[np.ix_(rc, rc)] = (design.pattern_x * counts[:, None]).T @ design.pattern_x
        return float(f @ self.loglik), self.score.T @ f, information


def _log_likelihood(eta: np.ndarray, wy: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """sum w [y eta - log(1 + exp(eta))] (`wy` = w y), computed without overflow as two dot products, and
    exp(-|eta|) (which `_expit` reuses)."""
    e = np.exp(-np.abs(eta))
    softplus = np.log1p(e)
    softplus += np.maximum(eta, 0.0)
    return float(wy @ eta - w @ softplus), e


def _expit(eta: np.ndarray, e: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-eta)), from e = exp(-|eta|) when given."""
    e = np.exp(-np.abs(eta)) if e is None else e
    return np.where(eta >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def probabilities(x1: Design, coef: np.ndarray) -> np.ndarray:
    """Fitted P(y = 1) of design rows `x1` (with the intercept column)."""
    return _expit(_as_design(x1).dot(coef))


def fit_logistic(x1: Design, y: np.ndarray, w: np.ndarray, start: np.ndarray | None = None, *,
                 at_start: tuple[float, np.ndarray, np.ndarray] | None = None, max_iter: int = MAX_ITER,
                 tol: float = TOL) -> LogisticFit:  # fmt: skip
    """Maximum likelihood of the weighted logistic model (module doc) on design `x1` (with the intercept column),
    0/1 outcome `y` and frequency weights `w` (>= 0; a row of weight 0 adds nothing), from `start` (zeros when
    None or when `start` fits worse than zeros). `at_start`: the log-likelihood, score and information at `start`
    when known (`WarmStart.at_frequencies`): the first step is then taken without a pass over the rows."""
    y = np.asarray(y, bool)
    x = _as_design(x1)
    w = np.asarray(w, float)
    y_value = np.where(y, 1.0, 0.0)
    wy = w * y_value
    beta, eta = np.zeros(x.shape[1]), np.zeros(len(y))
    loglik, e = -np.log(2.0) * float(np.sum(w)), np.ones(len(y))  # at zero: every probability 1/2
    known = None
    if start is not None:
        if at_start is not None:
            warm, known = at_start[0], at_start[1:]
            warm_eta, warm_e = eta, e  # not needed: the first step uses `known`, then the line search's eta
        else:
            warm_eta = x.dot(start)
            warm, warm_e = _log_likelihood(warm_eta, wy, w)
        if warm > loglik:
            beta, eta, e, loglik = np.array(start, float), warm_eta, warm_e, warm
        else:
            known = None
    for iteration in range(1, max_iter + 1):
        if known is not None:
            (gradient, hessian), known = known, None
        else:
            p = _expit(eta, e)
            gradient = x.rdot(w * (y_value - p))
            hessian = x.gram(w * p * (1.0 - p))
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        decrement = float(gradient @ step)
        for _ in range(40):
            trial_eta = x.dot(beta + step)
            trial, trial_e = _log_likelihood(trial_eta, wy, w)
            if trial >= loglik - 1e-12 * abs(loglik):
                break
            step = step / 2
        beta, eta, e, loglik = beta + step, trial_eta, trial_e, trial
        if decrement < tol or np.max(np.abs(step)) < tol:
            return LogisticFit(beta, True, iteration, _expit(eta, e))
    return LogisticFit(beta, False, max_iter, _expit(eta, e))
