"""A sepsis score as a FHIR R4 RiskAssessment (write-back).

Element choices (``research/clinical-runtime.md`` section 4.1):

- ``id``: UUID v5 of ``(site, deployment, patient, model name, model version,
  scoring time in UTC microseconds)`` in a fixed vigil namespace, so a retried cycle
  writes the same resource (``PUT RiskAssessment/{id}``) instead of a second one,
  while two sites (or two deployments of one site) writing to one FHIR server never
  overwrite each other's; a UUID is a valid FHIR id (letters, digits, ``-`` and
  ``.``, at most 64) whatever the site and patient ids hold. The same UUID is the ``identifier``
  (``urn:ietf:rfc:3986`` / ``urn:uuid:...``).
- ``status`` ``final``; ``subject`` the Patient; ``encounter`` the ICU Encounter;
  ``occurrenceDateTime`` the scoring time (the tick, not the data time).
- ``method`` names the model: system :data:`MODEL_SYSTEM`, code = model name,
  ``version`` = model version.
- ``prediction``: outcome sepsis (SNOMED CT 91302008), ``probabilityDecimal`` the
  calibrated probability **as a fraction in [0, 1]**, ``qualitativeRisk`` from
  the risk-probability code system, ``whenPeriod`` occurrence -> occurrence + horizon.
  The R4 text of ``probability[x]`` reads decimals as percentages (max 100) while
  most implementers send 0-1; vigil sends 0-1 and says so twice: an extension on
  the prediction (:data:`PROBABILITY_SCALE_URL`, ``valueCode`` ``fraction``) and a note.
- ``basis``: references to the Observations used (at most ``basis_limit``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from vigil.core.errors import DataError, ScoringError

__all__ = [
    "FRACTION_NOTE",
    "MODEL_SYSTEM",
    "PROBABILITY_SCALE_URL",
    "QUALITATIVE_RISKS",
    "RISK_ID_NAMESPACE",
    "qualitative_risk",
    "risk_assessment",
    "risk_assessment_id",
]

RISK_ID_NAMESPACE = uuid.UUID("5b0f7d1e-3c61-5d0a-9a57-7669676c2d72")
"""Namespace of the UUID v5 RiskAssessment ids (fixed forever: changing it duplicates scores)."""
MODEL_SYSTEM = "urn:vigil:fhir:model"
"""Code system of vigil model names (``method.coding``)."""
PROBABILITY_SCALE_URL = "urn:vigil:fhir:StructureDefinition:probability-scale"
"""Extension saying ``probabilityDecimal`` is a 0-1 fraction."""
QUALITATIVE_RISKS = ("negligible", "low", "moderate", "high", "certain")
"""Codes of http://terminology.hl7.org/CodeSystem/risk-probability."""
FRACTION_NOTE = ("prediction.probabilityDecimal is a probability between 0 and 1 (a fraction), "
                 "not a percentage.")
"""The note every vigil RiskAssessment carries."""
_RISK_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
_SNOMED = "http://snomed.info/sct"


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise DataError(f"expected a tz-aware scoring time, got naive {when.isoformat()}")
    return when.astimezone(UTC)


def _instant(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def risk_assessment_id(*, site: str, deployment: str, patient: str, model_name: str,
                       model_version: str, scored_at: datetime) -> str:
    """Return the deterministic id of a score.

    UUID v5 of site, deployment, patient, model name and version, and scoring time
    (UTC, microseconds).
    """
    key = (f"{site}|{deployment}|{patient}|{model_name}|{model_version}|"
           f"{_instant(_utc(scored_at))}")
    return str(uuid.uuid5(RISK_ID_NAMESPACE, key))


def qualitative_risk(probability: float, *, threshold: float) -> str:
    """Pick a risk-probability code from the site threshold.

    ``high`` at or above the alert threshold, ``moderate`` from half of it,
    ``low`` below.
    """
    if probability >= threshold:
        return "high"
    return "moderate" if probability >= threshold / 2 else "low"


def risk_assessment(*, site: str, deployment: str, patient: str, model_name: str,
                    model_version: str, scored_at: datetime, probability: float,
                    encounter: str | None = None,
                    qualitative: str | None = None, threshold: float | None = None,
                    basis: Iterable[str] = (), horizon: timedelta | None = timedelta(hours=6),
                    basis_limit: int = 50, notes: Iterable[str] = ()) -> dict[str, Any]:
    """Build the RiskAssessment of one score.

    Parameters
    ----------
    site, deployment : str
        The site's id and its deployment's (settings ``site_id`` and
        ``deployment_id``): part of the resource id.
    patient : str
        FHIR Patient id.
    model_name, model_version : str
        The model package's name and version.
    scored_at : datetime
        Scoring time (tz-aware); ``occurrenceDateTime``.
    probability : float
        Calibrated probability in [0, 1].
    encounter : str, optional
        FHIR Encounter id.
    qualitative : str, optional
        One of :data:`QUALITATIVE_RISKS`; derived from ``threshold`` when None.
    threshold : float, optional
        Site alert threshold (for :func:`qualitative_risk`).
    basis : iterable of str
        Observation ids (or ``Observation/{id}`` references) the score used.
    horizon : timedelta or None, optional
        Prediction horizon (``prediction.whenPeriod``); None to leave it out.
    basis_limit : int, optional
        At most this many basis references (the first ones given).
    notes : iterable of str, optional
        Extra notes (calibration, threshold policy), after the fraction note.

    Returns
    -------
    dict
        A RiskAssessment resource (valid for fhir.resources R4B).

    Raises
    ------
    ScoringError
        If ``probability`` is not a finite number in [0, 1].
    DataError
        If ``qualitative`` is not a risk-probability code, or ``scored_at`` is naive.
    """
    if not (isinstance(probability, int | float) and math.isfinite(probability)
            and 0.0 <= probability <= 1.0):
        raise ScoringError(f"expected a probability in [0, 1], got {probability!r}; check the "
                           "model output and calibration")
    if qualitative is None and threshold is not None:
        qualitative = qualitative_risk(float(probability), threshold=threshold)
    if qualitative is not None and qualitative not in QUALITATIVE_RISKS:
        raise DataError(f"expected qualitative risk in {', '.join(QUALITATIVE_RISKS)}, "
                        f"got {qualitative!r}")
    when = _utc(scored_at)
    rid = risk_assessment_id(site=site, deployment=deployment, patient=patient,
                             model_name=model_name,
                             model_version=model_version, scored_at=when)
    prediction: dict[str, Any] = {
        "extension": [{"url": PROBABILITY_SCALE_URL, "valueCode": "fraction"}],
        "outcome": {"coding": [{"system": _SNOMED, "code": "91302008",
                                "display": "Sepsis (disorder)"}], "text": "Sepsis"},
        "probabilityDecimal": float(probability),
    }
    if qualitative is not None:
        prediction["qualitativeRisk"] = {"coding": [{"system": _RISK_SYSTEM, "code": qualitative}]}
    if horizon is not None:
        prediction["whenPeriod"] = {"start": _instant(when), "end": _instant(when + horizon)}
    refs: list[str] = []
    for item in basis:
        ref = item if "/" in item else f"Observation/{item}"
        if ref not in refs:
            refs.append(ref)
        if len(refs) >= basis_limit:
            break
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": rid,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{rid}"}],
        "status": "final",
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": model_name, "version": model_version,
                               "display": f"{model_name} {model_version}"}],
                   "text": f"vigil model {model_name} version {model_version}"},
        "code": {"text": "Sepsis risk"},
        "subject": {"reference": f"Patient/{patient}"},
        "occurrenceDateTime": _instant(when),
        "prediction": [prediction],
        "note": [{"text": FRACTION_NOTE}, *({"text": n} for n in notes)],
    }
    if encounter is not None:
        resource["encounter"] = {"reference": f"Encounter/{encounter}"}
    if refs:
        resource["basis"] = [{"reference": r} for r in refs]
    return resource
