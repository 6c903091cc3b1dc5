"""FedAvg: the example-weighted average of the sites' weights.

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, Algorithm 1: ``w = sum_k (n_k / n) w_k``.
The optional cap on any one site's share is vigil's own guard against a site
over-reporting its example count (:func:`example_shares`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from vigil.federation.strategies._aggregate import Weights, example_shares, weighted_mean

__all__ = ["fedavg"]


def fedavg(
    weights: Sequence[Weights], num_examples: Sequence[int], *, max_share: float | None = None
) -> OrderedDict[str, NDArray[np.float32]]:
    """Example-weighted average of every entry of the sites' weights.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
        The weights each site trained, same names and shapes.
    num_examples : sequence of int, length n_sites
        The examples each site trained on.
    max_share : float or None, optional
        Cap on any one site's share of the average (``1 / n_sites`` to 1).

    Returns
    -------
    OrderedDict of str to ndarray (float32)

    Examples
    --------
    >>> a, b = {"w": np.array([0.0, 3.0])}, {"w": np.array([3.0, 0.0])}
    >>> fedavg([a, b], [2, 1])["w"].tolist()
    [1.0, 2.0]
    """
    return weighted_mean(weights, example_shares(num_examples, max_share=max_share))
