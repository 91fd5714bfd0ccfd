"""The aggregated risk-set table of many Cox fits, and its construction from counting-process rows.

Owns: `RiskSetTable` (per fit, risk set and covariate pattern: the number at risk and the events, all the
Efron partial likelihood needs with categorical covariates), `aggregate_counting_process` (long
``(start, stop]`` rows to that table), the errors of the Cox engines and the small array helpers they
share (runs, ranges, segment sums, dense codes). Imports numpy and pandas only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from repurpose.lazy import lazy_module

pd = lazy_module("pandas")


class CoxEngineError(ValueError):
    """Base class of the errors raised by the aggregated Cox engine."""


class RiskSetTableError(CoxEngineError):
    """A :class:`RiskSetTable` is inconsistent (unsorted rows, bad shapes, invalid counts)."""


class CountingProcessError(CoxEngineError):
    """Counting-process input (start, stop, event, design, strata) is invalid."""



# --------------------------------------------------------------------------------------------------
# Risk-set table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskSetTable:
    """Aggregated risk sets for many independent Cox fits.

    One row per (fit, risk set, covariate pattern). A risk set is one (fit, stratum, event time).
    Counts may be non-integer (weights); ``n_events <= n_at_risk`` must hold row-wise.

    The rows' covariates come as ``design`` (rows, p) or, factored, as ``patterns`` (k, p) and
    ``row_pattern`` (a row's covariates are ``patterns[row_pattern[row]]``, ``design`` None): a table of
    millions of rows over a few thousand patterns then never holds the (rows, p) matrix
    (`RiskSetTable.factored`; the engine works on patterns either way).
    """

    fit_index: np.ndarray  # int64, per row: which fit (0..n_fits-1)
    risk_set_index: np.ndarray  # int64, per row: id of the (fit, stratum, event time) risk set
    n_at_risk: np.ndarray  # float64, persons at risk with this pattern just before the event time
    n_events: np.ndarray  # float64, events at this event time with this pattern
    design: np.ndarray | None  # float64 (rows, p): covariate pattern (None when factored)
    n_fits: int
    patterns: np.ndarray | None = None  # float64 (k, p): the covariate patterns of a factored table
    row_pattern: np.ndarray | None = None  # int64, per row of a factored table: its row of `patterns`

    @classmethod
    def factored(
        cls, fit_index: np.ndarray, risk_set_index: np.ndarray, n_at_risk: np.ndarray, n_events: np.ndarray,
        patterns: np.ndarray, row_pattern: np.ndarray, n_fits: int,
    ) -> RiskSetTable:
        """A table whose row i has the covariates ``patterns[row_pattern[i]]`` (patterns may repeat)."""
        return cls(fit_index, risk_set_index, n_at_risk, n_events, None, n_fits, patterns, row_pattern)  # fmt: skip

    def __post_init__(self) -> None:
        fit_index = _as_array(self.fit_index, np.int64, "fit_index")
        risk_set_index = _as_array(self.risk_set_index, np.int64, "risk_set_index")
        n_at_risk = _as_array(self.n_at_risk, np.float64, "n_at_risk")
        n_events = _as_array(self.n_events, np.float64, "n_events")
        n_rows = fit_index.shape[0]
        design, patterns, row_pattern = self._checked_covariates(n_rows)
        for name, arr in (
            ("fit_index", fit_index),
            ("risk_set_index", risk_set_index),
            ("n_at_risk", n_at_risk),
            ("n_events", n_events),
        ):
            if arr.ndim != 1 or arr.shape[0] != n_rows:
                raise RiskSetTableError(
                    f"{name} must be 1-D with one entry per row ({n_rows} rows, as fit_index); "
                    f"got shape {arr.shape}."
                )
        try:
            n_fits = int(self.n_fits)
        except (TypeError, ValueError) as exc:
            raise RiskSetTableError(f"n_fits must be a non-negative integer; got {self.n_fits!r}.") from exc
        if n_fits < 0 or n_fits != self.n_fits:
            raise RiskSetTableError(f"n_fits must be a non-negative integer; got {self.n_fits!r}.")
        if n_rows:
            if fit_index.min() < 0 or fit_index.max() >= n_fits:
                raise RiskSetTableError(
                    f"fit_index must lie in [0, n_fits={n_fits}); got range "
                    f"[{fit_index.min()}, {fit_index.max()}]. Pass n_fits = number of fits."
                )
            fit_step = np.diff(fit_index)
            set_step = np.diff(risk_set_index)
            if np.any(fit_step < 0) or np.any(set_step < 0):
                raise RiskSetTableError(
                    "rows must be sorted by (fit_index, risk_set_index) with non-decreasing risk-set ids; "
                    "sort with np.lexsort((risk_set_index, fit_index)) and renumber risk sets in that order."
                )
            if np.any((set_step == 0) & (fit_step != 0)):
                raise RiskSetTableError(
                    "a risk_set_index is shared by two fits; give every (fit, stratum, event time) its own id."
                )
            if not (
                np.all(np.isfinite(n_at_risk))
                and np.all(np.isfinite(n_events))
                and np.all(np.isfinite(design if design is not None else patterns))
            ):
                raise RiskSetTableError("n_at_risk, n_events and design must be finite (no NaN or inf).")
            if np.any(n_events < 0) or np.any(n_events > n_at_risk):
                raise RiskSetTableError(
                    "counts must satisfy 0 <= n_events <= n_at_risk on every row: persons with an event "
                    "at t are at risk just before t; check the at-risk convention start < t <= stop."
                )
            starts = run_starts(risk_set_index)
            if np.any(np.add.reduceat(n_at_risk, starts) <= 0):
                raise RiskSetTableError(
                    "every risk set needs a positive total n_at_risk; drop empty risk sets."
                )
        object.__setattr__(self, "fit_index", fit_index)
        object.__setattr__(self, "risk_set_index", risk_set_index)
        object.__setattr__(self, "n_at_risk", n_at_risk)
        object.__setattr__(self, "n_events", n_events)
        object.__setattr__(self, "design", design)
        object.__setattr__(self, "n_fits", n_fits)
        object.__setattr__(self, "patterns", patterns)
        object.__setattr__(self, "row_pattern", row_pattern)

    def _checked_covariates(self, n_rows: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """(design, patterns, row_pattern) as arrays of the right shapes: one of the two forms, not both."""
        if (self.design is None) == (self.patterns is None) or (self.patterns is None) != (self.row_pattern is None):
            raise RiskSetTableError("give the covariates as design, or as patterns with row_pattern (RiskSetTable.factored).")
        if self.design is not None:
            design = _as_array(self.design, np.float64, "design")
            design = design[:, None] if design.ndim == 1 else design
            if design.ndim != 2 or design.shape[0] != n_rows or design.shape[1] < 1:
                raise RiskSetTableError(f"design must be 2-D (rows, p) with p >= 1 and {n_rows} rows; got shape {design.shape}.")
            return design, None, None
        patterns = _as_array(self.patterns, np.float64, "patterns")
        row_pattern = _as_array(self.row_pattern, np.int64, "row_pattern")
        if patterns.ndim != 2 or patterns.shape[1] < 1 or row_pattern.ndim != 1 or row_pattern.shape[0] != n_rows:
            raise RiskSetTableError(
                f"patterns must be 2-D (k, p) with p >= 1 and row_pattern 1-D with {n_rows} rows; got shapes "
                f"{patterns.shape} and {row_pattern.shape}."
            )
        if n_rows and (row_pattern.min() < 0 or row_pattern.max() >= patterns.shape[0]):
            raise RiskSetTableError(f"row_pattern must lie in [0, {patterns.shape[0]}), the rows of patterns.")
        return None, patterns, row_pattern

    @property
    def n_rows(self) -> int:
        """Number of (fit, risk set, pattern) rows."""
        return int(self.fit_index.shape[0])

    @property
    def n_covariates(self) -> int:
        """Number of covariates p (columns of ``design``)."""
        return int((self.design if self.design is not None else self.patterns).shape[1])

    def column(self, j: int) -> np.ndarray:
        """Per row the value of covariate ``j``."""
        return self.design[:, j] if self.design is not None else self.patterns[self.row_pattern, j]

    def row_design(self) -> np.ndarray:
        """The (rows, p) covariates, built when the table is factored."""
        return self.design if self.design is not None else self.patterns[self.row_pattern]

    def with_covariates(self, columns: np.ndarray | Sequence[int]) -> RiskSetTable:
        """The same rows with only the covariates ``columns``."""
        if self.design is not None:
            return RiskSetTable(self.fit_index, self.risk_set_index, self.n_at_risk, self.n_events, self.design[:, columns], self.n_fits)
        return RiskSetTable.factored(
            self.fit_index, self.risk_set_index, self.n_at_risk, self.n_events, self.patterns[:, columns], self.row_pattern, self.n_fits
        )  # fmt: skip


def _as_array(values: Any, dtype: type, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
        if dtype is np.int64 and arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.asarray(arr, dtype=np.float64) == np.round(np.asarray(arr, dtype=np.float64))):
                raise RiskSetTableError(f"{name} must hold integers.")
        return np.ascontiguousarray(arr, dtype=dtype)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, RiskSetTableError):
            raise
        raise RiskSetTableError(f"{name} could not be converted to {np.dtype(dtype).name}: {exc}") from exc


def run_starts(sorted_ids: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a 1-D array (first element always starts a run)."""
    if sorted_ids.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(sorted_ids.shape[0], dtype=bool)
    change[0] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=change[1:])
    return np.flatnonzero(change)


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """``np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])`` without a loop
    (`dtype` int32 halves the memory where the values fit)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=dtype) + np.repeat((np.asarray(starts, dtype=np.int64) - offsets).astype(dtype), lengths)


def segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of `values[bounds[i]:bounds[i + 1]]` for consecutive segments (empty ones sum to 0).

    One `np.add.reduceat` pass over contiguous segments, several times faster than `np.bincount` with
    weights. Integers and booleans sum as int64.
    """
    dtype = np.float64 if values.dtype.kind == "f" else np.int64
    lengths = np.diff(bounds)
    sums = np.zeros(lengths.shape[0], dtype=dtype)
    nonempty = lengths > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(values[: bounds[-1]], bounds[:-1][nonempty], dtype=dtype)
    return sums


def factorize(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes 0..k-1 (in sorted order of the values) for a 1-D or 2-D (rows) array; hash-based, except
    for a 0/1 column (the dummies of most designs), whose codes are its values (5-10x cheaper, the same codes)."""
    if values.ndim == 1:
        binary = _binary_codes(values)
        if binary is not None:
            return binary
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
        return np.asarray(codes, dtype=np.int64), int(len(uniques))
    # Mixed-radix keys of the columns' codes (lexicographic order), renumbered densely only when the key range
    # would outgrow a presence table: the same codes as renumbering after every column, with fewer passes.
    codes = np.zeros(values.shape[0], dtype=np.int64)
    n_codes, dense = 1, True
    table_limit = max(4 * values.shape[0], 1 << 20)
    for column in values.T:
        column_codes, n_column = factorize(column)
        if n_codes * n_column > table_limit and not dense:
            codes, present = dense_codes(codes, n_codes)
            n_codes = int(present.shape[0])
        if n_codes * n_column <= table_limit:
            codes = codes * n_column + column_codes
            n_codes, dense = n_codes * n_column, False
        else:
            codes, n_codes = _combine_codes(codes, n_codes, column_codes, n_column)
            dense = True
    if not dense:
        codes, present = dense_codes(codes, n_codes)
        n_codes = int(present.shape[0])
    return codes, n_codes


def _binary_codes(values: np.ndarray) -> tuple[np.ndarray, int] | None:
    """`factorize` of a column holding only 0 and 1 (None for any other column): the values as codes when
    both occur, else all 0 (one value)."""
    if values.dtype.kind not in "fiub" or not values.shape[0]:
        return None
    ones = values == 1
    n_ones = int(np.count_nonzero(ones))
    if n_ones and n_ones < values.shape[0] and not np.all(ones | (values == 0)):
        return None
    if n_ones == 0 and not np.all(values == 0):
        return None
    if n_ones in (0, values.shape[0]):
        return np.zeros(values.shape[0], dtype=np.int64), 1
    return ones.astype(np.int64), 2


def _combine_codes(
    major: np.ndarray, n_major: int, minor: np.ndarray, n_minor: int
) -> tuple[np.ndarray, int]:
    """Codes of the pairs (major, minor), ordered by major then minor, renumbered densely."""
    if n_major * n_minor < 2**62:
        codes, present = dense_codes(major * n_minor + minor, n_major * n_minor)
        return codes, int(present.shape[0])
    uniques, codes = np.unique(np.stack([major, minor], axis=1), axis=0, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), int(uniques.shape[0])


def dense_codes(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber int keys in [0, n_keys) to 0..m-1 in key order; returns (codes, the m distinct keys).

    Uses a presence table (no sort) when ``n_keys`` is not much larger than the number of keys.
    """
    if n_keys <= max(4 * keys.shape[0], 1 << 20):
        present = np.zeros(n_keys, dtype=bool)
        present[keys] = True
        code_of_key = np.cumsum(present, dtype=np.int64) - 1
        return code_of_key[keys], np.flatnonzero(present)
    uniques, codes = np.unique(keys, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), uniques


# --------------------------------------------------------------------------------------------------
# Aggregation of counting-process data
# --------------------------------------------------------------------------------------------------


def aggregate_counting_process(
    start: np.ndarray,
    stop: np.ndarray,
    event: np.ndarray,
    design: np.ndarray,
    strata: np.ndarray | None = None,
    fit_index: np.ndarray | None = None,
    *,
    n_fits: int | None = None,
) -> RiskSetTable:
    """Aggregate counting-process rows ``(start, stop]`` (event at ``stop``) into a :class:`RiskSetTable`.

    For each fit, stratum and distinct event time t of that (fit, stratum) and each covariate pattern:
    ``n_at_risk = #{rows: start < t <= stop}`` and ``n_events = #{rows: event == 1 and stop == t}``.
    Patterns with ``n_at_risk == 0`` are dropped. ``strata`` may be 1-D labels or 2-D (one column per
    stratification variable); ``n_fits`` defaults to ``max(fit_index) + 1``.
    Exact for categorical covariates: the Efron partial likelihood depends only on these counts.
    """
    start_arr = np.asarray(start, dtype=np.float64).reshape(-1)
    stop_arr = np.asarray(stop, dtype=np.float64).reshape(-1)
    n = start_arr.shape[0]
    event_raw = np.asarray(event).reshape(-1)
    design_arr = np.asarray(design, dtype=np.float64)
    if design_arr.ndim == 1:
        design_arr = design_arr[:, None]
    if stop_arr.shape[0] != n or event_raw.shape[0] != n or design_arr.shape[0] != n or design_arr.ndim != 2:
        raise CountingProcessError(
            f"start, stop, event and design need one entry (row) each; got lengths {n}, {stop_arr.shape[0]}, "
            f"{event_raw.shape[0]} and design shape {design_arr.shape}."
        )
    if not np.all(np.isin(event_raw, (0, 1))):
        raise CountingProcessError("event must be 0/1 (or boolean); recode other event indicators first.")
    event_arr = event_raw.astype(bool)
    if not (
        np.all(np.isfinite(start_arr)) and np.all(np.isfinite(stop_arr)) and np.all(np.isfinite(design_arr))
    ):
        raise CountingProcessError(
            "start, stop and design must be finite (no NaN or inf); drop or impute first."
        )
    if np.any(start_arr > stop_arr):
        raise CountingProcessError("start must be <= stop on every row (intervals are (start, stop]).")
    if np.any(event_arr & (start_arr >= stop_arr)):
        raise CountingProcessError(
            "an event row has start >= stop, so the person is not at risk at the event time; "
            "use intervals with start < stop for events."
        )
    if fit_index is None:
        fit_arr = np.zeros(n, dtype=np.int64)
    else:
        fit_arr = np.asarray(fit_index).reshape(-1)
        if fit_arr.shape[0] != n or (n and not np.issubdtype(fit_arr.dtype, np.integer)):
            raise CountingProcessError("fit_index must be an integer array with one entry per row.")
        fit_arr = fit_arr.astype(np.int64)
        if n and fit_arr.min() < 0:
            raise CountingProcessError("fit_index must be non-negative.")
    total_fits = int(fit_arr.max()) + 1 if n else 0
    if n_fits is not None:
        if n_fits < total_fits:
            raise CountingProcessError(f"n_fits={n_fits} but fit_index goes up to {total_fits - 1}.")
        total_fits = int(n_fits)
    n_covariates = design_arr.shape[1]
    if n == 0 or not event_arr.any():
        return _empty_table(total_fits, n_covariates)

    if strata is None:
        stratum_codes, n_strata = np.zeros(n, dtype=np.int64), 1
    else:
        strata_arr = np.asarray(strata)
        if strata_arr.shape[0] != n or strata_arr.ndim > 2:
            raise CountingProcessError("strata must be 1-D or 2-D with one entry (row) per input row.")
        stratum_codes, n_strata = factorize(strata_arr)
    group, group_keys = dense_codes(fit_arr * n_strata + stratum_codes, total_fits * n_strata)
    group_fit = group_keys // n_strata

    pattern, n_patterns = factorize(design_arr)
    patterns = np.empty((n_patterns, n_covariates))
    patterns[pattern] = design_arr

    # (group, pattern) cells, numbered in (group, pattern) order.
    cell, cell_keys = dense_codes(group * n_patterns + pattern, group_fit.shape[0] * n_patterns)
    cell_group = cell_keys // n_patterns
    cell_pattern = cell_keys % n_patterns
    n_groups = group_fit.shape[0]
    cells_per_group = np.bincount(cell_group, minlength=n_groups)
    first_cell_of_group = np.cumsum(cells_per_group) - cells_per_group

    # Time ranks turn (cell, time) into a single sortable int64 key.
    times = np.unique(np.concatenate([start_arr, stop_arr]))
    n_time_keys = times.shape[0] + 1
    start_rank = np.searchsorted(times, start_arr)
    stop_rank = np.searchsorted(times, stop_arr)

    # Risk sets: distinct (group, event time), in (fit, stratum, time) order.
    risk_keys = np.unique(group[event_arr] * n_time_keys + stop_rank[event_arr])
    risk_group = risk_keys // n_time_keys
    risk_time = risk_keys % n_time_keys

    # Every risk set is paired with every cell (pattern) of its group.
    rows_per_risk_set = cells_per_group[risk_group]
    query_risk_set = np.repeat(np.arange(risk_keys.shape[0], dtype=np.int64), rows_per_risk_set)
    query_cell = concatenated_ranges(first_cell_of_group[risk_group], rows_per_risk_set)
    query_key = query_cell * n_time_keys + risk_time[query_risk_set]

    # Rows with start < t minus rows with stop < t (the latter are a subset) = rows at risk at t.
    start_keys = np.sort(cell * n_time_keys + start_rank)
    stop_keys = np.sort(cell * n_time_keys + stop_rank)
    event_keys = np.sort(cell[event_arr] * n_time_keys + stop_rank[event_arr])
    at_risk = np.searchsorted(start_keys, query_key, side="left") - np.searchsorted(
        stop_keys, query_key, side="left"
    )
    events = np.searchsorted(event_keys, query_key, side="right") - np.searchsorted(
        event_keys, query_key, side="left"
    )

    keep = at_risk > 0
    return RiskSetTable(
        fit_index=group_fit[risk_group[query_risk_set[keep]]],
        risk_set_index=query_risk_set[keep],
        n_at_risk=at_risk[keep].astype(np.float64),
        n_events=events[keep].astype(np.float64),
        design=patterns[cell_pattern[query_cell[keep]]],
        n_fits=total_fits,
    )


def _empty_table(n_fits: int, n_covariates: int) -> RiskSetTable:
    return RiskSetTable(
        fit_index=np.zeros(0, dtype=np.int64),
        risk_set_index=np.zeros(0, dtype=np.int64),
        n_at_risk=np.zeros(0),
        n_events=np.zeros(0),
        design=np.zeros((0, n_covariates)),
        n_fits=n_fits,
    )
