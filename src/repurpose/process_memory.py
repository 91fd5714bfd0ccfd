"""How a stage job's process keeps the memory it frees: owns the glibc malloc settings of a job process.

The person-level models and the trial emulation's fits allocate and free arrays of tens to hundreds of MB
thousands of times (risk-set grids, tables, Newton steps). glibc serves each of them from a fresh `mmap` and
returns it to the kernel on `free`, so every allocation pays the kernel's page faults and page zeroing again;
on a virtual machine whose host takes freed pages back, a 2 MB page can cost milliseconds. Keeping freed
memory in the process's heap for the next array removes that cost. The heap then hardly shrinks during the job
(only what lies free above 2 GB at its top): its peak stays the process's resident memory until the job ends,
which is what a batch job is sized for anyway (measured at 3M: +150 MB on the candidates job's 4.6 GB, +120 MB
on the trial emulation's 2.5 GB).

Imports nothing of the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1
"""Bytes of free memory at the heap's top before glibc returns it to the kernel: the most mallopt takes."""


def keep_freed_memory() -> bool:
    """Serve every allocation from one heap that keeps what is freed (no `mmap` per large array, no trim below
    2 GB, one arena shared by the threads). Must run before the job's threads start. False where the C library
    has no `mallopt` (macOS) or refuses a setting (musl's stub): the settings after it are not tried."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    applied = all(mallopt(parameter, value) == 1 for parameter, value in settings)
    if not applied:
        log.debug("mallopt refused a setting: the C library's defaults stay for it and the ones after it")
    return applied
