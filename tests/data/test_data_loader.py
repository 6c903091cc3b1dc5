import numpy as np
import pandas as pd
import pytest

from vigil.core.errors import ConfigError, DataError
from vigil.data import (
    SAMPLE_PATH,
    load_physionet,
    parse_scheme,
    partition,
    patient_split,
    site_summary,
)
from vigil.data.sample import make_sample
from vigil.data.splits import patient_uniform


def test_bundled_sample_is_small_balanced_and_attributed(sample):
    assert SAMPLE_PATH.stat().st_size < 3_000_000
    assert (SAMPLE_PATH.parent / "README.md").read_text().count("CC BY 4.0") >= 1
    hospitals = pd.Series(sample.patient_hospital).value_counts().to_dict()
    assert hospitals == {"A": 1500, "B": 1500}
    assert sample.grid.n_rows == 117_575
    assert 0.05 < sample.patient_septic().mean() < 0.10


def test_sample_is_reproducible_from_the_full_data(sample, shared_parquet, tmp_path):
    full = pd.read_parquet(shared_parquet)
    again = make_sample(full, tmp_path / "s.parquet")
    pd.testing.assert_frame_equal(again, sample.frame, check_dtype=False)


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match="expected a PhysioNet parquet file at .*nothing"):
        load_physionet(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"patient_id": ["p1"], "ICULOS": [1]}).to_parquet(bad)
    with pytest.raises(DataError, match="missing columns: hospital, HR"):
        load_physionet(bad)
    notparquet = tmp_path / "x.parquet"
    notparquet.write_text("hello")
    with pytest.raises(DataError, match="expected a parquet file"):
        load_physionet(notparquet)


def test_split_is_deterministic_disjoint_and_per_patient(sample):
    ids = sample.grid.patient_ids
    masks = {s: patient_split(ids, s) for s in ("train", "valid", "test")}
    total = masks["train"].astype(int) + masks["valid"] + masks["test"]
    assert (total == 1).all()
    assert abs(masks["test"].mean() - 0.2) < 0.03 and abs(masks["valid"].mean() - 0.1) < 0.03
    # a patient's split does not depend on the other patients
    assert patient_split(ids[:10], "test").tolist() == masks["test"][:10].tolist()
    assert patient_uniform(["p000001"]).tolist() == patient_uniform(["p000001"]).tolist()


@pytest.mark.parametrize("scheme", ["hospital", "hospital-unit", "random:5", "dirichlet:4:0.5"])
def test_partitions_cover_every_patient_once(sample, scheme):
    sites = partition(sample, scheme, seed=1)
    allp = np.concatenate(list(sites.values()))
    assert np.array_equal(np.sort(allp), np.arange(sample.grid.n_patients))
    assert partition(sample, scheme, seed=1).keys() == sites.keys()


def test_hospital_unit_sites(sample):
    sites = partition(sample, "hospital-unit")
    assert list(sites) == ["A-MICU", "A-SICU", "B-MICU", "B-SICU"]
    hosp = sample.patient_hospital
    assert set(hosp[sites["A-SICU"]]) == {"A"} and set(hosp[sites["B-MICU"]]) == {"B"}
    summary = site_summary(sample, sites)
    assert summary["patients"].sum() == 3000 and summary["rows"].sum() == sample.grid.n_rows


def test_dirichlet_small_alpha_skews_labels(sample):
    skewed = site_summary(sample, partition(sample, "dirichlet:4:0.1", seed=3))["prevalence"]
    even = site_summary(sample, partition(sample, "random:4"))["prevalence"]
    assert skewed.std() > 3 * even.std()


@pytest.mark.parametrize(
    "bad", ["hospitals", "random", "random:x", "dirichlet:3", "dirichlet:3:0", "random:0"]
)
def test_bad_scheme_names_the_forms(bad):
    with pytest.raises(ConfigError, match="hospital, hospital-unit, random:N or dirichlet:N:ALPHA"):
        parse_scheme(bad)
