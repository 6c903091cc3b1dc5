"""One tick of the alert policy, with the state the store remembers between ticks.

The policy itself is :func:`vigil.calibration.alerts.alert_events` (the same
function calibration replays to meet an alert budget). It reads a patient's
score history; between ticks the runtime keeps only what the policy can depend
on: the time of the patient's last alert and whether a score has fallen below
``threshold - hysteresis`` since then (*armed*). Each tick rebuilds the
shortest history with that state (an alert row at the last alert time, a low
row if re-armed, then the new score) and asks the policy about the new score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vigil.calibration.alerts import alert_events

__all__ = ["AlertStep", "alert_step"]


@dataclass(frozen=True, eq=False)
class AlertStep:
    """Alerts of one tick and the state to remember.

    Attributes
    ----------
    alert : ndarray of shape (n_patients,)
        True where the new score raises an alert.
    last_alert : list of float or None
        Time (hours) of each patient's last alert after this tick.
    armed : list of bool
        Whether each patient is re-armed after this tick.
    """

    alert: NDArray[np.bool_]
    last_alert: list[float | None]
    armed: list[bool]


def alert_step(
    patient_keys: Sequence[str],
    probability: NDArray[np.floating],
    *,
    now_hours: float,
    state: Mapping[str, tuple[float | None, bool]],
    threshold: float,
    suppression_hours: float,
    hysteresis: float | None,
) -> AlertStep:
    """Apply the alert policy to one tick's scores.

    Parameters
    ----------
    patient_keys : sequence of str
        One per score.
    probability : ndarray of shape (n_patients,)
        Calibrated probabilities at this tick.
    now_hours : float
        The tick, in hours since the epoch.
    state : mapping of str to (float or None, bool)
        Per patient: last alert time in hours (None if never) and armed.
    threshold, suppression_hours, hysteresis : float
        The policy (:func:`vigil.calibration.alerts.alert_events`).

    Returns
    -------
    AlertStep
    """
    p = np.asarray(probability, dtype=np.float64)
    rows_p: list[float] = []
    rows_t: list[float] = []
    starts = [0]
    current: list[int] = []
    for key, prob in zip(patient_keys, p, strict=True):
        last, armed = state.get(key, (None, True))
        if last is not None:
            rows_p.append(1.0)  # the last alert (a high score by definition)
            rows_t.append(min(last, now_hours))
            if armed and hysteresis is not None:
                rows_p.append(0.0)  # the score that re-armed the patient
                rows_t.append(min(last, now_hours))
        current.append(len(rows_p))
        rows_p.append(float(prob))
        rows_t.append(now_hours)
        starts.append(len(rows_p))
    events = alert_events(
        np.asarray(rows_p), np.asarray(starts), threshold=threshold,
        suppression_hours=suppression_hours, hysteresis=hysteresis, times=np.asarray(rows_t),
    )
    alert = events[np.asarray(current, dtype=np.int64)] if current else np.zeros(0, dtype=bool)
    last_out: list[float | None] = []
    armed_out: list[bool] = []
    for key, prob, fired in zip(patient_keys, p, alert, strict=True):
        last, armed = state.get(key, (None, True))
        if fired:
            last_out.append(now_hours)
            armed_out.append(hysteresis is None)
        else:
            last_out.append(last)
            armed_out.append(armed or hysteresis is None or bool(prob < threshold - hysteresis))
    return AlertStep(alert=alert, last_alert=last_out, armed=armed_out)
