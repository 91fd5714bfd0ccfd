"""A study's config as the pipeline uses it: YAML files merged (later over earlier, or over the demo
defaults), the shared protocol's design injected, the result validated against the schema.

Imports `repurpose.config` (schema and validation), `repurpose.protocol` (the shared design) and
`repurpose.layout` (the simulated files the demo reads); none imports this module, so loading a config never
forms an import circle.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from repurpose.config import ConfigError, deep_update, normalise_config, validate_config
from repurpose.layout import results_layout
from repurpose.protocol import ProtocolError, apply_protocol


def read_config_file(path: str | Path) -> dict[str, Any]:
    """One YAML config file as a mapping; a missing file or a YAML mistake is a ConfigError naming the file,
    line and column (YAML counts from 0, people from 1)."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ConfigError(
            f"Config file {where}: not valid YAML ({problem}); check the indentation there"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path}: not valid YAML ({error})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"Config file {path}: the top level must be keys (`inputs:`, `study:`, ...), not a {type(content).__name__}"
        )
    return normalise_config(content)


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read one or more YAML config files (later ones override earlier ones) and validate the result."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_update(merged, read_config_file(path))
    return validate_config(with_simulated_clinical_inputs(apply_protocol_or_fail(merged)))


def merge_over_defaults(config: dict[str, Any], defaults_path: str | Path) -> dict[str, Any]:
    """Validate `config` deep-merged over the defaults file (the demo config/config.yaml)."""
    defaults = read_config_file(defaults_path)
    merged = deep_update(defaults, apply_protocol_or_fail(normalise_config(config)))
    return validate_config(with_simulated_clinical_inputs(merged))


SIMULATED_CLINICAL_EXTRACTS = ("ms_treatments", "ms_relapses", "ms_edss", "sick_leave", "diagnoses")
"""The extracts the simulator writes as `<name>.parquet` beside the simulated MS registry that the demo reads:
the MS registry's clinical ones, and the diagnoses (the trial emulation's safety outcome, serious infection)."""


def with_simulated_clinical_inputs(config: dict[str, Any]) -> dict[str, Any]:
    """The demo's clinical inputs: a run that reads the simulated prescriptions (the demo) with
    `simulate.clinical.enabled` (default true) reads the simulated clinical extracts as the inputs it does
    not set itself. Decided here rather than listed in config/config.yaml because a study config is merged
    over the demo config: a listed demo input would follow every study that brings its own registers."""
    inputs = config.get("inputs")
    if not isinstance(inputs, dict):
        return config
    prescriptions = inputs.get("prescriptions")
    path = prescriptions.get("path") if isinstance(prescriptions, dict) else None
    layout = results_layout()
    if not isinstance(path, str) or os.path.normpath(path) != os.path.normpath(
        layout.simulated_prescriptions_dir()
    ):
        return config
    clinical = (config.get("simulate") or {}).get("clinical") or {}
    if not clinical.get("enabled", True):
        return config
    added = {name: {"path": layout.simulated(f"{name}.parquet")} for name in SIMULATED_CLINICAL_EXTRACTS}
    return {**config, "inputs": {**added, **inputs}}


def apply_protocol_or_fail(
    config: dict[str, Any], site_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config with the design of its shared `protocol` file (if any) injected; a conflict with a key
    the site set itself (in `site_config`, default `config` as written, before defaults) is a ConfigError.
    The Snakefile passes the command-line config (--configfile) as `site_config`, because Snakemake has
    already merged it over config/config.yaml."""
    site_config = normalise_config(site_config) if site_config is not None else None
    try:
        return apply_protocol(normalise_config(config), site_config)
    except ProtocolError as error:
        raise ConfigError(f"The configuration is invalid:\n  - config key `protocol`: {error}") from error


@contextlib.contextmanager
def exit_on_config_error() -> Iterator[None]:
    """A config mistake ends the run with its message alone (exit status 2), not a Python traceback:
    the message already names the file and key, and the traceback would bury it."""
    try:
        yield
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
