"""Meta-analysis against a published worked example: the BCG vaccine trials (Colditz et al. 1994).

Reference values are those of R metafor's documented example `rma(yi, vi, data = dat.bcg)` on the
log risk ratios (Viechtbauer 2010, J Stat Softw 36(3)): FE -0.4303 (SE 0.0405); DL tau^2 0.3088,
-0.7141 (0.1787); REML tau^2 0.3132, -0.7145 (0.1798); PM tau^2 0.3181; Q(12) = 152.23, I^2 92.12%
(with the Q-based I^2). Tolerance: the printed 4 decimals.
"""

from __future__ import annotations

import numpy as np
import pytest

from repurpose.meta import MetaAnalysisError, cochran_q, pool, tau2_paule_mandel

BCG = np.array(
    [
        [4, 119, 11, 128], [6, 300, 29, 274], [3, 228, 11, 209], [62, 13536, 248, 12619],
        [33, 5036, 47, 5761], [180, 1361, 372, 1079], [8, 2537, 10, 619], [505, 87886, 499, 87892],
        [29, 7470, 45, 7232], [17, 1699, 65, 1600], [186, 50448, 141, 27197], [5, 2493, 3, 2338],
        [27, 16886, 29, 17825],
    ],
    dtype=float,
)


@pytest.fixture
def bcg() -> tuple[np.ndarray, np.ndarray]:
    tpos, tneg, cpos, cneg = BCG.T
    log_rr = np.log(tpos / (tpos + tneg)) - np.log(cpos / (cpos + cneg))
    variance = 1 / tpos - 1 / (tpos + tneg) + 1 / cpos - 1 / (cpos + cneg)
    return log_rr, np.sqrt(variance)


@pytest.mark.parametrize(
    ("method", "estimate", "se", "tau2"),
    [("FE", -0.4303, 0.0405, 0.0), ("DL", -0.7141, 0.1787, 0.3088), ("REML", -0.7145, 0.1798, 0.3132), ("PM", -0.7150, 0.1809, 0.3181)],
)
def test_bcg_matches_metafor(bcg, method, estimate, se, tau2):
    result = pool(*bcg, method=method)
    assert result.estimate == pytest.approx(estimate, abs=1e-4)
    assert result.se == pytest.approx(se, abs=1e-4)
    assert result.tau2 == pytest.approx(tau2, abs=1e-4)
    assert result.q == pytest.approx(152.2330, abs=1e-3)
    assert result.i2 == pytest.approx(0.9212, abs=1e-4)
    assert result.k == 13


def test_paule_mandel_solves_its_estimating_equation(bcg):
    y, s = bcg
    tau2 = tau2_paule_mandel(y, s)
    w = 1 / (s**2 + tau2)
    mean = np.sum(w * y) / np.sum(w)
    assert np.sum(w * (y - mean) ** 2) == pytest.approx(len(y) - 1, abs=1e-8)


def test_homogeneous_estimates_give_zero_tau2_and_the_fixed_effect():
    y, s = np.array([0.1, 0.12, 0.09]), np.array([0.2, 0.25, 0.3])
    fixed = pool(y, s, method="FE")
    for method in ("DL", "PM", "REML"):
        result = pool(y, s, method=method)
        assert result.tau2 == 0.0
        assert result.estimate == pytest.approx(fixed.estimate)
    # Hand calculation of the inverse-variance mean.
    w = 1 / s**2
    assert fixed.estimate == pytest.approx(np.sum(w * y) / np.sum(w))
    assert fixed.se == pytest.approx(np.sqrt(1 / np.sum(w)))


def test_single_estimate_is_returned_unchanged():
    result = pool([np.log(0.6)], [0.1], method="REML")
    assert result.estimate == pytest.approx(np.log(0.6))
    assert result.se == pytest.approx(0.1)
    assert result.i2 == 0.0 and np.isnan(result.q_p_value)


def test_cochran_q_by_hand():
    q, q_p, i2 = cochran_q(np.array([0.0, 1.0]), np.array([1.0, 1.0]))
    assert q == pytest.approx(0.5)  # mean 0.5, Q = 0.25 + 0.25
    assert i2 == 0.0  # Q below its df
    assert 0 < q_p < 1


def test_bad_inputs_raise_named_errors():
    with pytest.raises(MetaAnalysisError, match="same length"):
        pool([0.1, 0.2], [0.1])
    with pytest.raises(MetaAnalysisError, match="positive"):
        pool([0.1], [0.0])
    with pytest.raises(MetaAnalysisError, match="unknown method"):
        pool([0.1], [0.1], method="ML")


def test_knapp_hartung_by_hand():
    from scipy import stats

    # Two estimates 0 and 1 with se 1: FE mean 0.5, scale = (0.25 + 0.25) / 1 < 1, so the Wald se sqrt(1/2)
    # is kept (never narrower) and the t distribution on 1 df gives the p-value and CI.
    result = pool([0.0, 1.0], [1.0, 1.0], method="FE", knapp_hartung=True)
    assert result.se == pytest.approx(np.sqrt(0.5))
    assert result.p_value == pytest.approx(2 * stats.t(1).sf(0.5 / np.sqrt(0.5)))
    assert result.ci_upper == pytest.approx(0.5 + stats.t(1).ppf(0.975) * np.sqrt(0.5))
    # Heterogeneous estimates: the variance is scaled by the weighted residual mean square.
    wide = pool([0.0, 3.0], [0.5, 0.5], method="FE", knapp_hartung=True)
    assert wide.se == pytest.approx(np.sqrt(1 / 8) * np.sqrt((4 * 2.25 * 2) / 1))
