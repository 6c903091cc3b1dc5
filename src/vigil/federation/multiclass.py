"""The multi-class imaging model's loss, scores and validation summary (torch side).

A :class:`~vigil.federation.image_task.CNNSpec` with ``classes > 2`` (RetinaMNIST's
five diabetic-retinopathy grades) has one logit per class: it trains on
row-weighted softmax cross-entropy (:class:`WeightedCrossEntropy`, swapped into the
shared :func:`~vigil.federation.training.train_local` through its
``optimizer_hook``) and scores with the softmax (:func:`predict_classes`).

Its validation summary travels as the usual :class:`SiteEvaluation`
(:func:`multiclass_evaluation`) so the driver runs unchanged:

- ``auroc``: the site's macro one-vs-rest AUC (:func:`vigil.features.multiclass.macro_ovr_auroc`);
- ``loss``: the multi-class log loss;
- ``positive_hist`` / ``negative_hist``: the score ``1 - p_0`` ("any retinopathy")
  binned for grades > 0 and grade 0, so the pooled AUC the driver reports is the
  binned AUC of *any DR vs none* (the macro AUC does not pool from histograms);
- the utility: every correct arg-max decision counts 1, put in the last score bin,
  with ``utility_best = n`` and ``utility_inaction = 0``: the pooled normalized
  utility is then exactly the pooled arg-max **accuracy**, which is what the driver
  keeps the best round by. No threshold is involved (the decision is the arg-max).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from vigil.federation.evaluation import SCORE_EDGES, score_bins
from vigil.federation.messages import SiteEvaluation

__all__ = ["WeightedCrossEntropy", "cross_entropy_hook", "multiclass_evaluation",
           "predict_classes"]


class WeightedCrossEntropy(nn.Module):
    """Row-weighted softmax cross-entropy of logits (b, K) against integer labels (b,).

    Same contract as :class:`~vigil.federation.training.WeightedBCE`: ``reduction``
    ``"mean"`` (sum of weighted rows / rows) or ``"none"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Return the loss; ``y`` holds the class indices as floats (the loader's labels)."""
        per_row = F.cross_entropy(logits, y.long(), reduction="none") * w
        if self.reduction == "none":
            return per_row
        return per_row.sum() / max(int(per_row.shape[0]), 1)


def cross_entropy_hook(classes: int, then: Callable[..., tuple[Any, Any, Any, Any]] | None = None
                       ) -> Callable[..., tuple[Any, Any, Any, Any]]:
    """Return a ``train_local`` ``optimizer_hook`` training on :class:`WeightedCrossEntropy`.

    ``then`` (e.g. the DP-SGD hook of :meth:`~vigil.federation.privacy.PrivateSite.privacy_hook`)
    runs after the swap, so it wraps the cross-entropy instead of the binary loss.
    """

    def hook(model: Any, optimizer: Any, loader: Any, criterion: Any
             ) -> tuple[Any, Any, Any, Any]:
        del criterion  # the binary loss is replaced
        swapped = (model, optimizer, loader, WeightedCrossEntropy())
        return swapped if then is None else then(*swapped)

    hook.classes = classes  # type: ignore[attr-defined]
    return hook


def predict_classes(model: nn.Module, x: NDArray[np.float32], *, batch_size: int = 512
                    ) -> NDArray[np.float64]:
    """Softmax probabilities (n, K) of model inputs (n, channels, size, size) or flat rows."""
    was_training = model.training
    model.eval()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    parts = []
    try:
        with torch.no_grad():
            for lo in range(0, arr.shape[0], batch_size):
                logits = model(torch.from_numpy(arr[lo:lo + batch_size]))
                parts.append(torch.softmax(logits, dim=1).double().numpy())
    finally:
        model.train(was_training)
    classes = int(getattr(getattr(model, "spec", None), "classes", 0))
    return np.concatenate(parts) if parts else np.zeros((0, classes), dtype=np.float64)


def multiclass_evaluation(site: str, labels: NDArray[np.integer],
                          probabilities: NDArray[np.floating]) -> SiteEvaluation:
    """Summarize a site's validation predictions of a multi-class model (module docstring).

    Parameters
    ----------
    site : str
    labels : ndarray of int, shape (n,)
    probabilities : ndarray of float, shape (n, K)

    Returns
    -------
    SiteEvaluation
        Counts, sums and scalars only.
    """
    from vigil.features.multiclass import accuracy, cross_entropy, macro_ovr_auroc

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    n_bins = SCORE_EDGES.size + 1
    bins = score_bins(1.0 - p[:, 0]) if y.size else np.zeros(0, dtype=np.int64)
    positive = np.bincount(bins[y > 0], minlength=n_bins).astype(np.int64)
    negative = np.bincount(bins[y == 0], minlength=n_bins).astype(np.int64)
    gain = np.zeros(n_bins, dtype=np.float64)
    gain[-1] = float(round(accuracy(y, p) * y.size)) if y.size else 0.0
    return SiteEvaluation(
        site=site, n_rows=int(y.size), n_positive=int((y > 0).sum()),
        loss=cross_entropy(y, p), auroc=macro_ovr_auroc(y, p) if y.size else float("nan"),
        positive_hist=positive, negative_hist=negative, utility_gain=gain,
        utility_best=float(y.size), utility_inaction=0.0,
    )
