"""The shared analysis protocol of a federated study: one design file that every site uses unchanged.

In a federation (several registries, one analysis, no person-level data crossing a border) each site
maps its own extracts onto the data contract with its own config (paths, column maps, code lists), but
the *design* of the analysis (study window, outcome, exposure definition, ATC levels, lags, adjustment,
candidate-ranking rules and the minimum disclosure threshold) must be identical everywhere, or the
site estimates cannot be pooled. The protocol file holds exactly those design keys.

- A site config names it with `protocol: path`; `apply_protocol` injects its design into the config
  and refuses a config that sets a design key differently (naming each key and both values).
  `disclosure.min_cell` is a minimum: a site may suppress more, never less.
- `protocol_hash` is the SHA-256 of a canonical JSON of the normalised design (defaults filled, numbers
  as floats, set-like lists sorted), so comments, formatting and key order do not change it.
- `design_differences` names the settings in which two protocols differ (used by `repurpose pool`).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from repurpose.config import ConfigError, deep_update, validate_config

# Design keys: these blocks whole (keys added to them later are design keys by default, the safe side),
# except the keys that only decide how the work is split, plus disclosure.min_cell. Everything else in a
# config is a site matter (paths, column maps, resources, report layout) and may differ between sites.
DESIGN_BLOCKS = ("study", "validation", "screen", "candidates")
NOT_DESIGN_KEYS = frozenset({"screen.split_by"})  # jobs per level or per anatomical group: same estimates
DESIGN_SINGLE_KEYS = (("disclosure", "min_cell"),)
MINIMUM_KEYS = frozenset({"disclosure.min_cell"})  # a site may set a larger value, never a smaller one
WHOLE_VALUE_KEYS = frozenset({"study.outcome"})  # a definition object: compared whole, never key by key
# Placeholder inputs so the schema (which requires inputs) can fill the design defaults of a protocol.
_PLACEHOLDER_INPUTS = {
    name: {"path": "(site input)"} for name in ("population", "prescriptions", "ms_registry", "diagnoses")
}


class ProtocolError(ValueError):
    """A site config contradicts the shared protocol, or two protocols differ; the message names the keys."""


def _plain(value: Any) -> Any:
    """YAML values in a canonical form: dates as ISO text, numbers as floats, set-like lists sorted."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        if all(isinstance(v, str | float) for v in items) and len({type(v) for v in items}) <= 1:
            return sorted(items)  # every list in the design is a set (levels, lags, strata, cut points)
        return items
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def extract_design(config: dict[str, Any]) -> dict[str, Any]:
    """The design keys of a (validated or raw) config, nested like the config; absent keys are left out."""
    design: dict[str, Any] = {}
    for block in DESIGN_BLOCKS:
        if isinstance(config.get(block), dict):
            design[block] = {k: copy.deepcopy(v) for k, v in config[block].items() if f"{block}.{k}" not in NOT_DESIGN_KEYS}
    for block, key in DESIGN_SINGLE_KEYS:
        if isinstance(config.get(block), dict) and key in config[block]:
            design.setdefault(block, {})[key] = copy.deepcopy(config[block][key])
    return design


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"screen": {"adjust": {"strata": [...]}}} -> {"screen.adjust.strata": [...]}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in WHOLE_VALUE_KEYS:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def normalise_design(protocol: dict[str, Any]) -> dict[str, Any]:
    """The full design of a protocol: its keys over the schema defaults, validated, in canonical form."""
    unknown = sorted(set(flatten(protocol)) - set(flatten(extract_design(protocol))))
    if unknown:
        raise ProtocolError(
            f"the protocol may hold design keys only; not design keys: {unknown}. "
            "Paths, column maps and resources belong in each site's own config."
        )
    try:
        filled = validate_config({"inputs": _PLACEHOLDER_INPUTS, **copy.deepcopy(protocol)})
    except ConfigError as error:
        raise ProtocolError(f"the protocol is invalid: {error}") from error
    return _plain(extract_design(filled))


def read_protocol(path: str | Path) -> dict[str, Any]:
    """Read a protocol YAML and return its normalised design."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"protocol file {path} does not exist (config key `protocol`)")
    return normalise_design(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def protocol_hash(design: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a normalised design."""
    blob = json.dumps(_plain(design), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def design_of_config(config: dict[str, Any]) -> dict[str, Any]:
    """The normalised design of a validated config (what a site actually ran), protocol or not."""
    return _plain(extract_design(config))


def apply_protocol(raw_config: dict[str, Any], site_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """`raw_config` with the design of its `protocol` file injected; unchanged when it names none.

    Only the keys the site set itself may conflict: those of `site_config` (the site's own config
    files, e.g. Snakemake's --configfile) or, when None, of `raw_config`, which must then be the config
    as the site wrote it (before defaults are filled). Raises ProtocolError naming every conflicting
    key with both values. `disclosure.min_cell` may be raised by a site (stricter), not lowered.
    """
    path = raw_config.get("protocol")
    if not path:
        return raw_config
    design = read_protocol(path)
    own = raw_config if site_config is None else site_config
    site = flatten(_plain(extract_design(own)))
    conflicts = []
    for key, protocol_value in flatten(design).items():
        if key not in site or site[key] == protocol_value:
            continue
        if key in MINIMUM_KEYS and site[key] is not None and site[key] >= protocol_value:
            continue
        conflicts.append(f"  - `{key}`: site config {site[key]!r}, protocol {protocol_value!r}")
    if conflicts:
        raise ProtocolError(
            f"the site config contradicts the shared protocol {path} (remove these keys from the site "
            "config; the protocol decides them):\n" + "\n".join(conflicts)
        )
    merged = deep_update(raw_config, _as_config_values(design))
    site_min_cell = (own.get("disclosure") or {}).get("min_cell")
    if site_min_cell is not None:
        merged["disclosure"]["min_cell"] = site_min_cell
    return merged


def _as_config_values(design: dict[str, Any]) -> dict[str, Any]:
    """Canonical design back to config types: integers where the schema wants integers."""
    integer_keys = {"atc_levels", "min_dispensings", "min_exposed_cases", "birth_cohort_band_years", "min_cell",
                    "max_classes", "max_adjustment_classes", "l1_sample_size", "min_records", "min_days_apart"}  # fmt: skip

    def convert(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: convert(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v, key) for v in value]
        if key in integer_keys and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    return convert(design, "")


def design_differences(first: dict[str, Any], second: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in first, value in second) for every design setting that differs."""
    a, b = flatten(_plain(first)), flatten(_plain(second))
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def protocol_yaml(design: dict[str, Any]) -> str:
    """The normalised design as YAML (the copy stored in every site package)."""
    header = f"# Normalised analysis protocol (SHA-256 {protocol_hash(design)}); written by repurpose.\n"
    return header + yaml.safe_dump(_as_config_values(design), sort_keys=True, allow_unicode=True)
