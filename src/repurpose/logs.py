"""Route the package's log records to a stage's log file (every Snakemake rule has a `log:`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def log_to(path: str | Path | None, level: int = logging.INFO) -> Iterator[logging.Logger]:
    """Within the block, write `repurpose.*` log records of the calling thread to `path` (and nowhere if None).

    Only the calling thread's records: Snakemake run with `--force-use-threads` runs several jobs as threads of
    one process, and each job's log must hold its own records, not its neighbours'.
    """
    logger = logging.getLogger("repurpose")
    logger.setLevel(level)
    handler: logging.Handler = logging.NullHandler()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
    owner = threading.get_ident()
    handler.addFilter(lambda record: record.thread == owner)
    logger.addHandler(handler)
    try:
        yield logger
    except Exception:
        logger.exception("stage failed")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_logged(path: str | Path, function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Call `function(*args, **kwargs)` with its log records routed to `path`: the one line a Snakemake rule runs."""
    with log_to(path):
        return function(*args, **kwargs)
