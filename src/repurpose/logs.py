"""Route the package's log records to a stage's log file (every Snakemake rule has a `log:`)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WARNING_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING (?P<logger>\S+): (?P<message>.*)$")
"""A WARNING record's first line in a stage log written with FORMAT."""


_OWNER_OF_THREAD: dict[int, int] = {}
"""Worker threads whose records belong to another thread's stage log (`threads_log_as_caller`)."""


@contextmanager
def threads_log_as_caller() -> Iterator[Callable[[], None]]:
    """An initializer for a pool's worker threads: their records go to the calling thread's stage log.

    Within the block, threads that ran the initializer count as the caller for `log_to`, so a warning raised in
    a worker reaches the stage log (and the report) like one raised by the stage itself. Thread identifiers
    can be reused once a thread ends, so the pool must shut down inside the block, which then forgets them.
    """
    caller = threading.get_ident()
    owner = _OWNER_OF_THREAD.get(caller, caller)
    adopted: list[int] = []

    def adopt() -> None:
        ident = threading.get_ident()
        _OWNER_OF_THREAD[ident] = owner
        adopted.append(ident)

    try:
        yield adopt
    finally:
        for ident in adopted:
            _OWNER_OF_THREAD.pop(ident, None)


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
    handler.addFilter(lambda record: _OWNER_OF_THREAD.get(record.thread, record.thread) == owner)
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


def stage_warnings(log_dir: str | Path, *, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Every WARNING of the stage logs in `log_dir` (except the stems in `skip`) as (stage, message), in
    stage order and then in log order, each distinct message of a stage once (the time stamp dropped)."""
    found: dict[tuple[str, str], None] = {}  # ordered and without repeats
    for path in sorted(Path(log_dir).glob("*.log")):
        if path.stem not in skip:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            found.update(((path.stem, m["message"]), None) for m in map(WARNING_LINE.match, lines) if m)
    return list(found)


class Progress:
    """Log "i of n" with the time spent and the time left (extrapolated from the mean step) as steps finish,
    so a long loop of a stage (the candidates' person-level models, the exposure pass) says how far it is.

    With `interval_seconds`, a line is logged at most that often (and at the last step): for many small steps.
    """

    def __init__(
        self, logger: logging.Logger, label: str, total: int, clock: Callable[[], float] = time.perf_counter,
        interval_seconds: float = 0.0,
    ) -> None:  # fmt: skip
        self.logger, self.label, self.total, self.clock = logger, label, total, clock
        self.interval_seconds = interval_seconds
        self.done_steps = 0
        self.started = self.logged = clock()

    def step_done(self, name: str = "") -> None:
        self.advance(1, name)

    def advance(self, steps: int, name: str = "") -> None:
        """`steps` more steps are done (the last of them `name`, if given)."""
        self.done_steps += steps
        now = self.clock()
        if now - self.logged < self.interval_seconds and self.done_steps < self.total:
            return
        self.logged = now
        elapsed = now - self.started
        left = elapsed / max(self.done_steps, 1) * max(self.total - self.done_steps, 0)
        self.logger.info(
            "%s: %d of %d done%s after %.0f s, about %.0f s left",
            self.label, self.done_steps, self.total, f" ({name})" if name else "", elapsed, left,
        )  # fmt: skip
