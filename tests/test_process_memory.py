"""The candidates job's malloc settings: freed arrays are reused, not faulted in afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from repurpose.process_memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(1 << 24)  # 128 MB, touched and freed
before = faults()
for _ in range(4):
    np.ones(1 << 24)
print(faults() - before)
"""


def _refaulted_pages(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_arrays_are_reused_without_page_faults() -> None:
    # Four 128 MB arrays after one was freed: by default glibc maps each afresh (thousands of faults, or
    # at least one per 2 MB huge page: 64 each); kept, they reuse the first one's pages.
    assert _refaulted_pages("default") >= 4 * 64
    assert _refaulted_pages("keep") < 64
