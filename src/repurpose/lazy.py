"""Heavy libraries imported on first use instead of at import.

Every Snakemake job parses all rule files, so it imports every stage's module whatever its rule: at the
top of a module, scipy.stats, pandas, lifelines, scikit-learn and matplotlib cost a job about 2 of its 3 s
of start-up (`python -X importtime`), paid by each of a national run's dozens of jobs. `lazy_module` keeps
the call sites as they are (`stats.norm.sf(z)`) and imports the library when an attribute is first read.
Imports only the standard library.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read; then imports it and forwards every read."""

    def __init__(self, name: str, backend: str | None) -> None:
        super().__init__(name)
        self._backend = backend
        self._module: types.ModuleType | None = None

    def _load(self) -> types.ModuleType:
        if self._module is None:
            if self._backend is not None:
                importlib.import_module("matplotlib").use(self._backend)
            self._module = importlib.import_module(self.__name__)
        return self._module

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __dir__(self) -> list[str]:
        return dir(self._load())


def lazy_module(name: str, *, matplotlib_backend: str | None = None) -> types.ModuleType:
    """The module `name`, imported when first used; `matplotlib_backend` is selected before it (pyplot's
    backend must be chosen before pyplot is imported)."""
    return _LazyModule(name, matplotlib_backend)
