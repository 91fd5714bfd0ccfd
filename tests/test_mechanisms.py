"""Target mapping and the mechanism ranking on hand-made screen rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from repurpose.config import validate_config
from repurpose.dwas.mechanisms import map_substances, rank_mechanisms, read_drug_targets


def settings():
    base = {"inputs": {n: {"path": "x"} for n in ("population", "prescriptions", "ms_registry")}}
    return validate_config(base)["candidates"]


def test_demo_mapping_reads_drugcentral_layout():
    targets = read_drug_targets(None)
    assert {"drug_name", "target", "target_name", "action_type"} <= set(targets.columns)
    assert targets.filter((pl.col("drug_name") == "salbutamol") & (pl.col("target") == "ADRB2"))["action_type"].to_list() == ["AGONIST"]


def test_reader_names_missing_columns(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("DRUG_NAME\tGENE\nx\tY\n")
    with pytest.raises(ValueError, match="ACTION_TYPE"):
        read_drug_targets(path)


def test_mapping_by_inn_is_case_and_space_insensitive_and_reports_unmatched():
    substances = pl.DataFrame({"atc_code": ["R03AC02", "X99XX99"], "atc_name": ["Salbutamol ", "unknownium"]})
    mapping, matches = map_substances(substances, read_drug_targets(None))
    assert "ADRB2" in mapping.filter(pl.col("atc_code") == "R03AC02")["target"].to_list()
    assert matches.filter(pl.col("atc_code") == "X99XX99")["matched"].to_list() == [False]


def test_cross_class_agreement_ranks_first():
    rows = pl.DataFrame({
        "atc_code": ["A01AA01", "A01AA02", "B01AA01", "C01AA01", "D01AA01", "D01AB01"],
        "atc_name": ["a", "b", "c", "d", "e", "f"],
        "log_hr": [np.log(0.7), np.log(0.65), np.log(0.7), np.log(0.5), np.log(1.6), np.log(1.5)],
        "se": [0.1, 0.12, 0.11, 0.1, 0.1, 0.1],
    })
    mapping = pl.DataFrame({
        "atc_code": ["A01AA01", "A01AA02", "B01AA01", "C01AA01", "D01AA01", "D01AB01"],
        "target": ["GENE1", "GENE1", "GENE1", "GENE2", "GENE3", "GENE3"],
        "target_name": None, "action_type": ["AGONIST"] * 3 + ["INHIBITOR"] + ["AGONIST"] * 2,
    }, schema_overrides={"target_name": pl.String})
    ranking = rank_mechanisms(rows, mapping, settings())
    assert ranking["target"].to_list() == ["GENE1", "GENE2", "GENE3"]
    top = ranking.row(0, named=True)
    assert top["n_substances"] == 3 and top["n_atc3_classes"] == 2 and top["evidence_score"] == 4
    assert top["pooled_hr"] < 1 and top["ci_upper"] < 1
    # GENE2's single substance has the smaller p but no replication; harmful GENE3 comes last.
    assert ranking.row(1, named=True)["p_value"] < top["p_value"]
    assert ranking.row(2, named=True)["direction"] == "harmful"
