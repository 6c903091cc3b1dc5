"""Intensity histograms of model inputs: what the drift monitor compares against the package.

The pixel chain ends with ``(x - 0.5) / 0.5`` (:func:`vigil.imaging.normalize`), so
every model input lies in ``[-1, 1]``. :data:`INPUT_EDGES` cuts that range into
:data:`N_BINS` equal bins; the package's reference profile and the runtime's instance
records use the same edges, so their histograms compare bin for bin (population
stability index, Siddiqi 2006; or a chi-square test). numpy only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError

__all__ = ["INPUT_EDGES", "N_BINS", "input_histogram"]

N_BINS = 16
"""Bins of an input histogram."""

INPUT_EDGES: NDArray[np.float64] = np.linspace(-1.0, 1.0, N_BINS + 1)
"""Bin edges over the normalized model input range ``[-1, 1]``, shape (N_BINS + 1,)."""


def input_histogram(inputs: NDArray[np.floating]) -> NDArray[np.int64]:
    """Count each image's model-input values in the :data:`INPUT_EDGES` bins.

    Parameters
    ----------
    inputs : ndarray of float, shape (n, ...)
        Model inputs (any trailing shape: (n, h, w) grayscale, (n, c, h, w) colour),
        values in ``[-1, 1]``; values outside are counted in the end bins.

    Returns
    -------
    ndarray of int64, shape (n, N_BINS)
        Per-image counts; each row sums to the image's number of values.

    Raises
    ------
    DataError
        If ``inputs`` has no leading image axis or holds NaN.

    Examples
    --------
    >>> import numpy as np
    >>> input_histogram(np.array([[[-1.0, 1.0], [0.0, 0.05]]]))[0].tolist()
    [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1]
    """
    x = np.asarray(inputs, dtype=np.float64)
    if x.ndim < 2:
        raise DataError(f"expected model inputs of shape (n, ...), got {x.ndim}-D")
    if np.isnan(x).any():
        raise DataError("expected model inputs without NaN, got NaN")
    flat = x.reshape(x.shape[0], -1)
    idx = np.clip(np.searchsorted(INPUT_EDGES, flat, side="right") - 1, 0, N_BINS - 1)
    cells = (np.arange(x.shape[0])[:, None] * N_BINS + idx).ravel()
    counts = np.bincount(cells, minlength=x.shape[0] * N_BINS)
    return counts.reshape(x.shape[0], N_BINS).astype(np.int64, copy=False)
