"""Empirical calibration of p-values and confidence intervals, and E-values for unmeasured confounding.

Empirical calibration (Schuemie et al. 2014, 2018): the log hazard ratios of negative-control
exposures (drugs believed to have no effect) scatter around a systematic-error mean `mu` with an
extra spread `sigma` beyond their standard errors, because of residual confounding, protopathic bias
and the like. Modelling a null estimate as `b ~ N(mu, sigma^2 + se^2)` (the maximum-likelihood fit of
Schuemie's 2014 empirical null), an estimate's calibrated p-value is the probability of a value as
extreme under that null, and its calibrated CI is the Wald interval of `b - mu` with variance
`se^2 + sigma^2` (the constant systematic-error model of Schuemie 2018). Without a negative-control
list the null is estimated from all screened classes, which is reasonable in a drug-wide screen where
most classes have no effect; the estimates that are screen signals are left out so true effects do
not widen the null.

E-value (VanderWeele & Ding 2017): the minimum strength of association, on the risk-ratio scale,
that an unmeasured confounder would need with both exposure and outcome to explain away the
estimate; the hazard ratio approximates the risk ratio when the outcome is rare (MS is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from repurpose.cox.result import wald_p_value
from repurpose.lazy import lazy_module

optimize = lazy_module("scipy.optimize")
special = lazy_module("scipy.special")


class CalibrationError(ValueError):
    """Too few usable negative-control estimates to fit an empirical null."""


@dataclass(frozen=True)
class EmpiricalNull:
    """Systematic error distribution on the log scale: mean `mu`, standard deviation `sigma`."""

    mu: float
    sigma: float
    n_controls: int


def fit_empirical_null(log_estimates: np.ndarray, se: np.ndarray, *, min_controls: int = 5) -> EmpiricalNull:
    """Maximum-likelihood `mu`, `sigma` of `b_i ~ N(mu, sigma^2 + se_i^2)` over the negative controls."""
    b = np.asarray(log_estimates, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    usable = np.isfinite(b) & np.isfinite(s) & (s > 0)
    b, s = b[usable], s[usable]
    if b.size < min_controls:
        raise CalibrationError(
            f"{b.size} usable negative-control estimates; at least {min_controls} are needed to fit an "
            "empirical null (list more controls in candidates.negative_controls or leave it empty)."
        )

    def negative_loglik(params: np.ndarray) -> float:
        mu, log_sigma = params
        variance = np.exp(2 * log_sigma) + s**2
        return 0.5 * float(np.sum(np.log(variance) + (b - mu) ** 2 / variance))

    start = np.array([float(np.median(b)), np.log(max(float(np.std(b)), 1e-3))])
    result = optimize.minimize(negative_loglik, start, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10})
    mu, log_sigma = result.x
    sigma = float(np.exp(log_sigma))
    if sigma < 1e-4:  # the likelihood is flat towards sigma = 0; report the boundary
        sigma = 0.0
    return EmpiricalNull(mu=float(mu), sigma=sigma, n_controls=int(b.size))


def calibrated_p_value(log_estimate: np.ndarray, se: np.ndarray, null: EmpiricalNull) -> np.ndarray:
    """Two-sided p-value of `log_estimate` under the empirical null N(mu, sigma^2 + se^2)."""
    b = np.asarray(log_estimate, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    return wald_p_value(b - null.mu, np.sqrt(null.sigma**2 + s**2))


def calibrated_ci(
    log_estimate: np.ndarray, se: np.ndarray, null: EmpiricalNull, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated log estimate `b - mu` and its CI limits with variance `se^2 + sigma^2` (log scale)."""
    b = np.asarray(log_estimate, dtype=np.float64) - null.mu
    total_se = np.sqrt(np.asarray(se, dtype=np.float64) ** 2 + null.sigma**2)
    z = special.ndtri(0.5 + level / 2)  # stats.norm.ppf without its per-call overhead
    return b, b - z * total_se, b + z * total_se


def e_value(ratio: float) -> float:
    """E-value of a risk (or rare-outcome hazard) ratio: RR + sqrt(RR (RR - 1)), with RR < 1 inverted first."""
    if not np.isfinite(ratio) or ratio <= 0:
        return float("nan")
    rr = ratio if ratio >= 1 else 1.0 / ratio
    return float(rr + np.sqrt(rr * (rr - 1.0)))


def e_value_ci(ratio: float, ci_lower: float, ci_upper: float) -> float:
    """E-value of the CI limit closest to 1; 1 when the interval includes 1 (VanderWeele & Ding 2017)."""
    if not (np.isfinite(ratio) and np.isfinite(ci_lower) and np.isfinite(ci_upper)):
        return float("nan")
    if ci_lower <= 1.0 <= ci_upper:
        return 1.0
    return e_value(ci_lower if ratio > 1 else ci_upper)
