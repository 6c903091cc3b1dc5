"""Bad-update control when the coordinator sees only sums (secure aggregation).

The per-site rules of :mod:`vigil.federation.checks` (schema, non-finite,
example count, norm outlier, direction outlier) need each site's update; under
secure aggregation the coordinator has the survivors' weighted mean only. vigil
replaces them by three bounds, one per party that can still act:

1. **The site bounds its own update** (:func:`bound_norm`): an honest site
   scales its update ``d_i = w_i - w`` to an L2 norm of at most ``B``
   (``norm_bound``) before masking: norm bounding, Sun et al., "Can You Really
   Backdoor Federated Learning?", 2019, section 4; the clipping step of
   DP-FedAvg, McMahan et al., ICLR 2018. It stops a site whose own training
   went wrong (bad data, a diverging optimizer) from dominating the round.
2. **The quantization bounds every site** (the clipping range ``c``,
   :mod:`vigil.federation.secure_sum`): vigil's site-side code clips each
   element of its term ``s_i d_i`` to ``[-c, c]``, so a site running it moves
   the mean by at most ``c / S`` per element and ``min(s_i B, c sqrt(d)) / S``
   in L2 norm (:func:`influence_bound`; ``S`` the survivors' summed shares).
   A site running *modified* code can send any integer; the coordinator
   refuses a sum outside ``[0, n L]`` (no ``n`` honest sites can produce one,
   :class:`~vigil.federation.secagg.SecureAggregator`), so the most it can do
   unseen is move each element of the sum within ``[-n c, n c]``: at most
   ``2 n c / S`` per element. Tighter bounds against modified code need
   zero-knowledge range proofs on the masked inputs (e.g. Lycklama et al.,
   "RoFL", IEEE S&P 2023), which neither Flower nor vigil has.
3. **The coordinator screens the aggregate's history** (:func:`aggregate_outlier`):
   a round whose mean update's norm is a robust outlier against the previous
   aggregated rounds (rule 4 of :mod:`vigil.federation.checks` applied to
   rounds instead of sites: log norms, median and MAD, ``z = 3.5`` and at
   least ``max_ratio`` (10) times the median) is not aggregated.

Traded against plain aggregation: the coordinator can no longer say *which*
site sent a bad update, reject it alone and keep the others (rules 4-5), check
its schema and finiteness (the site-side code does: a NaN is refused before
masking), or cap an over-reported example count (the shares are computed from
the declared rows, which the coordinator knows). A sign-flipped or scaled
update from a site running modified code is bounded (2.), not removed; three
honest sites out of four still move the model in their direction when
``c`` is near the honest elements' size (test: ``tests/federation/test_secagg.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from vigil.federation.checks import MAD_TO_SIGMA, ScreenRule

__all__ = ["aggregate_outlier", "bound_norm", "influence_bound"]


def bound_norm(delta: NDArray[np.floating], bound: float | None) -> NDArray[np.float64]:
    """Scale ``delta`` to an L2 norm of at most ``bound``: ``d * min(1, B / ||d||)``.

    Parameters
    ----------
    delta : ndarray of shape (d,)
    bound : float or None
        ``B``; None returns ``delta`` unchanged.

    Returns
    -------
    ndarray of float64, shape (d,)
    """
    delta = np.asarray(delta, dtype=np.float64)
    if bound is None:
        return delta
    norm = float(np.linalg.norm(delta))
    return delta if norm <= bound else delta * (bound / norm)


def influence_bound(share: float, survivors_share: float, *, clipping_range: float,
                    norm_bound: float | None, size: int) -> tuple[float, float]:
    """How far one site can move the mean update: per element (any code) and in L2 (vigil's code).

    Parameters
    ----------
    share : float
        The site's share ``s_i``.
    survivors_share : float
        ``S``, the summed shares of the round's survivors.
    clipping_range : float
        ``c``.
    norm_bound : float or None
        ``B`` (None: unbounded).
    size : int
        ``d``, elements of the update.

    Returns
    -------
    per_element : float
        ``c / S``.
    l2 : float
        ``min(s_i B, c sqrt(d)) / S``.
    """
    l2 = clipping_range * np.sqrt(size)
    if norm_bound is not None:
        l2 = min(l2, share * norm_bound)
    return clipping_range / survivors_share, float(l2 / survivors_share)


def aggregate_outlier(norm: float, history: Sequence[float],
                      rule: ScreenRule | None = None) -> str | None:
    """Whether a round's mean update is an outlier against the previous rounds' (rule 3).

    Parameters
    ----------
    norm : float
        L2 norm of this round's mean update.
    history : sequence of float
        Norms of the previously aggregated rounds; the rule runs with at
        least ``rule.min_sites`` of them (3).
    rule : ScreenRule or None, optional
        Its ``norm_z`` and ``max_ratio``.

    Returns
    -------
    str or None
        Why the round is not aggregated, or None.
    """
    rule = rule or ScreenRule()
    if not np.isfinite(norm):
        return f"mean update norm {norm} is not finite"
    if len(history) < rule.min_sites or norm <= 0:
        return None
    r = np.log(np.maximum(np.asarray(history, dtype=np.float64), 1e-300))
    med = float(np.median(r))
    mad = float(np.median(np.abs(r - med)))
    excess = float(np.log(norm)) - med
    limit = max(rule.norm_z * MAD_TO_SIGMA * mad, float(np.log(rule.max_ratio)))
    if excess > limit:
        return (f"mean update norm {norm:.4g} is {np.exp(excess):.3g} x the median of the "
                f"{len(history)} previous rounds (limit {np.exp(limit):.3g} x)")
    return None
