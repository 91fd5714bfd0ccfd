"""`simulate.planted_substances`: another table of planted MS truth, checked cell by cell, and the packaged
table's output unchanged when the option is left at its default."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from repurpose.config import ConfigError
from repurpose.simulate import simulate_registries
from repurpose.simulate.profiles import (
    CAUSAL_PROTECTIVE,
    CONFOUNDED,
    MECHANISM,
    NULL,
    PLANTED,
    ProfileTableError,
    load_planted,
)
from repurpose.study_config import load_config

REPO = Path(__file__).resolve().parents[1]
PACKAGED = resources.files("repurpose").joinpath("data/simulator/ms_planted_substances.csv").read_text("utf-8")
WEAK_EFFECTS = REPO / "benchmarks/planted/weak_effects.csv"
SMALL = {"n_persons": 1_500, "seed": 3, "n_corrupt_rows": 6, "chunk_size": 1_000}


def digests(out: Path) -> dict[str, str]:
    """MD5 of every file the simulator wrote, by path under `out`."""
    return {str(p.relative_to(out)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*")) if p.is_file()}


def test_default_and_an_explicit_copy_of_the_packaged_table_give_the_same_files_and_another_table_does_not(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "copy.csv"
    copy.write_text(PACKAGED, encoding="utf-8")
    other = tmp_path / "other.csv"  # paracetamol, common and otherwise null, planted protective
    other.write_text(PACKAGED.replace(",ADRB2,AGONIST,", ",HTR2A,ANTAGONIST,") + "N02BE01,causal_protective,0.5,0.3,,,test row\n", encoding="utf-8")
    default, explicit, changed = (
        digests(Path(simulate_registries(tmp_path / name, **SMALL, **extra)["out_dir"]))
        for name, extra in (("default", {}), ("copy", {"planted_substances": copy}), ("other", {"planted_substances": other}))
    )
    truth = {name: json.loads((tmp_path / name / "ground_truth.json").read_text()) for name in ("default", "copy", "other")}

    assert default.keys() == explicit.keys() == changed.keys()
    assert {k for k in default if default[k] != explicit[k]} == {"ground_truth.json"}
    assert truth["copy"]["parameters"].pop("planted_substances") == str(copy)
    assert truth["copy"] == truth["default"]  # the only difference: the table's path named in the parameters
    assert "planted_substances" not in truth["default"]["parameters"]
    assert truth["default"]["planted"] == {code: vars(planted) for code, planted in PLANTED.items()}

    # the option is read: the added protective substance is planted, prescribed to its target and the data move
    assert truth["other"]["substances"]["N02BE01"]["role"] == CAUSAL_PROTECTIVE
    assert truth["default"]["substances"]["N02BE01"]["role"] == NULL
    assert truth["other"]["substances"]["N02BE01"]["planted_hr"] == 0.5
    assert truth["other"]["substances"]["N02BE01"]["target_ever_use"] == 0.3
    # the mechanism's target is the table's, not a constant of the simulator
    assert (truth["default"]["mechanism"]["gene"], truth["default"]["mechanism"]["action_type"]) == ("ADRB2", "AGONIST")
    assert (truth["other"]["mechanism"]["gene"], truth["other"]["mechanism"]["action_type"]) == ("HTR2A", "ANTAGONIST")
    moved = {k for k in default if default[k] != changed[k]}
    assert {"ms_registry.parquet", "ground_truth_persons.parquet", "prescriptions/dispensings_2010.parquet"} <= moved


def with_row(text: str, line: int, **cells: str) -> str:
    """`text` (a CSV) with the given cells of its `line` (header = line 1) replaced."""
    rows = text.splitlines()
    header = rows[0].split(",")
    values = rows[line - 1].split(",", len(header) - 1)
    for column, value in cells.items():
        values[header.index(column)] = value
    rows[line - 1] = ",".join(values)
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize(
    ("edit", "line", "column", "says"),
    [
        ({"role": "protective"}, 3, "role", "must be one of"),
        ({"planted_hr": "0.6x"}, 3, "planted_hr", "must be a number"),
        ({"planted_hr": "1.2"}, 2, "planted_hr", "in (0, 1)"),  # a protective row with a harmful HR
        ({"planted_hr": "0.9"}, 6, "planted_hr", "above 1"),  # a harmful row with a protective HR
        ({"planted_hr": "0.8"}, 15, "planted_hr", "1 (no effect)"),  # a prodromal row with an effect
        ({"ever_use": "15"}, 4, "ever_use", "share in (0, 1)"),
        ({"rationale": " "}, 5, "rationale", "empty"),
        ({"atc_code": "R06AA04"}, 7, "atc_code", "repeats 'R06AA04' (first on line 2)"),
        ({"target_gene": ""}, 10, "target_gene", "is empty (a mechanism row names the target"),
        ({"target_action_type": "ANTAGONIST"}, 2, "target_action_type", "names a target on a causal_protective row"),
    ],
)
def test_a_bad_cell_is_named_by_file_line_and_column(tmp_path: Path, edit: dict[str, str], line: int, column: str, says: str) -> None:
    table = tmp_path / "planted.csv"
    table.write_text(with_row(PACKAGED, line, **edit), encoding="utf-8")
    with pytest.raises(ProfileTableError) as error:
        load_planted(table)
    assert f"{table} line {line}: column {column!r}" in str(error.value)
    assert says in str(error.value)


def test_table_wide_mistakes_are_named(tmp_path: Path) -> None:
    table = tmp_path / "planted.csv"
    table.write_text(PACKAGED.replace(",ever_use,", ",everuse,", 1), encoding="utf-8")
    with pytest.raises(ProfileTableError, match=r"planted\.csv: missing column\(s\) \['ever_use'\]"):
        load_planted(table)
    table.write_text(with_row(PACKAGED, 13, planted_hr="0.7"), encoding="utf-8")  # one mechanism row apart
    with pytest.raises(ProfileTableError, match=r"one value for every mechanism row, got \[0\.65, 0\.7\]"):
        load_planted(table)
    with pytest.raises(ProfileTableError, match=r"cannot read .*absent\.csv"):
        load_planted(tmp_path / "absent.csv")
    table.write_text(with_row(PACKAGED, 13, target_gene="ADRB1"), encoding="utf-8")
    with pytest.raises(ProfileTableError, match=r"must name one target for every mechanism row, got ADRB2 AGONIST \(line 9\), ADRB1 AGONIST \(line 13\)"):
        load_planted(table)
    without_targets = "".join(
        ",".join(line.split(",", 6)[:4] + line.split(",", 6)[6:]) + "\n" for line in PACKAGED.splitlines()
    )
    table.write_text(without_targets, encoding="utf-8")
    with pytest.raises(ProfileTableError, match=r"line 9: column 'target_gene' is missing"):
        load_planted(table)
    table.write_text("".join(line + "\n" for line in without_targets.splitlines() if ",mechanism," not in line), encoding="utf-8")
    assert load_planted(table).mechanism_target is None  # no mechanism planted: no target columns needed


def test_codes_the_simulator_does_not_dispense_or_that_carry_a_parkinson_role_are_refused(tmp_path: Path) -> None:
    table = tmp_path / "planted.csv"
    table.write_text(PACKAGED + "L04AX07,causal_protective,0.8,0.01,,,dimethyl fumarate: an MS treatment\n", encoding="utf-8")
    line = len(PACKAGED.splitlines()) + 1
    with pytest.raises(ProfileTableError, match=rf"planted\.csv line {line}: column 'atc_code' 'L04AX07' is not a substance"):
        simulate_registries(tmp_path / "out", **SMALL, planted_substances=table)
    table.write_text(PACKAGED + "M01AE01,causal_protective,0.8,0.1,,,ibuprofen\n", encoding="utf-8")
    simulate_registries(tmp_path / "ms_only", **SMALL, planted_substances=table)  # fine without the Parkinson outcome
    with pytest.raises(ProfileTableError, match=r"\['M01AE01'\] have a planted MS role and a Parkinson role"):
        simulate_registries(tmp_path / "both", **SMALL, planted_substances=table, parkinson={"enabled": True})


def test_the_config_takes_a_path_or_null(tmp_path: Path) -> None:
    study = tmp_path / "weak.yaml"
    study.write_text(f"simulate: {{planted_substances: {WEAK_EFFECTS}}}\n", encoding="utf-8")
    assert load_config(REPO / "config/config.yaml")["simulate"]["planted_substances"] is None
    assert load_config(REPO / "config/config.yaml", study)["simulate"]["planted_substances"] == str(WEAK_EFFECTS)
    study.write_text("simulate: {planted_substances: 3}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="simulate.planted_substances"):
        load_config(REPO / "config/config.yaml", study)


def test_the_shipped_harder_table_plants_what_its_docs_say() -> None:
    """benchmarks/planted/weak_effects.csv (docs/benchmarks.md): weaker protective effects over more classes,
    several sharing a level-4 class with simulated nulls, more confounded nulls than the packaged table."""
    weak = load_planted(WEAK_EFFECTS)
    protective = {code: p.planted_hr for code, p in weak.substances.items() if p.role in (CAUSAL_PROTECTIVE, MECHANISM)}
    assert all(0.75 <= hr <= 0.9 for hr in protective.values())
    default_protective = [p for p in PLANTED.values() if p.role in (CAUSAL_PROTECTIVE, MECHANISM)]
    assert len(protective) > len(default_protective)
    assert len({code[:3] for code in weak.codes(CAUSAL_PROTECTIVE)}) >= 8
    assert len(weak.codes(CONFOUNDED)) > sum(p.role == CONFOUNDED for p in PLANTED.values())
    assert all(p.rationale.strip() for p in weak.substances.values())
