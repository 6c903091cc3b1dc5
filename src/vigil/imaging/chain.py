"""The one pixel chain: stored values → model input, for training and for the runtime.

Order (PS3.4 N.2.1):

Steps 1-3 together are :func:`display_values` (one table lookup for a large image).

1. :func:`apply_modality` - Modality LUT or Rescale Slope/Intercept (PS3.3 C.11.1);
2. :func:`apply_voi` - VOI LUT or window (PS3.3 C.11.2), output in ``[0, 1]``;
3. :func:`apply_presentation` - MONOCHROME1 / Presentation LUT Shape INVERSE:
   ``1 - y`` on the VOI output (PS3.3 C.7.6.3.1.2: MONOCHROME1 is inverted
   *after* the VOI transformation; C.11.6.1.2). The inversion is fixed, never
   ``max(image) - image``, so it does not depend on the image;
4. :func:`resize` - area-weighted resampling to the model's size;
5. :func:`normalize` - ``(x - 0.5) / 0.5``, the MedMNIST convention.

:func:`to_model_input` runs all five on one image; :func:`training_inputs` runs
the same function on 8-bit training images with
:meth:`DisplayParameters.eight_bit`, so training and DICOM inputs are the same
function of the displayed image. numpy only; no torch, no DICOM library.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.imaging.display import DisplayParameters, VOIFunction

__all__ = [
    "MODEL_SIZE",
    "apply_modality",
    "apply_presentation",
    "apply_voi",
    "display_values",
    "normalize",
    "resize",
    "to_model_input",
    "training_inputs",
]

MODEL_SIZE = 28
"""Side of the square model input (MedMNIST 28×28)."""


_LUT_MIN_PIXELS_PER_ENTRY = 4
"""Pixels per possible stored value above which :func:`display_values` tabulates the chain."""
_BAND_MIN_FACTOR = 4
"""Input side / output side above which :func:`resize` sums each output cell's band only."""


def _checked_stored(stored: NDArray[np.integer], params: DisplayParameters) -> NDArray[np.integer]:
    arr = np.asarray(stored)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(
            f"expected a 2-D integer array of stored values, got {arr.ndim}-D {arr.dtype}"
        )
    low, high = params.stored_range
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < low or hi > high:
            raise DataError(
                f"expected stored values in [{low}, {high}] for {params.bits_stored} bits "
                f"stored, got [{lo}, {hi}]"
            )
    return arr


def display_values(stored: NDArray[np.integer], params: DisplayParameters) -> NDArray[np.float64]:
    """Run steps 1-3 of the chain: stored values → presentation values in ``[0, 1]``.

    ``apply_presentation(apply_voi(apply_modality(stored)))``. Each step maps every
    pixel on its own (PS3.3 C.11: the Modality LUT, the VOI LUT or window and the
    Presentation LUT are functions of the one value), so for an image with many more
    pixels than possible stored values (a 2,500-px film of 12 to 16 bits) the three
    steps run once on every possible stored value and the image is one table lookup:
    the same float64 operations on the same values, hence the same bits, in one pass
    over the image instead of about ten.

    Parameters
    ----------
    stored : ndarray of integers, shape (rows, columns)
        One image's stored values, within its Bits Stored.
    params : DisplayParameters
        Its Modality LUT or rescale, VOI and presentation.

    Returns
    -------
    ndarray of float64, shape (rows, columns)
        Presentation values, 0 black and 1 white.

    Raises
    ------
    DataError
        As :func:`apply_modality`.
    """
    arr = _checked_stored(stored, params)
    low, high = params.stored_range
    entries = high - low + 1
    if arr.size < _LUT_MIN_PIXELS_PER_ENTRY * entries or entries > 2**16:
        return apply_presentation(apply_voi(_modality(arr, params), params), params)
    every = np.arange(low, high + 1, dtype=np.int64).reshape(1, entries)
    table = apply_presentation(apply_voi(_modality(every, params), params), params)[0]
    index = arr if low == 0 else arr.astype(np.int32) - low
    return table[index]


def apply_modality(stored: NDArray[np.integer], params: DisplayParameters) -> NDArray[np.float64]:
    """Map stored values to modality values (PS3.3 C.11.1).

    Parameters
    ----------
    stored : ndarray of integers, shape (rows, columns)
        Stored pixel values, already sign-extended to ``params.bits_stored``.
    params : DisplayParameters
        The image's parameters.

    Returns
    -------
    ndarray of float64, shape (rows, columns)
        ``slope * stored + intercept`` (C.11.1.1.2), or the Modality LUT entries.

    Raises
    ------
    DataError
        If the array is not 2-D integers, or a value does not fit the stored bits.

    Examples
    --------
    >>> import numpy as np
    >>> from vigil.imaging import DisplayParameters, Photometric, Window
    >>> p = DisplayParameters(bits_stored=12, signed=False, photometric=Photometric.MONOCHROME2,
    ...                       slope=-2.0, intercept=100.0, window=Window(0.0, 10.0))
    >>> apply_modality(np.array([[0, 10]]), p).tolist()
    [[100.0, 80.0]]
    """
    return _modality(_checked_stored(stored, params), params)


def _modality(arr: NDArray[np.integer], params: DisplayParameters) -> NDArray[np.float64]:
    """:func:`apply_modality` of stored values already checked (:func:`_checked_stored`)."""
    if params.modality_lut is not None:
        return params.modality_lut.lookup(arr)
    return arr.astype(np.float64) * params.slope + params.intercept


def apply_voi(values: NDArray[np.floating], params: DisplayParameters) -> NDArray[np.float64]:
    """Modality values → ``[0, 1]`` by the VOI LUT or the window (PS3.3 C.11.2).

    With ``y_min = 0`` and ``y_max = 1``:

    - VOI LUT (C.11.2.1.1): entry / ``(2 ** bits - 1)``;
    - LINEAR (C.11.2.1.2.1): 0 if ``x <= c - 0.5 - (w - 1) / 2``, 1 if
      ``x > c - 0.5 + (w - 1) / 2``, else ``(x - (c - 0.5)) / (w - 1) + 0.5``;
    - LINEAR_EXACT (C.11.2.1.3.2): 0 if ``x <= c - w / 2``, 1 if ``x > c + w / 2``,
      else ``(x - c) / w + 0.5``;
    - SIGMOID (C.11.2.1.3.1): ``1 / (1 + exp(-4 (x - c) / w))``.

    Parameters
    ----------
    values : ndarray of float64
        Modality values (any shape).
    params : DisplayParameters
        The image's parameters; the VOI LUT wins when both it and a window are given.

    Returns
    -------
    ndarray of float64, shape of ``values``
        Values in ``[0, 1]``, 0 the darkest before any inversion.

    Examples
    --------
    >>> import numpy as np
    >>> from vigil.imaging import DisplayParameters
    >>> apply_voi(np.array([0.0, 51.0, 255.0]), DisplayParameters.eight_bit()).tolist()
    [0.0, 0.2, 1.0]
    """
    x = np.asarray(values, dtype=np.float64)
    if params.voi_lut is not None:
        return params.voi_lut.lookup(x) / float(2**params.voi_lut.bits - 1)
    window = params.window
    assert window is not None  # DisplayParameters guarantees a window or a VOI LUT
    c, w = window.center, window.width
    if window.function is VOIFunction.SIGMOID:
        return 0.5 * (1.0 + np.tanh(2.0 * (x - c) / w))  # = 1 / (1 + exp(-4 (x - c) / w))
    if window.function is VOIFunction.LINEAR_EXACT:
        y = (x - c) / w + 0.5
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, y))
    low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    y = (x - (c - 0.5)) / (w - 1) + 0.5 if w > 1 else np.zeros_like(x)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, y))


def apply_presentation(voi: NDArray[np.float64], params: DisplayParameters) -> NDArray[np.float64]:
    """Invert the VOI output when the image is MONOCHROME1 or its shape is INVERSE.

    PS3.3 C.7.6.3.1.2 and C.11.6.1.2. The inverse of ``y`` in ``[0, 1]`` is ``1 - y``:
    a fixed map, unlike pydicom's ``apply_presentation_lut`` (``max - arr``).

    Parameters
    ----------
    voi : ndarray of float64
        VOI output in ``[0, 1]``.
    params : DisplayParameters
        The image's parameters.

    Returns
    -------
    ndarray of float64, shape of ``voi``
        Presentation values, 0 black and 1 white.
    """
    return 1.0 - voi if params.inverts else voi


def _box_weights(n_in: int, n_out: int) -> NDArray[np.float64]:
    """Matrix (n_out, n_in) of the overlap of each output cell with each input pixel."""
    edges_out = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    left = np.maximum(edges_out[:-1, None], np.arange(n_in)[None, :])
    right = np.minimum(edges_out[1:, None], np.arange(1, n_in + 1)[None, :])
    overlap = np.clip(right - left, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize(image: NDArray[np.floating], size: int = MODEL_SIZE) -> NDArray[np.float64]:
    """Resample a 2-D image to ``size × size`` by area (box) weighting.

    Each output pixel is the mean of the input over its footprint (a cell of
    ``rows / size`` by ``columns / size`` input pixels), input pixels weighted by the
    area they share with it; for an integer factor this is the block mean (the same
    as Pillow's ``Image.BOX``). Separable: rows, then columns. The aspect ratio
    is not kept (MedMNIST resized its sources the same way). An image already of
    the size is returned unchanged (as float64), bit for bit. Deterministic. For an
    image of at least four times the output's rows (a film), each output row sums
    only its band of input rows (~28x fewer operations for a 2,500-px film); this
    equals the full product ``rows @ image @ cols.T`` up to float64 rounding (the
    summation order differs; tests bound the difference by 1e-12 on ``[0, 1]``).

    Parameters
    ----------
    image : ndarray of shape (rows, columns)
        The image.
    size : int, optional
        Side of the output.

    Returns
    -------
    ndarray of float64, shape (size, size)
        The resampled image; its values stay within the input's range.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise DataError(f"expected a non-empty 2-D image, got shape {arr.shape}")
    if size < 1:
        raise DataError(f"expected a positive output size, got {size}")
    if arr.shape == (size, size):
        return arr.copy()
    rows = _box_weights(arr.shape[0], size)
    cols = _box_weights(arr.shape[1], size)
    if arr.shape[0] < _BAND_MIN_FACTOR * size:
        return np.asarray(rows @ arr @ cols.T, dtype=np.float64)
    # A large image: each output row is the weighted sum of its own band of input rows
    # (about rows / size of them), not a product with a mostly-zero (size, rows) matrix.
    banded = np.empty((size, arr.shape[1]), dtype=np.float64)
    for i, weights in enumerate(rows):
        (nonzero,) = np.nonzero(weights)
        lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
        banded[i] = weights[lo:hi] @ arr[lo:hi]
    return np.asarray(banded @ cols.T, dtype=np.float64)


def normalize(image: NDArray[np.floating]) -> NDArray[np.float32]:
    """``(x - 0.5) / 0.5`` as float32: ``[0, 1]`` → ``[-1, 1]`` (MedMNIST's mean and std 0.5)."""
    return ((np.asarray(image, dtype=np.float64) - 0.5) / 0.5).astype(np.float32)


def to_model_input(
    stored: NDArray[np.integer], params: DisplayParameters, *, size: int = MODEL_SIZE
) -> NDArray[np.float32]:
    """Run the whole chain on one image.

    Parameters
    ----------
    stored : ndarray of integers, shape (rows, columns)
        Stored pixel values.
    params : DisplayParameters
        The image's parameters.
    size : int, optional
        Side of the model input.

    Returns
    -------
    ndarray of float32, shape (size, size)
        The model input, in ``[-1, 1]``.
    """
    return normalize(resize(display_values(stored, params), size))


def training_inputs(
    images: NDArray[np.uint8], *, size: int = MODEL_SIZE
) -> NDArray[np.float32]:
    """Model inputs of 8-bit greyscale training images (MedMNIST arrays), through the chain.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, rows, columns)
        The images, 0 black, 255 white.
    size : int, optional
        Side of the model input.

    Returns
    -------
    ndarray of float32, shape (n, size, size)
        ``to_model_input(image, DisplayParameters.eight_bit())`` for each image.
    """
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise DataError(
            f"expected 8-bit greyscale images of shape (n, rows, columns), "
            f"got {arr.ndim}-D {arr.dtype}"
        )
    params = DisplayParameters.eight_bit()
    out = np.empty((arr.shape[0], size, size), dtype=np.float32)
    for i, image in enumerate(arr):
        out[i] = to_model_input(image, params, size=size)
    return out
