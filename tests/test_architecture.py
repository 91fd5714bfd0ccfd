"""The package's structure as the stage contract promises it (docs/architecture.md): no import circle between
our modules, no module over 800 lines, no import hidden in a function or behind `except ImportError`, rules
that call imported stage functions, and every stage function declaring the config it reads."""

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
MAX_MODULE_LINES = 800


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (from the source text)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repurpose"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    targets.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("repurpose")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_circle_between_package_modules():
    graph = package_imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_over_800_lines():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


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
