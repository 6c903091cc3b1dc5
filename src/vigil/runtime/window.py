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
as a three-day one. It is built in blocks of ``GRID_BLOCK`` stays, which bounds the
builder's intermediates.
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

__all__ = ["GRID_BLOCK", "RECENT_HOURS", "ObservationWindow", "recent_grid"]

RECENT_HOURS = LOOKBACK_HOURS + 1
"""Hours of a stay the grid keeps: the scored hour and its look-back."""
GRID_BLOCK = 256
"""Stays per call of the grid builder: one block's intermediates are alive at a time, not
the whole census's (27 MB less at the peak for 1,000 stays with 72 h of history)."""
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
        parts = [(old, stay),
                 (kept, _member(kept.patient, wanted & self.patients) & (kept.effective >= since))]
        if new_patients:
            back = store.observations(new_patients, since=since, until=_END_OF_TIME)
            parts.append((back, np.ones(len(back), dtype=bool)))
        return ObservationWindow(frozenset(patients), since, _joined(parts))

    def until(self, until: int) -> ObservationBatch:
        """Return the values with ``effective <= until``."""
        return _take(self.values, self.values.effective <= until)


def _take(batch: ObservationBatch, mask: NDArray[np.bool_]) -> ObservationBatch:
    """``batch.take(mask)``, without a copy when the mask keeps every value."""
    return batch if mask.all() else batch.take(mask)


def _joined(parts: Sequence[tuple[ObservationBatch, NDArray[np.bool_]]]) -> ObservationBatch:
    """``ObservationBatch.concat([b.take(m) for b, m in parts])``, copying each column once.

    A single part kept whole (a first fetch) is returned as it is. Taking every part
    and then joining would hold two copies of the window at once.
    """
    parts = [(b, m) for b, m in parts if m.any() or b.deletions]
    if not parts:
        return ObservationBatch()
    if len(parts) == 1:
        return _take(*parts[0])
    return ObservationBatch.concat([b for b, _ in parts], masks=[m for _, m in parts])


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
        At most one version of each resource (a window: the store keeps the latest), so
        that the grid can be built in blocks of stays.
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
    grid = _in_blocks(builder, moved, values, until)
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


def _in_blocks(builder: Callable[..., HourlyGrid], stays: Sequence[Stay],
               values: ObservationBatch, until: Sequence[datetime]) -> HourlyGrid:
    """``builder(stays, values, until=until)``, called on blocks of ``GRID_BLOCK`` stays.

    Exact when each resource has one version in ``values``: the builder's latest-version
    rule then keeps every value, whichever block it is in.
    """
    if len(stays) <= GRID_BLOCK:
        return builder(stays, values, until=until)
    code = pd.Index([s.patient for s in stays]).get_indexer(values.patient)
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(0, len(stays) + GRID_BLOCK, GRID_BLOCK))
    grids = [
        builder(stays[lo:lo + GRID_BLOCK],
                values.take(np.sort(order[bounds[i]:bounds[i + 1]])),  # reading order kept
                until=until[lo:lo + GRID_BLOCK])
        for i, lo in enumerate(range(0, len(stays), GRID_BLOCK))
    ]
    shift = np.cumsum([0] + [g.n_rows for g in grids[:-1]])
    return HourlyGrid(
        patient_ids=tuple(p for g in grids for p in g.patient_ids),
        starts=np.concatenate([[0]] + [g.starts[1:] + k for g, k in zip(grids, shift,
                                                                        strict=True)]),
        hours=np.concatenate([g.hours for g in grids]),
        values=np.concatenate([g.values for g in grids]),
    )
