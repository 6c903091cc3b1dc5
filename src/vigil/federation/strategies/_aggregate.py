"""Aggregation math shared by the strategies: pure numpy over ``name -> ndarray`` weights.

Every function takes the sites' weights as a sequence of mappings with the same
keys and shapes (checked by :mod:`vigil.federation.checks` before aggregation)
and returns a new ordered dict in the key order of the first mapping.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import AggregationError

__all__ = [
    "Weights",
    "coordinate_median",
    "example_shares",
    "trimmed_mean",
    "weighted_mean",
]

Weights = Mapping[str, NDArray[np.floating]]
"""Model weights: parameter name to array (any shape), as made by ``get_weights``."""


def _keys(weights: Sequence[Weights], keys: Iterable[str] | None) -> list[str]:
    if not weights:
        raise AggregationError("expected at least one update to aggregate, got none")
    return list(weights[0]) if keys is None else list(keys)


def example_shares(num_examples: Sequence[int], *, max_share: float | None = None) -> NDArray[
    np.float64
]:
    """Each site's share of the average: ``n_k / sum_j n_j``, optionally capped.

    The cap is water-filling: any share above ``max_share`` is set to it and the
    excess is spread over the other sites in proportion to their examples,
    repeatedly, until no share exceeds the cap. It bounds what one site can
    gain by over-reporting its example count (a gap of Flower's FedAvg noted in
    ``research/fl-frameworks.md`` section 2.1).

    Parameters
    ----------
    num_examples : sequence of int, length n_sites
        Examples each site trained on; all positive.
    max_share : float or None, optional
        Largest share any one site may have, in ``[1 / n_sites, 1]``.

    Returns
    -------
    ndarray of shape (n_sites,)
        Non-negative shares summing to 1.

    Raises
    ------
    AggregationError
        If a count is not positive or the cap is below ``1 / n_sites``.

    Examples
    --------
    >>> example_shares([1, 1, 8], max_share=0.5).tolist()
    [0.25, 0.25, 0.5]
    """
    n = np.asarray(num_examples, dtype=np.float64)
    if n.size == 0 or np.any(n <= 0) or not np.all(np.isfinite(n)):
        raise AggregationError(f"expected positive example counts, got {n.tolist()}")
    share = n / n.sum()
    if max_share is None:
        return share
    if max_share * n.size < 1.0 - 1e-12:
        raise AggregationError(
            f"max_share={max_share} is below 1/{n.size}: {n.size} sites cannot sum to 1; "
            "raise the cap or add sites"
        )
    capped = np.zeros(n.size, dtype=bool)
    while True:
        over = ~capped & (share > max_share + 1e-15)
        if not over.any():
            return share
        capped |= over
        free = ~capped
        share = np.where(capped, max_share, share)
        rest = 1.0 - max_share * capped.sum()
        share[free] = rest * n[free] / n[free].sum() if free.any() else share[free]


def weighted_mean(
    weights: Sequence[Weights], shares: NDArray[np.floating], *, keys: Iterable[str] | None = None
) -> OrderedDict[str, NDArray[np.float32]]:
    """``w[key] = sum_k s_k * w_k[key]`` (McMahan et al., AISTATS 2017, Algorithm 1).

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    shares : ndarray of shape (n_sites,)
        Non-negative, summing to 1 (see :func:`example_shares`).
    keys : iterable of str, optional
        Entries to aggregate; by default all of the first site's.

    Returns
    -------
    OrderedDict of str to ndarray (float32)
        Summed in float64 in a canonical order, so the order of the sites does
        not change a single bit.
    """
    names = _keys(weights, keys)
    s = np.asarray(shares, dtype=np.float64)
    if s.shape != (len(weights),):
        raise AggregationError(f"expected {len(weights)} shares, got shape {s.shape}")
    out: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
    for name in names:
        terms = np.stack(
            [k * np.asarray(w[name], dtype=np.float64) for k, w in zip(s, weights, strict=True)]
        )
        # summing the sorted terms makes the result bitwise independent of site order
        out[name] = np.sort(terms, axis=0).sum(axis=0).astype(np.float32)
    return out


def _per_coordinate(
    weights: Sequence[Weights],
    keys: Iterable[str] | None,
    reduce: Callable[[NDArray[np.float64]], NDArray[np.float64]],
) -> OrderedDict[str, NDArray[np.float32]]:
    out: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
    for name in _keys(weights, keys):
        stacked = np.stack([np.asarray(w[name], dtype=np.float64) for w in weights])
        out[name] = reduce(stacked).astype(np.float32)
    return out


def coordinate_median(
    weights: Sequence[Weights], *, keys: Iterable[str] | None = None
) -> OrderedDict[str, NDArray[np.float32]]:
    """Coordinate-wise median of the sites' weights (Yin et al., ICML 2018, Option I).

    Unweighted: each site counts once, so a site cannot buy influence with its
    example count. With an even number of sites it is the mean of the two middle values.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    keys : iterable of str, optional

    Returns
    -------
    OrderedDict of str to ndarray (float32)
    """
    return _per_coordinate(weights, keys, lambda x: np.median(x, axis=0))


def trimmed_mean(
    weights: Sequence[Weights], *, beta: float, keys: Iterable[str] | None = None
) -> OrderedDict[str, NDArray[np.float32]]:
    """Coordinate-wise beta-trimmed mean (Yin et al., ICML 2018, Option II).

    For every coordinate the ``floor(beta * n_sites)`` largest and as many
    smallest values are dropped and the rest averaged (unweighted), as
    ``scipy.stats.trim_mean``.

    Parameters
    ----------
    weights : sequence of Weights, length n_sites
    beta : float
        Fraction trimmed from each end, in ``[0, 0.5)``.
    keys : iterable of str, optional

    Returns
    -------
    OrderedDict of str to ndarray (float32)

    Raises
    ------
    AggregationError
        If ``beta`` is outside ``[0, 0.5)``.
    """
    if not 0.0 <= beta < 0.5:
        raise AggregationError(f"expected 0 <= beta < 0.5 for the trimmed mean, got {beta}")
    cut = int(np.floor(beta * len(weights)))

    def reduce(x: NDArray[np.float64]) -> NDArray[np.float64]:
        s = np.sort(x, axis=0)
        return s[cut : x.shape[0] - cut].mean(axis=0)

    return _per_coordinate(weights, keys, reduce)
