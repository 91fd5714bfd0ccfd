"""The lock file of an offline wheelhouse: every pinned distribution with the SHA-256 of its wheel.

`make wheelhouse` (on a machine with a package index) freezes the installed environment, downloads every
distribution of it as a wheel into one folder and calls `python -m repurpose.wheelhouse <folder>`, which
writes `<folder>/requirements.lock`: `name==version --hash=sha256:...` per wheel. On the secure server,
`make install-offline` installs from that folder alone (`pip --no-index --require-hashes`), so a wheel that
was changed or swapped on the way is refused. Imports the standard library only: it runs before the
package's dependencies are installed anywhere.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

LOCK_NAME = "requirements.lock"


def wheel_name_and_version(wheel: Path) -> tuple[str, str]:
    """`Jinja2-3.1.6-py3-none-any.whl` -> ("jinja2", "3.1.6") (names normalised as PEP 503 does)."""
    name, version = wheel.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_lock(folder: str | Path) -> Path:
    """Write the lock file of every wheel in `folder`; refuse a folder holding anything but wheels (an sdist
    would have to be built on the server, which may lack the compilers)."""
    folder = Path(folder)
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix != ".whl" and p.name != LOCK_NAME)
    if others:
        raise SystemExit(f"{folder}: not wheels (build them with `pip wheel` first): {', '.join(others)}")
    lines: dict[str, list[str]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel_name_and_version(wheel)
        lines.setdefault(f"{name}=={version}", []).append(f"--hash=sha256:{sha256(wheel)}")
    lock = folder / LOCK_NAME
    lock.write_text("".join(f"{pin} {' '.join(hashes)}\n" for pin, hashes in sorted(lines.items())), encoding="utf-8")
    return lock


if __name__ == "__main__":
    print(write_lock(sys.argv[1]))
