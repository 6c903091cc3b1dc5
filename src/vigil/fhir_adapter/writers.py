"""Writing RiskAssessments: to a FHIR server (``PUT``) or to an NDJSON file (embedded mode).

Both are idempotent on the resource id (:func:`vigil.fhir_adapter.risk_assessment_id`
is deterministic): writing the same score twice leaves one resource.

- :class:`RESTWriter` sends ``PUT RiskAssessment/{id}`` (update-as-create with the
  client's id: standard FHIR, no conditional create or RiskAssessment search
  needed), at most ``concurrency`` at a time, with the retries of
  :class:`~vigil.fhir_adapter.http.FHIRHttp`.
- :class:`NDJSONWriter` keeps ``RiskAssessment.ndjson`` with one line per id: a new
  id is appended, the same content is skipped, a changed content replaces the
  line (the file is rewritten atomically). Every write is synced before it
  returns and a failed one leaves the file as it was (:mod:`vigil.core.files`).
  One writer per file at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from vigil.core.errors import DataError
from vigil.core.files import append_durably, replace_durably, split_torn_tail
from vigil.fhir_adapter.auth import Credentials
from vigil.fhir_adapter.http import FHIRHttp
from vigil.fhir_adapter.protocols import WriteReport
from vigil.fhir_adapter.settings import FHIRSettings

__all__ = ["NDJSONWriter", "RESTWriter"]

log = logging.getLogger(__name__)


def _check(resource: Mapping[str, Any], resource_type: str = "RiskAssessment") -> str:
    rid = resource.get("id")
    if resource.get("resourceType") != resource_type or not isinstance(rid, str) or not rid:
        builder = ("vigil.fhir_adapter.risk_assessment" if resource_type == "RiskAssessment"
                   else "vigil.fhir_adapter.imaging_report")
        raise DataError(f"expected {resource_type} resources with an id; build them with "
                        f"{builder}")
    return rid


class RESTWriter:
    """``PUT RiskAssessment/{id}`` to a FHIR server.

    Parameters
    ----------
    settings : FHIRSettings
    client : httpx.Client, optional
    credentials : Credentials, optional
        Share the source's (``source.http.credentials``) to reuse its token.
    sleep : callable, optional
    """

    def __init__(self, settings: FHIRSettings, *, client: httpx.Client | None = None,
                 credentials: Credentials | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.http = FHIRHttp(settings, client=client, credentials=credentials, sleep=sleep)
        self._concurrency = settings.concurrency

    def __repr__(self) -> str:
        return f"RESTWriter({self.http!r})"

    def write(self, assessments: Sequence[Mapping[str, Any]]) -> WriteReport:
        """PUT each RiskAssessment; raises FHIRTransportError on the first failure."""
        for a in assessments:
            _check(a)
        with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
            list(pool.map(lambda a: self.http.put(dict(a)), assessments))
        return WriteReport(written=len(assessments))

    def __enter__(self) -> RESTWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this writer made it."""
        self.http.close()


class NDJSONWriter:
    """Resources of one type (RiskAssessments by default) in one NDJSON file, one line per id.

    A write returns only once its lines are on disk (:func:`~vigil.core.files.append_durably`:
    ``fsync``, and a failed append is cut back), so a caller that records a resource as
    written after :meth:`write` returned never loses it. Opening the file moves a torn
    last line (a process killed during an append) and any line that is not a
    resource of its type with an id to ``<file>.quarantine``, and keeps the rest.

    Parameters
    ----------
    path : Path
        The file, or a directory that gets ``<resource_type>.ndjson``.
    resource_type : str, optional
        The one resource type the file holds (the imaging write-back keeps
        ``DiagnosticReport`` and ``Observation`` files).
    """

    def __init__(self, path: Path, *, resource_type: str = "RiskAssessment") -> None:
        path = Path(path)
        self.resource_type = resource_type
        self.path = path / f"{resource_type}.ndjson" if path.is_dir() else path
        self.quarantine_path = self.path.with_name(self.path.name + ".quarantine")
        self._lines: dict[str, bytes] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        complete, torn = split_torn_tail(self.path.read_bytes())
        rejected: list[bytes] = []
        numbers: list[int] = []
        lines = complete.splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                doc = orjson.loads(line)
                rid = _check(doc, self.resource_type)
            except (orjson.JSONDecodeError, DataError, AttributeError):
                rejected.append(line)
                numbers.append(number)
                continue
            self._lines[rid] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        if torn:
            rejected.append(torn)
            numbers.append(len(lines) + 1)
        if rejected:
            append_durably(self.quarantine_path, b"".join(r + b"\n" for r in rejected))
            replace_durably(self.path, b"".join(v + b"\n" for v in self._lines.values()))
            log.warning("%s: moved %d torn or malformed line(s) (line %s) to %s; a "
                        "%s whose write was not confirmed stays queued and is "
                        "written again", self.path, len(rejected),
                        ", ".join(map(str, numbers)), self.quarantine_path.name,
                        self.resource_type)

    def __repr__(self) -> str:
        return f"NDJSONWriter(path={str(self.path)!r}, resources={len(self._lines)})"

    def __len__(self) -> int:
        return len(self._lines)

    def write(self, assessments: Sequence[Mapping[str, Any]]) -> WriteReport:
        """Append new ids, skip identical ones, replace changed ones.

        Raises
        ------
        OSError
            When the file cannot be written (e.g. a full disk): nothing of this call
            was written, and the writer still holds what the file holds.
        """
        lines: dict[str, bytes] = {}
        written = unchanged = 0
        rewrite = False
        for a in assessments:
            rid = _check(a, self.resource_type)
            line = orjson.dumps(dict(a), option=orjson.OPT_SORT_KEYS)
            old = lines.get(rid, self._lines.get(rid))
            if old == line:
                unchanged += 1
                continue
            written += 1
            rewrite = rewrite or rid in self._lines
            lines[rid] = line
        if not lines:
            return WriteReport(written=written, unchanged=unchanged)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if rewrite:
            merged = {**self._lines, **lines}
            replace_durably(self.path, b"".join(v + b"\n" for v in merged.values()))
        else:
            append_durably(self.path, b"".join(v + b"\n" for v in lines.values()))
        self._lines.update(lines)  # only once the file holds them
        return WriteReport(written=written, unchanged=unchanged)

    def close(self) -> None:
        """Nothing to release: every write is synced to disk before it returns."""
