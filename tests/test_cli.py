"""The `repurpose` command line."""

from __future__ import annotations

import json

import pytest

from repurpose.cli import main


def test_simulate_command_writes_registries_and_native_copy(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--n-persons", "500", "--seed", "3",
                 "--native", str(tmp_path / "native")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["persons"] == 500
    assert (tmp_path / "sim" / "ground_truth.json").exists()
    assert (tmp_path / "native" / "population.csv").exists()
    assert summary["native"]["inputs"]["population"]["sep"] == ";"


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["frobnicate"])
