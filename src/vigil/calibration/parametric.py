"""Parametric recalibration maps: in-the-large, logistic (Platt on the logit), beta.

With ``z = logit(p)`` the model's log-odds:

==================  ==========================================  =================
method              calibrated log-odds                          reference
==================  ==========================================  =================
``in-the-large``    ``alpha + z``                               Van Calster et al. 2019
``logistic``        ``alpha + beta * z``, ``beta >= 0``         Cox 1958; Platt 1999
``beta``            ``c + a * ln p - b * ln(1 - p)``, a, b >= 0  Kull et al. 2017
==================  ==========================================  =================

All three are fitted by maximum likelihood (:func:`fit_logistic`). Each
contains the identity map (``alpha = 0``; ``alpha = 0, beta = 1``;
``a = b = 1, c = 0``), so on the data it was fitted to a calibrated model never
has a worse log-loss than the raw one.

References
----------
Cox DR. Two further applications of a model for binary regression.
Biometrika 45:562-565, 1958.
Platt J. Probabilistic outputs for support vector machines. 1999.
Kull M, Silva Filho T, Flach P. Beta calibration: a well-founded and easily
implemented improvement on logistic calibration for binary classifiers.
AISTATS 2017, PMLR 54:623-631 (section 3: ``a, b >= 0`` keeps the map monotone;
a negative coefficient is set to 0 and the model refitted).
Van Calster B et al. Calibration: the Achilles heel of predictive analytics.
BMC Medicine 17:230, 2019.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray

from vigil.calibration._base import CalibrationWarning, Calibrator, MinimumSamples
from vigil.calibration._logistic import EPS, fit_logistic, logit, separated, sigmoid

__all__ = ["BetaCalibration", "InTheLarge", "LogisticCalibration"]


class InTheLarge(Calibrator):
    """Recalibration in the large: shift the model's log-odds by one intercept.

    ``logit(p') = alpha + logit(p)``. Corrects a different outcome rate at the
    site and keeps the model's spread; afterwards the mean calibrated
    probability equals the observed rate on the fit data.

    Parameters
    ----------
    min_events : int or None, optional
        Override of the minimum-sample rule (10 rows of each outcome).

    Attributes
    ----------
    intercept_ : float
        ``alpha``.

    Examples
    --------
    >>> cal = InTheLarge().fit(np.repeat([0.1, 0.2], 50), np.r_[np.ones(15), np.zeros(85)])
    >>> round(float(cal.transform(np.repeat([0.1, 0.2], 50)).mean()), 6)
    0.15
    """

    method = "in-the-large"
    rule = MinimumSamples(events=10)
    n_parameters = 1
    _state = ("intercept_",)

    def _fit(
        self, p: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
    ) -> None:
        fit = fit_logistic(np.zeros((p.size, 0)), y, offset=logit(p), sample_weight=w)
        self.intercept_ = fit.intercept

    def _transform(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        return sigmoid(self.intercept_ + logit(p))


def _warn_if_separated(p: NDArray[np.float64], y: NDArray[np.int8],
                       w: NDArray[np.float64] | None) -> None:
    """Warn that the fit data are separated by the score (:func:`separated`): a near-step map."""
    if separated(p, y, w):
        warnings.warn(
            "the model's scores separate the outcomes of the fit data perfectly (no negative "
            "scores above a positive): the maximum-likelihood map has no finite slope and the "
            "fitted one is a near step; fit on more labelled data, or use --method in-the-large",
            CalibrationWarning,
            stacklevel=4,
        )


class LogisticCalibration(Calibrator):
    """Logistic recalibration (Platt scaling on the logit): intercept and slope.

    ``logit(p') = alpha + beta * logit(p)`` with ``beta >= 0``. The fitted
    ``alpha`` and ``beta`` of the raw model are the calibration intercept and
    slope of Van Calster et al. (2019); ``beta < 1`` means the model's
    predictions were too extreme.

    Parameters
    ----------
    min_events : int or None, optional
        Override of the minimum-sample rule (20 rows of each outcome).

    Attributes
    ----------
    intercept_ : float
        ``alpha``.
    slope_ : float
        ``beta``; 0 (with a :class:`CalibrationWarning`) when the model's
        scores are not positively associated with the outcome at the site.
    """

    method = "logistic"
    rule = MinimumSamples(events=20)
    n_parameters = 2
    _state = ("intercept_", "slope_")

    def _fit(
        self, p: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
    ) -> None:
        _warn_if_separated(p, y, w)
        fit = fit_logistic(logit(p)[:, None], y, sample_weight=w, nonnegative=(0,))
        self.intercept_ = fit.intercept
        self.slope_ = float(fit.coef[0])
        if self.slope_ == 0.0:
            warnings.warn(
                "the model's scores are not positively associated with the outcome in the fit "
                "data (slope constrained to 0): every calibrated probability is the same; do not "
                "deploy this model at this site",
                CalibrationWarning,
                stacklevel=3,
            )

    def _transform(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        return sigmoid(self.intercept_ + self.slope_ * logit(p))


class BetaCalibration(Calibrator):
    """Beta calibration (Kull et al. 2017), three parameters.

    ``logit(p') = c + a * ln(p) - b * ln(1 - p)`` with ``a, b >= 0``, so the
    map is non-decreasing. It can correct distortions that logistic
    recalibration cannot (different over/under-confidence at the two ends);
    ``a = b`` reduces it to logistic recalibration.

    Parameters
    ----------
    min_events : int or None, optional
        Override of the minimum-sample rule (30 rows of each outcome).

    Attributes
    ----------
    a_, b_, c_ : float
        The fitted parameters.
    """

    method = "beta"
    rule = MinimumSamples(events=30)
    n_parameters = 3
    _state = ("a_", "b_", "c_")

    @staticmethod
    def _columns(p: NDArray[np.float64]) -> NDArray[np.float64]:
        q = np.clip(p, EPS, 1.0 - EPS)
        return np.column_stack([np.log(q), -np.log1p(-q)])

    def _fit(
        self, p: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
    ) -> None:
        _warn_if_separated(p, y, w)
        fit = fit_logistic(self._columns(p), y, sample_weight=w, nonnegative=(0, 1))
        self.a_, self.b_ = float(fit.coef[0]), float(fit.coef[1])
        self.c_ = fit.intercept

    def _transform(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        return sigmoid(self.c_ + self._columns(p) @ np.array([self.a_, self.b_]))
