"""The data dictionary: canonical columns of each registry extract (read from data_dictionary/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

EXTRACTS = (
    "population", "prescriptions", "ms_registry", "diagnoses", "ms_treatments", "ms_relapses", "ms_edss", "sick_leave",
)
# The optional clinical extracts of the MS registry (and sick leave), validated by their own stage.
CLINICAL_EXTRACTS = ("ms_treatments", "ms_relapses", "ms_edss", "sick_leave")


@dataclass(frozen=True)
class ColumnSpec:
    """One canonical column of an extract."""

    name: str
    type: str
    required: bool
    description: str
    allowed: tuple[str, ...] = ()
    codes: dict[str, str] = field(default_factory=dict)
    min: float | None = None
    max: float | None = None
    step: float | None = None
    aliases: tuple[str, ...] = ()
    # Canonical names this column had before a rename: a column map key or source column of that name still
    # means this column, so old extracts and configs read unchanged.
    former_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtractSpec:
    """The columns and key of one registry extract."""

    extract: str
    description: str
    key: str | None
    columns: tuple[ColumnSpec, ...]

    def column(self, name: str) -> ColumnSpec:
        for spec in self.columns:
            if spec.name == name or name in spec.former_names:
                return spec
        raise KeyError(f"{self.extract} has no column {name!r}")


def _column(raw: dict[str, Any]) -> ColumnSpec:
    return ColumnSpec(
        name=raw["name"],
        type=raw["type"],
        required=bool(raw["required"]),
        description=" ".join(str(raw.get("description", "")).split()),
        allowed=tuple(raw.get("allowed", ())),
        codes={str(k): str(v) for k, v in (raw.get("codes") or {}).items()},
        min=raw.get("min"),
        max=raw.get("max"),
        step=raw.get("step"),
        aliases=tuple(raw.get("aliases", ())),
        former_names=tuple(raw.get("former_names", ())),
    )


@cache
def load_extract_spec(extract: str) -> ExtractSpec:
    """Return the dictionary entry of `extract` (one of EXTRACTS)."""
    if extract not in EXTRACTS:
        raise KeyError(f"unknown extract {extract!r}; expected one of {EXTRACTS}")
    text = resources.files("repurpose").joinpath(f"data/data_dictionary/{extract}.yaml").read_text("utf-8")
    raw = yaml.safe_load(text)
    return ExtractSpec(
        extract=raw["extract"],
        description=" ".join(str(raw.get("description", "")).split()),
        key=raw.get("key"),
        columns=tuple(_column(c) for c in raw["columns"]),
    )
