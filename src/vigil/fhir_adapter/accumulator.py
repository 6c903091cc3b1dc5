"""Collecting mapped values: :class:`Accumulator` applies the mapping rules to what parsers read.

Both parsers hand what they read from each Observation (status, subject, time,
and one payload per catalog code) to :meth:`Accumulator.emit`, so the order of
the checks and the quarantine reasons are the same for both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from vigil.fhir_adapter.mapping import (
    AMBIGUOUS,
    MappingOptions,
    Payload,
    canonical_value,
    source_unit,
)
from vigil.fhir_adapter.records import (
    MAX_IGNORED_CODES,
    NO_TIME,
    NO_VERSION,
    Deletion,
    IngestCounts,
    IngestResult,
    ObservationBatch,
    Quarantine,
    top_codes,
)

__all__ = ["USE", "Accumulator", "code_key"]

USE, _DELETE, _SKIP = 0, 1, 2
_STATUS = {"final": USE, "amended": USE, "corrected": USE, "preliminary": _SKIP,
           "entered-in-error": _DELETE}
_KEY_CHARS = 120
"""Longest ``system|code`` key recorded for an ignored code."""


def code_key(codings: Iterable[tuple[Any, Any]]) -> str:
    """Return ``system|code`` of the first coding (``"(no coding)"`` without one), bounded.

    Examples
    --------
    >>> code_key([("http://loinc.org", "8310-5"), ("urn:local", "T")])
    'http://loinc.org|8310-5'
    """
    for system, code in codings:
        return f"{system or ''}|{code or ''}"[:_KEY_CHARS]
    return "(no coding)"


class Accumulator:
    """Collects what the parsers read and applies the rules of :mod:`vigil.fhir_adapter.mapping`.

    Parameters
    ----------
    options : MappingOptions, optional
    """

    def __init__(self, options: MappingOptions | None = None) -> None:
        self.status_action = dict(_STATUS)
        if options is not None and options.accept_preliminary:
            self.status_action["preliminary"] = USE
        self.understood = frozenset() if options is None else options.understood_modifiers
        self.patient: list[str] = []
        self.variable: list[int] = []
        self.effective: list[int] = []
        self.value: list[float] = []
        self.resource_id: list[str] = []
        self.last_updated: list[int] = []
        self.seq: list[int] = []
        self.unit: list[int] = []
        self.version: list[int] = []
        self.issued: list[int] = []
        self.deletions: list[Deletion] = []
        self.quarantine: list[Quarantine] = []
        self.n_resources = 0
        self.n_unknown = 0
        self.n_skipped = 0
        self.n_absent = 0
        self.ignored: dict[str, int] = {}

    def ignore(self, code: str = "(no coding)") -> None:
        """Count an Observation without a catalog code, and its code (see :func:`code_key`).

        At most :data:`~vigil.fhir_adapter.records.MAX_IGNORED_CODES` distinct codes are
        kept; later new ones are counted under ``"other"``.
        """
        self.n_resources += 1
        self.n_unknown += 1
        if code not in self.ignored and len(self.ignored) >= MAX_IGNORED_CODES:
            code = "other"
        self.ignored[code] = self.ignored.get(code, 0) + 1

    def reject(self, rid: str, reason: str, last_updated: int = NO_TIME,
               resource_type: str = "Observation") -> None:
        """Quarantine a whole resource."""
        if resource_type == "Observation":
            self.n_resources += 1
        self.quarantine.append(Quarantine(resource_type, rid, reason, last_updated))

    def emit(self, rid: str, last_updated: int, status: str | None, patient: str | None,
             time: int | str, items: list[tuple[int, Payload]], *, version: int = NO_VERSION,
             issued: int = NO_TIME) -> None:
        """Apply the status, subject, time and value rules to one Observation.

        Parameters
        ----------
        rid : str
            Resource id.
        last_updated : int
            ``meta.lastUpdated`` in microseconds or :data:`NO_TIME`.
        status : str or None
            ``Observation.status``.
        patient : str or None
            The Patient id of ``subject`` (None if it names no Patient).
        time : int or str
            Effective time in microseconds, or the reason it is unusable.
        items : list of (int, Payload)
            One entry per catalog code found (``Observation.code`` first, then components);
            the variable may be :data:`AMBIGUOUS`.
        version : int, optional
            ``meta.versionId`` as a number (:func:`vigil.fhir_adapter.versions.version_number`).
        issued : int, optional
            ``issued`` in microseconds or :data:`NO_TIME`.
        """
        self.n_resources += 1
        action = self.status_action.get(status or "", _SKIP)
        if status is None:
            self.quarantine.append(Quarantine("Observation", rid, "no status", last_updated))
            return
        if action == _DELETE:
            self.deletions.append(Deletion(rid, patient, self.n_resources, last_updated,
                                           version, issued))
            return
        if action == _SKIP:
            self.n_skipped += 1
            return
        if patient is None:
            self.quarantine.append(Quarantine(
                "Observation", rid, "subject does not reference a Patient", last_updated))
            return
        if isinstance(time, str):
            self.quarantine.append(Quarantine("Observation", rid, time, last_updated))
            return
        for var, payload in items:
            if payload is None:
                self.n_absent += 1
                continue
            unit = -1
            if var == AMBIGUOUS:
                out: float | str = "codes name several catalog variables; none is more specific"
            elif isinstance(payload, str):
                out = payload
            else:
                out = canonical_value(var, payload[0], comparator=payload[1], system=payload[2],
                                      code=payload[3], unit=payload[4])
                unit = source_unit(var, system=payload[2], code=payload[3], unit=payload[4])
            if isinstance(out, str):
                self.quarantine.append(Quarantine("Observation", rid, out, last_updated))
                continue
            self.patient.append(patient)
            self.variable.append(var)
            self.effective.append(time)
            self.value.append(out)
            self.resource_id.append(rid)
            self.last_updated.append(last_updated)
            self.seq.append(self.n_resources)
            self.unit.append(unit)
            self.version.append(version)
            self.issued.append(issued)

    def result(self) -> IngestResult:
        """Everything collected, as an :class:`IngestResult` (no watermark)."""
        batch = ObservationBatch(
            patient=np.array(self.patient, dtype=object),
            variable=np.array(self.variable, dtype=np.int8),
            effective=np.array(self.effective, dtype=np.int64),
            value=np.array(self.value, dtype=np.float64),
            resource_id=np.array(self.resource_id, dtype=object),
            last_updated=np.array(self.last_updated, dtype=np.int64),
            seq=np.array(self.seq, dtype=np.int64),
            deletions=tuple(self.deletions),
            unit=np.array(self.unit, dtype=np.int8),
            version=np.array(self.version, dtype=np.int64),
            issued=np.array(self.issued, dtype=np.int64),
        )
        counts = IngestCounts(
            resources=self.n_resources, values=len(self.value),
            ignored_unknown_code=self.n_unknown, skipped_status=self.n_skipped,
            absent=self.n_absent, quarantined=len(self.quarantine), deleted=len(self.deletions),
            ignored_codes=top_codes(self.ignored),
        )
        return IngestResult(observations=batch, quarantine=tuple(self.quarantine), counts=counts)
