"""The adapter's two seams: data in (:class:`Source`) and scores out (:class:`Writer`).

Implementations: :class:`~vigil.fhir_adapter.rest.RESTSource` and
:class:`~vigil.fhir_adapter.bulk.NDJSONSource`;
:class:`~vigil.fhir_adapter.writers.RESTWriter` and
:class:`~vigil.fhir_adapter.writers.NDJSONWriter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from vigil.fhir_adapter.records import Census, IngestResult

__all__ = ["Capabilities", "Source", "WriteReport", "Writer"]


@dataclass(frozen=True)
class Capabilities:
    """What a source said about itself at the start.

    Attributes
    ----------
    fhir_version : str
        ``CapabilityStatement.fhirVersion`` (``"4.0.1"`` for R4), or ``"ndjson"``.
    software : str
        Server software name, or the directory read.
    can_write_risk : bool
        Whether ``RiskAssessment`` supports ``update`` (PUT).
    """

    fhir_version: str
    software: str
    can_write_risk: bool


@runtime_checkable
class Source(Protocol):
    """Where the runtime gets its census and observations."""

    def check(self) -> Capabilities:
        """Verify the source can serve vigil (raises :class:`~vigil.core.errors.FHIRError`)."""
        ...

    def census(self) -> Census:
        """Return the in-progress ICU stays with their patients."""
        ...

    def observations(self, since: datetime | None, until: datetime | None = None, *,
                     patients: Sequence[str] | None = None) -> IngestResult:
        """Observations last updated after ``since`` (minus the overlap) and up to ``until``.

        ``patients`` restricts the fetch to these Patient ids (None: all). The
        result's ``watermark`` is the ``since`` of the next call. Values may be
        returned again by the next call (overlap window): upsert by resource id.
        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


@dataclass(frozen=True)
class WriteReport:
    """What a :class:`Writer` did.

    Attributes
    ----------
    written : int
        Resources created or changed.
    unchanged : int
        Resources already present with the same content (NDJSON) — a REST PUT of
        the same id counts as written, the server keeps one resource.
    """

    written: int
    unchanged: int = 0


@runtime_checkable
class Writer(Protocol):
    """Where RiskAssessments go; writing the same id twice never duplicates."""

    def write(self, assessments: Sequence[Mapping[str, Any]]) -> WriteReport:
        """Write RiskAssessments (each with its deterministic ``id``)."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
