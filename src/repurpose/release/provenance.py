"""Provenance that travels with the outputs: config hash, package versions, input checksums, git commit.

Usable by any stage, so that a row of a ranking can be traced to the run and the exact input files.
Nothing here runs git or touches the network: the commit is read from the `.git` directory's files.
Times (when the run was made, when each input was written) and the run identity (`run_id`, which the export
gate stamps in its manifest) change from run to run, so they are kept apart
(`without_times`): an output that embeds provenance stays the same bytes for the same inputs, and the
times go to one provenance file.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from repurpose import __version__
from repurpose.config import config_hash
from repurpose.protocol import design_of_config

PACKAGES = (
    "polars", "duckdb", "pyarrow", "numpy", "scipy", "pandas", "lifelines",
    "scikit-learn", "snakemake", "matplotlib", "jsonschema", "PyYAML", "Jinja2",
)  # fmt: skip


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (extracts can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """Name, size and SHA-256 of one file (or of every file under a directory, sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.relative_to(path)}\0{sha256_file(f)}\n".encode())
        return {"path": str(path), "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest(),
                "files": len(files), "modified_utc": _utc(max((f.stat().st_mtime for f in files), default=0))}  # fmt: skip
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path), "files": 1,
            "modified_utc": _utc(path.stat().st_mtime)}  # fmt: skip


def input_checksums(paths: list[str | Path]) -> list[dict[str, Any]]:
    """file_record of each existing path; a missing one is listed with `missing: true`."""
    return [file_record(p) if Path(p).exists() else {"path": str(p), "missing": True} for p in paths]


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (and Python, and repurpose itself)."""
    versions = {"python": platform.python_version(), "repurpose": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit checked out in the repository holding `start` (default: this package), or None."""
    here = Path(start or __file__).resolve()
    for directory in [here, *here.parents]:
        git = directory / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        if not git.is_dir():
            continue
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(" ", 1)[1]
        for base in (git, Path(str(git).split("/worktrees/")[0])):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        return None
    return None


TIME_KEYS = ("created_utc", "modified_utc", "run_id", "design")  # "design": kept out of the page, which echoes the config


def new_run_id() -> str:
    """A fresh identity for one execution of a stage (random, so two runs on the same inputs differ)."""
    return uuid.uuid4().hex


def without_times(record: dict[str, Any]) -> dict[str, Any]:
    """A provenance record without its times and run identity (TIME_KEYS, at the top and in each input):
    what two runs on the same inputs share."""
    kept = {k: v for k, v in record.items() if k not in TIME_KEYS}
    if "inputs" in kept:
        kept["inputs"] = [{k: v for k, v in f.items() if k not in TIME_KEYS} for f in kept["inputs"]]
    return kept


def provenance(config: dict[str, Any], inputs: list[str | Path]) -> dict[str, Any]:
    """Everything needed to trace an output back to its run: one dict, JSON-serialisable."""
    return {
        "run_id": new_run_id(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "run_label": config.get("run_label"),
        "config_hash": config_hash(config),
        "design": design_of_config(config),  # what the run's results were made with (checked by site packages)
        "git_commit": git_commit(),
        "python_executable": sys.executable,
        "packages": package_versions(),
        "inputs": input_checksums(inputs),
    }
