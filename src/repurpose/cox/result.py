"""The result of many Cox fits and its Wald summary: hazard ratios, confidence intervals, z and p.

Owns: `CoxFitResult` (coefficients, standard errors, status per fit, and the lifelines-style
`hazard_ratio`, `confidence_interval`, `p_value` and `summary`), the variance of a fit from its
information matrix (`variance_and_se`), and the Wald rule itself (`wald`, `wald_p_value`), which every
estimate of the package (screen, candidates, distributed and pooled federated fits) is summarised with.
Imports numpy, scipy and pandas only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from repurpose.lazy import lazy_module

pd = lazy_module("pandas")
special = lazy_module("scipy.special")

FIT_STATUSES = ("ok", "no_events", "separation", "singular_information", "not_converged")
VARIANCE_STATUSES = ("ok", "separation", "not_converged")
"""Fit statuses whose information matrix at the final point gives a variance (the others have no estimate)."""
DEFAULT_ALPHA = 0.05
"""Two-sided level of the reported confidence intervals (95%)."""


class WaldSummary(NamedTuple):
    """Wald summary of log hazard ratios: arrays shaped like the coefficients."""

    hr: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    z: np.ndarray
    p_value: np.ndarray


def wald(coef: np.ndarray | float, se: np.ndarray | float, alpha: float = DEFAULT_ALPHA) -> WaldSummary:
    """HR = exp(coef), CI exp(coef -/+ z_(1-alpha/2) se), z = coef / se and two-sided p = 2 (1 - Phi(|z|)).

    Elementwise; a missing (NaN) coefficient gives NaN everywhere, a missing SE a NaN CI, z and p (the HR
    stays exp(coef)). Scalars give 0-d arrays (`float()` them).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}.")
    coef = np.asarray(coef, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    # scipy.special's normal cdf and quantile: what scipy.stats.norm.sf and ppf compute, without their
    # per-call argument handling (0.4 ms a summary, thousands of summaries a stage)
    z_crit = special.ndtri(1 - alpha / 2)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # diverging fits carry their status
        z = coef / se
        return WaldSummary(
            hr=np.exp(coef),
            ci_lower=np.exp(coef - z_crit * se),
            ci_upper=np.exp(coef + z_crit * se),
            z=z,
            p_value=2 * special.ndtr(-np.abs(z)),
        )


def wald_p_value(estimate: np.ndarray | float, se: np.ndarray | float) -> np.ndarray:
    """Two-sided Wald p of `estimate` / `se` against a standard normal (differences of estimates too)."""
    return wald(estimate, se).p_value


@dataclass(frozen=True)
class CoxFitResult:
    """Results of many Efron Cox fits; arrays are indexed by fit (and covariate)."""

    coef: np.ndarray  # (n_fits, p)
    se: np.ndarray  # (n_fits, p)
    variance: np.ndarray  # (n_fits, p, p), inverse observed information at coef
    loglik: np.ndarray  # (n_fits,) log partial likelihood at coef
    loglik_null: np.ndarray  # (n_fits,) at beta = 0
    n_iter: np.ndarray  # (n_fits,) likelihood evaluations after the start (incl. step halvings)
    converged: np.ndarray  # (n_fits,) bool
    status: np.ndarray  # (n_fits,) str, one of FIT_STATUSES
    n_events: np.ndarray  # (n_fits,) total (weighted) events
    infinite_coef: np.ndarray  # (n_fits, p) bool: coefficient diverges (monotone likelihood)

    @property
    def n_fits(self) -> int:
        return int(self.coef.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[CoxFitResult]) -> CoxFitResult:
        """The results of consecutive groups of fits as one result, in order."""
        return cls(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in cls.__dataclass_fields__})

    def wald(self, alpha: float = DEFAULT_ALPHA) -> WaldSummary:
        """The Wald summary of every coefficient (arrays of shape (n_fits, p))."""
        return wald(self.coef, self.se, alpha)

    @property
    def hazard_ratio(self) -> np.ndarray:
        """exp(coef), (n_fits, p)."""
        return self.wald().hr

    @property
    def p_value(self) -> np.ndarray:
        """Two-sided Wald p of each coefficient, (n_fits, p)."""
        return self.wald().p_value

    def confidence_interval(self, alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper (1 - alpha) Wald bounds of the hazard ratios, each (n_fits, p)."""
        summary = self.wald(alpha)
        return summary.ci_lower, summary.ci_upper

    def summary(self, covariate_names: Sequence[str] | None = None, alpha: float = DEFAULT_ALPHA) -> pd.DataFrame:
        """One row per (fit, covariate), lifelines' column names: coef, exp(coef), se(coef), z, p, the CI of
        exp(coef) at level 1 - alpha, and the fit's converged, n_iter and status."""
        n_fits, p = self.coef.shape
        names = [f"x{j}" for j in range(p)] if covariate_names is None else [str(n) for n in covariate_names]
        if len(names) != p:
            raise ValueError(f"covariate_names has {len(names)} names but the fits have {p} coefficients.")
        level = 100 * (1 - alpha)
        summary = wald(self.coef.reshape(-1), self.se.reshape(-1), alpha)
        return pd.DataFrame(
            {
                "fit": np.repeat(np.arange(n_fits), p),
                "covariate": np.tile(np.asarray(names, dtype=object), n_fits),
                "coef": self.coef.reshape(-1),
                "exp(coef)": summary.hr,
                "se(coef)": self.se.reshape(-1),
                "z": summary.z,
                "p": summary.p_value,
                f"exp(coef) lower {level:g}%": summary.ci_lower,
                f"exp(coef) upper {level:g}%": summary.ci_upper,
                "converged": np.repeat(self.converged, p),
                "n_iter": np.repeat(self.n_iter, p),
                "status": np.repeat(self.status, p),
            }
        )


def scaled_eigh(information: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-decomposition of the correlation-scaled information: returns (scale, eigenvalues, eigenvectors)."""
    diag = np.diagonal(information, axis1=1, axis2=2)
    scale = np.zeros_like(diag)
    np.divide(1.0, np.sqrt(diag), out=scale, where=diag > 0)
    scaled = information * scale[:, :, None] * scale[:, None, :]
    scaled[~np.isfinite(scaled)] = 0.0
    eigenvalues, eigenvectors = np.linalg.eigh(scaled)
    return scale, eigenvalues, eigenvectors


def inverse_information(information: np.ndarray) -> np.ndarray:
    """Inverse of each information matrix; NaN where it is not positive definite."""
    if information.shape[0] == 0:
        return information.copy()
    if information.shape[1] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / information
        inv[~(information > 0)] = np.nan
        return inv
    scale, eigenvalues, eigenvectors = scaled_eigh(information)
    positive = np.all(eigenvalues > 0, axis=1) & np.all(scale > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scaled = np.einsum("fij,fj,fkj->fik", eigenvectors, 1.0 / eigenvalues, eigenvectors)
    inv = inv_scaled * scale[:, :, None] * scale[:, None, :]
    inv[~positive] = np.nan
    return inv


def variance_and_se(
    information: np.ndarray, status: np.ndarray, converged: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Variance (inverse information) and SEs of each fit whose status gives one (`VARIANCE_STATUSES`).

    A fit that converged (`ok`) where the information is not positive definite has no usable variance:
    its status becomes `singular_information` and `converged` False (both updated in place). Shared by
    the engines and the coordinator of the distributed fit.
    """
    n_fits, p = information.shape[:2]
    variance = np.full((n_fits, p, p), np.nan)
    computable = np.all(np.isfinite(information), axis=(1, 2)) & np.isin(status, VARIANCE_STATUSES)
    variance[computable] = inverse_information(information[computable])
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diagonal(variance, axis1=1, axis2=2))
    not_definite = (status == "ok") & ~np.all(np.isfinite(se), axis=1)
    status[not_definite] = "singular_information"
    converged[not_definite] = False
    return variance, se


def cox_fit_result(
    beta: np.ndarray,
    information: np.ndarray,
    loglik: np.ndarray,
    loglik_null: np.ndarray,
    n_iter: np.ndarray,
    converged: np.ndarray,
    status: np.ndarray,
    n_events: np.ndarray,
    infinite_coef: np.ndarray,
) -> CoxFitResult:
    """The result of fits stopped at `beta` with `information` there (variance and SEs derived)."""
    variance, se = variance_and_se(information, status, converged)
    return CoxFitResult(
        coef=beta,
        se=se,
        variance=variance,
        loglik=loglik,
        loglik_null=loglik_null,
        n_iter=n_iter,
        converged=converged,
        status=status,
        n_events=n_events,
        infinite_coef=infinite_coef,
    )
