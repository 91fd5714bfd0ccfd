"""Each stage's log holds its own records, also when Snakemake runs jobs as threads of one process."""

from __future__ import annotations

import logging
import threading

from repurpose.logs import Progress, log_to, run_logged, stage_warnings


def test_jobs_running_as_threads_each_log_only_their_own_records(tmp_path):
    log = logging.getLogger("repurpose.dwas.screen")
    both_started = threading.Barrier(2)

    def stage(name: str) -> None:
        both_started.wait(timeout=10)  # both handlers are attached before either logs
        for step in range(50):
            log.info("%s step %d", name, step)

    threads = [
        threading.Thread(target=run_logged, args=(tmp_path / f"{name}.log", stage, name)) for name in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for name, other in (("a", "b"), ("b", "a")):
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert len(lines) == 50 and all(f" {name} step " in line for line in lines), (name, lines[:3])
        assert not any(f" {other} step " in line for line in lines)


def test_a_pools_worker_threads_log_to_the_callers_stage_log(tmp_path):
    """A warning raised in a worker thread of the stage (the candidates' models, the exposure buckets) reaches the
    stage log; a thread outside the pool does not, and the pool's threads are forgotten after the block."""
    from concurrent.futures import ThreadPoolExecutor

    from repurpose.logs import _OWNER_OF_THREAD, threads_log_as_caller

    log = logging.getLogger("repurpose.test")
    with log_to(tmp_path / "stage.log"):
        with threads_log_as_caller() as adopt, ThreadPoolExecutor(max_workers=2, initializer=adopt) as pool:
            list(pool.map(lambda i: log.warning("worker %d: not estimable", i), range(3)))
        outsider = threading.Thread(target=lambda: log.warning("outsider"))
        outsider.start()
        outsider.join()
    lines = (tmp_path / "stage.log").read_text().splitlines()
    assert sorted(line.split(": ", 1)[1] for line in lines) == [f"worker {i}: not estimable" for i in range(3)]
    assert not _OWNER_OF_THREAD


def test_progress_says_i_of_n_and_the_time_left(caplog):
    clock = iter([100.0, 104.0, 110.0])
    with caplog.at_level(logging.INFO, logger="repurpose"):
        progress = Progress(logging.getLogger("repurpose.dwas.candidates"), "models", 3, clock=lambda: next(clock))
        progress.step_done("R03AC02")
        progress.step_done("A11CC05")
    assert [record.getMessage() for record in caplog.records] == [
        "models: 1 of 3 done (R03AC02) after 4 s, about 8 s left",  # 4 s per step so far, 2 steps left
        "models: 2 of 3 done (A11CC05) after 10 s, about 5 s left",
    ]


def test_progress_with_an_interval_logs_at_most_that_often_and_at_the_end(caplog):
    clock = iter([0.0, 10.0, 20.0, 40.0, 45.0])
    with caplog.at_level(logging.INFO, logger="repurpose"):
        progress = Progress(logging.getLogger("repurpose.dwas.exposure"), "rows", 1000, clock=lambda: next(clock), interval_seconds=30)
        progress.advance(100)  # 10 s: quiet
        progress.advance(200)  # 20 s: quiet
        progress.advance(300)  # 40 s: logged
        progress.advance(400)  # 45 s: the last step is logged
    assert [record.getMessage() for record in caplog.records] == [
        "rows: 600 of 1000 done after 40 s, about 27 s left",
        "rows: 1000 of 1000 done after 45 s, about 0 s left",
    ]


def test_stage_warnings_reads_warning_lines_of_each_stage_log_once(tmp_path):
    with log_to(tmp_path / "b_stage.log"):
        log = logging.getLogger("repurpose.test")
        log.info("fine")
        log.warning("level %d: degenerate", 4)
        log.warning("level %d: degenerate", 4)
        log.error("not a warning")
    with log_to(tmp_path / "a_stage.log"):
        logging.getLogger("repurpose.test").warning("first stage\nsecond line of it")
    with log_to(tmp_path / "report.log"):
        logging.getLogger("repurpose.test").warning("skipped")
    assert stage_warnings(tmp_path, skip=("report",)) == [("a_stage", "first stage"), ("b_stage", "level 4: degenerate")]
