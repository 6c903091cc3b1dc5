"""The recalibration methods by name: ``in-the-large``, ``logistic``, ``isotonic``, ``beta``.

``platt`` and ``sigmoid`` (scikit-learn's name) are accepted for ``logistic``: the
same map (Platt 1999, on the logit); a stored record keeps the canonical name.
"""

from __future__ import annotations

import difflib
from enum import StrEnum
from typing import Any

from vigil.calibration._base import Calibrator
from vigil.calibration.isotonic import IsotonicCalibration
from vigil.calibration.parametric import BetaCalibration, InTheLarge, LogisticCalibration
from vigil.core.errors import ConfigError

__all__ = [
    "ALIASES",
    "CALIBRATORS",
    "DEFAULT_METHOD",
    "Method",
    "calibrator_from_dict",
    "make_calibrator",
    "parse_method",
]


class Method(StrEnum):
    """A recalibration method (see :mod:`vigil.calibration.parametric` and ``.isotonic``)."""

    IN_THE_LARGE = "in-the-large"
    LOGISTIC = "logistic"
    BETA = "beta"
    ISOTONIC = "isotonic"


CALIBRATORS: dict[Method, type[Calibrator]] = {
    Method.IN_THE_LARGE: InTheLarge,
    Method.LOGISTIC: LogisticCalibration,
    Method.BETA: BetaCalibration,
    Method.ISOTONIC: IsotonicCalibration,
}


DEFAULT_METHOD = Method.LOGISTIC
"""``vigil calibrate --method``'s default, for the sepsis and the imaging model alike."""


ALIASES: dict[str, Method] = {"platt": Method.LOGISTIC, "sigmoid": Method.LOGISTIC}
"""Other names of methods (Platt's, scikit-learn's ``CalibratedClassifierCV(method=...)``)."""


def parse_method(name: str | Method) -> Method:
    """Look up the :class:`Method` called ``name`` (or one of its :data:`ALIASES`).

    Raises
    ------
    ConfigError
        Naming the valid methods and the closest one.
    """
    if isinstance(name, str) and name.lower() in ALIASES:
        return ALIASES[name.lower()]
    try:
        return Method(name)
    except ValueError:
        names = [m.value for m in Method] + list(ALIASES)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown calibration method {name!r}; expected one of {', '.join(names)}.{hint}",
            key="method",
        ) from None


def make_calibrator(method: str | Method, **params: Any) -> Calibrator:
    """Make a new, unfitted calibrator of the given method."""
    return CALIBRATORS[parse_method(method)](**params)


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from its ``to_dict()`` output."""
    return CALIBRATORS[parse_method(data.get("method", ""))].from_dict(data)
