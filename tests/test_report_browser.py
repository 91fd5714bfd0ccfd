"""The report as a reviewer sees it: headless Chromium opens it offline, the plots and both tables render,
a table sorts when its header is clicked, and screenshots are saved under results/report/.

Chromium is the Debian `chromium` package, driven over the DevTools pipe (tests/headless.py; no Python
driver package, nothing downloaded by the test itself). On a machine without it, the fixture installs it
with apt-get when running as root, and otherwise skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest
from headless import Browser, find_chromium
from report_fakes import write_fake_results

from repurpose.layout import REPORT_TABLES
from repurpose.release.report import build_report
from repurpose.study_config import load_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "results" / "report"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary; installs Debian's `chromium` when missing and allowed, else skips."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get as root is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    found = find_chromium()
    if not found:
        pytest.skip(f"could not install chromium with apt-get: {done.stderr[-500:]}")
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("browser_results")
    paths = write_fake_results(results)
    config = load_config(REPO / "config/config.yaml")
    drugs = pl.read_csv(paths["drugs"])
    found, missed = drugs.filter(pl.col("candidate"))["atc_code"][0], drugs.filter(~pl.col("candidate"))["atc_code"][0]
    truth = results / "simulated/ground_truth.json"  # a simulated run: one planted effect found, one missed
    truth.parent.mkdir(parents=True)
    truth.write_text(json.dumps({"substances": {
        found: {"atc_name": "found", "role": "causal_protective", "planted_hr": 0.6},
        missed: {"atc_name": "missed", "role": "causal_harmful", "planted_hr": 1.8},
    }, "mechanism": {"gene": "ADRB2", "action_type": "AGONIST", "planted_hr": 0.65}}))  # fmt: skip
    return build_report(
        config, validation=paths["validation"], flow=paths["flow"], dwas=paths["dwas"], exposure=paths["exposure"],
        drugs=paths["drugs"], mechanisms=paths["mechanisms"], html=results / "report/index.html",
        tables={name: results / f"report/tables/{name}.csv" for name in REPORT_TABLES}, ground_truth=truth,
    )  # fmt: skip


def column_values(page: Browser, table: str, column: int) -> list[str]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{table} tbody tr'))"
        f".filter(r => r.style.display !== 'none').map(r => r.cells[{column}].dataset.key)"
    )


def test_reviewer_opens_sorts_and_filters_the_report(chromium, report):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with Browser(chromium, width=1366, height=800) as page:
        page.open(report.resolve().as_uri())
        assert page.evaluate("document.title").startswith("repurpose report")
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.className, i.complete && i.naturalWidth > 100])"
        )
        assert images and all(ok for _, ok in images), images
        assert {"manhattan", "volcano", "forest"} <= {kind for kind, _ in images}
        visible = page.evaluate(
            "Array.from(document.querySelectorAll('.plot')).filter(p => p.offsetHeight > 0).length"
        )
        assert visible == 1  # one level x lag shown at a time
        page.screenshot(SCREENSHOTS / "browser_check_top.png")

        # choosing another lag shows that plot
        page.evaluate("const s = document.getElementById('lag-select'); s.value = '5';"
                      "s.dispatchEvent(new Event('change'))")  # fmt: skip
        assert page.evaluate("document.querySelector('.plot.active').dataset.lag") == "5"

        for table in ("drug-table", "mechanism-table"):
            assert page.evaluate(f"document.querySelectorAll('#{table} tbody tr').length") > 1

        # click the hr header: ascending, then descending
        header = page.evaluate("Array.from(document.querySelectorAll('#drug-table th')).map(h => h.textContent)")
        hr_col = header.index("hr")
        page.click(f"#drug-table th:nth-child({hr_col + 1})")
        ascending = [float(v) for v in column_values(page, "drug-table", hr_col)]
        assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
        assert page.evaluate(f"document.querySelectorAll('#drug-table th')[{hr_col}].getAttribute('aria-sort')") == "ascending"
        page.click(f"#drug-table th:nth-child({hr_col + 1})")
        assert [float(v) for v in column_values(page, "drug-table", hr_col)] == sorted(ascending, reverse=True)

        # sort the mechanism table by target (text) and filter the drug table
        target_col = page.evaluate("Array.from(document.querySelectorAll('#mechanism-table th')).map(h => h.textContent)").index("target")
        page.click(f"#mechanism-table th:nth-child({target_col + 1})")
        targets = column_values(page, "mechanism-table", target_col)
        assert targets == sorted(targets)
        page.evaluate("const f = document.querySelector('input.filter[data-table=\"drug-table\"]');"
                      "f.value = 'N06'; f.dispatchEvent(new Event('input'))")  # fmt: skip
        codes = column_values(page, "drug-table", header.index("atc_code"))
        assert codes and all(code.startswith("N06") for code in codes)
        page.evaluate("document.getElementById('rankings').scrollIntoView()")
        page.screenshot(SCREENSHOTS / "browser_check_rankings.png")

        # a row's evidence link leads to a section that exists
        target = page.evaluate("document.querySelector('#drug-table tbody tr:not([style*=\"none\"]) a').hash")
        assert page.evaluate(f"!!document.getElementById({target[1:]!r})")
        page.evaluate("document.getElementById('candidates').scrollIntoView()")
        page.screenshot(SCREENSHOTS / "browser_check_evidence.png")
    assert (SCREENSHOTS / "browser_check_top.png").stat().st_size > 10_000


def test_first_screen_shows_the_key_findings(chromium, report):
    """At a laptop's 1366 x 800 the page opens on the key-findings table: its header and first finding are
    inside the first screen and not covered by anything (the element at their centre belongs to the table)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with Browser(chromium, width=1366, height=800) as page:
        page.open(report.resolve().as_uri())
        seen = page.evaluate("""(() => {
            const table = document.getElementById('key-findings-table');
            const row = table.querySelector('tr.finding');
            const box = row.getBoundingClientRect(), head = table.tHead.getBoundingClientRect();
            const at = document.elementFromPoint(box.left + 20, (box.top + box.bottom) / 2);
            return {head: head.top, bottom: box.bottom, height: window.innerHeight, inside: table.contains(at),
                    text: row.textContent, banner: !!document.getElementById('simulated-banner'),
                    headers: Array.from(table.tHead.rows[0].cells).map(c => c.textContent)};
        })()""")
        page.screenshot(SCREENSHOTS / "browser_first_screen.png")
    assert 0 <= seen["head"] and seen["bottom"] <= seen["height"] and seen["inside"], seen
    assert seen["headers"] == ["Rank", "Signal", "Lag (years)", "HR (95% CI)", "Exposed cases", "Evidence", "Score", "Flags"]
    assert "supported" in seen["text"] and "against" in seen["text"] and "not assessed (fewer than 10" in seen["text"]
    assert seen["banner"]
    assert (SCREENSHOTS / "browser_first_screen.png").stat().st_size > 10_000


def test_whole_screen_table_filters_sorts_and_keeps_suppressed_cells_last(chromium, report):
    with Browser(chromium, width=1366, height=800) as page:
        page.open(report.resolve().as_uri())
        headers = page.evaluate("Array.from(document.querySelectorAll('#screen-table th')).map(h => h.textContent)")
        cases = headers.index("Exposed cases")
        page.evaluate("const s = document.getElementById('st-level'); s.value = '5'; s.dispatchEvent(new Event('change'));"
                      "const d = document.getElementById('st-direction'); d.value = 'protective'; d.dispatchEvent(new Event('change'))")  # fmt: skip
        rows = page.evaluate("Array.from(document.querySelectorAll('#screen-table tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))")
        assert rows and all(r[2] == "5" and r[5] == "protective" for r in rows)
        page.click(f"#screen-table th:nth-child({cases + 1})")
        page.click(f"#screen-table th:nth-child({cases + 1})")  # descending: missing and suppressed still last
        values = page.evaluate(f"Array.from(document.querySelectorAll('#screen-table tbody tr')).map(r => r.cells[{cases}].textContent)")
        numbers = [v for v in values if v.isdigit()]
        assert numbers == sorted(numbers, key=int, reverse=True)
        assert values[: len(numbers)] == numbers  # every suppressed ("<5") or empty cell after the numbers
        page.evaluate("document.querySelector('#screen-table').parentElement.scrollLeft = 400")
        first = page.evaluate("(() => { const c = document.querySelector('#screen-table tbody td'); const box = c.getBoundingClientRect();"
                              " return [getComputedStyle(c).position, box.left - c.closest('.scroll').getBoundingClientRect().left]; })()")  # fmt: skip
        assert first[0] == "sticky" and abs(first[1]) < 2
