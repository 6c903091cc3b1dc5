"""A federated site: a hospital that owns its rows and answers ``fit`` and ``evaluate``.

A :class:`Site` keeps its feature rows, labels and validation rows to itself.
What it returns is listed in :mod:`vigil.federation.messages`: weights, counts
and aggregate statistics. It trains on its *train* patients and reports
metrics on its *valid* patients (:func:`vigil.data.patient_split`); its *test*
patients are never given to it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vigil.features import build_features
from vigil.federation.boosting import BoostingSite, Tree, bin_rows, predict_raw, site_quantiles
from vigil.federation.evaluation import evaluate_scores
from vigil.federation.hybrid import HybridTrees, sigmoid
from vigil.federation.messages import (
    FitConfig,
    LogitSums,
    SiteEvaluation,
    SiteStatistics,
    Update,
)
from vigil.federation.privacy import DPSettings, PrivateSite, SiteAccountant, quiet_hooks
from vigil.federation.profile import variable_histograms
from vigil.federation.strategies import Weights
from vigil.federation.tree_privacy import NoisyBoostingSite, TreeNoise

if TYPE_CHECKING:  # pandas is imported by the table's loader only (a ClientApp needs none)
    from vigil.data import PhysioNetTable

__all__ = ["ModelSpec", "Site", "SiteData", "site_data", "site_seed"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the network every site trains (:class:`~vigil.federation.model.SepsisNet`).

    Parameters
    ----------
    hidden : tuple of int, optional
    dropout : float, optional
        Defaults are the centralized reference's
        (:class:`vigil.federation.centralized.TorchSetup`).
    """

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.5


@dataclass(frozen=True, eq=False)
class SiteData:
    """Feature rows of a set of patients.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features)
    y : ndarray of shape (n_rows,)
        ``SepsisLabel``.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets of each patient.
    """

    X: NDArray[np.float32]
    y: NDArray[np.int8]
    starts: NDArray[np.int64]

    @property
    def n_rows(self) -> int:
        """Number of hourly rows."""
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"SiteData(n_patients={self.starts.shape[0] - 1}, n_rows={self.n_rows})"


def site_data(table: PhysioNetTable) -> SiteData:
    """Build the feature rows of every patient of ``table``."""
    return SiteData(X=build_features(table.grid), y=table.labels, starts=table.grid.starts)


def site_seed(seed: int, round_: int, site: str) -> int:
    """Return a site's training seed for a round: a hash of the base seed, round and name."""
    digest = hashlib.sha256(f"{seed}:{round_}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(eq=False)
class Site(PrivateSite):
    """A hospital in the federation.

    Parameters
    ----------
    name : str
    train, valid : SiteData
        Training and validation rows (never the test patients).
    histograms, missing : ndarray
        Fine histograms of the training grid values and missing counts
        (:func:`vigil.federation.profile.variable_histograms`).
    model : ModelSpec, optional
    keep_norm_local : bool, optional
        FedBN: standardize with this site's own statistics, never the
        coordinator's. A site also does so whenever the weights it receives
        carry no normalization (which is how FedBN sends them).
    dp : DPSettings or None, optional
        Train with DP-SGD within this budget.
    target : str, optional
        ``"utility"`` (default) or ``"label"``: what the rows are fitted to
        (:func:`vigil.federation.centralized.training_targets`, the same rule as
        the centralized reference).
    """

    name: str
    train: SiteData
    valid: SiteData
    histograms: NDArray[np.int64]
    missing: NDArray[np.int64]
    model: ModelSpec = field(default_factory=ModelSpec)
    keep_norm_local: bool = False
    dp: DPSettings | None = None
    target: str = "utility"
    _accountant: SiteAccountant | None = field(default=None, init=False, repr=False)
    _norm: tuple[NDArray[np.float32], NDArray[np.float32]] | None = field(
        default=None, init=False, repr=False
    )
    tree_noise: TreeNoise | None = field(default=None, init=False, repr=False)
    """Set before the trees under DP: :meth:`boosting` then sends noisy sums only."""

    @classmethod
    def from_table(cls, name: str, table: PhysioNetTable, **options: object) -> Site:
        """Make a site of a table's train and valid patients (its test patients are dropped).

        Parameters
        ----------
        name : str
        table : PhysioNetTable
            The site's patients.
        **options
            :class:`Site` fields ``model``, ``keep_norm_local``, ``dp``, ``target``.
        """
        from vigil.data import patient_split

        ids = table.grid.patient_ids
        train = table.select(np.flatnonzero(patient_split(ids, "train")))
        valid = table.select(np.flatnonzero(patient_split(ids, "valid")))
        counts, missing = variable_histograms(train.grid.values)
        return cls(name, site_data(train), site_data(valid), counts, missing, **options)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Site({self.name!r}, train={self.train!r}, valid={self.valid!r})"

    def statistics(self) -> SiteStatistics:
        """Aggregate statistics of the training rows (sent once, before round 1)."""
        from vigil.federation.model import feature_sums

        count, total, total_sq = feature_sums(self.train.X)
        return SiteStatistics(
            site=self.name, count=count, positives=int((self.train.y > 0).sum()),
            total=total, total_sq=total_sq, histograms=self.histograms, missing=self.missing,
        )

    def _network(self, weights: Weights):  # type: ignore[no-untyped-def]
        from vigil.federation.model import (
            SepsisNet,
            feature_sums,
            is_norm_key,
            norm_stats_from_sums,
            set_norm,
            set_weights,
        )

        net = SepsisNet(self.train.X.shape[1], hidden=self.model.hidden, dropout=self.model.dropout)
        set_weights(net, weights, strict=False)
        if self.keep_norm_local or not any(is_norm_key(k) for k in weights):
            if self._norm is None:
                self._norm = norm_stats_from_sums(*feature_sums(self.train.X))
            set_norm(net, *self._norm)
        return net

    def local_weights(self, global_weights: Weights) -> OrderedDict[str, NDArray[np.float32]]:
        """Return the complete model this site runs: the global weights with its normalization."""
        from vigil.federation.model import get_weights

        return get_weights(self._network(global_weights))

    def fit(self, global_weights: Weights, config: FitConfig) -> Update:
        """Train the global model on the site's rows for ``config.local_epochs``.

        Parameters
        ----------
        global_weights : Weights
            The coordinator's weights (under FedBN without normalization entries).
        config : FitConfig

        Returns
        -------
        Update
            The trained trainable entries, the example count, the loss and,
            under DP-SGD, the privacy spent so far.
        """
        from vigil.federation.centralized import training_targets
        from vigil.federation.model import get_weights, is_norm_key
        from vigil.federation.training import train_local

        net = self._network(global_weights)
        hook = self.privacy_hook(self.train.n_rows, config)
        y, weight = training_targets(self.train.y, self.train.starts, target=self.target)
        with quiet_hooks():
            result = train_local(
                net, self.train.X, y, epochs=config.local_epochs, batch_size=config.batch_size,
                lr=config.lr, seed=site_seed(config.seed, config.round, self.name),
                sample_weight=weight, weight_decay=config.weight_decay,
                proximal_mu=config.proximal_mu,
                global_weights=global_weights if config.proximal_mu > 0 else None,
                optimizer_hook=hook,
            )
        trained = OrderedDict((k, v) for k, v in get_weights(net).items() if not is_norm_key(k))
        return Update(site=self.name, weights=trained, num_examples=result.n_examples,
                      loss=float(result.loss), privacy=self.privacy_spent())

    def quantiles(self, n_bins: int) -> NDArray[np.float32]:
        """Per-feature quantiles of the training rows, shape (n_features, n_bins - 1)."""
        return site_quantiles(self.train.X, n_bins)

    def boosting(self, edges: Sequence[NDArray[np.float32]]) -> BoostingSite:
        """Return the site's side of the boosting: training rows binned, target ``SepsisLabel``."""
        y = (self.train.y > 0).astype(np.float64)
        if self.tree_noise is not None:  # DP: noisy sums (vigil.federation.tree_privacy)
            return NoisyBoostingSite(self.name, bin_rows(self.train.X, edges), y,
                                     np.ones_like(y), noise=self.tree_noise,
                                     n_edges=[len(e) for e in edges])
        return BoostingSite(self.name, bin_rows(self.train.X, edges), y, np.ones_like(y))

    def logit_sums(self, weights: Weights, base: float, trees: Sequence[Tree]) -> LogitSums:
        """Sum the network's logits and the trees' raw scores, and squares, on validation rows."""
        from vigil.federation.model import predict_logit

        net = predict_logit(self._network(weights), self.valid.X)
        raw = predict_raw(self.valid.X, base, trees)
        return LogitSums(site=self.name, n_rows=self.valid.n_rows, net_sum=float(net.sum()),
                         net_sq=float(net @ net), tree_sum=float(raw.sum()),
                         tree_sq=float(raw @ raw))

    def evaluate_hybrid(self, weights: Weights, part: HybridTrees) -> SiteEvaluation:
        """Score the validation rows with the network and trees fused, and summarize them."""
        from vigil.federation.model import predict_logit

        net = predict_logit(self._network(weights), self.valid.X)
        probability = sigmoid(part.logit(net, self.valid.X))
        return evaluate_scores(self.name, self.valid.y, probability, self.valid.starts)

    def evaluate(self, global_weights: Weights) -> SiteEvaluation:
        """Score the site's validation rows with the model and summarize them."""
        from vigil.federation.model import predict_proba

        probability = predict_proba(self._network(global_weights), self.valid.X)
        return evaluate_scores(self.name, self.valid.y, probability, self.valid.starts)

