"""RiskAssessment write-back: the resource, its deterministic id, the idempotent NDJSON writer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from vigil.core.errors import DataError, ScoringError
from vigil.fhir_adapter import NDJSONWriter, Writer, risk_assessment, risk_assessment_id
from vigil.fhir_adapter.riskassessment import (
    FRACTION_NOTE,
    MODEL_SYSTEM,
    PROBABILITY_SCALE_URL,
    RISK_ID_NAMESPACE,
)

WHEN = datetime(2026, 3, 2, 14, 15, tzinfo=UTC)


def make(**kw: object) -> dict:
    args = {"patient": "p000042", "encounter": "p000042-icu", "model_name": "sepsis-gbm",
            "model_version": "2.1.0", "scored_at": WHEN, "probability": 0.42, "threshold": 0.3,
            "basis": ["p000042-hr-7", "Observation/p000042-lactate-6", "p000042-hr-7"]}
    args.update(kw)
    return risk_assessment(**args)  # type: ignore[arg-type]


def test_the_resource_has_every_element_and_validates() -> None:
    ra = make()
    model = RiskAssessment.model_validate(ra)
    assert model.status == "final" and model.subject.reference == "Patient/p000042"
    assert model.encounter.reference == "Encounter/p000042-icu"
    assert ra["occurrenceDateTime"] == "2026-03-02T14:15:00Z"
    method = ra["method"]["coding"][0]
    assert (method["system"], method["code"], method["version"]) == (MODEL_SYSTEM, "sepsis-gbm",
                                                                     "2.1.0")
    (prediction,) = ra["prediction"]
    assert prediction["outcome"]["coding"][0] == {
        "system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis (disorder)"}
    assert prediction["probabilityDecimal"] == 0.42
    assert prediction["extension"] == [{"url": PROBABILITY_SCALE_URL, "valueCode": "fraction"}]
    assert ra["note"][0]["text"] == FRACTION_NOTE and "between 0 and 1" in FRACTION_NOTE
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert prediction["whenPeriod"] == {"start": "2026-03-02T14:15:00Z",
                                        "end": "2026-03-02T20:15:00Z"}
    assert [b["reference"] for b in ra["basis"]] == ["Observation/p000042-hr-7",
                                                      "Observation/p000042-lactate-6"]
    assert ra["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{ra['id']}"}]


def test_the_id_is_a_uuid5_of_patient_model_and_time() -> None:
    expected = uuid.uuid5(RISK_ID_NAMESPACE, "p000042|sepsis-gbm|2.1.0|2026-03-02T14:15:00Z")
    assert make()["id"] == str(expected)
    same_instant = WHEN.astimezone(timezone(timedelta(hours=-5)))
    assert make(scored_at=same_instant, probability=0.9)["id"] == make()["id"]
    assert make(scored_at=WHEN + timedelta(minutes=15))["id"] != make()["id"]
    assert make(model_version="2.1.1")["id"] != make()["id"]
    assert make(patient="p000043")["id"] != make()["id"]
    assert risk_assessment_id(patient="p000042", model_name="sepsis-gbm", model_version="2.1.0",
                              scored_at=WHEN) == make()["id"]


@pytest.mark.parametrize(("p", "threshold", "code"), [(0.29, 0.3, "moderate"), (0.1, 0.3, "low"),
                                                       (0.3, 0.3, "high")])
def test_qualitative_risk_from_the_threshold(p: float, threshold: float, code: str) -> None:
    got = make(probability=p, threshold=threshold)["prediction"][0]["qualitativeRisk"]
    assert got["coding"][0]["code"] == code


def test_bad_inputs_raise() -> None:
    with pytest.raises(ScoringError, match="expected a probability in \\[0, 1\\], got 42"):
        make(probability=42)
    with pytest.raises(ScoringError, match="got nan"):
        make(probability=float("nan"))
    with pytest.raises(DataError, match="expected qualitative risk in negligible"):
        make(qualitative="scary")
    with pytest.raises(DataError, match="naive"):
        make(scored_at=datetime(2026, 1, 1))


def test_ndjson_writer_is_idempotent(tmp_path: Path) -> None:
    writer = NDJSONWriter(tmp_path)
    assert isinstance(writer, Writer)
    first, second = make(), make(scored_at=WHEN + timedelta(minutes=15))
    assert writer.write([first, second]).written == 2
    again = writer.write([first, second])
    assert (again.written, again.unchanged) == (0, 2)
    changed = make(probability=0.5)
    assert writer.write([changed]).written == 1
    lines = (tmp_path / "RiskAssessment.ndjson").read_bytes().splitlines()
    assert len(lines) == 2
    stored = {orjson.loads(x)["id"]: orjson.loads(x) for x in lines}
    assert stored[first["id"]]["prediction"][0]["probabilityDecimal"] == 0.5
    reopened = NDJSONWriter(tmp_path / "RiskAssessment.ndjson")
    assert len(reopened) == 2 and reopened.write([changed, second]).unchanged == 2
    with pytest.raises(DataError, match="expected RiskAssessment resources with an id"):
        reopened.write([{"resourceType": "Observation", "id": "x"}])
