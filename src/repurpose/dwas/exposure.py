"""Exposure start per person and drug class at every ATC level, from one pass over the dispensings.

Representation (documented in docs/schemas.md): one row per (person, class) for persons of the
cohort who reach `screen.min_dispensings` dispensings of any substance of the class before their
exit, holding the age (days) of the k-th dispensing. Ever-use is a step function of age that switches
on at that age (plus the lag: the exposure window of `repurpose.dwas.window`, applied by the screen), so
this sparse table is all the screen needs: no person-by-class-by-interval table is ever built. Dose: the
ages at which cumulative DDD in the class first reaches each cut point, the number of dispensings and the
total DDD up to exit.

How, so that the dispensings are read once for every level and never held in memory all at once:
1. **Scatter** (`_scatter`): DuckDB reads the validated dispensings once, keeps the cohort members' up to
   their exit, and packs each into one integer key (substance, person, date: `KeyLayout`) with its DDD.
   The rows stream to one file per class of the coarsest configured level (`A10`, `N06`, ...), so that
   every class of every level lives in exactly one file.
2. **Milestones per bucket** (`_bucket_exposures`): consecutive files up to a memory budget are loaded,
   sorted by the key once, and each (substance, person) run gives its milestones (`milestones`: the k-th
   dispensing, the first date each cut point is reached, count, total, first date). A class used through
   one substance takes that substance's milestones; only the dispensings of (person, class) pairs mixing
   substances are sorted again, with the class in place of the substance.
3. Buckets are in ATC order and each is sorted by (class, person), so each level's table is written in
   (`atc_code`, `person_id`) order as it comes, one row group per bucket.

Cumulative DDD is summed in exact integer units (`_first_crossings`), so a long bucket's running sum loses
no digits; the few crossings in doubt are summed in date order from zero, as the definition reads. Imports DuckDB, polars, pyarrow and numpy, and the
package's ATC levels, schemas, DuckDB helpers and outcome definition.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from repurpose.atc import ATC_LEVEL_CODE_LENGTH
from repurpose.duck import connect, sql_literal
from repurpose.logs import Progress, threads_log_as_caller
from repurpose.registry.outcome import atc_prefix_sql, outcome_definition
from repurpose.schemas import dose_column, exposure_columns
from repurpose.stages import stage

log = logging.getLogger(__name__)

DATE_EPOCH = date(1900, 1, 1)
"""Dates are packed as whole days since this day."""
DATE_BITS = 22
"""Bits of a packed date: 2^22 days (11,000 years) from `DATE_EPOCH`."""
DDD_SCALE_BITS = 20
"""Running DDD is summed in integer units of 2^-20 DDD (`_first_crossings`)."""
BYTES_PER_BUCKET_ROW = 120
"""Working memory per dispensing of a bucket (the sorted copy, running sums, masks): sizes the buckets."""
NOT_REACHED = -1
"""A packed date of a milestone never reached."""


@dataclass(frozen=True)
class KeyLayout:
    """One int64 per dispensing that sorts as (code, person, date): code | person | days since `DATE_EPOCH`.

    `code` is the substance's index in sorted ATC order, `person` the cohort row in `person_id` order, so
    the order of keys is the order of (`atc_code`, `person_id`, `dispense_date`).
    """

    person_bits: int
    code_bits: int

    @classmethod
    def for_sizes(cls, n_persons: int, n_codes: int) -> KeyLayout:
        layout = cls(max(1, (n_persons - 1).bit_length()), max(1, (n_codes - 1).bit_length()))
        if layout.code_bits + layout.person_bits + DATE_BITS > 63:
            raise ValueError(
                f"exposure: {n_persons} cohort members x {n_codes} ATC codes do not fit the 63-bit dispensing key"
            )
        return layout

    @property
    def code_shift(self) -> int:
        return self.person_bits + DATE_BITS

    def pair_of(self, keys: np.ndarray) -> np.ndarray:
        """(code, person) of each key, as one integer: code << person_bits | person."""
        return keys >> DATE_BITS

    def date_of(self, keys: np.ndarray) -> np.ndarray:
        return (keys & ((1 << DATE_BITS) - 1)).astype(np.int32)

    def recode(self, keys: np.ndarray, code_map: np.ndarray) -> np.ndarray:
        """The keys with each code replaced by `code_map[code]` (a class index at a coarser level)."""
        low = keys & ((1 << self.code_shift) - 1)
        return (code_map[keys >> self.code_shift].astype(np.int64) << self.code_shift) | low

    def recode_pairs(self, pairs: np.ndarray, code_map: np.ndarray) -> np.ndarray:
        """The (code, person) pairs with each code replaced by `code_map[code]`."""
        return (code_map[self.code_of_pair(pairs)].astype(np.int64) << self.person_bits) | self.person_of_pair(pairs)

    def person_of_pair(self, pairs: np.ndarray) -> np.ndarray:
        return pairs & ((1 << self.person_bits) - 1)

    def code_of_pair(self, pairs: np.ndarray) -> np.ndarray:
        return pairs >> self.person_bits


@dataclass
class Milestones:
    """Per (code, person) pair, in pair order: the exposure milestones of its dispensings in date order.

    Dates are packed days since `DATE_EPOCH`; `kth` and each of `reached` are `NOT_REACHED` when never met.
    """

    pair: np.ndarray
    n_dispensings: np.ndarray
    total_ddd: np.ndarray
    first: np.ndarray
    kth: np.ndarray
    reached: list[np.ndarray]

    def take(self, index: np.ndarray) -> Milestones:
        return Milestones(
            self.pair[index], self.n_dispensings[index], self.total_ddd[index], self.first[index], self.kth[index],
            [r[index] for r in self.reached],
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[Milestones]) -> Milestones:
        return Milestones(
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("pair", "n_dispensings", "total_ddd", "first", "kth")),
            [np.concatenate([p.reached[i] for p in parts]) for i in range(len(parts[0].reached))],
        )  # fmt: skip


def _first_crossings(
    ddd: np.ndarray, starts: np.ndarray, lengths: np.ndarray, cutpoints: Sequence[float]
) -> list[np.ndarray]:  # fmt: skip
    """Per run (`starts`, `lengths`) and cut point: the row at which the run's running DDD first reaches the cut,
    or NOT_REACHED.

    Each DDD (validated: 0 or more) is rounded to whole units of 2^-DDD_SCALE_BITS. The units' running sum is
    exact in int64 and never decreases, so one binary search per run and cut finds the first row whose units
    reach the cut. A row's remainders add at most half a unit each, so only a row whose units lie within half
    the run's length of the cut is in doubt: those few runs are summed in date order from zero, as the
    definition reads. With DDDs of few binary digits (30, 0.5, 7.25) there are no remainders and no doubt.
    """
    scale = float(2**DDD_SCALE_BITS)
    if len(ddd) and ddd.min() < 0:
        raise ValueError("exposure: a ddd of the validated prescriptions is negative (validation rejects those)")
    if len(ddd) and float(ddd.max()) * len(ddd) * scale >= 2.0**62:
        raise ValueError("exposure: the ddd of one bucket of dispensings sum beyond the running sum's range; lower resources.memory_gb")
    units = np.rint(ddd * scale).astype(np.int64)
    has_remainders = bool(np.any(units != ddd * scale))
    running = np.cumsum(units)
    before_run = np.where(starts > 0, running[np.maximum(starts - 1, 0)], 0)
    ends = starts + lengths
    slack = (lengths + 1) // 2 + 1 if has_remainders else np.zeros_like(lengths)
    crossings = []
    for cut in cutpoints:
        cut_units = cut * scale
        sure = np.searchsorted(running, before_run + np.ceil(cut_units + slack).astype(np.int64), side="left")
        first = np.searchsorted(running, before_run + np.floor(cut_units - slack).astype(np.int64), side="left") if has_remainders else sure
        row = np.where(sure < ends, sure, NOT_REACHED)
        for run in np.flatnonzero((first < sure) & (first < ends)):
            begin, end = first[run], min(sure[run] + 1, ends[run])
            in_date_order = np.cumsum(ddd[starts[run] : end])[begin - starts[run] :]
            reached = np.flatnonzero(in_date_order >= cut)
            row[run] = begin + reached[0] if len(reached) else NOT_REACHED
        crossings.append(row)
    return crossings


def milestones(keys: np.ndarray, ddd: np.ndarray, layout: KeyLayout, k: int, cutpoints: Sequence[float]) -> Milestones:
    """The milestones of each (code, person) run of `keys` (sorted), the exposure definition written once.

    The k-th dispensing counts dispensings sharing a date separately (the k-th in date order); a cut point is
    reached on the first date at which the running DDD of the pair's dispensings in date order is at least
    the cut (`_first_crossings`).
    """
    pairs = layout.pair_of(keys)
    n_rows = len(keys)
    starts = np.flatnonzero(pairs[1:] != pairs[:-1]) + 1
    starts = np.concatenate(([0], starts)) if n_rows else starts
    lengths = np.diff(np.append(starts, n_rows))
    kth = np.full(len(starts), NOT_REACHED, np.int32)
    has_k = lengths >= k
    kth[has_k] = layout.date_of(keys[starts[has_k] + (k - 1)])
    total = np.add.reduceat(ddd, starts) if n_rows else np.zeros(0)
    reached = []
    for row in _first_crossings(ddd, starts, lengths, cutpoints):
        dates = np.full(len(starts), NOT_REACHED, np.int32)
        found = row != NOT_REACHED
        dates[found] = layout.date_of(keys[row[found]])
        reached.append(dates)
    return Milestones(pairs[starts], lengths.astype(np.int64), total, layout.date_of(keys[starts]), kth, reached)


def _sorted_by_key(keys: np.ndarray, ddd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`keys` sorted with their `ddd` (polars' parallel sort)."""
    frame = pl.DataFrame({"key": keys, "ddd": ddd}).sort("key")
    return frame["key"].to_numpy(), frame["ddd"].to_numpy()


def class_milestones(
    keys: np.ndarray, ddd: np.ndarray, substances: Milestones, code_map: np.ndarray, layout: KeyLayout, k: int,
    cutpoints: Sequence[float],
) -> Milestones:  # fmt: skip
    """Milestones per (class, person), the class of each substance code given by `code_map`.

    `keys`/`ddd` are the bucket's dispensings sorted by key and `substances` their milestones. A pair whose
    class was used through one substance is that substance's row; the dispensings of pairs mixing substances
    are recoded to the class and sorted again.
    """
    class_pairs = layout.recode_pairs(substances.pair, code_map)
    order = np.argsort(class_pairs, kind="stable")
    grouped = class_pairs[order]
    first_of_group = np.concatenate(([True], grouped[1:] != grouped[:-1])) if len(grouped) else np.zeros(0, bool)
    group_size = np.diff(np.append(np.flatnonzero(first_of_group), len(grouped)))
    mixed_substance = np.repeat(group_size > 1, group_size)
    single = replace(substances.take(order[~mixed_substance]), pair=grouped[~mixed_substance])
    mixed_rows = np.zeros(len(substances.pair), bool)
    mixed_rows[order[mixed_substance]] = True
    row_is_mixed = np.repeat(mixed_rows, substances.n_dispensings)
    mixed_keys, mixed_ddd = _sorted_by_key(layout.recode(keys[row_is_mixed], code_map), ddd[row_is_mixed])
    mixed = milestones(mixed_keys, mixed_ddd, layout, k, cutpoints)
    both = Milestones.concat([single, mixed])
    return both.take(np.argsort(both.pair, kind="stable"))


@dataclass(frozen=True)
class CodeTable:
    """The substance codes present (sorted) and their class index at each configured level."""

    codes: np.ndarray
    classes: dict[int, np.ndarray]
    class_of_code: dict[int, np.ndarray]

    @classmethod
    def from_codes(cls, codes: Sequence[str], levels: Sequence[int]) -> CodeTable:
        ordered = np.array(sorted(codes), dtype=object)
        classes, class_of_code = {}, {}
        for level in levels:
            prefixes = np.array([code[: ATC_LEVEL_CODE_LENGTH[level]] for code in ordered], dtype=object)
            classes[level], class_of_code[level] = np.unique(prefixes, return_inverse=True)
        return cls(ordered, classes, {level: index.astype(np.int64) for level, index in class_of_code.items()})


def _expected_rows(prescriptions: Sequence[str]) -> int:
    """Dispensings in the validated parts, from the Parquet footers (for progress only)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in prescriptions)


def prescription_source(prescriptions: str | Path | Sequence[str | Path]) -> str:
    """SQL file argument of the validated dispensings (`prescription_files`) for `read_parquet`."""
    return "[" + ", ".join(sql_literal(path) for path in prescription_files(prescriptions)) + "]"


def prescription_files(prescriptions: str | Path | Sequence[str | Path]) -> list[str]:
    """The validated dispensings' part files: a directory (all Parquet below it) or the list of part files.

    The DAG passes the explicit part files, so a part left over from an earlier delivery is never read.
    """
    if isinstance(prescriptions, (str, Path)):
        return sorted(str(p) for p in Path(prescriptions).rglob("*.parquet"))
    return [str(p) for p in prescriptions]


HEALTHCARE_USE_LEVEL = 4
"""Health-care use counts distinct classes of this ATC level ..."""
HEALTHCARE_USE_DAYS = 365
"""... dispensed in this many days up to entry (a dispensing on the entry date counts)."""


class _HealthcareUse:
    """Per cohort member the number of distinct ATC level-4 classes dispensed in the `HEALTHCARE_USE_DAYS` days up
    to entry (the confirmation model's health-care-use covariate), counted from the scatter's batches."""

    def __init__(self, codes: CodeTable, layout: KeyLayout, n_persons: int) -> None:
        level = HEALTHCARE_USE_LEVEL
        table = codes if level in codes.class_of_code else CodeTable.from_codes(codes.codes, [level])
        self.class_of_code = table.class_of_code[level]
        self.layout, self.n_persons, self.pairs = layout, n_persons, [np.zeros(0, np.int64)]

    def add(self, keys: np.ndarray, before_entry: np.ndarray) -> None:
        """Dispensings of a batch (`before_entry`: in the window): their (class, person) pairs, each once."""
        self.pairs.append(np.unique(self.layout.recode_pairs(self.layout.pair_of(keys[before_entry]), self.class_of_code)))

    def counts(self) -> np.ndarray:
        """Per person (cohort row in `person_id` order) the number of classes."""
        pairs = np.unique(np.concatenate(self.pairs))
        return np.bincount(self.layout.person_of_pair(pairs), minlength=self.n_persons)


def _scatter(
    con: Any, files: list[str], cohort: pa.Table, codes: CodeTable, file_of_code: np.ndarray, layout: KeyLayout,
    excluded_atc_prefixes: Sequence[str], scratch: Path, progress_seconds: float,
) -> tuple[list[Path], np.ndarray]:  # fmt: skip
    """Step 1 of the module docstring: every kept dispensing as (key, DDD) appended to its class file; and, from
    the same rows, each person's health-care use (`_HealthcareUse`)."""
    con.register("cohort_rows", cohort)
    con.register("codes", pa.table({
        "atc_code": pa.array(codes.codes.tolist(), pa.string()),
        "code_index": pa.array(np.arange(len(codes.codes), dtype=np.int64)),
        "file_index": pa.array(file_of_code.astype(np.int16)),
    }))  # fmt: skip
    excluded = f" AND NOT {atc_prefix_sql('r.atc_code', excluded_atc_prefixes)}" if excluded_atc_prefixes else ""
    last_day = (1 << DATE_BITS) - 1
    days = f"(r.dispense_date - DATE '{DATE_EPOCH.isoformat()}')"
    sql = f"""
        SELECT (k.code_index << {layout.code_shift}) | (c.person_row << {DATE_BITS})
               | CASE WHEN {days} BETWEEN 0 AND {last_day} THEN {days}
                      ELSE error('exposure: a dispense_date of the validated prescriptions lies outside {DATE_EPOCH} + {last_day} days') END AS key,
               coalesce(r.ddd, 0) AS ddd, k.file_index,
               r.dispense_date <= c.entry_date AND r.dispense_date > c.healthcare_use_after AS before_entry
        FROM read_parquet({prescription_source(files)}) r
        JOIN cohort_rows c ON r.person_id = c.person_id
        JOIN codes k ON r.atc_code = k.atc_code
        WHERE r.dispense_date <= c.exit_date{excluded}
    """  # fmt: skip
    n_files = int(file_of_code.max()) + 1 if len(file_of_code) else 0
    paths = [scratch / f"class_{i:05d}" for i in range(n_files)]
    handles = [(open(f"{path}.key", "wb"), open(f"{path}.ddd", "wb")) for path in paths]  # noqa: SIM115 - closed below
    progress = Progress(log, "exposure: dispensings read", _expected_rows(files), interval_seconds=progress_seconds)
    healthcare_use = _HealthcareUse(codes, layout, cohort.num_rows)
    done = 0
    try:
        reader = con.sql(sql).to_arrow_reader(1 << 20)
        for batch in reader:
            healthcare_use.add(batch.column(0).to_numpy(), batch.column(3).to_numpy(zero_copy_only=False))
            file_index = batch.column(2).to_numpy()
            order = np.argsort(file_index, kind="stable")
            bounds = np.searchsorted(file_index[order], np.arange(n_files + 1))
            keys, ddd = batch.column(0).to_numpy()[order], batch.column(1).to_numpy()[order]
            for i in np.flatnonzero(np.diff(bounds)):
                keys[bounds[i] : bounds[i + 1]].tofile(handles[i][0])
                ddd[bounds[i] : bounds[i + 1]].tofile(handles[i][1])
            done += batch.num_rows
            progress.advance(batch.num_rows)
    finally:
        for key_file, ddd_file in handles:
            key_file.close()
            ddd_file.close()
    log.info("exposure: %d dispensings of cohort members before exit, in %d class files", done, n_files)
    return paths, healthcare_use.counts()


def _buckets(paths: list[Path], max_rows: int) -> Iterator[list[Path]]:
    """Consecutive class files holding up to `max_rows` dispensings together (a larger file alone, with a warning:
    a class of the coarsest level is never split, so its dispensings set the memory floor)."""
    bucket: list[Path] = []
    rows = 0
    for path in paths:
        n = Path(f"{path}.key").stat().st_size // 8
        if n > max_rows:
            log.warning(
                "exposure: one class of the coarsest ATC level holds %d dispensings, above the %d of a bucket that "
                "resources.memory_gb allows: memory may exceed it (a coarsest level of 2 or finer keeps classes smaller)",
                n, max_rows,
            )  # fmt: skip
        if bucket and rows + n > max_rows:
            yield bucket
            bucket, rows = [], 0
        bucket.append(path)
        rows += n
    if bucket:
        yield bucket


def _load(bucket: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """A bucket's keys and DDDs, read back into one array each (and the files removed)."""
    sizes = [Path(f"{path}.key").stat().st_size // 8 for path in bucket]
    keys, ddd = np.empty(sum(sizes), np.int64), np.empty(sum(sizes), np.float64)
    offset = 0
    for path, size in zip(bucket, sizes, strict=True):
        for suffix, target in ((".key", keys), (".ddd", ddd)):
            with open(f"{path}{suffix}", "rb") as handle:
                handle.readinto(memoryview(target[offset : offset + size]).cast("B"))
            Path(f"{path}{suffix}").unlink()
        offset += size
    return keys, ddd


def _bucket_exposures(
    keys: np.ndarray, ddd: np.ndarray, codes: CodeTable, levels: Sequence[int], layout: KeyLayout, k: int,
    cutpoints: Sequence[float],
) -> dict[int, Milestones]:  # fmt: skip
    """Step 2 of the module docstring for one bucket: each level's milestones, sorted by (class, person)."""
    keys, ddd = _sorted_by_key(keys, ddd)
    substances = milestones(keys, ddd, layout, k, cutpoints)
    result = {}
    for level in levels:
        if len(codes.classes[level]) == len(codes.codes):  # one code per class: nothing to mix
            result[level] = replace(substances, pair=layout.recode_pairs(substances.pair, codes.class_of_code[level]))
        else:
            result[level] = class_milestones(keys, ddd, substances, codes.class_of_code[level], layout, k, cutpoints)
    return result


def _date_array(packed: np.ndarray) -> pa.Array:
    """Packed dates as a date32 array (nulls where `NOT_REACHED`)."""
    offset = (DATE_EPOCH - date(1970, 1, 1)).days
    return pa.array((packed + offset).astype(np.int32), type=pa.int32(), mask=packed == NOT_REACHED).cast(pa.date32())


def _exposure_table(
    found: Milestones, level: int, codes: CodeTable, cohort: pa.Table, birth: np.ndarray, layout: KeyLayout,
    columns: list[str], cutpoints: Sequence[float],
) -> pa.Table:  # fmt: skip
    """The rows of one level's exposure table (docs/schemas.md) for the pairs reaching the k-th dispensing."""
    found = found.take(np.flatnonzero(found.kth != NOT_REACHED))
    person = layout.person_of_pair(found.pair)
    born = birth[person]

    def age(packed: np.ndarray) -> pa.Array:
        return pa.array((packed - born).astype(np.int32), mask=packed == NOT_REACHED)

    values = {
        "person_id": cohort.column("person_id").take(pa.array(person)),
        "cohort_row": cohort.column("cohort_row").take(pa.array(person)),
        "atc_code": pa.array(codes.classes[level].tolist(), pa.string()).take(pa.array(layout.code_of_pair(found.pair))),
        "atc_level": pa.array(np.full(len(person), level, np.int8)),
        "exposure_start_date": _date_array(found.kth),
        "exposure_start_age_days": age(found.kth),
        "first_dispense_age_days": age(found.first),
        "n_dispensings": pa.array(found.n_dispensings.astype(np.int32)),
        "total_ddd": pa.array(found.total_ddd),
        **{dose_column(float(cut)): age(found.reached[i]) for i, cut in enumerate(cutpoints)},
    }
    return pa.table({name: values[name] for name in columns})


@dataclass(frozen=True)
class _Study:
    """What every bucket needs: the cohort in `person_id` order (with each person's row in the cohort table),
    the codes, the key layout and the definition."""

    cohort_rows: pa.Table
    birth: np.ndarray
    codes: CodeTable
    layout: KeyLayout
    levels: list[int]
    columns: list[str]
    k: int
    cutpoints: list[float]

    def tables(self, bucket: list[Path]) -> list[pa.Table]:
        """One bucket's rows of every level's table, in `levels` order."""
        keys, ddd = _load(bucket)
        found = _bucket_exposures(keys, ddd, self.codes, self.levels, self.layout, self.k, self.cutpoints)
        del keys, ddd
        return [
            _exposure_table(found[level], level, self.codes, self.cohort_rows, self.birth, self.layout, self.columns, self.cutpoints)
            for level in self.levels
        ]  # fmt: skip


def _write_levels(study: _Study, buckets: list[list[Path]], outputs: list[Path], threads: int, progress_seconds: float) -> dict[int, int]:
    """Steps 2 and 3 of the module docstring: `threads` buckets at a time, their rows appended in bucket order.

    Each table is written under a temporary name and renamed once complete, so a failure leaves no table.
    """
    partial = [path.with_name(f".{path.name}.partial") for path in outputs]
    schema = _schema(study.columns, study.cohort_rows)
    writers = [
        pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=["atc_code"], write_statistics=["person_id", "atc_code", "atc_level"])
        for path in partial
    ]  # fmt: skip
    written = dict.fromkeys(study.levels, 0)
    progress = Progress(log, "exposure: buckets of dispensings sorted", len(buckets), interval_seconds=progress_seconds)

    def append(tables: list[pa.Table]) -> None:
        for level, writer, table in zip(study.levels, writers, tables, strict=True):
            writer.write_table(table)
            written[level] += table.num_rows
        progress.step_done()

    try:
        with threads_log_as_caller() as adopt, ThreadPoolExecutor(max_workers=threads, initializer=adopt) as pool:
            pending: deque[Future[list[pa.Table]]] = deque()
            for bucket in buckets:
                pending.append(pool.submit(study.tables, bucket))
                if len(pending) == threads:
                    append(pending.popleft().result())
            while pending:
                append(pending.popleft().result())
    except BaseException:
        for writer, path in zip(writers, partial, strict=True):
            writer.close()
            path.unlink(missing_ok=True)
        raise
    for writer, path, output in zip(writers, partial, outputs, strict=True):
        writer.close()
        os.replace(path, output)
    return written


@stage(reads=("screen.atc_levels", "screen.min_dispensings", "screen.dose_cutpoints_ddd", "study.outcome"))
def build_exposures(
    config: dict[str, Any],
    *,
    prescriptions: str | Path | Sequence[str | Path],
    cohort: str | Path,
    exposures: Sequence[str | Path],
    healthcare_use: str | Path | None = None,
) -> dict[int, int]:
    """Write the exposure table of every configured ATC level (`exposures`, in `screen.atc_levels` order) and,
    from the same pass, each cohort member's health-care use (`healthcare_use`, docs/schemas.md).

    Returns the number of rows per level.
    """
    screen = config["screen"]
    levels = [int(level) for level in screen["atc_levels"]]
    if len(exposures) != len(levels):
        raise ValueError(f"exposure: {len(exposures)} output paths for {len(levels)} ATC levels {levels}")
    resources = config.get("resources") or {}
    threads = int(resources.get("threads", 2))
    progress_seconds = float(resources.get("progress_seconds", 30))
    started = time.perf_counter()
    files = prescription_files(prescriptions)
    con = connect(resources)
    cohort_table = (
        pl.read_parquet(cohort, columns=["person_id", "birth_date", "entry_date", "exit_date"])
        .with_row_index("cohort_row")
        .with_columns(pl.col("cohort_row").cast(pl.Int32), healthcare_use_after=pl.col("entry_date") - pl.duration(days=HEALTHCARE_USE_DAYS))
        .sort("person_id")
    )
    present = con.execute(f"SELECT DISTINCT atc_code FROM read_parquet({prescription_source(files)}) WHERE atc_code IS NOT NULL").fetchall()
    codes = CodeTable.from_codes([code for (code,) in present], levels)
    study = _Study(
        cohort_rows=cohort_table.with_row_index("person_row").with_columns(pl.col("person_row").cast(pl.Int64)).to_arrow(),
        birth=cohort_table["birth_date"].cast(pl.Int32).to_numpy().astype(np.int64) - (DATE_EPOCH - date(1970, 1, 1)).days,
        codes=codes,
        layout=KeyLayout.for_sizes(cohort_table.height, len(codes.codes)),
        levels=levels,
        columns=exposure_columns(config),
        k=int(screen["min_dispensings"]),
        cutpoints=[float(c) for c in screen["dose_cutpoints_ddd"]],
    )
    outputs = [Path(p) for p in exposures]
    max_bucket_rows = max(1, int(float(resources.get("memory_gb", 8)) * 1e9 / (threads + 1) / BYTES_PER_BUCKET_ROW))
    with tempfile.TemporaryDirectory(dir=outputs[0].parent, prefix=".exposure-") as scratch:
        paths, classes_before_entry = _scatter(
            con, files, study.cohort_rows, codes, codes.class_of_code[min(levels)], study.layout,
            outcome_definition(config["study"]["outcome"]).proxy_atc_prefixes, Path(scratch), progress_seconds,
        )  # fmt: skip
        con.close()
        if healthcare_use is not None:
            _write_healthcare_use(cohort_table, classes_before_entry, Path(healthcare_use))
        written = _write_levels(study, list(_buckets(paths, max_bucket_rows)), outputs, threads, progress_seconds)
    for level in levels:
        log.info("ATC level %d: %d person-class exposures (k = %d dispensings)", level, written[level], study.k)
    log.info("exposure: %d levels in %.1f s", len(levels), time.perf_counter() - started)
    return written


def _write_healthcare_use(cohort_table: pl.DataFrame, classes_before_entry: np.ndarray, path: Path) -> None:
    """The health-care-use table (one row per cohort member, in cohort order), written whole or not at all."""
    table = cohort_table.select(
        "person_id", "cohort_row", n_classes_year_before_entry=pl.Series(classes_before_entry, dtype=pl.Int32)
    ).sort("cohort_row")
    partial = path.with_name(f".{path.name}.partial")
    table.write_parquet(partial)
    os.replace(partial, path)


def _schema(columns: list[str], cohort_rows: pa.Table) -> pa.Schema:
    """The exposure table's Arrow schema (person_id typed as the cohort's)."""
    types = {
        "person_id": cohort_rows.schema.field("person_id").type, "atc_code": pa.string(), "atc_level": pa.int8(),
        "exposure_start_date": pa.date32(), "total_ddd": pa.float64(),
    }  # fmt: skip
    return pa.schema([(name, types.get(name, pa.int32())) for name in columns])
