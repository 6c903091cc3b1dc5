"""Census rules: ICU locations, units, admission times, one stay per patient."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

from vigil.fhir_adapter import build_census

ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def location(lid: str, *codes: str) -> dict:
    return {"resourceType": "Location", "id": lid,
            "type": [{"coding": [{"system": ROLE, "code": c} for c in codes]}]}


def encounter(eid: str, patient: str, *places: tuple[str, str | None, str | None],
              status: str = "in-progress", start: str | None = "2024-01-01T00:00:00Z") -> dict:
    enc = {"resourceType": "Encounter", "id": eid, "status": status,
           "subject": {"reference": f"Patient/{patient}"},
           "location": [{"location": {"reference": f"Location/{loc}"},
                         "period": {k: v for k, v in (("start", s), ("end", e)) if v}}
                        for loc, s, e in places]}
    if start:
        enc["period"] = {"start": start}
    return enc


LOCATIONS = [location("micu", "ICU", "MICU"), location("sicu", "SICU"), location("icu", "ICU"),
             location("ward", "HU")]
PATIENTS = [{"resourceType": "Patient", "id": "a", "gender": "female", "birthDate": "1950-06-15"},
            {"resourceType": "Patient", "id": "b", "gender": "male", "birthDate": "1930"}]


def test_icu_stays_by_location_type() -> None:
    census = build_census([
        encounter("e1", "a", ("ward", "2024-01-01T01:00:00Z", "2024-01-01T05:00:00Z"),
                  ("micu", "2024-01-01T05:00:00+01:00", None)),
        encounter("e2", "b", ("sicu", "2024-01-02T00:00:00Z", None)),
        encounter("e3", "c", ("ward", "2024-01-01T00:00:00Z", None)),
        encounter("e4", "d", ("icu", "2024-01-01T00:00:00Z", None), status="finished"),
        encounter("e5", "e", ("icu", "2024-01-01T03:00:00Z", "2024-01-01T09:00:00Z")),
        encounter("e6", "f", ("icu", None, None)),
    ], PATIENTS, LOCATIONS)
    assert census.patients == ("a", "b", "f")
    a, b, f = census.stays
    assert (a.encounter, a.unit, a.icu_admission) == ("e1", "MICU", datetime(2024, 1, 1, 4,
                                                                               tzinfo=UTC))
    assert a.gender == "female" and a.birth_date == date(1950, 6, 15)
    assert a.hosp_adm_time == -4.0
    assert a.static_values() == (73.55, 0.0, 1.0, 0.0, -4.0)
    assert (b.unit, b.birth_date) == ("SICU", None) and math.isnan(b.age)  # year-only birth date
    assert f.unit is None and f.icu_admission == datetime(2024, 1, 1, tzinfo=UTC)
    unknown = f.static_values()
    assert all(math.isnan(x) for x in unknown[:4]) and unknown[4] == 0.0


def test_configured_locations_and_units_override_types() -> None:
    census = build_census([encounter("e1", "a", ("ward", "2024-01-01T00:00:00Z", None))],
                          PATIENTS, LOCATIONS, icu_locations=["ward"],
                          unit_by_location={"ward": "SICU"})
    assert [(s.patient, s.unit) for s in census.stays] == [("a", "SICU")]
    none = build_census([encounter("e1", "a", ("micu", "2024-01-01T00:00:00Z", None))],
                        PATIENTS, LOCATIONS, icu_locations=["ward"])
    assert none.stays == ()


def test_latest_icu_admission_wins_and_bad_encounters_are_quarantined() -> None:
    census = build_census([
        encounter("old", "a", ("icu", "2024-01-01T00:00:00Z", None)),
        encounter("new", "a", ("icu", "2024-01-03T00:00:00Z", None)),
        encounter("noday", "b", ("icu", "2024-01-03", None)),
        encounter("nostart", "c", ("icu", None, None), start=None),
        {**encounter("nosubject", "d", ("icu", "2024-01-03T00:00:00Z", None)),
         "subject": {"reference": "Group/x"}},
    ], PATIENTS, LOCATIONS)
    assert [(s.patient, s.encounter) for s in census.stays] == [("a", "new")]
    assert {(q.resource_type, q.resource_id) for q in census.quarantine} == {
        ("Encounter", "noday"), ("Encounter", "nostart"), ("Encounter", "nosubject")}
    reasons = " ".join(q.reason for q in census.quarantine)
    assert "no time of day" in reasons and "subject does not reference a Patient" in reasons
    assert "Patient/" not in reasons


def test_ages_of_90_and_more_are_reported_as_100() -> None:
    old = [{"resourceType": "Patient", "id": "a", "birthDate": "1930-01-01"}]
    census = build_census([encounter("e", "a", ("icu", "2024-01-01T00:00:00Z", None))], old,
                          LOCATIONS)
    assert census.stays[0].age == 100.0
