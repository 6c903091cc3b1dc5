"""The pixel chain against pydicom's independent implementation, hand values and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence

from vigil.core.errors import DataError
from vigil.imaging import (
    DisplayParameters,
    LookupTable,
    Photometric,
    PresentationShape,
    VOIFunction,
    Window,
    apply_modality,
    apply_presentation,
    apply_voi,
    chain,
    normalize,
    resize,
    to_model_input,
    training_inputs,
)

M1, M2 = Photometric.MONOCHROME1, Photometric.MONOCHROME2
RNG = np.random.default_rng(15)
STORED12 = RNG.integers(0, 4096, size=(40, 30))


def params(**kw):
    base = dict(bits_stored=12, signed=False, photometric=M2, window=Window(2048.0, 4096.0))
    return DisplayParameters(**{**base, **kw})


def pydicom_voi(arr, *, center, width, function):
    """pydicom's windowing, output mapped from its range (that of the bits stored) to [0, 1]."""
    ds = Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    return apply_voi_lut(arr.astype(np.float64), ds) / 4095.0


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(2048.0, 4096.0), (1500.5, 801.0), (300.0, 2.0)])
def test_voi_window_equals_pydicom(function, center, width):
    window = Window(center, width, VOIFunction(function))
    ours = apply_voi(STORED12.astype(np.float64), params(window=window))
    ref = pydicom_voi(STORED12, center=center, width=width, function=function)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert ours.min() >= 0.0 and ours.max() <= 1.0


def test_voi_window_hand_values():
    # PS3.3 C.11.2.1.2.1 (LINEAR) and C.11.2.1.3.2 (LINEAR_EXACT), worked by hand.
    x = np.array([49.5, 50.0, 100.0, 150.0, 150.5])
    linear = apply_voi(x, params(window=Window(100.5, 101.0, VOIFunction.LINEAR)))
    np.testing.assert_allclose(linear, [0.0, 0.0, 0.5, 1.0, 1.0])
    exact = apply_voi(x, params(window=Window(100.0, 100.0, VOIFunction.LINEAR_EXACT)))
    np.testing.assert_allclose(exact, [0.0, 0.0, 0.5, 1.0, 1.0])
    sigmoid = apply_voi(np.array([100.0, 125.0]), params(window=Window(100.0, 100.0, "SIGMOID")))
    np.testing.assert_allclose(sigmoid, [0.5, 1 / (1 + np.exp(-1.0))])


def test_voi_lut_equals_pydicom_and_clamps():
    entries = RNG.integers(0, 65536, size=1000)
    lut = LookupTable(first_mapped=1000, bits=16, data=entries)
    x = np.array([[0, 999, 1000, 1500, 1999, 2000, 4095]])
    ours = apply_voi(x.astype(np.float64), params(voi_lut=lut))
    ds = Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [1000, 1000, 16], entries.tolist()
    ds.VOILUTSequence = Sequence([item])
    np.testing.assert_allclose(ours, apply_voi_lut(x, ds) / 65535.0, atol=1e-12)
    assert ours[0, 0] == ours[0, 2] == entries[0] / 65535 and ours[0, -1] == entries[-1] / 65535


def test_voi_lut_wins_over_window():
    lut = LookupTable(first_mapped=0, bits=8, data=np.arange(256)[::-1])
    out = apply_voi(np.array([0.0, 255.0]), params(window=Window(0.0, 2.0), voi_lut=lut))
    np.testing.assert_allclose(out, [1.0, 0.0])


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, 0.0), (0.5, -1024.0), (-10.0, 3000.0)])
def test_rescale_equals_pydicom(slope, intercept):
    ds = Dataset()
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ours = apply_modality(STORED12, params(slope=slope, intercept=intercept))
    np.testing.assert_allclose(ours, apply_modality_lut(STORED12, ds), atol=1e-9)


def test_modality_lut_equals_pydicom():
    entries = RNG.integers(0, 4096, size=4096)
    ds = Dataset()
    item = Dataset()
    item.LUTDescriptor, item.LUTData, item.ModalityLUTType = [4096, 0, 16], entries.tolist(), "US"
    ds.ModalityLUTSequence = Sequence([item])
    ds.PixelRepresentation = 0
    lut = LookupTable(first_mapped=0, bits=12, data=entries)
    ours = apply_modality(STORED12, params(modality_lut=lut))
    np.testing.assert_array_equal(ours, apply_modality_lut(STORED12, ds))


def test_presentation_inverts_fixed_not_per_image():
    voi = np.array([[0.2, 0.5, 0.7]])  # max < 1: pydicom's INVERSE (max - arr) would differ
    np.testing.assert_allclose(apply_presentation(voi, params(photometric=M1)), 1 - voi)
    shape = PresentationShape.INVERSE
    inverse = params(presentation_shape=shape)
    np.testing.assert_allclose(apply_presentation(voi, inverse), 1 - voi)
    np.testing.assert_allclose(apply_presentation(voi, params(photometric=M1, presentation_shape=shape)), 1 - voi)  # noqa: E501
    np.testing.assert_array_equal(apply_presentation(voi, params()), voi)


def test_resize_properties_and_integer_factor_matches_pillow_box():
    a = RNG.random((28, 28))
    assert np.array_equal(resize(a), a)
    big = RNG.random((56, 84)).astype(np.float32)
    blocks = big.reshape(28, 2, 28, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(resize(big), blocks, atol=1e-6)
    box = np.asarray(Image.fromarray(big, mode="F").resize((28, 28), Image.BOX))
    np.testing.assert_allclose(resize(big), box, atol=1e-6)
    odd = RNG.random((101, 37))
    out = resize(odd)
    assert out.shape == (28, 28) and odd.min() <= out.min() and out.max() <= odd.max()
    np.testing.assert_allclose(out.mean(), odd.mean(), atol=1e-12)  # area weights keep the mean
    np.testing.assert_allclose(resize(np.full((90, 13), 0.3)), 0.3)


def test_training_inputs_are_the_degenerate_chain():
    images = RNG.integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    expected = ((images / 255.0 - 0.5) / 0.5).astype(np.float32)
    np.testing.assert_array_equal(training_inputs(images), expected)
    np.testing.assert_array_equal(
        to_model_input(images[0], DisplayParameters.eight_bit()), expected[0]
    )
    assert normalize(np.array([0.0, 1.0])).tolist() == [-1.0, 1.0]


def test_errors_say_what_was_expected():
    with pytest.raises(DataError, match="expected a VOI transform"):
        DisplayParameters(bits_stored=12, signed=False, photometric=M2)
    with pytest.raises(DataError, match="non-zero Rescale Slope"):
        params(slope=0.0)
    with pytest.raises(DataError, match="INVERSE .or none. for MONOCHROME1, got IDENTITY"):
        params(photometric=M1, presentation_shape=PresentationShape.IDENTITY)
    with pytest.raises(DataError, match="Window Width >= 1 for VOI LUT Function LINEAR, got 0.5"):
        Window(10.0, 0.5)
    with pytest.raises(DataError, match="Window Width > 0 for VOI LUT Function SIGMOID"):
        Window(10.0, 0.0, VOIFunction.SIGMOID)
    with pytest.raises(DataError, match=r"stored values in \[0, 4095\] .* got \[0, 4096\]"):
        apply_modality(np.array([[0, 4096]]), params())
    with pytest.raises(DataError, match="2-D integer array"):
        apply_modality(np.zeros((2, 2)), params())
    with pytest.raises(DataError, match="8-bit greyscale images"):
        training_inputs(np.zeros((2, 28, 28), dtype=np.uint16))
    with pytest.raises(DataError, match=r"LUT entries in \[0, 255\]"):
        LookupTable(first_mapped=0, bits=8, data=np.array([0, 256]))


def test_signed_stored_range():
    p = params(signed=True, bits_stored=12)
    assert p.stored_range == (-2048, 2047)
    np.testing.assert_allclose(apply_modality(np.array([[-2048, 2047]]), p), [[-2048.0, 2047.0]])


@settings(max_examples=60, deadline=None)
@given(
    center=st.floats(-5000, 5000),
    width=st.floats(1.0, 9000.0),
    function=st.sampled_from(list(VOIFunction)),
    photometric=st.sampled_from(list(Photometric)),
)
def test_chain_properties(center, width, function, photometric):
    # Bounded, monotone in the stored value (decreasing for MONOCHROME1), never image-dependent.
    p = params(bits_stored=16, signed=True, photometric=photometric, slope=0.5, intercept=-100.0,
               window=Window(center, width, function))  # fmt: skip
    ramp = np.arange(-32768, 32768, 97).reshape(1, -1)
    shown = apply_presentation(apply_voi(apply_modality(ramp, p), p), p)[0]
    assert shown.min() >= 0.0 and shown.max() <= 1.0
    steps = np.diff(shown)
    assert (steps <= 1e-12).all() if photometric is M1 else (steps >= -1e-12).all()
    half = apply_presentation(apply_voi(apply_modality(ramp[:, ::2], p), p), p)[0]
    np.testing.assert_array_equal(half, shown[::2])


def test_input_histogram_counts_every_value_in_its_bin() -> None:
    from vigil.imaging import INPUT_EDGES, N_BINS, input_histogram

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, size=(5, 28, 28))
    h = input_histogram(x)
    assert h.shape == (5, N_BINS) and (h.sum(axis=1) == 28 * 28).all()
    for i in range(5):  # independent reference: numpy's own histogram on the same edges
        assert h[i].tolist() == np.histogram(x[i], bins=INPUT_EDGES)[0].tolist()


def _direct(stored, p):
    return apply_presentation(apply_voi(apply_modality(stored, p), p), p)


@pytest.mark.parametrize("case", ["linear-m1", "exact", "sigmoid-signed", "voi-lut", "modality-lut",
                                  "8-bit"])
def test_display_values_tabulated_for_a_film_equal_the_direct_chain_bit_for_bit(case):
    from vigil.imaging import display_values

    rng = np.random.default_rng(16)
    lut12 = LookupTable(first_mapped=100, bits=16, data=rng.integers(0, 65536, size=3000))
    kw = {
        "linear-m1": dict(photometric=M1, slope=0.5, intercept=-1024.0,
                          window=Window(-300.5, 1500.0, VOIFunction.LINEAR)),
        "exact": dict(window=Window(2000.0, 1000.0, VOIFunction.LINEAR_EXACT),
                      presentation_shape=PresentationShape.INVERSE),
        "sigmoid-signed": dict(bits_stored=16, signed=True, slope=-2.0, intercept=70000.0,
                               window=Window(3000.0, 9000.0, VOIFunction.SIGMOID)),
        "voi-lut": dict(voi_lut=lut12),
        "modality-lut": dict(modality_lut=LookupTable(first_mapped=0, bits=12,
                                                      data=rng.integers(0, 4096, size=4096))),
        "8-bit": dict(bits_stored=8, window=Window(127.5, 256.0)),
    }[case]
    p = params(**kw)
    low, high = p.stored_range
    dtype = np.int16 if p.signed else (np.uint8 if p.bits_stored == 8 else np.uint16)
    film = rng.integers(low, high + 1, size=(600, 500)).astype(dtype)  # > 4 px per value
    film[0, :2] = low, high
    tabulated = display_values(film, p)
    assert tabulated.dtype == np.float64 and tabulated.shape == film.shape
    assert np.array_equal(tabulated, _direct(film, p))  # the same bits
    small = film[:20, :20]  # too few pixels: the direct chain itself
    assert np.array_equal(display_values(small, p), _direct(small, p))
    with pytest.raises(DataError, match="expected stored values in"):
        display_values(np.full((600, 500), 5000, dtype=np.uint16), params())


@pytest.mark.parametrize("shape", [(2520, 2520), (2048, 2500), (113, 3001), (3000, 112)])
def test_banded_resize_of_a_film_equals_the_full_product(shape):
    rng = np.random.default_rng(17)
    image = rng.random(shape)
    rows, cols = chain._box_weights(shape[0], 28), chain._box_weights(shape[1], 28)
    full = rows @ image @ cols.T
    out = resize(image)
    assert out.shape == (28, 28)
    np.testing.assert_allclose(out, full, rtol=0, atol=1e-12)
    block = np.kron(rng.random((28, 28)), np.ones((90, 90)))  # an integer factor: block means
    np.testing.assert_allclose(resize(block), block[::90, ::90], rtol=0, atol=1e-12)
