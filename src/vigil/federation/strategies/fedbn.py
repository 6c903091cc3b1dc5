"""FedBN: normalization stays at each site; everything else is averaged as in FedAvg.

Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
Normalization", ICLR 2021: the normalization layers are excluded from
aggregation and each site keeps its own. In vigil's network the normalization
is the site-local standardization (``norm.mean``, ``norm.std``), so under FedBN
a site standardizes with its own statistics, and the package exported for a
site carries that site's normalization.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from vigil.federation.strategies._aggregate import Weights, example_shares, weighted_mean

__all__ = ["fedbn", "shared_keys"]


def shared_keys(names: Sequence[str], *, is_local: Callable[[str], bool]) -> list[str]:
    """Return the entries that are aggregated: every name for which ``is_local`` is false."""
    return [n for n in names if not is_local(n)]


def fedbn(
    weights: Sequence[Weights],
    num_examples: Sequence[int],
    *,
    is_local: Callable[[str], bool],
    max_share: float | None = None,
) -> OrderedDict[str, NDArray[np.float32]]:
    """Example-weighted average of the non-local entries only.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    num_examples : sequence of int, length n_sites
    is_local : callable of str to bool
        True for the entries each site keeps (the normalization statistics,
        ``vigil.federation.model.is_norm_key``); they are never averaged and
        are absent from the result.
    max_share : float or None, optional

    Returns
    -------
    OrderedDict of str to ndarray (float32)

    Examples
    --------
    >>> a = {"norm.mean": np.zeros(1), "w": np.zeros(1)}
    >>> b = {"norm.mean": np.ones(1), "w": np.ones(1)}
    >>> out = fedbn([a, b], [1, 1], is_local=lambda k: k.startswith("norm."))
    >>> list(out), out["w"].tolist()
    (['w'], [0.5])
    """
    keys = shared_keys(list(weights[0]) if weights else [], is_local=is_local)
    return weighted_mean(weights, example_shares(num_examples, max_share=max_share), keys=keys)
