"""Metrics of a multi-class image model: macro one-vs-rest AUC, accuracy, class counts.

As the MedMNIST v2 paper computes them for its multi-class and ordinal tasks
(Yang et al., Sci Data 10:41, 2023; ``medmnist.evaluator.getAUC`` / ``getACC``):
the AUC is the mean over the classes of the AUC of "class k vs the rest" scored by
``p_k`` (each a Mann-Whitney statistic with ties one half, Hanley & McNeil 1982,
:func:`vigil.features.metrics.auroc`), and the accuracy is that of the arg-max
class. numpy only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.features.metrics import auroc

__all__ = ["accuracy", "class_counts", "cross_entropy", "macro_ovr_auroc"]


def _check(labels: NDArray[np.integer], probabilities: NDArray[np.floating]
           ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size or p.shape[1] < 2:
        raise DataError(f"expected probabilities (n, classes >= 2) and n labels, got "
                        f"{p.shape} and {y.size} labels")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1] or not np.all(y == np.rint(y))):
        raise DataError(f"expected integer labels in [0, {p.shape[1] - 1}], got values in "
                        f"[{y.min()}, {y.max()}]")
    return y.astype(np.int64), p


def macro_ovr_auroc(labels: NDArray[np.integer], probabilities: NDArray[np.floating]) -> float:
    """Macro one-vs-rest AUC: mean over classes k of AUC(label == k, p_k).

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        Classes 0 .. K-1.
    probabilities : ndarray of float, shape (n, K)
        Class scores (softmax probabilities).

    Returns
    -------
    float
        The mean over the classes present with at least one image of another class
        (a class with no image, or with every image, has no AUC and is left out;
        scikit-learn's ``roc_auc_score(multi_class="ovr")`` raises then); NaN if none.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[.8, .1, .1], [.2, .7, .1], [.3, .3, .4], [.1, .2, .7]])
    >>> macro_ovr_auroc(np.array([0, 1, 2, 2]), p)
    1.0
    """
    y, p = _check(labels, probabilities)
    values = [auroc((y == k).astype(np.int8), p[:, k]) for k in range(p.shape[1])
              if 0 < int((y == k).sum()) < y.size]
    return float(np.mean(values)) if values else float("nan")


def accuracy(labels: NDArray[np.integer], probabilities: NDArray[np.floating]) -> float:
    """Share of images whose arg-max class (the first on ties) is the label; NaN when empty.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
    probabilities : ndarray of float, shape (n, K)
    """
    y, p = _check(labels, probabilities)
    return float(np.mean(np.argmax(p, axis=1) == y)) if y.size else float("nan")


def class_counts(labels: NDArray[np.integer], classes: int) -> list[int]:
    """Count the images of each class 0 .. classes-1."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return np.bincount(y, minlength=classes)[:classes].astype(int).tolist()


def cross_entropy(labels: NDArray[np.integer], probabilities: NDArray[np.floating]) -> float:
    """Mean multi-class log loss ``-mean(log p_label)``, p clipped to ``[1e-7, 1]``.

    NaN when there is no image.
    """
    y, p = _check(labels, probabilities)
    if not y.size:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-7, 1.0))))
