"""Mapping rules of FHIR Observations; every case runs through the three readers, which agree."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest
from fhir_support import LOINC, UCUM, observation, parse_all

from vigil.core.catalog import MEASURED, variable
from vigil.fhir_adapter import MappingOptions, parse_fast, parse_ndjson, parse_strict


def values(result) -> list[tuple[str, str, float]]:  # type: ignore[no-untyped-def]
    b = result.observations
    return list(zip(b.patient.tolist(), b.variable_names.tolist(), b.value.tolist(), strict=True))


def test_a_final_heart_rate_is_one_value_at_its_utc_time() -> None:
    res = parse_all([observation(when="2024-03-01T12:20:00+02:00",
                                 meta={"lastUpdated": "2024-03-01T10:25:00.250Z"})])
    (rec,) = res.observations.records()
    assert (rec.patient, rec.variable, rec.value, rec.resource_id) == ("pat-1", "HR", 80.0, "o1")
    assert rec.effective == datetime(2024, 3, 1, 10, 20, tzinfo=UTC)
    assert rec.last_updated == datetime(2024, 3, 1, 10, 25, 0, 250_000, tzinfo=UTC)
    assert res.counts.resources == 1 and res.counts.values == 1 and not res.quarantine


@pytest.mark.parametrize(("code", "value", "unit", "name", "expected"), [
    ("8310-5", 98.6, "[degF]", "Temp", 37.0),
    ("2160-0", 88.4, "umol/L", "Creatinine", 1.0),
    ("2345-7", 5.0, "mmol/L", "Glucose", 90.08),
    ("2524-7", 18.016, "mg/dL", "Lactate", 2.0),
    ("3150-0", 40.0, "%", "FiO2", 0.4),
    ("718-7", 120.0, "g/L", "Hgb", 12.0),
    ("2019-8", 5.0, "kPa", "PaCO2", 37.503),
    ("777-3", 250, "10*9/L", "Platelets", 250.0),
])
def test_units_are_converted_to_the_canonical_unit(code: str, value: float, unit: str, name: str,
                                                   expected: float) -> None:
    res = parse_all([observation(code, value, unit)])
    ((_, var, got),) = values(res)
    assert var == name and got == pytest.approx(expected, rel=1e-9)


def test_the_unit_text_is_used_when_the_code_is_not_ucum() -> None:
    obs = observation("1963-8", 28, None)
    obs["valueQuantity"] = {"value": 28, "unit": "mmol/L", "system": "http://snomed.info/sct",
                            "code": "258813002"}
    assert values(parse_all([obs])) == [("pat-1", "HCO3", 28.0)]


@pytest.mark.parametrize(("obs", "reason"), [
    (observation(unit="furlong/fortnight"), "unit 'furlong/fortnight' is not known for HR"),
    (observation(unit=None), "no unit on a HR value"),
    (observation(value=400.0), r"value 400 /min is outside the plausible range \[20, 300\] of HR"),
    (observation("2160-0", 88.0, "mg/dL"), "outside the plausible range .* of Creatinine"),
    (observation(valueQuantity={"value": 0.01, "comparator": "<", "unit": "ng/mL",
                                "system": UCUM, "code": "ng/mL"}, code="10839-9"),
     "comparator '<'"),
    (observation(valueQuantity=None, valueString="high"),
     "expected valueQuantity, got valueString"),
    (observation(valueQuantity=None), "no value and no dataAbsentReason"),
    (observation(when="2024-03-01"), "effectiveDateTime has no time of day"),
    (observation(effectiveDateTime=None), "no effective time and no issued time"),
    (observation(subject={"reference": "Group/icu"}), "subject does not reference a Patient"),
])
def test_bad_values_are_quarantined_with_their_reason(obs: dict, reason: str) -> None:
    res = parse_all([obs, observation(rid="ok")])
    assert [q.resource_id for q in res.quarantine] == ["o1"]
    assert res.quarantine[0].resource_type == "Observation"
    assert re.search(reason, res.quarantine[0].reason)
    assert "pat-1" not in res.quarantine[0].reason
    assert res.counts.quarantined == 1 and res.counts.values == 1


@pytest.mark.parametrize(("obs", "fast_reason", "strict_reason"), [
    (observation(when="2024-03-01T10:20:00"),
     "effectiveDateTime has a time without a valid time zone",
     "invalid Observation (1 errors), first at effectiveDateTime: value_error"),
    (observation(status=None), "no status",
     "invalid Observation (1 errors), first at status: model_field_validation.missing"),
])
def test_invalid_resources_are_quarantined_by_both_parsers(obs: dict, fast_reason: str,
                                                           strict_reason: str) -> None:
    fast, strict = parse_fast([obs]), parse_strict([obs])
    assert [q.reason for q in fast.quarantine] == [fast_reason]
    assert [q.reason for q in strict.quarantine] == [strict_reason]
    assert len(fast.observations) == len(strict.observations) == 0


def test_unknown_codes_are_ignored_and_counted() -> None:
    res = parse_all([observation("29463-7", 185, "[lb_av]"),
                     observation(code="8867-4", rid="hr"),
                     {**observation(rid="local"), "code": {"coding": [
                         {"system": "urn:local", "code": "8867-4"}]}}])
    assert res.counts.ignored_unknown_code == 2 and res.counts.values == 1
    assert not res.quarantine


def test_status_rules() -> None:
    res = parse_all([observation(rid="a", status="final"), observation(rid="b", status="amended"),
                     observation(rid="c", status="corrected"),
                     observation(rid="d", status="preliminary"),
                     observation(rid="e", status="cancelled"),
                     observation(rid="f", status="registered"),
                     observation(rid="g", status="entered-in-error")])
    assert res.observations.resource_id.tolist() == ["a", "b", "c"]
    assert res.counts.skipped_status == 3 and res.counts.deleted == 1
    (deletion,) = res.observations.deletions
    assert (deletion.resource_id, deletion.patient, deletion.seq) == ("g", "pat-1", 7)
    accepted = parse_all([observation(status="preliminary")],
                         options=MappingOptions(accept_preliminary=True))
    assert accepted.counts.values == 1


def test_blood_pressure_panel_gives_systolic_and_diastolic() -> None:
    panel = observation("85354-9", valueQuantity=None, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 107, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 60, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}])
    absent = observation("85354-9", rid="o2", valueQuantity=None, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 109, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "dataAbsentReason": {"coding": [{"code": "not-performed"}]}}])
    res = parse_all([panel, absent])
    assert values(res) == [("pat-1", "SBP", 107.0), ("pat-1", "DBP", 60.0), ("pat-1", "SBP", 109.0)]
    assert res.observations.resource_id.tolist() == ["o1", "o1", "o2"]
    assert res.counts.absent == 1 and res.counts.resources == 2


def test_pulse_oximetry_codes_and_ambiguity() -> None:
    both = observation("59408-5", 95, "%")
    both["code"] = {"coding": [{"system": LOINC, "code": "2708-6"},
                               {"system": LOINC, "code": "59408-5"}]}
    sao2 = observation("2708-6", 96, "%", rid="o2")
    clash = observation(rid="o3")
    clash["code"] = {"coding": [{"system": LOINC, "code": "8867-4"},
                                {"system": LOINC, "code": "9279-1"}]}
    res = parse_all([both, sao2, clash])
    assert [v[1] for v in values(res)] == ["O2Sat", "SaO2"]
    assert res.quarantine[0].reason == "codes name several catalog variables; none is more specific"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"effectiveDateTime": None, "effectivePeriod": {"start": "2024-03-01T09:00:00Z",
                                                     "end": "2024-03-01T09:30:00Z"}}, "09:30"),
    ({"effectiveDateTime": None, "effectivePeriod": {"start": "2024-03-01T09:00:00Z"}}, "09:00"),
    ({"effectiveDateTime": None, "effectiveInstant": "2024-03-01T08:15:00.5-01:00"}, "09:15"),
    ({"effectiveDateTime": None, "issued": "2024-03-01T11:00:00+01:00"}, "10:00"),
])
def test_time_elements(extra: dict, expected: str) -> None:
    (rec,) = parse_all([observation(**extra)]).observations.records()
    assert rec.effective.strftime("%H:%M") == expected and rec.effective.tzinfo is UTC


def test_bundle_references_resolve_urn_uuid() -> None:
    obs = observation(subject={"reference": "urn:uuid:1b2c"})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1b2c", "resource": {"resourceType": "Patient", "id": "pt-9"},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:obs", "resource": {k: v for k, v in obs.items() if k != "id"},
         "request": {"method": "POST", "url": "Observation"}}]}
    res = parse_all([bundle])
    assert values(res) == [("pt-9", "HR", 80.0)]
    assert res.observations.resource_id.tolist() == ["urn:uuid:obs"]


def test_malformed_input_is_quarantined_not_raised() -> None:
    lines = b"\n".join([b"{not json", b"[1, 2]", b"", b"   ",
                        orjson.dumps(observation(rid="bad", code=None)),
                        orjson.dumps({**observation(rid="bad2"), "code": {"coding": 7}}),
                        orjson.dumps({**observation(rid="bad3"), "component": [{"code": None}]}),
                        orjson.dumps(observation(rid="fine"))])
    res = parse_ndjson(lines)
    reasons = [(q.resource_type, q.resource_id, q.reason) for q in res.quarantine]
    assert reasons == [("?", "", "malformed NDJSON line: not JSON"),
                       ("?", "", "malformed resource: not a JSON object"),
                       ("Observation", "bad2", "malformed Observation: TypeError"),
                       ("Observation", "bad3", "malformed Observation: AttributeError")]
    assert res.counts.ignored_unknown_code == 1  # code=None is simply not a catalog code here
    assert res.observations.resource_id.tolist() == ["fine"]


def test_the_inline_path_and_the_general_path_agree_on_many_variations() -> None:
    variants = []
    for i, name in enumerate(MEASURED):
        v = variable(name)
        for j, status in enumerate(("final", "preliminary", "entered-in-error", "amended")):
            mid = (v.low + v.high) / 2
            variants.append(observation(v.loinc[0], mid if j != 3 else v.high * 2, v.unit,
                                        rid=f"r{i}-{j}", patient=f"p{i % 3}", status=status,
                                        when=f"2024-03-0{1 + j}T1{j}:0{i % 10}:00+0{j}:00",
                                        meta={"lastUpdated": f"2024-03-0{1 + j}T12:00:00Z"}))
    repeated = variants * 2
    res = parse_all(repeated)
    n = 2 * len(MEASURED)
    assert (res.counts.values, res.counts.skipped_status, res.counts.deleted,
            res.counts.quarantined) == (n, n, n, n)


def test_reprs_never_show_patient_or_resource_ids() -> None:
    res = parse_all([observation(patient="pt-secret", rid="pt-secret-hr-1"),
                     observation(patient="pt-secret", rid="pt-secret-x", status="entered-in-error"),
                     observation(patient="pt-secret", rid="pt-secret-q", value=999.0)])
    shown = repr(list(res.observations.records())) + repr(res.observations.deletions) + repr(
        res.quarantine) + repr(res) + repr(res.observations)
    assert "pt-secret" not in shown and "HR" in shown
