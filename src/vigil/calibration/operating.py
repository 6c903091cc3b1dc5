"""What a threshold achieves: hour-level, patient-level and alert metrics with bootstrap intervals.

Every metric is a ratio of sums over patients, so a patient-level bootstrap
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13:
percentile intervals) only has to resample one row of per-patient counts per
patient; the rows of one patient stay together because they are correlated.

=========================  ==========================================================
metric                     definition
=========================  ==========================================================
``sensitivity``            hourly rows with SepsisLabel = 1 predicted positive
``specificity``            hourly rows with SepsisLabel = 0 predicted negative
``false_positive_rate``    ``1 - specificity``
``ppv``                    predicted-positive hourly rows with SepsisLabel = 1
``patient_sensitivity``    septic patients with a positive prediction no later than
                           onset (first SepsisLabel = 1 hour + 6 h, as the labels are
                           shifted 6 h early; Reyna et al., Crit Care Med 2020)
``patients_alerted``       patients with at least one alert
``alerts_per_patient_day`` alerts (:func:`~vigil.calibration.alerts.alert_events`) per
                           24 hourly rows
``utility``                PhysioNet 2019 normalized utility
=========================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.calibration.alerts import DEFAULT_SUPPRESSION_HOURS, alert_events
from vigil.features.bootstrap import Estimate, patient_utility_terms, percentile_interval

__all__ = [
    "ONSET_DELAY_HOURS",
    "OPERATING_METRICS",
    "Estimate",
    "OperatingPoint",
    "detection_scores",
    "operating_point",
    "patient_counts",
]

ONSET_DELAY_HOURS = 6
"""Sepsis onset is this many hours after the first ``SepsisLabel = 1`` row."""

_COLUMNS = ("tp", "fp", "fn", "tn", "septic", "detected", "patient", "alerted", "alerts", "rows",
            "utility_gain", "utility_best")
_C = {name: i for i, name in enumerate(_COLUMNS)}

OPERATING_METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], float]] = {
    "sensitivity": (("tp",), ("tp", "fn"), 1.0),
    "specificity": (("tn",), ("tn", "fp"), 1.0),
    "false_positive_rate": (("fp",), ("fp", "tn"), 1.0),
    "ppv": (("tp",), ("tp", "fp"), 1.0),
    "patient_sensitivity": (("detected",), ("septic",), 1.0),
    "patients_alerted": (("alerted",), ("patient",), 1.0),
    "alerts_per_patient_day": (("alerts",), ("rows",), 24.0),
    "utility": (("utility_gain",), ("utility_best",), 1.0),
}
"""Each metric as ``(numerator columns, denominator columns, scale)`` of :func:`patient_counts`."""


def _per_patient(values: NDArray[np.floating], row_patient: NDArray[np.int64], n: int) -> NDArray[
    np.float64
]:
    return np.bincount(row_patient, weights=values, minlength=n)


def detection_scores(
    labels: NDArray[np.integer], probability: NDArray[np.floating], starts: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Each patient's highest score up to sepsis onset.

    Parameters
    ----------
    labels, probability : ndarray of shape (n_rows,)
    starts : ndarray of shape (n_patients + 1,)

    Returns
    -------
    ndarray of shape (n_patients,)
        The maximum probability over hours ``0 .. first SepsisLabel=1 hour + 6``
        (the patient is detected at any threshold up to it); ``-inf`` for
        patients who are never septic.
    """
    y = np.asarray(labels) > 0
    p = np.asarray(probability, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(starts)
    n_pat = lengths.size
    row_patient = np.repeat(np.arange(n_pat), lengths)
    t = np.arange(y.size) - np.repeat(starts[:-1], lengths)
    never = np.iinfo(np.int64).max
    first = np.full(n_pat, never)
    np.minimum.at(first, row_patient[y], t[y])
    onset = np.where(first < never, first + ONSET_DELAY_HOURS, -1)
    window = t <= onset[row_patient]
    out = np.full(n_pat, -np.inf)
    np.maximum.at(out, row_patient[window], p[window])
    return out


def patient_counts(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    starts: NDArray[np.integer],
    *,
    threshold: float,
    suppression_hours: float = DEFAULT_SUPPRESSION_HOURS,
    hysteresis: float | None = None,
) -> NDArray[np.float64]:
    """Per-patient counts behind :data:`OPERATING_METRICS`.

    Parameters
    ----------
    labels, probability : ndarray of shape (n_rows,)
        Rows grouped by patient in time order (one row per hour).
    starts : ndarray of shape (n_patients + 1,)
    threshold : float
    suppression_hours : float, optional
    hysteresis : float or None, optional
        Of the alert policy.

    Returns
    -------
    ndarray of shape (n_patients, 12)
        Columns tp, fp, fn, tn, septic, detected, patient (1), alerted,
        alerts, rows, utility gain over inaction, best gain over inaction.
    """
    y = np.asarray(labels) > 0
    p = np.asarray(probability, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(starts)
    n_pat = lengths.size
    row_patient = np.repeat(np.arange(n_pat), lengths)
    pred = p >= threshold
    out = np.zeros((n_pat, len(_COLUMNS)))
    for name, mask in (("tp", y & pred), ("fp", ~y & pred), ("fn", y & ~pred), ("tn", ~y & ~pred)):
        out[:, _C[name]] = _per_patient(mask.astype(np.float64), row_patient, n_pat)
    detect = detection_scores(y, p, starts)
    out[:, _C["septic"]] = np.isfinite(detect)
    out[:, _C["detected"]] = detect >= threshold
    out[:, _C["patient"]] = 1.0
    events = alert_events(p, starts, threshold=threshold, suppression_hours=suppression_hours,
                          hysteresis=hysteresis)
    out[:, _C["alerts"]] = _per_patient(events.astype(np.float64), row_patient, n_pat)
    out[:, _C["alerted"]] = out[:, _C["alerts"]] > 0
    out[:, _C["rows"]] = lengths
    out[:, [_C["utility_gain"], _C["utility_best"]]] = patient_utility_terms(y, pred, starts)
    return out


def _ratios(sums: NDArray[np.float64]) -> NDArray[np.float64]:
    """Every metric of :data:`OPERATING_METRICS` from column sums, shape (..., n_metrics)."""
    out = []
    for num, den, scale in OPERATING_METRICS.values():
        a = sum(sums[..., _C[c]] for c in num)
        b = sum(sums[..., _C[c]] for c in den)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(b > 0, scale * a / np.where(b > 0, b, 1.0), np.nan))
    return np.stack(out, axis=-1)


@dataclass(frozen=True)
class OperatingPoint:
    """The metrics of one threshold on one set of patients.

    Attributes
    ----------
    threshold : float
    n_patients, n_rows : int
    level : float
        Coverage of the intervals (e.g. 0.95).
    n_boot : int
        Bootstrap resamples of patients.
    metrics : dict of str to Estimate
        One per name of :data:`OPERATING_METRICS`.
    """

    threshold: float
    n_patients: int
    n_rows: int
    level: float
    n_boot: int
    metrics: dict[str, Estimate]

    def __repr__(self) -> str:
        return (f"OperatingPoint(threshold={self.threshold:.4g}, n_patients={self.n_patients}, "
                f"n_rows={self.n_rows})")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for JSON."""
        return {
            "threshold": self.threshold,
            "n_patients": self.n_patients,
            "n_rows": self.n_rows,
            "level": self.level,
            "n_boot": self.n_boot,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }


def operating_point(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    starts: NDArray[np.integer],
    *,
    threshold: float,
    suppression_hours: float = DEFAULT_SUPPRESSION_HOURS,
    hysteresis: float | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> OperatingPoint:
    """Every metric of a threshold, with patient-level bootstrap percentile intervals.

    Parameters
    ----------
    labels, probability : ndarray of shape (n_rows,)
    starts : ndarray of shape (n_patients + 1,)
    threshold : float
    suppression_hours, hysteresis : float, optional
        Of the alert policy.
    n_boot : int, optional
        Resamples of patients (0: no interval, bounds NaN).
    level : float, optional
    seed : int, optional

    Returns
    -------
    OperatingPoint
    """
    counts = patient_counts(labels, probability, starts, threshold=threshold,
                            suppression_hours=suppression_hours, hysteresis=hysteresis)
    point = _ratios(counts.sum(axis=0))
    low = high = np.full(point.shape, np.nan)
    n_pat = counts.shape[0]
    if n_boot > 0 and n_pat > 0:
        rng = np.random.default_rng(seed)
        reps = np.empty((n_boot, counts.shape[1]))
        for b in range(n_boot):
            reps[b] = np.bincount(rng.integers(0, n_pat, n_pat), minlength=n_pat) @ counts
        low, high = percentile_interval(_ratios(reps), level)
    return OperatingPoint(
        threshold=float(threshold),
        n_patients=int(n_pat),
        n_rows=int(np.asarray(labels).size),
        level=level,
        n_boot=n_boot,
        metrics={
            name: Estimate(float(point[i]), float(low[i]), float(high[i]))
            for i, name in enumerate(OPERATING_METRICS)
        },
    )
