"""A study's config as the pipeline uses it: YAML files merged (later over earlier, or over the demo
defaults), the shared protocol's design injected, the result validated against the schema.

Imports `repurpose.config` (schema and validation) and `repurpose.protocol` (the shared design); neither
imports this module, so loading a config never forms an import circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from repurpose.config import ConfigError, deep_update, validate_config
from repurpose.protocol import ProtocolError, apply_protocol


def load_config(*paths: str | Path) -> dict[str, Any]:
    """Read one or more YAML config files (later ones override earlier ones) and validate the result."""
    merged: dict[str, Any] = {}
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            merged = deep_update(merged, yaml.safe_load(handle) or {})
    return validate_config(apply_protocol_or_fail(merged))


def merge_over_defaults(config: dict[str, Any], defaults_path: str | Path) -> dict[str, Any]:
    """Validate `config` deep-merged over the defaults file (the demo config/config.yaml)."""
    with open(defaults_path, encoding="utf-8") as handle:
        defaults = yaml.safe_load(handle) or {}
    return validate_config(deep_update(defaults, apply_protocol_or_fail(config)))


def apply_protocol_or_fail(config: dict[str, Any], site_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config with the design of its shared `protocol` file (if any) injected; a conflict with a key
    the site set itself (in `site_config`, default `config` as written, before defaults) is a ConfigError.
    The Snakefile passes the command-line config (--configfile) as `site_config`, because Snakemake has
    already merged it over config/config.yaml."""
    try:
        return apply_protocol(config, site_config)
    except ProtocolError as error:
        raise ConfigError(f"The configuration is invalid:\n  - config key `protocol`: {error}") from error
