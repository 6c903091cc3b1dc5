"""The FHIR adapter's sources and writers, seen by the cycle.

:class:`LiveSource` puts a :class:`vigil.fhir_adapter.Source` (REST or NDJSON)
behind the cycle's :class:`~vigil.runtime.contracts.CycleSource`: the census is the
server's current one. :class:`FHIRSink` builds one RiskAssessment per score
(:func:`vigil.fhir_adapter.risk_assessment`, deterministic id) and hands them to
a :class:`vigil.fhir_adapter.Writer` (``PUT RiskAssessment/{id}`` or NDJSON).
:func:`open_source` and :func:`open_sink` build them from the settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import orjson

from vigil.fhir_adapter.protocols import Source, Writer
from vigil.fhir_adapter.records import Census, IngestResult
from vigil.fhir_adapter.riskassessment import risk_assessment
from vigil.runtime.contracts import CycleSink, CycleSource, ScoreBatch
from vigil.runtime.settings import VigilSettings, check_serving

__all__ = ["FHIRSink", "LiveSource", "open_sink", "open_source"]

UNCALIBRATED_NOTE = (
    "Not calibrated for this site: the probability is the shared model's raw output."
)


class LiveSource:
    """A FHIR adapter source read at the current time.

    Parameters
    ----------
    source : vigil.fhir_adapter.Source
    name : str
        The watermark's key in the store (changing it starts from scratch).
    """

    def __init__(self, source: Source, *, name: str) -> None:
        self.source = source
        self.name = name

    def census(self, tick: datetime) -> Census:
        """Return the server's current census (``tick`` is when the cycle was due)."""
        return self.source.census()

    def observations(
        self, since: datetime | None, until: datetime, *, patients: Sequence[str]
    ) -> IngestResult:
        """Observations of the census written after ``since``, up to now.

        ``until`` (the tick) does not bound the fetch: values written between the tick
        and now are stored too (the grid places each value by its own time), and the
        watermark is the server's latest ``meta.lastUpdated``.
        """
        return self.source.observations(since, None, patients=list(patients))

    def cursor(self) -> str | None:
        """Return the adapter source's position beyond the watermark (NDJSON files), or None."""
        position = getattr(self.source, "cursor", None)
        return None if position is None else position()

    def resume(self, cursor: str) -> None:
        """Hand a stored :meth:`cursor` back to the adapter source (NDJSON files)."""
        resume = getattr(self.source, "resume", None)
        if resume is not None:
            resume(cursor)

    def close(self) -> None:
        """Release the source's connections."""
        self.source.close()


class FHIRSink:
    """RiskAssessments through a FHIR adapter writer.

    Parameters
    ----------
    writer : vigil.fhir_adapter.Writer
    site, deployment : str
        Part of every RiskAssessment id (settings ``site_id`` and ``deployment_id``), so
        that sites or deployments sharing a FHIR server never overwrite each other's.
    """

    def __init__(self, writer: Writer, *, site: str, deployment: str) -> None:
        self.writer = writer
        self.site = site
        self.deployment = deployment

    def assessments(self, scores: ScoreBatch) -> list[tuple[str, str]]:
        """One RiskAssessment per score, as ``(id, JSON)``."""
        notes = () if scores.calibrated else (UNCALIBRATED_NOTE,)
        out = []
        for key, encounter, p in zip(
            scores.patient_keys, scores.encounters, scores.probability.tolist(), strict=True
        ):
            resource = risk_assessment(
                site=self.site, deployment=self.deployment, patient=key, encounter=encounter,
                model_name=scores.model_name,
                model_version=scores.model_version, scored_at=scores.tick, probability=p,
                threshold=scores.threshold, notes=notes,
            )
            out.append((str(resource["id"]), orjson.dumps(resource).decode()))
        return out

    def put(self, bodies: list[str]) -> None:
        """Write the resources (idempotent by id)."""
        self.writer.write([orjson.loads(b) for b in bodies])

    def close(self) -> None:
        """Release the writer."""
        self.writer.close()


def open_source(settings: VigilSettings) -> CycleSource:
    """Open the source the settings name (``data.source``)."""
    check_serving(settings)
    d = settings.data
    if d.source == "ndjson":
        from vigil.fhir_adapter.bulk import NDJSONSource

        assert d.ndjson_dir is not None
        return LiveSource(NDJSONSource(d.ndjson_dir), name=f"ndjson:{d.ndjson_dir.resolve()}")
    from vigil.fhir_adapter.rest import RESTSource

    assert settings.fhir is not None
    return LiveSource(RESTSource(settings.fhir), name=f"fhir:{settings.fhir.base_url}")


def open_sink(settings: VigilSettings) -> CycleSink | None:
    """Open the write-back target the settings name (``data.writeback``), or None."""
    check_serving(settings)
    d = settings.data
    if d.writeback == "none":
        return None
    if d.writeback == "ndjson":
        from vigil.fhir_adapter.writers import NDJSONWriter

        assert d.writeback_dir is not None
        d.writeback_dir.mkdir(parents=True, exist_ok=True)
        return FHIRSink(NDJSONWriter(d.writeback_dir), site=settings.site_id,
                        deployment=settings.deployment_id)
    from vigil.fhir_adapter.writers import RESTWriter

    assert settings.fhir is not None
    return FHIRSink(RESTWriter(settings.fhir), site=settings.site_id,
                    deployment=settings.deployment_id)
