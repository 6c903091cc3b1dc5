"""Mapped observations + census -> the hourly grid the models read.

**The hour rule** (the inverse of the synth rule in :mod:`vigil.fhir_adapter.synth`):
an observation effective at ``icu_admission + x hours`` (``x`` real) belongs to
ICU hour ``ceil(x)``; hour ``h`` covers ``(A + (h - 1) h, A + h h]``. The grid of
a stay has one row per hour from 1 to ``ceil((until - A) / 1 h)`` (at least one
row); values before or at admission (``x <= 0``) and after ``until`` are not placed.

**Several values in one hour:** the last one wins, by effective time, then
``meta.lastUpdated``, then reading order (a later version of the same value
replaces an earlier one).

**Versions and deletions** (:mod:`vigil.fhir_adapter.versions`): only the values
of the newest version of each resource are used (by ``meta.versionId``, else
``meta.lastUpdated``, else ``issued``, and reading order last; not by reading
order alone); a resource whose newest version is an ``entered-in-error``
deletion contributes nothing.

Static columns (Age, Gender, Unit1, Unit2, HospAdmTime) come from the census
(:meth:`vigil.fhir_adapter.Stay.static_values`) and are repeated on every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from vigil.core.catalog import MEASURED
from vigil.core.errors import DataError
from vigil.features.grid import GRID_COLUMNS, HourlyGrid
from vigil.fhir_adapter.records import Census, ObservationBatch, Stay, to_micros
from vigil.fhir_adapter.versions import latest_in_batch

__all__ = [
    "HOUR_US",
    "grid_from_observations",
    "hours_until",
    "latest_in_batch",
]

HOUR_US = 3_600_000_000
"""One hour in microseconds."""
_N_MEASURED = len(MEASURED)
_STATIC_AT = GRID_COLUMNS.index("Age")


def hours_until(icu_admission: datetime, until: datetime) -> int:
    """Count the grid rows of a stay at ``until``: ``max(1, ceil((until - A) / 1 h))``."""
    d = to_micros(until) - to_micros(icu_admission)
    return max(1, -((-d) // HOUR_US))


def grid_from_observations(stays: Census | Sequence[Stay], observations: ObservationBatch, *,
                           until: datetime | Sequence[datetime]) -> HourlyGrid:
    """Build the hourly grid of the census stays from mapped observations.

    Parameters
    ----------
    stays : Census or sequence of Stay
        One stay per patient; the grid keeps this order.
    observations : ObservationBatch
        Mapped values (any patients; those not in ``stays`` are left out).
    until : datetime or sequence of datetime
        The time the grid is built at (tz-aware), one for all stays or one per stay.

    Returns
    -------
    HourlyGrid
        ``values`` of shape (n_rows, 39), float32, NaN where nothing was recorded.

    Raises
    ------
    DataError
        If a patient has two stays or ``until`` has the wrong length.
    """
    stays = tuple(stays.stays if isinstance(stays, Census) else stays)
    n = len(stays)
    ids = tuple(s.patient for s in stays)
    if len(set(ids)) != n:
        raise DataError("expected one stay per patient; build the census with build_census, "
                        "which keeps the latest ICU admission of each patient")
    untils = [until] * n if isinstance(until, datetime) else list(until)
    if len(untils) != n:
        raise DataError(f"expected one 'until' per stay ({n}), got {len(untils)}")
    admit = np.array([to_micros(s.icu_admission) for s in stays], dtype=np.int64)
    n_hours = np.array(
        [hours_until(s.icu_admission, u) for s, u in zip(stays, untils, strict=True)],
        dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_hours)]).astype(np.int64)
    n_rows = int(starts[-1])
    hours = (np.arange(n_rows, dtype=np.int64) - np.repeat(starts[:-1], n_hours) + 1
             ).astype(np.int32)
    values = np.full((n_rows, len(GRID_COLUMNS)), np.nan, dtype=np.float32)
    if n:
        static = np.array([s.static_values() for s in stays], dtype=np.float32)
        values[:, _STATIC_AT:] = np.repeat(static, n_hours, axis=0)

    # Index arrays into the batch instead of filtered copies of it (a cold window is large).
    o = observations
    p = pd.Index(ids).get_indexer(o.patient) if len(o) else np.zeros(0, dtype=np.int64)
    at = np.flatnonzero(latest_in_batch(o)[0] & (p >= 0))
    p = p[at]
    h = -((admit[p] - o.effective[at]) // HOUR_US)
    inside = (h >= 1) & (h <= n_hours[p])
    p, h, at = p[inside], h[inside], at[inside]
    row = starts[p] + h - 1
    col = o.variable[at].astype(np.int64)
    order = np.lexsort((o.seq[at], o.last_updated[at], o.effective[at], col, row))
    cell = (row * _N_MEASURED + col)[order]
    last = np.ones(cell.shape, dtype=bool)
    last[:-1] = cell[1:] != cell[:-1]
    pick = order[last]
    values[row[pick], col[pick]] = o.value[at[pick]].astype(np.float32)
    return HourlyGrid(patient_ids=ids, starts=starts, hours=hours, values=values)
