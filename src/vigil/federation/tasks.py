"""What a federation trains: the task the driver, strategies and checks serve unchanged.

A task owns the parts of a federation that depend on the model:

- ``initial_weights(statistics, seed=..., keep_local=...)``: the round-1 global
  weights, from the statistics every site declared before round 1;
- ``is_local(name)``: the entries each site keeps under FedBN (never sent,
  never averaged);
- ``is_fixed(name)``: the entries the coordinator sets and the sites never
  send back (they are not trained).

The sites of a task (:class:`vigil.federation.site.Site` for sepsis,
:class:`vigil.federation.image_task.ImagingSite` for images) own their data,
local training, loss and metrics; the driver (:func:`vigil.federation.driver.run_federation`),
the strategies, :func:`~vigil.federation.checks.screen_updates` and dropout handling
see only weights, counts and :class:`~vigil.federation.messages.SiteEvaluation`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vigil.federation.messages import SiteStatistics
from vigil.federation.site import ModelSpec

__all__ = ["SepsisTask", "Task"]


class Task(Protocol):
    """What the driver needs of a task (see the module docstring)."""

    def initial_weights(
        self, statistics: Sequence[SiteStatistics], *, seed: int, keep_local: bool
    ) -> OrderedDict[str, NDArray[np.float32]]:
        """Return the round-1 global weights (without the local entries when ``keep_local``)."""
        ...

    def is_local(self, name: str) -> bool:
        """Whether an entry stays at each site under FedBN."""
        ...

    def is_fixed(self, name: str) -> bool:
        """Whether an entry is set by the coordinator and never sent back by the sites."""
        ...


@dataclass(frozen=True)
class SepsisTask:
    """The sepsis network (:class:`~vigil.federation.model.SepsisNet`) on feature rows.

    Parameters
    ----------
    model : ModelSpec
        Architecture (hidden widths, dropout).

    Notes
    -----
    The standardization ``norm.mean`` / ``norm.std`` is the only normalization:
    under FedAvg and FedProx the coordinator sets it from the pooled
    :class:`SiteStatistics` sums (fixed, not trained); under FedBN it is absent
    from the global weights and each site uses its own.
    """

    model: ModelSpec = field(default_factory=ModelSpec)

    def initial_weights(
        self, statistics: Sequence[SiteStatistics], *, seed: int, keep_local: bool
    ) -> OrderedDict[str, NDArray[np.float32]]:
        """Build a seeded :class:`SepsisNet` with the pooled standardization (none under FedBN)."""
        import torch

        from vigil.federation.driver import pooled_statistics
        from vigil.federation.model import SepsisNet, get_weights, is_norm_key, norm_stats_from_sums
        spec = self.model
        count, _, total, total_sq = pooled_statistics(list(statistics))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            weights = get_weights(SepsisNet(int(total.shape[0]), hidden=spec.hidden,
                                            dropout=spec.dropout))
        if keep_local:
            return OrderedDict((k, v) for k, v in weights.items() if not is_norm_key(k))
        weights["norm.mean"], weights["norm.std"] = norm_stats_from_sums(count, total, total_sq)
        return weights

    def is_local(self, name: str) -> bool:
        """``norm.*``: each site's own standardization under FedBN."""
        from vigil.federation.model import is_norm_key

        return is_norm_key(name)

    def is_fixed(self, name: str) -> bool:
        """``norm.*``: set from pooled statistics, not trained."""
        return self.is_local(name)
