"""The release's own attacker: the bounds a reader can put on every hidden count from the sums it knows.

Hiding one more cell in every row and column that has exactly one hidden cell (`disclosure.Partition`) is not
enough in a table with margins both ways (clinic x reason, with countries over clinics): adding and
subtracting rows and columns together can still pin a small count. `pinned_rows` runs the attack a careful
reader would run on a long table released as one structure (`disclosure.release_linked`): every shown count
is an interval (its rounding), every hidden or unreleased count is [0, inf), every partition is an equation
(total = sum of parts) and every link an equality, and the intervals are narrowed through the equations until
nothing changes (interval constraint propagation). A row is pinned when its exact count is 1 to min_cell - 1
and its interval lies inside that range; `release_linked` then hides another cell and audits again.

Imports nothing of the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Equation = list[tuple[int, int]]  # (coefficient, row): sum of coefficient x count = 0

MAX_PASSES = 200


def shown_interval(value: int | None, min_cell: int, base: int) -> tuple[float, float]:
    """What a reader knows of a count from its released value: hidden [0, inf); 0 exactly; otherwise the
    counts that round to it and are not small (a small count would have been hidden)."""
    if value is None:
        return 0.0, math.inf
    if value == 0:
        return 0.0, 0.0
    return float(max(value - base // 2, min_cell)), float(value + (base - 1) // 2)


def narrow(intervals: Sequence[tuple[float, float]], equations: Sequence[Equation]) -> list[tuple[float, float]]:
    """Every interval narrowed by every equation, repeatedly, until none changes (or MAX_PASSES)."""
    bounds = list(intervals)
    for _ in range(MAX_PASSES):
        changed = False
        for equation in equations:
            for coef, row in equation:
                lo = hi = 0.0
                for other_coef, other in equation:
                    if other == row:
                        continue
                    a, b = bounds[other]
                    low_term = -other_coef * (a if -other_coef > 0 else b)
                    high_term = -other_coef * (b if -other_coef > 0 else a)
                    lo, hi = lo + low_term, hi + high_term
                new = (lo / coef, hi / coef) if coef > 0 else (hi / coef, lo / coef)
                old = bounds[row]
                narrowed = (max(old[0], _ceil(new[0])), min(old[1], _floor(new[1])))
                if narrowed != old and narrowed[0] <= narrowed[1]:
                    bounds[row], changed = narrowed, True
        if not changed:
            break
    return bounds


def _ceil(value: float) -> float:
    return float(math.ceil(value - 1e-9)) if math.isfinite(value) else value


def _floor(value: float) -> float:
    return float(math.floor(value + 1e-9)) if math.isfinite(value) else value


def pinned_rows(
    exact: Sequence[int | None],
    released: Sequence[int | None],
    unreleased: Sequence[bool],
    equations: Sequence[Equation],
    min_cell: int,
    base: int,
) -> list[int]:
    """The rows whose exact count is small and which a reader of `released` pins inside [1, min_cell - 1]."""
    intervals = [(0.0, math.inf) if hidden else shown_interval(value, min_cell, base)
                 for value, hidden in zip(released, unreleased, strict=True)]  # fmt: skip
    bounds = narrow(intervals, equations)
    return [i for i, (lo, hi) in enumerate(bounds)
            if exact[i] is not None and 1 <= exact[i] < min_cell and lo >= 1 and hi <= min_cell - 1]  # fmt: skip
