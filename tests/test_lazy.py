"""The lazy imports of heavy libraries: imported on first use, the same objects afterwards, never our own modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from repurpose.lazy import lazy_module

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "repurpose"
HEAVY = ("scipy.stats", "lifelines", "sklearn", "matplotlib.pyplot")
"""Libraries no rule file needs while Snakemake parses it (pandas is left out: Snakemake itself imports it)."""


def test_a_lazy_module_imports_on_first_use_and_forwards_to_the_module():
    code = (
        "import sys\n"
        "from repurpose.lazy import lazy_module\n"
        "colorsys = lazy_module('colorsys')\n"
        "assert 'colorsys' not in sys.modules, 'imported before use'\n"
        "print(colorsys.rgb_to_hsv(1.0, 0.0, 0.0))\n"
        "import colorsys as real\n"
        "assert colorsys.rgb_to_hsv is real.rgb_to_hsv\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "(0.0, 1.0, 1.0)"


def test_a_missing_attribute_fails_as_on_the_module():
    math = lazy_module("math")
    assert math.sqrt(9.0) == 3.0
    try:
        math.no_such_function  # noqa: B018
    except AttributeError as error:
        assert "no_such_function" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_lazy_modules_are_third_party_libraries_never_ours():
    """Our own modules are imported at the top, where the architecture tests and readers see them."""
    named = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_module" and node.args:
                named.append((path.name, ast.literal_eval(node.args[0])))
    assert named, "no lazy module found: the test reads the wrong folder"
    assert not [n for n in named if n[1].split(".")[0] == "repurpose"], named


def test_parsing_the_rules_imports_no_heavy_library():
    """A job parses every rule file: the stage modules they import load the heavy libraries only when used."""
    lines = (REPO / "Snakefile").read_text().splitlines() + (REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()
    imports = [line for line in lines if line.startswith(("import ", "from repurpose"))]
    assert any("repurpose.dwas.candidates" in line for line in imports), "the rules' imports were not found"
    code = "\n".join([*imports, "import sys", f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
