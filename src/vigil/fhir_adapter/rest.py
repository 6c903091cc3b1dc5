"""The FHIR REST source: capability check, ICU census, incremental Observations.

Standard FHIR R4 REST only (any server: HAPI, an EHR's API, sekmet in tests):

- ``GET metadata``: R4 (4.0.x), search on Patient, Encounter, Location and
  Observation, and whether RiskAssessment accepts ``update``.
- Census: the ICU Locations are ``settings.icu_locations`` or
  ``Location?type=ICU,MICU,SICU,http://snomed.info/sct|309904001``, with the
  Locations inside them (``Location?partof=``, level by level: wards, rooms,
  beds); then
  ``Encounter?status=in-progress&location=Location/a,...&_include=Encounter:subject
  &_include=Encounter:location`` (see :mod:`vigil.fhir_adapter.census`).
- Observations: ``Observation?_lastUpdated=gt{since - overlap}
  &_lastUpdated=le{until}[&patient=a,b,c]`` (``sa`` instead of ``gt`` with
  ``since_prefix``; ``&category=...`` only when ``categories`` are set: by default
  none, so Observations without a category are read); ``_lastUpdated`` and not ``date``,
  so late-charted values with an older effective time are fetched when they are
  written. Patients are asked for in OR-lists of ``patients_per_request``, at most
  ``concurrency`` requests at a time. The client does not ask for ``_sort``: the
  grid orders values itself.

The new watermark is the latest ``meta.lastUpdated`` among the Observations
returned (server clock), or ``since`` when nothing came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx

from vigil.core.errors import FHIRError, FHIRTransportError
from vigil.fhir_adapter.auth import Credentials
from vigil.fhir_adapter.census import ICU_SNOMED, ICU_TYPE_CODES, MAX_PART_OF, build_census
from vigil.fhir_adapter.fast import parse_fast, parse_stamp
from vigil.fhir_adapter.http import FHIRHttp, Params
from vigil.fhir_adapter.mapping import MappingOptions
from vigil.fhir_adapter.protocols import Capabilities
from vigil.fhir_adapter.records import (
    NO_TIME,
    Census,
    IngestCounts,
    IngestResult,
    ObservationBatch,
    from_micros,
    to_micros,
)
from vigil.fhir_adapter.settings import FHIRSettings

__all__ = ["RESTSource", "bundle_resources", "search_instant"]

_NEEDED = ("Patient", "Encounter", "Location", "Observation")
log = logging.getLogger(__name__)


def search_instant(when: datetime) -> str:
    """Format a FHIR search date in UTC with milliseconds (``2020-01-01T00:00:00.000Z``)."""
    if when.tzinfo is None:
        raise FHIRError(f"expected a tz-aware datetime, got naive {when.isoformat()}")
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bundle_resources(bundles: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Yield the resources of search-set Bundles (entries without a resource object skipped)."""
    for bundle in bundles:
        for entry in bundle.get("entry") or ():
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                yield res


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class RESTSource:
    """Census and observations from a FHIR R4 server.

    Parameters
    ----------
    settings : FHIRSettings
    client : httpx.Client, optional
        Injected client (tests put a fault-injecting transport in front of a real server).
    credentials : Credentials, optional
        Defaults to what the settings describe.
    sleep : callable, optional
        Waits between retries.
    """

    def __init__(self, settings: FHIRSettings, *, client: httpx.Client | None = None,
                 credentials: Credentials | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.name = settings.base_url
        """Key of this source's watermark (its base URL)."""
        self.http = FHIRHttp(settings, client=client, credentials=credentials, sleep=sleep)
        self._options = MappingOptions(accept_preliminary=settings.accept_preliminary,
                                       understood_modifiers=settings.understood_modifiers)

    def __repr__(self) -> str:
        return f"RESTSource({self.http!r})"

    def __enter__(self) -> RESTSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this source made it."""
        self.http.close()

    def check(self) -> Capabilities:
        """Read the CapabilityStatement and check vigil can work with the server.

        Raises
        ------
        FHIRError
            If the server is not FHIR R4 or cannot search a resource type vigil reads.
        """
        doc = self.http.json("GET", "metadata")
        if doc.get("resourceType") != "CapabilityStatement":
            raise FHIRError(f"expected a CapabilityStatement at {self.http.url('metadata')}, "
                            f"got {doc.get('resourceType')!r}")
        version = str(doc.get("fhirVersion") or "")
        if not version.startswith("4.0"):
            raise FHIRError(f"expected a FHIR R4 server (fhirVersion 4.0.x), got {version!r}")
        searchable: set[str] = set()
        updatable: set[str] = set()
        for rest in doc.get("rest") or ():
            if rest.get("mode") != "server":
                continue
            for res in rest.get("resource") or ():
                codes = {i.get("code") for i in res.get("interaction") or ()}
                if "search-type" in codes:
                    searchable.add(str(res.get("type")))
                if "update" in codes:
                    updatable.add(str(res.get("type")))
        missing = [t for t in _NEEDED if t not in searchable]
        if missing:
            raise FHIRError(f"the server cannot search {', '.join(missing)}; vigil needs search on "
                            f"{', '.join(_NEEDED)}")
        software = str((doc.get("software") or {}).get("name") or "unknown")
        return Capabilities(fhir_version=version, software=software,
                            can_write_risk="RiskAssessment" in updatable)

    def _icu_locations(self) -> tuple[list[str], list[dict[str, Any]]]:
        """ICU Location ids and the Location resources read (the ICUs' and those inside)."""
        if self.settings.icu_locations:
            ids, found = list(self.settings.icu_locations), []
        else:
            types = [*sorted(ICU_TYPE_CODES), "|".join(ICU_SNOMED)]
            found = [r for r in bundle_resources(self.http.search(
                "Location", [("type", ",".join(types))])) if r.get("resourceType") == "Location"]
            ids = [str(r["id"]) for r in found]
        seen, level = set(ids), list(ids)
        for _ in range(MAX_PART_OF):
            inside: list[dict[str, Any]] = []
            try:
                for chunk in _chunks(level, 50):
                    inside.extend(r for r in bundle_resources(self.http.search(
                        "Location", [("partof", ",".join(f"Location/{i}" for i in chunk))]))
                        if r.get("resourceType") == "Location" and str(r.get("id")) not in seen)
            except FHIRTransportError as exc:
                if exc.status not in (400, 501):
                    raise
                log.warning("the server cannot search Location?partof= (HTTP %s): the census "
                            "uses the ICU Locations themselves, not the beds inside them",
                            exc.status)
                break
            if not inside:
                break
            level = [str(r["id"]) for r in inside]
            seen.update(level)
            found.extend(inside)
        return ids, found

    def census(self) -> Census:
        """Return the in-progress ICU encounters with their Patients and Locations."""
        ids, locations = self._icu_locations()
        if not ids:
            return Census(stays=())
        resources: list[dict[str, Any]] = list(locations)
        places = list(dict.fromkeys([*ids, *(str(r["id"]) for r in locations)]))
        for chunk in _chunks(places, 50):
            resources.extend(bundle_resources(self.http.search("Encounter", [
                ("status", "in-progress"),
                ("location", ",".join(f"Location/{i}" for i in chunk)),
                ("_include", "Encounter:subject"),
                ("_include", "Encounter:location"),
            ])))
        by_type: dict[str, list[dict[str, Any]]] = {}
        for r in resources:
            by_type.setdefault(str(r.get("resourceType")), []).append(r)
        return build_census(by_type.get("Encounter", []), by_type.get("Patient", []),
                            by_type.get("Location", []), icu_locations=ids,
                            unit_by_location=self.settings.unit_by_location)

    def _fetch(self, params: Params) -> tuple[list[IngestResult], int]:
        """Map a search page by page (a page is dropped once mapped); returns the newest stamp."""
        newest = NO_TIME
        parts: list[IngestResult] = []
        for bundle in self.http.search("Observation", params):
            for res in bundle_resources((bundle,)):
                stamp = (res.get("meta") or {}).get("lastUpdated")
                if isinstance(stamp, str):
                    parsed = parse_stamp(stamp)
                    if isinstance(parsed, int) and parsed > newest:
                        newest = parsed
            parts.append(parse_fast((bundle,), options=self._options))
        return parts, newest

    def observations(self, since: datetime | None, until: datetime | None = None, *,
                     patients: Sequence[str] | None = None) -> IngestResult:
        """Observations written after ``since - overlap`` and up to ``until``, mapped.

        Parameters
        ----------
        since : datetime or None
            The previous watermark (None: everything).
        until : datetime or None, optional
            Upper bound on ``_lastUpdated``.
        patients : sequence of str, optional
            Restrict to these Patient ids (normally the census); None for all.

        Returns
        -------
        IngestResult
            With ``watermark`` set.
        """
        base: list[tuple[str, str]] = []
        if self.settings.categories:
            base.append(("category", ",".join(self.settings.categories)))
        if since is not None:
            base.append(("_lastUpdated", self.settings.since_prefix
                         + search_instant(since - self.settings.overlap)))
        if until is not None:
            base.append(("_lastUpdated", f"le{search_instant(until)}"))
        if patients is None:
            queries = [base]
        else:
            queries = [[*base, ("patient", ",".join(c))]
                       for c in _chunks(list(patients), self.settings.patients_per_request)]
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            parts = list(pool.map(self._fetch, queries))
        newest = max([p[1] for p in parts], default=NO_TIME)
        watermark = from_micros(newest) if newest != NO_TIME else since
        if since is not None and watermark is not None and to_micros(watermark) < to_micros(since):
            watermark = since
        # one join of every page, in reading order (a join per search would copy twice)
        return replace(_joined([page for pages, _ in parts for page in pages]),
                       watermark=watermark)


def _joined(results: Sequence[IngestResult]) -> IngestResult:
    """Join results read one after another (reading order, hence versions, kept)."""
    return IngestResult(
        observations=ObservationBatch.concat([r.observations for r in results]),
        quarantine=tuple(q for r in results for q in r.quarantine),
        counts=sum((r.counts for r in results), IngestCounts()),
    )
