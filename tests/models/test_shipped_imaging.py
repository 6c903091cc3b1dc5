"""The shipped default imaging package in ``models/imaging-federated``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vigil.core.package import read_package
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH
from vigil.features.bootstrap import weighted_auroc
from vigil.runtime.images import ImageScorer, load_images

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "imaging-federated"


def test_imaging_package_is_signed_fedavg_over_four_sites_without_rejections():
    pkg = read_package(PACKAGE, public_key=PACKAGE / "public_key.pem")
    m = pkg.manifest
    assert pkg.signed and m.task == "imaging"
    assert (m.name, m.version) == ("imaging-federated", "1.1.0")
    training = m.training
    assert training["strategy"]["name"] == "fedavg"
    assert sorted(training["sites"]) == ["site-a", "site-b", "site-c", "site-d"]
    # the label-skewed site-a is no longer taken for an attacker (docs/imaging.md)
    assert training["rejections"] == 0 and training["rounds_aggregated"] == training["rounds"]
    assert m.model_dump()["export"]["parity_max_abs_diff"] <= 1e-5
    assert 0.0 < m.threshold < 1.0 and set(m.model_extra["site_thresholds"]) == set(
        training["sites"])


def test_imaging_package_ranks_the_sample_test_images():
    """The bundled sample's 200 test images come from the official test split (never trained on)."""
    batch = load_images(MEDMNIST_SAMPLE_PATH, size=28)
    p = ImageScorer(read_package(PACKAGE)).predict_images(batch.inputs)
    assert p.shape == (200,) and np.all((p >= 0) & (p <= 1))
    assert weighted_auroc(batch.labels.astype(np.int8), p, np.ones(p.size)) > 0.9
