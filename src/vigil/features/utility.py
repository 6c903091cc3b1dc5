"""The PhysioNet/CinC 2019 normalized utility score.

Implemented from the specification (Reyna et al., Crit Care Med
48(2):210-217, 2020; parameters of the official scorer as written down in
``research/physionet2019.md``), not from the official code.

Time is the 0-based row index within a patient. For a septic patient,
``t_sepsis`` is the index of the first row with ``SepsisLabel = 1`` plus 6
(labels are already shifted 6 h early); ``d = t - t_sepsis``.

================================  =======================================
septic, predicted 1, d <= -6      ``max((d + 12) / 6, -0.05)``
septic, predicted 1, -6 < d <= 3  ``1/3 - d/9``
septic, predicted 0, d <= -6      ``0``
septic, predicted 0, -6 < d <= 3  ``-2 (d + 6) / 9``
septic, d > 3                     ``0`` (ignored)
not septic                        ``-0.05`` if predicted 1, else ``0``
================================  =======================================

``U_best`` predicts 1 exactly where ``-12 <= d <= 3`` of septic patients,
``U_inaction`` predicts 0 everywhere; the normalized utility is
``(U - U_inaction) / (U_best - U_inaction)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["UtilityResult", "best_utility_threshold", "normalized_utility", "row_utilities"]

DT_EARLY, DT_OPTIMAL, DT_LATE = -12, -6, 3
U_FP = -0.05


@dataclass(frozen=True)
class UtilityResult:
    """Utility totals.

    Attributes
    ----------
    observed, best, inaction : float
        ``U`` of the predictions, of the ideal predictor and of predicting 0 everywhere.
    normalized : float
        ``(observed - inaction) / (best - inaction)``; NaN when best equals inaction.
    """

    observed: float
    best: float
    inaction: float
    normalized: float


def _offsets(
    labels: NDArray[np.integer], starts: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Per row: ``d = t - t_sepsis`` (NaN-free; arbitrary for non-septic) and septic flag."""
    n = labels.shape[0]
    lengths = np.diff(starts)
    row_start = np.repeat(starts[:-1], lengths)
    t = np.arange(n) - row_start
    pos = np.flatnonzero(labels > 0)
    first = np.full(lengths.shape[0], -1, dtype=np.int64)
    if pos.size:
        patient_of_pos = np.searchsorted(starts, pos, side="right") - 1
        # positions ascend, so the first occurrence per patient is its first positive row
        uniq, idx = np.unique(patient_of_pos, return_index=True)
        first[uniq] = pos[idx] - starts[uniq]
    first_row = np.repeat(first, lengths)
    septic = first_row >= 0
    d = (t - (first_row - DT_OPTIMAL)).astype(np.float64)
    return d, septic


def row_utilities(
    labels: NDArray[np.integer], starts: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Compute the utility of predicting 1 and of predicting 0 at every row.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel``, rows grouped by patient in time order.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets of each patient.

    Returns
    -------
    u_pos, u_neg : ndarray of shape (n_rows,)

    Examples
    --------
    >>> u1, u0 = row_utilities(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 6]))
    >>> round(float(u1[2:].sum()), 4)
    3.3889
    """
    d, septic = _offsets(labels, starts)
    early = d <= DT_OPTIMAL
    u_pos = np.where(
        early,
        np.maximum((d - DT_EARLY) / (DT_OPTIMAL - DT_EARLY), U_FP),
        (DT_LATE - d) / (DT_LATE - DT_OPTIMAL),
    )
    u_neg = np.where(early, 0.0, -2.0 * (d - DT_OPTIMAL) / (DT_LATE - DT_OPTIMAL))
    late = d > DT_LATE
    u_pos = np.where(septic, np.where(late, 0.0, u_pos), U_FP)
    u_neg = np.where(septic, np.where(late, 0.0, u_neg), 0.0)
    return u_pos, u_neg


def normalized_utility(
    labels: NDArray[np.integer], predictions: NDArray[np.integer], starts: NDArray[np.int64]
) -> UtilityResult:
    """Compute the Challenge's normalized utility of binary hourly predictions.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel``, rows grouped by patient in time order.
    predictions : ndarray of shape (n_rows,)
        0/1 predictions.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets of each patient.

    Returns
    -------
    UtilityResult
    """
    u_pos, u_neg = row_utilities(labels, starts)
    pred = np.asarray(predictions) > 0
    observed = float(np.where(pred, u_pos, u_neg).sum())
    d, septic = _offsets(labels, starts)
    ideal = septic & (d >= DT_EARLY) & (d <= DT_LATE)
    best = float(np.where(ideal, u_pos, u_neg).sum())
    inaction = float(u_neg.sum())
    denom = best - inaction
    normalized = (observed - inaction) / denom if denom != 0 else float("nan")
    return UtilityResult(observed=observed, best=best, inaction=inaction, normalized=normalized)


def best_utility_threshold(
    labels: NDArray[np.integer], scores: NDArray[np.floating], starts: NDArray[np.int64]
) -> tuple[float, float]:
    """Find the threshold on ``scores`` that maximizes the normalized utility.

    Predicting ``scores >= threshold``, the utility changes by ``u_pos - u_neg``
    for every row that turns positive, so one sort and a cumulative sum give
    the utility at every distinct threshold.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
    scores : ndarray of shape (n_rows,)
    starts : ndarray of shape (n_patients + 1,)

    Returns
    -------
    threshold, utility : float
        The best threshold (a value of ``scores``) and its normalized utility.
    """
    u_pos, u_neg = row_utilities(labels, starts)
    ref = normalized_utility(labels, np.zeros_like(labels), starts)
    denom = ref.best - ref.inaction
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s = np.asarray(scores, dtype=np.float64)[order]
    gain = np.cumsum((u_pos - u_neg)[order])
    # only cut between distinct scores: the last index of each run of equal scores
    last_of_run = np.r_[s[1:] != s[:-1], True]
    k = int(np.argmax(np.where(last_of_run, gain, -np.inf)))
    if gain[k] <= 0:
        return float(np.nextafter(s[0], np.inf)), 0.0
    return float(s[k]), float(gain[k] / denom)
