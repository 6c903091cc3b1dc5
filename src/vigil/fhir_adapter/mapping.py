"""The rules that turn a FHIR R4 Observation into catalog values, shared by both parsers.

The fast parser (:mod:`vigil.fhir_adapter.fast`) and the strict parser
(:mod:`vigil.fhir_adapter.strict`) differ only in how they read a resource
(plain dicts, or validated ``fhir.resources`` R4B models). What they read is
handed to :meth:`vigil.fhir_adapter.accumulator.Accumulator.emit`, which applies
these rules in this order:

0. **Elements.** An Observation carrying a modifier extension that is not
   understood, or an element FHIR R4 does not define, at the resource level or
   in an element read below, is quarantined by both parsers with the same reason
   (the one policy and its reasons: :mod:`vigil.fhir_adapter.elements`).
1. **Code.** Only LOINC codings (``http://loinc.org`` or its OID
   ``urn:oid:2.16.840.1.113883.6.1``) of the catalog count
   (:data:`vigil.core.catalog.CATALOG`). ``Observation.code`` gives one value (from
   ``value[x]``). A ``component`` gives one more only in the context of its panel: its
   code must be read inside a panel the Observation's own code names
   (:data:`~vigil.core.code_context.COMPONENT_PANELS`: systolic 8480-6 inside the
   blood-pressure panels 85354-9, 55284-4 or SNOMED CT 75367002, FiO2 3150-0 inside US
   Core pulse oximetry 59408-5) and must carry no other LOINC code (a pulmonary artery
   systolic 8440-0 next to 8480-6 is not a systemic SBP); other components are not read. A code of
   :data:`~vigil.core.code_context.NOT_MERGED` (ionized calcium, troponin T, venous pCO2...)
   next to a catalog code makes the concept unknown. When codings name
   several variables, a code listed by one variable only beats a code shared by
   several (US Core pulse oximetry carries 59408-5 and 2708-6: it is O2Sat, while
   2708-6 alone is SaO2); a tie is quarantined. An Observation with no catalog
   value read is **ignored and counted** (``ignored_unknown_code``).
2. **Status.** ``final``, ``amended`` and ``corrected`` are used, ``preliminary``
   only with ``accept_preliminary``. ``entered-in-error`` emits a
   :class:`~vigil.fhir_adapter.records.Deletion`, which removes that resource's
   values when it is the newest version (:mod:`vigil.fhir_adapter.versions`). Any
   other status is skipped and counted.
3. **Subject.** It must reference a Patient (``Patient/{id}``, an absolute URL,
   or a ``urn:uuid`` resolved inside a Bundle); the Patient id is the patient key.
4. **Time.** ``effectiveDateTime``, else ``effectiveInstant``, else
   ``effectivePeriod.end``, else ``effectivePeriod.start``; only when no
   ``effective[x]`` is present, ``issued``. The time must carry a time of day and
   a zone (FHIR requires a zone with a time); it is converted to UTC. A
   day-precision or zone-less time is quarantined, never guessed.
5. **Value.** ``dataAbsentReason`` instead of a value is counted (``absent``).
   Otherwise it must be a ``valueQuantity`` without comparator. Its unit (the UCUM
   ``code`` when the system is UCUM, by URI or OID, or absent; else, or when the code does
   not convert, the ``unit`` text) is parsed as UCUM (:mod:`vigil.core.ucum`) and must be
   the canonical unit, one of the catalog's conversions, or a unit of their dimension
   (:meth:`vigil.core.catalog.Variable.convert`), and the converted value must lie in
   the plausible range; a code of :data:`~vigil.core.code_context.SUBSTANCE_ONLY` (urea)
   must come in a substance unit. Anything else is quarantined with its reason.

Reasons never contain a patient identifier.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from vigil.core.catalog import MEASURED, variable
from vigil.core.code_context import NOT_MERGED
from vigil.fhir_adapter.records import SOURCE_UNITS, to_micros

__all__ = [
    "AMBIGUOUS",
    "CODE_INDEX",
    "CONVERSION_CACHE",
    "INSTANT",
    "LOINC",
    "LOINC_SYSTEMS",
    "NO_VALUE",
    "RANGES",
    "TIME_CACHES",
    "UCUM",
    "UCUM_SYSTEMS",
    "UNITS",
    "UNIT_INDEX",
    "UNKNOWN",
    "VALID_INSTANTS",
    "MappingOptions",
    "Payload",
    "canonical_value",
    "not_quantity",
    "parse_time",
    "patient_key",
    "quantity_payload",
    "reference_id",
    "source_unit",
    "variable_of",
]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
LOINC_SYSTEMS = frozenset({LOINC, "urn:oid:2.16.840.1.113883.6.1"})
"""The ways FHIR lets a Coding name LOINC: its URI and its OID."""
UCUM_SYSTEMS = frozenset({UCUM, "urn:oid:2.16.840.1.113883.6.8"})
"""The ways FHIR lets a Quantity name UCUM: its URI and its OID."""
UNKNOWN = -1
"""Return value of :func:`variable_of`: no catalog code."""
AMBIGUOUS = -2
"""Return value of :func:`variable_of`: codes of several variables, none more specific."""


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """How permissive the mapping is.

    Parameters
    ----------
    accept_preliminary : bool, optional
        Use ``preliminary`` Observations too (default: skip them).
    understood_modifiers : frozenset of str, optional
        Modifier extension URLs vigil may ignore (default none: an Observation with a
        modifier extension is quarantined; :mod:`vigil.fhir_adapter.elements`).
    """

    accept_preliminary: bool = False
    understood_modifiers: frozenset[str] = frozenset()


def _code_index() -> dict[str, tuple[int, int]]:
    owners: dict[str, list[int]] = {}
    for i, name in enumerate(MEASURED):
        for code in variable(name).loinc:
            owners.setdefault(code, []).append(i)
    index: dict[str, tuple[int, int]] = {}
    for code, idx in owners.items():
        if len(idx) == 1:
            index[code] = (idx[0], 0)
            continue
        primary = [i for i in idx if variable(MEASURED[i]).loinc[0] == code]
        if len(primary) != 1:
            raise RuntimeError(f"LOINC {code} is shared by {len(idx)} catalog variables and is the "
                               f"primary code of {len(primary)}; expected exactly one owner")
        index[code] = (primary[0], 1)
    return index


CODE_INDEX: dict[str, tuple[int, int]] = _code_index()
"""LOINC code -> (index into MEASURED, 0 if only that variable lists it else 1)."""

UNITS: tuple[dict[str, tuple[float, float]], ...] = tuple(
    {variable(n).unit: (1.0, 0.0), **{c.unit: (c.scale, c.offset) for c in variable(n).conversions}}
    for n in MEASURED
)
"""Per variable (MEASURED order): accepted unit -> (scale, offset) to the canonical unit."""
RANGES = tuple((variable(n).low, variable(n).high) for n in MEASURED)
"""Per variable (MEASURED order): the plausible range (low, high), canonical unit."""


def variable_of(codes: Iterable[str]) -> int:
    """Find the catalog variable named by a list of LOINC codes.

    Parameters
    ----------
    codes : iterable of str
        The codes of one CodeableConcept
        (:func:`vigil.fhir_adapter.codes.concept_codes`).

    Returns
    -------
    int
        Index into :data:`~vigil.core.catalog.MEASURED`, :data:`UNKNOWN` (no catalog code,
        or a code of :data:`~vigil.core.code_context.NOT_MERGED`) or :data:`AMBIGUOUS`.
    """
    best, best_rank, tie = UNKNOWN, 2, False
    for code in codes:
        hit = CODE_INDEX.get(code)
        if hit is None:
            if code in NOT_MERGED:
                return UNKNOWN
            continue
        var, rank = hit
        if rank < best_rank:
            best, best_rank, tie = var, rank, False
        elif rank == best_rank and var != best:
            tie = True
    return AMBIGUOUS if tie else best


CONVERSION_CACHE: dict[tuple[int, str | None, str | None, str | None],
                       tuple[float, float, int] | str] = {}
"""(variable, system, code, unit) -> (scale, offset, source unit code) or quarantine reason
(bounded)."""
UNIT_INDEX: dict[str, int] = {u: i for i, u in enumerate(SOURCE_UNITS)}
"""Accepted unit -> its code in :attr:`~vigil.fhir_adapter.records.ObservationBatch.unit`."""


def _conversion(var: int, system: str | None, code: str | None, unit: str | None
                ) -> tuple[float, float, int] | str:
    key = (var, system, code, unit)
    hit = CONVERSION_CACHE.get(key)
    if hit is None:
        v = variable(MEASURED[var])
        candidates = ([code] if code is not None and (system is None or system in UCUM_SYSTEMS)
                      else []) + [unit]
        found = next((c for c in map(v.convert, filter(None, candidates)) if c is not None),
                     None)
        if found is not None:
            hit = (found[1], found[2], UNIT_INDEX[found[0]])
        else:
            shown = code if code is not None else unit
            table = UNITS[var]
            hit = (f"no unit on a {MEASURED[var]} value; expected {', '.join(sorted(table))}"
                   if shown is None else
                   f"unit {shown!r} is not known for {MEASURED[var]}; expected one of "
                   f"{', '.join(sorted(table))} or another UCUM spelling or unit of their "
                   "dimension")
        if len(CONVERSION_CACHE) < 4096:
            CONVERSION_CACHE[key] = hit
    return hit


def source_unit(var: int, *, system: str | None = None, code: str | None = None,
                unit: str | None = None) -> int:
    """Return the accepted unit a Quantity is in (its code in ``SOURCE_UNITS``).

    Parameters
    ----------
    var : int
        Index into :data:`~vigil.core.catalog.MEASURED`.
    system, code, unit : str or None
        The ``Quantity`` fields.

    Returns
    -------
    int
        The unit's index into ``SOURCE_UNITS`` (the UCUM code when it is accepted, else
        the unit text), or -1 when the unit is not accepted for the variable.
    """
    conv = _conversion(var, system, code, unit)
    return -1 if isinstance(conv, str) else conv[2]


def canonical_value(var: int, value: float, *, comparator: str | None = None,
                    system: str | None = None, code: str | None = None, unit: str | None = None
                    ) -> float | str:
    """Convert one Quantity to the canonical unit and check its plausibility.

    Parameters
    ----------
    var : int
        Index into :data:`~vigil.core.catalog.MEASURED`.
    value : float
        ``Quantity.value``.
    comparator, system, code, unit : str or None
        The other ``Quantity`` fields.

    Returns
    -------
    float or str
        The canonical value, or the reason to quarantine it.
    """
    if comparator is not None:
        return f"value has comparator {comparator!r}; a censored value is not used"
    conv = _conversion(var, system, code, unit)
    if isinstance(conv, str):
        return conv
    out = value * conv[0] + conv[1]
    low, high = RANGES[var]
    if not low <= out <= high:
        return (f"value {out:g} {variable(MEASURED[var]).unit} is outside the plausible range "
                f"[{low:g}, {high:g}] of {MEASURED[var]}")
    return out


INSTANT = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
"""A FHIR ``instant`` (seconds and a zone required)."""
_DATE_ONLY = re.compile(r"[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?")
TIME_CACHES: dict[str, dict[str, int | str]] = {}
"""Per element name, the parsed value of each time string seen (bounded)."""
VALID_INSTANTS: dict[str, int] = {}
"""Every time string that parsed to an instant, and its microseconds (bounded)."""


def parse_time(text: str, element: str) -> int | str:
    """Parse a FHIR ``dateTime``/``instant`` string to UTC microseconds.

    Parameters
    ----------
    text : str
        The value as written in the resource.
    element : str
        Its element name, for the reason (``"effectiveDateTime"``...).

    Returns
    -------
    int or str
        Microseconds since the epoch, or the reason the time cannot be used.
    """
    cache = TIME_CACHES.setdefault(element, {})
    hit = cache.get(text)
    if hit is not None:
        return hit
    if INSTANT.fullmatch(text):
        try:
            hit = to_micros(datetime.fromisoformat(text))
        except ValueError:
            hit = f"{element} is not a valid date and time"
    elif _DATE_ONLY.fullmatch(text):
        hit = f"{element} has no time of day; an hourly grid cannot place it"
    elif "T" in text and _DATE_ONLY.fullmatch(text.split("T", 1)[0]):
        hit = f"{element} has a time without a valid time zone"
    else:
        hit = f"{element} is not a FHIR dateTime"
    if len(cache) > 100_000:
        cache.clear()
    cache[text] = hit
    if isinstance(hit, int):
        if len(VALID_INSTANTS) > 200_000:
            VALID_INSTANTS.clear()
        VALID_INSTANTS[text] = hit
    return hit


def reference_id(reference: str | None, resource_type: str) -> str | None:
    """Return the id a reference to ``resource_type`` points to, or None.

    Parameters
    ----------
    reference : str or None
        ``Reference.reference``: ``Type/{id}``, ``Type/{id}/_history/{v}`` or ``{base}/Type/{id}``.
    resource_type : str
        The expected type, e.g. ``"Patient"``.

    Returns
    -------
    str or None
    """
    if not reference:
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def patient_key(reference: str, resolve: Mapping[str, str] | None = None) -> str | None:
    """Return the Patient id a subject reference points to (None if not a Patient).

    Parameters
    ----------
    reference : str
        A reference (see :func:`reference_id`) or a ``urn:uuid:`` of the same Bundle.
    resolve : mapping of str to str, optional
        ``fullUrl`` -> ``Type/id`` of the resources of the same Bundle.

    Returns
    -------
    str or None
    """
    if resolve:
        reference = resolve.get(reference, reference)
    return reference_id(reference, "Patient")


Payload = tuple[float, str | None, str | None, str | None, str | None] | str | None
"""What a parser read for one catalog value: ``(value, comparator, system, code, unit)``
of a valueQuantity, ``None`` for a dataAbsentReason, or the reason it is unusable."""

NO_VALUE = "no value and no dataAbsentReason"


def not_quantity(element: str) -> str:
    """Reason for a value of another type than Quantity."""
    return f"expected valueQuantity, got {element}"


def quantity_payload(value: object, comparator: str | None, system: str | None,
                     code: str | None, unit: str | None) -> Payload:
    """Build the payload of a valueQuantity (a reason if its value is missing or not a number)."""
    if value is None:
        return "valueQuantity has no value"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "valueQuantity.value is not a number"
    return (float(value), comparator, system, code, unit)

