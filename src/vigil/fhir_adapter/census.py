"""The ICU census from Encounter, Patient and Location resources (pure; both sources use it).

Rules:

- An Encounter counts when its status is ``in-progress`` and one of its
  ``location`` entries is an ICU Location: one named in ``icu_locations`` when
  that list is given, else one whose ``Location.type`` carries the code ``ICU``,
  ``MICU`` or ``SICU`` (any system; v3 RoleCode ``ICU``, system
  ``http://terminology.hl7.org/CodeSystem/v3-RoleCode``, is the standard one) or
  SNOMED CT ``309904001`` "Intensive care unit (environment)", or one listed in
  ``unit_by_location``. A Location that is ``partOf`` an ICU (bed -> room -> ward
  -> ICU, up to :data:`MAX_PART_OF` levels) is in that ICU, and its unit is the
  first one found going up.
- Of its ICU location entries, the one still open (no ``period.end``, status not
  ``completed``) with the latest ``period.start`` gives the **ICU admission**;
  without a location period, ``Encounter.period.start`` is used.
- The **unit** is ``unit_by_location[location id]`` when given, else ``MICU`` or
  ``SICU`` when the Location's type carries that code, else None.
- **Hospital admission** is ``Encounter.period.start``; gender and birth date come
  from the Patient (``_include``-d or read alongside). A patient with several
  in-progress ICU encounters keeps the latest ICU admission.

An Encounter that is in an ICU but has no usable admission time, or names no
Patient, is quarantined (its id and the reason; never the patient).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from vigil.fhir_adapter.mapping import parse_time, patient_key, reference_id
from vigil.fhir_adapter.records import Census, Quarantine, Stay, from_micros

__all__ = ["ICU_SNOMED", "ICU_TYPE_CODES", "MAX_PART_OF", "UNITS", "build_census",
           "location_unit", "parent_id"]

UNITS = ("MICU", "SICU")
"""The ICU units the models know (PhysioNet Unit1 and Unit2)."""
ICU_TYPE_CODES = frozenset({"ICU", *UNITS})
"""``Location.type`` codes that make a Location an ICU (in any system)."""
ICU_SNOMED = ("http://snomed.info/sct", "309904001")
"""SNOMED CT "Intensive care unit (environment)": an ICU ``Location.type`` in that system only."""
MAX_PART_OF = 8
"""Levels of ``Location.partOf`` followed up from an Encounter's location."""


def _codings(location: Mapping[str, Any]) -> list[tuple[str, str]]:
    types = location.get("type") or ()
    if not isinstance(types, list):
        return []
    return [(str(c.get("system")), str(c.get("code"))) for t in types if isinstance(t, dict)
            for c in t.get("coding") or () if isinstance(c, dict)]


def _type_codes(location: Mapping[str, Any]) -> set[str]:
    return {code for _, code in _codings(location)}


def _typed_icu(location: Mapping[str, Any]) -> bool:
    codings = _codings(location)
    return ICU_SNOMED in codings or any(code in ICU_TYPE_CODES for _, code in codings)


def parent_id(location: Mapping[str, Any]) -> str | None:
    """Return the Location id of ``Location.partOf`` (None without one)."""
    part = location.get("partOf")
    return reference_id(part.get("reference"), "Location") if isinstance(part, dict) else None


def location_unit(location_id: str, location: Mapping[str, Any] | None,
                  unit_by_location: Mapping[str, str] | None = None) -> str | None:
    """Return the ICU unit (``MICU``/``SICU``) of a Location, or None when it does not say."""
    if unit_by_location and location_id in unit_by_location:
        return unit_by_location[location_id]
    codes = _type_codes(location) if location is not None else set()
    found = [u for u in UNITS if u in codes]
    return found[0] if len(found) == 1 else None


def _birth_date(text: Any) -> date | None:
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def build_census(encounters: Iterable[Mapping[str, Any]], patients: Iterable[Mapping[str, Any]],
                 locations: Iterable[Mapping[str, Any]], *, icu_locations: Iterable[str] = (),
                 unit_by_location: Mapping[str, str] | None = None) -> Census:
    """Build the census from decoded resources.

    Parameters
    ----------
    encounters, patients, locations : iterable of dict
        Decoded FHIR resources (other types are passed over).
    icu_locations : iterable of str, optional
        Location ids that are ICUs; empty to recognise ICUs by ``Location.type``.
    unit_by_location : mapping of str to str, optional
        Location id -> ``"MICU"`` or ``"SICU"``, overriding ``Location.type``.

    Returns
    -------
    Census
    """
    by_patient = {p["id"]: p for p in patients
                  if p.get("resourceType") == "Patient" and isinstance(p.get("id"), str)}
    by_location = {loc["id"]: loc for loc in locations
                   if loc.get("resourceType") == "Location" and isinstance(loc.get("id"), str)}
    named = frozenset(icu_locations)
    units = dict(unit_by_location or {})

    def chain(loc_id: str) -> list[str]:
        """Return the location and its ``partOf`` ancestors (no cycles, bounded)."""
        out = [loc_id]
        while len(out) <= MAX_PART_OF:
            loc = by_location.get(out[-1])
            up = parent_id(loc) if loc is not None else None
            if up is None or up in out:
                break
            out.append(up)
        return out

    def one_is_icu(loc_id: str) -> bool:
        if named:
            return loc_id in named
        loc = by_location.get(loc_id)
        return loc_id in units or (loc is not None and _typed_icu(loc))

    def is_icu(loc_id: str) -> bool:
        return any(one_is_icu(i) for i in chain(loc_id))

    def unit_of(loc_id: str) -> str | None:
        for i in chain(loc_id):
            unit = location_unit(i, by_location.get(i), units)
            if unit is not None:
                return unit
        return None

    stays: dict[str, Stay] = {}
    quarantine: list[Quarantine] = []
    for enc in encounters:
        if enc.get("resourceType") != "Encounter" or enc.get("status") != "in-progress":
            continue
        eid = enc.get("id") if isinstance(enc.get("id"), str) else ""
        try:
            stay = _stay(enc, eid, is_icu, by_patient, unit_of)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            stay = f"malformed Encounter: {type(exc).__name__}"
        if stay is None:
            continue
        if isinstance(stay, str):
            quarantine.append(Quarantine("Encounter", eid, stay))
            continue
        old = stays.get(stay.patient)
        if old is None or stay.icu_admission > old.icu_admission:
            stays[stay.patient] = stay
    return Census(stays=tuple(stays[k] for k in sorted(stays)), quarantine=tuple(quarantine))


def _stay(enc: Mapping[str, Any], eid: str, is_icu: Any, by_patient: Mapping[str, Any],
          unit_of: Any) -> Stay | str | None:
    best: tuple[int, str] | None = None
    for entry in enc.get("location") or ():
        loc_id = reference_id((entry.get("location") or {}).get("reference"), "Location")
        if loc_id is None or not is_icu(loc_id):
            continue
        period = entry.get("period") or {}
        if period.get("end") or entry.get("status") == "completed":
            continue
        start = period.get("start")
        if start is None:
            start = (enc.get("period") or {}).get("start")
        if start is None:
            return "ICU location has no period.start and the Encounter no period.start"
        when = parse_time(start, "Encounter.location.period.start")
        if isinstance(when, str):
            return when
        if best is None or when > best[0]:
            best = (when, loc_id)
    if best is None:
        return None
    if not eid:
        return "malformed Encounter: no id"
    pid = patient_key(str((enc.get("subject") or {}).get("reference") or ""))
    if pid is None:
        return "subject does not reference a Patient"
    hosp = (enc.get("period") or {}).get("start")
    hosp_when = None
    if hosp is not None:
        parsed = parse_time(hosp, "Encounter.period.start")
        hosp_when = None if isinstance(parsed, str) else from_micros(parsed)
    patient = by_patient.get(pid) or {}
    return Stay(
        patient=pid, encounter=eid, icu_admission=from_micros(best[0]),
        unit=unit_of(best[1]),
        gender=patient.get("gender") if isinstance(patient.get("gender"), str) else None,
        birth_date=_birth_date(patient.get("birthDate")),
        hospital_admission=hosp_when,
    )
