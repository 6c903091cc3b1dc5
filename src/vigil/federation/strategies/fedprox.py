"""FedProx: FedAvg aggregation, with a proximal term in each site's local loss.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
Algorithm 2: each site minimizes ``F_k(w) + (mu / 2) * ||w - w_t||^2`` (the
squared norm, as in the paper and Flower's FedProx baseline; Flower's strategy
docstring omits the square, see ``research/fl-frameworks.md`` section 2.2). The
coordinator aggregates exactly as FedAvg; ``mu`` travels in the fit config and
the term is added by the local training loop. With ``mu = 0`` FedProx is FedAvg.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from vigil.federation.strategies._aggregate import Weights
from vigil.federation.strategies.fedavg import fedavg

__all__ = ["fedprox", "proximal_penalty"]


def fedprox(
    weights: Sequence[Weights], num_examples: Sequence[int], *, max_share: float | None = None
) -> OrderedDict[str, NDArray[np.float32]]:
    """Aggregate FedProx updates: identical to :func:`~vigil.federation.strategies.fedavg.fedavg`.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    num_examples : sequence of int, length n_sites
    max_share : float or None, optional

    Returns
    -------
    OrderedDict of str to ndarray (float32)
    """
    return fedavg(weights, num_examples, max_share=max_share)


def proximal_penalty(weights: Weights, global_weights: Weights, *, mu: float) -> float:
    """Compute ``(mu / 2) * sum_key ||w[key] - w_t[key]||^2`` (Li et al. 2020, eq. 2).

    A numpy reference of what the local loss adds, over the entries of ``weights``.

    Parameters
    ----------
    weights, global_weights : Weights
        Local and global weights; ``global_weights`` has every key of ``weights``.
    mu : float
        Proximal strength, >= 0.

    Returns
    -------
    float

    Examples
    --------
    >>> proximal_penalty({"w": np.array([1.0, 2.0])}, {"w": np.zeros(2)}, mu=0.1)
    0.25
    """
    return 0.5 * mu * sum(
        float(np.sum((np.asarray(w, np.float64) - np.asarray(global_weights[k], np.float64)) ** 2))
        for k, w in weights.items()
    )
