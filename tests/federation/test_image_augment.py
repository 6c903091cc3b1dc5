"""Training augmentation: random whole-pixel shifts, checked against numpy.pad slices."""

import numpy as np
import pytest

from vigil.federation.augment import random_shifts


def test_each_image_is_its_edge_padded_copy_shifted_by_its_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 7, 9)).astype(np.float32)
    out = random_shifts(x, np.random.default_rng(1), 2)
    offsets = np.random.default_rng(1).integers(-2, 3, size=(50, 2))  # the same draws
    m = 2
    for i, (dy, dx) in enumerate(offsets):
        padded = np.pad(x[i], m, mode="edge")
        want = padded[m - dy: m - dy + 7, m - dx: m - dx + 9]
        np.testing.assert_array_equal(out[i], want)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert len({tuple(o) for o in offsets}) > 10  # the offsets vary between images


def test_zero_shift_is_a_copy_and_bad_arguments_are_refused():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    same = random_shifts(x, np.random.default_rng(0), 0)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    for bad, shift in ((x[0], 1), (x, -1), (x, 4)):
        with pytest.raises(ValueError, match="expected images"):
            random_shifts(bad, np.random.default_rng(0), shift)
