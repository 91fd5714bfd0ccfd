"""The persistence study's stage function: new users -> both stop definitions -> drug survival, reasons, the
Cox model by clinic, between-clinic variance, the funnel -> released tables and the report page.

Imports the other `persistence` modules, the top level (`stages`) and `release` (the disclosure policy and
`release_counts`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from repurpose.persistence.clinics import (
    ALL_CLINICS,
    OTHER_CLINICS,
    between_clinic_variance,
    disclosed_clinics,
    funnel_table,
    release_clinic_table,
)
from repurpose.persistence.dispensing import agreement_rows, gap_rule_stops, read_drug_dispensings
from repurpose.persistence.newusers import DAYS_PER_MONTH, STOP_REASONS, as_codes, new_users
from repurpose.persistence.page import write_page
from repurpose.persistence.survival import (
    aalen_johansen,
    cif_at,
    design_matrix,
    expected_stops,
    fit_cox,
    fit_status,
    kaplan_meier,
    km_curve,
    months_of,
    released_curve,
)
from repurpose.release.disclosure import Partition, release_counts
from repurpose.release.policy import DisclosurePolicy
from repurpose.stages import stage

log = logging.getLogger(__name__)
ANY_REASON = "any reason"


def _read(path: str | Path | None) -> pl.DataFrame | None:
    return None if path is None else pl.read_parquet(path)


def _write_csv(frame: pl.DataFrame, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(path, float_precision=6)


@stage(reads=("persistence", "study.end", "disclosure"))
def run_persistence(
    config: Mapping[str, Any],
    *,
    population: str,
    ms_registry: str,
    ms_treatments: str,
    ms_relapses: str | None = None,
    ms_edss: str | None = None,
    prescriptions: Sequence[str] = (),
    new_users: str,
    survival: str,
    curves: str,
    reasons: str,
    cox: str,
    clinics: str,
    variance: str,
    agreement: str,
    html: str,
) -> dict[str, Any]:
    """Run the study (docs/methods.md, Persistence) and write its person-level table and released outputs."""
    started = time.perf_counter()
    settings = config["persistence"]
    policy = DisclosurePolicy.from_config(config)
    codes = as_codes(settings["drug"])
    users = new_users_of(
        settings, codes, date.fromisoformat(str(config["study"]["end"])),
        population=population, ms_registry=ms_registry, ms_treatments=ms_treatments, ms_relapses=ms_relapses,
        ms_edss=ms_edss,
    )  # fmt: skip
    log.info("%d new users of %s", users.height, ", ".join(codes))
    if prescriptions:
        dispensings = read_drug_dispensings(prescriptions, codes, users, config.get("resources"), Path(new_users).parents[1] / "tmp")
        stops = gap_rule_stops(
            users, dispensings, grace_days=float(settings["grace_days"]), ddd_per_day=settings["ddd_per_day"],
            lookback_days=int(settings["lookback_days"]),
        )  # fmt: skip
        users = users.join(stops.drop("start_date", "censor_date", strict=False), on="person_id", how="left")
    users = users.sort("person_id")  # joins do not keep row order; the analysis sums in this order
    Path(new_users).parent.mkdir(parents=True, exist_ok=True)
    users.write_parquet(new_users)
    tables = analyse(users, settings, policy)
    for name, path in (("survival", survival), ("curves", curves), ("reasons", reasons), ("cox", cox),
                       ("clinics", clinics), ("variance", variance), ("agreement", agreement)):  # fmt: skip
        _write_csv(tables[name], path)
    write_page(tables, settings, codes, policy, html)
    seconds = time.perf_counter() - started
    log.info("persistence study done in %.1f s", seconds)
    return {"n_new_users": users.height, "seconds": seconds}


# The columns each validated input must hold (the shared contract of issue 16; others are optional).
REQUIRED_COLUMNS = {
    "population": ("person_id", "sex", "birth_year"),
    "ms_registry": ("person_id",),
    "ms_treatments": ("person_id", "treatment_atc_code", "start_date", "stop_date"),
    "ms_relapses": ("person_id", "relapse_date"),
    "ms_edss": ("person_id", "visit_date", "edss"),
}


def _checked(name: str, path: str | Path | None, frame: pl.DataFrame | pl.LazyFrame | None) -> None:
    """Fail with the file and the missing columns when a validated input lacks a required column."""
    if frame is None:
        return
    columns = frame.collect_schema().names()
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in columns]
    if missing:
        raise ValueError(
            f"persistence study: {path} ({name}) lacks the column(s) {', '.join(missing)}; it must be the validated "
            f"extract (data_dictionary/{name}.yaml)"
        )


def new_users_of(
    settings: Mapping[str, Any], codes: Sequence[str], study_end: date, *, population: str, ms_registry: str,
    ms_treatments: str, ms_relapses: str | None, ms_edss: str | None,
) -> pl.DataFrame:
    """The new-user table from the validated files (the population read for the treated persons only)."""
    treatments, registry = pl.read_parquet(ms_treatments), pl.read_parquet(ms_registry)
    people = pl.scan_parquet(population)
    relapses, edss = _read(ms_relapses), _read(ms_edss)
    for name, path, frame in (("population", population, people), ("ms_registry", ms_registry, registry),
                              ("ms_treatments", ms_treatments, treatments), ("ms_relapses", ms_relapses, relapses),
                              ("ms_edss", ms_edss, edss)):  # fmt: skip
        _checked(name, path, frame)
    people = people.join(treatments.select("person_id").unique().lazy(), on="person_id").collect()
    users = new_users(treatments, registry, people, relapses, edss, codes, study_end)
    if users.height == 0:
        raise ValueError(
            f"persistence study: no new user of {', '.join(codes)} with follow-up in {ms_treatments} "
            "(column treatment_atc_code); check persistence.drug"
        )
    return users


def analyse(users: pl.DataFrame, settings: Mapping[str, Any], policy: DisclosurePolicy) -> dict[str, pl.DataFrame]:
    """Every released table of the study from the new-user table, and `funnel_exact` (the funnel before
    disclosure control: internal, for tests and checks; never written)."""
    horizons = [int(h) for h in settings["horizons_months"]]
    funnel_horizon = float(settings["funnel_horizon_months"])
    sizes = dict(users.group_by("clinic_id").len().iter_rows())
    groups = disclosed_clinics(sizes, int(settings["min_clinic_size"]), policy)
    users = users.with_columns(pl.col("clinic_id").replace_strict(groups, return_dtype=pl.String).alias("clinic_group"))
    months = months_of(users["time_days"])
    stopped = users["stopped"].to_numpy().astype(int)

    design = design_matrix(users, settings["adjust"])
    expected_h, expected_all = case_mix_expected(users, settings, months, stopped, funnel_horizon)
    stopped_h = ((stopped == 1) & (months <= funnel_horizon)).astype(float)
    per_clinic = (
        users.select("clinic_group").with_columns(
            pl.Series("o_h", stopped_h), pl.Series("e_h", expected_h), pl.Series("o", stopped.astype(float)),
            pl.Series("e", expected_all),
        ).group_by("clinic_group").agg(pl.all().sum(), pl.len().alias("n")).sort("clinic_group")
    )  # fmt: skip
    # the funnel and the variance compare clinics: the merged small clinics are not one, so they are left out
    real = per_clinic.filter((pl.col("e_h") > 0) & (pl.col("clinic_group") != OTHER_CLINICS))
    funnel, spread = funnel_table(real["clinic_group"].to_list(), real["o_h"].to_numpy(), real["e_h"].to_numpy(),
                                  settings["funnel_overdispersion"])  # fmt: skip
    funnel_details = {"funnel_overdispersion": spread.method, "funnel_phi": spread.phi, "funnel_tau2": spread.tau2,
                      "n_clinic_groups": per_clinic.height}  # fmt: skip
    variances = [{"clinics": "all clinics", **between_clinic_variance(real["o"].to_numpy(), real["e"].to_numpy()),
                  **funnel_details}]  # fmt: skip
    # The spread of the ordinary clinics: a planted or real outlier is not a draw from the between-clinic
    # distribution, and the all-clinics tau^2 mixes the two.
    ordinary = real.filter(~pl.col("clinic_group").is_in(funnel.filter(pl.col("funnel") == "outlier")["clinic_id"].implode()))
    if 2 <= ordinary.height < real.height:
        variances.append({"clinics": "funnel outliers left out",
                          **between_clinic_variance(ordinary["o"].to_numpy(), ordinary["e"].to_numpy()), **funnel_details})  # fmt: skip

    survival_rows, curve_frames, summaries = [], [], {}
    for kind, column in (("overall", None), ("country", "country"), ("clinic", "clinic_group")):
        values = [ALL_CLINICS] if column is None else sorted(users[column].unique().to_list())
        for value in values:
            mask = np.ones(users.height, bool) if column is None else (users[column] == value).to_numpy()
            summary, fitter = kaplan_meier(value, months[mask], stopped[mask], horizons)
            summaries[(kind, value)] = summary
            row = {"group_type": kind, "group": value, "n_new_users": summary.n, "n_stopped": summary.n_stopped,
                   "median_months": summary.median_months}  # fmt: skip
            # the released persistence at each horizon is the released curve's (steps of >= min_cell stops)
            grid = np.arange(0, max(horizons) + 1, 1.0)
            curve = released_curve(km_curve(fitter, grid), months[mask][stopped[mask] == 1], policy.min_cell)
            for h in horizons:
                at = curve.filter(pl.col("month") == float(h)).row(0, named=True)
                if at["persistence"] == 1.0 and np.any(stopped[mask] == 1) and months[mask][stopped[mask] == 1].min() <= h:
                    at = {"persistence": None, "lower": None, "upper": None}  # stopped, but too few to show a step
                row |= {f"persistence_{h}m": at["persistence"], f"persistence_{h}m_lower": at["lower"],
                        f"persistence_{h}m_upper": at["upper"]}  # fmt: skip
            survival_rows.append(row)
            if kind != "clinic" or value in set(groups.values()):
                curve_frames.append(curve.with_columns(pl.lit(kind).alias("group_type"), pl.lit(value).alias("group")))
    survival = pl.DataFrame(survival_rows)
    estimates = [c for c in survival.columns if c.startswith("persistence_") or c == "median_months"]
    survival = release_breakdowns(survival, ["n_new_users", "n_stopped"], policy, by=("group_type",),
                                  complements=[("n_new_users", "n_stopped")],
                                  derived={c: ["n_new_users", "n_stopped"] for c in estimates})  # fmt: skip
    curves = release_breakdowns(
        pl.concat(curve_frames).select("group_type", "group", "month", "persistence", "lower", "upper", "n_at_risk"),
        ["n_at_risk"], policy, by=("group_type", "month"), derived={c: ["n_at_risk"] for c in ("persistence", "lower", "upper")},
    )  # fmt: skip
    released_survival = {(row["group_type"], row["group"]): row for row in survival_rows}
    clinic_rows, country_rows = clinic_table(users, per_clinic, funnel, summaries, released_survival, policy)
    survival = with_released_counts(survival, clinic_rows, country_rows, estimates)
    # a curve is shown for a group whose new users and stops are shown (its month-0 number at risk is the first)
    shown = survival.filter(pl.col("n_new_users").is_not_null() & pl.col("n_stopped").is_not_null())
    curves = curves.join(shown.select("group_type", "group"), on=["group_type", "group"], how="semi")

    reasons = reason_table(users, months, horizons, policy)
    cox_table = release_cox(clinic_cox_table(users, design, months, stopped), survival, policy)
    agreement = agreement_table(users, funnel_horizon * DAYS_PER_MONTH, int(settings["agreement_days"]), policy)
    return {"survival": survival, "curves": curves, "reasons": reasons, "cox": cox_table, "clinics": clinic_rows,
            "variance": pl.DataFrame(variances), "agreement": agreement,
            "funnel_exact": funnel}  # fmt: skip (funnel_exact: exact counts, internal; never written)


def case_mix_expected(users: pl.DataFrame, settings: Mapping[str, Any], months: np.ndarray, stopped: np.ndarray,
                      horizon: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each patient's expected stops up to the horizon and over the whole follow-up under the case-mix model:
    one model for all patients, or with `case_mix_by_country` one per country (its own baseline hazard and
    coefficients: the model a federation of country sites fits exactly, each site its own)."""
    expected_h, expected_all = np.zeros(users.height), np.zeros(users.height)
    countries = users["country"].to_numpy() if settings.get("case_mix_by_country") else np.zeros(users.height)
    for country in np.unique(countries):
        mask = countries == country
        design = design_matrix(users.filter(pl.Series(mask)), settings["adjust"])
        model = fit_cox(design, months[mask], stopped[mask])
        expected_h[mask] = expected_stops(model, design, months[mask], horizon)
        expected_all[mask] = expected_stops(model, design, months[mask], np.inf)
    return expected_h, expected_all


def with_released_counts(survival: pl.DataFrame, clinics: pl.DataFrame, countries: pl.DataFrame,
                         estimates: Sequence[str]) -> pl.DataFrame:  # fmt: skip
    """The survival table with its clinic and country rows' counts as the clinic release shows them (the one
    release of the clinic- and country-level counts: a count hidden there is hidden here, and the row's
    estimates with it)."""
    released = pl.concat([
        clinics.select(pl.when(pl.col("clinic_id") == ALL_CLINICS).then(pl.lit("overall")).otherwise(pl.lit("clinic")).alias("group_type"),
                       pl.col("clinic_id").alias("group"), "n_new_users", "n_stopped"),
        countries.select(pl.lit("country").alias("group_type"), pl.col("country").alias("group"), "n_new_users", "n_stopped"),
    ]).rename({"n_new_users": "_users", "n_stopped": "_stopped"})  # fmt: skip
    out = survival.join(released, on=["group_type", "group"], how="left")
    replaced = pl.col("group_type").is_in(["overall", "clinic", "country"])
    out = out.with_columns(
        pl.when(replaced).then(pl.col("_users")).otherwise(pl.col("n_new_users")).alias("n_new_users"),
        pl.when(replaced).then(pl.col("_stopped")).otherwise(pl.col("n_stopped")).alias("n_stopped"),
    ).drop("_users", "_stopped")  # fmt: skip
    hidden = pl.col("n_new_users").is_null() | pl.col("n_stopped").is_null()
    return out.with_columns([pl.when(hidden).then(None).otherwise(pl.col(c)).alias(c) for c in estimates])


def release_breakdowns(
    frame: pl.DataFrame, counts: Sequence[str], policy: DisclosurePolicy, *, by: tuple[str, ...],
    complements: Sequence[tuple[str, str]] = (), derived: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """A table of the overall group and its breakdowns (group_type country, clinic) as released: each breakdown
    together with the overall rows as its total (within `by`), so no group is the overall minus the others."""
    overall = frame.filter(pl.col("group_type") == "overall")
    partition = Partition(by=by, part_column="group", total_value=ALL_CLINICS)
    released = []
    for kind in ("country", "clinic"):
        both = pl.concat([overall.with_columns(pl.lit(kind).alias("group_type")), frame.filter(pl.col("group_type") == kind)])
        out = release_counts(both, counts, policy, complements=complements, partitions=[partition], derived=derived)
        released.append(out.with_columns(pl.when(pl.col("group") == ALL_CLINICS).then(pl.lit("overall"))
                                         .otherwise(pl.col("group_type")).alias("group_type")))  # fmt: skip
    # the overall rows: a cell hidden in either breakdown's release is hidden (both see the same exact counts,
    # so in practice they hide the same cells: the small numbers at risk in the tail)
    first = released[0].filter(pl.col("group_type") == "overall")
    second = released[1].filter(pl.col("group_type") == "overall")
    hidden = [*counts, *(derived or {})]
    overall = first.with_columns([pl.when(second[c].is_null()).then(None).otherwise(pl.col(c)).alias(c) for c in hidden])
    return pl.concat([overall, *[r.filter(pl.col("group_type") != "overall") for r in released]])


def reason_table(users: pl.DataFrame, months: np.ndarray, horizons: Sequence[int], policy: DisclosurePolicy) -> pl.DataFrame:
    """Cumulative incidence of stopping by reason (Aalen-Johansen, the other reasons competing) at the horizons,
    with the stops of each reason by then. Released at the horizons only (a monthly curve would show each
    month's few stops); a reason's value is hidden where its stops by the horizon, or its new stops since the
    previous horizon, number 1 to min_cell - 1, and with one reason hidden another is (they add up to all stops)."""
    code = {r: k + 1 for k, r in enumerate(STOP_REASONS)}
    cause = users.select(pl.when(pl.col("stopped") == 1).then(pl.col("stop_reason").replace_strict(code, default=len(code)))
                         .otherwise(0)).to_series().to_numpy()  # fmt: skip
    times, cif = aalen_johansen(months, cause, list(code.values()))
    rows = []
    for month in sorted(horizons):
        at = cif_at(times, cif, month)
        by_then = (months <= month) & (cause > 0)
        for reason, k in code.items():
            rows.append((reason, int(np.sum(by_then & (cause == k))), float(month), float(at[k - 1])))
        rows.append((ANY_REASON, int(np.sum(by_then)), float(month), float(at.sum())))
    frame = pl.DataFrame(rows, schema={"stop_reason": pl.String, "n_stopped": pl.Int64, "month": pl.Float64,
                                       "cumulative_incidence": pl.Float64}, orient="row")  # fmt: skip
    new_since = pl.col("n_stopped") - pl.col("n_stopped").shift(1).over("stop_reason", order_by="month").fill_null(0)
    small_step = new_since.is_between(1, policy.min_cell - 1)
    frame = frame.with_columns(pl.when(small_step).then(None).otherwise(pl.col("cumulative_incidence")).alias("cumulative_incidence"),
                               pl.when(small_step).then(None).otherwise(pl.col("n_stopped")).alias("n_stopped"))  # fmt: skip
    # the reasons add up to all stops (also in the survival table): one hidden reason would be the difference
    reasons = Partition(by=("month",), part_column="stop_reason", total_value=ANY_REASON)
    return release_counts(frame, ["n_stopped"], policy, partitions=[reasons], derived={"cumulative_incidence": ["n_stopped"]})


def clinic_cox_table(users: pl.DataFrame, design: Any, months: np.ndarray, stopped: np.ndarray) -> pl.DataFrame:
    """Cox model of stopping by clinic group (the largest the reference) adjusted for the case mix: HRs with CIs."""
    groups = users["clinic_group"]
    counts = groups.value_counts(sort=True)
    reference = counts["clinic_group"][0]
    full = design.copy()
    for value in sorted(v for v in counts["clinic_group"].to_list() if v != reference):
        full[f"clinic={value}"] = (groups == value).cast(pl.Float64).to_numpy()
    fitter = fit_cox(full, months, stopped)
    s = fitter.summary
    table = pl.DataFrame({
        "term": list(s.index), "log_hr": s["coef"].to_numpy(), "se": s["se(coef)"].to_numpy(),
        "hr": s["exp(coef)"].to_numpy(), "hr_lower": s["exp(coef) lower 95%"].to_numpy(),
        "hr_upper": s["exp(coef) upper 95%"].to_numpy(), "p_value": s["p"].to_numpy(),
    })  # fmt: skip
    return table.with_columns(pl.lit(f"clinic={reference}").alias("reference"), pl.lit(fit_status(fitter)).alias("status"),
                              pl.lit(int(fitter.event_observed.sum())).alias("n_events"), pl.lit(len(months)).alias("n_at_risk"))  # fmt: skip


def release_cox(table: pl.DataFrame, survival: pl.DataFrame, policy: DisclosurePolicy) -> pl.DataFrame:
    """The Cox table as released: a clinic group's estimate is hidden whole where its new users or stops are
    hidden in the released survival table (an estimate from few stops reveals them); counts rounded."""
    clinics = survival.filter(pl.col("group_type") == "clinic")
    hidden = clinics.filter(pl.col("n_new_users").is_null() | pl.col("n_stopped").is_null())["group"].to_list()
    hide = pl.col("term").is_in([f"clinic={c}" for c in hidden])
    estimates = ["log_hr", "se", "hr", "hr_lower", "hr_upper", "p_value"]
    out = table.with_columns([pl.when(hide).then(None).otherwise(pl.col(c)).alias(c) for c in estimates])
    out = out.with_columns(pl.when(hide).then(pl.lit("hidden: too few patients or stops")).otherwise(pl.col("status")).alias("status"))
    return out.with_columns([pl.col(c).map_elements(policy.round_count, return_dtype=pl.Int64) for c in ("n_events", "n_at_risk")])


def clinic_table(users: pl.DataFrame, per_clinic: pl.DataFrame, funnel: pl.DataFrame, summaries: dict,
                 released_survival: dict, policy: DisclosurePolicy) -> tuple[pl.DataFrame, pl.DataFrame | None]:  # fmt: skip
    """One row per shown clinic group and an `all clinics` row: new users, stops by reason, persistence,
    the funnel's O/E with its limits and flag; released (clinics.release_clinic_table) with the countries'
    new users and stops (country, n_new_users, n_stopped) in the same structure."""
    by_reason = (
        users.filter(pl.col("stopped") == 1).group_by("clinic_group", "stop_reason").len()
        .pivot(on="stop_reason", index="clinic_group", values="len")
    )  # fmt: skip
    rows = per_clinic.select(pl.col("clinic_group").alias("clinic_id"), pl.col("n").cast(pl.Int64).alias("n_new_users"),
                             pl.col("o").cast(pl.Int64).alias("n_stopped"),
                             pl.col("o_h").cast(pl.Int64).alias("n_stopped_within_horizon"),
                             pl.col("e").alias("expected_stops_all"))  # fmt: skip
    rows = rows.join(by_reason.rename({"clinic_group": "clinic_id"}), on="clinic_id", how="left")
    reason_columns = [f"n_stopped_{r}" for r in STOP_REASONS]
    rows = rows.rename({r: f"n_stopped_{r}" for r in STOP_REASONS if r in rows.columns})
    rows = rows.with_columns([pl.col(c).fill_null(0).cast(pl.Int64) if c in rows.columns else pl.lit(0, pl.Int64).alias(c)
                              for c in reason_columns])  # fmt: skip
    rows = rows.select([c for c in rows.columns if c not in reason_columns] + reason_columns)  # the pivot's order varies
    total = rows.select(pl.lit(ALL_CLINICS).alias("clinic_id"), pl.exclude("clinic_id").sum())
    rows = pl.concat([rows, total])
    horizon_key = max(next(iter(summaries.values())).persistence)
    # the released curve's value (steps of >= min_cell stops), never the exact one beside it
    persistence = [(c, released_survival[("clinic" if c != ALL_CLINICS else "overall", c)][f"persistence_{horizon_key}m"])
                   for c in rows["clinic_id"].to_list()]  # fmt: skip
    rows = rows.join(pl.DataFrame(persistence, schema={"clinic_id": pl.String, f"persistence_{horizon_key}m": pl.Float64}, orient="row"), on="clinic_id")
    rows = rows.join(funnel.drop("observed_stops"), on="clinic_id", how="left")
    counts = ["n_new_users", "n_stopped", "n_stopped_within_horizon", *reason_columns]
    estimates = ["ratio", "z", f"persistence_{horizon_key}m", "expected_stops"]
    # O/E, z and the persistence at the horizon are functions of the stops within the horizon (O = ratio x E)
    # E over the whole follow-up goes with the stops over it (the between-clinic variance uses both)
    derived = {c: ["n_stopped_within_horizon"] for c in estimates} | {"expected_stops_all": ["n_stopped"]}
    by_country = users.group_by(pl.col("clinic_group").alias("clinic_id"), "country").agg(
        pl.len().cast(pl.Int64).alias("n_new_users"), pl.col("stopped").sum().cast(pl.Int64).alias("n_stopped"))  # fmt: skip
    released, countries = release_clinic_table(rows, counts, policy, derived, by_country)
    released = released.with_columns(pl.when(pl.col("ratio").is_null()).then(None).otherwise(pl.col("funnel")).alias("funnel"))
    return released, countries


def agreement_table(users: pl.DataFrame, horizon_days: float, within_days: int, policy: DisclosurePolicy) -> pl.DataFrame:
    """The agreement of the registry and dispensing definitions (item, value), counts released; when any cell of
    the 2x2 table is hidden the kappa and the shares are hidden too (they would reveal it)."""
    if "n_dispensings" not in users.columns:
        return pl.DataFrame({"item": ["dispensing definition"], "value": ["not assessed: no prescription parts given"]})
    rows = agreement_rows(users, horizon_days=horizon_days, within_days=within_days)
    counts = pl.DataFrame([(k, v) for k, v in rows if k.startswith("n_")], schema={"item": pl.String, "n": pl.Int64}, orient="row")
    # the four cells add up to the total: one small cell is never the total minus the others
    cells = Partition(by=("t",), part_column="item", total_value="n_new_users_with_dispensings")
    released = release_counts(counts.with_columns(pl.lit("a").alias("t")), ["n"], policy, partitions=[cells]).drop("t")
    hidden = released["n"].null_count() > 0
    values = [(k, "<" + str(policy.min_cell) if v is None else str(v)) for k, v in released.iter_rows()]
    values += [(k, "hidden" if hidden or v is None else f"{v:.6g}") for k, v in rows if not k.startswith("n_")]
    return pl.DataFrame(values, schema={"item": pl.String, "value": pl.String}, orient="row")
