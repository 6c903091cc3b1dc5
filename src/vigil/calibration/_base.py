"""What every calibrator shares: the estimator contract, input checks, the minimum-sample rule.

The contract is scikit-learn's (Buitinck et al., "API design for machine
learning software", 2013): ``__init__`` only stores keyword-only parameters,
``fit(scores, labels, sample_weight=None)`` learns attributes ending in ``_``
and returns ``self``, ``transform``/``predict_proba`` map probabilities to
calibrated probabilities and raise :class:`~vigil.core.errors.NotFittedError`
before ``fit``. State is saved as plain JSON (``to_dict``/``from_dict``), never
pickled, so a site's calibration stays readable and auditable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, DataError, NotFittedError

__all__ = ["CalibrationWarning", "Calibrator", "MinimumSamples", "check_probabilities"]


class CalibrationWarning(UserWarning):
    """The calibration was fitted but may be unreliable (too little data, degenerate fit)."""


@dataclass(frozen=True)
class MinimumSamples:
    """A method's minimum-sample rule.

    Attributes
    ----------
    events : int
        Fewer rows of the rarer outcome class than this is an error: about ten
        events per fitted parameter (Peduzzi et al., J Clin Epidemiol
        49:1373-1379, 1996).
    samples : int
        Fewer rows than this gives a :class:`CalibrationWarning` (isotonic
        regression overfits below about 1,000 samples; scikit-learn user guide,
        "Probability calibration").
    """

    events: int
    samples: int = 0


def check_probabilities(scores: Any, *, name: str = "scores") -> NDArray[np.float64]:
    """Validate probabilities: 1-D, finite, within [0, 1]; returns float64 of shape (n,)."""
    p = np.asarray(scores, dtype=np.float64)
    if p.ndim != 1:
        raise DataError(f"expected {name} of shape (n_samples,), got shape {p.shape}")
    if p.size and not (np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0):
        raise DataError(
            f"expected {name} to be probabilities in [0, 1]; got values outside it or NaN"
        )
    return p


def _check_labels(labels: Any, n: int) -> NDArray[np.int8]:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DataError(f"expected labels of shape ({n},) like the scores, got {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise DataError("expected labels that are 0 or 1; got other values")
    return y.astype(np.int8)


def _check_weight(sample_weight: Any, n: int) -> NDArray[np.float64] | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
        raise DataError(f"expected sample_weight: {n} finite values >= 0; got shape {w.shape}")
    return w


class Calibrator:
    """Base class of the recalibration maps: ``p -> calibrated p``.

    Subclasses set ``method``, ``rule``, ``_params`` (constructor parameter
    names) and ``_state`` (learned attribute names, each ending in ``_``), and
    implement ``_fit`` and ``_transform``.
    """

    method: ClassVar[str]
    rule: ClassVar[MinimumSamples]
    n_parameters: ClassVar[int]
    _params: ClassVar[tuple[str, ...]] = ("min_events",)
    _state: ClassVar[tuple[str, ...]]

    def __init__(self, *, min_events: int | None = None) -> None:
        self.min_events = min_events

    # -- the scikit-learn contract -------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters, as given."""
        return {name: getattr(self, name) for name in self._params}

    def fit(self, scores: Any, labels: Any, sample_weight: Any = None) -> Self:
        """Learn the map from model probabilities to observed outcome rates.

        Parameters
        ----------
        scores : array-like of shape (n_samples,)
            The model's probabilities.
        labels : array-like of shape (n_samples,)
            0/1 outcomes.
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self

        Raises
        ------
        DataError
            If the inputs are malformed or below the method's minimum-sample rule.
        ConfigError
            If a parameter is invalid.
        """
        p = check_probabilities(scores)
        y = _check_labels(labels, p.size)
        w = _check_weight(sample_weight, p.size)
        self._check_params()
        self._check_sample_size(y)
        self._fit(p, y, w)
        return self

    def transform(self, scores: Any) -> NDArray[np.float64]:
        """Calibrated probabilities.

        Parameters
        ----------
        scores : array-like of shape (n_samples,)
            The model's probabilities.

        Returns
        -------
        ndarray of shape (n_samples,)
            Calibrated probabilities in [0, 1], non-decreasing in ``scores``.
        """
        self._check_fitted()
        return self._transform(check_probabilities(scores))

    def predict_proba(self, scores: Any) -> NDArray[np.float64]:
        """Calibrated probabilities; the same as :meth:`transform`."""
        return self.transform(scores)

    def fit_transform(
        self, scores: Any, labels: Any, sample_weight: Any = None
    ) -> NDArray[np.float64]:
        """``fit`` then ``transform`` on the same scores."""
        return self.fit(scores, labels, sample_weight).transform(scores)

    # -- JSON state --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return method, parameters and learned state as plain JSON types."""
        self._check_fitted()
        state = {}
        for name in self._state:
            value = getattr(self, name)
            state[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return {"method": self.method, "params": self.get_params(), "state": state}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a fitted calibrator from :meth:`to_dict` output.

        Raises
        ------
        ConfigError
            If the dict is for another method or lacks a state entry.
        """
        if data.get("method") != cls.method:
            raise ConfigError(
                f"expected a {cls.method!r} calibration, got {data.get('method')!r}", key="method"
            )
        obj = cls(**data.get("params", {}))
        state = data.get("state", {})
        missing = [name for name in cls._state if name not in state]
        if missing:
            raise ConfigError(
                f"the {cls.method!r} calibration state lacks {', '.join(missing)}", key="state"
            )
        for name in cls._state:
            value = state[name]
            if isinstance(value, list):
                value = np.asarray(value, dtype=np.float64)
            setattr(obj, name, value)
        return obj

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None)
        return f"{type(self).__name__}({args})"

    # -- helpers -----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not all(hasattr(self, name) for name in self._state):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(scores, labels) first"
            )

    def _check_params(self) -> None:
        m = self.min_events
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(
                f"The 'min_events' parameter of {type(self).__name__} must be an int >= 1 or None. "
                f"Got {m!r} instead.",
                key="min_events",
            )

    def _check_sample_size(self, y: NDArray[np.int8]) -> None:
        n_pos = int(y.sum())
        events = min(n_pos, y.size - n_pos)
        need = self.rule.events if self.min_events is None else self.min_events
        if events < need:
            raise DataError(
                f"{self.method} calibration needs at least {need} rows of each outcome in the fit "
                f"data, got {n_pos} positive and {y.size - n_pos} negative; use a longer data "
                "window or a method with fewer parameters (in-the-large)"
            )
        if y.size < self.rule.samples:
            warnings.warn(
                f"{self.method} calibration is fitted on {y.size} rows, fewer than the "
                f"{self.rule.samples} recommended; it may overfit (consider logistic or beta)",
                CalibrationWarning,
                stacklevel=3,
            )

    def _fit(
        self, p: NDArray[np.float64], y: NDArray[np.int8], w: NDArray[np.float64] | None
    ) -> None:
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement _fit.")

    def _transform(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement _transform.")
