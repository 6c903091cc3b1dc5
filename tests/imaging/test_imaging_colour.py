"""The colour chain: YBR_FULL → RGB by hand-computed values, per-channel resize and normalize."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.pixels import convert_color_space

from vigil.core.errors import DataError
from vigil.data.medmnist import load_medmnist
from vigil.imaging import (
    ColourSpace,
    colour_model_input,
    colour_training_inputs,
    stored_colour_input,
    training_inputs,
    ybr_full_to_rgb,
)


def test_ybr_full_to_rgb_hand_computed():
    # R = Y + 1.402 (Cr-128); G = Y - 0.344136 (Cb-128) - 0.714136 (Cr-128); B = Y + 1.772 (Cb-128)
    ybr = np.array([[[100, 128, 200], [50, 200, 60], [128, 128, 128], [255, 0, 255]]])
    expected = [[[200.944, 48.582, 100.0],  # 100 + 1.402·72; 100 - 0.714136·72; 100
                 [0.0, 73.783, 177.584],  # 50 - 1.402·68 → 0; 50 - 24.778 + 48.561; 50 + 127.584
                 [128.0, 128.0, 128.0],  # neutral grey stays grey
                 [255.0, 208.354, 28.184]]]  # R clipped; 255 + 44.049 - 90.695; 255 - 226.816
    assert ybr_full_to_rgb(ybr).round(3).tolist() == expected


def test_ybr_conversion_agrees_with_pydicom():
    rng = np.random.default_rng(0)
    ybr = rng.integers(0, 256, size=(40, 40, 3)).astype(np.uint8)
    theirs = convert_color_space(ybr, "YBR_FULL", "RGB").astype(np.float64)  # rounded to uint8
    assert np.abs(ybr_full_to_rgb(ybr) - theirs).max() <= 0.5 + 1e-9
    rgb = rng.integers(0, 256, size=(40, 40, 3)).astype(np.uint8)
    back = ybr_full_to_rgb(convert_color_space(rgb, "RGB", "YBR_FULL"))
    assert np.abs(back - rgb).max() <= 1.5  # YCbCr storage rounds each sample once


def test_colour_input_is_the_greyscale_chain_per_channel():
    images = load_medmnist("retina-sample", "test").images[:20]
    colour = colour_training_inputs(images)
    assert colour.shape == (20, 3, 28, 28) and colour.dtype == np.float32
    for c in range(3):  # the same numbers as the greyscale training path, bit for bit
        assert np.array_equal(colour[:, c], training_inputs(np.ascontiguousarray(images[..., c])))
    assert np.array_equal(colour[0], stored_colour_input(images[0], ColourSpace.RGB))


def test_colour_resize_and_normalize_by_hand():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = [[0, 255], [255, 255]]  # R mean 191.25
    rgb[..., 2] = 51  # B 0.2
    out = colour_model_input(rgb, size=1)
    assert out.shape == (3, 1, 1)
    assert out[:, 0, 0].tolist() == pytest.approx([(0.75 - 0.5) / 0.5, -1.0, (0.2 - 0.5) / 0.5])


def test_ybr_image_gives_the_rgb_input():
    rgb = load_medmnist("retina-sample", "train").images[3]
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    for space in (ColourSpace.YBR_FULL, ColourSpace.YBR_FULL_422):
        got = stored_colour_input(ybr, space)
        assert np.abs(got - colour_model_input(rgb)).max() <= 2 * 1.5 / 255


@pytest.mark.parametrize(("call", "message"), [
    (lambda: ybr_full_to_rgb(np.zeros((4, 4))), "expected YCbCr samples of shape"),
    (lambda: colour_model_input(np.zeros((4, 4, 4))), "expected an RGB image of shape"),
    (lambda: colour_model_input(np.full((4, 4, 3), 300.0)), "expected RGB values in [0, 255]"),
    (lambda: colour_training_inputs(np.zeros((2, 4, 4), np.uint8)), "expected 8-bit RGB images"),
])
def test_bad_colour_input_is_refused(call, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()
