"""Features of each census patient's last hour, recomputed only where the grid changed.

Between two cycles 15 minutes apart most patients are scored at the same ICU
hour from the same values: their hour changes once an hour, and a value charted
during the current hour is not in a complete hour yet. The features of a
patient's last row are a function of that patient's grid rows alone (the window
kernels of :mod:`vigil.features.window` reduce each patient's rows in an order
that does not depend on any other row), so :class:`LatestFeatures` keeps each
patient's last feature row with a digest of the grid rows it came from, and
calls :func:`vigil.features.build_latest_features` only for the patients whose
rows differ. The result is bit-identical to building every patient's features.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from vigil.features.builder import build_latest_features
from vigil.features.grid import HourlyGrid

__all__ = ["LatestFeatures"]


def _digest(grid: HourlyGrid, index: int) -> bytes:
    lo, hi = int(grid.starts[index]), int(grid.starts[index + 1])
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(grid.hours[lo:hi]).tobytes())
    h.update(np.ascontiguousarray(grid.values[lo:hi]).tobytes())
    return h.digest()


class LatestFeatures:
    """:func:`~vigil.features.build_latest_features` with a per-patient memory.

    Attributes
    ----------
    computed : int
        Patients whose features the last call computed (the others were reused).
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[bytes, NDArray[np.float32]]] = {}
        self.computed = 0

    def __call__(self, grid: HourlyGrid) -> NDArray[np.float32]:
        """Return the features of each patient's last row.

        Parameters
        ----------
        grid : HourlyGrid
            Each patient's recent rows, up to the hour to score.

        Returns
        -------
        ndarray of shape (grid.n_patients, n_features)
            float32, equal to ``build_latest_features(grid)``.
        """
        digests = [_digest(grid, i) for i in range(grid.n_patients)]
        stale = [
            i for i, (key, d) in enumerate(zip(grid.patient_ids, digests, strict=True))
            if self._rows.get(key, (b"", None))[0] != d
        ]
        self.computed = len(stale)
        if len(stale) == grid.n_patients:
            out = build_latest_features(grid)
        else:
            stale_set = set(stale)
            kept = [i for i in range(grid.n_patients) if i not in stale_set]
            reused = np.stack([self._rows[grid.patient_ids[i]][1] for i in kept])
            out = np.empty((grid.n_patients, reused.shape[1]), dtype=np.float32)
            out[kept] = reused
            if stale:
                out[stale] = build_latest_features(grid.select(np.asarray(stale, np.int64)))
        # patients who left the census are forgotten
        self._rows = {key: (d, out[i].copy()) for i, (key, d) in
                      enumerate(zip(grid.patient_ids, digests, strict=True))}
        return out
