"""The alert policy: when a score above the threshold becomes an alert.

One pure function, shared by the runtime (which raises the alerts) and by
calibration (which replays it on history to meet an alert budget). Replaying
the policy matters: scores are autocorrelated, so the share of rows above a
threshold says little about how many alerts a ward will see
(``research/clinical-runtime.md`` section 2.2).

The policy, per patient and in time order:

1. A score at or above ``threshold`` raises an alert if the patient has had
   no alert yet.
2. After an alert at time ``t``, no alert is raised before
   ``t + suppression_hours`` (the re-alert suppression window).
3. With ``hysteresis = h``, the patient is also re-armed only once a score has
   fallen below ``threshold - h`` after the last alert.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.calibration._base import check_probabilities
from vigil.core.errors import ConfigError, DataError

__all__ = ["DEFAULT_SUPPRESSION_HOURS", "alert_events", "alerts_per_patient_day"]

DEFAULT_SUPPRESSION_HOURS = 6.0
"""Default re-alert suppression window (hours)."""


def _next_index(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """For each position ``i`` in ``0..n``, the first ``j >= i`` with ``mask[j]`` (else ``n``)."""
    n = mask.size
    marked = np.where(mask, np.arange(n), n)
    return np.append(np.minimum.accumulate(marked[::-1])[::-1], n)


def alert_events(
    probability: NDArray[np.floating],
    starts: NDArray[np.integer],
    *,
    threshold: float,
    suppression_hours: float,
    hysteresis: float | None = None,
    times: NDArray[np.floating] | None = None,
) -> NDArray[np.bool_]:
    """Which scores raise an alert under the alert policy.

    Parameters
    ----------
    probability : ndarray of shape (n_rows,)
        Scores, rows grouped by patient in time order.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets of each patient.
    threshold : float
        Scores at or above it are high.
    suppression_hours : float
        No re-alert sooner than this after an alert (>= 0; 0 alerts at every high score).
    hysteresis : float or None, optional
        Re-arm only after a score below ``threshold - hysteresis``.
    times : ndarray of shape (n_rows,), optional
        Time of each score in hours, non-decreasing within a patient (e.g. the
        runtime's 15-minute ticks). By default row ``k`` of a patient is hour ``k``
        (the hourly grid).

    Returns
    -------
    ndarray of shape (n_rows,)
        True where an alert is raised.

    Raises
    ------
    ConfigError
        If ``suppression_hours`` or ``hysteresis`` is negative.
    DataError
        If shapes disagree or times decrease within a patient.

    Examples
    --------
    >>> p = np.array([.9, .9, .9, .1, .9, .9, .9, .9])
    >>> alert_events(p, np.array([0, 8]), threshold=.5, suppression_hours=2).nonzero()[0].tolist()
    [0, 2, 4, 6]
    >>> alert_events(p, np.array([0, 8]), threshold=.5, suppression_hours=1,
    ...              hysteresis=.2).nonzero()[0].tolist()
    [0, 4]
    """
    if suppression_hours < 0 or (hysteresis is not None and hysteresis < 0):
        raise ConfigError(
            f"expected suppression_hours >= 0 and hysteresis >= 0 or None; got "
            f"{suppression_hours!r} and {hysteresis!r}",
            key="suppression_hours",
        )
    p = check_probabilities(probability, name="probability")
    starts = np.asarray(starts, dtype=np.int64)
    n = p.size
    if starts.ndim != 1 or starts.size < 1 or starts[0] != 0 or starts[-1] != n:
        raise DataError(f"expected starts from 0 to {n} (the number of rows), got {starts[:1]}..")
    lengths = np.diff(starts)
    if n == 0:
        return np.zeros(0, dtype=bool)
    if times is None:
        t = (np.arange(n) - np.repeat(starts[:-1], lengths)).astype(np.float64)
    else:
        t = np.asarray(times, dtype=np.float64)
        if t.shape != (n,) or not np.all(np.isfinite(t)):
            raise DataError(f"expected {n} finite times, got shape {t.shape}")
    t = t - t.min()
    span = float(t.max()) + suppression_hours + 1.0
    key = np.repeat(np.arange(lengths.size, dtype=np.float64), lengths) * span + t
    if np.any(np.diff(key) < 0):
        raise DataError("expected times that do not decrease within a patient")
    end = np.repeat(starts[1:], lengths)
    next_high = _next_index(p >= threshold)
    next_reset = _next_index(p < threshold - hysteresis) if hysteresis is not None else None
    events = np.zeros(n, dtype=bool)
    first = next_high[starts[:-1]]
    current = first[first < starts[1:]]
    while current.size:
        events[current] = True
        allowed = np.searchsorted(key, key[current] + suppression_hours, side="left")
        allowed = np.maximum(allowed, current + 1)
        if next_reset is not None:
            allowed = np.maximum(allowed, next_reset[current + 1])
        following = next_high[np.minimum(allowed, n)]
        current = following[following < end[current]]
    return events


def alerts_per_patient_day(events: NDArray[np.bool_]) -> float:
    """Alerts per patient-day of hourly rows: ``alerts / (rows / 24)``.

    Parameters
    ----------
    events : ndarray of shape (n_rows,)
        One row per patient-hour, True where an alert was raised.

    Returns
    -------
    float
        NaN when there are no rows.
    """
    e = np.asarray(events, dtype=bool)
    return float(e.sum() * 24.0 / e.size) if e.size else float("nan")
