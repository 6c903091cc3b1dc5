import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.data import MEDMNIST_SAMPLE_PATH, load_medmnist
from vigil.data.medmnist import make_medmnist_sample


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
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, test_images=np.zeros((2, 28, 28, 3), np.uint8), test_labels=np.zeros((2, 1)))
    with pytest.raises(DataError, match="greyscale uint8 images"):
        load_medmnist(rgb, "test")
    short = tmp_path / "short.npz"
    np.savez(short, test_images=np.zeros((2, 28, 28), np.uint8), test_labels=np.zeros(3))
    with pytest.raises(DataError, match="one label per image, got 3 labels for 2 images"):
        load_medmnist(short, "test")
