"""The package's structure as the stage contract promises it (docs/architecture.md): no import of our own
modules hidden in a function or behind `except ImportError`, rules that call imported stage functions and
spell no results path, and every stage function seeing only the config it declares. (No import circle and
no module over 800 lines: tests/test_rules.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from repurpose.layout import results_layout
from repurpose.stages import StageDeclaration, UndeclaredConfigKey, rerun_settings, stage
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "repurpose"


def test_no_hidden_imports_of_our_own_modules():
    hidden = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("repurpose"):
                    hidden.append(f"{path.relative_to(REPO)}:{node.lineno} {node.module}")
        for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler)):
            if isinstance(handler.type, ast.Name) and handler.type.id == "ImportError":
                hidden.append(f"{path.relative_to(REPO)}:{handler.lineno} except ImportError")
    assert not hidden, hidden


def test_rules_call_imported_functions_not_strings():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text(encoding="utf-8")
        assert not re.search(r"run_logged\([^,]+,\s*[\"']", text), f"{smk.name} names a function as a string"
        assert '"results/' not in text and "f\"{RESULTS}/" not in text, f"{smk.name} spells a results path"


def test_a_stage_sees_only_what_it_declares():
    @stage(reads=("screen.fdr_alpha", "inputs.atc_index"), drop=())
    def reads_alpha(config):
        return config["screen"]["fdr_alpha"], config["inputs"]["atc_index"], config["resources"]

    @stage(reads=("screen.fdr_alpha",))
    def reads_more(config):
        return config["screen"]["lags_years"]

    config = load_config(REPO / "config/config.yaml")
    assert reads_alpha(config) == (0.05, None, config["resources"])
    with pytest.raises(UndeclaredConfigKey, match="screen.lags_years"):
        reads_more(config)
    assert rerun_settings(reads_alpha, config) == {"screen.fdr_alpha": 0.05, "inputs.atc_index": None}


def test_dropped_keys_leave_the_rerun_settings():
    config = load_config(REPO / "config/config.yaml")
    declaration = StageDeclaration("screen", ("screen",), ("screen.atc_levels", "screen.split_by"))
    settings = declaration.settings(config)["screen"]
    assert "atc_levels" not in settings and "split_by" not in settings and settings["lags_years"] == [0, 2, 5, 10]
    with pytest.raises(UndeclaredConfigKey):
        declaration.view(config)["screen"]["atc_levels"]


def test_layout_patterns_and_paths():
    paths = results_layout("out")
    assert paths.exposure() == "out/exposure/atc_level_{level}.parquet"
    assert paths.exposure(3) == "out/exposure/atc_level_3.parquet"
    assert paths.screen_part(5, "N") == "out/screen/parts/atc_level_5/N.parquet"
