"""PhysioNet 2019 rows -> FHIR R4 resources (``vigil fhir synth``).

Each patient becomes one Patient, one in-progress Encounter whose ``location``
is the ICU of its unit, and one Observation per recorded value. The Locations
(one per hospital and unit) are written once.

**The time rule** (so that a score time maps back to a PhysioNet hour):

- ICU admission ``A(p) = 2020-01-01T00:00:00Z + (u mod 525600) minutes``, with
  ``u`` the first 8 bytes (big-endian) of ``SHA-256("vigil-synth-v1:" + patient_id)``:
  a fixed minute of the year 2020 (365 days), the same on every run.
- The value of hour ``ICULOS = h`` is effective at ``A(p) + h hours`` (also its
  ``issued`` and ``meta.lastUpdated``). Reading back, an observation at
  ``A(p) + x hours`` belongs to hour ``ceil(x)``
  (:func:`vigil.fhir_adapter.grid_from_observations`), so hour ``h`` covers
  ``(A + (h - 1) h, A + h h]`` and the rows come back unchanged.
- Hospital admission (``Encounter.period.start``) is ``A(p) + HospAdmTime hours``,
  rounded to the second; no ``period`` when HospAdmTime is missing.
- ``birthDate = date(A(p)) - round(Age * 365.25) days``; reading back,
  ``round(days / 365.25, 2)`` gives Age exactly (PhysioNet ages have 2 decimals;
  100 stands for 90 or older and comes back as 100).

Other choices: Gender 1 -> ``male``, 0 -> ``female``; Unit1 -> Location
``{hospital}-micu`` (type MICU), Unit2 -> ``{hospital}-sicu`` (type SICU), both
missing -> ``{hospital}-icu`` (no unit); the Observation code is the variable's
primary LOINC code and its unit the canonical UCUM unit; values are written as
the shortest decimal of the float32 in the data. Resource ids:
``Patient/{patient_id}``, ``Encounter/{patient_id}-icu``,
``Observation/{patient_id}-{variable}-{ICULOS}``. Raw values outside the
plausible range are written as they are; the adapter quarantines them on the
way back, as the grid drops them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from vigil.core.catalog import MEASURED, VITALS, variable
from vigil.core.errors import DataError
from vigil.fhir_adapter.mapping import LOINC, UCUM

__all__ = [
    "ICU_UNIT_SYSTEM",
    "SYNTH_ANCHOR",
    "SynthSummary",
    "birth_date_for",
    "icu_admission",
    "location_resources",
    "patient_resources",
    "write_synth",
]

SYNTH_ANCHOR = datetime(2020, 1, 1, tzinfo=UTC)
"""Start of the year the synthetic ICU admissions fall in."""
_SPAN_MINUTES = 365 * 24 * 60
ICU_UNIT_SYSTEM = "urn:vigil:fhir:icu-unit"
"""Code system of the MICU/SICU codes vigil puts on ICU Locations."""
_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_STATIC = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
_OBS_PARTS = tuple(
    (v.name.lower().replace("_", "-"),
     [{"coding": [{"system": _CATEGORY,
                   "code": "vital-signs" if v.name in VITALS else "laboratory"}]}],
     {"coding": [{"system": LOINC, "code": v.loinc[0]}], "text": v.description},
     v.unit)
    for v in map(variable, MEASURED)
)
"""Per measured variable: id slug, category, code and unit of its Observations (shared)."""


def icu_admission(patient_id: str) -> datetime:
    """Return the synthetic ICU admission time of a patient (see the module docstring)."""
    u = int.from_bytes(hashlib.sha256(f"vigil-synth-v1:{patient_id}".encode()).digest()[:8], "big")
    return SYNTH_ANCHOR + timedelta(minutes=u % _SPAN_MINUTES)


def birth_date_for(age: float, admission: datetime) -> str:
    """``birthDate`` such that :attr:`vigil.fhir_adapter.Stay.age` gives ``age`` back."""
    return (admission.date() - timedelta(days=round(float(age) * 365.25))).isoformat()


def _instant(when: datetime) -> str:
    return f"{when.isoformat(timespec='seconds')[:19]}Z"


def _unit(unit1: float, unit2: float) -> str | None:
    if unit1 == 1:
        return "MICU"
    if unit2 == 1:
        return "SICU"
    return None


def _location_id(hospital: str, unit: str | None) -> str:
    return f"{hospital.lower()}-{(unit or 'icu').lower()}"


def location_resources(hospitals: tuple[str, ...] = ("A", "B")) -> list[dict[str, Any]]:
    """Build the ICU Locations: per hospital a MICU, a SICU and an ICU of unknown unit."""
    out = []
    for hospital in hospitals:
        for unit in ("MICU", "SICU", None):
            codings = [{"system": _ROLE, "code": "ICU", "display": "Intensive care unit"}]
            if unit:
                codings.append({"system": ICU_UNIT_SYSTEM, "code": unit})
            out.append({
                "resourceType": "Location", "id": _location_id(hospital, unit), "status": "active",
                "name": f"Hospital {hospital} {unit or 'ICU (unit not recorded)'}",
                "mode": "instance", "type": [{"coding": codings}],
            })
    return out


def patient_resources(rows: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any],
                                                     list[dict[str, Any]]]:
    """Build the Patient, Encounter and Observations of one patient's PhysioNet rows.

    Parameters
    ----------
    rows : DataFrame of shape (n_hours, n_columns)
        One patient's rows, sorted by ``ICULOS``, with ``patient_id``,
        ``hospital``, ``ICULOS`` and the 39 grid columns.

    Returns
    -------
    patient, encounter : dict
    observations : list of dict
        In hour order, then catalog order.

    Raises
    ------
    DataError
        If the patient id is not a valid FHIR id.
    """
    pid = str(rows["patient_id"].iloc[0])
    if not _FHIR_ID.fullmatch(pid) or len(pid) > 52:
        raise DataError(f"expected patient ids of at most 52 characters [A-Za-z0-9-.], "
                        f"got one of {len(pid)} characters; rename the patients first")
    first = rows.iloc[0]
    admitted = icu_admission(pid)
    unit = _unit(float(first["Unit1"]), float(first["Unit2"]))
    location = _location_id(str(first["hospital"]), unit)
    patient: dict[str, Any] = {
        "resourceType": "Patient", "id": pid,
        "identifier": [{"system": "urn:vigil:physionet2019:patient", "value": pid}],
        "gender": "male" if int(first["Gender"]) == 1 else "female",
        "birthDate": birth_date_for(float(first["Age"]), admitted),
    }
    encounter: dict[str, Any] = {
        "resourceType": "Encounter", "id": f"{pid}-icu", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                  "display": "inpatient encounter"},
        "subject": {"reference": f"Patient/{pid}"},
        "location": [{"location": {"reference": f"Location/{location}"}, "status": "active",
                      "period": {"start": _instant(admitted)}}],
    }
    hosp = float(first["HospAdmTime"])
    if math.isfinite(hosp):
        encounter["period"] = {"start": _instant(admitted + timedelta(seconds=round(hosp * 3600)))}
    values = rows.loc[:, list(MEASURED)].to_numpy(dtype=np.float32, na_value=np.nan)
    row_idx, col_idx = np.nonzero(~np.isnan(values))
    texts = values[row_idx, col_idx].astype(str).tolist()
    hours = rows["ICULOS"].to_numpy(dtype=np.int64).tolist()
    whens = [_instant(admitted + timedelta(hours=h)) for h in hours]
    subject, context = {"reference": f"Patient/{pid}"}, {"reference": f"Encounter/{pid}-icu"}
    observations = []
    for r, c, text in zip(row_idx.tolist(), col_idx.tolist(), texts, strict=True):
        slug, category, code, unit = _OBS_PARTS[c]
        when = whens[r]
        observations.append({
            "resourceType": "Observation",
            "id": f"{pid}-{slug}-{hours[r]}",
            "meta": {"lastUpdated": when},
            "status": "final",
            "category": category,
            "code": code,
            "subject": subject,
            "encounter": context,
            "effectiveDateTime": when,
            "issued": when,
            "valueQuantity": {"value": float(text), "unit": unit, "system": UCUM, "code": unit},
        })
    return patient, encounter, observations


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synth` wrote.

    Attributes
    ----------
    patients, observations, bundles : int
        Counts written.
    files : tuple of str
        Paths of the files written, relative to the output directory.
    """

    patients: int
    observations: int
    bundles: int
    files: tuple[str, ...]


def _patients(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    pid = frame["patient_id"].to_numpy()
    cut = np.flatnonzero(pid[1:] != pid[:-1]) + 1 if len(pid) else np.zeros(0, dtype=np.int64)
    bounds = np.concatenate([[0], cut, [len(pid)]]).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            yield frame.iloc[a:b]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource,
            "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}


def write_synth(frame: pd.DataFrame, out: Path, *, bundles: bool = False,
                bundle_size: int = 1000,
                on_patient: Callable[[], None] | None = None) -> SynthSummary:
    """Write PhysioNet rows as FHIR R4 NDJSON (and optionally transaction Bundles).

    Parameters
    ----------
    frame : DataFrame of shape (n_rows, n_columns)
        PhysioNet rows sorted by patient and hour (``PhysioNetTable.frame``).
    out : Path
        Directory; receives ``Location.ndjson``, ``Patient.ndjson``,
        ``Encounter.ndjson`` and ``Observation.ndjson``.
    bundles : bool, optional
        Also write transaction Bundles under ``out/bundles/`` (``bundle-00000.json``
        holds the Locations; then whole patients, Patient and Encounter before their
        Observations, at most ``bundle_size`` entries per Bundle). Every entry is a
        ``PUT Type/id``, so loading twice changes nothing.
    bundle_size : int, optional
        Maximum entries per Bundle.
    on_patient : callable, optional
        Called after each patient (progress display).

    Returns
    -------
    SynthSummary
    """
    if bundle_size < 3:
        raise DataError(f"expected bundle_size >= 3, got {bundle_size}")
    missing = [c for c in ("patient_id", "hospital", "ICULOS", *MEASURED, *_STATIC)
               if c not in frame.columns]
    if missing:
        raise DataError(f"expected PhysioNet columns; missing {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    hospitals = tuple(sorted({str(h) for h in frame["hospital"].unique()})) or ("A",)
    locations = location_resources(hospitals)
    files = {t: (out / f"{t}.ndjson").open("wb")
             for t in ("Location", "Patient", "Encounter", "Observation")}
    bundle_dir = out / "bundles"
    written: list[str] = [f"{t}.ndjson" for t in files]
    n_patients = n_obs = 0
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        bundle_dir.mkdir(exist_ok=True)
        name = f"bundles/bundle-{len(written) - 4:05d}.json"
        (out / name).write_bytes(orjson.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": pending}))
        written.append(name)
        pending.clear()

    try:
        for loc in locations:
            files["Location"].write(orjson.dumps(loc) + b"\n")
        if bundles:
            pending.extend(_entry(r) for r in locations)
            flush()
        for rows in _patients(frame):
            patient, encounter, observations = patient_resources(rows)
            files["Patient"].write(orjson.dumps(patient) + b"\n")
            files["Encounter"].write(orjson.dumps(encounter) + b"\n")
            files["Observation"].write(b"".join(orjson.dumps(o) + b"\n" for o in observations))
            n_patients += 1
            n_obs += len(observations)
            if on_patient is not None:
                on_patient()
            if bundles:
                if len(pending) + 2 > bundle_size:
                    flush()
                for resource in (patient, encounter, *observations):
                    if len(pending) >= bundle_size:
                        flush()
                    pending.append(_entry(resource))
        flush()
    finally:
        for f in files.values():
            f.close()
    return SynthSummary(patients=n_patients, observations=n_obs,
                        bundles=len(written) - 4, files=tuple(written))
