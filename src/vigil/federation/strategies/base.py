"""A strategy as the coordinator runs it: which aggregation, which local-training settings.

The aggregation itself is one pure function per strategy module
(:mod:`.fedavg`, :mod:`.fedprox`, :mod:`.fedbn`, :mod:`.robust`); this module
only binds one of them to its options so that the driver (and a Flower
ServerApp) can call ``strategy.aggregate(weights, num_examples)``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.federation.strategies._aggregate import Weights
from vigil.federation.strategies.fedavg import fedavg
from vigil.federation.strategies.fedbn import fedbn, shared_keys
from vigil.federation.strategies.fedprox import fedprox
from vigil.federation.strategies.robust import DEFAULT_TRIM, Robust, robust_aggregate

__all__ = ["DEFAULT_MU", "Strategy", "StrategyName", "make_strategy"]

DEFAULT_MU = 0.01
"""Proximal strength of ``--strategy fedprox`` when ``--mu`` is not given."""


class StrategyName(StrEnum):
    """The federated strategies (``--strategy``)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDBN = "fedbn"


def _never_local(_: str) -> bool:
    return False


@dataclass(frozen=True)
class Strategy:
    """A strategy with its options.

    Parameters
    ----------
    name : StrategyName
    proximal_mu : float, optional
        FedProx proximal strength sent to the sites (0 for the others).
    max_share : float or None, optional
        Cap on one site's share of a weighted average.
    robust : Robust or None, optional
        Replace the weighted mean by a robust aggregator.
    trim_beta : float, optional
        Trimmed fraction per end for ``Robust.TRIMMED_MEAN``.
    """

    name: StrategyName
    proximal_mu: float = 0.0
    max_share: float | None = None
    robust: Robust | None = None
    trim_beta: float = DEFAULT_TRIM

    @property
    def keeps_norm_local(self) -> bool:
        """Whether each site keeps its own normalization (FedBN)."""
        return self.name is StrategyName.FEDBN

    def aggregate(
        self,
        weights: Sequence[Weights],
        num_examples: Sequence[int],
        *,
        is_local: Callable[[str], bool] = _never_local,
    ) -> OrderedDict[str, NDArray[np.float32]]:
        """Aggregate the accepted updates of a round.

        Parameters
        ----------
        weights : sequence of Weights, length n_sites
            Accepted updates (already screened, same names and shapes).
        num_examples : sequence of int, length n_sites
        is_local : callable of str to bool, optional
            The site-local entries (FedBN never aggregates them).

        Returns
        -------
        OrderedDict of str to ndarray (float32)
        """
        if self.robust is not None:
            local = self.keeps_norm_local and bool(weights)
            keys = shared_keys(list(weights[0]), is_local=is_local) if local else None
            return robust_aggregate(weights, self.robust, beta=self.trim_beta, keys=keys)
        if self.name is StrategyName.FEDBN:
            return fedbn(weights, num_examples, is_local=is_local, max_share=self.max_share)
        if self.name is StrategyName.FEDPROX:
            return fedprox(weights, num_examples, max_share=self.max_share)
        return fedavg(weights, num_examples, max_share=self.max_share)

    def describe(self) -> dict[str, Any]:
        """Describe the strategy for a package manifest."""
        return {
            "name": self.name.value,
            "proximal_mu": self.proximal_mu,
            "max_share": self.max_share,
            "robust": None if self.robust is None else self.robust.value,
            "trim_beta": self.trim_beta if self.robust is Robust.TRIMMED_MEAN else None,
            "normalization": "site-local" if self.keeps_norm_local else "pooled site statistics",
        }


def make_strategy(
    name: StrategyName | str,
    *,
    mu: float | None = None,
    robust: Robust | str | None = None,
    max_share: float | None = None,
    trim_beta: float = DEFAULT_TRIM,
) -> Strategy:
    """Validate options and build a :class:`Strategy`.

    Parameters
    ----------
    name : StrategyName or str
        ``fedavg``, ``fedprox`` or ``fedbn``.
    mu : float or None, optional
        FedProx proximal strength (default :data:`DEFAULT_MU`); only for ``fedprox``.
    robust : Robust, str or None, optional
        ``median`` or ``trimmed-mean``.
    max_share : float or None, optional
        Cap on one site's share, in (0, 1].
    trim_beta : float, optional

    Returns
    -------
    Strategy

    Raises
    ------
    ConfigError
        Naming the option, for an unknown name or an out-of-range value.
    """
    try:
        kind = StrategyName(name)
    except ValueError:
        raise ConfigError(
            f"expected --strategy fedavg, fedprox or fedbn; got {name!r}", key="strategy"
        ) from None
    if mu is not None and kind is not StrategyName.FEDPROX:
        raise ConfigError(f"--mu applies to --strategy fedprox only; got {kind.value}", key="mu")
    proximal = DEFAULT_MU if (mu is None and kind is StrategyName.FEDPROX) else (mu or 0.0)
    if not (np.isfinite(proximal) and proximal >= 0):
        raise ConfigError(f"expected --mu >= 0, got {mu}", key="mu")
    if kind is StrategyName.FEDPROX and proximal == 0:
        warnings.warn("FedProx with mu=0 is FedAvg", UserWarning, stacklevel=2)
    try:
        method = None if robust is None else Robust(robust)
    except ValueError:
        raise ConfigError(
            f"expected --robust median or trimmed-mean; got {robust!r}", key="robust"
        ) from None
    if max_share is not None and not 0 < max_share <= 1:
        raise ConfigError(f"expected 0 < max share <= 1, got {max_share}", key="max_share")
    if not 0 <= trim_beta < 0.5:
        raise ConfigError(f"expected 0 <= trim beta < 0.5, got {trim_beta}", key="trim_beta")
    return Strategy(kind, proximal_mu=float(proximal), max_share=max_share, robust=method,
                    trim_beta=trim_beta)
