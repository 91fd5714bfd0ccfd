"""Config validation: defaults are filled, every mistake is named."""

from __future__ import annotations

import pytest
import yaml

from repurpose.config import ConfigError, validate_config
from repurpose.study_config import load_config

INPUTS = {n: {"path": f"{n}.csv"} for n in ("population", "prescriptions", "ms_registry")}


def test_defaults_are_filled():
    config = validate_config({"inputs": INPUTS})
    assert config["screen"]["lags_years"] == [0, 2, 5, 10]
    assert config["screen"]["adjust"]["strata"] == ["sex", "birth_cohort", "education"]
    assert config["inputs"]["population"]["date_format"] == "%Y-%m-%d"
    assert config["disclosure"]["min_cell"] == 5


def test_study_config_overrides_only_what_differs(tmp_path):
    study = tmp_path / "my_study.yaml"
    study.write_text(yaml.safe_dump({"inputs": {"population": {"path": "/data/pop.csv", "sep": ";"}}, "screen": {"lags_years": [0, 5]}, "candidates": {"main_lag_years": 5}}))
    config = load_config("config/config.yaml", study)
    assert config["inputs"]["population"] == {"path": "/data/pop.csv", "sep": ";", "encoding": None,
                                              "date_format": "%Y-%m-%d", "columns": {}, "decimal": None,
                                              "delivery_date": None}
    assert config["inputs"]["ms_registry"]["path"] == "results/simulated/ms_registry.parquet"
    assert config["screen"]["lags_years"] == [0, 5] and config["screen"]["atc_levels"] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"screen": {"atc_levels": [6]}}, r"`screen.atc_levels.0`: 6 is greater than the maximum of 5"),
        ({"screen": {"lag_years": [0]}}, r"`screen.lag_years` is not a known key; did you mean `lags_years`\?"),
        ({"screen": {"lags_years": [0, 5]}, "candidates": {"main_lag_years": 2}},
         r"`candidates.main_lag_years` \(2\) and `screen.lags_years` \(\[0.0, 5.0\]\): the main lag must be one"),
        ({"study": {"min_age": "eighteen"}}, r"`study.min_age` must be number, not str 'eighteen'"),
        ({"study": {"outcome": "relapse"}}, r"`study.outcome`: 'relapse' is not one of"),
        ({"study": {"start": "2010-01-01", "end": "2005-01-01"}}, r"start 2010-01-01 must be before end"),
        ({"study": {"end": "31.12.2023"}}, r"`study.end`: '31.12.2023' is not a 'date'"),
        ({"screen": {"adjust": {"strata": ["sex"], "covariates": ["sex"]}}}, r"both strata and covariates"),
        ({"inputs": {"population": {}}}, r"`inputs.population`: 'path' is a required property"),
        ({"study": {"min_age": 70, "max_age": 60}}, r"`study.min_age` \(70\) and `study.max_age` \(60\): min_age must be below"),
        ({"validation": {"dispensings_from": "2024-06-01"}, "study": {"end": "2023-12-31"}},
         r"`validation.dispensings_from` \(2024-06-01\) and `study.end` \(2023-12-31\)"),
        ({"inputs": {"population": {"path": "p.csv", "delivery_date": "2020-01-01"}}},
         r"`inputs.population.delivery_date` \(2020-01-01\) and `study.end`"),
        ({"inputs": {"population": {"path": "p.csv", "decimal": ";"}}}, r"`inputs.population.decimal`: ';' is not one of"),
    ],
)
def test_mistakes_are_named(override, message):
    config = {"inputs": dict(INPUTS)}
    for key, value in override.items():
        config[key] = {**config.get(key, {}), **value}
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_config_readme_is_generated_from_schema():
    from pathlib import Path

    from repurpose.config import schema_markdown

    assert Path("config/README.md").read_text() == schema_markdown(), "run: python -m repurpose.config > config/README.md"


def test_what_people_write_is_accepted(tmp_path):
    """A plain path stands for {path: ...}; an unquoted YAML date is a date (issue 20)."""
    from repurpose.study_config import load_config

    study = tmp_path / "my_study.yaml"
    study.write_text(
        "inputs:\n  population: /data/pop.parquet\n  prescriptions: /data/rx\n  ms_registry: /data/ms.csv\n"
        "study:\n  start: 2004-01-01\n  end: 2020-12-31\nvalidation:\n  dispensings_from: 2004-01-01\n"
    )
    config = load_config(study)
    assert config["inputs"]["population"]["path"] == "/data/pop.parquet"
    assert config["inputs"]["population"]["sep"] is None  # the extract's defaults are filled
    assert (config["study"]["start"], config["study"]["end"]) == ("2004-01-01", "2020-12-31")


def test_yaml_mistake_names_file_line_and_column(tmp_path):
    from repurpose.study_config import read_config_file

    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  start: 2004-01-01\n   end: 2020-01-01\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 3, column 7: not valid YAML"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match=r"does not exist"):
        read_config_file(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- inputs\n")
    with pytest.raises(ConfigError, match=r"top level must be keys"):
        read_config_file(listed)
