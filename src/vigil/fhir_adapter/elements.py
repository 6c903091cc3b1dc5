"""One policy for what the adapter does not understand: unknown elements and modifier extensions.

Both parsers apply it, to the JSON as received and before reading anything, so
they quarantine the same resources for the same reason:

- **Extensions** (``extension``, and the ``_element`` siblings of primitives) are
  ignored: FHIR lets a system ignore an extension it does not know.
- **Modifier extensions** (``modifierExtension``) change the meaning of the
  element that carries them (a value "not measured on this patient", a code
  negated...). FHIR R4 says a system must not process a resource or element
  carrying a modifier extension it does not understand, so such an Observation
  is **quarantined** with the extension's URL in the reason. Which URLs are
  understood is data: :attr:`vigil.fhir_adapter.MappingOptions.understood_modifiers`,
  empty by default (vigil understands none). A site may list one its team has judged
  not to change what vigil reads; vigil then ignores it where R4 allows a modifier
  extension (the resource, a component). On a data type (Quantity, Coding...) R4
  allows none, so one there is always quarantined.
- **Unknown elements** (a JSON property R4 does not define there: a misspelling,
  an element of a later FHIR version, a vendor's own key) are **quarantined** too.
  FHIR lets a reader either ignore or reject them (R4 JSON format, 2.6.2); vigil
  rejects them because an element it does not know could change what the value
  means, and a bedside model must not read a value it might misunderstand. The
  quarantine names the element, so the site sees what to fix.

Both rules are checked at the resource level and in every element the adapter
reads: ``meta``, ``code`` and its codings, ``subject``, ``effectivePeriod``,
``valueQuantity``, ``dataAbsentReason``, and each ``component`` with its code,
codings, ``valueQuantity`` and ``dataAbsentReason``. They are checked for every
Observation, with or without a catalog code. Elements the adapter does not read
(``referenceRange``, ``performer``, ``note``...) are not checked by the fast
parser; the strict parser still validates the whole resource against R4B and
quarantines any invalid content there as invalid.

The element names are those of FHIR R4 (4.0.1); the tests hold them equal to the
``fhir.resources`` R4B models of the same types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "CODEABLE_CONCEPT",
    "CODING",
    "COMPONENT",
    "META",
    "OBSERVATION",
    "PERIOD",
    "QUANTITY",
    "REFERENCE",
    "foreign_element",
]


def _names(*names: str, primitives: Iterable[str] = ()) -> frozenset[str]:
    """Element names, with the ``_name`` sibling of each primitive one."""
    prims = tuple(primitives)
    return frozenset((*names, *prims, *(f"_{p}" for p in prims)))


_ELEMENT = ("id", "extension")
_VALUES = ("valueQuantity", "valueCodeableConcept", "valueRange", "valueRatio",
           "valueSampledData", "valuePeriod")
_PRIMITIVE_VALUES = ("valueString", "valueBoolean", "valueInteger", "valueTime", "valueDateTime")

OBSERVATION = _names(
    "resourceType", "meta", "text", "contained", "extension", "modifierExtension",
    "identifier", "basedOn", "partOf", "category", "code", "subject", "focus", "encounter",
    "effectivePeriod", "effectiveTiming", "performer", *_VALUES, "dataAbsentReason",
    "interpretation", "note", "bodySite", "method", "specimen", "device", "referenceRange",
    "hasMember", "derivedFrom", "component", "id",
    primitives=("implicitRules", "language", "status", "effectiveDateTime", "effectiveInstant",
                "issued", *_PRIMITIVE_VALUES),
)
"""The elements of an R4 Observation (and ``resourceType``; ``id`` has no ``_id``, as in the
``fhir.resources`` models)."""
COMPONENT = _names(*_ELEMENT, "modifierExtension", "code", *_VALUES, "dataAbsentReason",
                   "interpretation", "referenceRange", primitives=_PRIMITIVE_VALUES)
"""The elements of ``Observation.component``."""
META = _names(*_ELEMENT, "profile", "security", "tag",
              primitives=("versionId", "lastUpdated", "source", "profile"))
"""The elements of ``Meta``."""
CODEABLE_CONCEPT = _names(*_ELEMENT, "coding", primitives=("text",))
"""The elements of ``CodeableConcept``."""
CODING = _names(*_ELEMENT, primitives=("system", "version", "code", "display", "userSelected"))
"""The elements of ``Coding``."""
REFERENCE = _names(*_ELEMENT, "identifier", primitives=("reference", "type", "display"))
"""The elements of ``Reference``."""
PERIOD = _names(*_ELEMENT, primitives=("start", "end"))
"""The elements of ``Period``."""
QUANTITY = _names(*_ELEMENT, primitives=("value", "comparator", "unit", "system", "code"))
"""The elements of ``Quantity``."""

_Check = Callable[[Any, str, frozenset[str]], "str | None"]


def _here(element: dict[str, Any], where: str, known: frozenset[str],
          understood: frozenset[str]) -> str | None:
    """Return the first not-understood modifier extension or unknown element of one element."""
    modifiers = element.get("modifierExtension")
    if isinstance(modifiers, list):
        for ext in modifiers:
            url = ext.get("url") if isinstance(ext, dict) else None
            if url not in understood or "modifierExtension" not in known:
                shown = repr(url[:200]) if isinstance(url, str) else "without a url"
                return (f"modifierExtension {shown} on {where} is not understood; a modifier "
                        "extension can change what the element means")
    for key in element:
        if key not in known and key != "modifierExtension":
            return f"unknown element {key[:60]!r} in {where}; FHIR R4 does not define it there"
    return None


def _concept(value: Any, where: str, understood: frozenset[str]) -> str | None:
    if not isinstance(value, dict):
        return None
    found = _here(value, where, CODEABLE_CONCEPT, understood)
    codings = value.get("coding")
    if found is None and isinstance(codings, list):
        for i, coding in enumerate(codings):
            if isinstance(coding, dict):
                found = _here(coding, f"{where}.coding[{i}]", CODING, understood)
                if found is not None:
                    break
    return found


def _plain(known: frozenset[str]) -> _Check:
    def check(value: Any, where: str, understood: frozenset[str]) -> str | None:
        return _here(value, where, known, understood) if isinstance(value, dict) else None
    return check


_READ: tuple[tuple[str, _Check], ...] = (
    ("meta", _plain(META)),
    ("code", _concept),
    ("subject", _plain(REFERENCE)),
    ("effectivePeriod", _plain(PERIOD)),
    ("valueQuantity", _plain(QUANTITY)),
    ("dataAbsentReason", _concept),
)
"""The elements the adapter reads, with the check of their type."""


def foreign_element(resource: dict[str, Any], understood: frozenset[str] = frozenset()
                    ) -> str | None:
    """Return why an Observation cannot be read under the policy above, or None.

    Parameters
    ----------
    resource : dict
        The Observation as decoded JSON.
    understood : frozenset of str, optional
        Modifier extension URLs that are understood (ignored like extensions).

    Returns
    -------
    str or None
        The first not-understood modifier extension or unknown element (resource level,
        then each element read, then each component), or None. The reason names the element
        and the extension URL, never a value of the resource.
    """
    found = _here(resource, "Observation", OBSERVATION, understood)
    for name, check in _READ:
        if found is not None:
            return found
        if name in resource:
            found = check(resource[name], name, understood)
    components = resource.get("component")
    if found is None and isinstance(components, list):
        for i, comp in enumerate(components):
            if not isinstance(comp, dict):
                continue
            where = f"component[{i}]"
            found = _here(comp, where, COMPONENT, understood)
            for name, check in _READ[1:]:
                if found is not None:
                    return found
                if name in comp and name in COMPONENT:
                    found = check(comp[name], f"{where}.{name}", understood)
    return found
