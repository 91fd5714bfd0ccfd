"""Empirical-Bayes shrinkage of the screen's log hazard ratios: one hierarchical normal model per ATC level that
borrows strength from ATC siblings and from substances sharing a drug target.

Why: a drug-wide screen fits hundreds of classes; the most extreme raw estimates are mostly the noisiest
(few exposed cases). Shrinking each estimate towards what related estimates suggest, by an amount set by
its own precision, keeps an HR of 0.3 on 8 exposed cases from outranking an HR of 0.6 on 300; and where
biology and the ATC tree say effects should be alike (substances of one class, substances acting on one
target), a weak estimate agreeing with its relatives gains weight while one contradicting them loses it.

Model (per ATC level, both sexes, main lag), with b_i the screen's log HR and se_i its standard error:

    b_i = theta_i + e_i,   e_i ~ N(0, se_i^2)
    theta_i = m + sum_g z_ig a_g + sum_k y_ik t_k + v_i,
    a_g ~ N(0, tau_class^2)  (g: the parent ATC class, one level up),
    t_k ~ N(0, tau_target^2) (k: a drug target shared by at least two substances; level 5 only),
    v_i ~ N(0, tau^2)        (the class's own deviation).

Groups with a single member are left out (they cannot be told apart from v_i), groups with the same
members are one group (TLR7 and TLR9 of hydroxychloroquine alone count once), and a substance with
several targets loads 1/sqrt(number of its targets) on each, so its prior variance from targets is
tau_target^2 however many it has. m and the three variances are the maximum-likelihood fit of the
marginal b ~ N(m 1, V), V = tau_class^2 Z Z' + tau_target^2 Y Y' + diag(tau^2 + se_i^2), over every
fitted class of the level; a variance the data do not support is estimated as 0 and then that kind of
borrowing is off. With no groups this is the plain normal-normal model theta_i ~ N(m, tau^2).

The posterior of theta_i (plug-in: m and the variances taken as known) is computed without forming V,
through the group effects u = (a, t): with D = diag(tau^2 + se_i^2) and w_i = tau^2 / (tau^2 + se_i^2),

    u | b ~ N(Sigma_u L' D^-1 (b - m), Sigma_u),   Sigma_u = (Lambda^-1 + L' D^-1 L)^-1,
    E[theta_i | b] = m + (1 - w_i) L_i E[u | b] + w_i (b_i - m),
    Var[theta_i | b] = (1 - w_i)^2 L_i Sigma_u L_i' + w_i se_i^2,

(L = [Z Y], Lambda the group variances), cheap for thousands of classes (a k x k system, k the number
of groups). The ranking orders by the posterior z (posterior mean / posterior sd); the raw estimate is
always shown beside the shrunken one. A row whose prior variance is 0 (every variance 0, or tau = 0 and
no group) keeps its raw estimate (the caller says so), so ordering never loses information.
The matrices are small (k x k): BLAS runs on one thread here, since a multi-threaded BLAS on a loaded
machine made a fit take seconds instead of 0.1 s. May import numpy, scipy and threadpoolctl only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from repurpose.lazy import lazy_module

linalg = lazy_module("scipy.linalg")
optimize = lazy_module("scipy.optimize")
stats = lazy_module("scipy.stats")

GROUP_KINDS = ("class", "target")
"""Kinds of groups an estimate can borrow from: its parent ATC class, and drug targets it shares."""

MIN_SD = 1e-4
"""A standard deviation below this is reported as 0 (the likelihood is flat towards the boundary)."""


@dataclass(frozen=True)
class Groups:
    """Group loadings of a level's `n` estimates: per kind, an (n x groups) matrix."""

    n: int
    loadings: dict[str, np.ndarray]

    @classmethod
    def of(cls, n: int, labels: dict[str, Sequence[Sequence[str]]] | None = None) -> Groups:
        """Groups from labels per kind (`labels[kind][i]`: the groups of estimate i). Groups with fewer than two
        members are left out and groups with the same members merged; an estimate loads 1/sqrt(its groups)."""
        loadings = {}
        for kind, per_row in (labels or {}).items():
            if len(per_row) != n:
                raise ValueError(f"{len(per_row)} {kind} labels for {n} estimates")
            members: dict[str, set[int]] = {}
            for i, names in enumerate(per_row):
                for name in set(names):
                    members.setdefault(name, set()).add(i)
            shared = sorted({tuple(sorted(rows)) for rows in members.values() if len(rows) >= 2})
            matrix = np.zeros((n, len(shared)))
            for j, rows in enumerate(shared):
                matrix[list(rows), j] = 1.0
            n_groups = matrix.sum(axis=1, keepdims=True)
            loadings[kind] = np.divide(matrix, np.sqrt(n_groups), out=np.zeros_like(matrix), where=n_groups > 0)
        return cls(n, loadings)

    def subset(self, rows: np.ndarray) -> Groups:
        """The loadings of some estimates (a boolean mask or indices)."""
        picked = np.arange(self.n)[rows]
        return Groups(picked.size, {kind: matrix[picked] for kind, matrix in self.loadings.items()})

    def matrix(self) -> tuple[np.ndarray, list[str]]:
        """All loadings side by side, and the kind of each column."""
        kinds = [kind for kind in GROUP_KINDS if kind in self.loadings for _ in range(self.loadings[kind].shape[1])]
        blocks = [self.loadings[kind] for kind in GROUP_KINDS if kind in self.loadings]
        return (np.hstack(blocks) if blocks else np.zeros((self.n, 0))), kinds

    def n_groups(self, kind: str) -> int:
        return int(self.loadings[kind].shape[1]) if kind in self.loadings else 0


@dataclass(frozen=True)
class LevelPrior:
    """The fitted prior of one ATC level's log HRs: mean `mean`, own sd `tau`, and the sd of each kind of
    shared group effect (`tau_group[kind]`, 0 or absent = no borrowing of that kind)."""

    mean: float
    tau: float
    n_classes: int
    tau_group: dict[str, float] = field(default_factory=dict)
    n_groups: dict[str, int] = field(default_factory=dict)

    def group_sd(self, kind: str) -> float:
        return self.tau_group.get(kind, 0.0)


@dataclass(frozen=True)
class Shrunken:
    """Posterior of each estimate: mean and sd on the log scale, 95% limits and the posterior z."""

    log_hr: np.ndarray
    sd: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class _Marginal:
    """Pieces of the marginal model at given variances, shared by the likelihood and the posterior."""

    d: np.ndarray  # tau^2 + se^2
    scaled: np.ndarray  # L Lambda^(1/2)
    chol: np.ndarray  # Cholesky factor of I + Lambda^(1/2) L' D^-1 L Lambda^(1/2)

    @classmethod
    def at(cls, se: np.ndarray, loadings: np.ndarray, tau: float, group_sd: np.ndarray) -> _Marginal:
        d = tau**2 + se**2
        scaled = loadings * group_sd
        if not scaled.shape[1]:
            return cls(d=d, scaled=scaled, chol=np.zeros((0, 0)))
        inner = np.eye(scaled.shape[1]) + scaled.T @ (scaled / d[:, None])
        return cls(d=d, scaled=scaled, chol=linalg.cholesky(inner, lower=True))

    def solve(self, r: np.ndarray) -> np.ndarray:
        """V^-1 r by the Woodbury identity."""
        dr = r / self.d
        if not self.scaled.shape[1]:
            return dr
        y = linalg.cho_solve((self.chol, True), self.scaled.T @ dr)
        return dr - (self.scaled @ y) / self.d

    def log_det(self) -> float:
        return float(np.sum(np.log(self.d)) + 2 * np.sum(np.log(np.diag(self.chol))))

    def gls_mean(self, b: np.ndarray) -> float:
        ones = self.solve(np.ones_like(b))
        return float(ones @ b / ones.sum())


def _usable(b: np.ndarray, se: np.ndarray) -> np.ndarray:
    return np.isfinite(b) & np.isfinite(se) & (se > 0)


@threadpool_limits.wrap(limits=1, user_api="blas")
def fit_level_prior(
    log_hr: np.ndarray, se: np.ndarray, groups: Groups | None = None, *, min_classes: int = 5
) -> LevelPrior | None:
    """Maximum-likelihood prior of one level (module docstring); None when fewer than `min_classes` usable
    estimates. The mean is profiled out (its generalised-least-squares value at each set of variances)."""
    b, s = np.asarray(log_hr, dtype=np.float64), np.asarray(se, dtype=np.float64)
    usable = _usable(b, s)
    if int(usable.sum()) < min_classes:
        return None
    b, s = b[usable], s[usable]
    loadings, column_kind = (groups or Groups.of(usable.size)).subset(usable).matrix()
    present = loadings.any(axis=0)  # a group whose members are all unusable here
    loadings, column_kind = loadings[:, present], [k for k, p in zip(column_kind, present, strict=True) if p]
    kinds = [kind for kind in GROUP_KINDS if kind in column_kind]
    column_of_kind = np.array([kinds.index(k) for k in column_kind], dtype=int)

    def marginal(log_sds: np.ndarray) -> _Marginal:
        sds = np.exp(log_sds)
        return _Marginal.at(s, loadings, float(sds[0]), sds[1:][column_of_kind] if kinds else np.zeros(0))

    def negative_loglik(log_sds: np.ndarray) -> float:
        model = marginal(log_sds)
        r = b - model.gls_mean(b)
        return 0.5 * (model.log_det() + float(r @ model.solve(r)))

    spread = np.log(max(float(np.std(b)), 1e-3))
    starts = [np.full(1 + len(kinds), spread)] + [
        np.array([spread] + [np.log(MIN_SD)] * len(kinds)),
        np.array([np.log(MIN_SD)] + [spread] * len(kinds)),
    ]
    bounds = [(np.log(MIN_SD) - 2, np.log(10.0))] * (1 + len(kinds))
    best = min(
        (optimize.minimize(negative_loglik, x0, method="L-BFGS-B", bounds=bounds) for x0 in starts[: 1 + 2 * bool(kinds)]),
        key=lambda result: result.fun,
    )
    sds = [float(v) if v >= MIN_SD else 0.0 for v in np.exp(best.x)]
    return LevelPrior(
        mean=marginal(best.x).gls_mean(b),
        tau=sds[0],
        n_classes=int(b.size),
        tau_group=dict(zip(kinds, sds[1:], strict=True)),
        n_groups={kind: int(sum(k == kind for k in column_kind)) for kind in kinds},
    )


@threadpool_limits.wrap(limits=1, user_api="blas")
def shrink(log_hr: np.ndarray, se: np.ndarray, prior: LevelPrior | None, groups: Groups | None = None) -> Shrunken:
    """Posterior means, sds, 95% limits and z of `log_hr` under `prior`, borrowing through `groups` (the same
    kinds of groups the prior was fitted with). A row with no prior variance, or without a prior at all, keeps
    its raw estimate (the caller says so) so that ordering never loses information."""
    b, s = np.asarray(log_hr, dtype=np.float64), np.asarray(se, dtype=np.float64)
    mean, sd = b.copy(), s.copy()
    usable = _usable(b, s)
    if prior is not None and usable.any():
        loadings, column_kind = (groups or Groups.of(b.size)).subset(usable).matrix()
        group_sd = np.array([prior.group_sd(kind) for kind in column_kind])
        model = _Marginal.at(s[usable], loadings, prior.tau, group_sd)
        r = b[usable] - prior.mean
        weight = prior.tau**2 / model.d
        effects_mean = model.scaled.T @ model.solve(r)  # E[Lambda^-1/2 u | b]
        row_effect = model.scaled @ effects_mean
        # Var of L_i u | b: rows of scaled times (I + ...)^-1 times their transposes
        half = linalg.solve_triangular(model.chol, model.scaled.T, lower=True) if loadings.shape[1] else np.zeros((0, r.size))
        row_effect_var = np.sum(half**2, axis=0)
        post_mean = prior.mean + (1 - weight) * row_effect + weight * r
        post_var = (1 - weight) ** 2 * row_effect_var + weight * s[usable] ** 2
        informative = (prior.tau > 0) | (np.sum(loadings**2 * group_sd**2, axis=1) > 0)
        rows = np.flatnonzero(usable)[informative]
        mean[rows], sd[rows] = post_mean[informative], np.sqrt(post_var[informative])
    z_crit = stats.norm.ppf(0.975)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, mean / sd, np.nan)
    return Shrunken(log_hr=mean, sd=sd, ci_lower=mean - z_crit * sd, ci_upper=mean + z_crit * sd, z=z)
