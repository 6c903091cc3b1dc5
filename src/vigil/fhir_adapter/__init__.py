"""FHIR adapter: FHIR R4 (REST or Bulk NDJSON) in, the hourly grid out, RiskAssessments back.

What the runtime uses
---------------------

Settings
    :class:`FHIRSettings` (pydantic; nest it in the runtime's settings): base URL,
    auth (``none`` | ``bearer`` | ``smart`` with :class:`SMARTSettings`: private_key_jwt,
    RS384/ES384, token cached and refreshed before expiry), timeouts, retries and
    backoff, page size and page cap, concurrency, overlap window, ICU locations and
    their units. Secrets are ``SecretStr`` and never logged, shown or raised.

Sources (:class:`Source` protocol)
    :class:`RESTSource` (an ``httpx.Client`` may be injected) and
    :class:`NDJSONSource` (a directory: the embedded default, or a ``$export``
    download made by :func:`bulk_export`). Each has

    - ``check()`` -> :class:`Capabilities` (raises :class:`~vigil.core.errors.FHIRError`);
    - ``census()`` -> :class:`Census`: one :class:`Stay` per patient (patient key =
      FHIR Patient id, encounter id, ICU admission time, unit ``MICU``/``SICU``/None,
      gender, birth date -> :attr:`Stay.age`, hospital admission ->
      :attr:`Stay.hosp_adm_time`), plus quarantined Encounters;
    - ``observations(since, until, *, patients=None)`` -> :class:`IngestResult`:
      an :class:`ObservationBatch` (columns: patient, variable, effective time in UTC
      microseconds, value in the canonical unit, resource id, ``meta.lastUpdated``,
      reading order ``seq``; :meth:`ObservationBatch.records` gives frozen
      :class:`MappedObservation` rows with tz-aware UTC datetimes), the
      :class:`Deletion` of each ``entered-in-error`` resource, the
      :class:`Quarantine` entries (resource type, id, reason), the
      :class:`IngestCounts` (ignored unknown codes, quarantined, deleted, ...) and
      the new ``watermark``.

    Store values by resource id: the newest version (by ``meta.versionId``, else
    ``meta.lastUpdated``, else ``issued``, reading order last:
    :mod:`vigil.fhir_adapter.versions`; the batch carries ``version`` and ``issued``)
    replaces the others, a deletion that is the newest removes it, and the overlap
    window may return a value twice.

Mapping rules
    :mod:`vigil.fhir_adapter.mapping` (LOINC -> catalog, UCUM conversion, status,
    time, plausibility), :mod:`vigil.fhir_adapter.codes` (panel context of
    components, code systems, substance-only codes) and
    :mod:`vigil.fhir_adapter.elements` (modifier extensions and unknown elements
    quarantine the Observation; understood modifier URLs are
    ``MappingOptions.understood_modifiers``, empty by default). Two parsers give
    identical results: :func:`parse_ndjson` / :func:`parse_fast` (orjson, no pydantic) and
    :func:`parse_ndjson_strict` / :func:`parse_strict` (fhir.resources R4B validation).

Grid
    :func:`grid_from_observations` (census stays, batch, ``until``) ->
    :class:`vigil.features.HourlyGrid`. An observation at ICU admission + x hours
    goes to hour ``ceil(x)``; the last value of an hour wins.

Write-back
    :func:`risk_assessment` builds the RiskAssessment (deterministic id from
    patient, model version and scoring time; ``probabilityDecimal`` is a 0-1
    fraction, said in an extension and a note); a :class:`Writer`
    (:class:`RESTWriter`: ``PUT RiskAssessment/{id}``; :class:`NDJSONWriter`)
    writes it idempotently.

Imaging write-back
    :func:`imaging_report` builds the DiagnosticReport + Observation of one study's
    score (deterministic ids: :func:`imaging_report_ids`); :class:`FhirStudySink`
    (a ``StudySink`` of the imaging runtime) PUTs them, or keeps them in NDJSON files.

Synthetic data
    :func:`write_synth` turns PhysioNet rows into FHIR NDJSON and transaction
    Bundles (``vigil fhir synth``); its time rule is in :mod:`vigil.fhir_adapter.synth`.
"""

from vigil.fhir_adapter.auth import BearerAuth, Credentials, NoAuth, SMARTBackendAuth, sign_jwt
from vigil.fhir_adapter.bulk import NDJSONSource, bulk_export, ndjson_files
from vigil.fhir_adapter.census import build_census
from vigil.fhir_adapter.fast import parse_fast, parse_ndjson
from vigil.fhir_adapter.hourly import grid_from_observations, hours_until
from vigil.fhir_adapter.http import FHIRHttp
from vigil.fhir_adapter.imaging_report import FhirStudySink, imaging_report, imaging_report_ids
from vigil.fhir_adapter.mapping import MappingOptions
from vigil.fhir_adapter.protocols import Capabilities, Source, Writer, WriteReport
from vigil.fhir_adapter.records import (
    NO_TIME,
    Census,
    Deletion,
    IngestCounts,
    IngestResult,
    MappedObservation,
    ObservationBatch,
    Quarantine,
    Stay,
    from_micros,
    to_micros,
)
from vigil.fhir_adapter.rest import RESTSource
from vigil.fhir_adapter.riskassessment import (
    qualitative_risk,
    risk_assessment,
    risk_assessment_id,
)
from vigil.fhir_adapter.settings import AuthMode, FHIRSettings, SMARTSettings
from vigil.fhir_adapter.strict import parse_ndjson_strict, parse_strict
from vigil.fhir_adapter.synth import SynthSummary, icu_admission, write_synth
from vigil.fhir_adapter.writers import NDJSONWriter, RESTWriter

__all__ = [
    "NO_TIME",
    "AuthMode",
    "BearerAuth",
    "Capabilities",
    "Census",
    "Credentials",
    "Deletion",
    "FHIRHttp",
    "FHIRSettings",
    "FhirStudySink",
    "IngestCounts",
    "IngestResult",
    "MappedObservation",
    "MappingOptions",
    "NDJSONSource",
    "NDJSONWriter",
    "NoAuth",
    "ObservationBatch",
    "Quarantine",
    "RESTSource",
    "RESTWriter",
    "SMARTBackendAuth",
    "SMARTSettings",
    "Source",
    "Stay",
    "SynthSummary",
    "WriteReport",
    "Writer",
    "build_census",
    "bulk_export",
    "from_micros",
    "grid_from_observations",
    "hours_until",
    "icu_admission",
    "imaging_report",
    "imaging_report_ids",
    "ndjson_files",
    "parse_fast",
    "parse_ndjson",
    "parse_ndjson_strict",
    "parse_strict",
    "qualitative_risk",
    "risk_assessment",
    "risk_assessment_id",
    "sign_jwt",
    "to_micros",
    "write_synth",
]
