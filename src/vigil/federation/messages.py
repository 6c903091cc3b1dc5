"""What travels between a site and the coordinator: configs in, aggregates out.

A site sends exactly three kinds of message, and each is weights, counts or
aggregate statistics, never a row:

- :class:`SiteStatistics` once, before round 1: row and positive counts, the
  per-feature sum and sum of squares (for the pooled standardization) and
  per-variable histograms on fixed bins (for the drift reference profile);
- :class:`Update` after each local training: the trainable weights, the
  example count, the mean training loss and the privacy spent so far;
- :class:`SiteEvaluation` after each aggregation: validation counts, loss,
  AUROC, and score and utility histograms on the fixed score bins.

When trees are grown after the rounds (:mod:`vigil.federation.hybrid`) a site
also sends, once, per-feature quantiles of its training rows (bin edges) and
its weighted label counts; per tree level, gradient and hessian sums per
node, feature and bin (:mod:`vigil.federation.boosting`); and once
:class:`LogitSums`, the sums that standardize the two models' scores.

:meth:`payload` of each is the complete wire content (arrays and scalars); a
test walks it to hold that nothing row-shaped ever leaves a site.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FitConfig", "LogitSums", "PrivacySpent", "SiteEvaluation", "SiteStatistics", "Update"]

Scalar = int | float
Payload = dict[str, "NDArray[Any] | Scalar | None"]


@dataclass(frozen=True)
class FitConfig:
    """What the coordinator asks of every site in a round.

    Parameters
    ----------
    round : int
        1-based round number.
    total_rounds : int
        Rounds planned (a site with a privacy budget spreads it over them).
    seed : int
        Base seed; each site derives its own from it, the round and its name.
    local_epochs, batch_size : int
    lr, weight_decay : float
        Local AdamW learning rate and decoupled weight decay.
    proximal_mu : float
        FedProx strength (0: plain local training).
    """

    round: int
    total_rounds: int
    seed: int
    local_epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-2
    proximal_mu: float = 0.0

    def to_dict(self) -> dict[str, Scalar]:
        """Plain values, e.g. for a Flower ``ConfigRecord``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class PrivacySpent:
    """Record-level DP-SGD privacy a site has spent so far (Opacus RDP accountant).

    Attributes
    ----------
    epsilon, delta : float
        The guarantee: the site's training rows are (epsilon, delta)-DP.
    noise_multiplier, max_grad_norm : float
        DP-SGD parameters (Abadi et al., CCS 2016).
    sample_rate : float
        Poisson sampling rate of a batch.
    steps : int
        Noisy steps taken over all rounds.
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int

    def to_dict(self) -> dict[str, Scalar]:
        """Plain values, for the manifest."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class Update:
    """A site's answer to ``fit``.

    Attributes
    ----------
    site : str
    weights : OrderedDict of str to ndarray
        The trained weights, trainable entries only, each of its parameter's shape.
    num_examples : int
        Training rows (its weight in FedAvg).
    loss : float
        Mean training loss of the last local epoch.
    privacy : PrivacySpent or None
        Privacy spent so far, under DP-SGD.
    """

    site: str
    weights: OrderedDict[str, NDArray[np.float32]]
    num_examples: int
    loss: float
    privacy: PrivacySpent | None = None

    def __repr__(self) -> str:
        return (
            f"Update(site={self.site!r}, n_entries={len(self.weights)}, "
            f"num_examples={self.num_examples})"
        )

    def payload(self) -> Payload:
        """Return the complete wire content."""
        out: Payload = {f"weights/{k}": v for k, v in self.weights.items()}
        out |= {"num_examples": self.num_examples, "loss": self.loss}
        if self.privacy is not None:
            out |= {f"privacy/{k}": v for k, v in self.privacy.to_dict().items()}
        return out


@dataclass(frozen=True, eq=False)
class SiteStatistics:
    """Aggregate statistics of a site's training rows.

    Attributes
    ----------
    site : str
    count, positives : int
        Training rows, and those labelled 1.
    total, total_sq : ndarray of shape (n_features,)
        Per-feature sum and sum of squares (float64).
    histograms : ndarray of shape (n_variables, n_fine_bins)
        Counts of measured values of each grid variable on the fixed bins of
        :mod:`vigil.federation.profile`.
    missing : ndarray of shape (n_variables,)
        Rows where each variable was not measured.
    """

    site: str
    count: int
    positives: int
    total: NDArray[np.float64]
    total_sq: NDArray[np.float64]
    histograms: NDArray[np.int64]
    missing: NDArray[np.int64]

    def __repr__(self) -> str:
        return f"SiteStatistics(site={self.site!r}, count={self.count})"

    def payload(self) -> Payload:
        """Return the complete wire content."""
        return {
            "count": self.count,
            "positives": self.positives,
            "total": self.total,
            "total_sq": self.total_sq,
            "histograms": self.histograms,
            "missing": self.missing,
        }


@dataclass(frozen=True, eq=False)
class SiteEvaluation:
    """A site's answer to ``evaluate``: metrics of a model on its validation rows.

    Attributes
    ----------
    site : str
    n_rows, n_positive : int
        Validation rows and positive rows.
    loss, auroc : float
        Log loss and AUROC on the site's validation rows (NaN if one class).
    positive_hist, negative_hist : ndarray of shape (n_score_bins,)
        Counts of positive and negative rows per score bin
        (:data:`vigil.federation.evaluation.SCORE_EDGES`).
    utility_gain : ndarray of shape (n_score_bins,)
        Sum over the rows of each score bin of ``U(predict 1) - U(predict 0)``.
    utility_best, utility_inaction : float
        The site's ``U_best`` and ``U_inaction`` (PhysioNet 2019 utility).
    """

    site: str
    n_rows: int
    n_positive: int
    loss: float
    auroc: float
    positive_hist: NDArray[np.int64]
    negative_hist: NDArray[np.int64]
    utility_gain: NDArray[np.float64]
    utility_best: float
    utility_inaction: float

    def __repr__(self) -> str:
        return f"SiteEvaluation(site={self.site!r}, n_rows={self.n_rows}, auroc={self.auroc:.4f})"

    def payload(self) -> Payload:
        """Return the complete wire content."""
        return {
            "n_rows": self.n_rows,
            "n_positive": self.n_positive,
            "loss": self.loss,
            "auroc": self.auroc,
            "positive_hist": self.positive_hist,
            "negative_hist": self.negative_hist,
            "utility_gain": self.utility_gain,
            "utility_best": self.utility_best,
            "utility_inaction": self.utility_inaction,
        }


@dataclass(frozen=True)
class LogitSums:
    """A site's sums of two models' scores over its validation rows.

    Attributes
    ----------
    site : str
    n_rows : int
    net_sum, net_sq : float
        Sum and sum of squares of the network's logits.
    tree_sum, tree_sq : float
        Sum and sum of squares of the trees' raw scores.
    """

    site: str
    n_rows: int
    net_sum: float
    net_sq: float
    tree_sum: float
    tree_sq: float

    def payload(self) -> Payload:
        """Return the complete wire content."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "site"}
