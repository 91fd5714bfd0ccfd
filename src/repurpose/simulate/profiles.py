"""The simulator's profile tables, read from package data (`repurpose/data/simulator/*.csv`).

Owns: the roles a substance can be planted with and the tables that set who is prescribed what (age
profiles, use profiles by ATC prefix, ever-use shares, popularity), which substances carry a planted
role for MS (and for the optional Parkinson-like outcome), which are not simulated, and the relative
hazards by age band. The tables are data so that they can be read, reviewed and changed without
touching code; `data/simulator/README.md` describes every column. A run may plant another MS truth from a
CSV of its own (`simulate.planted_substances`, `load_planted`), checked cell by cell like the packaged one.
Imports only the standard library.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TABLES_PACKAGE = "repurpose"
TABLES_DIR = "data/simulator"

CAUSAL_PROTECTIVE = "causal_protective"
CAUSAL_HARMFUL = "causal_harmful"
MECHANISM = "mechanism"
PRODROMAL = "prodromal"
CONFOUNDED = "confounded"
NULL = "null"
ROLES = (CAUSAL_PROTECTIVE, CAUSAL_HARMFUL, MECHANISM, PRODROMAL, CONFOUNDED, NULL)


class ProfileTableError(ValueError):
    """A simulator profile table is malformed; the message names the file, row and column."""


def read_table(name: str) -> list[dict[str, str]]:
    """Rows of one CSV table of `repurpose/data/simulator/` as dicts of strings (file order kept)."""
    text = resources.files(TABLES_PACKAGE).joinpath(f"{TABLES_DIR}/{name}").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _number(row: dict[str, str], column: str, where: str) -> float:
    """A number cell as written (an int where written without a decimal point, so JSON echoes it alike).

    A bad or missing value raises naming `where` (the table and line) and the column.
    """
    text = (row.get(column) or "").strip()
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError as error:
        raise ProfileTableError(f"{where}: column {column!r} must be a number, got {text!r}") from error


def _numbers(table: str, *columns: str) -> list[tuple[dict[str, str], tuple[float, ...]]]:
    """Each row of `table` with the numbers in `columns` (line numbers count the header as 1)."""
    return [
        (row, tuple(_number(row, column, f"{TABLES_DIR}/{table} line {line}") for column in columns))
        for line, row in enumerate(read_table(table), start=2)
    ]


@dataclass(frozen=True)
class PlantedSubstance:
    """A substance with a planted role; `ever_use` is its target share of persons with >= 1 dispensing."""

    role: str
    planted_hr: float
    ever_use: float
    rationale: str


PLANTED_COLUMNS = ("atc_code", "role", "planted_hr", "ever_use", "rationale")
"""Columns of a planted-substance table (`ms_planted_substances.csv` or `simulate.planted_substances`)."""
TARGET_COLUMNS = ("target_gene", "target_action_type")
"""The planted mechanism's shared target (a gene symbol and an action type as the drug-target data spell them):
filled on every `mechanism` row with one value, empty on the others; needed only when a mechanism is planted."""
DEFAULT_PLANTED_TABLE = "ms_planted_substances.csv"


@dataclass(frozen=True)
class PlantedTable:
    """The MS truth of one run: planted substances by ATC code, with the table they came from.

    `source` names the table in messages; `lines` gives each code's line in it (the header is line 1), so a
    later check (a code the simulator does not dispense) can name the row too. `mechanism_target` is the
    (gene, action type) the `mechanism` rows share, None when none is planted.
    """

    source: str
    substances: dict[str, PlantedSubstance]
    lines: dict[str, int]
    mechanism_target: tuple[str, str] | None = None

    def codes(self, role: str) -> list[str]:
        """The codes planted with `role`, in table order."""
        return [code for code, planted in self.substances.items() if planted.role == role]

    def mechanism_hr(self) -> float | None:
        """The one hazard ratio shared by the `mechanism` substances (None when none is planted)."""
        ratios = {self.substances[code].planted_hr for code in self.codes(MECHANISM)}
        return ratios.pop() if ratios else None


def _check_planted_row(row: dict[str, str], hr: float, ever_use: float, where: str) -> None:
    """The rules every planted row obeys; a break raises naming `where` (file and line) and the column."""
    role = row["role"]
    if role not in ROLES:
        raise ProfileTableError(f"{where}: column 'role' must be one of {', '.join(ROLES)}, got {role!r}")
    if not 0.0 < ever_use < 1.0:
        raise ProfileTableError(f"{where}: column 'ever_use' must be a share in (0, 1), got {ever_use!r}")
    effect = {CAUSAL_PROTECTIVE: hr < 1.0, CAUSAL_HARMFUL: hr > 1.0, MECHANISM: 0.0 < hr != 1.0}
    if hr <= 0.0 or not effect.get(role, hr == 1.0):
        wanted = {CAUSAL_PROTECTIVE: "in (0, 1)", CAUSAL_HARMFUL: "above 1", MECHANISM: "positive and not 1"}
        raise ProfileTableError(
            f"{where}: column 'planted_hr' of a {role} substance must be {wanted.get(role, '1 (no effect)')}, "
            f"got {hr!r}"
        )
    if not (row.get("rationale") or "").strip():
        raise ProfileTableError(f"{where}: column 'rationale' is empty (say why the substance is planted so)")


def parse_planted(text: str, source: str) -> PlantedTable:
    """A planted-substance table from its CSV text; `source` names it in every message.

    Checks the columns, one row per ATC code, the role, the numbers (a causal protective HR below 1, a harmful
    one above 1, HR 1 for the roles without an effect, ever-use in (0, 1)), a rationale on every row, and one
    shared HR and one named target (`TARGET_COLUMNS`) for the `mechanism` rows. Which codes the simulator
    dispenses is checked where the catalog is.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in PLANTED_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise ProfileTableError(
            f"{source}: missing column(s) {missing} (a planted table has {list(PLANTED_COLUMNS)})"
        )
    planted: dict[str, PlantedSubstance] = {}
    lines: dict[str, int] = {}
    targets: dict[tuple[str, str], int] = {}
    for line, row in enumerate(reader, start=2):
        where = f"{source} line {line}"
        code = (row["atc_code"] or "").strip()
        if code in lines:
            raise ProfileTableError(
                f"{where}: column 'atc_code' repeats {code!r} (first on line {lines[code]})"
            )
        hr, ever_use = (_number(row, column, where) for column in ("planted_hr", "ever_use"))
        _check_planted_row(row, hr, ever_use, where)
        target = _planted_target(row, reader.fieldnames or [], where)
        if target is not None:
            targets.setdefault(target, line)
        planted[code] = PlantedSubstance(row["role"], hr, ever_use, row["rationale"])
        lines[code] = line
    if len(targets) > 1:
        named = ", ".join(f"{gene} {action} (line {line})" for (gene, action), line in targets.items())
        raise ProfileTableError(
            f"{source}: columns {list(TARGET_COLUMNS)} must name one target for every mechanism row, "
            f"got {named}"
        )
    table = PlantedTable(source, planted, lines, next(iter(targets), None))
    ratios = {planted[code].planted_hr for code in table.codes(MECHANISM)}
    if len(ratios) > 1:
        raise ProfileTableError(
            f"{source}: column 'planted_hr' must be one value for every mechanism row, got {sorted(ratios)}"
        )
    return table


def _planted_target(row: dict[str, str], columns: list[str], where: str) -> tuple[str, str] | None:
    """A mechanism row's (gene, action type); None for the other roles, whose target cells must be empty."""
    cells = {column: (row.get(column) or "").strip() for column in TARGET_COLUMNS}
    if row["role"] != MECHANISM:
        filled = [column for column, value in cells.items() if value]
        if filled:
            raise ProfileTableError(
                f"{where}: column {filled[0]!r} names a target on a {row['role']} row "
                "(only mechanism rows share one)"
            )
        return None
    for column, value in cells.items():
        if not value:
            why = "is empty" if column in columns else "is missing"
            raise ProfileTableError(
                f"{where}: column {column!r} {why} (a mechanism row names the target it acts through)"
            )
    return cells["target_gene"], cells["target_action_type"]


def load_planted(path: str | Path | None = None) -> PlantedTable:
    """The planted table at `path` (`simulate.planted_substances`), or the packaged MS table when None."""
    if path is None:
        source = f"{TABLES_DIR}/{DEFAULT_PLANTED_TABLE}"
        text = resources.files(TABLES_PACKAGE).joinpath(source).read_text(encoding="utf-8")
        return parse_planted(text, source)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ProfileTableError(f"simulate.planted_substances: cannot read {path}: {error}") from error
    return parse_planted(text, str(path))


def load_age_band_hazard(table: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(lower bounds of the age bands in years, hazard relative to the peak band) from `table`."""
    rows = _numbers(table, "age_band_lower_years", "relative_hazard")
    return tuple(values[0] for _, values in rows), tuple(values[1] for _, values in rows)


@dataclass(frozen=True)
class UseProfile:
    """How a group of substances is prescribed: who gets it, how long episodes last, what is dispensed."""

    age_profile: str
    female_share: float  # share of use by women at equal numbers of men and women (1.0 = women only)
    refills_mean: float  # mean number of refills after the first dispensing of an episode (geometric)
    refill_interval_days: float  # mean days between dispensings of an episode
    ddd_per_dispensing: float  # typical number of DDD dispensed at once
    reimbursed_share: float = 0.0  # share of episodes with a reimbursement code
    reimbursement_codes: tuple[str, ...] = ()  # ICD-10 / ICPC-2 codes drawn for reimbursed episodes


def _load_age_profiles() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    profiles: dict[str, tuple[list[float], list[float]]] = {}
    for row, (age, use) in _numbers("age_profiles.csv", "age", "relative_use"):
        ages, uses = profiles.setdefault(row["age_profile"], ([], []))
        ages.append(age)
        uses.append(use)
    return {name: (tuple(ages), tuple(uses)) for name, (ages, uses) in profiles.items()}


def _load_use_profiles(age_profiles: dict[str, object]) -> dict[str, UseProfile]:
    columns = (
        "female_share",
        "refills_mean",
        "refill_interval_days",
        "ddd_per_dispensing",
        "reimbursed_share",
    )
    profiles = {}
    for line, (row, values) in enumerate(_numbers("use_profiles.csv", *columns), start=2):
        if row["age_profile"] not in age_profiles:
            raise ProfileTableError(
                f"{TABLES_DIR}/use_profiles.csv line {line}: age_profile {row['age_profile']!r} is not in "
                "age_profiles.csv"
            )
        codes = tuple(code for code in row["reimbursement_codes"].split("|") if code)
        profiles[row["atc_prefix"]] = UseProfile(row["age_profile"], *values, reimbursement_codes=codes)
    return profiles


PLANTED_TABLE = load_planted()
PLANTED: dict[str, PlantedSubstance] = PLANTED_TABLE.substances
"""The default MS truth: substances with a planted role (every other simulated substance is `null`)."""

NOT_SIMULATED: tuple[str, ...] = tuple(row["atc_code"] for row in read_table("not_simulated.csv"))
"""Catalog substances not simulated: MS treatments, which real data show only after diagnosis."""

AGE_BAND_LOWER_YEARS, AGE_BAND_RELATIVE_HAZARD = load_age_band_hazard("ms_age_band_hazard.csv")
"""MS onset hazard by age band relative to the peak (25-34 years)."""

AGE_PROFILES = _load_age_profiles()
"""Relative use at anchor ages per named profile (interpolated linearly, peak scaled to 1), file order."""

USE_PROFILES = _load_use_profiles(AGE_PROFILES)
"""Use profile by ATC prefix; the longest matching prefix wins (a level-5 code overrides its groups)."""

EVER_USE_PERCENT_BY_ATC2: dict[str, float] = {
    row["atc2"]: values[0] for row, values in _numbers("ever_use_by_atc2.csv", "ever_use_percent")
}
"""Share (%) of persons with >= 1 dispensing in an ATC level-2 group over the window."""

POPULARITY: dict[str, float] = {
    row["atc_code"]: values[0] for row, values in _numbers("popularity.csv", "relative_weight")
}
"""Relative weight of a substance within its ATC level-2 group (default 1)."""


MECHANISM_HR = PLANTED_TABLE.mechanism_hr()


@dataclass(frozen=True)
class ParkinsonPlantedSubstance:
    """A substance with a planted role for the Parkinson-like outcome (it keeps its ordinary prescribing)."""

    role: str
    planted_hr: float
    prodrome_user_probability: float  # probability that a case gets prodromal dispensings; 0 if not prodromal
    rationale: str


def _load_parkinson_planted() -> dict[str, ParkinsonPlantedSubstance]:
    """The Parkinson truth; its substances must differ from the MS truth's, so the two stay apart."""
    table = "parkinson_planted_substances.csv"
    planted = {}
    for line, row in enumerate(read_table(table), start=2):
        role = row["role"]
        if role not in (CAUSAL_PROTECTIVE, CAUSAL_HARMFUL, PRODROMAL):
            raise ProfileTableError(f"{TABLES_DIR}/{table} line {line}: role {role!r} is not planted here")
        if row["atc_code"] in PLANTED:
            raise ProfileTableError(
                f"{TABLES_DIR}/{table} line {line}: {row['atc_code']} already has an MS role; choose another"
            )
        where = f"{TABLES_DIR}/{table} line {line}"
        probability = _number(row, "prodrome_user_probability", where) if role == PRODROMAL else 0.0
        hr = _number(row, "planted_hr", where)
        planted[row["atc_code"]] = ParkinsonPlantedSubstance(role, hr, probability, row["rationale"])
    return planted


PARKINSON_PLANTED = _load_parkinson_planted()
"""The Parkinson-like outcome's truth: causal substances (hazard ratio of diagnosis) and prodromal ones."""

PARKINSON_AGE_BAND_LOWER_YEARS, PARKINSON_AGE_BAND_RELATIVE_HAZARD = load_age_band_hazard(
    "parkinson_age_band_hazard.csv"
)
"""Parkinson diagnosis hazard by age band relative to the peak (75-84 years)."""
