"""Load and validate the run configuration against the JSON schema, filling defaults.

The schema (`src/repurpose/data/config.schema.yaml`, package data; `workflow/schemas/config.schema.yaml` links to it) is the single place where
config keys, defaults and their meaning are written down; this module only applies it.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import functools
import hashlib
import json
from importlib import resources
from typing import Any

import jsonschema
import yaml

from repurpose.registry.dictionary import CLINICAL_EXTRACTS
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


def _extract_keys(schema: dict[str, Any]) -> set[str]:
    """The `inputs` keys that are extracts (`{path: ..., sep: ...}`), so a plain path can stand for them."""
    inputs = schema["properties"]["inputs"]["properties"]
    return {key for key, sub in inputs.items() if sub.get("$ref", "").endswith("/extract")}


def _dates_as_text(value: Any) -> Any:
    """YAML reads an unquoted 2004-01-01 as a date; the schema's dates are ISO text."""
    if isinstance(value, dict):
        return {key: _dates_as_text(sub) for key, sub in value.items()}
    if isinstance(value, list):
        return [_dates_as_text(sub) for sub in value]
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with the shorthand people write turned into what the schema expects: YAML dates
    as ISO text, and an extract given as a plain path (`population: /data/pop.parquet`) as `{path: ...}`."""
    out = _dates_as_text(copy.deepcopy(dict(config)))
    inputs = out.get("inputs")
    if isinstance(inputs, dict):
        for key in _extract_keys(load_schema()) & set(inputs):
            if isinstance(inputs[key], str):
                inputs[key] = {"path": inputs[key]}
    return out


def _schema_at(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    return schema["definitions"][node["$ref"].split("/")[-1]] if "$ref" in node else node


def _error_line(error: jsonschema.ValidationError, schema: dict[str, Any]) -> str:
    """One mistake in words: the key, what is wrong, and a "did you mean" for a misspelt key."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_schema_at(schema, error.schema).get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        lines = []
        for key in unexpected:
            name = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5) or [
                name for name in allowed if len(key) >= 3 and name.startswith(key[:3])
            ][:1]
            hint = f"; did you mean `{close[0]}`?" if close else f"; known keys here: {', '.join(allowed)}"
            lines.append(f"  - config key `{name}` is not a known key{hint}")
        return "\n".join(lines)
    if error.validator == "type":
        description = " ".join(str(_schema_at(schema, error.schema).get("description", "")).split())
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        meaning = f" ({description})" if description else ""
        return f"  - config key `{where or '(top level)'}` must be {expected}, not {type(error.instance).__name__} {error.instance!r}{meaning}"
    return f"  - config key `{where or '(top level)'}`: {error.message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of `config` with defaults filled; raise ConfigError naming each mistake."""
    schema = load_schema()
    filled = normalise_config(config)
    _fill_defaults(filled, schema, schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("The configuration is invalid:\n" + "\n".join(_error_line(e, schema) for e in errors))
    mistakes = cross_key_mistakes(filled) + outcome_config_errors(filled)
    if mistakes:
        raise ConfigError("The configuration is invalid:\n" + "\n".join(f"  - {m}" for m in mistakes))
    return filled


def cross_key_mistakes(config: dict[str, Any]) -> list[str]:
    """Contradictions between keys the schema checks one by one (each names its keys): a window that ends
    before it starts, an age band that is empty, dispensings that start after follow-up ends, an extract
    (the MS registry's clinical extracts included) delivered before the study ends (follow-up would run past
    the data), evidence resting on fewer cases than
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
    # A clinical extract delivered before the study ends would show treatments stopped later as ongoing.
    clinical = [name for name in CLINICAL_EXTRACTS if config["inputs"].get(name)]
    for extract in ("population", "prescriptions", "ms_registry", *clinical):
        delivered = config["inputs"][extract].get("delivery_date")
        if delivered is not None and delivered < study["end"]:
            mistakes.append(
                f"config keys `inputs.{extract}.delivery_date` ({delivered}) and `study.end` ({study['end']}): "
                "follow-up would run past the data; set study.end no later than the delivery date"
            )
    lags = [float(lag) for lag in config["screen"]["lags_years"]]
    main_lag = float(config.get("candidates", {}).get("main_lag_years", 0))
    if main_lag not in lags:
        mistakes.append(
            f"config keys `candidates.main_lag_years` ({main_lag:g}) and `screen.lags_years` ({lags}): "
            "the main lag must be one of the screened lags"
        )
    mistakes += disclosure_mistakes(config)
    min_clinic = config.get("persistence", {}).get("min_clinic_size", config["disclosure"]["min_cell"])
    if min_clinic < config["disclosure"]["min_cell"]:
        mistakes.append(
            f"config keys `persistence.min_clinic_size` ({min_clinic}) and `disclosure.min_cell` "
            f"({config['disclosure']['min_cell']}): a clinic shown alone must hold at least min_cell new users"
        )
    mistakes += trial_emulation_mistakes(config)
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


def trial_emulation_mistakes(config: dict[str, Any]) -> list[str]:
    """Contradictions within the trial emulation's protocol: an empty age band or diagnosis window, a horizon
    past the end of follow-up, a grace period as long as follow-up."""
    trial, study, mistakes = config.get("trial_emulation", {}), config["study"], []
    if not trial:
        return mistakes
    if trial["min_age"] >= trial["max_age"]:
        mistakes.append(
            f"config keys `trial_emulation.min_age` ({trial['min_age']}) and `trial_emulation.max_age` "
            f"({trial['max_age']}): min_age must be below max_age, or no one is eligible"
        )
    start = trial.get("diagnosis_from") or study["start"]
    end = trial.get("diagnosis_to") or study["end"]
    if str(start) > str(end):
        mistakes.append(
            f"config keys `trial_emulation.diagnosis_from` ({start}) and `trial_emulation.diagnosis_to` ({end}) "
            "(null = the study window): the diagnosis window ends before it starts"
        )
    late = [h for h in trial["horizons_years"] if float(h) > float(trial["max_years"])]
    if late:
        mistakes.append(
            f"config keys `trial_emulation.horizons_years` ({late}) and `trial_emulation.max_years` "
            f"({trial['max_years']}): a horizon lies beyond the end of follow-up"
        )
    if trial["grace_days"] >= float(trial["max_years"]) * 365.25:
        mistakes.append(
            f"config keys `trial_emulation.grace_days` ({trial['grace_days']}) and `trial_emulation.max_years` "
            f"({trial['max_years']}): the grace period must end before follow-up does"
        )
    return mistakes


def disclosure_mistakes(config: dict[str, Any]) -> list[str]:
    """Fitting below the minimum cell: an estimate on d exposed cases reveals d through its standard error.

    Checked for a single-site run. A federated site may raise `disclosure.min_cell` above the protocol's while
    `screen.min_exposed_cases` stays the protocol's; its release then hides every fit with fewer exposed cases
    than its own minimum cell (row-level, `repurpose.release.screen_release`), so no estimate leaves on them.
    """
    min_cell, fitted = config["disclosure"]["min_cell"], config["screen"]["min_exposed_cases"]
    if config.get("protocol") is None and fitted < min_cell:
        return [
            f"config keys `screen.min_exposed_cases` ({fitted}) and `disclosure.min_cell` ({min_cell}): a fit on "
            "fewer exposed cases than the minimum cell reveals them through its standard error; set "
            "screen.min_exposed_cases to at least disclosure.min_cell"
        ]
    return []


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
