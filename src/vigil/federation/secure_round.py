"""One training round of the driver when the coordinator sees only the weighted mean update.

With a transport that sums securely (:class:`SecureRounds`, e.g.
:class:`~vigil.federation.flower.secure.SecureTransport`), the driver's round is:
the coordinator computes each site's share ``s_i`` of the weighted average from
the rows the site declared (:func:`~vigil.federation.strategies.example_shares`,
with ``max_share``), the sites send ``s_i * d_i`` (``d_i = w_i - w``) through
secure aggregation, and the coordinator gets ``sum_S s_i d_i``
over the survivors ``S``, divides by ``sum_S s_i`` (it knows who survived) and
adds it to the weights: FedAvg/FedProx's weighted average
(McMahan et al., AISTATS 2017, eq. 1, written on updates). The round is screened
on the aggregate (:func:`~vigil.federation.secure_screening.aggregate_outlier`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import AggregationError
from vigil.federation.checks import ScreenRule
from vigil.federation.history import SiteRound, Status
from vigil.federation.messages import FitConfig, SiteEvaluation
from vigil.federation.secure_screening import aggregate_outlier
from vigil.federation.strategies import Strategy, Weights, example_shares

__all__ = ["SecureFit", "SecureRounds", "secure_round", "with_evaluation"]

log = logging.getLogger(__name__)


@dataclass
class SecureFit:
    """The outcome of one securely aggregated training round.

    Attributes
    ----------
    delta : OrderedDict of str to ndarray
        ``sum_S s_i d_i / sum_S s_i`` per summed entry (same shapes as the weights).
    loss : float
        The survivors' weighted mean training loss.
    survivors : list of str
    dropped : dict of str to Exception
    """

    delta: OrderedDict[str, NDArray[np.float32]]
    loss: float
    survivors: list[str]
    dropped: dict[str, Exception] = field(default_factory=dict)


@runtime_checkable
class SecureRounds(Protocol):
    """A transport whose training rounds reveal only the weighted mean update."""

    def secure_fit(self, sites: Sequence[Any], weights: Weights, config: FitConfig,
                   keys: Sequence[str], shares: Mapping[str, float]) -> SecureFit:
        """Train and return the survivors' weighted mean update."""
        ...


def secure_round(
    transport: SecureRounds,
    sites: Sequence[Any],
    weights: OrderedDict[str, NDArray[np.float32]],
    config: FitConfig,
    *,
    keys: Sequence[str],
    declared: Mapping[str, int],
    strategy: Strategy,
    history: list[float],
    min_sites: int,
    rule: ScreenRule | None = None,
) -> tuple[bool, OrderedDict[str, NDArray[np.float32]], dict[str, SiteRound]]:
    """Run one round through secure aggregation.

    Parameters
    ----------
    transport : SecureRounds
    sites : sequence of FederatedSite
        Those taking part.
    weights : OrderedDict of str to ndarray
        The global weights.
    config : FitConfig
    keys : sequence of str
        Entries trained and summed.
    declared : mapping of str to int
        Training rows each site declared (the shares' weights).
    strategy : Strategy
        FedAvg or FedProx (its ``max_share`` applies).
    history : list of float
        Norms of the previous aggregated rounds' mean updates; this round's is
        appended when it is aggregated.
    min_sites : int
    rule : ScreenRule or None, optional

    Returns
    -------
    aggregated : bool
    weights : OrderedDict of str to ndarray
        The new global weights (the old ones if not aggregated).
    records : dict of str to SiteRound
        Per site, without validation metrics. A survivor's ``train_loss`` is
        the survivors' mean (no site's own is known).
    """
    names = [s.name for s in sites]
    shares = dict(zip(names, example_shares([declared[n] for n in names],
                                            max_share=strategy.max_share).tolist(), strict=True))
    t0 = time.monotonic()
    try:
        fit = transport.secure_fit(sites, weights, config, keys, shares)
    except AggregationError as exc:
        log.warning("round %d not aggregated: %s", config.round, exc)
        return False, weights, {n: SiteRound(n, Status.DROPPED, "secure-aggregation", str(exc))
                                for n in names}
    seconds = time.monotonic() - t0
    records = {n: SiteRound(n, Status.DROPPED, "timeout" if isinstance(e, TimeoutError)
                            else "error", type(e).__name__, seconds=seconds)
               for n, e in fit.dropped.items()}
    norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64)))
                             for v in fit.delta.values())))
    problem = aggregate_outlier(norm, history, rule)
    aggregated = len(fit.survivors) >= min_sites and problem is None
    for n in fit.survivors:
        status, reason = (Status.REJECTED, "norm") if problem else (Status.ACCEPTED, None)
        records[n] = SiteRound(n, status, reason, problem, num_examples=int(declared[n]),
                               train_loss=fit.loss, seconds=seconds)
    if problem is not None:
        log.warning("round %d not aggregated: %s", config.round, problem)
    elif not aggregated:
        log.warning("round %d not aggregated: %d survivors < min_sites %d", config.round,
                    len(fit.survivors), min_sites)
    if not aggregated:
        return False, weights, records
    history.append(norm)
    new = OrderedDict(
        (k, (v.astype(np.float64) + fit.delta[k]).astype(v.dtype) if k in fit.delta else v)
        for k, v in weights.items())
    return True, new, records


def with_evaluation(record: SiteRound, evaluation: SiteEvaluation | None) -> SiteRound:
    """Add a site's validation loss and AUROC after the round to its record."""
    if evaluation is None:
        return record
    return replace(record, valid_loss=evaluation.loss, valid_auroc=evaluation.auroc)
