"""DuckDB connections configured for out-of-core work (memory limit, spill directory, threads)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)


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


def execute_with_progress(
    con: duckdb.DuckDBPyConnection, sql: str, label: str, *, interval_seconds: float = 30.0
) -> list[tuple[Any, ...]]:
    """Run one (long) statement and log its progress and the estimated time left every `interval_seconds`.

    DuckDB reports a query's progress (`query_progress`) to other threads of the same connection, so the
    statement runs in a worker thread while this one logs; a national-scale query is then never silent.
    """
    con.execute("SET enable_progress_bar = true; SET enable_progress_bar_print = false")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["rows"] = con.execute(sql).fetchall()
        except BaseException as error:  # re-raised in the calling thread
            outcome["error"] = error

    started = time.perf_counter()
    worker = threading.Thread(target=run, name=f"duckdb:{label}", daemon=True)
    worker.start()
    while True:
        worker.join(interval_seconds)
        if not worker.is_alive():
            break
        elapsed = time.perf_counter() - started
        percent = con.query_progress()
        if percent > 0:
            left = elapsed * (100 - percent) / percent
            log.info("%s: %.0f%% after %.0f s, about %.0f s left", label, percent, elapsed, left)
        else:
            log.info("%s: running for %.0f s", label, elapsed)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["rows"]
