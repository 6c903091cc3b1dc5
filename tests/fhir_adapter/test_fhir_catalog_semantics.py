"""Catalog semantics: components in their panel's context, code systems, UCUM spellings.

Every case runs through the three readers (NDJSON fast, dict fast, strict), which agree.
Resources are shaped as published: the official R4 blood-pressure example (bundled in
``data/``), US Core pulse oximetry (code 59408-5 + 2708-6, components 3151-8 inhaled
oxygen flow rate and 3150-0 inhaled oxygen concentration), the IHE blood-pressure example
(55284-4 with 8716-3), and the MII ICU pulmonary artery pressure profile (panel 76284-9,
components 8480-6 + 8440-0 / 8462-4 + 8385-7 / 8478-0 + 8414-5 with SNOMED CT and
ISO/IEEE 11073 codes).
"""

from __future__ import annotations

import copy
import json
import math
import re

import orjson
import pytest
from fhir_support import DATA, LOINC, UCUM, observation, parse_all
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.catalog import MEASURED, variable
from vigil.fhir_adapter import parse_fast, parse_ndjson
from vigil.fhir_adapter.mapping import canonical_value

SCT, MDC = "http://snomed.info/sct", "urn:iso:std:iso:11073:10101"
LOINC_OID, UCUM_OID = "urn:oid:2.16.840.1.113883.6.1", "urn:oid:2.16.840.1.113883.6.8"
WHEN = "2024-03-01T10:20:00Z"


def coding(code: str, system: str = LOINC) -> dict[str, str]:
    return {"system": system, "code": code}


def component(codings: list[dict[str, str]], value: float, unit: str = "mm[Hg]") -> dict:
    return {"code": {"coding": codings},
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def panel(rid: str, codings: list[dict[str, str]], components: list[dict], **extra) -> dict:
    res = observation(rid=rid, valueQuantity=None, **extra)
    res["code"] = {"coding": codings}
    res["component"] = components
    return res


def named(result) -> list[tuple[str, str, float]]:  # type: ignore[no-untyped-def]
    b = result.observations
    return sorted(zip(b.resource_id.tolist(), b.variable_names.tolist(), b.value.tolist(),
                      strict=True))


def official_bp() -> dict:
    res = json.loads((DATA / "observation-example-bloodpressure.json").read_text())
    res["effectiveDateTime"] = WHEN  # the example has a day only, which is quarantined
    return res


def pulmonary_artery(rid: str = "pa", *, loinc_detail: bool = True) -> dict:
    """MII ICU pulmonary artery pressure, with or without the 0..1 detailed LOINC codes."""
    parts = [("8480-6", "8440-0", "250768007", "150045", 25.0),
             ("8462-4", "8385-7", "250769004", "150046", 10.0),
             ("8478-0", "8414-5", "250770003", "150047", 15.0)]
    comps = []
    for generic, detail, sct, mdc, value in parts:
        codes = [coding(generic), coding(sct, SCT), coding(mdc, MDC)]
        if loinc_detail:
            codes.insert(1, coding(detail))
        comps.append(component(codes, value))
    return panel(rid, [coding("250767002", SCT), coding("76284-9"), coding("150044", MDC)], comps)


def test_systemic_blood_pressure_panels_give_sbp_dbp_and_map():
    ihe = panel("ihe", [coding("55284-4"), coding("8716-3")],
                [component([coding("8480-6")], 140.0), component([coding("8462-4")], 90.0)])
    full = panel("full", [coding("85354-9")],
                 [component([coding("8480-6")], 120.0), component([coding("8462-4")], 70.0),
                  component([coding("8478-0")], 87.0)])
    res = parse_all([official_bp(), ihe, full])
    assert named(res) == [("blood-pressure", "DBP", 60.0), ("blood-pressure", "SBP", 107.0),
                          ("full", "DBP", 70.0), ("full", "MAP", 87.0), ("full", "SBP", 120.0),
                          ("ihe", "DBP", 90.0), ("ihe", "SBP", 140.0)]
    assert not res.quarantine and res.counts.ignored_unknown_code == 0


@pytest.mark.parametrize("loinc_detail", [True, False])
def test_pulmonary_artery_pressures_never_become_systemic_blood_pressure(loinc_detail):
    pa = pulmonary_artery(loinc_detail=loinc_detail)
    # the MII example instance codes the same panel as a generic blood pressure panel
    generic = copy.deepcopy(pa)
    generic["id"] = "pa-generic"
    generic["code"] = {"coding": [coding("75367002", SCT), coding("85354-9")]}
    res = parse_all([pa, generic])
    assert res.counts.values == 0 and not res.quarantine
    assert res.counts.ignored_unknown_code == 2 and res.counts.resources == 2


def test_components_of_an_unknown_panel_or_with_a_more_specific_code_are_not_read():
    vitals = panel("vitals", [coding("8716-3")],  # "Vital signs": not a blood pressure panel
                   [component([coding("8480-6")], 120.0), component([coding("8462-4")], 70.0)])
    no_loinc = panel("other", [coding("271649006", SCT)],  # SNOMED CT systolic, no panel
                     [component([coding("8480-6")], 120.0)])
    fio2_in_bp = panel("bp", [coding("85354-9")],
                       [component([coding("8480-6")], 120.0),
                        component([coding("3150-0")], 40.0, "%"),  # FiO2 is no BP child
                        component([coding("8462-4"), coding("8302-2")], 70.0)])  # + body height
    both = panel("both", [coding("85354-9"), coding("76284-9")],  # generic and pulmonary
                 [component([coding("8480-6")], 25.0)])
    res = parse_all([vitals, no_loinc, fio2_in_bp, both])
    assert named(res) == [("bp", "SBP", 120.0)]
    assert res.counts.ignored_unknown_code == 3 and not res.quarantine


def test_a_uk_core_blood_pressure_panel_coded_in_snomed_ct_gives_sbp_and_dbp():
    uk = panel("uk", [coding("75367002", SCT)],  # UK Core: SNOMED CT Blood pressure
               [component([coding("72313002", SCT), coding("8480-6")], 120.0),
                component([coding("1091811000000102", SCT), coding("8462-4")], 70.0)])
    assert named(parse_all([uk])) == [("uk", "DBP", 70.0), ("uk", "SBP", 120.0)]


def test_us_core_pulse_oximetry_gives_spo2_and_fio2_and_ignores_the_flow_rate():
    pox = observation("59408-5", 95.0, "%", rid="pox")
    pox["code"]["coding"].append(coding("2708-6"))
    pox["component"] = [component([coding("3151-8")], 6.0, "L/min"),
                        component([coding("3150-0")], 40.0, "%")]
    res = parse_all([pox])
    assert named(res) == [("pox", "FiO2", 0.4), ("pox", "O2Sat", 95.0)]
    assert not res.quarantine


def test_a_code_that_must_not_be_merged_wins_over_a_catalog_code():
    pa_sbp = observation("8480-6", 25.0, "mm[Hg]", rid="a")
    pa_sbp["code"]["coding"].append(coding("8440-0"))
    tnt = observation("10839-9", 0.5, "ng/mL", rid="b")
    tnt["code"]["coding"].append(coding("6598-7"))  # troponin T is not troponin I
    res = parse_all([pa_sbp, tnt, observation(rid="c")])
    assert named(res) == [("c", "HR", 80.0)]
    assert res.counts.ignored_unknown_code == 2


def test_loinc_and_ucum_by_oid_read_as_by_uri():
    by_uri = [observation("8310-5", 98.6, "[degF]", rid="t"),
              panel("bp", [coding("85354-9")], [component([coding("8480-6")], 120.0)])]
    by_oid = json.loads(json.dumps(by_uri).replace(LOINC, LOINC_OID).replace(UCUM, UCUM_OID))
    assert LOINC not in json.dumps(by_oid) and UCUM not in json.dumps(by_oid)
    assert named(parse_all(by_oid)) == named(parse_all(by_uri)) == [
        ("bp", "SBP", 120.0), ("t", "Temp", pytest.approx(37.0))]


# (variable, catalog unit, spellings UCUM reads as that very unit)
SPELLINGS = [
    ("HR", "/min", ["1/min", "{beats}/min", "/MIN", "min-1", "{beats}/min{at rest}"]),
    ("Temp", "Cel", ["CEL", "Cel{oral}"]),
    ("Temp", "[degF]", ["[DEGF]"]),
    ("SBP", "mm[Hg]", ["MM[HG]", "mm[Hg]{arterial}"]),
    ("Creatinine", "mg/dL", ["MG/DL", "mg/dl", "mg.dL-1", "mg/dL{serum}"]),
    ("Glucose", "mmol/L", ["MMOL/L", "mmol/L{whole blood}", "mol/m3"]),
    ("WBC", "10*3/uL", ["10^3/uL", "10*3/UL", "/nL"]),
    ("Platelets", "10*9/L", ["10^9/L", "10*9/L{cells}"]),
    ("TroponinI", "ng/L", ["pg/mL", "NG/L"]),
    ("FiO2", "%", ["%{inspired}"]),
    ("PaCO2", "kPa", ["KPAL"]),
]


@pytest.mark.parametrize(("name", "unit", "spellings"), SPELLINGS)
def test_unit_spellings_give_bit_identical_values_in_every_reader(name, unit, spellings):
    v = variable(name)
    _, scale, offset = v.convert(unit)
    value = (v.normal - offset) / scale
    resources = [observation(v.loinc[0], value, u, rid=f"r{i}")
                 for i, u in enumerate([unit, *spellings])]
    res = parse_all(resources)
    assert not res.quarantine
    got = res.observations.value.tolist()
    assert len(got) == len(resources) and len(set(got)) == 1
    # all are counted under the first catalog unit that is the same unit
    assert res.observations.unit_counts() == {name: {v.convert(unit)[0]: len(resources)}}


@pytest.mark.parametrize(("code", "value", "unit", "name", "expected"), [
    ("8310-5", 98.6, "[degF]", "Temp", 37.0),  # NIST SP 811
    ("8310-5", 310.15, "K", "Temp", 37.0),
    ("3094-0", 5.0, "mmol/L", "BUN", 14.0),  # urea 5 mmol/L x 28.014 mg N/mmol = 14.0 mg/dL
    ("89579-7", 14.0, "ng/L", "TroponinI", 0.014),  # hs-troponin I in ng/L
    ("10839-9", 14.0, "pg/mL", "TroponinI", 0.014),
    ("2160-0", 10.0, "mg/L", "Creatinine", 1.0),
    ("2345-7", 0.5, "g/L", "Glucose", 50.0),
    ("8867-4", 4800.0, "/h", "HR", 80.0),
    ("8889-8", 72.0, "/min", "HR", 72.0),  # heart rate by pulse oximetry
    ("8328-7", 36.4, "Cel", "Temp", 36.4),  # axillary temperature
    ("59408-5", 0.97, "1", "O2Sat", 97.0),  # a fraction is a dimensionless UCUM unit
    ("1920-8", 0.5, "ukat/L", "AST", 30.0),
])
def test_golden_conversions_through_the_readers(code, value, unit, name, expected):
    ((rid, var, got),) = named(parse_all([observation(code, value, unit)]))
    assert var == name and math.isclose(round(got, 6), expected, rel_tol=1e-3)


@pytest.mark.parametrize(("unit", "why"), [
    ("mm[hg]", "unit 'mm\\[hg\\]' is not known for SBP"),  # mixed case is not the c/i form
    ("mmHg", "unit 'mmHg' is not known for SBP"),  # no unit text fallback: quarantined
    ("mg/dL", "unit 'mg/dL' is not known for SBP"),  # another dimension
    ("Mg/dL", "unit 'Mg/dL' is not known for SBP"),
])
def test_units_that_do_not_convert_are_quarantined_with_the_reason(unit, why):
    res = parse_all([observation("8480-6", 120.0, unit)])
    assert res.counts.values == 0 and len(res.quarantine) == 1
    assert re.search(why, res.quarantine[0].reason)


def test_urea_is_read_as_bun_in_a_substance_unit_only():
    resources = [observation("22664-7", 5.0, "mmol/L", rid="u1"),  # urea, serum or plasma
                 observation("72903-8", 5000.0, "umol/L", rid="u2"),  # urea, blood
                 observation("22664-7", 30.0, "mg/dL", rid="u3"),  # urea mass: not BUN
                 observation("3094-0", 14.0, "mg/dL", rid="b1")]  # BUN itself
    res = parse_all(resources)
    assert [(r, n, round(v, 1)) for r, n, v in named(res)] == [
        ("b1", "BUN", 14.0), ("u1", "BUN", 14.0), ("u2", "BUN", 14.0)]
    (q,) = res.quarantine
    assert q.resource_id == "u3" and q.reason.startswith(
        "unit 'mg/dL' is not a substance concentration; LOINC 22664-7 is urea")
    # the NDJSON reader's inline path (a time and subject seen before) applies the same rule
    lines = b"\n".join(orjson.dumps(r) for r in resources)
    twice = parse_ndjson(lines + b"\n" + lines.replace(b'"id":"', b'"id":"again-'))
    assert [q.resource_id for q in twice.quarantine] == ["u3", "again-u3"]
    assert twice.counts.values == 6


def test_a_megagram_spelling_of_a_milligram_unit_is_quarantined_as_implausible():
    res = parse_all([observation("2160-0", 1.2, "Mg/dL")])  # c/s: Mg is the megagram
    assert res.counts.values == 0
    assert "outside the plausible range" in res.quarantine[0].reason


_PLAIN = st.sampled_from([
    ("8867-4", "/min", 30.0, 200.0), ("8310-5", "Cel", 34.0, 41.0),
    ("2160-0", "mg/dL", 0.1, 10.0), ("2345-7", "mmol/L", 2.0, 30.0),
    ("3150-0", "%", 21.0, 100.0), ("8480-6", "mm[Hg]", 60.0, 220.0),
])
_NOISE = st.sampled_from(["pa", "pa-generic", "vitals", "unknown", "tnt", "ionized-ca"])


def noise(kind: str, i: int) -> dict:
    if kind == "pa":
        return pulmonary_artery(f"n{i}")
    if kind == "pa-generic":
        res = pulmonary_artery(f"n{i}", loinc_detail=False)
        res["code"] = {"coding": [coding("75367002", SCT), coding("85354-9")]}
        return res
    if kind == "vitals":
        return panel(f"n{i}", [coding("8716-3")], [component([coding("8480-6")], 99.0)])
    if kind == "tnt":
        return observation("6598-7", 0.2, "ng/mL", rid=f"n{i}")
    if kind == "ionized-ca":
        return observation("1994-3", 1.1, "mmol/L", rid=f"n{i}")
    return observation("8302-2", 170.0, "cm", rid=f"n{i}")  # body height


@settings(max_examples=40, deadline=None)
@given(plain=st.lists(st.tuples(_PLAIN, st.floats(0, 1)), min_size=1, max_size=8),
       extra=st.lists(st.tuples(_NOISE, st.integers(0, 8)), min_size=1, max_size=6))
def test_unknown_codes_and_non_systemic_panels_never_change_the_other_values(plain, extra):
    base = [observation(code, low + (high - low) * u, unit, rid=f"p{i}")
            for i, ((code, unit, low, high), u) in enumerate(plain)]
    mixed = list(base)
    for j, (kind, pos) in enumerate(extra):
        mixed.insert(min(pos, len(mixed)), noise(kind, j))
    before = parse_fast(base)
    after = parse_ndjson(b"\n".join(orjson.dumps(r) for r in mixed))
    assert named(after) == named(before)
    assert after.counts.values == before.counts.values
    assert after.counts.ignored_unknown_code == before.counts.ignored_unknown_code + len(extra)
    assert not after.quarantine


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(SPELLINGS), u=st.floats(0, 1))
def test_every_spelling_gives_the_bit_identical_canonical_value(case, u):
    name, unit, spellings = case
    v = variable(name)
    _, scale, offset = v.convert(unit)
    value = (v.low + (v.high - v.low) * u - offset) / scale  # in range once converted
    index = MEASURED.index(name)
    expected = canonical_value(index, value, system=UCUM, code=unit)
    assert isinstance(expected, float)
    for spelling in spellings:
        assert canonical_value(index, value, system=UCUM, code=spelling) == expected
        assert canonical_value(index, value, system=UCUM_OID, code=spelling) == expected
        assert canonical_value(index, value, unit=spelling) == expected
