"""The shipped default package in ``models/``: signed by the release key, on today's schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vigil.core.package import read_package
from vigil.data import load_physionet, patient_split
from vigil.features import FEATURE_SCHEMA, build_features
from vigil.runtime.scoring import Scorer

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_default_package_verifies_with_the_release_key_on_the_current_schema():
    pkg = read_package(MODELS / "sepsis-federated", public_key=MODELS / "vigil-release.pub",
                       expected_schema_sha256=FEATURE_SCHEMA.sha256)
    m = pkg.manifest
    assert pkg.signed
    assert (m.name, m.version) == ("sepsis-federated", "1.2.0")
    training = m.training
    assert training["strategy"]["name"] == "fedprox" and training["site_scheme"] == "hospital-unit"
    assert sorted(training["sites"]) == ["A-MICU", "A-SICU", "B-MICU", "B-SICU"]
    assert 0.0 < m.threshold < 1.0
    # the network and 100 trees grown across the four sites, no site left out
    boosting = training["boosting"]
    assert boosting["n_trees"] == 100 and boosting["exclusions"] == []
    assert boosting["sites"] == ["A-MICU", "A-SICU", "B-MICU", "B-SICU"]
    assert m.model_dump()["architecture"]["type"] == "SepsisNet+trees"
    assert m.model_dump()["export"]["parity_max_abs_diff"] <= 1e-5


def test_default_package_ranks_the_sample_test_patients():
    """Sample test patients were never used by the shipped model (same hash split)."""
    table = load_physionet("sample")
    test = table.select(np.flatnonzero(patient_split(table.grid.patient_ids, "test")))
    pkg = read_package(MODELS / "sepsis-federated")
    p = Scorer(pkg).predict_proba(build_features(test.grid))
    septic_rows = p[test.labels == 1]
    assert p.shape == (test.grid.n_rows,) and np.all((p >= 0) & (p <= 1))
    assert septic_rows.mean() > 2 * p[test.labels == 0].mean()
    # Platt-scaled on the sites' validation rows: about the positive rate on average
    assert 0.5 * test.labels.mean() < p.mean() < 2 * test.labels.mean()
