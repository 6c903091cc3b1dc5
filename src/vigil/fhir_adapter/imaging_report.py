"""An imaging score as a FHIR R4 DiagnosticReport + Observation (write-back), and its sink.

One :class:`~vigil.runtime.study_contracts.StudyScore` (one model's score of one
study) becomes two resources, written with ``PUT`` under deterministic ids:

- **Observation** (the result): ``status`` final, ``category`` imaging, ``code`` DICOM
  DCM 122157 "Probability" (PS3.16 Annex D; the code the DICOM SR of the same score
  uses for its measurement, :mod:`vigil.dicom_adapter.sr`), ``valueQuantity`` the
  site-calibrated study probability (the highest of its scored images) as a fraction
  (UCUM ``1``), ``interpretation`` the site-calibrated decision (v3
  ObservationInterpretation ``POS`` at or above the threshold, else ``NEG``),
  ``referenceRange.high`` the threshold, one ``component`` Pneumonia (SNOMED CT
  233604007) = Present (52101004) / Absent (272519000), ``method`` and ``device`` the
  model (``name`` + ``version``, as vigil's RiskAssessment), ``derivedFrom`` the
  ImagingStudy and, in :data:`SCORED_INSTANCE_URL` extensions, the scored instances'
  SOP Instance UIDs.
- **DiagnosticReport**: ``status`` final, ``category`` RAD (HL7 v2 table 0074),
  ``code`` LOINC 18748-4 "Diagnostic imaging study", ``effectiveDateTime`` the study's
  date (and time when its TimezoneOffsetFromUTC is known), ``issued`` the scoring
  time, ``imagingStudy`` the study, ``result`` the Observation, ``conclusion`` a
  sentence a radiologist reads in the RIS, the model in a :data:`MODEL_EXTENSION_URL`
  extension (R4 ``performer`` takes no Device). When the pixel chain refused every
  instance of the study there is no Observation and the report is ``cancelled``
  with the refusal reasons (structural: DICOM keywords, never identifiers).

The ImagingStudy is referenced logically (``identifier`` ``urn:dicom:uid`` /
``urn:oid:<StudyInstanceUID>``, as the HL7 DICOM SR to FHIR mapping IG does), since the
FHIR server need not hold it; ``basedOn`` is the ServiceRequest of the accession number
(identifier type ``ACSN``) when the study has one. ``subject`` is ``Patient/<PatientID>``
(the site maps DICOM PatientID to the FHIR Patient id, as sepsis's patient key is the
Patient id) or, with ``patient_system``, an identifier reference ``{system, value}``.

Ids: UUID v5 (in :data:`~vigil.fhir_adapter.riskassessment.RISK_ID_NAMESPACE`) of
site, deployment, resource type, StudyInstanceUID, model name, model version and role:
the same score written again replaces itself, a new model version writes new resources,
and two sites or deployments sharing a server never overwrite each other's.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from vigil.core.errors import DataError, FHIRTransportError, ScoringError
from vigil.fhir_adapter.auth import Credentials
from vigil.fhir_adapter.http import FHIRHttp
from vigil.fhir_adapter.riskassessment import MODEL_SYSTEM, RISK_ID_NAMESPACE, _instant, _utc
from vigil.fhir_adapter.settings import FHIRSettings
from vigil.fhir_adapter.writers import NDJSONWriter

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from vigil.dicom_adapter.light_dataset import HeaderView
    from vigil.runtime.study_contracts import StudyScore

__all__ = [
    "DICOM_UID_SYSTEM",
    "MODEL_EXTENSION_URL",
    "ROLE_TAG_SYSTEM",
    "SCORED_INSTANCE_URL",
    "FhirStudySink",
    "imaging_report",
    "imaging_report_ids",
    "study_reference",
]

DICOM_UID_SYSTEM = "urn:dicom:uid"
"""Identifier system of DICOM UIDs (values ``urn:oid:<uid>``)."""
MODEL_EXTENSION_URL = "urn:vigil:fhir:StructureDefinition:model"
"""Extension (``valueCoding``: :data:`MODEL_SYSTEM`, name, version) naming the model."""
SCORED_INSTANCE_URL = "urn:vigil:fhir:StructureDefinition:scored-instance"
"""Extension (``valueOid``) naming one SOP Instance the score was computed from."""
ROLE_TAG_SYSTEM = "urn:vigil:fhir:model-role"
"""``meta.tag`` system marking a shadow model's resources (code ``shadow``)."""
SHADOW_NOTE = "Shadow model under evaluation: not for clinical use."
UNCALIBRATED_NOTE = (
    "Not calibrated for this site: the probability is the shared model's raw output.")

_SNOMED = "http://snomed.info/sct"
_LOINC = "http://loinc.org"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_UCUM = "http://unitsofmeasure.org"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_PNEUMONIA = {"system": _SNOMED, "code": "233604007", "display": "Pneumonia"}
_PRESENT = {"system": _SNOMED, "code": "52101004", "display": "Present"}
_ABSENT = {"system": _SNOMED, "code": "272519000", "display": "Absent"}
_UID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def imaging_report_ids(*, site: str, deployment: str, study_uid: str, model_name: str,
                       model_version: str, role: str) -> tuple[str, str]:
    """Return the deterministic ``(DiagnosticReport id, Observation id)`` of a study's score.

    UUID v5 (RFC 9562) of ``site|deployment|type|study UID|model name|version|role``.
    """
    key = f"{site}|{deployment}|{{}}|{study_uid}|{model_name}|{model_version}|{role}"
    return (str(uuid.uuid5(RISK_ID_NAMESPACE, key.format("DiagnosticReport"))),
            str(uuid.uuid5(RISK_ID_NAMESPACE, key.format("Observation"))))


def _oid(uid: str, what: str) -> str:
    if not _UID.fullmatch(uid) or len(uid) > 64:
        raise DataError(f"expected the {what} to be a DICOM UID (digits and dots, at most 64), "
                        f"got a value of {len(uid)} characters")
    return f"urn:oid:{uid}"


def study_reference(study_uid: str) -> dict[str, Any]:
    """Logical reference to the ImagingStudy of ``study_uid`` (identifier ``urn:oid:<uid>``)."""
    return {"type": "ImagingStudy",
            "identifier": {"system": DICOM_UID_SYSTEM,
                           "value": _oid(study_uid, "StudyInstanceUID")}}


def _subject(patient_key: str, patient_system: str | None) -> dict[str, Any]:
    if not patient_key:
        raise DataError("expected a DICOM PatientID for the report's subject, got an empty one")
    if patient_system is not None:
        return {"type": "Patient", "identifier": {"system": patient_system, "value": patient_key}}
    if not _FHIR_ID.fullmatch(patient_key):
        raise DataError("expected the DICOM PatientID to be a FHIR Patient id (letters, digits, "
                        f"'-' and '.', at most 64), got {len(patient_key)} characters that are "
                        "not; set the patient identifier system to refer to it by identifier")
    return {"reference": f"Patient/{patient_key}"}


def _effective(sources: Sequence[Dataset | HeaderView], fallback: str) -> str:
    """Return the study's DICOM date (and time with a known UTC offset) as a FHIR dateTime."""
    if not sources:
        return fallback
    ds = sources[0]
    day = str(ds.get("StudyDate", "") or "")
    if not re.fullmatch(r"\d{8}", day):
        return fallback
    date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    hms = str(ds.get("StudyTime", "") or "")
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    if re.fullmatch(r"\d{6}(\.\d*)?", hms) and re.fullmatch(r"[+-]\d{4}", offset):
        return f"{date}T{hms[:2]}:{hms[2:4]}:{hms[4:6]}{offset[:3]}:{offset[3:]}"
    return date


def _model_coding(score: StudyScore) -> dict[str, str]:
    return {"system": MODEL_SYSTEM, "code": score.model_name, "version": score.model_version,
            "display": f"{score.model_name} {score.model_version}"}


def _probability(score: StudyScore) -> float:
    p = score.study_probability
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ScoringError(f"expected a study probability in [0, 1], got {p!r}; check the model "
                           "output and calibration")
    if not (math.isfinite(score.threshold) and 0.0 <= score.threshold <= 1.0):
        raise ScoringError(f"expected a threshold in [0, 1], got {score.threshold!r}")
    return p


def _conclusion(score: StudyScore, p: float | None) -> str:
    model = f"vigil {score.model_name} {score.model_version}"
    refused = len(score.quarantined)
    if p is None:
        reasons = "; ".join(sorted({r for _, r in score.quarantined})) or "none given"
        return (f"AI assessment not possible ({model}): none of the {refused} image(s) could be "
                f"read ({reasons}).")
    verdict = "pneumonia suspected" if score.positive else "no pneumonia suspected"
    site = "site-calibrated" if score.calibrated else "not calibrated for this site"
    tail = f", {refused} image(s) could not be read" if refused else ""
    return (f"AI assessment ({model}): {verdict}; probability {p:.3f} against the decision "
            f"threshold {score.threshold:.3f} ({site}); {len(score.sop_instance_uids)} image(s) "
            f"scored{tail}. Computer-aided result for review by a radiologist, not a diagnosis.")


def imaging_report(score: StudyScore, *, site: str, deployment: str,
                   sources: Sequence[Dataset | HeaderView] = (), patient_system: str | None = None,
                   accession_system: str | None = None) -> tuple[dict[str, Any],
                                                                 dict[str, Any] | None]:
    """Build the DiagnosticReport and Observation of one study's score.

    Parameters
    ----------
    score : StudyScore
        One model's score of one study (probabilities of shape (n_scored,)).
    site, deployment : str
        The site's id and its deployment's: part of the resource ids.
    sources : sequence of pydicom.Dataset, optional
        The study's instances (the first gives StudyDate, StudyTime and
        TimezoneOffsetFromUTC for ``effectiveDateTime``; without them, the scoring time).
    patient_system : str, optional
        Identifier system of DICOM PatientID at the site; None refers to
        ``Patient/<PatientID>``.
    accession_system : str, optional
        Identifier system of accession numbers (``basedOn``); None leaves it out of
        the identifier, which then has only its ``ACSN`` type.

    Returns
    -------
    (dict, dict or None)
        The DiagnosticReport and its Observation (None when no instance was scored:
        the report is then ``cancelled``). Both valid for fhir.resources R4B.

    Raises
    ------
    ScoringError
        If the study probability or the threshold is not a number in [0, 1].
    DataError
        If the scoring time is naive, the study UID is not a UID, or the PatientID
        cannot be referred to.
    """
    when = _instant(_utc(score.scored_at))
    study = score.study
    report_id, obs_id = imaging_report_ids(
        site=site, deployment=deployment, study_uid=study.study_uid,
        model_name=score.model_name, model_version=score.model_version, role=score.role)
    imaging_study = study_reference(study.study_uid)
    subject = _subject(study.patient_key, patient_system)
    notes = ([SHADOW_NOTE] if score.role != "active" else []) + (
        [] if score.calibrated else [UNCALIBRATED_NOTE])
    meta = ({"meta": {"tag": [{"system": ROLE_TAG_SYSTEM, "code": score.role}]}}
            if score.role != "active" else {})
    based_on: list[dict[str, Any]] = []
    if study.accession:
        acsn: dict[str, Any] = {"type": {"coding": [{"system": _V2_0203, "code": "ACSN"}]},
                                "value": study.accession}
        if accession_system is not None:
            acsn["system"] = accession_system
        based_on = [{"type": "ServiceRequest", "identifier": acsn}]
    observation: dict[str, Any] | None = None
    effective = _effective(sources, when)
    p = _probability(score) if len(score.sop_instance_uids) else None
    if p is not None:
        decision = ("POS", "Positive") if score.positive else ("NEG", "Negative")
        fraction = {"unit": "1", "system": _UCUM, "code": "1"}
        observation = {
            "resourceType": "Observation", "id": obs_id, **meta,
            "extension": [{"url": SCORED_INSTANCE_URL, "valueOid": _oid(u, "SOPInstanceUID")}
                          for u in score.sop_instance_uids],
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{obs_id}"}],
            **({"basedOn": based_on} if based_on else {}),
            "status": "final",
            "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "imaging",
                                      "display": "Imaging"}]}],
            "code": {"coding": [{"system": _DCM, "code": "122157", "display": "Probability"}],
                     "text": "Probability of pneumonia (AI, chest radiograph)"},
            "subject": subject,
            "effectiveDateTime": effective,
            "issued": when,
            "valueQuantity": {"value": p, **fraction},
            "interpretation": [{"coding": [{"system": _INTERPRETATION, "code": decision[0],
                                            "display": decision[1]}]}],
            "referenceRange": [{"high": {"value": float(score.threshold), **fraction},
                                "text": "negative below the site decision threshold, positive "
                                        "at or above it"}],
            "method": {"coding": [_model_coding(score)],
                       "text": f"vigil model {score.model_name} version {score.model_version}"},
            "device": {"display": f"vigil {score.model_name} {score.model_version}"},
            "derivedFrom": [imaging_study],
            "component": [{"code": {"coding": [_PNEUMONIA]},
                           "valueCodeableConcept": {
                               "coding": [_PRESENT if score.positive else _ABSENT]}}],
        }
        if notes:
            observation["note"] = [{"text": n} for n in notes]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": report_id, **meta,
        "extension": [{"url": MODEL_EXTENSION_URL, "valueCoding": _model_coding(score)}],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{report_id}"}],
        **({"basedOn": based_on} if based_on else {}),
        "status": "final" if observation is not None else "cancelled",
        "category": [{"coding": [{"system": _V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": _LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "AI chest radiograph assessment (pneumonia)"},
        "subject": subject,
        "effectiveDateTime": effective,
        "issued": when,
        "imagingStudy": [imaging_study],
        "conclusion": " ".join([_conclusion(score, p), *notes]),
    }
    if observation is not None:
        report["result"] = [{"reference": f"Observation/{obs_id}"}]
    return report, observation


class FhirStudySink:
    """Writes each study's score as a DiagnosticReport + Observation, idempotently.

    To a FHIR server (``PUT {type}/{id}``), or, like the sepsis ``writeback = "ndjson"``
    (embedded mode), to ``DiagnosticReport.ndjson`` and ``Observation.ndjson`` in a
    directory (:class:`~vigil.fhir_adapter.writers.NDJSONWriter`: one line per id, synced).
    Follows the sepsis write-back: only the active model's scores are written unless
    ``include_shadow`` (then tagged ``meta.tag`` :data:`ROLE_TAG_SYSTEM` ``shadow``
    and noted "not for clinical use", under their own ids). The Observation is
    written before the report that refers to it.

    Parameters
    ----------
    target : FHIRSettings or Path
        The site's FHIR server (auth, timeouts, retries as for the sepsis write-back),
        or a directory for the NDJSON files.
    site, deployment : str
        Settings ``site_id`` and ``deployment_id`` (part of every id).
    client : httpx.Client, optional
        (FHIR server only, as the three below.)
    credentials : Credentials, optional
        Share another client's (``source.http.credentials``) to reuse its token.
    sleep : callable, optional
        Waits between retries (tests pass a recorder).
    patient_system, accession_system : str, optional
        See :func:`imaging_report`.
    include_shadow : bool, optional
        Also write shadow models' scores (default False, as sepsis).
    """

    name = "fhir"

    def __init__(self, target: FHIRSettings | Path, *, site: str, deployment: str,
                 client: httpx.Client | None = None, credentials: Credentials | None = None,
                 sleep: Callable[[float], None] = time.sleep, patient_system: str | None = None,
                 accession_system: str | None = None, include_shadow: bool = False) -> None:
        self.http: FHIRHttp | None = None
        self.files: dict[str, NDJSONWriter] = {}
        self._page: dict[str, list[dict[str, Any]]] | None = None
        if isinstance(target, FHIRSettings):
            self.http = FHIRHttp(target, client=client, credentials=credentials, sleep=sleep)
        else:
            Path(target).mkdir(parents=True, exist_ok=True)
            self.files = {kind: NDJSONWriter(Path(target), resource_type=kind)
                          for kind in ("Observation", "DiagnosticReport")}
        self.site = site
        self.deployment = deployment
        self.patient_system = patient_system
        self.accession_system = accession_system
        self.include_shadow = include_shadow

    def __repr__(self) -> str:
        where = repr(self.http) if self.http is not None else repr(list(self.files.values()))
        return f"FhirStudySink({where}, include_shadow={self.include_shadow})"

    def resources(self, score: StudyScore, sources: Sequence[Dataset | HeaderView] = ()
                  ) -> list[dict[str, Any]]:
        """Return the resources :meth:`write` sends for ``score``, in order (none if skipped)."""
        if score.role != "active" and not self.include_shadow:
            return []
        report, observation = imaging_report(
            score, site=self.site, deployment=self.deployment, sources=sources,
            patient_system=self.patient_system, accession_system=self.accession_system)
        return [r for r in (observation, report) if r is not None]

    def write(self, score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> None:
        """Write the score's resources (PUT, or one NDJSON line per id).

        Raises
        ------
        FHIRTransportError
            When the server refuses one (the message names the resource type and the
            HTTP status) or cannot be reached; what was written before stays, and
            writing the score again completes it.
        OSError
            When an NDJSON file cannot be written (nothing of that resource written).
        """
        resources = self.resources(score, sources)
        if self.http is not None:
            _put_all(self.http, resources)
            return
        if self._page is not None:
            for resource in resources:
                self._page[resource["resourceType"]].append(resource)
            return
        for kind in ("Observation", "DiagnosticReport"):
            batch = [r for r in resources if r["resourceType"] == kind]
            if batch:
                self.files[kind].write(batch)

    def begin_page(self) -> None:
        """Hold the NDJSON lines of the following writes until :meth:`end_page`.

        The imaging cycle writes a page's studies, then makes them durable with one
        append (one ``fsync``) per file, then records the page; a crash before the
        record replays the page, whose ids are deterministic. A FHIR server gets each
        write at once, as before.
        """
        if self.files:
            self._page = {kind: [] for kind in self.files}

    def end_page(self) -> None:
        """Append the held lines, Observations before the reports that refer to them.

        Raises
        ------
        OSError
            When a file cannot be written: that file holds none of the page's lines
            (the Observations may be on disk without their reports; the page is
            written again, in full, when it is retried).
        """
        page, self._page = self._page, None
        if page is None:
            return
        for kind in ("Observation", "DiagnosticReport"):
            if page[kind]:
                self.files[kind].write(page[kind])

    def __enter__(self) -> FhirStudySink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this sink made it (NDJSON writes are already synced)."""
        if self.http is not None:
            self.http.close()


def _put_all(http: FHIRHttp, resources: Iterable[dict[str, Any]]) -> None:
    for resource in resources:
        kind = resource["resourceType"]
        try:
            http.put(resource)
        except FHIRTransportError as exc:
            if exc.status is None:
                head = f"could not write the imaging {kind}"
            else:
                head = f"the FHIR server refused the imaging {kind} (HTTP {exc.status})"
            hint = (f"; the client needs write access to {kind} (SMART scope "
                    f"system/{kind}.cu)" if exc.status in (401, 403) else "")
            raise FHIRTransportError(f"{head}: {exc}{hint}", url=exc.url,
                                     status=exc.status) from exc
