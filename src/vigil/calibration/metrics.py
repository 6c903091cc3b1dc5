"""Calibration metrics: Brier, ECE, calibration intercept and slope, reliability curve.

Definitions follow Van Calster et al. (BMC Medicine 17:230, 2019) and Steyerberg,
*Clinical Prediction Models* (2nd ed., 2019, ch. 15):

- Brier score ``mean((p - y) ** 2)`` (Brier, Mon Weather Rev 78:1-3, 1950);
  scaled Brier ``1 - Brier / Brier(prevalence)``.
- Calibration intercept (calibration-in-the-large): ``alpha`` of
  ``logit P(y) = alpha + logit(p)`` (logit(p) as offset); 0 is ideal.
- Calibration slope: ``beta`` of ``logit P(y) = alpha + beta * logit(p)``; 1 is
  ideal, below 1 the predictions are too extreme.
- O:E, observed over expected events, ``sum(y) / sum(p)``.
- Expected calibration error ``sum_b (n_b / N) |mean(y)_b - mean(p)_b|``
  (Naeini, Cooper & Hauskrecht, AAAI 2015) with 10 equal-width bins, and the
  same with 10 equal-mass bins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from vigil.calibration._logistic import fit_logistic, logit
from vigil.features.metrics import auprc, auroc

__all__ = [
    "CalibrationMetrics",
    "ReliabilityCurve",
    "brier",
    "calibration_intercept_slope",
    "calibration_metrics",
    "ece",
    "reliability_curve",
]


def brier(labels: NDArray[np.integer], probability: NDArray[np.floating]) -> float:
    """Brier score, ``mean((p - y) ** 2)``.

    Examples
    --------
    >>> round(brier(np.array([0, 1]), np.array([0.2, 0.6])), 6)
    0.1
    """
    y = np.asarray(labels, dtype=np.float64)
    return float(np.mean((np.asarray(probability, dtype=np.float64) - y) ** 2))


def _bins(p: NDArray[np.float64], n_bins: int, strategy: str) -> NDArray[np.int64]:
    """Bin index of every probability, shape (n,)."""
    if strategy == "uniform":
        return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    order = np.argsort(p, kind="stable")
    out = np.empty(p.size, dtype=np.int64)
    out[order] = np.arange(p.size) * n_bins // max(p.size, 1)
    return out


def ece(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    *,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float:
    """Compute the expected calibration error.

    Parameters
    ----------
    labels : ndarray of shape (n,)
    probability : ndarray of shape (n,)
    n_bins : int, optional
    strategy : {"uniform", "quantile"}, optional
        Equal-width bins on [0, 1] or equal-mass bins.

    Returns
    -------
    float

    Examples
    --------
    >>> round(ece(np.array([0, 0, 1, 1]), np.array([0.1, 0.1, 0.9, 0.7])), 4)
    0.1
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if p.size == 0:
        return float("nan")
    b = _bins(p, n_bins, strategy)
    gap = np.bincount(b, weights=y - p, minlength=n_bins)
    return float(np.abs(gap).sum() / p.size)


@dataclass(frozen=True)
class ReliabilityCurve:
    """Observed outcome rate against mean predicted probability, per bin.

    Attributes
    ----------
    predicted, observed : ndarray of shape (n_nonempty_bins,)
    count : ndarray of shape (n_nonempty_bins,)
    """

    predicted: NDArray[np.float64]
    observed: NDArray[np.float64]
    count: NDArray[np.int64]


def reliability_curve(
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    *,
    n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "quantile",
) -> ReliabilityCurve:
    """Binned reliability curve (empty bins dropped); see :func:`ece` for the bins."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    b = _bins(p, n_bins, strategy)
    count = np.bincount(b, minlength=n_bins)
    keep = count > 0
    n = count[keep]
    return ReliabilityCurve(
        predicted=np.bincount(b, weights=p, minlength=n_bins)[keep] / n,
        observed=np.bincount(b, weights=y, minlength=n_bins)[keep] / n,
        count=n.astype(np.int64),
    )


def calibration_intercept_slope(
    labels: NDArray[np.integer], probability: NDArray[np.floating]
) -> tuple[float, float]:
    """Calibration intercept (logit(p) as offset) and calibration slope.

    Parameters
    ----------
    labels : ndarray of shape (n,)
    probability : ndarray of shape (n,)

    Returns
    -------
    intercept, slope : float
        NaN if only one outcome class is present.
    """
    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    z = logit(probability)
    intercept = fit_logistic(np.zeros((z.size, 0)), y, offset=z).intercept
    slope = float(fit_logistic(z[:, None], y).coef[0])
    return intercept, slope


@dataclass(frozen=True)
class CalibrationMetrics:
    """Calibration and discrimination of hourly probabilities.

    Attributes
    ----------
    n : int
        Rows.
    prevalence, mean_probability : float
        Observed outcome rate and mean predicted probability.
    observed_expected : float
        ``sum(y) / sum(p)``.
    brier, scaled_brier : float
    ece, ece_quantile : float
        10 equal-width / 10 equal-mass bins.
    intercept, slope : float
        Calibration intercept and slope.
    auroc, auprc : float
    """

    n: int
    prevalence: float
    mean_probability: float
    observed_expected: float
    brier: float
    scaled_brier: float
    ece: float
    ece_quantile: float
    intercept: float
    slope: float
    auroc: float
    auprc: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for JSON."""
        return asdict(self)


def calibration_metrics(
    labels: NDArray[np.integer], probability: NDArray[np.floating]
) -> CalibrationMetrics:
    """All of :class:`CalibrationMetrics` for one set of predictions.

    Parameters
    ----------
    labels : ndarray of shape (n,)
    probability : ndarray of shape (n,)

    Returns
    -------
    CalibrationMetrics
    """
    y = np.asarray(labels).astype(np.int8)
    p = np.asarray(probability, dtype=np.float64)
    prevalence = float(y.mean()) if y.size else float("nan")
    b = brier(y, p)
    reference = prevalence * (1.0 - prevalence)
    intercept, slope = calibration_intercept_slope(y, p)
    return CalibrationMetrics(
        n=int(y.size),
        prevalence=prevalence,
        mean_probability=float(p.mean()) if p.size else float("nan"),
        observed_expected=float(y.sum() / p.sum()) if p.sum() > 0 else float("nan"),
        brier=b,
        scaled_brier=1.0 - b / reference if reference > 0 else float("nan"),
        ece=ece(y, p),
        ece_quantile=ece(y, p, strategy="quantile"),
        intercept=intercept,
        slope=slope,
        auroc=auroc(y, p),
        auprc=auprc(y, p),
    )
