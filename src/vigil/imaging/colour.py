"""The colour half of the pixel chain: 8-bit RGB (or YCbCr) stored values → model input.

Colour photographs (fundus cameras: Ophthalmic Photography, VL Photographic) have
no Modality, VOI or Presentation LUT (PS3.3 C.7.6.3.1.2: RGB and YBR_* are
displayed as they are), so the chain is:

1. :func:`ybr_full_to_rgb` - YBR_FULL / YBR_FULL_422 stored values → RGB, the
   full-range ITU-R BT.601 inverse of PS3.3 C.7.6.3.1.2 (the JFIF equations);
   RGB images skip it;
2. ``v / 255`` per channel;
3. :func:`~vigil.imaging.chain.resize` on each channel (area weighting);
4. :func:`~vigil.imaging.chain.normalize` per channel: ``(x - 0.5) / 0.5``
   (MedMNIST's mean and std 0.5 for every channel).

:func:`colour_training_inputs` runs it on 8-bit RGB training images (MedMNIST
RetinaMNIST arrays), the degenerate case. The greyscale chain is untouched.
numpy only.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.imaging.chain import MODEL_SIZE, normalize, resize

__all__ = [
    "ColourSpace",
    "colour_model_input",
    "colour_training_inputs",
    "stored_colour_input",
    "ybr_full_to_rgb",
]


class ColourSpace(StrEnum):
    """Photometric Interpretation (0028,0004) of a colour image the chain accepts (C.7.6.3.1.2).

    ``YBR_FULL_422`` is YBR_FULL with horizontally halved chroma; once decoded
    (chroma upsampled by the decoder) it converts exactly as YBR_FULL.
    """

    RGB = "RGB"
    YBR_FULL = "YBR_FULL"
    YBR_FULL_422 = "YBR_FULL_422"


def ybr_full_to_rgb(ybr: NDArray[np.integer]) -> NDArray[np.float64]:
    """Convert 8-bit YBR_FULL values to RGB, unrounded (PS3.3 C.7.6.3.1.2).

    PS3.3 gives the forward map ``Y = .2990 R + .5870 G + .1140 B``,
    ``CB = -.1687 R - .3313 G + .5 B + 128``, ``CR = .5 R - .4187 G - .0813 B + 128``;
    its inverse (ITU-R BT.601 full range, JFIF) is ``R = Y + 1.402 (CR - 128)``,
    ``G = Y - 0.344136 (CB - 128) - 0.714136 (CR - 128)``, ``B = Y + 1.772 (CB - 128)``.

    Parameters
    ----------
    ybr : ndarray of integers, shape (rows, columns, 3)
        Y, CB, CR samples (channel last), 0..255.

    Returns
    -------
    ndarray of float64, shape (rows, columns, 3)
        R, G, B, clipped to ``[0, 255]``.

    Examples
    --------
    >>> import numpy as np
    >>> ybr_full_to_rgb(np.array([[[100, 128, 200]]])).round(3).tolist()
    [[[200.944, 48.582, 100.0]]]
    """
    arr = np.asarray(ybr, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"expected YCbCr samples of shape (rows, columns, 3), got {arr.shape}")
    y, cb, cr = arr[..., 0], arr[..., 1] - 128.0, arr[..., 2] - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb, 0.0, 255.0)


def colour_model_input(rgb: NDArray[np.number], *, size: int = MODEL_SIZE
                       ) -> NDArray[np.float32]:
    """Run the colour chain on one RGB image.

    Parameters
    ----------
    rgb : ndarray, shape (rows, columns, 3)
        R, G, B values in ``[0, 255]`` (uint8 stored values or :func:`ybr_full_to_rgb`).
    size : int, optional
        Side of the model input.

    Returns
    -------
    ndarray of float32, shape (3, size, size)
        Channel-first model input in ``[-1, 1]``: ``(resize(v / 255) - 0.5) / 0.5`` per channel.

    Raises
    ------
    DataError
        If the image is not (rows, columns, 3) or has values outside ``[0, 255]``.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DataError(f"expected an RGB image of shape (rows, columns, 3), got {arr.shape}")
    if arr.size and (float(arr.min()) < 0 or float(arr.max()) > 255):
        raise DataError(f"expected RGB values in [0, 255], got [{arr.min()}, {arr.max()}]")
    display = arr.astype(np.float64) / 255.0
    return np.stack([normalize(resize(display[..., c], size)) for c in range(3)])


def colour_training_inputs(images: NDArray[np.uint8], *, size: int = MODEL_SIZE
                           ) -> NDArray[np.float32]:
    """Model inputs of 8-bit RGB training images (MedMNIST colour arrays), through the chain.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, rows, columns, 3)

    Returns
    -------
    ndarray of float32, shape (n, 3, size, size)
        :func:`colour_model_input` of each image.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise DataError(f"expected 8-bit RGB images of shape (n, rows, columns, 3), "
                        f"got {arr.dtype} {arr.shape}")
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for i, image in enumerate(arr):
        out[i] = colour_model_input(image, size=size)
    return out


def stored_colour_input(stored: NDArray[np.integer], space: ColourSpace, *,
                        size: int = MODEL_SIZE) -> NDArray[np.float32]:
    """Run the whole colour chain on one decoded image: colour space → RGB → model input.

    Parameters
    ----------
    stored : ndarray of integers, shape (rows, columns, 3)
        Decoded 8-bit samples, channel last, in the colour space ``space``.
    space : ColourSpace
        The image's Photometric Interpretation.
    size : int, optional

    Returns
    -------
    ndarray of float32, shape (3, size, size)
    """
    arr = np.asarray(stored)
    rgb = arr if space is ColourSpace.RGB else ybr_full_to_rgb(arr)
    return colour_model_input(rgb, size=size)
