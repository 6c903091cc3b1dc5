"""What a cycle needs from the past: the observation window in memory, and the recent grid.

**The observation window.**

Each cycle needs, for every census patient, the stored values of the last
``LOOKBACK_HOURS + 2`` hours. Reading them back from the store every 15 minutes
costs more than everything else a cycle does once the census is large, so the
runner keeps them in memory and applies to them exactly what it committed to
the store: the values stored (:meth:`StateStore.put_observations`'s ``kept``)
replace every earlier value of the same resource ids (``replaced``). Patients
new to the window are read from the store once. The store stays the truth: the
window is rebuilt from it after a restart or a failed cycle.

**The recent grid** (:func:`recent_grid`). The features of a patient's last hour
depend on that hour and the ``LOOKBACK_HOURS`` before it, so the grid of a stay
holds at most its last ``LOOKBACK_HOURS + 1`` hours, with their true ICU hour
numbers: a week-long stay, or an encounter left open for years, costs the same
as a three-day one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.features.builder import LOOKBACK_HOURS
from vigil.features.grid import GRID_COLUMNS, HourlyGrid
from vigil.fhir_adapter.records import ObservationBatch, Stay
from vigil.runtime.store import StateStore

__all__ = ["RECENT_HOURS", "ObservationWindow", "recent_grid"]

RECENT_HOURS = LOOKBACK_HOURS + 1
"""Hours of a stay the grid keeps: the scored hour and its look-back."""
_STATIC_AT = GRID_COLUMNS.index("Age")

_END_OF_TIME = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class ObservationWindow:
    """Stored values of a set of patients from ``since`` (microseconds) on.

    Attributes
    ----------
    patients : frozenset of str
        The patients the window holds (all their stored values from ``since``).
    since : int
        Start of the window, UTC microseconds.
    values : ObservationBatch
        The values, one per stored (resource id, variable).
    """

    patients: frozenset[str]
    since: int
    values: ObservationBatch

    def __repr__(self) -> str:
        return f"ObservationWindow(patients={len(self.patients)}, values={len(self.values)})"

    @classmethod
    def read(cls, store: StateStore, patients: Sequence[str], *, since: int) -> ObservationWindow:
        """Read the window from the store."""
        values = store.observations(patients, since=since, until=_END_OF_TIME)
        return cls(frozenset(patients), since, values)

    def advance(
        self,
        store: StateStore,
        patients: Sequence[str],
        *,
        since: int,
        kept: ObservationBatch,
        replaced: frozenset[str],
    ) -> ObservationWindow:
        """Return the window after a commit of ``kept``/``replaced``, from ``since`` on.

        Call it inside the transaction that stored ``kept``, after storing it: patients
        new to the window are read from the store (their ``kept`` values included).
        """
        wanted = set(patients)
        old = self.values
        stay = (old.effective >= since) & _member(old.patient, wanted)
        if replaced:
            stay &= ~_member(old.resource_id, replaced)
        new_patients = [p for p in patients if p not in self.patients]
        fresh = kept.take(
            _member(kept.patient, wanted & self.patients) & (kept.effective >= since)
        )
        parts = [old.take(stay), fresh]
        if new_patients:
            parts.append(store.observations(new_patients, since=since, until=_END_OF_TIME))
        values = ObservationBatch.concat(parts)
        return ObservationWindow(frozenset(patients), since, values)

    def until(self, until: int) -> ObservationBatch:
        """Return the values with ``effective <= until``."""
        return self.values.take(self.values.effective <= until)


def _member(values: np.ndarray, members: AbstractSet[str]) -> NDArray[np.bool_]:
    """Whether each value (object array of str) is one of ``members`` (hashed, vectorized)."""
    if not len(values) or not members:
        return np.zeros(len(values), dtype=bool)
    found = pd.Series(values, dtype=object, copy=False).isin(list(members))
    return np.asarray(found.to_numpy(), dtype=bool)


def recent_grid(
    stays: Sequence[Stay],
    hours: Sequence[int],
    values: ObservationBatch,
    *,
    builder: Callable[..., HourlyGrid],
) -> HourlyGrid:
    """Build the grid of each stay's last ``min(h, RECENT_HOURS)`` complete hours.

    The grid builder is asked for a stay whose admission is moved ``k = h -
    RECENT_HOURS`` hours later, which numbers the wanted hours ``1..RECENT_HOURS``
    and leaves out the earlier values; the hours then get ``k`` back, and the
    static columns (age and hospital admission depend on the admission time)
    are those of the real stay.

    Parameters
    ----------
    stays : sequence of Stay
    hours : sequence of int
        Complete ICU hours of each stay at the tick (>= 1).
    values : ObservationBatch
    builder : callable
        :func:`vigil.fhir_adapter.grid_from_observations` or the same contract.

    Returns
    -------
    HourlyGrid
    """
    offsets = np.array([max(0, h - RECENT_HOURS) for h in hours], dtype=np.int64)
    moved = [s if k == 0 else replace(s, icu_admission=s.icu_admission + timedelta(hours=int(k)))
             for s, k in zip(stays, offsets, strict=True)]
    until: list[datetime] = [s.icu_admission + timedelta(hours=h) for s, h in zip(stays, hours,
                                                                                  strict=True)]
    grid = builder(moved, values, until=until)
    if not offsets.any():
        return grid
    lengths = np.diff(grid.starts)
    fixed = grid.values.copy()
    static = np.array([s.static_values() for s in stays], dtype=np.float32).reshape(-1, 5)
    fixed[:, _STATIC_AT:] = np.repeat(static, lengths, axis=0)
    return HourlyGrid(
        patient_ids=grid.patient_ids,
        starts=grid.starts,
        hours=(grid.hours + np.repeat(offsets, lengths)).astype(np.int32),
        values=fixed,
    )
