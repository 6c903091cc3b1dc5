"""Writing RiskAssessments: to a FHIR server (``PUT``) or to an NDJSON file (embedded mode).

Both are idempotent on the resource id (:func:`vigil.fhir_adapter.risk_assessment_id`
is deterministic): writing the same score twice leaves one resource.

- :class:`RESTWriter` sends ``PUT RiskAssessment/{id}`` (update-as-create with the
  client's id: standard FHIR, no conditional create or RiskAssessment search
  needed), at most ``concurrency`` at a time, with the retries of
  :class:`~vigil.fhir_adapter.http.FHIRHttp`.
- :class:`NDJSONWriter` keeps ``RiskAssessment.ndjson`` with one line per id: a new
  id is appended, the same content is skipped, a changed content replaces the
  line (the file is rewritten atomically). One writer per file at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from vigil.core.errors import DataError
from vigil.fhir_adapter.auth import Credentials
from vigil.fhir_adapter.http import FHIRHttp
from vigil.fhir_adapter.protocols import WriteReport
from vigil.fhir_adapter.settings import FHIRSettings

__all__ = ["NDJSONWriter", "RESTWriter"]


def _check(resource: Mapping[str, Any]) -> str:
    rid = resource.get("id")
    if resource.get("resourceType") != "RiskAssessment" or not isinstance(rid, str) or not rid:
        raise DataError("expected RiskAssessment resources with an id; build them with "
                        "vigil.fhir_adapter.risk_assessment")
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
    """RiskAssessments in one NDJSON file, one line per id.

    Parameters
    ----------
    path : Path
        The file, or a directory that gets ``RiskAssessment.ndjson``.
    """

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.path = path / "RiskAssessment.ndjson" if path.is_dir() else path
        self._lines: dict[str, bytes] = {}
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                if line.strip():
                    doc = orjson.loads(line)
                    self._lines[str(doc["id"])] = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def __repr__(self) -> str:
        return f"NDJSONWriter(path={str(self.path)!r}, resources={len(self._lines)})"

    def __len__(self) -> int:
        return len(self._lines)

    def write(self, assessments: Sequence[Mapping[str, Any]]) -> WriteReport:
        """Append new ids, skip identical ones, replace changed ones."""
        new: list[bytes] = []
        written = unchanged = 0
        rewrite = False
        for a in assessments:
            rid = _check(a)
            line = orjson.dumps(dict(a), option=orjson.OPT_SORT_KEYS)
            old = self._lines.get(rid)
            if old == line:
                unchanged += 1
                continue
            written += 1
            if old is None:
                new.append(line)
            else:
                rewrite = True
            self._lines[rid] = line
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if rewrite:
            tmp = self.path.with_suffix(".ndjson.tmp")
            tmp.write_bytes(b"".join(v + b"\n" for v in self._lines.values()))
            os.replace(tmp, self.path)
        elif new:
            with self.path.open("ab") as f:
                f.write(b"".join(v + b"\n" for v in new))
        return WriteReport(written=written, unchanged=unchanged)

    def close(self) -> None:
        """Nothing to release: every write is flushed."""
