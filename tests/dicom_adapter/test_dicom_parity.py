"""Parity on the bundled sample: every DICOM variant passes, every negative control fails."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.parity import (
    NEGATIVE_CONTROLS,
    PARITY_VARIANTS,
    fit_stand_in_scorer,
    run_parity,
)
from vigil.imaging import MAX_PROBABILITY_DIFF, measure_parity, training_inputs


@pytest.fixture(scope="module")
def scorer():
    train = load_medmnist("sample", "train")
    return fit_stand_in_scorer(train.images, train.labels)


@pytest.fixture(scope="module")
def run(scorer):
    return run_parity(load_medmnist("sample", "test").images[:100], scorer, threshold=0.5)


def test_the_stand_in_scorer_is_a_real_model(scorer):
    test = load_medmnist("sample", "test")
    p = scorer(training_inputs(test.images))
    y = test.labels
    auc = (p[y == 1][:, None] > p[y == 0][None, :]).mean()  # Mann-Whitney AUC
    assert auc > 0.85 and 0.0 < p.min() and p.max() < 1.0


@pytest.mark.parametrize("variant", list(PARITY_VARIANTS))
def test_every_dicom_variant_passes(run, variant):
    report = run.variants[variant]
    assert report.n == 100
    assert report.max_abs_pixel <= 0.5 / 255  # below half a grey level of the 8-bit images
    assert report.max_abs_probability <= MAX_PROBABILITY_DIFF
    assert report.flips == 0 and report.passes


def test_the_8bit_variant_is_bit_exact(run):
    assert run.variants["8bit-mono2"].max_abs_pixel == 0.0
    assert run.variants["8bit-mono2"].max_abs_probability == 0.0


def test_lossless_syntaxes_change_nothing(run):
    base = run.variants["12bit-mono1"]
    for name in ("12bit-mono1-rle", "12bit-mono1-jpeg-ls"):
        assert run.variants[name] == base
    assert run.variants["16bit-voi-lut-jpeg-ls"] == run.variants["16bit-voi-lut"]


@pytest.mark.parametrize("control", list(NEGATIVE_CONTROLS))
def test_every_negative_control_fails_the_same_check(run, control):
    report = run.controls[control]
    assert not report.passes
    assert report.max_abs_probability > 100 * MAX_PROBABILITY_DIFF and report.flips > 0
    assert run.holds


def test_measure_parity_contract():
    x = np.zeros((3, 28, 28), dtype=np.float32)

    def scorer(inputs):
        return np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1).mean(axis=1) + 0.5

    same = measure_parity(x, x, scorer, threshold=0.5)
    assert (same.max_abs_pixel, same.max_abs_probability, same.flips) == (0, 0, 0)
    assert same.passes
    y = x.copy()
    y[1] -= 0.002  # 0.001 of display, under the threshold for image 1 only
    moved = measure_parity(x, y, scorer, threshold=0.5)
    assert moved.flips == 1 and not moved.passes
    np.testing.assert_allclose(moved.max_abs_pixel, 0.001, rtol=1e-4)
    with pytest.raises(DataError, match="same shape"):
        measure_parity(x, x[:2], scorer, threshold=0.5)


@pytest.mark.slow
@pytest.mark.shared
def test_parity_holds_on_the_full_test_split(shared_pneumoniamnist):
    # What bench/imaging_parity.py reports: 624 test images, stand-in fitted on 4,708.
    npz = shared_pneumoniamnist
    train, test = load_medmnist(npz, "train"), load_medmnist(npz, "test")
    full = run_parity(test.images, fit_stand_in_scorer(train.images, train.labels), threshold=0.5)
    assert full.holds
    assert max(r.max_abs_probability for r in full.variants.values()) < MAX_PROBABILITY_DIFF
    assert min(r.flips for r in full.controls.values()) > 10
