"""Signals, not codes: collapse the ATC tree so that one association is one row of the drug ranking.

A drug-wide screen fits every ATC level, so one substance with an effect shows up at its level-5 code and
again at every class above it (hydroxychloroquine as P01, P01B, P01BA and P01BA02). The rule, applied
from the finest screened level upwards on the both-sexes main-lag estimates:

- a class's *carriers* are its children at the next finer screened level whose estimate lies on the same
  side of 1 as the class's and has p < `carrier_alpha`;
- a class with exactly one carrier is carried by it: it joins the carrier's signal (which may itself be a
  substance's signal, so the chain P01 -> P01B -> P01BA -> P01BA02 ends at the substance);
- a class with two or more carriers stays a signal of its own (a class effect carried by several
  substances, listed in `carried_by`), and so does a class with no carrier (an association only visible
  when its substances are pooled).

Every code keeps its own estimate in the screen table; the ranking shows the signal's own code and lists
the collapsed codes in `also_seen_at`. Substances are never collapsed into classes, so each substance is
the code of exactly one row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class SignalTree:
    """`signal_of[code]`: the code whose row carries `code`; `carried_by[code]`: a class signal's carriers."""

    signal_of: dict[str, str]
    carried_by: dict[str, list[str]]

    def also_seen_at(self, code: str) -> list[str]:
        """The other codes collapsed into `code`'s signal (sorted coarsest first)."""
        return sorted((c for c, s in self.signal_of.items() if s == code and c != code), key=lambda c: (len(c), c))


def collapse_tree(estimates: pl.DataFrame, carrier_alpha: float) -> SignalTree:
    """Collapse classes into signals (module docstring). `estimates`: one row per fitted code with
    `atc_code`, `atc_level`, `log_hr`, `p_value` (both sexes, the lag of the ranking)."""
    rows = {r["atc_code"]: r for r in estimates.iter_rows(named=True)}
    levels = sorted({int(r["atc_level"]) for r in rows.values()})
    signal_of = {code: code for code in rows}
    carried_by: dict[str, list[str]] = {}
    by_level = {level: sorted(c for c, r in rows.items() if int(r["atc_level"]) == level) for level in levels}
    for finer, coarser in zip(reversed(levels), list(reversed(levels))[1:], strict=False):
        for code in by_level[coarser]:
            b = rows[code]["log_hr"]
            if b is None or not np.isfinite(b) or b == 0:
                continue
            carriers = [
                child
                for child in by_level[finer]
                if child.startswith(code)
                and _finite(rows[child]["log_hr"])
                and np.sign(rows[child]["log_hr"]) == np.sign(b)
                and _finite(rows[child]["p_value"])
                and rows[child]["p_value"] < carrier_alpha
            ]
            if len(carriers) == 1:
                signal_of[code] = signal_of[carriers[0]]
            elif len(carriers) > 1:
                carried_by[code] = sorted({signal_of[c] for c in carriers})
    return SignalTree(signal_of=signal_of, carried_by=carried_by)


def _finite(value: object) -> bool:
    return value is not None and bool(np.isfinite(value))  # type: ignore[arg-type]
