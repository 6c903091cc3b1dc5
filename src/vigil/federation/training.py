"""Plain mini-batch training of a :class:`~vigil.federation.model.SepsisNet`.

The same loop trains the centralized reference model and each federated site.

API (stable; federation builds on it)
-------------------------------------
``train_local(model, X, y, *, epochs, batch_size, lr, seed, pos_weight=None,
proximal_mu=0.0, global_weights=None, sample_weight=None, optimizer_hook=None,
weight_decay=1e-4, on_epoch=None) -> TrainResult(loss, n_examples, steps)``
    Trains ``model`` in place with AdamW on the weighted binary cross-entropy
    of the logits. Deterministic for a seed: the loop runs inside
    ``torch.random.fork_rng`` seeded with ``seed`` (dropout, DP noise) and the
    loader shuffles with its own ``torch.Generator`` seeded with ``seed``; the
    caller's global RNG state is left untouched.
``optimizer_hook(model, optimizer, loader, criterion) -> (model, optimizer, loader, criterion)``
    Called once after the pieces are built and before the first step: the seam
    for differential privacy, e.g. an Opacus ``PrivacyEngine.make_private(...,
    criterion=criterion, grad_sample_mode="ghost")`` (see
    :mod:`vigil.federation.privacy`). The criterion is a :class:`WeightedBCE`;
    a hook may return a wrapper that is called the same way and whose result
    has ``item()`` and ``backward()``.
    The loader is a standard ``DataLoader`` over :class:`RowsDataset` (batches
    are fetched with ``__getitems__``, so Opacus' Poisson sampler works on it);
    the loss is a per-batch MEAN, which is Opacus' default ``loss_reduction``.
``make_loader(X, y, *, batch_size, seed, sample_weight=None)`` and
``make_optimizer(model, *, lr, weight_decay=1e-4)``
    The two pieces ``train_local`` builds, public for callers that run their own loop.
``proximal_term(model, global_tensors, mu)``
    FedProx's ``(mu / 2) * ||w - w_global||^2`` over the trainable parameters
    (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
    eq. 2). Normalization buffers are not parameters, so they are never pulled.
    Under DP-SGD (a hook that wraps the criterion) the term is not added: the
    clipped per-row gradients come from the data term only.

The loss of a batch ``B`` with labels ``y``, logits ``z``, weights ``w`` and
positive-class weight ``p`` is ``(1/|B|) sum_i w_i * BCE(z_i, y_i; p)`` where
``BCE(z, y; p) = -(p y log s(z) + (1 - y) log(1 - s(z)))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vigil.core.errors import DataError
from vigil.federation.model import unwrap

__all__ = [
    "Criterion",
    "EpochCallback",
    "OptimizerHook",
    "RowsDataset",
    "TrainResult",
    "WeightedBCE",
    "make_loader",
    "make_optimizer",
    "proximal_term",
    "train_local",
]

Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]
"""``(logits, labels, weights) -> loss``: the batch loss (:class:`WeightedBCE` or a DP wrapper)."""

OptimizerHook = Callable[
    [nn.Module, torch.optim.Optimizer, DataLoader, Criterion],
    tuple[nn.Module, torch.optim.Optimizer, DataLoader, Criterion],
]
"""``(model, optimizer, loader, criterion) -> (model, optimizer, loader, criterion)``."""
EpochCallback = Callable[[int, float], bool | None]
"""``(epoch, mean_loss) -> stop``: called after each epoch (0-based); return True to stop early."""


class WeightedBCE(nn.Module):
    """Row-weighted binary cross-entropy of logits, the loss every model here trains on.

    ``reduction`` is ``"mean"`` (the batch mean, what the loop back-propagates)
    or ``"none"`` (per row, what Opacus' ghost clipping sets while it computes
    per-row gradient norms).

    Parameters
    ----------
    pos_weight : float or None
        Weight of the positive class (``torch`` ``pos_weight``); None means 1.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.reduction = "mean"
        self.pos_weight = None if pos_weight is None else torch.tensor(float(pos_weight))

    def forward(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Return the loss: shape () for ``"mean"``, (b,) for ``"none"``.

        Parameters
        ----------
        logits, y, w : Tensor of shape (b,)
            Logits, 0/1 labels, row weights.
        """
        per_row = F.binary_cross_entropy_with_logits(
            logits, y, weight=w, pos_weight=self.pos_weight, reduction="none")
        if self.reduction == "none":
            return per_row
        return per_row.sum() / max(int(per_row.shape[0]), 1)


@dataclass(frozen=True)
class TrainResult:
    """What a training run reports.

    Attributes
    ----------
    loss : float
        Mean data loss (without the proximal term) over the rows of the last epoch.
    n_examples : int
        Rows trained on (the weight of this update in FedAvg).
    steps : int
        Optimizer steps taken.
    """

    loss: float
    n_examples: int
    steps: int


class RowsDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Feature rows, labels and weights as tensors, fetched a whole batch at a time.

    Parameters
    ----------
    X : ndarray of shape (n, n_features)
    y : ndarray of shape (n,)
    w : ndarray of shape (n,)
    """

    def __init__(
        self, X: NDArray[np.floating], y: NDArray[np.number], w: NDArray[np.floating]
    ) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        self.w = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i], self.w[i]

    def __getitems__(self, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fetch a whole batch at once (``DataLoader`` uses this instead of per-row fetching)."""
        index = torch.as_tensor(idx, dtype=torch.long)
        return self.x[index], self.y[index], self.w[index]


def _batch_as_is(
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch


def _check_rows(
    X: NDArray[np.floating], y: NDArray[np.number], sample_weight: NDArray[np.floating] | None
) -> NDArray[np.float32]:
    if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
        raise DataError(
            "expected features (n, n_features) with n > 0 and labels (n,); "
            f"got {X.shape} and {y.shape}"
        )
    if sample_weight is None:
        return np.ones(X.shape[0], dtype=np.float32)
    w = np.asarray(sample_weight, dtype=np.float32)
    if w.shape != y.shape or not np.all(np.isfinite(w)) or (w < 0).any():
        raise DataError(
            f"expected finite non-negative sample weights of shape {y.shape}; got shape {w.shape}"
        )
    return w


def make_loader(
    X: NDArray[np.floating],
    y: NDArray[np.number],
    *,
    batch_size: int,
    seed: int,
    sample_weight: NDArray[np.floating] | None = None,
) -> DataLoader:
    """Make a shuffling loader of ``(x, y, w)`` batches, reproducible for a seed.

    Parameters
    ----------
    X : ndarray of shape (n, n_features)
    y : ndarray of shape (n,)
        0/1 labels.
    batch_size : int
    seed : int
        Seeds the loader's own ``torch.Generator``.
    sample_weight : ndarray of shape (n,), optional
        Non-negative row weights (default 1).

    Returns
    -------
    DataLoader
        Yields tensors of shapes (b, n_features), (b,), (b,).
    """
    w = _check_rows(np.asarray(X), np.asarray(y), sample_weight)
    return DataLoader(
        RowsDataset(X, y, w),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_batch_as_is,
    )


def make_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float = 1e-4
) -> torch.optim.Optimizer:
    """Make AdamW (Loshchilov & Hutter, ICLR 2019) over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def proximal_term(
    model: nn.Module, global_tensors: Mapping[str, torch.Tensor], mu: float
) -> torch.Tensor:
    """FedProx's ``(mu / 2) * sum ||w - w_global||^2`` over trainable parameters (Li et al. 2020).

    Parameters
    ----------
    model : nn.Module
        Possibly inside an Opacus wrapper.
    global_tensors : mapping of str to Tensor
        The round's global weights, named like :func:`~vigil.federation.model.get_weights`.
    mu : float

    Returns
    -------
    Tensor
        A scalar.
    """
    total = torch.zeros(())
    for name, p in unwrap(model).named_parameters():
        if p.requires_grad:
            total = total + torch.sum((p - global_tensors[name]) ** 2)
    return 0.5 * mu * total


def train_local(
    model: nn.Module,
    X: NDArray[np.floating],
    y: NDArray[np.number],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    pos_weight: float | None = None,
    proximal_mu: float = 0.0,
    global_weights: Mapping[str, NDArray[np.floating]] | None = None,
    sample_weight: NDArray[np.floating] | None = None,
    optimizer_hook: OptimizerHook | None = None,
    weight_decay: float = 1e-4,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train ``model`` in place by mini-batch AdamW on weighted binary cross-entropy.

    Parameters
    ----------
    model : nn.Module
        A :class:`~vigil.federation.model.SepsisNet` (its ``norm`` already set).
    X : ndarray of shape (n, n_features)
    y : ndarray of shape (n,)
        0/1 labels.
    epochs, batch_size : int
    lr : float
        AdamW learning rate.
    seed : int
        Makes the run reproducible (shuffling, dropout, DP noise).
    pos_weight : float, optional
        Weight of the positive class in the loss (``torch`` ``pos_weight``).
    proximal_mu : float, optional
        FedProx ``mu``; with ``mu > 0``, ``global_weights`` is required.
    global_weights : mapping of str to ndarray, optional
        The round's global weights; defaults to the model's weights at the start.
    sample_weight : ndarray of shape (n,), optional
        Non-negative row weights.
    optimizer_hook : OptimizerHook, optional
        Wraps ``(model, optimizer, loader)`` before training (e.g. Opacus).
    weight_decay : float, optional
        AdamW decoupled weight decay.
    on_epoch : EpochCallback, optional
        Called after each epoch with ``(epoch, mean_loss)``; returning True stops.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError
        If shapes or weights are wrong.
    ValueError
        If ``epochs`` or ``batch_size`` is not positive or ``proximal_mu`` is negative.
    """
    if epochs < 1 or batch_size < 1 or proximal_mu < 0:
        raise ValueError(
            f"expected epochs >= 1, batch_size >= 1 and proximal_mu >= 0; got epochs={epochs}, "
            f"batch_size={batch_size}, proximal_mu={proximal_mu}"
        )
    X = np.asarray(X)
    y = np.asarray(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        anchor: dict[str, torch.Tensor] = {}
        if proximal_mu > 0:
            source = global_weights if global_weights is not None else {
                k: v.detach().clone() for k, v in unwrap(model).named_parameters()
            }
            anchor = {k: torch.as_tensor(np.asarray(v, dtype=np.float32))
                      for k, v in source.items()}
        loader = make_loader(X, y, batch_size=batch_size, seed=seed, sample_weight=sample_weight)
        optimizer = make_optimizer(model, lr=lr, weight_decay=weight_decay)
        criterion: Criterion = WeightedBCE(pos_weight)
        if optimizer_hook is not None:
            model, optimizer, loader, criterion = optimizer_hook(
                model, optimizer, loader, criterion)
        model.train()
        steps = 0
        epoch_loss = float("nan")
        for epoch in range(epochs):
            total, rows = 0.0, 0
            for xb, yb, wb in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(xb), yb, wb)
                n = int(xb.shape[0])
                total += float(loss.item()) * n
                rows += n
                if anchor and isinstance(loss, torch.Tensor):  # not under DP: see the module doc
                    loss = loss + proximal_term(model, anchor, proximal_mu)
                loss.backward()
                optimizer.step()
                steps += 1
            epoch_loss = total / max(rows, 1)
            if on_epoch is not None and on_epoch(epoch, epoch_loss):
                break
        model.eval()
    return TrainResult(loss=epoch_loss, n_examples=int(X.shape[0]), steps=steps)
