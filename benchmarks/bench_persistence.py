"""Speed of the persistence study on a national-scale synthetic registry (issue 16's goal: under a minute after
validation on 2 cores for a 1M-person registry with about 15,000 MS patients and a few thousand new users).

The validated inputs are written by the tests' simple generator (tests/persistence_synthetic.py): new users of
the drug in 60 clinics, further MS patients on other drugs, the rest of the population without MS, and the
prescription register as yearly parquet parts holding every person's dispensings of other drugs as well (the
study reads only the drug's rows through DuckDB). The time measured is `run_persistence` (the rule's call):
reading, both stop definitions, every model, the released tables and the report page.

    .venv/bin/python benchmarks/bench_persistence.py                    # 1M persons, 30M dispensings
    .venv/bin/python benchmarks/bench_persistence.py --persons 200000 --dispensings 5000000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from persistence_synthetic import generate, study_config  # noqa: E402

from repurpose.layout import PERSISTENCE_TABLES  # noqa: E402
from repurpose.persistence import run_persistence  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--dispensings", type=int, default=30_000_000, help="dispensings of other drugs")
    parser.add_argument("--other-ms", type=int, default=11_000, help="MS patients on other drugs only")
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    synthetic = generate(n_clinics=60, size_range=(20, 110), seed=11, small_clinics=5,
                         n_other_persons=args.persons, n_other_dispensings=args.dispensings)  # fmt: skip
    n_users = synthetic.ms_registry.height
    rng = np.random.default_rng(12)
    others = np.arange(n_users + 1, n_users + 1 + args.other_ms, dtype=np.int64)
    starts = pl.Series(np.datetime64("2012-01-01") + rng.integers(0, 3000, len(others)).astype("timedelta64[D]")).cast(pl.Date)
    synthetic.ms_registry = pl.concat([synthetic.ms_registry, pl.DataFrame({
        "person_id": others, "onset_date": starts, "clinic_id": rng.choice(synthetic.ms_registry["clinic_id"].unique().to_list(), len(others)),
        "country": "NO", "diagnosis_date": starts})])  # fmt: skip
    synthetic.ms_treatments = pl.concat([synthetic.ms_treatments, pl.DataFrame({
        "person_id": others, "treatment_atc_code": "L03AB07", "start_date": starts, "stop_date": None, "stop_reason": None,
        "clinic_id": None}, schema=synthetic.ms_treatments.schema)])  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-persistence-") as folder:
        inputs = synthetic.write(Path(folder) / "in", n_parts=args.parts)
        generated = time.perf_counter() - started
        outputs = {name: f"{folder}/{name}.csv" for name in PERSISTENCE_TABLES}
        config = study_config()
        config["resources"] = {"threads": args.threads, "memory_gb": 4, "tmpdir": f"{folder}/tmp"}
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)
        t0 = time.perf_counter()
        result = run_persistence(config, **inputs, new_users=f"{folder}/new_users.parquet", html=f"{folder}/persistence.html", **outputs)
        seconds = time.perf_counter() - t0
    print(f"persons {synthetic.population.height:,}; MS patients {synthetic.ms_registry.height:,}; "
          f"new users {result['n_new_users']:,}; dispensings {synthetic.prescriptions.height:,} in {args.parts} parts")  # fmt: skip
    print(f"generation {generated:.1f} s; persistence study {seconds:.1f} s ({args.threads} threads, {platform.processor() or platform.machine()}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
