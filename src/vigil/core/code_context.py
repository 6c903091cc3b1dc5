"""The context a code is read in: panels, look-alike codes, substance-only codes.

Rules as data beside the catalog (:mod:`vigil.core.catalog`), read by the FHIR adapter
(:mod:`vigil.fhir_adapter.codes`, :func:`vigil.fhir_adapter.mapping.variable_of`):

- :data:`COMPONENT_PANELS`: the panels in whose context a component code is read (a
  systolic 8480-6 is systemic SBP inside a blood-pressure panel, not inside a pulmonary
  artery panel);
- :data:`NOT_MERGED`: codes that look like a catalog variable but must stay apart, and why;
- :data:`SUBSTANCE_ONLY`: codes read only in a unit of substance concentration.

Sources are in the comments (LOINC, US Core, UK Core, the MII ICU module, GECCO, DICOM
CID 3524, ``research/clinical-runtime.md``).
"""

from __future__ import annotations

__all__ = ["COMPONENT_PANELS", "NOT_MERGED", "SUBSTANCE_ONLY"]

SUBSTANCE_ONLY: dict[str, str] = {
    "22664-7": "urea [moles/volume]; in a mass unit it is urea, 2.14 times its BUN",
    "72903-8": "urea [moles/volume]; in a mass unit it is urea, 2.14 times its BUN",
}
"""Codes read only in a unit of substance concentration (``mmol/L``, ``mol/m3``...), and why.

Urea and urea nitrogen have the same number of moles but not the same mass: a urea code
in ``mg/dL`` would pass as BUN ``mg/dL`` 2.14 times too high, so it is quarantined.
"""

_SCT, _MDC = "http://snomed.info/sct", "urn:iso:std:iso:11073:10101"
_BP_PANELS = frozenset({
    "85354-9",  # Blood pressure panel with all children optional (US Core, research 4.6)
    "55284-4",  # Blood pressure systolic and diastolic (IHE and Argonaut examples)
    f"{_SCT}|75367002",  # Blood pressure (observable entity), UK Core's panel code
})
COMPONENT_PANELS: dict[str, frozenset[str]] = {
    "8480-6": _BP_PANELS,  # Systolic blood pressure
    "8462-4": _BP_PANELS,  # Diastolic blood pressure
    "8478-0": _BP_PANELS,  # Mean blood pressure
    # Inhaled oxygen concentration, a component of US Core pulse oximetry (research 4.6;
    # its sibling 3151-8 inhaled oxygen flow rate is not a catalog variable).
    "3150-0": frozenset({"59408-5"}),
}
"""Component LOINC code -> the panel codes (``Observation.code``) in whose context it is read.

A panel code of another system than LOINC is written ``{system}|{code}``.

A component is read as its catalog variable only inside one of these panels, and only
when its own codes name nothing more specific (a LOINC code the catalog does not read or
a :data:`NOT_MERGED` code, e.g. pulmonary artery systolic 8440-0 next to 8480-6 in the
MII ICU pulmonary artery profile). Components of any other panel are not read. Codes left out on
purpose: 35094-2 (older "Blood pressure panel") was not verified here.
"""

NOT_MERGED: dict[str, str] = {
    # pressures that are not systemic arterial (MII ICU module, pulmonary artery profile)
    "76284-9": "pulmonary artery blood pressure panel, not systemic",
    "8440-0": "pulmonary artery systolic pressure, not systemic SBP",
    "8385-7": "pulmonary artery diastolic pressure, not systemic DBP",
    "8414-5": "pulmonary artery mean pressure, not systemic MAP",
    "75994-4": "pulmonary artery wedge pressure, not systemic",
    # the same profiles' SNOMED CT and ISO/IEEE 11073 codes, which may come without the
    # detailed LOINC code (its slice is 0..1)
    f"{_SCT}|250767002": "pulmonary artery pressure, not systemic",
    f"{_SCT}|250768007": "pulmonary artery systolic pressure, not systemic SBP",
    f"{_SCT}|250769004": "pulmonary artery diastolic pressure, not systemic DBP",
    f"{_SCT}|250770003": "pulmonary artery mean pressure, not systemic MAP",
    f"{_SCT}|118433006": "pulmonary artery wedge pressure, not systemic",
    f"{_MDC}|150044": "MDC_PRESS_BLD_ART_PULM, pulmonary artery pressure",
    f"{_MDC}|150045": "pulmonary artery systolic pressure (MII ICU profile)",
    f"{_MDC}|150046": "pulmonary artery diastolic pressure (MII ICU profile)",
    f"{_MDC}|150047": "pulmonary artery mean pressure (MII ICU profile)",
    f"{_MDC}|150052": "pulmonary artery wedge pressure (MII ICU profile)",
    # research 4.7 rows 8 and 18
    "19889-5": "end-tidal CO2 as a volume fraction (%), not the partial pressure 19891-1",
    "1994-3": "ionized calcium; Calcium is total calcium",
    "1995-0": "ionized calcium; Calcium is total calcium",
    # DICOM CID 3524 blood gas codes: venous gases are not arterial ones
    "2021-4": "venous CO2 partial pressure; PaCO2 is arterial",
    # troponin T is another protein with other cut-offs (GECCO troponin value set)
    "6598-7": "troponin T; TroponinI is troponin I",
    "67151-1": "high-sensitivity troponin T; TroponinI is troponin I",
    "48425-3": "troponin T in blood; TroponinI is troponin I",
    # urea itself, not urea nitrogen (GECCO laboratory value set): in mg/dL it is 2.14 times
    # the BUN number in the same unit (urea in mmol/L is read: SUBSTANCE_ONLY)
    "20977-5": "urea mass concentration, not urea nitrogen (BUN)",
}
"""Codes that look like a catalog variable but must not be merged into it, and why.

A LOINC code is written as is; a code of another system as ``{system}|{code}``. A
CodeableConcept that carries one of them next to a catalog code is not read as the
catalog variable: the more specific code wins and the value is not used (the MII ICU
pulmonary artery profile codes its systolic component 8480-6 *and* 8440-0, SNOMED CT
250768007 and MDC 150045).
SaO2 (2708-6, arterial blood gas) and SpO2 (59408-5, pulse oximetry) stay two
variables; US Core pulse oximetry carries both codes and reads as O2Sat.
"""
