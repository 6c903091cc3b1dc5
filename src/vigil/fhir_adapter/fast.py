"""The fast Observation parser: orjson and direct dict access, no pydantic.

It reads NDJSON (Bulk Data files, one resource per line), single resources and
Bundles (searchset, transaction, collection; ``urn:uuid`` references resolved
through ``fullUrl``), and applies the rules of :mod:`vigil.fhir_adapter.mapping`.
Only Observations are mapped; other resource types are passed over. A
resource that breaks the expected structure is quarantined as malformed
instead of raising.

Speed comes from streaming (each line is parsed and mapped, then dropped),
mapping the common case inline with dict lookups (NDJSON lines and Bundle entries
alike), caching the parsed time strings, references and unit conversions, and
appending to plain lists that become numpy columns every 32,768 values.
``bench/ingest.py`` measures it against ``orjson.loads`` alone and the strict
parser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from vigil.core.code_context import SUBSTANCE_ONLY
from vigil.fhir_adapter.accumulator import USE, Accumulator, code_key
from vigil.fhir_adapter.codes import (
    component_variable,
    concept_codes,
    substance_checked,
    substance_unit,
)
from vigil.fhir_adapter.elements import META, OBSERVATION, foreign_element
from vigil.fhir_adapter.mapping import (
    AMBIGUOUS,
    CODE_INDEX,
    INSTANT,
    LOINC,
    LOINC_SYSTEMS,
    NO_VALUE,
    RANGES,
    TIME_CACHES,
    UCUM,
    UNIT_INDEX,
    UNITS,
    UNKNOWN,
    VALID_INSTANTS,
    MappingOptions,
    Payload,
    not_quantity,
    parse_time,
    patient_key,
    quantity_payload,
    variable_of,
)
from vigil.fhir_adapter.records import (
    NO_TIME,
    NO_VERSION,
    IngestResult,
    ObservationBatch,
    to_micros,
)
from vigil.fhir_adapter.versions import version_number

__all__ = [
    "Reader",
    "bundle_references",
    "effective_time",
    "feed",
    "meta_stamp",
    "ndjson_lines",
    "parse_fast",
    "parse_ndjson",
    "parse_stamp",
]

_CODE_GET = CODE_INDEX.get
_FAST_CODES: dict[str, tuple[int, dict[str, tuple[float, float, float, float, int]]]] = {
    code: (var, {unit: (scale, offset, *RANGES[var], UNIT_INDEX[unit])
                 for unit, (scale, offset) in UNITS[var].items()
                 if code not in SUBSTANCE_ONLY or substance_unit(unit)})
    for code, (var, _rank) in CODE_INDEX.items()
}
"""LOINC code -> (variable, UCUM code -> (scale, offset, low, high, source unit code)), for the
inline common case."""
_PATIENTS: dict[str, str] = {}
"""Subject reference -> Patient id, for references that name a Patient (bounded)."""
_TIME_ELEMENTS = ("effectiveDateTime", "effectiveInstant", "meta.lastUpdated", "issued",
                  "effectivePeriod.end", "effectivePeriod.start")
for _element in _TIME_ELEMENTS:
    TIME_CACHES.setdefault(_element, {})
_EDT = TIME_CACHES["effectiveDateTime"]


def parse_stamp(text: str) -> int | str:
    """Parse a ``meta.lastUpdated`` (microseconds, or why it cannot be used).

    A valid stamp is not cached: a server stamps each resource apart, so a cache of its
    stamps would only grow. The reason for an invalid one is (:func:`parse_time`).
    """
    hit = VALID_INSTANTS.get(text)
    if hit is not None:
        return hit
    if INSTANT.fullmatch(text):
        try:
            return to_micros(datetime.fromisoformat(text))
        except ValueError:
            pass
    return parse_time(text, "meta.lastUpdated")


def meta_stamp(d: dict[str, Any]) -> int:
    """``meta.lastUpdated`` of a decoded resource in microseconds, :data:`NO_TIME` if unusable."""
    meta = d.get("meta")
    stamp = meta.get("lastUpdated") if isinstance(meta, dict) else None
    lu = parse_stamp(stamp) if isinstance(stamp, str) else NO_TIME
    return lu if isinstance(lu, int) else NO_TIME


def _var_of(concept: dict[str, Any]) -> int:
    codings = concept.get("coding")
    if not codings:
        return UNKNOWN
    if len(codings) == 1:
        c = codings[0]
        if c.get("system") not in LOINC_SYSTEMS:
            return UNKNOWN
        hit = _CODE_GET(c.get("code"))
        return UNKNOWN if hit is None else hit[0]
    return variable_of(_codes(concept))


def _codes(concept: dict[str, Any]) -> list[str]:
    return concept_codes((c.get("system"), c.get("code")) for c in concept.get("coding") or ())


def _payload(holder: dict[str, Any]) -> Payload:
    q = holder.get("valueQuantity")
    if q is not None:
        return quantity_payload(q.get("value"), q.get("comparator"), q.get("system"),
                                q.get("code"), q.get("unit"))
    if "dataAbsentReason" in holder:
        return None
    for key in holder:
        if key.startswith("value"):
            return not_quantity(key)
    return NO_VALUE


def effective_time(d: dict[str, Any]) -> int | str:
    """Effective time of an Observation dict in microseconds, or the reason it is unusable."""
    t = d.get("effectiveDateTime")
    if t is not None:
        hit = _EDT.get(t)
        return hit if hit is not None else parse_time(t, "effectiveDateTime")
    t = d.get("effectiveInstant")
    if t is not None:
        return parse_time(t, "effectiveInstant")
    period = d.get("effectivePeriod")
    if period is not None:
        if period.get("end") is not None:
            return parse_time(period["end"], "effectivePeriod.end")
        if period.get("start") is not None:
            return parse_time(period["start"], "effectivePeriod.start")
        return "effectivePeriod has neither start nor end"
    for key in d:
        if key.startswith("effective"):
            return (f"{key} is not supported; expected effectiveDateTime, effectiveInstant "
                    "or effectivePeriod")
    t = d.get("issued")
    if t is not None:
        return parse_time(t, "issued")
    return "no effective time and no issued time"


def _read(acc: Accumulator, d: dict[str, Any], fallback_id: str | None,
          resolve: Mapping[str, str] | None) -> None:
    rid = d.get("id") or fallback_id or ""
    meta = d.get("meta")
    lu: int | str = NO_TIME
    version = NO_VERSION
    try:
        foreign = foreign_element(d, acc.understood)  # first, as the strict parser does
        if foreign is not None:
            acc.reject(rid, foreign, meta_stamp(d))
            return
        if meta is not None:
            if meta.get("lastUpdated") is not None:
                lu = parse_stamp(meta["lastUpdated"])
                if isinstance(lu, str):
                    acc.reject(rid, lu)
                    return
            version = version_number(meta.get("versionId"))
        code = d.get("code")
        var = UNKNOWN if code is None else _var_of(code)
        items: list[tuple[int, Payload]] = []
        if var != UNKNOWN:
            items.append((var, NO_VALUE if var == AMBIGUOUS
                          else substance_checked(_codes(code), _payload(d))))
        components = d.get("component")
        if components:
            panel = () if code is None else _codes(code)
            for comp in components:
                cvar = component_variable(_codes(comp["code"]), panel)
                if cvar != UNKNOWN:
                    items.append((cvar, _payload(comp) if cvar != AMBIGUOUS else NO_VALUE))
        if not items:
            if code is None:
                acc.reject(rid, "malformed Observation: no code", lu)
            else:
                acc.ignore(code_key((c.get("system"), c.get("code"))
                                    for c in code.get("coding") or ()))
            return
        if not rid:
            acc.reject(rid, "malformed Observation: no id", lu)
            return
        subject = d.get("subject")
        ref = subject.get("reference") if subject is not None else None
        if ref is None:
            patient = None
        elif resolve and ref in resolve:  # a reference to a resource of the same Bundle
            patient = patient_key(ref, resolve)
        else:  # one str per patient, shared by every value
            patient = _PATIENTS.get(ref)
            if patient is None:
                patient = patient_key(ref)
                if patient is not None:
                    if len(_PATIENTS) > 100_000:
                        _PATIENTS.clear()
                    _PATIENTS[ref] = patient
        issued: int | str = NO_TIME
        if d.get("issued") is not None:
            issued = parse_time(d["issued"], "issued")
            if isinstance(issued, str):
                acc.reject(rid, issued, lu)
                return
        acc.emit(rid, lu, d.get("status"), patient, effective_time(d), items, version=version,
                 issued=issued)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as exc:
        acc.reject(rid, f"malformed Observation: {type(exc).__name__}",
                   lu if isinstance(lu, int) else NO_TIME)


def bundle_references(bundle: dict[str, Any]) -> dict[str, str]:
    """Map ``fullUrl`` -> ``Type/id`` over a Bundle's entries (to resolve ``urn:uuid``)."""
    out: dict[str, str] = {}
    for entry in bundle.get("entry") or ():
        res = entry.get("resource")
        url = entry.get("fullUrl")
        if isinstance(res, dict) and url and res.get("id") and res.get("resourceType"):
            out[url] = f"{res['resourceType']}/{res['id']}"
    return out


Reader = Callable[[Accumulator, dict[str, Any], str | None, Mapping[str, str] | None], None]
"""How a parser reads one Observation: (accumulator, resource, fallback id, Bundle references)."""


def feed(acc: Accumulator, d: Any, read: Reader, fallback_id: str | None = None,
         resolve: Mapping[str, str] | None = None) -> None:
    """Hand an Observation to ``read``; expand a Bundle; pass other resources over."""
    if not isinstance(d, dict):
        acc.reject("", "malformed resource: not a JSON object", resource_type="?")
        return
    rtype = d.get("resourceType")
    if rtype == "Observation":
        read(acc, d, fallback_id, resolve)
    elif rtype == "Bundle":
        for resource, url, refs in _entries((d,)):
            feed(acc, resource, read, url, refs)


def ndjson_lines(source: bytes | str | Path | Iterable[bytes | str]) -> Iterable[bytes | str]:
    """Split NDJSON given as bytes or a file path into lines (lines pass through)."""
    if isinstance(source, str | Path):
        source = Path(source).read_bytes()
    return source.splitlines() if isinstance(source, bytes) else source


def parse_fast(resources: Iterable[Any], *, options: MappingOptions | None = None) -> IngestResult:
    """Map already decoded resources (dicts; Bundles are expanded).

    Parameters
    ----------
    resources : iterable of dict
        FHIR resources as decoded JSON.
    options : MappingOptions, optional

    Returns
    -------
    IngestResult
        Without watermark.
    """
    return _map(Accumulator(options), _entries(resources))


def parse_ndjson(source: bytes | str | Path | Iterable[bytes | str], *,
                 options: MappingOptions | None = None) -> IngestResult:
    """Map NDJSON: one resource (or Bundle) per line.

    Parameters
    ----------
    source : bytes, str, Path or iterable of lines
        NDJSON content (bytes), a file path (str or Path), or lines.
    options : MappingOptions, optional

    Returns
    -------
    IngestResult
        Without watermark. A line that is not JSON is quarantined.
    """
    return _map(Accumulator(options), ndjson_lines(source), lines=True)


_Doc = tuple[Any, str | None, Mapping[str, str] | None]
"""A resource to map, its fallback id (``fullUrl``) and its Bundle's references."""


def _entries(resources: Iterable[Any]) -> Iterator[_Doc]:
    """Yield the resources, a Bundle replaced by its entries (one level; :func:`feed` recurses)."""
    for d in resources:
        if type(d) is dict and d.get("resourceType") == "Bundle":
            refs = bundle_references(d)
            for entry in d.get("entry") or ():
                if isinstance(entry, dict) and "resource" in entry:
                    url = entry.get("fullUrl")
                    yield entry["resource"], url if isinstance(url, str) else None, refs
        else:
            yield d, None, None


def _map(acc: Accumulator, docs: Iterable[_Doc] | Iterable[bytes | str], *,
         lines: bool = False) -> IngestResult:
    """Map resources: the common case inline, anything else through :func:`feed`.

    ``docs`` are NDJSON lines with ``lines`` (decoded here: no generator in between),
    else what :func:`_entries` yields.
    """
    loads, not_json = orjson.loads, orjson.JSONDecodeError
    used = frozenset(k for k, v in acc.status_action.items() if v == USE)
    codes, instants, patients = _FAST_CODES, VALID_INSTANTS, _PATIENTS
    loinc, ucum = LOINC, UCUM
    no_version, no_time = NO_VERSION, NO_TIME
    inline_root, inline_meta = _INLINE_ROOT.issuperset, _INLINE_META
    flat: list[Any] = []
    extend = flat.extend
    chunks: list[ObservationBatch] = []
    n = 0
    fallback_id = refs = None
    for doc in docs:
        if lines:
            try:
                d = loads(doc)  # type: ignore[arg-type]
            except not_json:
                if doc.strip():  # type: ignore[union-attr]
                    acc.reject("", "malformed NDJSON line: not JSON", resource_type="?")
                continue
        else:
            d, fallback_id, refs = doc  # type: ignore[misc]
        if len(flat) >= _FLUSH:  # columns every _FLUSH values bound the Python objects alive
            chunks.append(_columns(flat))
            flat.clear()
        # The common case (one LOINC coding, a used status, a valueQuantity in a UCUM unit of
        # the catalog, a time and a subject seen before) is mapped inline with dict lookups
        # only; anything else, including a first sighting, takes the general path, which
        # applies the same rules (Accumulator.emit) and fills the caches.
        try:
            code = d["code"]
            (c,) = code["coding"]
            var, units = codes[c["code"]]
            q = d["valueQuantity"]
            value = q["value"]
            scale, offset, low, high, unit = units[q["code"]]
            when = d["effectiveDateTime"]
            t = instants[when]
            meta = d["meta"]
            stamp = meta["lastUpdated"]
            # a device's value is often stamped and issued at its effective time: no lookup
            lu = t if stamp == when else instants.get(stamp)
            if lu is None:  # a server stamps each resource apart: parsed here, not cached
                lu = parse_stamp(stamp)
                if type(lu) is not int:
                    raise LookupError
            version = no_version if len(meta) == 1 else version_number(meta.get("versionId"))
            iss = d.get("issued")
            if iss is None:
                issued = no_time
            elif iss == when:
                issued = t
            else:
                issued = instants.get(iss)
                if issued is None:
                    issued = parse_stamp(iss)
                    if type(issued) is not int:
                        raise LookupError
            subject = d["subject"]
            ref = subject["reference"]
            if refs is not None and ref in refs:  # a Bundle's own reference resolves first
                raise LookupError
            patient = patients[ref]
            rid = d["id"]
            # Only elements read inline and known to FHIR R4 (no modifierExtension, no
            # component, no comparator): anything else is checked on the general path
            # (vigil.fhir_adapter.elements). Lengths stand for the key sets, as the keys
            # read above are present: 8 at the resource level, and the usual others.
            if (len(d) != 8 + (iss is not None) + ("category" in d) + ("encounter" in d)
                    and not inline_root(d)):
                raise LookupError
            if (c["system"] != loinc or q["system"] != ucum or d["resourceType"] != "Observation"
                    or d["status"] not in used or value is True or value is False or not rid
                    or (len(q) != 3 and (len(q) != 4 or "unit" not in q))
                    or (len(c) != 2 and (len(c) != 3 or "display" not in c))
                    or (len(code) != 1 and (len(code) != 2 or "text" not in code))
                    or (len(subject) != 1 and (len(subject) != 2 or "display" not in subject))
                    or (len(meta) != 1 and not meta.keys() <= inline_meta)):
                raise LookupError
            out = value * scale + offset
            if not low <= out <= high:
                raise LookupError
        except (LookupError, TypeError, AttributeError, ValueError):
            acc.n_resources = n
            feed(acc, d, _read, fallback_id, refs)
            n = acc.n_resources
            continue
        n += 1
        extend((patient, var, t, out, rid, lu, n, unit, version, issued))
    acc.n_resources = n
    if flat:
        chunks.append(_columns(flat))
    return _merge(acc.result(), chunks)


_INLINE_ROOT = OBSERVATION - {"modifierExtension", "component"}
"""Resource-level elements of an Observation mapped inline."""
_INLINE_META = META - {"modifierExtension"}
"""Elements of ``meta`` of an Observation mapped inline."""
_WIDTH = 10
"""Fields of one inline value (see ``_FIELDS``)."""
_FLUSH = _WIDTH * 32768
"""Inline values (flattened tuples) held as Python objects before they become columns."""
_FIELDS = ("patient", "variable", "effective", "value", "resource_id", "last_updated", "seq",
           "unit", "version", "issued")
_DTYPES = (object, np.int8, np.int64, np.float64, object, np.int64, np.int64, np.int8, np.int64,
           np.int64)


def _columns(flat: list[Any]) -> ObservationBatch:
    """Columns of inline rows given as flattened tuples of ``_FIELDS``."""
    return ObservationBatch(**{name: np.array(flat[i::_WIDTH], dtype=dtype)
                               for i, (name, dtype) in enumerate(zip(_FIELDS, _DTYPES,
                                                                     strict=True))})


def _merge(general: IngestResult, chunks: list[ObservationBatch]) -> IngestResult:
    """Join the inline rows (column chunks) with the general path's, in reading order."""
    if not chunks:
        return general
    g = general.observations
    parts = [*chunks, g] if len(g) else chunks
    inline = parts[0] if len(parts) == 1 else ObservationBatch(**{
        f: np.concatenate([getattr(c, f) for c in parts]) for f in _FIELDS})
    if len(g):
        inline = inline.take(np.argsort(inline.seq, kind="stable"))
    counts = replace(general.counts,
                     values=general.counts.values + sum(len(c) for c in chunks))
    return IngestResult(observations=replace(inline, deletions=g.deletions),
                        quarantine=general.quarantine, counts=counts)
