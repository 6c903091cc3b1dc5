"""Patient bootstrap intervals of AUROC and utility, for one model or two compared.

Patients are resampled with replacement and the metrics recomputed on every
resample; a patient's rows stay together because they are correlated (Efron &
Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13 for percentile
intervals). For one model this gives the interval of its own AUROC and
utility: how far a test set of this size pins them down. For two models
scored on the same rows, both see the same resamples, so the interval is that
of the *difference* ``a - b``, much narrower than either model's own (the
paired design). It answers whether one test set can tell two models apart,
for example a retrained model against the active one, or federated against
centralized training.

AUROC on a resample weights each row by its patient's multiplicity; ties count
one half (the Mann-Whitney form, Hanley & McNeil, Radiology 143:29-36, 1982).
The normalized utility of a resample is the ratio of summed per-patient gains
over inaction to summed best gains (:mod:`vigil.features.utility`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.features.metrics import hospital_subsets
from vigil.features.utility import row_utilities

__all__ = [
    "INTERVAL_METRICS",
    "Estimate",
    "Scored",
    "bootstrap_estimates",
    "metric_intervals",
    "metric_intervals_by_hospital",
    "patient_utility_terms",
    "percentile_interval",
    "weighted_auroc",
]

INTERVAL_METRICS = ("auroc", "utility")
Scored = tuple[NDArray[np.floating], NDArray[np.integer]]
"""A model's hourly probabilities and 0/1 alerts, each of shape (n_rows,)."""


@dataclass(frozen=True)
class Estimate:
    """A value with a bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """Plain dict, for JSON."""
        return {"value": self.value, "low": self.low, "high": self.high}


def percentile_interval(
    replicates: NDArray[np.floating], level: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Percentile bounds of bootstrap replicates, ignoring undefined (NaN) ones.

    Parameters
    ----------
    replicates : ndarray of shape (n_boot, n_metrics)
    level : float
        Coverage, e.g. 0.95.

    Returns
    -------
    low, high : ndarray of shape (n_metrics,)
        NaN for a metric with no finite replicate.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    low = np.full(reps.shape[1], np.nan)
    high = np.full(reps.shape[1], np.nan)
    ok = np.isfinite(reps).any(axis=0)
    if ok.any():
        low[ok] = np.nanquantile(reps[:, ok], alpha, axis=0)
        high[ok] = np.nanquantile(reps[:, ok], 1.0 - alpha, axis=0)
    return low, high


def bootstrap_estimates(
    statistic: Callable[[NDArray[np.float64]], NDArray[np.float64]],
    n_units: int,
    names: Sequence[str],
    *,
    n_boot: int,
    level: float,
    seed: int,
    batched: bool = False,
) -> dict[str, Estimate]:
    """Point values and percentile intervals of statistics of resampled units.

    Each resample draws ``n_units`` units with replacement (Efron & Tibshirani,
    1993, ch. 13) and hands ``statistic`` the multiplicity of every unit; every
    arm of a paired comparison is scored inside ``statistic`` on the same
    multiplicities. Unbatched, the resamples are drawn one by one
    (``rng.integers``), which keeps memory at one weight vector for large
    cohorts; batched, all at once (``rng.multinomial``), for a statistic that
    scores a whole ``(n_boot, n_units)`` matrix in one call. Both draw the same
    distribution, from different random streams.

    Parameters
    ----------
    statistic : callable
        Unit weights of shape ``(n_units,)`` to values of shape ``(n_metrics,)``;
        batched, weights of shape ``(n_boot, n_units)`` to ``(n_boot, n_metrics)``.
    n_units : int
        Units resampled (patients, images).
    names : sequence of str, length n_metrics
        Metric names, in the order ``statistic`` returns them.
    n_boot : int
        Resamples (0: no interval, bounds NaN).
    level : float
        Coverage, e.g. 0.95.
    seed : int
        Seeds the resampling.
    batched : bool, optional

    Returns
    -------
    dict of str to Estimate
        The statistic on all units once each, and its percentile interval.
    """
    ones = np.ones((1, n_units) if batched else n_units)
    point = statistic(ones)[0] if batched else statistic(ones)
    low = high = np.full(len(names), np.nan)
    if n_boot > 0 and n_units > 0:
        rng = np.random.default_rng(seed)
        if batched:
            counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
            reps = statistic(counts.astype(np.float64))
        else:
            reps = np.empty((n_boot, len(names)))
            for b in range(n_boot):
                reps[b] = statistic(np.bincount(rng.integers(0, n_units, n_units),
                                                minlength=n_units).astype(np.float64))
        low, high = percentile_interval(reps, level)
    return {name: Estimate(float(point[i]), float(low[i]), float(high[i]))
            for i, name in enumerate(names)}


def patient_utility_terms(
    labels: NDArray[np.integer], prediction: NDArray[np.integer], starts: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Each patient's utility gain over inaction and best possible gain.

    The normalized utility of any set of patients is the sum of the first
    column over the sum of the second.

    Parameters
    ----------
    labels, prediction : ndarray of shape (n_rows,)
        ``SepsisLabel`` and 0/1 predictions, rows grouped by patient in time order.
    starts : ndarray of shape (n_patients + 1,)

    Returns
    -------
    ndarray of shape (n_patients, 2)
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(starts)
    row_patient = np.repeat(np.arange(lengths.size), lengths)
    u_pos, u_neg = row_utilities(np.asarray(labels), starts)
    gain = np.where(np.asarray(prediction) > 0, u_pos, u_neg) - u_neg
    best = np.maximum(u_pos, u_neg) - u_neg
    return np.stack([np.bincount(row_patient, weights=gain, minlength=lengths.size),
                     np.bincount(row_patient, weights=best, minlength=lengths.size)], axis=1)


def _score_groups(scores: NDArray[np.floating]) -> tuple[NDArray[np.int64], int]:
    """Rank of each row's score among the distinct scores (ascending), and their number."""
    unique, group = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    return group.astype(np.int64), int(unique.size)


def _auroc_of_groups(
    group: NDArray[np.int64], n_groups: int, y: NDArray[np.bool_], weights: NDArray[np.floating]
) -> float:
    pos = np.bincount(group, weights=weights * y, minlength=n_groups)
    neg = np.bincount(group, weights=weights * ~y, minlength=n_groups)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def weighted_auroc(
    labels: NDArray[np.integer], scores: NDArray[np.floating], weights: NDArray[np.floating]
) -> float:
    """AUROC when row ``i`` counts ``weights[i]`` times.

    Parameters
    ----------
    labels, scores, weights : ndarray of shape (n,)

    Returns
    -------
    float
        NaN when either class has zero total weight. With unit weights it equals
        :func:`vigil.features.metrics.auroc`.

    Examples
    --------
    >>> weighted_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), np.ones(4))
    0.75
    """
    group, n_groups = _score_groups(scores)
    y = np.asarray(labels) > 0
    return _auroc_of_groups(group, n_groups, y, np.asarray(weights, dtype=np.float64))


def _check(n_rows: int, starts: NDArray[np.int64], **arrays: NDArray[Any]) -> None:
    if starts.ndim != 1 or starts.size < 2 or starts[0] != 0 or starts[-1] != n_rows:
        raise DataError(f"expected patient offsets from 0 to {n_rows} rows, got "
                        f"{starts.size} offsets ending at {starts[-1] if starts.size else None}")
    for name, a in arrays.items():
        if np.shape(a) != (n_rows,):
            raise DataError(f"expected {name} of shape ({n_rows},), got {np.shape(a)}")


def metric_intervals(
    labels: NDArray[np.integer],
    starts: NDArray[np.integer],
    model: Scored,
    versus: Scored | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """AUROC and normalized utility of a model, or its difference from another, with intervals.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel``, rows grouped by patient in time order.
    starts : ndarray of shape (n_patients + 1,)
    model : tuple of (probability, prediction)
        The model's scores and 0/1 alerts, ndarrays of shape (n_rows,).
    versus : tuple of (probability, prediction), optional
        Another model on the same rows: report ``model - versus`` instead.
    n_boot : int, optional
        Patient resamples (0: no interval, bounds NaN).
    level : float, optional
    seed : int, optional

    Returns
    -------
    dict of str to Estimate
        ``auroc`` and ``utility`` (or their differences) on the given patients
        and their percentile intervals.

    Raises
    ------
    DataError
        If an array does not have one entry per row.
    """
    y = np.asarray(labels) > 0
    starts = np.asarray(starts, dtype=np.int64)
    scored = [model] if versus is None else [model, versus]
    arrays = {"probability_model": model[0], "alerts_model": model[1]}
    if versus is not None:
        arrays |= {"probability_versus": versus[0], "alerts_versus": versus[1]}
    _check(y.size, starts, **arrays)
    lengths = np.diff(starts)
    n_pat = lengths.size
    row_patient = np.repeat(np.arange(n_pat), lengths)
    prepared = []
    for probability, prediction in scored:
        group, n_groups = _score_groups(probability)
        prepared.append((group, n_groups, patient_utility_terms(y, prediction, starts)))

    def metrics(patient_weight: NDArray[np.float64]) -> NDArray[np.float64]:
        w = patient_weight[row_patient]
        out = []
        for group, n_groups, terms in prepared:
            gain, best = patient_weight @ terms
            out.append((_auroc_of_groups(group, n_groups, y, w),
                        gain / best if best > 0 else np.nan))
        return np.asarray(out[0]) - (np.asarray(out[1]) if len(out) > 1 else 0.0)

    return bootstrap_estimates(metrics, n_pat, INTERVAL_METRICS, n_boot=n_boot, level=level,
                               seed=seed)


def metric_intervals_by_hospital(
    labels: NDArray[np.integer],
    starts: NDArray[np.integer],
    hospital: NDArray[np.str_],
    model: Scored,
    versus: Scored | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`metric_intervals` over all patients and within each hospital.

    Parameters
    ----------
    labels, hospital : ndarray of shape (n_rows,)
    starts : ndarray of shape (n_patients + 1,)
    model : tuple of (probability, prediction)
    versus : tuple of (probability, prediction), optional
    n_boot : int, optional
    level : float, optional
    seed : int, optional

    Returns
    -------
    dict
        ``n_boot``, ``level``, ``all`` and ``by_hospital`` (hospital -> metric
        -> ``{"value", "low", "high"}``).
    """
    options = {"n_boot": n_boot, "level": level, "seed": seed}
    scored = [model] if versus is None else [model, versus]

    def run(rows: NDArray[np.bool_] | slice, sub_starts: NDArray[np.int64]) -> dict[str, Any]:
        subset = [(np.asarray(p)[rows], np.asarray(a)[rows]) for p, a in scored]
        out = metric_intervals(np.asarray(labels)[rows], sub_starts, *subset, **options)
        return {k: v.to_dict() for k, v in out.items()}

    out: dict[str, Any] = {"n_boot": n_boot, "level": level,
                           "all": run(slice(None), np.asarray(starts, dtype=np.int64))}
    out["by_hospital"] = {h: run(rows, sub_starts)
                          for h, rows, sub_starts in hospital_subsets(starts, hospital)}
    return out
