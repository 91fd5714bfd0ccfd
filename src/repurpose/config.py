"""Load and validate the run configuration against the JSON schema, filling defaults.

The schema (`workflow/schemas/config.schema.yaml`, shipped as package data) is the single place where
config keys, defaults and their meaning are written down; this module only applies it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from repurpose.registry.outcome import outcome_config_errors


class ConfigError(ValueError):
    """The configuration does not match the schema; the message lists every mistake."""


def load_schema() -> dict[str, Any]:
    """Return the configuration JSON schema (a fresh copy; the file is parsed once per schema text)."""
    text = resources.files("repurpose").joinpath("data/config.schema.yaml").read_text(encoding="utf-8")
    return copy.deepcopy(_parse_schema(text))


@functools.lru_cache(maxsize=4)
def _parse_schema(text: str) -> dict[str, Any]:
    """Parsing the schema YAML costs ~0.2 s; protocol checks validate several configs per run."""
    return yaml.safe_load(text)


def _fill_defaults(instance: dict[str, Any], schema: dict[str, Any], root: dict[str, Any]) -> None:
    """Recursively insert schema defaults for missing keys (objects default to {} and are filled too)."""
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = root["definitions"][name]
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:
            sub = root["definitions"][sub["$ref"].split("/")[-1]]
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub, root)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of `config` with defaults filled; raise ConfigError naming each mistake."""
    schema = load_schema()
    filled = copy.deepcopy(dict(config))
    _fill_defaults(filled, schema, schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  - config key `{where}`: {error.message}")
        raise ConfigError("The configuration is invalid:\n" + "\n".join(lines))
    if filled["study"]["start"] >= filled["study"]["end"]:
        raise ConfigError(
            f"The configuration is invalid:\n  - config key `study`: start {filled['study']['start']} "
            f"must be before end {filled['study']['end']}"
        )
    overlap = set(filled["screen"]["adjust"]["strata"]) & set(filled["screen"]["adjust"]["covariates"])
    if overlap:
        raise ConfigError(
            "The configuration is invalid:\n  - config key `screen.adjust`: "
            f"{sorted(overlap)} are both strata and covariates; choose one for each"
        )
    outcome_errors = outcome_config_errors(filled)
    if outcome_errors:
        raise ConfigError("The configuration is invalid:\n" + "\n".join(f"  - {e}" for e in outcome_errors))
    return filled


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base`, recursing into nested mappings (as Snakemake does)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
    from repurpose.protocol import ProtocolError, apply_protocol

    try:
        return apply_protocol(config, site_config)
    except ProtocolError as error:
        raise ConfigError(f"The configuration is invalid:\n  - config key `protocol`: {error}") from error


def config_hash(config: dict[str, Any]) -> str:
    """A short SHA-256 of the canonical JSON form of the config, for provenance."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def schema_markdown() -> str:
    """config/README.md: every config key with type, default and description, generated from the schema."""
    schema = load_schema()
    rows: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        for key, sub in node.get("properties", {}).items():
            resolved = schema["definitions"][sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
            name = f"{prefix}{key}"
            kind = resolved.get("type", "")
            kind = "/".join(kind) if isinstance(kind, list) else kind
            if resolved.get("properties"):
                walk(resolved, f"{name}.")
                continue
            default = json.dumps(resolved["default"]) if "default" in resolved else "(required)"
            description = " ".join(str(resolved.get("description", "")).split())
            rows.append(f"| `{name}` | {kind} | `{default}` | {description} |")
            if resolved.get("else", {}).get("properties"):  # the keys of a definition object (study.outcome)
                walk(resolved["else"], f"{name}.")

    walk(schema, "")
    header = [
        "# Configuration keys",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` (`python -m repurpose.config > config/README.md`).",
        "A study config overrides only the keys that differ from `config/config.yaml`; `inputs.<extract>` is the",
        "same for `population`, `prescriptions` and `ms_registry`.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
