"""The hierarchical FDR over the ATC tree (`repurpose.dwas.tree_fdr`, Yekutieli 2008): by hand on a small tree,
against the literal family-by-family procedure, and on simulated trees (uniform nulls, planted effects in one
branch) for the full-tree FDR bound and power, with independent p-values and with class z-statistics pooled
from their substances' (the dependence of the ATC screen)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from repurpose.dwas.tree_fdr import FULL_TREE_FACTOR, ROOT, hierarchical_fdr, nearest_parent


def test_by_hand_on_a_small_tree():
    codes = ["A", "B", "C", "D01", "A01", "A02", "A03", "B01", "A01AA01"]
    p = np.array([0.001, 0.04, 0.5, 0.2, 0.01, 0.03, 0.9, 0.001, 0.02])
    test = hierarchical_fdr(codes, p)
    by = dict(zip(codes, range(len(codes)), strict=True))
    # D01's parent D is not fitted: it joins the root family (A, B, C, D01); A01AA01 hangs from A01 (A01A, A01AA absent).
    assert [test.parent[by[c]] for c in ("A", "D01", "A01", "B01", "A01AA01")] == [ROOT, ROOT, "A", "B", "A01"]
    # Root family BH over 4: sorted 0.001, 0.04, 0.2, 0.5 -> 0.004, 0.08, 0.2667, 0.5.
    expected_family = {"A": 0.004, "B": 0.08, "D01": 0.8 / 3, "C": 0.5, "A01": 0.03, "A02": 0.045, "A03": 0.9, "B01": 0.001, "A01AA01": 0.02}
    expected_path = {"A": 0.004, "B": 0.08, "D01": 0.8 / 3, "C": 0.5, "A01": 0.03, "A02": 0.045, "A03": 0.9, "B01": 0.08, "A01AA01": 0.03}
    for code in codes:
        assert test.family_q[by[code]] == pytest.approx(expected_family[code])
        assert test.path_q[by[code]] == pytest.approx(expected_path[code])
        assert test.tree_q[by[code]] == pytest.approx(min(1.0, 2 * 1.44 * expected_path[code]))
    # B01's own p is tiny but its class B is not rejected, so it is gated.
    rejected = {c for c, r in zip(codes, test.rejected(0.1), strict=True) if r}
    assert rejected == {"A", "A01", "A01AA01"}
    frame = test.frame()
    assert frame.columns == ["atc_code", "tree_family", "tree_family_q", "tree_q"] and frame.height == len(codes)


def test_nearest_parent_bridges_skipped_levels():
    assert nearest_parent("N02BE01", {"N02", "N02BE01"}) == "N02"
    assert nearest_parent("N02BE01", {"N02BE", "N02"}) == "N02BE"
    assert nearest_parent("N02", {"N02BE"}) == ROOT


def literal_procedure(codes: list[str], p: np.ndarray, q: float) -> set[str]:
    """Yekutieli's procedure as written: BH at q in the root family, then in each rejected node's children."""
    present = set(codes)
    children: dict[str, list[int]] = {}
    for i, code in enumerate(codes):
        children.setdefault(nearest_parent(code, present), []).append(i)
    rejected: set[str] = set()
    queue = [ROOT]
    while queue:
        members = children.get(queue.pop(), [])
        if not members:
            continue
        family = p[members]
        order = np.sort(family)
        passing = np.flatnonzero(order <= q * np.arange(1, len(members) + 1) / len(members))
        if passing.size:
            threshold = order[passing.max()]
            for i in members:
                if p[i] <= threshold:
                    rejected.add(codes[i])
                    queue.append(codes[i])
    return rejected


def simulated_tree(n_groups: int = 8, n_classes: int = 4, n_substances: int = 5) -> tuple[list[str], list[list[int]]]:
    """Codes of a three-level tree (groups 'A'.., classes 'A01'.., substances 'A01AA01'..) and, per code, the
    indices of the substances below it (itself for a substance)."""
    codes, below = [], []
    letters = "ABCDEFGHIJKLMNOP"[:n_groups]
    substance_index = {}
    for g in letters:
        for c in range(1, n_classes + 1):
            for s in range(1, n_substances + 1):
                substance_index[f"{g}{c:02d}AA{s:02d}"] = len(substance_index)
    for g in letters:
        codes.append(g)
        below.append([i for code, i in substance_index.items() if code.startswith(g)])
        for c in range(1, n_classes + 1):
            codes.append(f"{g}{c:02d}")
            below.append([i for code, i in substance_index.items() if code.startswith(f"{g}{c:02d}")])
    for code, i in substance_index.items():
        codes.append(code)
        below.append([i])
    return codes, below


def test_literal_procedure_and_path_q_agree_on_random_trees():
    codes, _ = simulated_tree()
    rng = np.random.default_rng(11)
    for _ in range(50):
        p = np.where(rng.random(len(codes)) < 0.2, rng.random(len(codes)) * 1e-3, rng.random(len(codes)))
        test = hierarchical_fdr(codes, p)
        for q in (0.01, 0.05, 0.2):
            assert {c for c, pq in zip(codes, test.path_q, strict=True) if pq <= q} == literal_procedure(codes, p, q)


@pytest.mark.parametrize("pooled", [False, True], ids=["independent", "pooled"])
def test_full_tree_fdr_is_below_the_stated_bound_and_the_planted_branch_is_found(pooled):
    """Substance effects planted in 3 of the 5 substances of one class (z mean -6.5); every other substance null.
    A class is a true null when all its substances are. Independent: each code's z drawn on its own (non-null
    codes with the mean of the pooled model). Pooled: a class's z is the sum of its substances' z over sqrt(k),
    as an inverse-variance pooled estimate of equally precise substances."""
    codes, below = simulated_tree()
    n_substances = max(i for b in below for i in b) + 1
    planted = [codes.index(f"A01AA0{s}") - codes.index("A01AA01") for s in (1, 2, 3)]
    mu = np.zeros(n_substances)
    mu[planted] = -6.5
    weights = np.zeros((len(codes), n_substances))
    for row, substances in enumerate(below):
        weights[row, substances] = 1 / np.sqrt(len(substances))
    node_mean = weights @ mu
    is_null = np.array([np.all(mu[b] == 0) for b in below])
    rng = np.random.default_rng(2008)
    alpha, replicates = 0.05, 1000
    fdp, found = [], []
    for _ in range(replicates):
        if pooled:
            z = weights @ rng.normal(mu, 1.0)
        else:
            z = rng.normal(node_mean, 1.0)
        p = 2 * stats.norm.sf(np.abs(z))
        rejected = hierarchical_fdr(codes, p).rejected(alpha)
        fdp.append((rejected & is_null).sum() / max(rejected.sum(), 1))
        found.append(all(rejected[codes.index(f"A01AA0{s}")] for s in (1, 2, 3)))
    fdr = float(np.mean(fdp))
    se = float(np.std(fdp) / np.sqrt(replicates))
    print(f"\n{'pooled' if pooled else 'independent'}: full-tree FDR {fdr:.4f} (se {se:.4f}) at tree_q < {alpha}; planted branch found in {np.mean(found):.2f}")
    assert fdr <= alpha  # the stated bound (2 x 1.44 x family level) on the full tree
    assert np.mean(found) >= 0.8
    assert FULL_TREE_FACTOR == pytest.approx(2.88)


def test_a_null_tree_rarely_rejects_anything():
    codes, _ = simulated_tree()
    rng = np.random.default_rng(5)
    any_rejected = np.mean([hierarchical_fdr(codes, rng.random(len(codes))).rejected(0.05).any() for _ in range(500)])
    # Under the global null the FDR is the chance of any rejection: at most the bound.
    assert any_rejected <= 0.05


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="each code once"):
        hierarchical_fdr(["A", "A"], np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite p-value"):
        hierarchical_fdr(["A", "B"], np.array([0.1, np.nan]))
