"""The observation window in memory: the stored values a cycle's grid needs, kept up to date.

Each cycle needs, for every census patient, the stored values of the last
``LOOKBACK_HOURS + 2`` hours. Reading them back from the store every 15 minutes
costs more than everything else a cycle does once the census is large, so the
runner keeps them in memory and applies to them exactly what it committed to
the store: the values stored (:meth:`StateStore.put_observations`'s ``kept``)
replace every earlier value of the same resource ids (``replaced``). Patients
new to the window are read from the store once. The store stays the truth: the
window is rebuilt from it after a restart or a failed cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vigil.fhir_adapter.records import ObservationBatch
from vigil.runtime.store import StateStore

__all__ = ["ObservationWindow"]

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
        """The window as the store holds it."""
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
        """The window after a commit of ``kept``/``replaced``, for ``patients`` from ``since``.

        Call it inside the transaction that stored ``kept``, after storing it: patients
        new to the window are read from the store (their ``kept`` values included).
        """
        wanted = set(patients)
        old = self.values
        rid = old.resource_id
        stay = (old.effective >= since) & np.fromiter(
            (p in wanted and r not in replaced for p, r in zip(old.patient, rid, strict=True)),
            dtype=bool, count=len(old),
        )
        new_patients = [p for p in patients if p not in self.patients]
        fresh = kept.take(np.fromiter(
            (p in self.patients and p in wanted for p in kept.patient), dtype=bool, count=len(kept)
        ) & (kept.effective >= since))
        parts = [old.take(stay), fresh]
        if new_patients:
            parts.append(store.observations(new_patients, since=since, until=_END_OF_TIME))
        values = ObservationBatch.concat(parts)
        return ObservationWindow(frozenset(patients), since, values)

    def until(self, until: int) -> ObservationBatch:
        """The values with ``effective <= until``."""
        return self.values.take(self.values.effective <= until)
