"""Each rule of the method has one home, and the package keeps its shape: the exposure window, the Wald
summary, the ranking's columns derived from the config, no import circle, no private import across modules,
no import inside a function in the method's modules, and no module over 800 lines."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lifelines import CoxPHFitter

from repurpose.config import validate_config
from repurpose.cox.engine import fit_efron
from repurpose.cox.result import wald, wald_p_value
from repurpose.cox.risk_set_table import aggregate_counting_process
from repurpose.dwas.candidates import screen_evidence, shown_estimates
from repurpose.dwas.signals import collapse_tree
from repurpose.dwas.window import NEVER_EXPOSED, exposed_from, lag_days
from repurpose.schemas import drug_ranking_columns

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "repurpose"
REFERENCE = Path(__file__).parent / "data" / "reference_demo_8000"
MAX_MODULE_LINES = 800
# Modules of the method that may not import inside functions (the lead's stage modules are being reworked).
NO_FUNCTION_IMPORTS = ("cox", "dwas", "schemas.py", "federation/distributed.py", "federation/design.py")


def config_with(candidates: dict | None = None, **screen):
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    main_lag = {"main_lag_years": screen["lags_years"][1]} if "lags_years" in screen else {}
    return validate_config({**base, "screen": screen, "candidates": {**main_lag, **(candidates or {})}})


# --------------------------------------------------------------------------------------------------
# The exposure window
# --------------------------------------------------------------------------------------------------


def test_lag_in_days_by_hand():
    assert [lag_days(v) for v in (0, 1, 2, 0.5, 5)] == [0, 365, 730, 183, 1826]


def test_exposed_from_is_the_later_of_entry_and_the_lagged_start():
    entry = np.array([1000, 1000, 1000, 1000], dtype=np.int32)
    start = np.array([500, 900, 1200, 400], dtype=np.int32)
    # before entry and still before entry after the lag; lag carries past entry; after entry; lag lands on entry
    assert exposed_from(entry, start, 200).tolist() == [1000, 1100, 1400, 1000]
    assert exposed_from(entry, start, 200).dtype == np.int32  # the screen's narrow arrays stay narrow
    assert exposed_from(entry, start, 0).tolist() == [1000, 1000, 1200, 1000]


def test_never_exposed_stays_beyond_every_exit_whatever_the_lag():
    entry = np.array([0, 40_000], dtype=np.int64)
    never = np.full(2, NEVER_EXPOSED, dtype=np.int64)
    opened = exposed_from(entry, never, lag_days(30))
    assert np.all(opened > 200 * 366) and np.all(opened > 0)  # no overflow into negative ages


# --------------------------------------------------------------------------------------------------
# The Wald summary
# --------------------------------------------------------------------------------------------------


def test_wald_summary_equals_lifelines_on_the_same_fit():
    rng = np.random.default_rng(5)
    n = 400
    x = rng.integers(0, 2, n).astype(float)
    z = rng.integers(0, 3, n).astype(float)
    time = rng.exponential(1 / np.exp(0.5 * x - 0.3 * z))
    event = rng.random(n) < 0.8
    frame = pd.DataFrame({"T": np.round(time, 1) + 0.1, "E": event.astype(int), "x": x, "z": z})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = CoxPHFitter().fit(frame, "T", "E").summary
    ours = wald(reference["coef"].to_numpy(), reference["se(coef)"].to_numpy())
    assert np.allclose(ours.hr, reference["exp(coef)"], rtol=1e-12)
    assert np.allclose(ours.ci_lower, reference["exp(coef) lower 95%"], rtol=1e-12)
    assert np.allclose(ours.ci_upper, reference["exp(coef) upper 95%"], rtol=1e-12)
    assert np.allclose(ours.z, reference["z"], rtol=1e-12)
    assert np.allclose(ours.p_value, reference["p"], rtol=1e-9)
    # and the engine's own summary on the same data agrees with lifelines' Efron fit
    table = aggregate_counting_process(np.zeros(n), frame["T"], frame["E"], frame[["x", "z"]].to_numpy())
    summary = fit_efron(table).summary(["x", "z"])
    assert np.allclose(summary["exp(coef)"], reference["exp(coef)"], rtol=1e-6)
    assert np.allclose(summary["p"], reference["p"], rtol=1e-4)
    assert list(summary["covariate"]) == ["x", "z"]


def test_wald_by_hand_and_its_missing_values():
    summary = wald(np.log(2.0), 0.5, alpha=0.1)
    assert float(summary.hr) == pytest.approx(2.0)
    assert float(summary.ci_lower) == pytest.approx(2.0 * np.exp(-1.6448536269514722 * 0.5))
    assert float(wald_p_value(1.959963984540054, 1.0)) == pytest.approx(0.05)
    missing = wald(np.array([np.nan, 0.3]), np.array([0.1, np.nan]))
    assert np.isnan(missing.hr[0]) and missing.hr[1] == pytest.approx(np.exp(0.3))
    assert np.isnan(missing.ci_lower).all() and np.isnan(missing.p_value).all()
    with pytest.raises(ValueError, match="alpha"):
        wald(0.1, 0.1, alpha=1.5)


# --------------------------------------------------------------------------------------------------
# Columns derived from the config
# --------------------------------------------------------------------------------------------------


def test_drug_ranking_columns_of_the_default_config_are_the_stored_reference_header():
    config = config_with()
    header = pl.read_csv(REFERENCE / "drug_ranking.csv", n_rows=0).columns  # written before the restructuring
    assert drug_ranking_columns(config) == header


def test_drug_ranking_columns_follow_the_configured_lags_and_dose_cut_points():
    columns = drug_ranking_columns(config_with(lags_years=[0, 1, 3], dose_cutpoints_ddd=[50]))
    assert [c for c in columns if c.startswith("hr_lag")] == ["hr_lag0", "hr_lag1", "hr_lag3"]
    assert [c for c in columns if c.startswith("hr_separated_lag")] == ["hr_separated_lag1", "hr_separated_lag3"]
    assert [c for c in columns if c.startswith("hr_dose_")] == ["hr_dose_1", "hr_dose_2"]
    assert len(columns) == len(set(columns))


def test_screen_evidence_has_an_hr_for_each_screened_lag_and_no_other():
    rows = []
    for lag in (0.0, 1.0, 3.0):
        for code, b in (("N02BE", -0.4), ("N02BA", 0.1), ("N02AA", 0.05)):
            rows.append({"atc_code": code, "atc_name": code, "atc_level": 4, "lag_years": lag, "sex": "all",
                         "n_exposed": 500, "n_exposed_cases": 40, "log_hr": b, "se": 0.1,
                         "p_value": float(wald_p_value(b, 0.1)), "q_value": 0.001 if b < 0 else 0.5,
                         "status": "ok"})  # fmt: skip
    dwas = pl.DataFrame(rows)
    settings = config_with(lags_years=[0, 1, 3], candidates={"main_lag_years": 1})["candidates"]
    shown = shown_estimates(dwas, 1.0)
    tree = collapse_tree(shown, settings["carrier_alpha"])
    evidence = screen_evidence(dwas, shown.filter(pl.col("atc_code") == "N02BE"), tree, {}, {}, settings)
    assert [c for c in evidence.columns if c.startswith("hr_lag")] == ["hr_lag0", "hr_lag1", "hr_lag3"]
    assert evidence["hr_lag3"][0] == pytest.approx(np.exp(-0.4))
    assert evidence["hr"][0] == pytest.approx(np.exp(-0.4))
    assert evidence["ci_upper"][0] == pytest.approx(np.exp(-0.4 + 1.959963984540054 * 0.1))


# --------------------------------------------------------------------------------------------------
# The package's shape
# --------------------------------------------------------------------------------------------------


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, name: str, *, inside_functions: bool = False) -> list[tuple[str, list[str]]]:
    """(module, imported names) of a module's imports: those it runs when imported, or all of them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree) if inside_functions else tree.body:
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [module])
            out.append((module, [alias.name for alias in node.names]))
    return out


def test_no_import_circle_between_the_package_modules_even_through_imports_inside_functions():
    found = modules()
    graph = {}
    for name, path in found.items():
        targets = set()
        for module, names in imports_of(path, name, inside_functions=True):
            for candidate in [module, *(f"{module}.{n}" for n in names)]:
                if candidate in found and candidate != name:
                    targets.add(candidate)
        graph[name] = targets
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_module_imports_another_modules_private_names():
    offenders = [
        f"{name}: from {module} import {n}"
        for name, path in modules().items()
        for module, names in imports_of(path, name, inside_functions=True)
        for n in names
        if module.startswith("repurpose") and n.startswith("_") and not n.startswith("__")
    ]
    assert not offenders


def test_the_method_modules_import_nothing_inside_functions():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(NO_FUNCTION_IMPORTS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                offenders += [f"{relative}:{inner.lineno}" for inner in ast.walk(node)
                              if isinstance(inner, ast.Import | ast.ImportFrom)]  # fmt: skip
    assert not offenders


def test_no_module_over_800_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long
