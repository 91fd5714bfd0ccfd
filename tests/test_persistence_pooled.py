"""The persistence study pooled across two country sites from their site packages equals the pooled-data
analysis where the model allows it (funnel and between-clinic variance with the case mix fitted within each
country), and no small count travels in a package."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl
import pytest
from persistence_synthetic import DRUG, generate, study_config
from test_federation import make_package, protocol_file  # noqa: F401 (a fixture)

from repurpose.federation.package import PackageError, pool_packages, read_site_package
from repurpose.persistence.clinics import between_clinic_variance
from repurpose.persistence.newusers import new_users
from repurpose.persistence.pooled import POOLED, SITE_TABLES, pool_clinics, pool_survival
from repurpose.persistence.study import analyse, case_mix_expected
from repurpose.persistence.survival import kaplan_meier, months_of
from repurpose.release.policy import DisclosurePolicy

EXACT = DisclosurePolicy(min_cell=5, rounding_base=1)


@pytest.fixture(scope="module")
def two_countries():
    """New users at 40 clinics of two countries (DK: every third clinic), two planted outliers."""
    synthetic = generate(n_clinics=40, size_range=(80, 300), tau=0.15, outliers={0: 1.0, 7: -1.0}, seed=4)
    users = new_users(synthetic.ms_treatments, synthetic.ms_registry, synthetic.population, synthetic.ms_relapses,
                      synthetic.ms_edss, [DRUG], date(2023, 12, 31))  # fmt: skip
    assert sorted(users["country"].unique().to_list()) == ["DK", "NO"]
    return users


def site_tables(users: pl.DataFrame, settings: dict, policy: DisclosurePolicy, folder) -> dict[str, dict[str, pl.DataFrame]]:
    """Each country's released tables as its site writes them (csv, 6 decimals) and the centre reads them."""
    sites = {}
    for country in ("DK", "NO"):
        tables = analyse(users.filter(pl.col("country") == country), settings, policy)
        sites[country] = {}
        for name in SITE_TABLES:
            path = folder / f"{country}_{name}.csv"
            tables[name].write_csv(path, float_precision=6)
            sites[country][name] = pl.read_csv(path, infer_schema_length=None)
    return sites


def exact_variances(users: pl.DataFrame, settings: dict, shown: pl.DataFrame) -> list[dict]:
    """The between-clinic variance of the pooled data (exact stops and expected stops over the whole follow-up)
    over the clinics in `shown`, and over those of them the funnel does not call outliers."""
    months, stopped = months_of(users["time_days"]), users["stopped"].to_numpy()
    _, expected_all = case_mix_expected(users, settings, months, stopped, np.inf)
    exact = (users.select("clinic_id", pl.Series("o", stopped), pl.Series("e", expected_all))
             .group_by("clinic_id").sum().join(shown.select("clinic_id", "funnel"), on="clinic_id").sort("clinic_id"))  # fmt: skip
    return [between_clinic_variance(c["o"].to_numpy(), c["e"].to_numpy())
            for c in (exact, exact.filter(pl.col("funnel") != "outlier"))]  # fmt: skip


def test_pooled_funnel_and_variance_equal_the_pooled_data_analysis(two_countries, tmp_path):
    settings = study_config(case_mix_by_country=True)["persistence"]
    pooled_data = analyse(two_countries, settings, EXACT)
    funnel, variance = pool_clinics(site_tables(two_countries, settings, EXACT, tmp_path))
    exact = pooled_data["funnel_exact"].sort("clinic_id")
    assert funnel.height == exact.height == 40  # every clinic shown at its site
    federated = funnel.sort("clinic_id")
    assert federated["clinic_id"].to_list() == exact["clinic_id"].to_list()
    assert federated["observed_stops_within_horizon"].to_list() == exact["observed_stops"].to_list()
    for column in ("ratio", "z", "lower_95", "upper_95", "lower_998", "upper_998"):
        np.testing.assert_allclose(federated[column].to_numpy(), exact[column].to_numpy(), rtol=1e-5, err_msg=column)
    assert federated["funnel"].to_list() == exact["funnel"].to_list()
    np.testing.assert_allclose(variance["funnel_tau2"].to_numpy(), pooled_data["variance"]["funnel_tau2"].to_numpy(), rtol=1e-5)
    # The variance needs each clinic's stops over the whole follow-up: a site hides them where they reveal a
    # small complement (a clinic where all but 1-4 patients stopped), so the centre's tau^2 is the pooled-data
    # one over the clinics whose counts their sites show.
    shown = federated.filter(pl.col("observed_stops_all").is_not_null())
    assert 36 <= shown.height < 40
    for row, by_pooled_data in enumerate(exact_variances(two_countries, settings, shown)):
        for column in ("tau2", "tau2_lower", "tau2_upper", "q"):
            assert variance[column][row] == pytest.approx(by_pooled_data[column], rel=1e-5, abs=1e-9), column
    # the one-model analysis of the pooled data differs: the option is what makes the federation exact
    one_model = analyse(two_countries, study_config()["persistence"], EXACT)["funnel_exact"].sort("clinic_id")
    assert np.max(np.abs(one_model["ratio"].to_numpy() - exact["ratio"].to_numpy())) > 1e-3


def test_rounded_sites_give_the_funnel_exactly_and_the_variance_near(two_countries, tmp_path):
    """With the default rounding the funnel's O is still exact (ratio x E, both released); the variance uses
    the rounded stops over the whole follow-up."""
    settings = study_config(case_mix_by_country=True)["persistence"]
    rounded = DisclosurePolicy(min_cell=5, rounding_base=5)
    pooled_data = analyse(two_countries, settings, rounded)  # its funnel_exact: before release
    funnel, variance = pool_clinics(site_tables(two_countries, settings, rounded, tmp_path))
    exact = pooled_data["funnel_exact"].filter(pl.col("clinic_id").is_in(funnel["clinic_id"].implode())).sort("clinic_id")
    assert funnel.height >= 38
    np.testing.assert_allclose(funnel.sort("clinic_id")["observed_stops_within_horizon"].to_numpy(),
                               exact["observed_stops"].to_numpy())  # fmt: skip
    shown = funnel.filter(pl.col("observed_stops_all").is_not_null())
    for row, by_pooled_data in enumerate(exact_variances(two_countries, settings, shown)):
        assert abs(variance["tau2"][row] - by_pooled_data["tau2"]) < 0.002
        assert variance["tau2"][row] != by_pooled_data["tau2"]  # the rounding shows (else the test reads exact counts)


def test_pooled_persistence_is_the_new_user_weighted_mixture_near_the_pooled_kaplan_meier(two_countries, tmp_path):
    settings = study_config()["persistence"]
    sites = site_tables(two_countries, settings, EXACT, tmp_path)
    survival = pool_survival(sites)
    rows = {r["site"]: r for r in survival.iter_rows(named=True)}
    n = {s: rows[s]["n_new_users"] for s in ("DK", "NO")}
    for h in (12, 24):
        by_hand = sum(n[s] * rows[s][f"persistence_{h}m"] for s in n) / sum(n.values())
        assert rows[POOLED][f"persistence_{h}m"] == pytest.approx(by_hand, rel=1e-12)
        assert rows[POOLED][f"persistence_{h}m_lower"] < by_hand < rows[POOLED][f"persistence_{h}m_upper"]
    summary, _ = kaplan_meier("all", months_of(two_countries["time_days"]), two_countries["stopped"].to_numpy(), [12, 24])
    for h in (12, 24):  # equal censoring at both sites: the mixture is near the KM of the pooled data
        assert abs(rows[POOLED][f"persistence_{h}m"] - summary.persistence[h][0]) < 0.01


def test_site_packages_carry_the_released_tables_and_the_centre_pools_them(two_countries, tmp_path, protocol_file):  # noqa: F811
    settings = study_config(case_mix_by_country=True)["persistence"]
    policy = DisclosurePolicy(min_cell=5, rounding_base=5)
    sites = site_tables(two_countries, settings, policy, tmp_path)
    packages = []
    for country in sites:
        paths = {name: str(tmp_path / f"{country}_{name}.csv") for name in SITE_TABLES}
        packages.append(make_package(tmp_path, protocol_file, country, {"N02BE01": (-0.2, 0.1)}, studies={"persistence": paths}))
    assert read_site_package(packages[0]).studies["persistence"]["clinics"].height == sites["DK"]["clinics"].height
    summary = pool_packages(packages, tmp_path / "pooled", start_distributed=False)
    clinics = pl.read_csv(summary["persistence"]["clinics"])
    assert clinics.height == pool_clinics(sites)[0].height and set(clinics["site"].to_list()) == {"DK", "NO"}

    # an altered table (a small count put back) is refused at the centre, and at the site before it leaves
    tampered = pl.read_csv(packages[1] / "persistence_clinics.csv").with_columns(pl.lit(3).alias("n_stopped_other"))
    tampered.write_csv(tmp_path / "tampered.csv")
    with pytest.raises(PackageError, match="small counts"):
        make_package(tmp_path, protocol_file, "XX", {"N02BE01": (-0.2, 0.1)},
                     studies={"persistence": {**{n: str(tmp_path / f"NO_{n}.csv") for n in SITE_TABLES}, "clinics": str(tmp_path / "tampered.csv")}})  # fmt: skip
    tampered.write_csv(packages[1] / "persistence_clinics.csv")
    with pytest.raises(PackageError, match="differs from its manifest"):
        read_site_package(packages[1])
    with pytest.raises(PackageError, match="all together"):
        make_package(tmp_path, protocol_file, "YY", {"N02BE01": (-0.2, 0.1)}, studies={"persistence": {"clinics": str(tmp_path / "NO_clinics.csv")}})
