"""A lifelines-style front end to the aggregated Efron engine, for the tests only.

`AggregatedCoxPHFitter` fits counting-process frames (pandas or polars) or a `RiskSetTable` with
`repurpose.cox.engine.fit_efron` and exposes lifelines' attributes (`params_`, `standard_errors_`,
`summary`), so the tests compare the engine with lifelines and R on the same footing. The package itself
calls `fit_efron` directly; its Wald summary is `CoxFitResult.summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from repurpose.cox.engine import fit_efron
from repurpose.cox.risk_set_table import (
    CountingProcessError,
    CoxEngineError,
    RiskSetTable,
    aggregate_counting_process,
    factorize,
)


class NotFittedError(CoxEngineError, AttributeError):
    """A fitted attribute was requested before calling ``fit``."""


class AggregatedCoxPHFitter:
    """Cox PH fits (Efron ties) of many models at once from a :class:`RiskSetTable`.

    Settings are keyword-only; fitted attributes end in ``_``. ``params_`` and ``standard_errors_``
    are DataFrames (one row per fit, one column per covariate); ``summary`` has one row per
    (fit, covariate).
    """

    def __init__(self, *, alpha: float = 0.05, max_iter: int = 50, tol: float = 1e-9) -> None:
        if not 0 < alpha < 1:
            raise CoxEngineError(f"alpha must be in (0, 1); got {alpha!r}.")
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, table: RiskSetTable, covariate_names: Sequence[str] | None = None) -> AggregatedCoxPHFitter:
        """Fit all models of ``table``; ``covariate_names`` label the design columns."""
        p = table.n_covariates
        names = (
            [f"x{j}" for j in range(p)]
            if covariate_names is None
            else [str(name) for name in covariate_names]
        )
        if len(names) != p:
            raise CoxEngineError(f"covariate_names has {len(names)} names but the design has {p} columns.")
        result = fit_efron(table, max_iter=self.max_iter, tol=self.tol)
        fit_ids = pd.RangeIndex(table.n_fits, name="fit")
        columns = pd.Index(names, name="covariate")
        self.result_ = result
        self.covariate_names_ = names
        self.params_ = pd.DataFrame(result.coef, index=fit_ids, columns=columns)
        self.standard_errors_ = pd.DataFrame(result.se, index=fit_ids, columns=columns)
        self.table_ = table
        return self

    def fit_counting_process(
        self,
        df: Any,
        *,
        start_col: str,
        stop_col: str,
        event_col: str,
        covariates: Sequence[str],
        strata: str | Sequence[str] | None = None,
        fit_col: str | None = None,
    ) -> AggregatedCoxPHFitter:
        """Aggregate a pandas or polars counting-process frame and fit it.

        Categorical covariates must already be numeric dummy columns. ``strata`` names one or more
        stratification columns; ``fit_col`` (optional, integer) splits the rows into independent fits.
        """
        columns = list(df.columns)
        strata_cols = [] if strata is None else ([strata] if isinstance(strata, str) else list(strata))
        needed = [start_col, stop_col, event_col, *covariates, *strata_cols] + ([fit_col] if fit_col else [])
        missing = [col for col in needed if col not in columns]
        if missing:
            raise CountingProcessError(f"columns {missing} are not in the data frame (has {columns}).")
        if not covariates:
            raise CountingProcessError("give at least one covariate column.")

        def column(name: str) -> np.ndarray:
            return np.asarray(df[name].to_numpy())

        design = np.column_stack([column(name).astype(np.float64) for name in covariates])
        strata_values = None
        if strata_cols:
            codes = [factorize(column(name))[0] for name in strata_cols]
            strata_values = np.column_stack(codes) if len(codes) > 1 else codes[0]
        table = aggregate_counting_process(
            column(start_col),
            column(stop_col),
            column(event_col),
            design,
            strata=strata_values,
            fit_index=None if fit_col is None else column(fit_col).astype(np.int64),
        )
        return self.fit(table, covariate_names=list(covariates))

    def _check_fitted(self) -> None:
        if not hasattr(self, "result_"):
            raise NotFittedError("this AggregatedCoxPHFitter is not fitted yet; call fit(table) first.")

    @property
    def summary(self) -> pd.DataFrame:
        """One row per (fit, covariate): coefficient, hazard ratio, SE, Wald z and p, CI and fit status."""
        self._check_fitted()
        return self.result_.summary(self.covariate_names_, self.alpha)
