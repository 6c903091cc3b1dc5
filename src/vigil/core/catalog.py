"""The clinical variable catalog: the 40 PhysioNet 2019 variables.

Each variable has its name as in the PhysioNet 2019 Challenge data, its kind,
its LOINC code(s), its canonical UCUM unit (the unit the Challenge data and
therefore the models use), the unit conversions real FHIR feeds need, a
plausible physiological range, a reference ("normal") value used to impute a
value that has never been measured, and the maximum age after which a carried
forward value is no longer used.

Sources: the LOINC/UCUM table and conversion factors of
``research/clinical-runtime.md`` (sections 4.6--4.8), the Challenge data
description (Reyna et al., Crit Care Med 48(2):210-217, 2020).

Codes and units as FHIR feeds send them: each variable lists the alternative LOINC
codes a real EHR uses for it (by site, method or specimen; the source of each is in a
comment), :mod:`vigil.core.code_context` the look-alike codes that must stay apart and why,
and the panels in whose context a component code is read. Units are
UCUM codes; :meth:`Variable.convert` parses them (:mod:`vigil.core.ucum`), so every
spelling of a catalog unit and every unit of its dimension converts, while conversions
that need a molar mass or a valence are stated per variable.

Data quirks, all checked on the shared development file:

- **FiO2** is documented as "%" by the Challenge but recorded as a fraction
  (median 0.5, mostly 0.21--1.0). The canonical unit is therefore the fraction
  ``1``; a feed sending ``%`` is divided by 100. A few raw values are absurd
  (-50, 4000): they lie outside the plausible range and are treated as missing.
- **Magnesium** is documented as "mmol/dL" (a typo); the values (median 2.0)
  are mg/dL, the canonical unit. A feed in mmol/L is multiplied by 2.431, mEq/L
  by 1.2155.
- **Lactate** is documented as "mg/dL" but the values (median 1.8) are mmol/L,
  the canonical unit. A feed in mg/dL is divided by 9.008.
- **EtCO2** is never recorded at hospital A (0 of 667,599 rows in the
  development file); models see it as always missing there.
- **Unit1/Unit2** (MICU/SICU) are missing for about half of hospital A's rows.
- **Age** is capped at 100 for patients aged 90 or more.
- Raw outliers (Temp 20.9 or 50 Cel, FiO2 4000, Potassium 27.5) are not
  cleaned in the source; vigil treats any value outside the plausible range as
  not measured, in training and at the bedside alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from vigil.core.ucum import UnitSyntaxError, affine, parse

__all__ = [
    "CATALOG",
    "DEMOGRAPHICS",
    "LABS",
    "MEASURED",
    "VITALS",
    "Conversion",
    "Kind",
    "Variable",
    "variable",
]


class Kind(StrEnum):
    """What sort of variable it is and where it comes from in FHIR."""

    VITAL = "vital"
    LAB = "lab"
    DEMOGRAPHIC = "demographic"


@dataclass(frozen=True, slots=True)
class Conversion:
    """An affine conversion from a feed unit to the canonical unit.

    ``canonical = value * scale + offset``.

    Parameters
    ----------
    unit : str
        The UCUM code of the feed's unit; a non-UCUM spelling (``bpm``, ``degF``) is
        matched by name only.
    scale, offset : float
        The affine map to the canonical unit.
    """

    unit: str
    scale: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        """Convert one value from :attr:`unit` to the canonical unit."""
        return value * self.scale + self.offset


@dataclass(frozen=True, slots=True)
class Variable:
    """One clinical variable of the catalog.

    Parameters
    ----------
    name : str
        Column name in the PhysioNet 2019 data.
    kind : Kind
        Vital sign, laboratory value or demographic.
    description : str
        Human-readable meaning.
    unit : str
        Canonical UCUM unit (the unit of the training data).
    loinc : tuple of str
        LOINC codes that map to this variable; the first is the primary code
        used when vigil writes an Observation.
    low, high : float
        Plausible range in the canonical unit, inclusive. Values outside are
        quarantined by the FHIR adapter and treated as missing by the grid.
    normal : float
        Reference value used to impute a variable never measured (the
        feature builder also emits a missingness indicator).
    max_age_h : int
        Hours after which a last observed value is no longer carried forward.
    conversions : tuple of Conversion
        Units a feed may send and how to reach the canonical unit. The
        canonical unit itself is always accepted.
    """

    name: str
    kind: Kind
    description: str
    unit: str
    loinc: tuple[str, ...]
    low: float
    high: float
    normal: float
    max_age_h: int
    conversions: tuple[Conversion, ...] = ()

    def conversion_for(self, unit: str) -> Conversion | None:
        """Return the conversion from the UCUM code ``unit`` to the canonical unit, or None.

        The code is parsed (:mod:`vigil.core.ucum`): any spelling of a catalog unit
        (``MG/DL``, ``{beats}/min``, ``10^3/uL``) gets that unit's factor, and a unit of the
        same dimension (``ng/L`` next to ``ng/mL``, ``mg/L`` next to ``mg/dL``) gets the
        factor derived from both parses. See :meth:`convert`.
        """
        hit = self.convert(unit)
        return None if hit is None else Conversion(unit=unit, scale=hit[1], offset=hit[2])

    def convert(self, unit: str) -> tuple[str, float, float] | None:
        """Find how a unit reaches the canonical unit, and through which catalog unit.

        Parameters
        ----------
        unit : str
            A UCUM code, or one of the catalog's non-UCUM spellings (``bpm``, ``degF``),
            which are matched by name.

        Returns
        -------
        tuple of (str, float, float) or None
            ``(catalog unit, scale, offset)``: the first of the canonical unit and the
            conversions that is the same unit as ``unit`` (``{beats}/min`` is ``/min``)
            or, failing that, has its dimension (the scale then comes from both parses);
            None when ``unit`` is not UCUM (nor a catalog alias) or has no catalog unit
            of its dimension.
        """
        return _convert(self.name, unit)

    def is_plausible(self, value: float) -> bool:
        """Whether a canonical-unit value lies in the plausible range."""
        return self.low <= value <= self.high


_V, _L, _D = Kind.VITAL, Kind.LAB, Kind.DEMOGRAPHIC
_KPA_TO_MMHG = Conversion(unit="kPa", scale=7.5006)

CATALOG: tuple[Variable, ...] = (
    # --- vital signs -------------------------------------------------------------------
    Variable(
        "HR",
        _V,
        "heart rate",
        "/min",
        # 8867-4 Heart rate (US Core heart rate profile, research 4.6); 8889-8 Heart rate
        # by Pulse oximetry (LOINC; OMOP concept 3001376)
        ("8867-4", "8889-8"),
        20,
        300,
        80,
        6,
        (Conversion("{beats}/min", 1.0), Conversion("bpm", 1.0)),
    ),
    Variable(
        "O2Sat",
        _V,
        "oxygen saturation by pulse oximetry",
        "%",
        ("59408-5", "2708-6"),
        20,
        100,
        97,
        6,
    ),
    Variable(
        "Temp",
        _V,
        "body temperature",
        "Cel",
        # 8310-5 Body temperature (US Core); by site: 8331-1 Oral, 8332-9 Rectal,
        # 8328-7 Axillary, 8333-7 Tympanic membrane temperature (LOINC; the MII ICU
        # module uses 8328-7 and 8333-7 with 8310-5 in its body-temperature profiles).
        ("8310-5", "8331-1", "8332-9", "8328-7", "8333-7"),
        25,
        45,
        37,
        12,
        (
            Conversion("[degF]", 5.0 / 9.0, -160.0 / 9.0),
            Conversion("degF", 5.0 / 9.0, -160.0 / 9.0),
        ),
    ),
    Variable("SBP", _V, "systolic blood pressure", "mm[Hg]", ("8480-6",), 20, 300, 120, 6),
    Variable("MAP", _V, "mean arterial pressure", "mm[Hg]", ("8478-0",), 20, 300, 80, 6),
    Variable("DBP", _V, "diastolic blood pressure", "mm[Hg]", ("8462-4",), 10, 300, 60, 6),
    Variable(
        "Resp",
        _V,
        "respiratory rate",
        "/min",
        ("9279-1",),
        1,
        100,
        18,
        6,
        (Conversion("{breaths}/min", 1.0),),
    ),
    Variable(
        "EtCO2",
        _V,
        "end-tidal CO2 partial pressure",
        "mm[Hg]",
        ("19891-1",),
        0,
        150,
        35,
        6,
        (_KPA_TO_MMHG,),
    ),
    # --- laboratory values -------------------------------------------------------------
    Variable(
        "BaseExcess",
        _L,
        "base excess",
        "mmol/L",
        ("1925-7", "11555-0"),
        -40,
        40,
        0,
        24,
        (Conversion("meq/L", 1.0),),
    ),
    Variable(
        "HCO3",
        _L,
        "bicarbonate",
        "mmol/L",
        ("1963-8", "1960-4", "2028-9"),
        0,
        60,
        24,
        24,
        (Conversion("meq/L", 1.0),),
    ),
    Variable(
        "FiO2",
        _L,
        "inspired oxygen fraction",
        "1",
        ("3150-0", "19996-8"),
        0.15,
        1.0,
        0.21,
        24,
        (Conversion("%", 0.01),),
    ),
    Variable("pH", _L, "arterial pH", "[pH]", ("2744-1", "11558-4"), 6.5, 8.0, 7.4, 24),
    Variable(
        "PaCO2",
        _L,
        "arterial CO2 partial pressure",
        "mm[Hg]",
        ("2019-8",),
        5,
        200,
        40,
        24,
        (_KPA_TO_MMHG,),
    ),
    Variable("SaO2", _L, "arterial oxygen saturation", "%", ("2708-6",), 20, 100, 97, 24),
    Variable(
        "AST",
        _L,
        "aspartate aminotransferase",
        "U/L",
        ("1920-8",),
        1,
        20000,
        30,
        72,
        (Conversion("[IU]/L", 1.0), Conversion("ukat/L", 60.0)),
    ),
    Variable(
        "BUN",
        _L,
        "blood urea nitrogen",
        "mg/dL",
        # 3094-0 Urea nitrogen [Mass/volume] in Serum or Plasma (research 4.7); urea
        # [Moles/volume] 22664-7 in Serum or Plasma, 72903-8 in Blood (LOINC; GECCO value
        # set): 1 mmol urea holds 28.014 mg of nitrogen, so urea mmol/L x 2.801 = BUN
        # mg/dL. Those two are read in a substance unit only (SUBSTANCE_ONLY).
        ("3094-0", "22664-7", "72903-8"),
        0.5,
        300,
        15,
        48,
        (Conversion("mmol/L", 2.801),),
    ),
    Variable(
        "Alkalinephos",
        _L,
        "alkaline phosphatase",
        "U/L",
        ("6768-6",),
        1,
        5000,
        80,
        72,
        (Conversion("[IU]/L", 1.0), Conversion("ukat/L", 60.0)),
    ),
    Variable(
        "Calcium",
        _L,
        "total calcium",
        "mg/dL",
        ("17861-6", "2000-8"),
        1,
        30,
        9,
        48,
        (Conversion("mmol/L", 4.008),),
    ),
    Variable(
        "Chloride",
        _L,
        "chloride",
        "mmol/L",
        ("2075-0",),
        50,
        200,
        103,
        48,
        (Conversion("meq/L", 1.0),),
    ),
    Variable(
        "Creatinine",
        _L,
        "creatinine",
        "mg/dL",
        ("2160-0", "14682-9", "38483-4"),
        0.05,
        50,
        0.9,
        48,
        (Conversion("umol/L", 1.0 / 88.4),),
    ),
    Variable(
        "Bilirubin_direct",
        _L,
        "direct bilirubin",
        "mg/dL",
        ("1968-7", "14629-0"),
        0,
        60,
        0.2,
        72,
        (Conversion("umol/L", 1.0 / 17.1),),
    ),
    Variable(
        "Glucose",
        _L,
        "glucose",
        "mg/dL",
        ("2345-7", "2339-0", "14749-6"),
        5,
        2000,
        110,
        48,
        (Conversion("mmol/L", 18.016),),
    ),
    Variable(
        "Lactate",
        _L,
        "lactate",
        "mmol/L",
        ("2524-7", "32693-4", "2518-9", "2519-7"),
        0.1,
        40,
        1.2,
        24,
        (Conversion("mg/dL", 1.0 / 9.008),),
    ),
    Variable(
        "Magnesium",
        _L,
        "magnesium",
        "mg/dL",
        ("19123-9", "2601-3"),
        0.1,
        15,
        2.0,
        48,
        (Conversion("mmol/L", 2.431), Conversion("meq/L", 1.2155)),
    ),
    Variable(
        "Phosphate",
        _L,
        "phosphate",
        "mg/dL",
        ("2777-1", "14879-1"),
        0.1,
        25,
        3.5,
        48,
        (Conversion("mmol/L", 3.097),),
    ),
    Variable(
        "Potassium",
        _L,
        "potassium",
        "mmol/L",
        ("2823-3", "6298-4"),
        1,
        15,
        4.1,
        48,
        (Conversion("meq/L", 1.0),),
    ),
    Variable(
        "Bilirubin_total",
        _L,
        "total bilirubin",
        "mg/dL",
        ("1975-2", "14631-6"),
        0.05,
        80,
        0.7,
        72,
        (Conversion("umol/L", 1.0 / 17.1),),
    ),
    Variable(
        "TroponinI",
        _L,
        "troponin I",
        "ng/mL",
        # 10839-9 Troponin I.cardiac in Serum or Plasma; 42757-5 in Blood; 49563-0 by
        # detection limit <= 0.01 ng/mL; 89579-7 by high sensitivity method, reported in
        # ng/L (LOINC; research 4.7 #28; GECCO and ISiK troponin value sets). Troponin T
        # is another protein and is not merged (see NOT_MERGED).
        ("10839-9", "42757-5", "49563-0", "89579-7"),
        0,
        1000,
        0.02,
        72,
        (Conversion("ug/L", 1.0), Conversion("ng/L", 0.001)),
    ),
    Variable(
        "Hct",
        _L,
        "hematocrit",
        "%",
        ("4544-3", "20570-8"),
        5,
        80,
        35,
        48,
        (Conversion("L/L", 100.0),),
    ),
    Variable(
        "Hgb",
        _L,
        "hemoglobin",
        "g/dL",
        ("718-7",),
        1,
        25,
        11.5,
        48,
        (Conversion("g/L", 0.1), Conversion("mmol/L", 1.611)),
    ),
    Variable(
        "PTT",
        _L,
        "activated partial thromboplastin time",
        "s",
        ("3173-2", "14979-9"),
        5,
        300,
        32,
        48,
    ),
    Variable(
        "WBC",
        _L,
        "leukocytes",
        "10*3/uL",
        ("6690-2", "26464-8"),
        0.05,
        500,
        9,
        48,
        (Conversion("10*9/L", 1.0),),
    ),
    Variable(
        "Fibrinogen",
        _L,
        "fibrinogen",
        "mg/dL",
        ("3255-7",),
        10,
        2000,
        300,
        72,
        (Conversion("g/L", 100.0),),
    ),
    Variable(
        "Platelets",
        _L,
        "platelets",
        "10*3/uL",
        ("777-3", "26515-7"),
        1,
        3000,
        200,
        48,
        (Conversion("10*9/L", 1.0),),
    ),
    # --- demographics / administrative (from Patient and Encounter) -------------------
    Variable("Age", _D, "age in years, 100 for 90 or older", "a", ("30525-0",), 0, 120, 60, 0),
    Variable("Gender", _D, "female 0, male 1", "1", (), 0, 1, 0.5, 0),
    Variable("Unit1", _D, "ICU unit is MICU (one-hot, missing when unknown)", "1", (), 0, 1, 0, 0),
    Variable("Unit2", _D, "ICU unit is SICU (one-hot, missing when unknown)", "1", (), 0, 1, 0, 0),
    Variable(
        "HospAdmTime",
        _D,
        "hours from hospital admission to ICU admission",
        "h",
        (),
        -20000,
        100,
        0,
        0,
    ),
    Variable("ICULOS", _D, "hours since ICU admission", "h", (), 1, 100000, 1, 0),
)

_BY_NAME = {v.name: v for v in CATALOG}

VITALS: tuple[str, ...] = tuple(v.name for v in CATALOG if v.kind is Kind.VITAL)
LABS: tuple[str, ...] = tuple(v.name for v in CATALOG if v.kind is Kind.LAB)
MEASURED: tuple[str, ...] = VITALS + LABS
"""The 34 time-varying variables (vitals and labs), in catalog order."""
DEMOGRAPHICS: tuple[str, ...] = tuple(v.name for v in CATALOG if v.kind is Kind.DEMOGRAPHIC)

@lru_cache(maxsize=4096)
def _convert(name: str, unit: str) -> tuple[str, float, float] | None:
    v = _BY_NAME[name]
    entries = ((v.unit, 1.0, 0.0), *((c.unit, c.scale, c.offset) for c in v.conversions))
    parsed, aliases = [], {}
    for text, scale, offset in entries:
        try:
            parsed.append((text, parse(text), scale, offset))
        except UnitSyntaxError:  # a non-UCUM spelling of the catalog, matched by name only
            aliases[text] = (text, scale, offset)
    try:
        source = parse(unit)
    except UnitSyntaxError:
        return aliases.get(unit)
    for text, target, scale, offset in parsed:  # the canonical unit first
        if source.same_as(target):
            return text, scale, offset
    for text, target, scale, offset in parsed:
        hit = affine(source, target)
        if hit is not None:
            return text, hit[0] * scale, hit[1] * scale + offset
    return None


def variable(name: str) -> Variable:
    """Look a variable up by its PhysioNet name.

    Parameters
    ----------
    name : str
        Column name, e.g. ``"Lactate"``.

    Returns
    -------
    Variable

    Raises
    ------
    KeyError
        With the list of known names, if ``name`` is not in the catalog.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown clinical variable {name!r}; known: {', '.join(_BY_NAME)}"
        ) from None
