"""Threshold policies: pick the alert threshold by an explicit, stated goal.

=============================  =================================================================
``--policy``                   threshold chosen (on the fit patients' calibrated probabilities)
=============================  =================================================================
``sensitivity=S``              the largest t with hour-level sensitivity >= S
``patient-sensitivity=S``      the largest t detecting >= S of septic patients by onset
``alerts-per-patient-day=A``   the smallest t with <= A alerts per patient-day, replaying the
                               alert policy with its suppression window
``ppv=P``                      the smallest t with hour-level PPV >= P
``utility``                    the t of maximum PhysioNet normalized utility
=============================  =================================================================

The largest/smallest choice keeps the target met with the fewest alerts
(sensitivity) or the most sensitivity (budget, PPV); see
``research/clinical-runtime.md`` section 2.2.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.calibration.alerts import DEFAULT_SUPPRESSION_HOURS, alert_events, alerts_per_patient_day
from vigil.calibration.operating import detection_scores
from vigil.core.errors import ConfigError, DataError
from vigil.features.utility import best_utility_threshold

__all__ = ["PolicyKey", "ThresholdPolicy", "choose_threshold", "parse_policy"]


class PolicyKey(StrEnum):
    """The goal a threshold is chosen for."""

    SENSITIVITY = "sensitivity"
    PATIENT_SENSITIVITY = "patient-sensitivity"
    ALERTS_PER_PATIENT_DAY = "alerts-per-patient-day"
    PPV = "ppv"
    UTILITY = "utility"


_PROPORTIONS = {PolicyKey.SENSITIVITY, PolicyKey.PATIENT_SENSITIVITY, PolicyKey.PPV}


@dataclass(frozen=True)
class ThresholdPolicy:
    """A threshold policy and its target.

    Attributes
    ----------
    key : PolicyKey
    target : float or None
        None only for ``utility``.
    """

    key: PolicyKey
    target: float | None = None

    @property
    def metric(self) -> str:
        """Return the name of the metric it targets (a key of ``OPERATING_METRICS``)."""
        return self.key.value.replace("-", "_")

    def __str__(self) -> str:
        return self.key.value if self.target is None else f"{self.key.value}={self.target:g}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for JSON."""
        return {"key": self.key.value, "target": self.target, "metric": self.metric,
                "text": str(self)}


def parse_policy(text: str) -> ThresholdPolicy:
    """Parse ``KEY=VALUE`` (or ``utility``).

    Raises
    ------
    ConfigError
        For an unknown key (with the closest valid one), a missing or
        unexpected value, or a target out of range.

    Examples
    --------
    >>> parse_policy("sensitivity=0.8")
    ThresholdPolicy(key=<PolicyKey.SENSITIVITY: 'sensitivity'>, target=0.8)
    """
    name, sep, value = text.strip().partition("=")
    try:
        key = PolicyKey(name.strip())
    except ValueError:
        names = [k.value for k in PolicyKey]
        close = difflib.get_close_matches(name.strip(), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown threshold policy {name!r}; expected one of {', '.join(names)}.{hint}",
            key="policy",
        ) from None
    if key is PolicyKey.UTILITY:
        if sep:
            raise ConfigError(f"the utility policy takes no value; got {text!r}", key="policy")
        return ThresholdPolicy(key)
    try:
        target = float(value)
    except ValueError:
        raise ConfigError(
            f"expected {key.value}=NUMBER, got {text!r}", key="policy"
        ) from None
    if key in _PROPORTIONS and not 0.0 < target <= 1.0:
        raise ConfigError(f"expected a {key.value} target in (0, 1], got {target:g}", key="policy")
    if key is PolicyKey.ALERTS_PER_PATIENT_DAY and not (math.isfinite(target) and target > 0):
        raise ConfigError(f"expected an alert budget > 0 per patient-day, got {target:g}",
                          key="policy")
    return ThresholdPolicy(key, target)


def _kth_largest(values: NDArray[np.float64], share: float, what: str) -> float:
    """Return the largest t such that at least ``share`` of ``values`` are >= t."""
    if values.size == 0:
        raise DataError(f"cannot target a {what}: the fit data has none")
    k = max(1, math.ceil(share * values.size - 1e-9))
    return float(np.sort(values)[::-1][k - 1])


def _ppv_threshold(y: NDArray[np.bool_], p: NDArray[np.float64], target: float) -> float:
    order = np.argsort(-p, kind="stable")
    s = p[order]
    tp = np.cumsum(y[order])
    last = np.r_[s[1:] != s[:-1], True]
    k = np.flatnonzero(last)
    ppv = tp[k] / (k + 1.0)
    ok = np.flatnonzero(ppv >= target)
    if ok.size == 0:
        raise DataError(
            f"no threshold reaches PPV {target:g} in the fit data (the highest is "
            f"{ppv.max():.3f}); lower the target"
        )
    return float(s[k[ok[-1]]])


def _budget_threshold(
    p: NDArray[np.float64], starts: NDArray[np.int64], budget: float, *,
    suppression_hours: float, hysteresis: float | None,
) -> float:
    """Smallest distinct score whose replayed alert rate is within the budget (binary search)."""
    values = np.unique(p)

    def rate(i: int) -> float:
        events = alert_events(p, starts, threshold=float(values[i]),
                              suppression_hours=suppression_hours, hysteresis=hysteresis)
        return alerts_per_patient_day(events)

    if rate(values.size - 1) > budget:
        raise DataError(
            f"even the highest threshold raises {rate(values.size - 1):.3f} alerts per "
            f"patient-day, above the budget {budget:g}; raise the budget"
        )
    lo, hi = 0, values.size - 1  # rate(hi) <= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if rate(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(values[hi])


def choose_threshold(
    policy: ThresholdPolicy,
    labels: NDArray[np.integer],
    probability: NDArray[np.floating],
    starts: NDArray[np.integer],
    *,
    suppression_hours: float = DEFAULT_SUPPRESSION_HOURS,
    hysteresis: float | None = None,
) -> float:
    """Pick the threshold a policy asks for on a set of patients.

    Parameters
    ----------
    policy : ThresholdPolicy
    labels, probability : ndarray of shape (n_rows,)
        Rows grouped by patient in time order (one row per hour).
    starts : ndarray of shape (n_patients + 1,)
    suppression_hours, hysteresis : float, optional
        Of the alert policy (for ``alerts-per-patient-day``).

    Returns
    -------
    float
        Rows with ``probability >= threshold`` are positive.

    Raises
    ------
    DataError
        If the target cannot be met on these patients.
    """
    y = np.asarray(labels) > 0
    p = np.asarray(probability, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.int64)
    key, target = policy.key, policy.target
    if key is PolicyKey.UTILITY:
        return best_utility_threshold(y.astype(np.int8), p, starts)[0]
    assert target is not None
    if key is PolicyKey.SENSITIVITY:
        return _kth_largest(p[y], target, "sensitivity (no row with SepsisLabel = 1)")
    if key is PolicyKey.PATIENT_SENSITIVITY:
        detect = detection_scores(y, p, starts)
        return _kth_largest(detect[np.isfinite(detect)], target,
                            "patient sensitivity (no septic patient)")
    if key is PolicyKey.PPV:
        return _ppv_threshold(y, p, target)
    return _budget_threshold(p, starts, target, suppression_hours=suppression_hours,
                             hysteresis=hysteresis)
