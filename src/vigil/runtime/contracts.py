"""What the cycle works with: where data comes from and goes, and what a cycle produces.

:class:`CycleSource` (census and incremental observations; the FHIR adapter's
sources through :mod:`vigil.runtime.sources`, or recorded data on a clock
through :mod:`vigil.runtime.recorded`), :class:`GridBuilder` (the adapter's
:func:`~vigil.fhir_adapter.grid_from_observations`), :class:`CycleSink`
(RiskAssessments), :class:`ScoreBatch` (one model's scores at a tick) and
:class:`CycleResult` (the record of a cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from vigil.features.grid import HourlyGrid
from vigil.fhir_adapter.records import Census, IngestResult, ObservationBatch, Stay, to_micros

__all__ = [
    "HOUR_US",
    "CycleResult",
    "CycleSink",
    "CycleSource",
    "GridBuilder",
    "ResumableSource",
    "ScoreBatch",
    "adapter_grid",
    "complete_hours",
]

HOUR_US = 3_600_000_000
"""One hour in microseconds."""


class CycleSource(Protocol):
    """Where a cycle reads the clinical data (a FHIR server, or NDJSON files on a clock)."""

    name: str

    def census(self, tick: datetime) -> Census:
        """Return the in-progress ICU stays at ``tick``."""
        ...

    def observations(
        self, since: datetime | None, until: datetime, *, patients: Sequence[str]
    ) -> IngestResult:
        """Observations of ``patients`` recorded after ``since`` (None: all) up to ``until``."""
        ...


@runtime_checkable
class ResumableSource(Protocol):
    """A source with a position beyond its watermark (NDJSON files: a byte offset per file).

    The cycle stores :meth:`cursor` with the watermark, in the same transaction, and hands
    it back to :meth:`resume` when a new process starts.
    """

    def cursor(self) -> str | None:
        """Where the last fetch read up to (None: nothing to store)."""
        ...

    def resume(self, cursor: str) -> None:
        """Continue from a stored cursor (called before the first fetch)."""
        ...


class GridBuilder(Protocol):
    """Builds the hourly grid of the census (:func:`vigil.fhir_adapter.grid_from_observations`)."""

    def __call__(
        self, stays: Sequence[Stay], observations: ObservationBatch, *, until: Sequence[datetime]
    ) -> HourlyGrid:
        """One patient per stay, hourly rows up to each stay's ``until``."""
        ...


def adapter_grid(
    stays: Sequence[Stay], observations: ObservationBatch, *, until: Sequence[datetime]
) -> HourlyGrid:
    """Build the grid with the FHIR adapter (the default builder)."""
    from vigil.fhir_adapter.hourly import grid_from_observations

    return grid_from_observations(stays, observations, until=until)


def complete_hours(stays: Sequence[Stay], tick: datetime) -> list[int]:
    """ICU hours each stay has completed at ``tick``: ``floor((tick - admission) / 1 h)``.

    The grid's hour ``h`` covers ``(A + (h - 1) h, A + h h]``; the runtime scores a
    patient's last *complete* hour, the row a model trained on hourly PhysioNet
    rows was trained on (its values are all in by the end of the hour).
    """
    t = to_micros(tick)
    return [(t - to_micros(s.icu_admission)) // HOUR_US for s in stays]


@dataclass(frozen=True, eq=False)
class ScoreBatch:
    """One model's scores of the census at one tick. Arrays have shape (n_patients,).

    Attributes
    ----------
    model_name, model_version : str
        The model package's name and version.
    threshold : float
        The alert threshold applied (calibration record's, else the package's).
    role : str
        ``active`` or ``shadow``.
    tick : datetime
        When the scores were made (the RiskAssessment's ``occurrenceDateTime``).
    patient_keys, encounters : tuple of str
        FHIR Patient and Encounter ids.
    iculos : ndarray of int64
        The ICU hour scored (the patient's last complete hour).
    raw_probability, probability : ndarray of float64
        Model output, and after the site calibration (equal without one).
    calibrated : bool
        Whether a calibration record was applied.
    alert : ndarray of bool
        Alerts raised by the alert policy.
    """

    model_name: str
    model_version: str
    threshold: float
    role: str
    tick: datetime
    patient_keys: tuple[str, ...]
    encounters: tuple[str, ...]
    iculos: NDArray[np.int64]
    raw_probability: NDArray[np.float64]
    probability: NDArray[np.float64]
    calibrated: bool
    alert: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.patient_keys)

    @property
    def model(self) -> str:
        """``name@version``, the model's key in the store."""
        return f"{self.model_name}@{self.model_version}"

    def __repr__(self) -> str:
        return f"ScoreBatch(model={self.model!r}, role={self.role!r}, n={len(self)})"


class CycleSink(Protocol):
    """Where scores go (RiskAssessments on a FHIR server, NDJSON files, or nowhere)."""

    def assessments(self, scores: ScoreBatch) -> list[tuple[str, str]]:
        """One ``(deterministic id, JSON)`` RiskAssessment per score."""
        ...

    def put(self, bodies: list[str]) -> None:
        """Write resources idempotently (same id → same resource)."""
        ...


@dataclass(frozen=True)
class CycleResult:
    """The record of one cycle.

    ``status`` is ``ok``, ``degraded`` (scored on inputs that are not enough:
    :mod:`vigil.runtime.inputs`), ``writeback_failed``, ``failed`` or ``skipped``.
    ``ignored_codes`` holds the codes the fetch ignored most often (``system|code``).
    """

    cycle_id: int
    tick: datetime
    status: str
    reason: str | None
    counts: dict[str, int]
    timings: dict[str, float]
    ignored_codes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the cycle scored and wrote back (or its tick had been scored before)."""
        return self.status in ("ok", "skipped") and self.reason is None
