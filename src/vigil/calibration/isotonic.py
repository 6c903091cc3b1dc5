"""Isotonic recalibration: the best non-decreasing step map, by pool-adjacent-violators.

Zadrozny & Elkan (KDD 2002) calibrate a classifier by isotonic regression of
the outcome on its score; the fit is the pool-adjacent-violators algorithm
(Ayer et al., Ann Math Stat 26:641-647, 1955; Barlow et al., *Statistical
Inference under Order Restrictions*, 1972). Between the fitted points the map
interpolates linearly and it is constant beyond them, as scikit-learn's
``IsotonicRegression(out_of_bounds="clip")`` does.

It needs many samples (about 1,000 or more) and turns the score into steps,
so patients inside one step can no longer be ranked against each other.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.calibration._base import Calibrator, MinimumSamples

__all__ = ["IsotonicCalibration", "pool_adjacent_violators"]


def pool_adjacent_violators(y: NDArray[np.floating], weight: NDArray[np.floating]) -> NDArray[
    np.float64
]:
    """Weighted least-squares non-decreasing fit to a sequence.

    Parameters
    ----------
    y : ndarray of shape (n,)
        Values, already in the order of the explanatory variable.
    weight : ndarray of shape (n,)
        Non-negative weights.

    Returns
    -------
    ndarray of shape (n,)
        The non-decreasing sequence minimizing ``sum weight * (fit - y) ** 2``.

    Examples
    --------
    >>> pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4)).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, wt in zip(np.asarray(y, dtype=np.float64).tolist(),
                         np.asarray(weight, dtype=np.float64).tolist(), strict=True):
        size = 1
        while means and means[-1] >= value:
            m, w, s = means.pop(), weights.pop(), sizes.pop()
            total = w + wt
            value = (m * w + value * wt) / total if total > 0 else (m + value) / 2.0
            wt, size = total, size + s
        means.append(value)
        weights.append(wt)
        sizes.append(size)
    return np.repeat(np.asarray(means), sizes)


class IsotonicCalibration(Calibrator):
    """Isotonic recalibration (non-parametric, monotone).

    Parameters
    ----------
    min_events : int or None, optional
        Override of the minimum-sample rule (10 rows of each outcome; a
        :class:`CalibrationWarning` below 1,000 rows).

    Attributes
    ----------
    X_thresholds_ : ndarray of shape (n_thresholds,)
        Increasing model probabilities: the first and last score of each step.
    y_thresholds_ : ndarray of shape (n_thresholds,)
        Calibrated probability at each of them (non-decreasing).
    """

    method = "isotonic"
    rule = MinimumSamples(events=10, samples=1000)
    n_parameters = 0
    _state = ("X_thresholds_", "y_thresholds_")

    def _fit(
        self, p: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
    ) -> None:
        weight = np.ones_like(p) if w is None else w
        x_unique, inverse = np.unique(p, return_inverse=True)
        w_sum = np.bincount(inverse, weights=weight, minlength=x_unique.size)
        y_sum = np.bincount(inverse, weights=weight * y, minlength=x_unique.size)
        y_mean = np.divide(y_sum, w_sum, out=np.zeros_like(y_sum), where=w_sum > 0)
        keep_points = w_sum > 0
        x_unique, y_mean, w_sum = x_unique[keep_points], y_mean[keep_points], w_sum[keep_points]
        fitted = pool_adjacent_violators(y_mean, w_sum)
        change = fitted[1:] != fitted[:-1]
        keep = np.r_[True, change] | np.r_[change, True]
        self.X_thresholds_ = x_unique[keep]
        self.y_thresholds_ = np.clip(fitted[keep], 0.0, 1.0)

    def _transform(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.interp(p, self.X_thresholds_, self.y_thresholds_)
