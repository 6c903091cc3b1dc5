"""Training-time augmentation of model inputs: small random translations (numpy only).

Each training image is moved by a whole number of pixels ``(dy, dx)``, drawn
uniformly from ``[-max_shift, max_shift]`` on each axis, the uncovered border
filled by repeating the edge row / column (``numpy.pad`` mode ``edge``). Random
translations of a few pixels are the standard augmentation of small-image CNNs
(Krizhevsky, Sutskever & Hinton, NeurIPS 2012, §4.1; Simard, Steinkraus & Platt,
ICDAR 2003, on distorting training images to add translation invariance); at
28×28 a shift of 2 px is about 7 % of the side, well inside the framing
variation of chest radiographs.

It runs in the training path only (the imaging site's local training); the
runtime and the pixel chain (:mod:`vigil.imaging`) never augment.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["random_shifts"]


def random_shifts(
    x: NDArray[np.float32], rng: np.random.Generator, max_shift: int
) -> NDArray[np.float32]:
    """Translate every image by its own random whole-pixel offset, edges repeated.

    Parameters
    ----------
    x : ndarray of float32, shape (n, height, width)
        Model inputs.
    rng : numpy.random.Generator
        Draws the offsets: ``(n, 2)`` integers in ``[-max_shift, max_shift]``.
    max_shift : int
        Largest offset in pixels on each axis; 0 returns a copy of ``x``.

    Returns
    -------
    ndarray of float32, shape (n, height, width)
        ``out[i, r, c] = x[i, clip(r - dy_i, 0, height-1), clip(c - dx_i, 0, width-1)]``.

    Raises
    ------
    ValueError
        If ``x`` is not 3-D or ``max_shift`` is negative or not smaller than the image side.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or max_shift < 0 or max_shift >= min(x.shape[1:], default=0):
        raise ValueError(f"expected images (n, height, width) and 0 <= max_shift < side, got "
                         f"shape {x.shape} and max_shift {max_shift}")
    if max_shift == 0:
        return x.copy()
    n, h, w = x.shape
    offsets = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    rows = np.clip(np.arange(h)[None, :] - offsets[:, :1], 0, h - 1)  # (n, h)
    cols = np.clip(np.arange(w)[None, :] - offsets[:, 1:], 0, w - 1)  # (n, w)
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
