"""Drug survival: Kaplan-Meier, the cumulative incidence of stopping by reason, and the Cox models.

Time is months since the first start (days / 30.4375). Kaplan-Meier and its log(-log) Greenwood intervals
come from lifelines' `KaplanMeierFitter`; the median time on drug and the persistence at each horizon are
read from its step function (the value at the last event time at or before the horizon). The cumulative
incidence of stopping for each reason treats the other reasons as competing events (Aalen-Johansen):
CIF_k(t) = sum over event times t_j <= t of S(t_j-) d_kj / n_j, computed here in closed form because
lifelines' `AalenJohansenFitter` breaks tied times by random jitter (tests check the two agree on untied
data). Stopping by clinic adjusted for case mix is lifelines' `CoxPHFitter` (Efron ties); the same model
without clinic gives each patient's expected number of stops (`expected_stops`), the basis of the funnel plot.
Released curves move only in steps of at least min_cell events (`released_steps`, `released_curve`).

Imports `persistence.newusers` (the month length) only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from repurpose.lazy import lazy_module
from repurpose.persistence.newusers import DAYS_PER_MONTH

lifelines = lazy_module("lifelines")
lifelines_exceptions = lazy_module("lifelines.exceptions")
pd = lazy_module("pandas")


@dataclass(frozen=True)
class KaplanMeierSummary:
    """One group's drug survival: size, stops, median months on drug and persistence at the horizons with CIs."""

    group: str
    n: int
    n_stopped: int
    median_months: float | None
    persistence: dict[int, tuple[float, float, float]]  # horizon months -> (estimate, lower, upper)


def _at(frame: pd.DataFrame, t: float) -> np.ndarray:
    """Row of a step function (indexed by time) in force at time t."""
    return frame.loc[:t].iloc[-1].to_numpy()


def kaplan_meier(group: str, months: np.ndarray, stopped: np.ndarray, horizons: Sequence[int]) -> tuple[KaplanMeierSummary, lifelines.KaplanMeierFitter]:
    """Kaplan-Meier fit of one group with its summary at `horizons` (months)."""
    fitter = lifelines.KaplanMeierFitter().fit(months, stopped, label="persistence")
    median = float(fitter.median_survival_time_)
    persistence = {}
    for h in horizons:
        estimate = float(_at(fitter.survival_function_, h)[0])
        lower, upper = (float(v) for v in _at(fitter.confidence_interval_survival_function_, h))
        persistence[int(h)] = (estimate, lower, upper)
    summary = KaplanMeierSummary(
        group=group, n=int(len(months)), n_stopped=int(np.sum(stopped)),
        median_months=None if not np.isfinite(median) else median, persistence=persistence,
    )  # fmt: skip
    return summary, fitter


def km_curve(fitter: lifelines.KaplanMeierFitter, grid_months: Sequence[float]) -> pl.DataFrame:
    """A Kaplan-Meier curve on a grid of months: survival, CI and number at risk at each grid time."""
    rows = []
    table = fitter.event_table
    for t in grid_months:
        s = float(_at(fitter.survival_function_, t)[0])
        lower, upper = (float(v) for v in _at(fitter.confidence_interval_survival_function_, t))
        at_risk = int(table.loc[table.index >= t, "at_risk"].iloc[0]) if (table.index >= t).any() else 0
        rows.append((float(t), s, lower, upper, at_risk))
    return pl.DataFrame(rows, schema={"month": pl.Float64, "persistence": pl.Float64, "lower": pl.Float64,
                                      "upper": pl.Float64, "n_at_risk": pl.Int64}, orient="row")  # fmt: skip


def released_steps(event_months: np.ndarray, grid_months: Sequence[float], min_cell: int) -> np.ndarray:
    """For each grid month, the grid position whose value a released curve shows there (-1: the start, before
    any event). A released curve moves only at a grid month where at least `min_cell` events have happened
    since its last move, so that no step, and no difference of two released points, rests on fewer than
    min_cell events (a Kaplan-Meier drop of 1 - d/n with n shown reveals d)."""
    cumulative = np.searchsorted(np.sort(np.asarray(event_months, float)), np.asarray(grid_months, float), side="right")
    shown, last, at_last = np.empty(len(cumulative), np.int64), -1, 0
    for i, events in enumerate(cumulative):
        if events - at_last >= min_cell:
            last, at_last = i, int(events)
        shown[i] = last
    return shown


def released_curve(curve: pl.DataFrame, event_months: np.ndarray, min_cell: int) -> pl.DataFrame:
    """A `km_curve` frame as released: each month shows the values of its released step (`released_steps`),
    the start's (persistence 1, no one stopped) before the first; the number at risk is the step's too."""
    shown = released_steps(event_months, curve["month"].to_numpy(), min_cell)
    start = {"persistence": 1.0, "lower": 1.0, "upper": 1.0, "n_at_risk": curve["n_at_risk"][0]}
    columns = {}
    for name, value in start.items():
        values = curve[name].to_numpy()
        columns[name] = pl.Series(name, np.where(shown >= 0, values[np.maximum(shown, 0)], value), dtype=curve.schema[name])
    return curve.with_columns(**columns)


def aalen_johansen(months: np.ndarray, cause: np.ndarray, causes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative incidence of each cause at the distinct event times (cause 0 = censored).

    Returns (times, cif) with cif of shape (len(times), len(causes))."""
    months = np.asarray(months, dtype=np.float64)
    cause = np.asarray(cause, dtype=np.int64)
    times = np.unique(months[cause > 0])
    order = np.sort(months)
    at_risk = len(months) - np.searchsorted(order, times, side="left")
    any_event = np.bincount(np.searchsorted(times, months[cause > 0]), minlength=len(times))
    hazard_all = any_event / at_risk
    survival_before = np.concatenate([[1.0], np.cumprod(1.0 - hazard_all)[:-1]])
    cif = np.empty((len(times), len(causes)))
    for k, c in enumerate(causes):
        idx = np.searchsorted(times, months[cause == c])
        d = np.bincount(idx, minlength=len(times)).astype(np.float64)
        cif[:, k] = np.cumsum(survival_before * d / at_risk)
    return times, cif


def cif_at(times: np.ndarray, cif: np.ndarray, t: float) -> np.ndarray:
    """Cumulative incidences in force at time t (zero before the first event)."""
    position = np.searchsorted(times, t, side="right") - 1
    return np.zeros(cif.shape[1]) if position < 0 else cif[position]


def design_matrix(users: pl.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    """Numeric case-mix columns for the Cox models: numbers as they are (a missing value gets the mean and a
    missing indicator), sex as female, prior treatment as switched (vs naive), country as dummies (the
    commonest country the reference)."""
    columns: dict[str, np.ndarray] = {}
    for name in covariates:
        if name == "sex":
            columns["female"] = (users["sex"] == "F").cast(pl.Float64).to_numpy()
        elif name == "prior_dmt":
            columns["switched"] = (users["prior_dmt"] != "naive").cast(pl.Float64).to_numpy()
        elif name == "country":
            counts = users["country"].value_counts(sort=True)
            for value in counts["country"].to_list()[1:]:
                columns[f"country_{value}"] = (users["country"] == value).cast(pl.Float64).to_numpy()
        else:
            values = users[name].cast(pl.Float64)
            missing = values.is_null()
            if missing.all():
                continue
            if missing.any():
                columns[f"{name}_missing"] = missing.cast(pl.Float64).to_numpy()
                values = values.fill_null(values.mean())
            columns[name] = values.to_numpy()
    frame = pd.DataFrame(columns)
    constant = [c for c in frame.columns if frame[c].nunique() < 2]
    return frame.drop(columns=constant)


RIDGE_PENALTY = 0.01


def fit_cox(design: pd.DataFrame, months: np.ndarray, stopped: np.ndarray) -> lifelines.CoxPHFitter:
    """lifelines' CoxPHFitter of stopping on the design (Efron ties, no penalty). When Newton's method does not converge
    (a clinic without stops: its coefficient runs to minus infinity) the model is refitted with a small ridge
    penalty (`RIDGE_PENALTY`); `fit_status(fitter)` says which."""
    frame = design.copy()
    frame["_months"] = months
    frame["_stopped"] = stopped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", lifelines_exceptions.ConvergenceWarning)
        try:
            fitter = lifelines.CoxPHFitter().fit(frame, duration_col="_months", event_col="_stopped")
            if not any(issubclass(w.category, lifelines_exceptions.ConvergenceWarning) for w in caught):
                return fitter
        except lifelines_exceptions.ConvergenceError:
            pass
        return lifelines.CoxPHFitter(penalizer=RIDGE_PENALTY).fit(frame, duration_col="_months", event_col="_stopped")


def fit_status(fitter: lifelines.CoxPHFitter) -> str:
    """`converged` or the penalty the fit needed to converge."""
    return "converged" if not fitter.penalizer else f"converged with ridge penalty {fitter.penalizer:g}"


def expected_stops(fitter: lifelines.CoxPHFitter, design: pd.DataFrame, months: np.ndarray, horizon: float) -> np.ndarray:
    """Each patient's expected number of stops up to min(time, horizon) under the fitted model: the Breslow
    cumulative baseline hazard there times the patient's relative hazard. Their sum over all patients equals
    the observed stops up to the horizon (the martingale residuals of a Breslow fit sum to zero)."""
    baseline = fitter.baseline_cumulative_hazard_
    times = baseline.index.to_numpy(dtype=np.float64)
    values = baseline.iloc[:, 0].to_numpy(dtype=np.float64)
    position = np.searchsorted(times, np.minimum(months, horizon), side="right") - 1
    cumulative = np.where(position >= 0, values[np.clip(position, 0, None)], 0.0)
    relative = fitter.predict_partial_hazard(design[fitter.params_.index]).to_numpy(dtype=np.float64)
    return cumulative * relative


def months_of(days: pl.Series) -> np.ndarray:
    """Days as months (30.4375 days)."""
    return days.cast(pl.Float64).to_numpy() / DAYS_PER_MONTH
