"""Load and validate the run configuration against the JSON schema, filling defaults.

The schema (`src/repurpose/data/config.schema.yaml`, package data; `workflow/schemas/config.schema.yaml` links to it) is the single place where
config keys, defaults and their meaning are written down; this module only applies it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
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
    mistakes = cross_key_mistakes(filled) + outcome_config_errors(filled)
    if mistakes:
        raise ConfigError("The configuration is invalid:\n" + "\n".join(f"  - {m}" for m in mistakes))
    return filled


def cross_key_mistakes(config: dict[str, Any]) -> list[str]:
    """Contradictions between keys the schema checks one by one (each names its keys): a window that ends
    before it starts, an age band that is empty, dispensings that start after follow-up ends, an extract
    delivered before the study ends (follow-up would run past the data), evidence resting on fewer cases than
    may be released, a variable both stratum and covariate."""
    study, mistakes = config["study"], []
    if study["start"] >= study["end"]:
        mistakes.append(f"config key `study`: start {study['start']} must be before end {study['end']}")
    if study.get("max_age") is not None and study["min_age"] >= study["max_age"]:
        mistakes.append(
            f"config keys `study.min_age` ({study['min_age']}) and `study.max_age` ({study['max_age']}): "
            "min_age must be below max_age, or no one is ever followed"
        )
    dispensings_from = config["validation"]["dispensings_from"]
    if dispensings_from > study["end"]:
        mistakes.append(
            f"config keys `validation.dispensings_from` ({dispensings_from}) and `study.end` ({study['end']}): "
            "the first valid dispensing date must not lie after the end of follow-up"
        )
    for extract in ("population", "prescriptions", "ms_registry"):
        delivered = config["inputs"][extract].get("delivery_date")
        if delivered is not None and delivered < study["end"]:
            mistakes.append(
                f"config keys `inputs.{extract}.delivery_date` ({delivered}) and `study.end` ({study['end']}): "
                "follow-up would run past the data; set study.end no later than the delivery date"
            )
    min_cases, min_cell = config["candidates"]["min_evidence_cases"], config["disclosure"]["min_cell"]
    if min_cases < min_cell:
        mistakes.append(
            f"config keys `candidates.min_evidence_cases` ({min_cases}) and `disclosure.min_cell` ({min_cell}): "
            "an evidence line must not rest on a count too small to release; set min_evidence_cases >= min_cell"
        )
    overlap = set(config["screen"]["adjust"]["strata"]) & set(config["screen"]["adjust"]["covariates"])
    if overlap:
        mistakes.append(
            f"config key `screen.adjust`: {sorted(overlap)} are both strata and covariates; choose one for each"
        )
    return mistakes


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base`, recursing into nested mappings (as Snakemake does)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
