"""Imaging write-back to FHIR: DiagnosticReport + Observation, their ids, the sink on sekmet."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir_support import FaultyClient, running_server
from pydicom.dataset import Dataset

from vigil.core.errors import DataError, FHIRTransportError, ScoringError
from vigil.fhir_adapter import FHIRSettings
from vigil.fhir_adapter.imaging_report import (
    DICOM_UID_SYSTEM,
    MODEL_EXTENSION_URL,
    ROLE_TAG_SYSTEM,
    SCORED_INSTANCE_URL,
    FhirStudySink,
    imaging_report,
    imaging_report_ids,
)
from vigil.fhir_adapter.riskassessment import MODEL_SYSTEM, RISK_ID_NAMESPACE
from vigil.runtime.study_contracts import StudyRef, StudyScore

STUDY = "1.2.826.0.1.3680043.8.498.10101"
INSTANCES = ("1.2.826.0.1.3680043.8.498.10101.1", "1.2.826.0.1.3680043.8.498.10101.2")
PATIENT, ACCESSION = "p000042", "ACC-777-SECRET"
WHEN = datetime(2026, 3, 2, 15, 15, tzinfo=timezone(timedelta(hours=1)))  # 14:15 UTC


def score_of(probability: tuple[float, ...] = (0.2, 0.65), *, threshold: float = 0.4,
             role: str = "active", version: str = "1.0.0", calibrated: bool = True,
             patient: str = PATIENT, accession: str | None = ACCESSION,
             quarantined: tuple[tuple[str, str], ...] = ()) -> StudyScore:
    ref = StudyRef(STUDY, "orthanc-id", patient, ("DX",), accession)
    p = np.asarray(probability, dtype=np.float64)
    return StudyScore(ref, "imaging-federated", version, role, threshold, WHEN,
                      INSTANCES[: len(p)], raw_probability=p, probability=p,
                      calibrated=calibrated, quarantined=quarantined)


def build(score: StudyScore | None = None, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    report, observation = imaging_report(score or score_of(), site="hospital-a",
                                         deployment="production", **kw)
    assert observation is not None
    return report, observation


def test_both_resources_validate_and_carry_the_result() -> None:
    report, obs = build()
    DiagnosticReport.model_validate(report)
    Observation.model_validate(obs)
    study = {"type": "ImagingStudy",
             "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"}}
    # The report: a final radiology report on the study, pointing at its Observation.
    assert (report["status"], report["category"][0]["coding"][0]["code"]) == ("final", "RAD")
    assert report["code"]["coding"][0] == {"system": "http://loinc.org", "code": "18748-4",
                                           "display": "Diagnostic imaging study"}
    assert report["subject"] == {"reference": f"Patient/{PATIENT}"} == obs["subject"]
    assert report["imagingStudy"] == [study] and obs["derivedFrom"] == [study]
    assert report["result"] == [{"reference": f"Observation/{obs['id']}"}]
    assert report["issued"] == obs["issued"] == "2026-03-02T14:15:00Z"
    assert report["extension"] == [{"url": MODEL_EXTENSION_URL, "valueCoding": {
        "system": MODEL_SYSTEM, "code": "imaging-federated", "version": "1.0.0",
        "display": "imaging-federated 1.0.0"}}]
    assert "pneumonia suspected; probability 0.650 against the decision threshold 0.400" in (
        report["conclusion"])
    acsn = {"type": "ServiceRequest", "identifier": {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                             "code": "ACSN"}]}, "value": ACCESSION}}
    assert report["basedOn"] == [acsn] == obs["basedOn"]
    # The Observation: the study probability (the max of its images) and the decision.
    assert obs["status"] == "final" and obs["category"][0]["coding"][0]["code"] == "imaging"
    assert obs["code"]["coding"][0]["code"] == "122157"
    assert obs["valueQuantity"] == {"value": 0.65, "unit": "1",
                                    "system": "http://unitsofmeasure.org", "code": "1"}
    assert obs["interpretation"][0]["coding"][0]["code"] == "POS"
    assert obs["referenceRange"][0]["high"]["value"] == 0.4
    assert obs["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    assert obs["method"]["coding"][0] == report["extension"][0]["valueCoding"]
    assert [e["valueOid"] for e in obs["extension"] if e["url"] == SCORED_INSTANCE_URL] == [
        f"urn:oid:{u}" for u in INSTANCES]
    assert "note" not in obs and "meta" not in obs


@pytest.mark.parametrize(("p", "threshold", "code", "present"), [
    (0.39, 0.4, "NEG", "272519000"), (0.4, 0.4, "POS", "52101004"),
    (0.95, 0.4, "POS", "52101004"), (0.0, 0.01, "NEG", "272519000")])
def test_the_interpretation_is_the_site_calibrated_decision(p: float, threshold: float, code: str,
                                                            present: str) -> None:
    report, obs = build(score_of((p,), threshold=threshold))
    assert obs["interpretation"][0]["coding"][0]["code"] == code
    assert obs["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == present
    assert obs["valueQuantity"]["value"] == p
    assert ("no pneumonia suspected" in report["conclusion"]) is (code == "NEG")


def test_ids_are_uuid5_of_site_deployment_type_study_model_and_role() -> None:
    report, obs = build()
    key = f"hospital-a|production|{{}}|{STUDY}|imaging-federated|1.0.0|active"
    assert report["id"] == str(uuid.uuid5(RISK_ID_NAMESPACE, key.format("DiagnosticReport")))
    assert obs["id"] == str(uuid.uuid5(RISK_ID_NAMESPACE, key.format("Observation")))
    assert report["identifier"] == [{"system": "urn:ietf:rfc:3986",
                                     "value": f"urn:uuid:{report['id']}"}]
    assert build() == (report, obs)  # same score, same bodies
    assert build(score_of((0.9,)))[0]["id"] == report["id"]  # a new probability replaces it
    assert build(replace(score_of(), scored_at=WHEN + timedelta(days=1)))[0]["id"] == report["id"]
    ids = {report["id"]}
    for other in (score_of(version="1.0.1"), score_of(role="shadow")):
        ids.add(build(other)[0]["id"])
    ids.add(imaging_report(score_of(), site="hospital-b", deployment="production")[0]["id"])
    ids.add(imaging_report(score_of(), site="hospital-a", deployment="test")[0]["id"])
    assert len(ids) == 5
    assert (report["id"], obs["id"]) == imaging_report_ids(
        site="hospital-a", deployment="production", study_uid=STUDY,
        model_name="imaging-federated", model_version="1.0.0", role="active")
    assert all(re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", i) for i in ids)


def test_effective_time_is_the_study_date_and_time_when_the_offset_is_known() -> None:
    ds = Dataset()
    ds.StudyDate, ds.StudyTime = "20260301", "083015.5"
    assert build(sources=[ds])[0]["effectiveDateTime"] == "2026-03-01"
    ds.TimezoneOffsetFromUTC = "-0500"
    report, obs = build(sources=[ds])
    assert report["effectiveDateTime"] == obs["effectiveDateTime"] == "2026-03-01T08:30:15-05:00"
    DiagnosticReport.model_validate(report)
    assert build()[0]["effectiveDateTime"] == "2026-03-02T14:15:00Z"  # no sources: scoring time


def test_subject_by_identifier_when_the_site_names_its_patient_id_system() -> None:
    report, obs = build(patient_system="urn:oid:1.2.3.4.5", accession_system="urn:acc")
    assert report["subject"] == {"type": "Patient", "identifier": {
        "system": "urn:oid:1.2.3.4.5", "value": PATIENT}} == obs["subject"]
    assert report["basedOn"][0]["identifier"]["system"] == "urn:acc"
    DiagnosticReport.model_validate(report)
    assert "basedOn" not in build(score_of(accession=None))[0]


def test_shadow_and_uncalibrated_scores_say_so() -> None:
    report, obs = build(score_of(role="shadow", calibrated=False))
    assert report["meta"] == obs["meta"] == {"tag": [{"system": ROLE_TAG_SYSTEM,
                                                      "code": "shadow"}]}
    assert [n["text"] for n in obs["note"]] == [
        "Shadow model under evaluation: not for clinical use.",
        "Not calibrated for this site: the probability is the shared model's raw output."]
    assert report["conclusion"].endswith("raw output.")
    assert "not calibrated for this site" in report["conclusion"]


def test_a_study_with_no_readable_image_gets_a_cancelled_report() -> None:
    score = score_of((), quarantined=((INSTANCES[0], "expected Modality CR or DX, got 'CT'"),
                                      (INSTANCES[1], "expected Modality CR or DX, got 'CT'")))
    report, obs = imaging_report(score, site="a", deployment="p")
    assert obs is None and report["status"] == "cancelled" and "result" not in report
    assert report["conclusion"].startswith("AI assessment not possible (vigil imaging-federated "
                                           "1.0.0): none of the 2 image(s) could be read "
                                           "(expected Modality CR or DX, got 'CT').")
    DiagnosticReport.model_validate(report)


def test_bad_scores_raise_without_identifiers() -> None:
    cases = [
        (ScoringError, "expected a study probability in \\[0, 1\\], got nan",
         score_of((float("nan"),))),
        (ScoringError, "got 1.2", score_of((1.2,))),
        (ScoringError, "expected a threshold in \\[0, 1\\], got 2.0", score_of(threshold=2.0)),
        (DataError, "naive", replace(score_of(), scored_at=datetime(2026, 1, 1))),
        (DataError, "to be a FHIR Patient id", score_of(patient="MRN 0042/SECRET")),
        (DataError, "expected a DICOM PatientID", score_of(patient="")),
        (DataError, "StudyInstanceUID to be a DICOM UID",
         replace(score_of(), study=StudyRef("1.2.x-SECRET", "o", PATIENT))),
    ]
    for error, message, score in cases:
        with pytest.raises(error, match=message) as info:
            imaging_report(score, site="a", deployment="p")
        for secret in (PATIENT, "MRN 0042/SECRET", ACCESSION, STUDY, "SECRET"):
            assert secret not in str(info.value)


def test_the_ndjson_sink_keeps_one_line_per_resource(tmp_path: Path) -> None:
    out = tmp_path / "imaging-writeback"
    score = score_of()
    with FhirStudySink(out, site="hospital-a", deployment="production") as s:
        s.write(score, [])
        s.write(score, [])
        s.write(score_of(role="shadow"), [])  # not written (sepsis does not write shadow scores)
    report, obs = build(score)
    lines = {kind: (out / f"{kind}.ndjson").read_bytes().splitlines()
             for kind in ("DiagnosticReport", "Observation")}
    assert [orjson.loads(x) for x in lines["DiagnosticReport"]] == [report]
    assert [orjson.loads(x) for x in lines["Observation"]] == [obs]
    reopened = FhirStudySink(out, site="hospital-a", deployment="production")
    reopened.write(score_of((0.1,)), [])  # a new probability replaces the line
    (line,) = (out / "Observation.ndjson").read_bytes().splitlines()
    assert orjson.loads(line)["interpretation"][0]["coding"][0]["code"] == "NEG"
    with pytest.raises(DataError, match="expected DiagnosticReport resources with an id"):
        reopened.files["DiagnosticReport"].write([obs])
    assert PATIENT not in repr(reopened)


# --- the sink against the real FHIR server -------------------------------------------------------

TOKEN = "imaging-static-token-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """sekmet with a bearer token (full access) and a SMART client allowed RiskAssessments only."""
    work = tmp_path_factory.mktemp("sekmet-imaging")
    key = ec.generate_private_key(ec.SECP384R1())
    (work / "k.pub.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    extra = ("server_auth:\n  types: [bearer, smart]\n"
             f"  tokens: [{TOKEN}]\n  token_lifetime: 600\n  smart_clients:\n"
             f"    - client_id: vigil-sepsis-only\n      public_key_path: {work / 'k.pub.pem'}\n"
             "      scopes: system/*.rs system/RiskAssessment.cu\n")
    with running_server(work, extra_yaml=extra) as base:
        yield {"base": base, "private": private}


def sink(server: dict[str, str], **kw: Any) -> FhirStudySink:
    settings = FHIRSettings(base_url=server["base"], auth="bearer", bearer_token=TOKEN)
    return FhirStudySink(settings, site="hospital-a", deployment="production", **kw)


def stored(s: FhirStudySink, kind: str, rid: str) -> dict[str, Any]:
    doc = s.http.json("GET", f"{kind}/{rid}")
    return {k: v for k, v in doc.items() if k not in ("meta", "text")}


@pytest.mark.slow
def test_writing_the_same_score_twice_leaves_one_report_and_one_observation(server) -> None:  # type: ignore[no-untyped-def]
    score = score_of()
    with sink(server) as s:
        assert s.name == "fhir"
        s.write(score, [])
        s.write(score, [])
        report, obs = build(score)
        assert stored(s, "DiagnosticReport", report["id"]) == report
        assert stored(s, "Observation", obs["id"]) == obs
        for kind, rid in (("DiagnosticReport", report["id"]), ("Observation", obs["id"])):
            (bundle,) = s.http.search(kind, [("identifier", f"urn:uuid:{rid}")])
            assert bundle["total"] == 1
        (bundle,) = s.http.search("DiagnosticReport", [("_id", report["id"]),
                                                       ("_include", "DiagnosticReport:result")])
        assert sorted(e["resource"]["resourceType"] for e in bundle["entry"]) == [
            "DiagnosticReport", "Observation"]
        # A new model version writes new resources beside the old ones.
        s.write(score_of(version="1.0.1"), [])
        new_report, _ = build(score_of(version="1.0.1"))
        assert stored(s, "DiagnosticReport", new_report["id"])["extension"][0]["valueCoding"][
            "version"] == "1.0.1"
        assert stored(s, "DiagnosticReport", report["id"]) == report


@pytest.mark.slow
def test_shadow_scores_are_written_only_when_asked(server) -> None:  # type: ignore[no-untyped-def]
    shadow = score_of(role="shadow", version="2.0.0")
    report, _ = build(shadow)
    with sink(server) as s:
        assert s.resources(shadow) == []
        s.write(shadow, [])
        (bundle,) = s.http.search("DiagnosticReport", [("_id", report["id"])])
        assert bundle.get("total") == 0
    with sink(server, include_shadow=True) as s:
        s.write(shadow, [])
        assert stored(s, "DiagnosticReport", report["id"])["conclusion"].endswith(
            "not for clinical use.")


@pytest.mark.slow
def test_a_refusal_names_the_resource_and_status_without_identifiers(server, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    settings = FHIRSettings(base_url=server["base"], auth="smart", smart={
        "client_id": "vigil-sepsis-only", "key_id": "k1", "algorithm": "ES384",
        "private_key_pem": server["private"], "scope": "system/*.rs system/RiskAssessment.cu"})
    with FhirStudySink(settings, site="hospital-a", deployment="production") as s:
        with pytest.raises(FHIRTransportError, match=re.escape(
                "the FHIR server refused the imaging Observation (HTTP 403)")) as info:
            s.write(score_of(), [])
    assert info.value.status == 403
    assert "system/Observation.cu" in str(info.value)
    for secret in (PATIENT, ACCESSION, STUDY, *INSTANCES):
        assert secret not in str(info.value) and secret not in caplog.text


@pytest.mark.slow
def test_a_failure_after_the_observation_is_completed_by_writing_again(server) -> None:  # type: ignore[no-untyped-def]
    """The connection drops on the report: the Observation stays, the next write completes it."""
    score = score_of(version="3.0.0")
    report, obs = build(score)

    def drop_reports(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        if request.method == "PUT" and "/DiagnosticReport/" in request.url.path:
            raise httpx.ConnectError("connection reset", request=request)
        return forward(request)

    settings = FHIRSettings(base_url=server["base"], auth="bearer", bearer_token=TOKEN,
                            retries=0)
    with contextlib.closing(FaultyClient(drop_reports)) as client:  # closes its real transport
        broken = FhirStudySink(settings, site="hospital-a", deployment="production",
                               client=client)
        with pytest.raises(FHIRTransportError, match="could not write the imaging "
                                                     "DiagnosticReport: PUT failed after 1"):
            broken.write(score, [])
    with sink(server) as s:
        assert stored(s, "Observation", obs["id"]) == obs
        (bundle,) = s.http.search("DiagnosticReport", [("_id", report["id"])])
        assert bundle.get("total") == 0
        s.write(score, [])
        assert stored(s, "DiagnosticReport", report["id"]) == report
