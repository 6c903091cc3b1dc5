"""The strict Observation parser: every Observation is validated with ``fhir.resources`` R4B.

It reads the same inputs as :mod:`vigil.fhir_adapter.fast` and applies the same
rules (:mod:`vigil.fhir_adapter.mapping`), but each Observation first goes
through the R4B pydantic model; one that does not validate is quarantined as
invalid. Values are read from the typed model (``Decimal`` quantities,
``datetime``/``date`` times), not from the JSON, so the two parsers are two
readings of one rule set; the tests hold their results identical on the
official R4 examples and the Synthea bundles.

R4B (4.3) models are used because ``fhir.resources`` has no plain R4 package
and its default R5 models reject R4 Encounters and Bundles; Observation is
unchanged between R4 and R4B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from vigil.fhir_adapter.accumulator import Accumulator, code_key
from vigil.fhir_adapter.codes import component_variable, concept_codes, substance_checked
from vigil.fhir_adapter.elements import foreign_element
from vigil.fhir_adapter.fast import feed, meta_stamp, ndjson_lines
from vigil.fhir_adapter.mapping import (
    NO_VALUE,
    UNKNOWN,
    MappingOptions,
    Payload,
    not_quantity,
    parse_time,
    patient_key,
    quantity_payload,
    variable_of,
)
from vigil.fhir_adapter.records import NO_TIME, IngestResult, to_micros
from vigil.fhir_adapter.versions import version_number

__all__ = ["parse_ndjson_strict", "parse_strict"]

_OTHER_VALUES = ("valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
                 "valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime",
                 "valuePeriod")


def _codes(concept: Any) -> list[str]:
    if concept is None or not concept.coding:
        return []
    return concept_codes((c.system, c.code) for c in concept.coding)


def _payload(holder: Any) -> Payload:
    q = holder.valueQuantity
    if q is not None:
        value = float(q.value) if q.value is not None else None
        return quantity_payload(value, q.comparator, q.system, q.code, q.unit)
    if holder.dataAbsentReason is not None:
        return None
    for name in _OTHER_VALUES:
        if getattr(holder, name, None) is not None:
            return not_quantity(name)
    return NO_VALUE


def _when(value: datetime | date | str, element: str) -> int | str:
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, date):
        return f"{element} has no time of day; an hourly grid cannot place it"
    return parse_time(value, element)


def _time(obs: Observation) -> int | str:
    if obs.effectiveDateTime is not None:
        return _when(obs.effectiveDateTime, "effectiveDateTime")
    if obs.effectiveInstant is not None:
        return _when(obs.effectiveInstant, "effectiveInstant")
    period = obs.effectivePeriod
    if period is not None:
        if period.end is not None:
            return _when(period.end, "effectivePeriod.end")
        if period.start is not None:
            return _when(period.start, "effectivePeriod.start")
        return "effectivePeriod has neither start nor end"
    if obs.effectiveTiming is not None:
        return ("effectiveTiming is not supported; expected effectiveDateTime, effectiveInstant "
                "or effectivePeriod")
    if obs.issued is not None:
        return _when(obs.issued, "issued")
    return "no effective time and no issued time"


def _invalid(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "resource"
    return f"invalid Observation ({exc.error_count()} errors), first at {where}: {first['type']}"


def _read(acc: Accumulator, d: dict[str, Any], fallback_id: str | None,
          resolve: Mapping[str, str] | None) -> None:
    raw_id = d.get("id")
    rid = (raw_id if isinstance(raw_id, str) else None) or fallback_id or ""
    foreign = foreign_element(d, acc.understood)  # before validation: the fast parser's reason
    if foreign is not None:
        acc.reject(rid, foreign, meta_stamp(d))
        return
    try:
        obs = Observation.model_validate(d)
    except ValidationError as exc:
        acc.reject(rid, _invalid(exc))
        return
    lu = NO_TIME if obs.meta is None or obs.meta.lastUpdated is None else to_micros(
        obs.meta.lastUpdated)
    items: list[tuple[int, Payload]] = []
    panel = _codes(obs.code)
    var = variable_of(panel)
    if var != UNKNOWN:
        items.append((var, substance_checked(panel, _payload(obs)) if var >= 0 else NO_VALUE))
    for comp in obs.component or ():
        cvar = component_variable(_codes(comp.code), panel)
        if cvar != UNKNOWN:
            items.append((cvar, _payload(comp) if cvar >= 0 else NO_VALUE))
    if not items:
        acc.ignore(code_key((c.system, c.code) for c in (obs.code.coding or ())))
        return
    if not rid:
        acc.reject(rid, "malformed Observation: no id", lu)
        return
    ref = obs.subject.reference if obs.subject is not None else None
    patient = None if ref is None else patient_key(ref, resolve)
    version = version_number(obs.meta.versionId if obs.meta is not None else None)
    issued = NO_TIME if obs.issued is None else to_micros(obs.issued)
    acc.emit(rid, lu, obs.status, patient, _time(obs), items, version=version, issued=issued)


def parse_strict(resources: Iterable[Any], *, options: MappingOptions | None = None
                 ) -> IngestResult:
    """Validate and map already decoded resources (dicts; Bundles are expanded).

    Parameters
    ----------
    resources : iterable of dict
    options : MappingOptions, optional

    Returns
    -------
    IngestResult
        Without watermark; Observations that fail R4B validation are quarantined.
    """
    acc = Accumulator(options)
    for d in resources:
        feed(acc, d, _read)
    return acc.result()


def parse_ndjson_strict(source: bytes | str | Path | Iterable[bytes | str], *,
                        options: MappingOptions | None = None) -> IngestResult:
    """Validate and map NDJSON (see :func:`vigil.fhir_adapter.fast.parse_ndjson`)."""
    acc = Accumulator(options)
    for line in ndjson_lines(source):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            acc.reject("", "malformed NDJSON line: not JSON", resource_type="?")
            continue
        feed(acc, d, _read)
    return acc.result()
