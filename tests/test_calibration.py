"""Empirical calibration and E-values against hand calculations and published examples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from repurpose.dwas.calibration import (
    CalibrationError,
    EmpiricalNull,
    calibrated_ci,
    calibrated_p_value,
    e_value,
    e_value_ci,
    fit_empirical_null,
)


def test_e_value_matches_vanderweele_ding_2017():
    # VanderWeele & Ding (Ann Intern Med 2017): RR 3.9 (95% CI 1.8-8.7) -> E-values 7.26 and 3.00.
    assert e_value(3.9) == pytest.approx(7.26, abs=0.01)
    assert e_value_ci(3.9, 1.8, 8.7) == pytest.approx(3.00, abs=0.01)


def test_e_value_of_protective_estimates_inverts_first():
    assert e_value(0.8) == pytest.approx(1.25 + np.sqrt(1.25 * 0.25))
    assert e_value_ci(0.5, 0.3, 0.8) == pytest.approx(e_value(1 / 0.8))
    assert e_value_ci(0.9, 0.7, 1.1) == 1.0  # the interval includes 1
    assert e_value(1.0) == 1.0


def test_no_systematic_error_gives_the_usual_wald_p_and_ci():
    null = EmpiricalNull(mu=0.0, sigma=0.0, n_controls=10)
    b, se = np.array([np.log(0.6)]), np.array([0.2])
    assert calibrated_p_value(b, se, null)[0] == pytest.approx(2 * stats.norm.sf(abs(b[0]) / 0.2))
    estimate, lower, upper = calibrated_ci(b, se, null)
    assert lower[0] == pytest.approx(b[0] - 1.959964 * 0.2, abs=1e-6)
    assert upper[0] == pytest.approx(b[0] + 1.959964 * 0.2, abs=1e-6)


def test_calibration_by_hand():
    # Null N(0.1, 0.3^2): estimate 0.5 with se 0.4 -> z = (0.5 - 0.1) / sqrt(0.09 + 0.16) = 0.8.
    null = EmpiricalNull(mu=0.1, sigma=0.3, n_controls=20)
    assert calibrated_p_value(np.array([0.5]), np.array([0.4]), null)[0] == pytest.approx(2 * stats.norm.sf(0.8))
    estimate, lower, upper = calibrated_ci(np.array([0.5]), np.array([0.4]), null)
    assert estimate[0] == pytest.approx(0.4)
    assert upper[0] - lower[0] == pytest.approx(2 * 1.959964 * 0.5, abs=1e-5)


def test_empirical_null_is_recovered_from_simulated_controls():
    rng = np.random.default_rng(1)
    se = rng.uniform(0.05, 0.3, 2000)
    b = rng.normal(0.15, 0.2, 2000) + rng.normal(0, se)
    null = fit_empirical_null(b, se)
    assert null.mu == pytest.approx(0.15, abs=0.02)
    assert null.sigma == pytest.approx(0.2, abs=0.02)
    # Calibrated p-values of the controls themselves are then uniform.
    p = calibrated_p_value(b, se, null)
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_unbiased_controls_give_sigma_zero():
    rng = np.random.default_rng(2)
    se = rng.uniform(0.05, 0.3, 500)
    null = fit_empirical_null(rng.normal(0, se), se)
    assert null.sigma < 0.03 and abs(null.mu) < 0.03


def test_too_few_controls_raise():
    with pytest.raises(CalibrationError, match="at least 5"):
        fit_empirical_null(np.array([0.1, 0.2]), np.array([0.1, 0.1]))
