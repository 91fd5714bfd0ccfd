"""Stage declarations: which config keys a stage reads, declared once beside its function.

`@stage(reads=...)` on a stage's entry function is the one declaration used twice:
- the Snakemake rule's `params` are `rerun_settings(function, config)`, so Snakemake reruns exactly the jobs
  whose declared settings changed;
- the function is called with a view of the config that holds only the declared keys (plus runtime keys
  such as `resources`, which change speed, not results), so reading an undeclared key fails at once with
  `UndeclaredConfigKey` instead of drifting silently from the rule's params.

Keys are dotted (`screen.fdr_alpha`); a section (`screen`) declares all of it; `drop` removes keys from a
declared section (adding an ATC level must not rerun the other levels' jobs). `ALL_DESIGN` declares every
key but the runtime ones (for a stage that echoes the whole config, e.g. the report's provenance).

Imports nothing of the package: every stage may import it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

RUNTIME_KEYS = ("resources",)
ALL_DESIGN = "*"

F = TypeVar("F", bound=Callable[..., Any])


class UndeclaredConfigKey(KeyError):
    """A stage read a config key its `@stage(reads=...)` declaration does not list."""


class StageConfig(dict):
    """The config as one stage sees it. The levels above declared keys raise `UndeclaredConfigKey` for any
    key outside the declaration (with `[]` and `.get` alike); a declared section is an ordinary dict except
    for its dropped keys (`only`: the keys that raise), which raise too."""

    def __init__(
        self, values: Mapping[str, Any], stage_name: str, prefix: str = "", only: frozenset[str] | None = None
    ) -> None:
        super().__init__(values)
        self._stage_name = stage_name
        self._prefix = prefix
        self._only = only

    def _undeclared(self, key: str) -> bool:
        return self._only is None or key in self._only

    def __missing__(self, key: str) -> Any:
        if not self._undeclared(key):
            raise KeyError(key)
        raise UndeclaredConfigKey(
            f"stage {self._stage_name!r} read config key '{self._prefix}{key}', which its @stage(reads=...) "
            "declaration does not list: add it there (the rule's rerun params come from that declaration)"
        )

    def get(self, key: str, default: Any = None) -> Any:
        """As dict.get, except that a key outside the declaration raises instead of giving `default`."""
        if key in self or self._undeclared(key):
            return self[key]
        return default

    def __deepcopy__(self, memo: dict) -> dict:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}


yaml.SafeDumper.add_representer(StageConfig, yaml.representer.SafeRepresenter.represent_dict)


@dataclass(frozen=True)
class StageDeclaration:
    """The config keys one stage reads (`reads`, minus `drop`) and the runtime keys it may use."""

    name: str
    reads: tuple[str, ...]
    drop: tuple[str, ...] = ()
    runtime: tuple[str, ...] = RUNTIME_KEYS

    def settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The declared settings' values (dotted key -> value): the rule's rerun `params`."""
        if self.reads == (ALL_DESIGN,):
            return {key: _plain(value) for key, value in sorted(config.items()) if key not in self.runtime}
        return {key: _plain(_without(_lookup(config, key), key, self.drop)) for key in self.reads}

    def view(self, config: Mapping[str, Any]) -> StageConfig:
        """The config restricted to the declared and runtime keys."""
        if self.reads == (ALL_DESIGN,):
            return StageConfig(copy.deepcopy(dict(config)), self.name)
        restricted = StageConfig({}, self.name)
        for key in (*self.reads, *self.runtime):
            parts = key.split(".")
            value = _lookup(config, key)
            if value is _ABSENT:
                value = None  # declared but unset (e.g. no protocol): reads as None, not as undeclared
            node = restricted
            for depth, part in enumerate(parts[:-1]):
                if part not in node:
                    node[part] = StageConfig({}, self.name, ".".join(parts[: depth + 1]) + ".")
                node = node[part]
            value = copy.deepcopy(value)
            dropped = _dropped_below(key, self.drop)
            if dropped and isinstance(value, Mapping):
                value = StageConfig(
                    {k: v for k, v in value.items() if k not in dropped}, self.name, f"{key}.", frozenset(dropped)
                )
            node[parts[-1]] = value
        return restricted


_ABSENT = object()


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _dropped_below(key: str, drop: Iterable[str]) -> set[str]:
    """The dropped sub-keys of a declared section (`drop` is dotted from the config root)."""
    return {d.removeprefix(f"{key}.") for d in drop if d.startswith(f"{key}.")}


def _without(value: Any, key: str, drop: Iterable[str]) -> Any:
    """A declared section without its dropped sub-keys."""
    if not isinstance(value, Mapping):
        return value
    dropped = _dropped_below(key, drop)
    return {k: v for k, v in value.items() if k not in dropped}


def _plain(value: Any) -> Any:
    if value is _ABSENT:
        return None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stage(*, reads: Iterable[str], drop: Iterable[str] = (), runtime: Iterable[str] = RUNTIME_KEYS) -> Callable[[F], F]:
    """Declare the config keys a stage's entry function reads; it is then called with only those."""

    def decorate(function: F) -> F:
        declaration = StageDeclaration(function.__qualname__, tuple(reads), tuple(drop), tuple(runtime))

        @functools.wraps(function)
        def run(config: Mapping[str, Any], /, *args: Any, **kwargs: Any) -> Any:
            return function(declaration.view(config), *args, **kwargs)

        run.declaration = declaration  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def declaration_of(function: Callable[..., Any]) -> StageDeclaration:
    """The `@stage` declaration of a stage entry function."""
    try:
        return function.declaration  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(f"{function.__qualname__} is not a declared stage (decorate it with @stage(reads=...))") from None


def rerun_settings(function: Callable[..., Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's `params`: the settings its stage function declares it reads."""
    return declaration_of(function).settings(config)


def job_config(config: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """The config with `resources.threads` set to a job's own threads, for a job that asks fewer than the run's
    (a prescription part: the parts, not DuckDB's threads, are the unit of parallelism)."""
    return {**config, "resources": {**config["resources"], "threads": threads}}


def optional(files: Any) -> Any:
    """The one path of an optional named input, or None when it is absent (an empty list in Snakemake)."""
    return files if isinstance(files, str) else (files[0] if len(files) else None)


def stage_inputs(named: Mapping[str, Any], lists: Iterable[str] = ()) -> dict[str, Any]:
    """A rule's named inputs as a stage function's keyword arguments: the `lists` as lists, others one path or None."""
    return {name: list(files) if name in lists else optional(files) for name, files in named.items()}
