"""How the codes of an Observation are read: code systems, panel context, unit dimension.

The rules of :mod:`vigil.fhir_adapter.mapping` (rule 1, *Code*) that need more than one
code at a time, shared by both parsers: which codes of a CodeableConcept count
(:func:`concept_codes`), whether a component is read in its panel's context
(:func:`component_variable`, :data:`vigil.core.code_context.COMPONENT_PANELS`) and whether a
code read only in a substance unit came in one (:func:`substance_checked`,
:data:`vigil.core.code_context.SUBSTANCE_ONLY`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from vigil.core.code_context import COMPONENT_PANELS, NOT_MERGED, SUBSTANCE_ONLY
from vigil.core.ucum import UnitSyntaxError, parse
from vigil.fhir_adapter.mapping import (
    CODE_INDEX,
    LOINC_SYSTEMS,
    UCUM_SYSTEMS,
    UNKNOWN,
    Payload,
    variable_of,
)

__all__ = ["component_variable", "concept_codes", "substance_checked", "substance_unit"]

_OTHER_CODES = frozenset(NOT_MERGED) | frozenset(
    p for panels in COMPONENT_PANELS.values() for p in panels if "|" in p)


def concept_codes(codings: Iterable[tuple[object, object]]) -> list[str]:
    """Return the codes of a CodeableConcept that the mapping looks at.

    Parameters
    ----------
    codings : iterable of (system, code)

    Returns
    -------
    list of str
        Every LOINC code (any form of the LOINC system), and any other coding listed in
        :data:`~vigil.core.code_context.NOT_MERGED` or as a panel of
        :data:`~vigil.core.code_context.COMPONENT_PANELS`, as ``{system}|{code}``.
    """
    out: list[str] = []
    for system, code in codings:
        if not isinstance(code, str):
            continue
        if system in LOINC_SYSTEMS:
            out.append(code)
        elif isinstance(system, str) and f"{system}|{code}" in _OTHER_CODES:
            out.append(f"{system}|{code}")
    return out


def component_variable(codes: Sequence[str], panel: Collection[str]) -> int:
    """Find the catalog variable of one ``Observation.component``, read in its panel's context.

    Parameters
    ----------
    codes : sequence of str
        The codes of the component's code (:func:`concept_codes`).
    panel : collection of str
        The codes of the Observation's own code (the panel).

    Returns
    -------
    int
        As :func:`variable_of`, and :data:`UNKNOWN` when the component's codes carry a
        code that is not one of the catalog's (a more specific one, such as a pulmonary
        artery pressure next to 8480-6), when no panel code is one in whose context the
        component code is read (:data:`~vigil.core.code_context.COMPONENT_PANELS`), or when
        the panel also carries a :data:`~vigil.core.code_context.NOT_MERGED` code (a generic
        blood-pressure panel coded as pulmonary artery pressure too).
    """
    var = variable_of(codes)
    if (var == UNKNOWN or any(c not in CODE_INDEX for c in codes)
            or any(p in NOT_MERGED for p in panel)):
        return UNKNOWN
    for code in codes:
        context = COMPONENT_PANELS.get(code)
        if context is not None and not context.isdisjoint(panel):
            return var
    return UNKNOWN


_MOLAR = parse("mol/L").dims


def substance_unit(text: str) -> bool:
    """Whether a UCUM code is a substance concentration (``mmol/L``, ``mol/m3``...)."""
    try:
        return parse(text).dims == _MOLAR
    except UnitSyntaxError:
        return False


def substance_checked(codes: Iterable[str], payload: Payload) -> Payload:
    """Refuse a value of a :data:`~vigil.core.code_context.SUBSTANCE_ONLY` code in another unit.

    Parameters
    ----------
    codes : iterable of str
        The codes of the Observation's code (:func:`concept_codes`).
    payload : Payload
        What was read for its value.

    Returns
    -------
    Payload
        ``payload``, or the reason to quarantine it when a code is read in a substance unit
        only and the unit (the UCUM code, else the text; the first that parses) is another.
    """
    if not isinstance(payload, tuple):
        return payload
    hit = next((c for c in codes if c in SUBSTANCE_ONLY), None)
    if hit is None:
        return payload
    _, _, system, code, unit = payload
    ucum = code is not None and (system is None or system in UCUM_SYSTEMS)
    for text in ([code] if ucum else []) + [unit]:
        if text is None:
            continue
        try:
            parse(text)
        except UnitSyntaxError:
            continue
        if substance_unit(text):
            return payload
        return (f"unit {text!r} is not a substance concentration; LOINC {hit} is "
                f"{SUBSTANCE_ONLY[hit]}")
    return payload
