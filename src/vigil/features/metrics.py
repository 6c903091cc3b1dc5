"""Discrimination and threshold metrics over hourly rows, overall and per hospital.

AUROC is the Mann-Whitney statistic with ties counted one half (Hanley &
McNeil, Radiology 143:29-36, 1982). AUPRC is average precision, the step-function
area ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (the same
definition as scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.features.utility import normalized_utility

__all__ = [
    "Evaluation",
    "auprc",
    "auroc",
    "evaluate",
    "evaluate_by_hospital",
    "hospital_subsets",
]


def _single_class(y: NDArray[np.bool_], name: str) -> bool:
    if y.all() or not y.any():
        warnings.warn(
            f"{name}: labels are all {int(y[0]) if y.size else 'absent'}; it is NaN",
            RuntimeWarning,
            stacklevel=3,
        )
        return True
    return False


def auroc(labels: NDArray[np.integer], scores: NDArray[np.floating]) -> float:
    """Area under the ROC curve.

    Parameters
    ----------
    labels : ndarray of shape (n,)
        0/1 outcomes.
    scores : ndarray of shape (n,)
        Higher means more likely positive.

    Returns
    -------
    float
        NaN (with a warning) if only one class is present.

    Examples
    --------
    >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(labels) > 0
    if _single_class(y, "AUROC"):
        return float("nan")
    from scipy.stats import rankdata  # here: importing scipy.stats costs the runtime ~50 MB

    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(labels: NDArray[np.integer], scores: NDArray[np.floating]) -> float:
    """Average precision (area under the precision-recall step curve).

    Parameters
    ----------
    labels : ndarray of shape (n,)
    scores : ndarray of shape (n,)

    Returns
    -------
    float
        NaN (with a warning) if only one class is present.

    Examples
    --------
    >>> round(auprc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])), 4)
    0.8333
    """
    y = np.asarray(labels) > 0
    if _single_class(y, "AUPRC"):
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s = np.asarray(scores, dtype=np.float64)[order]
    tp = np.cumsum(y[order])
    last = np.r_[s[1:] != s[:-1], True]
    tp = tp[last].astype(np.float64)
    k = np.flatnonzero(last) + 1.0
    precision = tp / k
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Evaluation:
    """Hour-level metrics of a set of predictions.

    Attributes
    ----------
    auroc, auprc : float
        From probabilities.
    utility : float
        Normalized PhysioNet utility of the binary predictions.
    threshold : float
        Probability at or above which a row is predicted positive.
    sensitivity, specificity, ppv : float
        Hour level, of the binary predictions.
    n_patients, n_rows : int
    """

    auroc: float
    auprc: float
    utility: float
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    n_patients: int
    n_rows: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for JSON."""
        return asdict(self)


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def evaluate(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    prediction: NDArray[np.integer],
    starts: NDArray[np.int64],
    *,
    threshold: float,
) -> Evaluation:
    """Hour-level metrics of hourly probabilities and predictions.

    Parameters
    ----------
    labels, probability, prediction : ndarray of shape (n_rows,)
        Rows grouped by patient, in time order.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets of each patient.
    threshold : float
        Reported as is (the threshold that made ``prediction``).

    Returns
    -------
    Evaluation
    """
    y = np.asarray(labels) > 0
    p = np.asarray(prediction) > 0
    tp, fp = int((y & p).sum()), int((~y & p).sum())
    fn, tn = int((y & ~p).sum()), int((~y & ~p).sum())
    return Evaluation(
        auroc=auroc(y, probability),
        auprc=auprc(y, probability),
        utility=normalized_utility(y.astype(np.int8), p.astype(np.int8), starts).normalized,
        threshold=float(threshold),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        n_patients=int(starts.shape[0] - 1),
        n_rows=int(y.size),
    )


def evaluate_by_hospital(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    prediction: NDArray[np.integer],
    starts: NDArray[np.int64],
    hospital: NDArray[np.str_],
    *,
    threshold: float,
) -> dict[str, Any]:
    """Overall metrics plus ``by_hospital``: one :class:`Evaluation` per hospital.

    Parameters
    ----------
    labels, probability, prediction, hospital : ndarray of shape (n_rows,)
    starts : ndarray of shape (n_patients + 1,)
    threshold : float

    Returns
    -------
    dict
        The overall evaluation's fields and ``by_hospital`` mapping each
        hospital to a dict of the same fields.
    """
    out = evaluate(labels, probability, prediction, starts, threshold=threshold).to_dict()
    out["by_hospital"] = {
        h: evaluate(
            labels[rows], probability[rows], prediction[rows], sub_starts, threshold=threshold
        ).to_dict()
        for h, rows, sub_starts in hospital_subsets(starts, hospital)
    }
    return out


def hospital_subsets(
    starts: NDArray[np.integer], hospital: NDArray[np.str_]
) -> Iterator[tuple[str, NDArray[np.bool_], NDArray[np.int64]]]:
    """Each hospital's rows and patient offsets, hospitals in sorted order.

    Parameters
    ----------
    starts : ndarray of shape (n_patients + 1,)
    hospital : ndarray of shape (n_rows,)
        Constant within a patient.

    Yields
    ------
    hospital : str
    rows : ndarray of shape (n_rows,)
        True on the hospital's rows.
    starts : ndarray of shape (n_hospital_patients + 1,)
        Offsets of its patients within those rows.
    """
    starts = np.asarray(starts, dtype=np.int64)
    patient_hospital = np.asarray(hospital)[starts[:-1]]
    lengths = np.diff(starts)
    for h in sorted(set(patient_hospital.tolist())):
        keep = patient_hospital == h
        yield (str(h), np.repeat(keep, lengths),
               np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64))
