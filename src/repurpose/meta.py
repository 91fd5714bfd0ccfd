"""Inverse-variance meta-analysis of log effect estimates: fixed effect and random effects.

Why a module of its own: the mechanism ranking pools the hazard ratios of the substances that share
a target, and a federated analysis pools the same estimates across countries; both need the same small,
tested estimator. Random-effects between-study variance tau^2 by DerSimonian-Laird (moment, closed
form), Paule-Mandel (generalised Q equals its expectation) or REML; Cochran's Q, its p-value and
Higgins' I^2 are reported with every result (DerSimonian & Laird 1986; Paule & Mandel 1982;
Viechtbauer 2005; Higgins & Thompson 2002).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from repurpose.lazy import lazy_module

optimize = lazy_module("scipy.optimize")
stats = lazy_module("scipy.stats")

TAU2_METHODS = ("DL", "PM", "REML")


class MetaAnalysisError(ValueError):
    """The inputs cannot be pooled (lengths differ, non-positive standard errors, unknown method)."""


@dataclass(frozen=True)
class MetaResult:
    """A pooled estimate on the log scale with its heterogeneity statistics."""

    estimate: float  # pooled log effect
    se: float
    ci_lower: float  # on the log scale
    ci_upper: float
    p_value: float
    tau2: float  # between-study variance (0 for fixed effect)
    q: float  # Cochran's Q (fixed-effect weights)
    q_p_value: float
    i2: float  # share of total variability due to heterogeneity, 0..1
    k: int  # number of estimates pooled
    method: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _check(estimates: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(estimates, dtype=np.float64).reshape(-1)
    s = np.asarray(se, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise MetaAnalysisError(f"estimates and se need the same length; got {y.shape[0]} and {s.shape[0]}.")
    if y.size == 0:
        raise MetaAnalysisError("nothing to pool: pass at least one estimate.")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise MetaAnalysisError("estimates must be finite and standard errors finite and positive; drop failed fits first.")
    return y, s


def cochran_q(estimates: np.ndarray, se: np.ndarray) -> tuple[float, float, float]:
    """Cochran's Q, its chi-square p-value (k - 1 df) and I^2 = max(0, (Q - df) / Q)."""
    y, s = _check(estimates, se)
    w = 1.0 / s**2
    mean = np.sum(w * y) / np.sum(w)
    q = float(np.sum(w * (y - mean) ** 2))
    df = y.size - 1
    q_p = float(stats.chi2.sf(q, df)) if df > 0 else float("nan")
    i2 = max(0.0, (q - df) / q) if q > 0 and df > 0 else 0.0
    return q, q_p, i2


def tau2_dersimonian_laird(estimates: np.ndarray, se: np.ndarray) -> float:
    """DerSimonian-Laird moment estimate of tau^2 (truncated at 0)."""
    y, s = _check(estimates, se)
    if y.size < 2:
        return 0.0
    w = 1.0 / s**2
    q, _, _ = cochran_q(y, s)
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    return max(0.0, (q - (y.size - 1)) / c)


def _generalised_q(tau2: float, y: np.ndarray, s: np.ndarray) -> float:
    w = 1.0 / (s**2 + tau2)
    mean = np.sum(w * y) / np.sum(w)
    return float(np.sum(w * (y - mean) ** 2))


def tau2_paule_mandel(estimates: np.ndarray, se: np.ndarray) -> float:
    """Paule-Mandel tau^2: the root of Q_gen(tau^2) = k - 1 (0 when Q_gen(0) <= k - 1)."""
    y, s = _check(estimates, se)
    df = y.size - 1
    if df < 1 or _generalised_q(0.0, y, s) <= df:
        return 0.0
    upper = max(1e-4, float(np.var(y)) * 10 + float(np.max(s**2)))
    while _generalised_q(upper, y, s) > df:  # Q_gen decreases in tau^2
        upper *= 10
    return float(optimize.brentq(lambda t: _generalised_q(t, y, s) - df, 0.0, upper, xtol=1e-12))


def tau2_reml(estimates: np.ndarray, se: np.ndarray) -> float:
    """Restricted maximum-likelihood tau^2 (bounded search on [0, large])."""
    y, s = _check(estimates, se)
    if y.size < 2:
        return 0.0

    def negative_restricted_loglik(tau2: float) -> float:
        v = s**2 + tau2
        w = 1.0 / v
        mean = np.sum(w * y) / np.sum(w)
        return 0.5 * (np.sum(np.log(v)) + np.log(np.sum(w)) + np.sum(w * (y - mean) ** 2))

    upper = max(1e-4, float(np.var(y)) * 10 + float(np.max(s**2)))
    result = optimize.minimize_scalar(
        negative_restricted_loglik, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-12}
    )
    tau2 = float(result.x)
    # The bounded search never returns the boundary exactly; prefer 0 when it is at least as good.
    return 0.0 if negative_restricted_loglik(0.0) <= negative_restricted_loglik(tau2) else tau2


def pool(
    estimates: np.ndarray | list[float],
    se: np.ndarray | list[float],
    *,
    method: str = "REML",
    level: float = 0.95,
    knapp_hartung: bool = False,
) -> MetaResult:
    """Pool log estimates by inverse variance: `method` = "FE" (fixed effect) or a tau^2 method (DL, PM, REML).

    The random-effects estimate weights each study by 1 / (se^2 + tau^2); Wald CI and p-value. With a
    single estimate every method returns it unchanged (tau^2 = 0). `knapp_hartung=True` (k >= 2) uses
    the Hartung-Knapp-Sidik-Jonkman variance with the t distribution on k - 1 df, never narrower than
    the Wald variance (the "ad hoc" modification, Jackson et al. 2017), which keeps the coverage with
    few studies (IntHout et al. 2014).
    """
    y, s = _check(np.asarray(estimates), np.asarray(se))
    method = method.upper()
    if method == "FE":
        tau2 = 0.0
    elif method == "DL":
        tau2 = tau2_dersimonian_laird(y, s)
    elif method == "PM":
        tau2 = tau2_paule_mandel(y, s)
    elif method == "REML":
        tau2 = tau2_reml(y, s)
    else:
        raise MetaAnalysisError(f"unknown method {method!r}; use FE or one of {', '.join(TAU2_METHODS)}.")
    w = 1.0 / (s**2 + tau2)
    estimate = float(np.sum(w * y) / np.sum(w))
    pooled_se = float(np.sqrt(1.0 / np.sum(w)))
    distribution = stats.norm
    if knapp_hartung and y.size >= 2:
        scale = float(np.sum(w * (y - estimate) ** 2) / (y.size - 1))
        pooled_se *= float(np.sqrt(max(1.0, scale)))
        distribution = stats.t(y.size - 1)
        method += "+HK"
    z = distribution.ppf(0.5 + level / 2)
    q, q_p, i2 = cochran_q(y, s)
    return MetaResult(
        estimate=estimate,
        se=pooled_se,
        ci_lower=float(estimate - z * pooled_se),
        ci_upper=float(estimate + z * pooled_se),
        p_value=float(2 * distribution.sf(abs(estimate / pooled_se))),
        tau2=float(tau2),
        q=q,
        q_p_value=q_p,
        i2=float(i2),
        k=int(y.size),
        method=method,
    )
