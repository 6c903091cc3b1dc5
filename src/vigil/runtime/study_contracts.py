"""What the imaging side of the runtime works with: studies from a PACS, their scores, sinks.

The imaging counterpart of :mod:`vigil.runtime.contracts`. A :class:`StudySource`
(Orthanc's change feed + WADO-RS in :mod:`vigil.dicom_adapter`, or a folder of DICOM
files) reports new *stable* studies page by page from a cursor the runtime stores in its
state store, and fetches a study's instances as DICOM Part 10 bytes. The runtime scores
each image instance with the pixel chain and the imaging package, and hands one
:class:`StudyScore` per study and model to each :class:`StudySink` (a FHIR
DiagnosticReport + Observation, a DICOM Structured Report stored back to the PACS).

Identifiers (``patient_key``, UIDs, accession) are data: never in a log line or an
exception message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from vigil.dicom_adapter.headers import HeaderRecord

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from vigil.dicom_adapter.light_dataset import HeaderView

__all__ = [
    "InstanceRecord",
    "StudyInstance", "StudyPage", "StudyRef", "StudyScore", "StudySink", "StudySource"]


@dataclass(frozen=True)
class StudyRef:
    """A study the source reports (stable: the PACS expects no more instances for now).

    Attributes
    ----------
    study_uid : str
        StudyInstanceUID.
    source_id : str
        The source's own handle (Orthanc's study id, a folder path).
    patient_key : str
        DICOM PatientID (the FHIR Patient the write-back refers to).
    modalities : tuple of str
        ModalitiesInStudy as the source reports them (may be empty).
    accession : str or None
        AccessionNumber, when present.
    """

    study_uid: str
    source_id: str
    patient_key: str
    modalities: tuple[str, ...] = ()
    accession: str | None = None

    def __repr__(self) -> str:  # no identifiers in logs
        return f"StudyRef(modalities={self.modalities!r})"


@dataclass(frozen=True)
class StudyPage:
    """One poll of a source: new stable studies, where to continue, whether more is waiting."""

    studies: tuple[StudyRef, ...]
    cursor: str | None
    done: bool


@dataclass(frozen=True)
class StudyInstance:
    """One instance of a study as the PACS returns it (DICOM Part 10 bytes)."""

    sop_instance_uid: str
    series_uid: str
    data: bytes

    def __repr__(self) -> str:
        return f"StudyInstance(bytes={len(self.data)})"


class StudySource(Protocol):
    """Where the runtime finds new imaging studies and fetches their instances."""

    name: str

    def poll(self, cursor: str | None, *, limit: int) -> StudyPage:
        """Stable studies reported after ``cursor`` (None: from the start), at most ``limit``.

        The same study may be reported again (a PACS re-announces a study when an
        instance is added, the runtime's own SR included); the runtime decides what
        is new from its store, never from the source.
        """
        ...

    def fetch(self, study: StudyRef) -> list[StudyInstance]:
        """Every instance of ``study`` (the runtime reads and quarantines; the source does not)."""
        ...


@dataclass(frozen=True, eq=False)
class StudyScore:
    """One model's score of one study. Arrays have shape (n_scored_instances,).

    Attributes
    ----------
    study : StudyRef
    model_name, model_version : str
    role : str
        ``active`` or ``shadow``.
    threshold : float
        The decision threshold applied (calibration record's, else the package's).
    scored_at : datetime
        When the study was scored (timezone-aware).
    sop_instance_uids : tuple of str
        The image instances scored, in order.
    raw_probability, probability : ndarray of float64
        Model output per instance, and after the site calibration (equal without one).
    calibrated : bool
        Whether a calibration record was applied.
    quarantined : tuple of (str, str)
        ``(sop_instance_uid, reason)`` of instances the pixel chain refused (never scored).
    """

    study: StudyRef
    model_name: str
    model_version: str
    role: str
    threshold: float
    scored_at: datetime
    sop_instance_uids: tuple[str, ...]
    raw_probability: NDArray[np.float64]
    probability: NDArray[np.float64]
    calibrated: bool
    quarantined: tuple[tuple[str, str], ...] = ()

    @property
    def model(self) -> str:
        """``name@version``, the model's key in the store."""
        return f"{self.model_name}@{self.model_version}"

    @cached_property
    def study_probability(self) -> float:
        """The study's probability: the highest of its scored instances (NaN if none).

        Computed once (the report, the SR and the record each read it).
        """
        p = np.asarray(self.probability)
        return float(p.max()) if len(p) else float("nan")

    @property
    def positive(self) -> bool:
        """The site-calibrated decision: study probability at or above the threshold."""
        p = self.study_probability
        return bool(p == p and p >= self.threshold)

    def __repr__(self) -> str:
        return (f"StudyScore(model={self.model!r}, role={self.role!r}, "
                f"n={len(self.sop_instance_uids)}, quarantined={len(self.quarantined)})")


class StudySink(Protocol):
    """Where a study's score goes. Writing the same score twice changes nothing."""

    name: str

    def write(self, score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> None:
        """Write the result of ``score`` (``sources``: the scored instances, for references)."""
        ...


@dataclass(frozen=True)
class InstanceRecord:
    """What the runtime keeps of one scored (or quarantined) instance, for the drift monitor.

    Attributes
    ----------
    scored_at : datetime
        When its study was scored (timezone-aware).
    model : str
        ``name@version`` of the model that scored it.
    headers : HeaderRecord
        The watched acquisition headers (:func:`vigil.dicom_adapter.header_record`).
    histogram : ndarray of int64, shape (N_BINS,)
        Model-input intensity counts (:func:`vigil.imaging.input_histogram`); zeros
        when the instance was quarantined.
    raw_probability, probability : float
        Model output and after site calibration (NaN when quarantined).
    quarantine_reason : str or None
        Why the pixel chain refused it (None: scored).
    """

    scored_at: datetime
    model: str
    headers: HeaderRecord
    histogram: NDArray[np.int64]
    raw_probability: float
    probability: float
    quarantine_reason: str | None = None
