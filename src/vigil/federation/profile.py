"""The drift reference profile: per-variable histograms summed from site-level histograms.

Every site counts the measured values of each of the 39 grid variables
(:data:`vigil.features.GRID_COLUMNS`, in canonical units, implausible values
already missing) on the same **fixed fine bins**, derived from the catalog's
plausible range alone, so no data decides them:

- ``FINE_BINS`` bins uniform on ``[low, high]``;
- for a right-skewed variable (``low >= 0`` and ``high > 50 * normal``, e.g.
  troponin, AST, WBC, ICU hours) bins uniform in log between
  ``max(low, normal / 100)`` and ``high``, with one first bin from ``low``.

The coordinator sums the sites' fine histograms (and missing counts) and
merges adjacent fine bins into at most ``PROFILE_BINS`` bins of about equal
pooled mass ("agreed quantile edges"). Merging after summing is the same as
summing the merged site histograms, so the profile is exactly a sum of site
histograms. The manifest's ``reference_profile`` is::

    {"format": "vigil-reference-profile/1",
     "rows": n,                          # training rows over all sites
     "variables": {name: {"edges": [...k+1], "counts": [...k], "missing": m}},
     "score": {"edges": [...], "counts": [...]}}   # validation probabilities

``missing / rows`` is the hourly missingness rate the drift monitor compares.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.catalog import variable
from vigil.features.grid import GRID_COLUMNS

__all__ = [
    "FINE_BINS",
    "PROFILE_BINS",
    "PROFILE_FORMAT",
    "VARIABLE_EDGES",
    "coarsen",
    "reference_profile",
    "variable_edges",
    "variable_histograms",
]

FINE_BINS = 256
PROFILE_BINS = 20
PROFILE_FORMAT = "vigil-reference-profile/1"
SKEW_RATIO = 50.0


def variable_edges(name: str, *, bins: int = FINE_BINS) -> NDArray[np.float64]:
    """Return the fixed fine bin edges of a catalog variable, shape (bins + 1,).

    Examples
    --------
    >>> e = variable_edges("Temp", bins=4)
    >>> e.tolist()
    [25.0, 30.0, 35.0, 40.0, 45.0]
    """
    v = variable(name)
    if v.low >= 0 and v.normal > 0 and v.high > SKEW_RATIO * v.normal:
        start = max(v.low, v.normal / 100.0)
        if start > v.low:
            return np.r_[v.low, np.geomspace(start, v.high, bins)]
        return np.geomspace(v.low, v.high, bins + 1)
    return np.linspace(v.low, v.high, bins + 1)


VARIABLE_EDGES: NDArray[np.float64] = np.stack([variable_edges(c) for c in GRID_COLUMNS])
"""Fine edges of every grid variable, shape (n_variables, FINE_BINS + 1)."""


def variable_histograms(
    values: NDArray[np.floating],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Count a site's grid values on the fixed fine bins.

    Parameters
    ----------
    values : ndarray of shape (n_rows, n_variables)
        Hourly grid values in :data:`GRID_COLUMNS` order, NaN when not measured.

    Returns
    -------
    counts : ndarray of shape (n_variables, FINE_BINS)
        Measured values per bin (the last bin includes its upper edge; values
        outside the edges, which the grid never holds, are clipped in).
    missing : ndarray of shape (n_variables,)
        Rows without a value.
    """
    x = np.asarray(values, dtype=np.float64)
    counts = np.zeros((len(GRID_COLUMNS), FINE_BINS), dtype=np.int64)
    missing = np.zeros(len(GRID_COLUMNS), dtype=np.int64)
    for j in range(len(GRID_COLUMNS)):
        col = x[:, j]
        seen = col[np.isfinite(col)]
        missing[j] = col.size - seen.size
        idx = np.clip(np.searchsorted(VARIABLE_EDGES[j], seen, side="right") - 1, 0, FINE_BINS - 1)
        counts[j] = np.bincount(idx, minlength=FINE_BINS)
    return counts, missing


def coarsen(counts: NDArray[np.integer], *, bins: int = PROFILE_BINS) -> NDArray[np.int64]:
    """Choose the fine edges kept when merging to about ``bins`` equal-mass bins.

    Parameters
    ----------
    counts : ndarray of shape (n_fine,)
        Pooled fine counts.
    bins : int, optional

    Returns
    -------
    ndarray of shape (k + 1,)
        Increasing fine-edge indices from 0 to ``n_fine``; ``k <= bins``. With
        no counts, ``bins`` uniform groups.

    Examples
    --------
    >>> coarsen(np.array([0, 10, 0, 10, 0, 0, 10, 0]), bins=3).tolist()
    [0, 2, 4, 8]
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.size
    total = c.sum()
    if total <= 0:
        return np.unique(np.linspace(0, n, bins + 1).round().astype(np.int64))
    cum = np.cumsum(c)
    targets = total * np.arange(1, bins) / bins
    cuts = np.searchsorted(cum, targets, side="left") + 1
    return np.unique(np.r_[0, np.clip(cuts, 1, n - 1), n]).astype(np.int64)


def reference_profile(
    counts: NDArray[np.integer],
    missing: NDArray[np.integer],
    rows: int,
    *,
    score_edges: NDArray[np.floating] | None = None,
    score_counts: NDArray[np.integer] | None = None,
    bins: int = PROFILE_BINS,
) -> dict[str, Any]:
    """Build the manifest's reference profile from pooled fine histograms.

    Parameters
    ----------
    counts : ndarray of shape (n_variables, FINE_BINS)
        Fine histograms summed over sites.
    missing : ndarray of shape (n_variables,)
        Missing counts summed over sites.
    rows : int
        Rows summed over sites.
    score_edges : ndarray of shape (n_score_bins - 1,), optional
        Inner edges of the score bins.
    score_counts : ndarray of shape (n_score_bins,), optional
        Validation rows per score bin, summed over sites.
    bins : int, optional

    Returns
    -------
    dict
        JSON-ready; see the module docstring.
    """
    variables: dict[str, Any] = {}
    for j, name in enumerate(GRID_COLUMNS):
        keep = coarsen(counts[j], bins=bins)
        cum = np.r_[0, np.cumsum(counts[j])]
        variables[name] = {
            "edges": [float(x) for x in VARIABLE_EDGES[j][keep]],
            "counts": [int(x) for x in np.diff(cum[keep])],
            "missing": int(missing[j]),
        }
    out: dict[str, Any] = {"format": PROFILE_FORMAT, "rows": int(rows), "variables": variables}
    if score_edges is not None and score_counts is not None:
        out["score"] = {
            "edges": [0.0, *(float(x) for x in score_edges), 1.0],
            "counts": [int(x) for x in score_counts],
        }
    return out
