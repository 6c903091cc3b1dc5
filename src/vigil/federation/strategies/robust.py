"""Robust aggregation: coordinate-wise median and trimmed mean, in place of the weighted mean.

Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018. Both ignore example counts
(each site counts once) and tolerate a minority of arbitrary updates per
coordinate: the median any minority, the beta-trimmed mean up to
``floor(beta * n_sites)`` sites.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vigil.federation.strategies._aggregate import Weights, coordinate_median, trimmed_mean

__all__ = ["DEFAULT_TRIM", "Robust", "robust_aggregate"]

DEFAULT_TRIM = 0.25
"""Trimmed fraction at each end: with 4 sites the largest and smallest value are dropped."""


class Robust(StrEnum):
    """A robust aggregator (``--robust``)."""

    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"


def robust_aggregate(
    weights: Sequence[Weights],
    method: Robust | str,
    *,
    beta: float = DEFAULT_TRIM,
    keys: Iterable[str] | None = None,
) -> OrderedDict[str, NDArray[np.float32]]:
    """Aggregate with the coordinate-wise median or the beta-trimmed mean.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    method : Robust or str
        ``median`` or ``trimmed-mean``.
    beta : float, optional
        Trimmed fraction at each end, for the trimmed mean.
    keys : iterable of str, optional
        Entries to aggregate; by default all.

    Returns
    -------
    OrderedDict of str to ndarray (float32)

    Examples
    --------
    >>> ws = [{"w": np.array([v])} for v in (1.0, 2.0, 3.0, 100.0)]
    >>> robust_aggregate(ws, "median")["w"].tolist()
    [2.5]
    >>> robust_aggregate(ws, "trimmed-mean")["w"].tolist()
    [2.5]
    """
    if Robust(method) is Robust.MEDIAN:
        return coordinate_median(weights, keys=keys)
    return trimmed_mean(weights, beta=beta, keys=keys)
