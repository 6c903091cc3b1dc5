"""RiskAssessment write-back: the resource, its deterministic id, the idempotent NDJSON writer."""

from __future__ import annotations

import re
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
    args = {"site": "hospital-a", "deployment": "production",
            "patient": "p000042", "encounter": "p000042-icu", "model_name": "sepsis-gbm",
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


def test_the_id_is_a_uuid5_of_site_deployment_patient_model_and_time() -> None:
    expected = uuid.uuid5(RISK_ID_NAMESPACE,
                          "hospital-a|production|p000042|sepsis-gbm|2.1.0|2026-03-02T14:15:00Z")
    assert make()["id"] == str(expected)
    same_instant = WHEN.astimezone(timezone(timedelta(hours=-5)))
    assert make(scored_at=same_instant, probability=0.9)["id"] == make()["id"]
    assert make(scored_at=WHEN + timedelta(minutes=15))["id"] != make()["id"]
    assert make(model_version="2.1.1")["id"] != make()["id"]
    assert make(patient="p000043")["id"] != make()["id"]
    # two sites, or two deployments of a site, sharing a FHIR server never overwrite each other
    assert make(site="hospital-b")["id"] != make()["id"]
    assert make(deployment="test")["id"] != make()["id"]
    assert risk_assessment_id(site="hospital-a", deployment="production", patient="p000042",
                              model_name="sepsis-gbm", model_version="2.1.0",
                              scored_at=WHEN) == make()["id"]


def test_the_id_is_a_valid_fhir_id_whatever_the_site_and_patient_hold() -> None:
    rid = make(site="x" * 200, deployment="a.b_c", patient="Pätient/ 42|7")["id"]
    assert re.fullmatch(r"[A-Za-z0-9\-\.]{1,64}", rid)


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


def test_a_full_disk_keeps_nothing_of_the_failed_write_and_the_retry_writes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    writer = NDJSONWriter(tmp_path)
    first = make()
    writer.write([first])
    before = (tmp_path / "RiskAssessment.ndjson").read_bytes()
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes) -> int:
        # the disk takes part of the bytes, then is full: a torn line unless it is cut back
        if len(data) > 10:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    second = make(scored_at=WHEN + timedelta(minutes=15))
    with pytest.raises(OSError, match="No space left"):
        writer.write([second])
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "RiskAssessment.ndjson").read_bytes() == before  # cut back
    assert len(writer) == 1  # the writer does not believe it was written ...
    assert writer.write([second]).written == 1  # ... so the retry writes it
    ids = [orjson.loads(x)["id"] for x in
           (tmp_path / "RiskAssessment.ndjson").read_bytes().splitlines()]
    assert ids == [first["id"], second["id"]]


def test_a_failed_rewrite_leaves_the_file_and_the_writer_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    writer = NDJSONWriter(tmp_path)
    writer.write([make()])
    before = (tmp_path / "RiskAssessment.ndjson").read_bytes()

    def fail(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        writer.write([make(probability=0.9)])
    monkeypatch.undo()
    assert (tmp_path / "RiskAssessment.ndjson").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RiskAssessment.ndjson"]  # no .tmp
    assert writer.write([make(probability=0.9)]).written == 1


def test_a_torn_last_line_is_quarantined_on_open_and_the_rest_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, second = make(), make(scored_at=WHEN + timedelta(minutes=15))
    path = tmp_path / "RiskAssessment.ndjson"
    good = orjson.dumps(first, option=orjson.OPT_SORT_KEYS) + b"\n"
    torn = orjson.dumps(second, option=orjson.OPT_SORT_KEYS)[:57]
    path.write_bytes(good + b"not json\n" + good + torn)
    writer = NDJSONWriter(tmp_path)
    assert len(writer) == 1
    assert path.read_bytes() == good
    assert (tmp_path / "RiskAssessment.ndjson.quarantine").read_bytes() == (
        b"not json\n" + torn + b"\n")
    assert "moved 2 torn or malformed line(s) (line 2, 4)" in caplog.text
    assert "p000042" not in caplog.text  # no patient identifier in the log
    assert writer.write([first, second]).written == 1  # the torn one is written again, once
    assert [orjson.loads(x)["id"] for x in path.read_bytes().splitlines()] == [first["id"],
                                                                              second["id"]]


def test_an_append_after_a_torn_tail_starts_on_a_new_line(tmp_path: Path) -> None:
    from vigil.core.files import append_durably, split_torn_tail

    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"a": 1}\n{"b": ')  # a process died inside its append
    append_durably(path, b'{"c": 3}\n')
    assert path.read_bytes() == b'{"a": 1}\n{"b": \n{"c": 3}\n'
    assert split_torn_tail(path.read_bytes())[1] == b""
    append_durably(tmp_path / "new.ndjson", b"1\n")
    append_durably(tmp_path / "new.ndjson", b"2\n")
    assert (tmp_path / "new.ndjson").read_bytes() == b"1\n2\n"
