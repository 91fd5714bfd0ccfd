"""The report as a reviewer sees it: headless Chromium opens it offline, the plots and both tables render,
a table sorts when its header is clicked, and screenshots are saved under results/report/.

Chromium is the Debian `chromium` package, driven over the DevTools pipe (tests/headless.py; no Python
driver package, nothing downloaded by the test itself). On a machine without it, the fixture installs it
with apt-get when running as root, and otherwise skips with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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
    return build_report(
        config, validation=paths["validation"], flow=paths["flow"], dwas=paths["dwas"], exposure=paths["exposure"],
        drugs=paths["drugs"], mechanisms=paths["mechanisms"], html=results / "report/index.html",
        tables={name: results / f"report/tables/{name}.csv" for name in REPORT_TABLES},
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
        page.click("#mechanism-table th:nth-child(2)")
        targets = column_values(page, "mechanism-table", 1)
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
