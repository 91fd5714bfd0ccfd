"""Empirical-Bayes shrinkage of the screen's log hazard ratios, one normal-normal model per ATC level.

Why: a drug-wide screen fits hundreds of classes; the most extreme raw estimates are mostly the noisiest
(few exposed cases). A normal-normal model shrinks each estimate towards what the level as a whole
suggests, by an amount set by its own precision, so an HR of 0.3 on 8 exposed cases no longer outranks
an HR of 0.6 on 300.

Model (per ATC level, both sexes, main lag): the screen's log HR `b_i ~ N(theta_i, se_i^2)` and the true
log HRs `theta_i ~ N(m, tau^2)`. `m` and `tau^2` are the maximum-likelihood fit of the marginal
`b_i ~ N(m, tau^2 + se_i^2)` over every fitted class of the level (the same likelihood as the empirical
null in `repurpose.dwas.calibration`, but over all classes: here tau is the spread of true effects plus
systematic error, not the null). The posterior of theta_i is normal with

    weight w_i = tau^2 / (tau^2 + se_i^2),  mean m + w_i (b_i - m),  variance w_i se_i^2.

The ranking orders by the posterior z (`posterior mean / posterior sd`), the evidence that the class's
true effect lies on its side of 1 (a two-sided tail of it is a local false-sign rate); the raw estimate
is always shown beside the shrunken one. With tau = 0 (no spread beyond noise) every estimate shrinks to
m and the posterior z is 0 for all: the level then carries no ranking information beyond its flags, and
the ranking falls back to the raw z (said in the log).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from repurpose.dwas.calibration import CalibrationError, fit_empirical_null


@dataclass(frozen=True)
class LevelPrior:
    """The fitted normal prior of one ATC level's log HRs: mean `mean`, standard deviation `tau`."""

    mean: float
    tau: float
    n_classes: int


@dataclass(frozen=True)
class Shrunken:
    """Posterior of each estimate: mean and sd on the log scale, 95% limits and the posterior z."""

    log_hr: np.ndarray
    sd: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    z: np.ndarray


def fit_level_prior(log_hr: np.ndarray, se: np.ndarray, *, min_classes: int = 5) -> LevelPrior | None:
    """Maximum-likelihood prior of one level; None when fewer than `min_classes` usable estimates."""
    try:
        fitted = fit_empirical_null(log_hr, se, min_controls=min_classes)
    except CalibrationError:
        return None
    return LevelPrior(mean=fitted.mu, tau=fitted.sigma, n_classes=fitted.n_controls)


def shrink(log_hr: np.ndarray, se: np.ndarray, prior: LevelPrior | None) -> Shrunken:
    """Posterior means, sds, 95% limits and z of `log_hr` under `prior`; without a prior (or with tau = 0)
    the raw estimate is returned unchanged (the caller says so) so that ordering never loses information."""
    b = np.asarray(log_hr, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    if prior is None or prior.tau <= 0:
        mean, sd = b.copy(), s.copy()
    else:
        weight = prior.tau**2 / (prior.tau**2 + s**2)
        mean = prior.mean + weight * (b - prior.mean)
        sd = np.sqrt(weight) * s
    z_crit = stats.norm.ppf(0.975)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, mean / sd, np.nan)
    return Shrunken(log_hr=mean, sd=sd, ci_lower=mean - z_crit * sd, ci_upper=mean + z_crit * sd, z=z)
