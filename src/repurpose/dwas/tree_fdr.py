"""Multiplicity over the whole ATC tree: the hierarchical FDR procedure of Yekutieli (2008).

Why: BH within each ATC level controls the false discovery rate of each level's list on its own, but the
ranking reports discoveries from every level at once, and a substance is a child of the classes above it.
Yekutieli's procedure uses the tree: BH at level q over the coarsest screened classes (the root family);
then, for every rejected class, BH at level q over its children at the next finer screened level (a
family); the children of a class that is not rejected are not tested. A code whose parent class was not
fitted hangs from its nearest fitted ancestor (or joins the root family), so skipped levels are bridged.

Adjusted value. The families do not depend on q, so a code is rejected at level q exactly when its own
family's BH q-value and those of all its ancestors are <= q: `path_q` is the largest of them. Yekutieli
shows that when the p-values of true null hypotheses are independent and uniform, the procedure at
family level q keeps the false discovery rate over the full tree at most 2 delta* q, with delta* <= 1.44
(`YEKUTIELI_DELTA`; close to 1 in typical trees). `tree_q` = min(1, 2 x 1.44 x path_q) is therefore the
smallest full-tree FDR bound at which the code is a discovery, and `tree_q < alpha` controls the full-tree
FDR at alpha under that assumption. A class's users include its substances' users, so p-values of a
class and its substances are positively dependent; tests/test_tree_fdr.py checks the bound by simulation
both with independent p-values and with class z-statistics pooled from their substances'.

Imports numpy, scipy and polars only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from repurpose.lazy import lazy_module

stats = lazy_module("scipy.stats")

YEKUTIELI_DELTA = 1.44
"""Yekutieli's (2008) upper bound on delta*: the full-tree FDR is at most 2 delta* q at family level q."""

FULL_TREE_FACTOR = 2.0 * YEKUTIELI_DELTA
"""`tree_q` = min(1, FULL_TREE_FACTOR x the path's largest family q-value)."""

ROOT = ""
"""The parent of the root family (the coarsest screened classes)."""


@dataclass(frozen=True)
class TreeTest:
    """Per code: its family (parent code, ROOT for the root family), its BH q within the family, the largest
    family q on its path from the root (`path_q`) and the full-tree q (`tree_q`)."""

    codes: list[str]
    parent: list[str]
    family_q: np.ndarray
    path_q: np.ndarray
    tree_q: np.ndarray

    def frame(self) -> pl.DataFrame:
        """One row per code: atc_code, tree_family, tree_family_q, tree_q."""
        return pl.DataFrame(
            {
                "atc_code": self.codes,
                "tree_family": self.parent,
                "tree_family_q": self.family_q,
                "tree_q": self.tree_q,
            },
            schema={"atc_code": pl.String, "tree_family": pl.String, "tree_family_q": pl.Float64, "tree_q": pl.Float64},
        )

    def rejected(self, alpha: float) -> np.ndarray:
        """Codes rejected at full-tree FDR level alpha (tree_q < alpha, as every q-value rule of the ranking)."""
        return self.tree_q < alpha


def nearest_parent(code: str, present: set[str]) -> str:
    """The longest proper prefix of `code` that is in `present` (ATC codes nest by prefix), else ROOT."""
    for length in range(len(code) - 1, 0, -1):
        if code[:length] in present:
            return code[:length]
    return ROOT


def hierarchical_fdr(codes: list[str], p_values: np.ndarray) -> TreeTest:
    """Yekutieli's hierarchical BH over the tree the codes form by prefix (module docstring).

    `codes`: distinct ATC codes of the fitted classes (any screened levels); `p_values`: their p-values (same
    order; finite, in [0, 1])."""
    p = np.asarray(p_values, dtype=np.float64)
    if len(set(codes)) != len(codes):
        raise ValueError("hierarchical_fdr: each code once (one p-value per class)")
    if p.shape != (len(codes),) or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("hierarchical_fdr: one finite p-value in [0, 1] per code")
    present = set(codes)
    parent = [nearest_parent(code, present) for code in codes]
    families: dict[str, list[int]] = {}
    for i, family in enumerate(parent):
        families.setdefault(family, []).append(i)
    family_q = np.empty(len(codes))
    for members in families.values():
        family_q[members] = stats.false_discovery_control(p[members], method="bh")
    index = {code: i for i, code in enumerate(codes)}
    path_q = np.full(len(codes), np.nan)
    for i in sorted(range(len(codes)), key=lambda k: len(codes[k])):  # parents (shorter codes) first
        above = path_q[index[parent[i]]] if parent[i] != ROOT else 0.0
        path_q[i] = max(family_q[i], above)
    return TreeTest(
        codes=list(codes),
        parent=parent,
        family_q=family_q,
        path_q=path_q,
        tree_q=np.minimum(1.0, FULL_TREE_FACTOR * path_q),
    )
