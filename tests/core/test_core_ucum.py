"""The UCUM parser: spellings of one unit are one unit; conversions follow from the parse.

Golden factors come from the UCUM definitions (prefixes are powers of ten, 1 min = 60 s,
1 mm[Hg] = 133.322 Pa, 1 U = 1 umol/min, 1 kat = 1 mol/s) and NIST SP 811 (degF).
"""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigil.core.ucum import ATOMS, PREFIXES, UnitSyntaxError, affine, parse


@pytest.mark.parametrize(("a", "b"), [
    ("mg/dL", "MG/DL"),  # c/i form
    ("mg/dL", "MG/DL{serum}"),  # an annotation does not make the code case-sensitive
    ("Cel", "CEL"),
    ("[degF]", "[DEGF]"),
    ("mm[Hg]", "MM[HG]"),
    ("mL", "ML"),  # c/i milli-litre, not the c/s mega-litre
    ("kPa", "KPAL"),  # the c/i code of the pascal is PAL
    ("g/L", "G/L"),  # c/i gram (in c/s, G is the gauss)
    ("/min", "1/min"),
    ("/min", "{beats}/min"),
    ("/min", "/min{beats}"),
    ("/min", "min-1"),
    ("mmol/L", "mmol/L{whole blood}"),
    ("mmol/L", "mol/m3"),
    ("10*3/uL", "10^3/uL"),
    ("10*3/uL", "10*9/L"),
    ("10*3/uL", "/nL"),
    ("ng/L", "pg/mL"),
    ("mg/dL", "mg.dL-1"),
    ("mg/dL", "(mg)/(dL)"),
    ("mg/dL", "mg/dl"),  # l and L are both the litre in c/s
    ("%", "10*-2"),
    ("1", "{ratio}"),
])
def test_spellings_of_one_unit_parse_to_the_same_unit(a, b):
    assert parse(a).same_as(parse(b))
    assert affine(parse(a), parse(b)) == (1.0, 0.0)


@pytest.mark.parametrize(("a", "b"), [
    ("mm[Hg]", "mm[hg]"),  # mixed case is c/s, where [hg] is no atom
    ("mg/dL", "Mg/dL"),  # c/s: megagram
    ("ng/mL", "ng/L"),
    ("/min", "/h"),
])
def test_case_and_prefix_differences_that_ucum_keeps_apart(a, b):
    try:
        other = parse(b)
    except UnitSyntaxError:
        return
    assert not parse(a).same_as(other)


@pytest.mark.parametrize(("source", "target", "value", "expected"), [
    ("[degF]", "Cel", 98.6, 37.0),  # NIST SP 811: t/degC = (t/degF - 32)/1.8
    ("[degF]", "Cel", -40.0, -40.0),
    ("K", "Cel", 310.15, 37.0),
    ("ng/L", "ng/mL", 14.0, 0.014),  # hs-troponin
    ("kPa", "mm[Hg]", 5.0, 37.503),  # 1 mm[Hg] = 133.322 Pa
    ("ukat/L", "U/L", 1.0, 60.0),  # 1 U = 1 umol/min
    ("g/L", "g/dL", 120.0, 12.0),
    ("mg/L", "mg/dL", 10.0, 1.0),
    ("L/L", "%", 0.42, 42.0),
    ("/h", "/min", 120.0, 2.0),
    ("a", "h", 1.0, 8766.0),  # Julian year
])
def test_golden_conversions_from_the_parse(source, target, value, expected):
    scale, offset = affine(parse(source), parse(target))
    assert math.isclose(value * scale + offset, expected, rel_tol=1e-5, abs_tol=1e-9)


@pytest.mark.parametrize(("code", "match"), [
    ("", "empty"),
    (" mg/dL", "surrounded by spaces"),
    ("furlong", "unknown unit 'furlong'"),
    ("mEq/L", "unknown unit 'mEq'"),  # UCUM's equivalents are eq, c/i EQ
    ("mmHg", "unknown unit 'mmHg'"),
    ("bpm", "unknown unit 'bpm'"),
    ("mg/dL{unclosed", "annotation"),
    ("(mg/dL", "parenthesis"),
    ("Cel/h", "must stand alone"),
    ("kCel", "unknown unit 'kCel'"),  # a special unit takes no prefix
    ("mg//dL", "expected a unit"),
])
def test_codes_that_are_not_ucum_are_refused_with_what_was_expected(code, match):
    with pytest.raises(UnitSyntaxError, match=match):
        parse(code)


def test_incommensurable_units_have_no_conversion():
    assert affine(parse("mg/dL"), parse("mmol/L")) is None  # needs a molar mass
    assert affine(parse("meq/L"), parse("mmol/L")) is None  # needs a valence
    assert affine(parse("[IU]/L"), parse("U/L")) is None  # an arbitrary unit
    assert affine(parse("1"), parse("[pH]")) is None


def test_the_case_insensitive_tables_are_one_to_one_with_the_case_sensitive_ones():
    ci_prefixes = [v[0] for v in PREFIXES.values()]
    assert len(set(ci_prefixes)) == len(ci_prefixes)
    assert all(ci == ci.upper() for ci in ci_prefixes)
    ci_atoms = {v[0] for v in ATOMS.values()}
    assert all(ci == ci.upper() for ci in ci_atoms)
    assert len(ci_atoms) == len(ATOMS) - 2  # l and L, [IU] and [iU] share their c/i code


_PREFIX = st.sampled_from(["", "k", "m", "u", "n", "d", "c"])
_ATOM = st.sampled_from(["g", "L", "mol", "s", "m"])


@given(prefix=_PREFIX, atom=_ATOM, per_prefix=_PREFIX, per=_ATOM, exp=st.integers(1, 3),
       note=st.sampled_from(["", "{x}", "{whole blood}"]))
def test_the_ci_form_and_annotations_never_change_a_unit(prefix, atom, per_prefix, per, exp,
                                                          note):
    code = f"{prefix}{atom}{note}/{per_prefix}{per}{exp}"
    ci = f"{PREFIXES[prefix][0] if prefix else ''}{ATOMS[atom][0]}/" \
         f"{PREFIXES[per_prefix][0] if per_prefix else ''}{ATOMS[per][0]}{exp}"
    assert parse(code).same_as(parse(ci))
    assert parse(code).same_as(parse(f"{prefix}{atom}.{per_prefix}{per}-{exp}"))
    expected = ((PREFIXES[prefix][1] if prefix else 1.0) * ATOMS[atom][1]
                / ((PREFIXES[per_prefix][1] if per_prefix else 1.0) * ATOMS[per][1]) ** exp)
    assert math.isclose(parse(code).factor, expected, rel_tol=1e-12)
