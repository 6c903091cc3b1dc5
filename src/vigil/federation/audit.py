"""Membership-inference audit: how much a trained model gives away about who trained it.

The unit is the patient (a patient's hourly rows are one record). An attacker holds a
patient's rows and labels and the model's probabilities for them, and guesses whether
the patient was among the training patients ("member"). Two attacks:

- **Loss threshold** (Yeom et al., "Privacy risk in machine learning", CSF 2018): a
  member's loss tends to be lower; score = minus the patient's mean binary
  cross-entropy, :func:`loss_scores`.
- **Offline LiRA** (Carlini et al., "Membership inference attacks from first
  principles", IEEE S&P 2022, §IV-C, Algorithm 1 with OUT models only): shadow models
  trained on data that does not contain the patient give the distribution of the
  patient's logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` (their eq. 4) when
  it is *not* a member, fitted as a Gaussian; the score is the one-sided likelihood
  ``Phi((phi_target - mu_out) / sigma_out)``, :func:`lira_offline`. With few shadows a
  global standard deviation is more stable (their §VI-A "fixed variance").

Reported as attack AUC and TPR at a low false-positive rate (1 %): averages hide the
few patients an attack identifies with confidence (Carlini et al. §III-B), which is
what a privacy officer cares about. numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.features.metrics import auroc

__all__ = [
    "AttackResult",
    "attack_result",
    "auc_interval",
    "confidence_logit",
    "group_mean",
    "lira_offline",
    "loss_scores",
    "tpr_at_fpr",
]

_EPS = 1e-7


def group_mean(values: NDArray[np.floating], starts: NDArray[np.int64]) -> NDArray[np.float64]:
    """Mean of ``values`` over each group of consecutive rows.

    Parameters
    ----------
    values : ndarray of float, shape (n_rows,)
    starts : ndarray of int64, shape (n_groups + 1,)
        Row offsets: group ``i`` is ``values[starts[i]:starts[i + 1]]`` (non-empty).

    Returns
    -------
    ndarray of float64, shape (n_groups,)
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(starts, dtype=np.int64)
    if s.ndim != 1 or s.size < 2 or s[0] != 0 or s[-1] != v.size or (np.diff(s) <= 0).any():
        raise DataError(f"expected increasing row offsets from 0 to {v.size} with non-empty "
                        f"groups, got {s.size} offsets")
    return np.add.reduceat(v, s[:-1]) / np.diff(s)


def confidence_logit(probability: NDArray[np.floating], labels: NDArray[np.integer]
                     ) -> NDArray[np.float64]:
    """Logit-scaled confidence in the true label, ``log(p_y / (1 - p_y))`` (Carlini et al. eq. 4).

    Parameters
    ----------
    probability : ndarray of float, shape (n,)
        Model probability of class 1.
    labels : ndarray of {0, 1}, shape (n,)

    Returns
    -------
    ndarray of float64, shape (n,)
        Clipped to ``p_y`` in ``[1e-7, 1 - 1e-7]``.

    Examples
    --------
    >>> confidence_logit(np.array([0.5, 0.9]), np.array([1, 0])).round(4).tolist()
    [0.0, -2.1972]
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    p_y = np.where(np.asarray(labels) > 0, p, 1 - p)
    return np.log(p_y) - np.log1p(-p_y)


def loss_scores(probability: NDArray[np.floating], labels: NDArray[np.integer],
                starts: NDArray[np.int64]) -> NDArray[np.float64]:
    """Loss-threshold attack scores: minus each patient's mean cross-entropy (Yeom et al. 2018).

    Parameters
    ----------
    probability : ndarray of float, shape (n_rows,)
    labels : ndarray of {0, 1}, shape (n_rows,)
        The targets the model was trained on.
    starts : ndarray of int64, shape (n_patients + 1,)

    Returns
    -------
    ndarray of float64, shape (n_patients,)
        Higher means more likely a member.
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels) > 0
    loss = -np.where(y, np.log(p), np.log1p(-p))
    return -group_mean(loss, starts)


def lira_offline(target_phi: NDArray[np.floating], out_phi: NDArray[np.floating],
                 *, fixed_variance: bool = True) -> NDArray[np.float64]:
    """Offline LiRA scores from OUT shadow models (Carlini et al. 2022, Algorithm 1, offline).

    Parameters
    ----------
    target_phi : ndarray of float, shape (n,)
        Each record's confidence logit under the attacked model.
    out_phi : ndarray of float, shape (k, n)
        The same under ``k`` shadow models; NaN where the record *was* in that shadow's
        training data (it is left out of its OUT estimate).
    fixed_variance : bool, optional
        Use one standard deviation pooled over records (recommended below ~64 shadows).

    Returns
    -------
    ndarray of float64, shape (n,)
        ``Phi((phi - mu_out) / sigma_out)``: higher means more likely a member.

    Raises
    ------
    DataError
        If shapes disagree or a record has fewer than 2 OUT values.
    """
    from scipy.stats import norm

    t = np.asarray(target_phi, dtype=np.float64)
    o = np.asarray(out_phi, dtype=np.float64)
    if o.ndim != 2 or o.shape[1] != t.size:
        raise DataError(f"expected OUT confidences of shape (k, {t.size}), got {o.shape}")
    count = np.sum(~np.isnan(o), axis=0)
    if (count < 2).any():
        raise DataError(f"expected at least 2 OUT shadow values per record, got "
                        f"{int(count.min())} for {int((count < 2).sum())} records")
    mu = np.nanmean(o, axis=0)
    sd = np.nanstd(o, axis=0, ddof=1)
    if fixed_variance:
        sd = np.full_like(sd, np.sqrt(np.nanmean(sd**2)))
    return norm.cdf((t - mu) / np.maximum(sd, 1e-6))


def tpr_at_fpr(member_scores: NDArray[np.floating], nonmember_scores: NDArray[np.floating],
               fpr: float) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate is ``<= fpr``.

    A record is called a member when its score is strictly above the threshold; the
    threshold is the smallest score that flags at most ``floor(fpr * n_nonmembers)``
    non-members.

    Examples
    --------
    >>> tpr_at_fpr(np.array([5.0, 4.0, 0.5]), np.arange(100.0) / 100, 0.01)
    0.6666666666666666
    """
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.sort(np.asarray(nonmember_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * n.size))
    threshold = n[allowed] if allowed < n.size else -np.inf
    return float(np.mean(m > threshold))


def auc_interval(auc: float, n_pos: int, n_neg: int, *, z: float = 1.959964
                 ) -> tuple[float, float]:
    """Normal-approximation interval of an AUC (Hanley & McNeil, Radiology 143:29-36, 1982).

    ``SE^2 = (A(1 - A) + (n1 - 1)(Q1 - A^2) + (n2 - 1)(Q2 - A^2)) / (n1 n2)`` with
    ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)`` (their eq. 1-2).

    Examples
    --------
    >>> [round(v, 4) for v in auc_interval(0.518, 3000, 6898)]
    [0.5056, 0.5304]
    """
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (
        n_pos * n_neg)
    half = z * float(np.sqrt(max(var, 0.0)))
    return max(a - half, 0.0), min(a + half, 1.0)


@dataclass(frozen=True)
class AttackResult:
    """One attack against one model.

    Attributes
    ----------
    auc : float
        Attack AUC (0.5: no better than a coin).
    auc_low, auc_high : float
        Its 95 % interval (:func:`auc_interval`).
    tpr_at_1pct_fpr, tpr_at_01pct_fpr : float
        Members identified at 1 % and 0.1 % false positives (chance: 0.01, 0.001).
    advantage : float
        ``max(TPR - FPR)`` over thresholds (Yeom et al.'s membership advantage).
    n_members, n_nonmembers : int
    """

    auc: float
    auc_low: float
    auc_high: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    advantage: float
    n_members: int
    n_nonmembers: int


def attack_result(member_scores: NDArray[np.floating],
                  nonmember_scores: NDArray[np.floating]) -> AttackResult:
    """Summarize an attack's scores on members (training patients) and non-members.

    Parameters
    ----------
    member_scores : ndarray of float, shape (n_members,)
    nonmember_scores : ndarray of float, shape (n_nonmembers,)

    Returns
    -------
    AttackResult
    """
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    if m.size == 0 or n.size == 0:
        raise DataError(f"expected members and non-members, got {m.size} and {n.size}")
    scores = np.concatenate([m, n])
    labels = np.concatenate([np.ones(m.size, dtype=np.int8), np.zeros(n.size, dtype=np.int8)])
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1) / m.size
    fp = np.cumsum(labels[order] == 0) / n.size
    auc = auroc(labels, scores)
    low, high = auc_interval(auc, m.size, n.size)
    return AttackResult(
        auc=auc,
        auc_low=low,
        auc_high=high,
        tpr_at_1pct_fpr=tpr_at_fpr(m, n, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(m, n, 0.001),
        advantage=float(np.max(tp - fp)),
        n_members=int(m.size),
        n_nonmembers=int(n.size),
    )
