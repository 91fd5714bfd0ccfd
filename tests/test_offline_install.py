"""Issue 20: the pipeline installs on a server without a package index, from a carried-in wheelhouse alone.

`make wheelhouse` writes every pinned dependency as a wheel with a hash-locked requirements file; `make
install-offline` builds a fresh environment from that folder with pip's indexes and find-links switched off
(no config file, no PIP_* variables), and the fresh environment runs the pipeline on a small simulation.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repurpose.wheelhouse import LOCK_NAME, wheel_name_and_version, write_lock

REPO = Path(__file__).resolve().parents[1]


def test_lock_pins_every_wheel_with_its_hash(tmp_path):
    (tmp_path / "Jinja2-3.1.6-py3-none-any.whl").write_bytes(b"jinja")
    (tmp_path / "polars_runtime_32-2.1.0-cp39-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"polars")
    lock = write_lock(tmp_path).read_text()
    assert lock.splitlines() == [
        f"jinja2==3.1.6 --hash=sha256:{hashlib.sha256(b'jinja').hexdigest()}",
        f"polars-runtime-32==2.1.0 --hash=sha256:{hashlib.sha256(b'polars').hexdigest()}",
    ]
    assert wheel_name_and_version(Path("PyYAML-6.0.3-cp311-cp311-linux_x86_64.whl")) == ("pyyaml", "6.0.3")
    (tmp_path / "connection_pool-0.0.3.tar.gz").write_bytes(b"sdist")
    with pytest.raises(SystemExit, match="not wheels"):
        write_lock(tmp_path)


@pytest.mark.slow
def test_a_fresh_environment_from_the_wheelhouse_alone_runs_the_pipeline(tmp_path):
    venv = Path(sys.prefix)
    wheelhouse, fresh = tmp_path / "wheelhouse", tmp_path / "venv"
    # -o: the running environment is taken as installed, whatever the stamp's age.
    subprocess.run(["make", "-C", str(REPO), "-o", f"{venv}/.installed", "wheelhouse", f"VENV={venv}",
                    f"WHEELHOUSE={wheelhouse}"], check=True, capture_output=True)
    assert (wheelhouse / LOCK_NAME).is_file() and not list(wheelhouse.glob("*.tar.gz"))
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    subprocess.run(["make", "-C", str(REPO), "install-offline", f"VENV={fresh}", f"WHEELHOUSE={wheelhouse}"],
                   check=True, env=offline, capture_output=True)
    study = tmp_path / "small.yaml"
    study.write_text(yaml.safe_dump({"simulate": {"n_persons": 2000, "n_corrupt_rows": 0},
                                     "screen": {"atc_levels": [3], "lags_years": [0, 2], "sex_strata": ["all"]}}))
    run = subprocess.run([str(fresh / "bin/repurpose"), "run", str(study), "--cores", "2", "--in-process",
                          "--directory", str(tmp_path / "work")], env=offline, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "work/results/export/manifest.csv").is_file()
