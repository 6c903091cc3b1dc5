"""Causal window kernels over the hourly grid, vectorized across patients.

Every kernel computes, for each row, a statistic of that row and earlier rows
of the same patient only, looking back a bounded number of rows. Applied to a
whole table or to one patient's last rows, they give the same numbers: that is
what lets training (batch) and the runtime (incremental) share one feature
builder.

Array conventions: ``values`` is (n_rows, n_columns) float, NaN = missing;
``row_start`` is (n_rows,) int, the first row of each row's patient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["CarriedForward", "RollingStats", "carry_forward", "rolling_count", "rolling_stats"]


@dataclass(frozen=True, eq=False)
class CarriedForward:
    """Last observed values and their ages.

    Attributes
    ----------
    value : ndarray of shape (n_rows, n_columns)
        Last observed value no older than the column's maximum age, else NaN.
    hours_since : ndarray of shape (n_rows, n_columns)
        Hours since the last observation, capped at ``lookback`` (also when never observed).
    """

    value: NDArray[np.float32]
    hours_since: NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class RollingStats:
    """Statistics of the observations in a trailing window.

    Attributes
    ----------
    count : ndarray of shape (n_rows, n_columns)
        Number of observations in the window.
    minimum, maximum, mean : ndarray of shape (n_rows, n_columns)
        NaN where the window holds no observation.
    slope : ndarray of shape (n_rows, n_columns)
        Least-squares slope per hour; 0 where the window holds fewer than two observations.
    """

    count: NDArray[np.float32]
    minimum: NDArray[np.float32]
    maximum: NDArray[np.float32]
    mean: NDArray[np.float32]
    slope: NDArray[np.float32]


def carry_forward(
    values: NDArray[np.floating],
    row_start: NDArray[np.int64],
    *,
    max_age: NDArray[np.integer],
    lookback: int,
) -> CarriedForward:
    """Carry each column's last observation forward within a patient.

    Parameters
    ----------
    values : ndarray of shape (n_rows, n_columns)
        NaN where nothing was observed.
    row_start : ndarray of shape (n_rows,)
        First row of each row's patient.
    max_age : ndarray of shape (n_columns,)
        Hours after which a value is no longer carried forward; at most ``lookback``.
    lookback : int
        Cap of ``hours_since``; no result depends on rows older than this.

    Returns
    -------
    CarriedForward
    """
    n = values.shape[0]
    rows = np.arange(n, dtype=np.int32)[:, None]
    last = np.where(np.isnan(values), np.int32(-1), rows)
    np.maximum.accumulate(last, axis=0, out=last)
    seen = last >= row_start[:, None]
    age = rows - last
    hours_since = np.where(seen, np.minimum(age, lookback), lookback).astype(np.float32)
    fresh = seen & (age <= max_age[None, :])
    taken = np.take_along_axis(values, np.maximum(last, 0), axis=0)
    value = np.where(fresh, taken, np.nan).astype(np.float32)
    return CarriedForward(value=value, hours_since=hours_since)


def rolling_count(
    observed: NDArray[np.bool_], row_start: NDArray[np.int64], *, hours: int
) -> NDArray[np.float32]:
    """Count observations in the trailing window of ``hours`` rows (the current one included).

    Parameters
    ----------
    observed : ndarray of shape (n_rows, n_columns)
        True where a value was observed.
    row_start : ndarray of shape (n_rows,)
        First row of each row's patient.
    hours : int
        Window length in rows.

    Returns
    -------
    ndarray of shape (n_rows, n_columns)
    """
    n = observed.shape[0]
    csum = np.cumsum(observed, axis=0, dtype=np.int32)
    base_row = np.maximum(np.arange(n) - hours, row_start - 1)
    base = np.where((base_row >= 0)[:, None], csum[np.maximum(base_row, 0)], 0)
    return (csum - base).astype(np.float32)


def rolling_stats(
    values: NDArray[np.floating], row_start: NDArray[np.int64], *, hours: int
) -> RollingStats:
    """Min, max, mean, count and least-squares slope over a trailing window.

    The slope is the ordinary least-squares coefficient of value on hour,
    ``(k Σtv - Σt Σv) / (k Σt² - (Σt)²)`` over the ``k`` observations in the
    window.

    Parameters
    ----------
    values : ndarray of shape (n_rows, n_columns)
        NaN where nothing was observed.
    row_start : ndarray of shape (n_rows,)
        First row of each row's patient.
    hours : int
        Window length in rows (the current row included).

    Returns
    -------
    RollingStats
    """
    n, m = values.shape
    rows = np.arange(n)
    cnt = np.zeros((n, m))
    s_v = np.zeros((n, m))
    s_t = np.zeros((n, m))
    s_tt = np.zeros((n, m))
    s_tv = np.zeros((n, m))
    lo = np.full((n, m), np.inf)
    hi = np.full((n, m), -np.inf)
    for k in range(hours):
        src = rows - k
        inside = (src >= row_start)[:, None]
        v = values[np.maximum(src, 0)].astype(np.float64)
        ok = inside & ~np.isnan(v)
        v0 = np.where(ok, v, 0.0)
        t = float(-k)
        cnt += ok
        s_v += v0
        s_t += ok * t
        s_tt += ok * (t * t)
        s_tv += v0 * t
        lo = np.where(ok, np.minimum(lo, v0), lo)
        hi = np.where(ok, np.maximum(hi, v0), hi)
    has = cnt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(has, s_v / cnt, np.nan)
        denom = cnt * s_tt - s_t * s_t
        slope = np.where((cnt >= 2) & (denom > 0), (cnt * s_tv - s_t * s_v) / denom, 0.0)
    return RollingStats(
        count=cnt.astype(np.float32),
        minimum=np.where(has, lo, np.nan).astype(np.float32),
        maximum=np.where(has, hi, np.nan).astype(np.float32),
        mean=mean.astype(np.float32),
        slope=slope.astype(np.float32),
    )
