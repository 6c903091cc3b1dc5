from pathlib import Path

import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.data import MEDMNIST_SAMPLE_PATH, load_medmnist
from vigil.data.medmnist import RETINA_SAMPLE_PATH, make_medmnist_sample

SHARED_RETINA = Path(__file__).resolve().parents[3] / "shared/data/medmnist/retinamnist.npz"


def test_bundled_sample_is_small_and_attributed():
    assert MEDMNIST_SAMPLE_PATH.stat().st_size < 500_000
    readme = (MEDMNIST_SAMPLE_PATH.parent / "README.md").read_text()
    assert "pneumoniamnist_sample.npz" in readme and readme.count("CC BY 4.0") >= 2
    train, test = load_medmnist("sample", "train"), load_medmnist("sample", "test")
    assert train.images.shape == (400, 28, 28) and test.images.shape == (200, 28, 28)
    assert train.images.dtype == np.uint8 and set(np.unique(test.labels)) == {0, 1}
    assert repr(test) == f"MedMNISTSplit(n=200, positives={test.labels.sum()})"


@pytest.mark.shared
def test_sample_is_reproducible_from_the_shared_file(shared_pneumoniamnist, tmp_path):
    make_medmnist_sample(shared_pneumoniamnist, tmp_path / "s.npz")
    for split in ("train", "test"):
        again, bundled = load_medmnist(tmp_path / "s.npz", split), load_medmnist("sample", split)
        np.testing.assert_array_equal(again.images, bundled.images)
        np.testing.assert_array_equal(again.labels, bundled.labels)


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match="found nothing at"):
        load_medmnist(tmp_path / "none.npz", "test")
    rgba = tmp_path / "rgba.npz"
    np.savez(rgba, test_images=np.zeros((2, 28, 28, 4), np.uint8), test_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(n, rows, columns\)"):
        load_medmnist(rgba, "test")
    floats = tmp_path / "floats.npz"
    np.savez(floats, test_images=np.zeros((2, 28, 28, 3)), test_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match=r"\(RGB\), got float64"):
        load_medmnist(floats, "test")
    short = tmp_path / "short.npz"
    np.savez(short, test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros(3))
    with pytest.raises(DataError, match="one label per image, got 3 labels for 2 images"):
        load_medmnist(short, "test")


def test_bundled_retina_sample_is_colour_five_grades_and_attributed():
    assert RETINA_SAMPLE_PATH.stat().st_size < 800_000
    readme = (RETINA_SAMPLE_PATH.parent / "README.md").read_text()
    assert "retinamnist_sample.npz" in readme and "DeepDRiD" in readme
    train, test = load_medmnist("retina-sample", "train"), load_medmnist("retina-sample", "test")
    assert train.images.shape == (250, 28, 28, 3) and test.images.shape == (100, 28, 28, 3)
    assert train.channels == 3 and train.classes == 5
    assert set(np.unique(train.labels)) == set(range(5))
    assert load_medmnist("sample", "test").channels == 1


@pytest.mark.shared
def test_retina_sample_is_reproducible_from_the_shared_file(tmp_path):
    if not SHARED_RETINA.is_file():
        pytest.skip(f"needs the shared data at {SHARED_RETINA}")
    make_medmnist_sample(SHARED_RETINA, tmp_path / "r.npz", n_train=250, n_test=100)
    for split in ("train", "test"):
        again = load_medmnist(tmp_path / "r.npz", split)
        bundled = load_medmnist("retina-sample", split)
        np.testing.assert_array_equal(again.images, bundled.images)
        np.testing.assert_array_equal(again.labels, bundled.labels)
