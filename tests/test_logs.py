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
