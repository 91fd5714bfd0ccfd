"""DuckDB connections configured for out-of-core work (memory limit, spill directory, threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def sql_literal(value: str) -> str:
    """Quote a Python string as a SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def connect(
    resources: dict[str, Any] | None = None, *, default_tmpdir: str | Path = "results/tmp"
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection honouring `resources.memory_gb`, `resources.tmpdir` and `resources.threads`."""
    resources = resources or {}
    tmpdir = Path(resources.get("tmpdir") or default_tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(
        config={
            "memory_limit": f"{resources.get('memory_gb', 8)}GB",
            "threads": int(resources.get("threads", 2)),
            "temp_directory": str(tmpdir),
            "preserve_insertion_order": False,
        }
    )
    return con
