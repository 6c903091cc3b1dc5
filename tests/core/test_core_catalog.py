import math

import pytest

from vigil.core.catalog import (
    CATALOG,
    DEMOGRAPHICS,
    LABS,
    MEASURED,
    VITALS,
    Kind,
    variable,
)
from vigil.core.code_context import COMPONENT_PANELS, NOT_MERGED, SUBSTANCE_ONLY
from vigil.core.ucum import UnitSyntaxError, affine, parse

PHYSIONET_COLUMNS = (
    "HR O2Sat Temp SBP MAP DBP Resp EtCO2 BaseExcess HCO3 FiO2 pH PaCO2 SaO2 AST BUN "
    "Alkalinephos Calcium Chloride Creatinine Bilirubin_direct Glucose Lactate Magnesium "
    "Phosphate Potassium Bilirubin_total TroponinI Hct Hgb PTT WBC Fibrinogen Platelets "
    "Age Gender Unit1 Unit2 HospAdmTime ICULOS"
).split()


def test_catalog_has_the_40_physionet_variables_in_order():
    assert [v.name for v in CATALOG] == PHYSIONET_COLUMNS
    assert len(VITALS) == 8 and len(LABS) == 26 and len(MEASURED) == 34 and len(DEMOGRAPHICS) == 6


# Codes reviewed against research/clinical-runtime.md 4.6-4.7 (primary code, canonical UCUM).
@pytest.mark.parametrize(
    ("name", "loinc", "unit"),
    [
        ("HR", "8867-4", "/min"),
        ("O2Sat", "59408-5", "%"),
        ("Temp", "8310-5", "Cel"),
        ("SBP", "8480-6", "mm[Hg]"),
        ("DBP", "8462-4", "mm[Hg]"),
        ("MAP", "8478-0", "mm[Hg]"),
        ("Resp", "9279-1", "/min"),
        ("EtCO2", "19891-1", "mm[Hg]"),
        ("FiO2", "3150-0", "1"),
        ("Lactate", "2524-7", "mmol/L"),
        ("Creatinine", "2160-0", "mg/dL"),
        ("Bilirubin_direct", "1968-7", "mg/dL"),
        ("Magnesium", "19123-9", "mg/dL"),
        ("WBC", "6690-2", "10*3/uL"),
        ("Platelets", "777-3", "10*3/uL"),
        ("TroponinI", "10839-9", "ng/mL"),
        ("PTT", "3173-2", "s"),
    ],
)
def test_primary_loinc_and_unit(name, loinc, unit):
    v = variable(name)
    assert v.loinc[0] == loinc
    assert v.unit == unit


def test_no_loinc_code_maps_to_two_variables_except_spo2_sao2():
    seen: dict[str, str] = {}
    shared = []
    for v in CATALOG:
        for code in v.loinc:
            if code in seen:
                shared.append((seen[code], v.name, code))
            seen[code] = v.name
    # US Core pulse oximetry carries 2708-6 as a second coding of SpO2; SaO2's primary is 2708-6.
    assert shared == [("O2Sat", "SaO2", "2708-6")]


@pytest.mark.parametrize(
    ("name", "unit", "value", "expected"),
    [
        ("Temp", "[degF]", 98.6, 37.0),
        ("Temp", "[degF]", 32.0, 0.0),
        ("Creatinine", "umol/L", 88.4, 1.0),
        ("Glucose", "mmol/L", 5.0, 90.08),
        ("Lactate", "mg/dL", 9.008, 1.0),
        ("Magnesium", "mmol/L", 1.0, 2.431),
        ("FiO2", "%", 40.0, 0.40),
        ("Hgb", "g/L", 120.0, 12.0),
        ("Bilirubin_total", "umol/L", 17.1, 1.0),
        ("PaCO2", "kPa", 5.0, 37.503),
        ("BUN", "mmol/L", 10.0, 28.01),
        ("HR", "/min", 72.0, 72.0),
        # spellings of a catalog unit and units of its dimension, through the UCUM parse
        ("Temp", "[DEGF]", 98.6, 37.0),  # the c/i form of [degF]
        ("Temp", "K", 310.15, 37.0),
        ("TroponinI", "ng/L", 14.0, 0.014),  # hs-troponin
        ("TroponinI", "pg/mL", 14.0, 0.014),
        ("HR", "{beats}/min", 72.0, 72.0),
        ("HR", "1/min", 72.0, 72.0),
        ("WBC", "10^3/uL", 7.5, 7.5),
        ("Hct", "1", 0.42, 42.0),
    ],
)
def test_unit_conversions(name, unit, value, expected):
    conv = variable(name).conversion_for(unit)
    assert conv is not None
    assert math.isclose(conv.apply(value), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_unknown_or_incommensurable_unit_has_no_conversion():
    assert variable("Creatinine").conversion_for("furlong") is None  # not UCUM
    assert variable("Creatinine").conversion_for("/min") is None  # another dimension
    assert variable("Creatinine").conversion_for("mg/DL") is None  # mixed case: c/s, no "DL"
    # a unit of the canonical dimension converts: 10 mg/L is 1 mg/dL
    assert variable("Creatinine").conversion_for("mg/L").apply(10.0) == 1.0


def test_ranges_are_consistent():
    for v in CATALOG:
        assert v.low < v.high, v.name
        assert v.low <= v.normal <= v.high, v.name
        if v.kind is not Kind.DEMOGRAPHIC:
            assert 1 <= v.max_age_h <= 72, v.name
    assert variable("Temp").is_plausible(37.0)
    assert not variable("Temp").is_plausible(98.6)  # a Fahrenheit value in a Celsius slot
    assert not variable("Creatinine").is_plausible(88.0)  # a umol/L value in a mg/dL slot


def test_unknown_variable_error_lists_names():
    with pytest.raises(KeyError, match="unknown clinical variable 'Ferritin'.*Lactate"):
        variable("Ferritin")


NON_UCUM_ALIASES = {"bpm", "degF"}


def test_every_catalog_unit_is_ucum_but_the_two_named_aliases():
    units = {v.unit for v in CATALOG} | {c.unit for v in CATALOG for c in v.conversions}
    refused = set()
    for unit in units:
        try:
            parse(unit)
        except UnitSyntaxError:
            refused.add(unit)
    assert refused == NON_UCUM_ALIASES


def test_each_catalog_factor_of_a_commensurable_unit_is_the_one_derived_from_the_parse():
    checked = 0
    for v in CATALOG:
        for c in v.conversions:
            if c.unit in NON_UCUM_ALIASES:
                continue
            derived = affine(parse(c.unit), parse(v.unit))
            if derived is None:  # molar mass or valence: stated by the catalog only
                continue
            # the catalog rounds 1 kPa = 7.50062 mm[Hg] to 7.5006
            assert math.isclose(c.scale, derived[0], rel_tol=1e-4), (v.name, c.unit)
            assert math.isclose(c.offset, derived[1], rel_tol=1e-12, abs_tol=1e-12)
            checked += 1
    assert checked == 15


def test_component_panels_and_not_merged_codes_are_consistent_with_the_catalog():
    codes = {code for v in CATALOG for code in v.loinc}
    assert set(COMPONENT_PANELS) <= codes
    assert set(NOT_MERGED).isdisjoint(codes)
    # the blood pressure panels are panels, not variables; pulse oximetry is both
    panels = {p for ps in COMPONENT_PANELS.values() for p in ps}
    assert panels & codes == {"59408-5"}
    assert {p for p in panels if "|" in p} == {"http://snomed.info/sct|75367002"}
    assert all(reason and code.strip() == code for code, reason in NOT_MERGED.items())
    assert set(SUBSTANCE_ONLY) <= set(variable("BUN").loinc) - {variable("BUN").loinc[0]}


def test_alternative_codes_read_as_their_variable():
    assert {"8889-8"} <= set(variable("HR").loinc)
    assert {"8328-7", "8333-7"} <= set(variable("Temp").loinc)
    assert {"89579-7", "42757-5"} <= set(variable("TroponinI").loinc)
    # arterial SaO2 and pulse-oximetry SpO2 stay apart; troponin T is not troponin I
    assert "59408-5" not in variable("SaO2").loinc
    assert {"6598-7", "67151-1"} <= set(NOT_MERGED)
