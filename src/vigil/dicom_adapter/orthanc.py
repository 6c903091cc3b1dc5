"""Orthanc as the site's PACS: a REST/DICOMweb client and the imaging runtime's study source.

- :class:`OrthancClient` speaks Orthanc's REST API (change feed ``/changes``, study
  lookup, ``POST /instances``) and DICOMweb (WADO-RS *Retrieve Study*, DICOM PS3.18
  §10.4) over ``httpx`` with HTTP basic auth, timeouts and retries. Every request it
  sends is safe to repeat (reads, and storing an instance Orthanc keeps the first copy
  of), so every request is retried on transport errors and 502/503/504.
- :class:`OrthancSource` is a :class:`~vigil.runtime.study_contracts.StudySource`: it
  walks the change feed from a cursor (the last ``Seq`` read, a string the runtime
  stores) and reports each study once it is stable (the ``NewStudy`` rows of a feed
  chunk are looked up together: two ``/tools/bulk-content`` requests for up to a page
  of studies, not two requests per study); :meth:`OrthancSource.fetch` returns
  its instances as Part 10 bytes by WADO-RS, exactly as stored.

Why ``NewStudy`` and not ``StableStudy``: Orthanc 1.10 keeps the unstable studies in
memory, so a study whose ``StableAge`` has not passed when Orthanc restarts never gets a
``StableStudy`` change (it comes back stable, silently; measured). The source therefore
acts on ``NewStudy``: a study that is still unstable holds the cursor just before its
``NewStudy`` (the page ends, ``done``) until Orthanc calls it stable, by timer or by
restart. Instances added later to a reported study (the runtime's own SR among them)
do not report it again. See ``docs/imaging.md``, "Orthanc as the PACS".

Errors are :class:`~vigil.core.errors.PACSError` with one line saying what was expected;
no message or log line carries a UID, an Orthanc id (a hash of the UIDs) or a patient
identifier: httpx's request log shows the base URL and the first path segment only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from vigil.core.errors import ConfigError, PACSError
from vigil.dicom_adapter.dicomweb import boundary_of, instances_from_parts, split_multipart
from vigil.runtime.study_contracts import StudyInstance, StudyPage, StudyRef

__all__ = ["Change", "ChangesPage", "OrthancClient", "OrthancSource", "StudyInfo"]

log = logging.getLogger("vigil.pacs")
_RETRY_STATUS = frozenset({502, 503, 504})
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 500
"""Changes read per ``/changes`` request."""


class _RedactPaths(logging.Filter):
    """httpx logs request URLs; keep only the origin and first segment of a PACS URL."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) for a in record.args)
        return True

    def _redact(self, arg: object) -> object:
        if isinstance(arg, httpx.URL):
            origin = f"{arg.scheme}://{arg.netloc.decode('ascii')}"
            if origin in self.origins:
                first = arg.path.strip("/").split("/", 1)[0]
                return f"{origin}/{first}/…"
        return arg


_REDACT = _RedactPaths()


@dataclass(frozen=True)
class Change:
    """One row of Orthanc's change feed."""

    seq: int
    change_type: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class ChangesPage:
    """One ``GET /changes`` answer: the changes, Orthanc's ``Last`` Seq and ``Done``."""

    changes: tuple[Change, ...]
    last: int
    done: bool


@dataclass(frozen=True)
class StudyInfo:
    """What the source needs of one Orthanc study."""

    ref: StudyRef
    stable: bool


class OrthancClient:
    """A client of one Orthanc server (REST API + DICOMweb plugin at ``/dicom-web``).

    Parameters
    ----------
    base_url : str
        ``http(s)://host:port`` of Orthanc (a trailing slash is dropped).
    username, password : str or None
        HTTP basic-auth credentials; both None when authentication is off.
    timeout : float
        Seconds per connect / read / write.
    retries : int, optional
        Further attempts after a transport error or a 502/503/504 answer.
    backoff_s : float, optional
        Wait before retry ``k`` is ``backoff_s * 2**k`` seconds.
    transport : httpx.BaseTransport, optional
        For tests (``httpx.MockTransport``).
    sleep : callable, optional
        Waits between retries (tests pass a recorder).
    """

    def __init__(self, base_url: str, *, username: str | None = None,
                 password: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        url = base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the PACS URL must start with http:// or https://, got {url!r}",
                              key="pacs")
        if httpx.URL(url).userinfo:
            raise ConfigError("the PACS URL must not carry credentials; give the user and "
                              "password separately", key="pacs")
        if (username is None) != (password is None):
            raise ConfigError("give both a PACS user and a password, or neither", key="pacs")
        self.base_url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        auth = httpx.BasicAuth(username, password) if username is not None else None
        self._http = httpx.Client(base_url=url, auth=auth, timeout=httpx.Timeout(timeout),
                                  transport=transport)
        origin = httpx.URL(url)
        _REDACT.origins.add(f"{origin.scheme}://{origin.netloc.decode('ascii')}")
        httpx_log = logging.getLogger("httpx")
        if _REDACT not in httpx_log.filters:
            httpx_log.addFilter(_REDACT)

    def __repr__(self) -> str:
        return f"OrthancClient(base_url={self.base_url!r})"

    def __enter__(self) -> OrthancClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _request(self, method: str, path: str, what: str, *, ok: Sequence[int] = (200,),
                 **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise PACSError(
                        f"the PACS at {self.base_url} could not be reached for {what} "
                        f"({type(exc).__name__}, {attempt + 1} attempts); expected Orthanc "
                        "listening there: check the URL and that it runs", url=self.base_url
                    ) from exc
                resp = None
            if resp is not None:
                if resp.status_code == 401:
                    raise PACSError("Orthanc refused the credentials (HTTP 401); check the PACS "
                                    "user and password", url=self.base_url, status=401)
                if resp.status_code in ok:
                    return resp
                if resp.status_code not in _RETRY_STATUS or attempt >= self.retries:
                    raise PACSError(f"Orthanc answered HTTP {resp.status_code} to {what}, "
                                    f"expected {'/'.join(map(str, ok))}{_orthanc_error(resp)}",
                                    url=self.base_url, status=resp.status_code)
            delay = self.backoff_s * 2.0 ** attempt
            log.warning("retrying %s on the PACS (attempt %d of %d) in %.1f s", what,
                        attempt + 2, self.retries + 1, delay)
            self._sleep(delay)
            attempt += 1

    def _json(self, path: str, what: str, **kwargs: Any) -> Any:
        resp = self._request("GET", path, what, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise PACSError(f"Orthanc answered {what} with a body that is not JSON",
                            url=self.base_url) from exc

    def system(self) -> dict[str, Any]:
        """``GET /system``: version, API version, database version."""
        out = self._json("/system", "the system query")
        if not isinstance(out, dict):
            raise PACSError("Orthanc's /system is not a JSON object", url=self.base_url)
        return out

    def changes(self, since: int, limit: int) -> ChangesPage:
        """Read the changes after ``since`` (a ``Seq``), at most ``limit`` of them, oldest first."""
        doc = self._json("/changes", "the change feed",
                         params={"since": str(since), "limit": str(limit)})
        try:
            rows = tuple(Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ResourceType"]),
                                str(c["ID"])) for c in doc["Changes"])
            return ChangesPage(rows, int(doc["Last"]), bool(doc["Done"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PACSError("Orthanc's change feed lacks Changes/Seq/ChangeType/ID/Last/Done",
                            url=self.base_url) from exc

    def count_instances(self, modality: str) -> int:
        """Count the instances of the series of ``modality`` (``POST /tools/find``, expanded)."""
        resp = self._request("POST", "/tools/find", f"the {modality} series query",
                             json={"Level": "Series", "Query": {"Modality": modality},
                                   "Expand": True})
        try:
            return sum(len(series["Instances"]) for series in resp.json())
        except (KeyError, TypeError, ValueError) as exc:
            raise PACSError("Orthanc's /tools/find answer lacks the series' Instances",
                            url=self.base_url) from exc

    def latest_seq(self) -> int:
        """Return the ``Seq`` of the newest change (0 when the feed is empty)."""
        doc = self._json("/changes", "the change feed", params={"last": ""})
        try:
            return int(doc["Last"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PACSError("Orthanc's change feed lacks Last", url=self.base_url) from exc

    def study(self, orthanc_id: str) -> StudyInfo | None:
        """Look up the study with Orthanc id ``orthanc_id``, or None if it is gone (deleted)."""
        resp = self._request("GET", f"/studies/{orthanc_id}", "the study lookup", ok=(200, 404))
        if resp.status_code == 404:
            return None
        series = self._request("GET", f"/studies/{orthanc_id}/series", "the series lookup",
                               ok=(200, 404))
        if series.status_code == 404:
            return None
        return _study_info(resp.json(), series.json(), self.base_url)

    def studies(self, orthanc_ids: Sequence[str]) -> dict[str, StudyInfo | None]:
        """Look up several studies in two requests; None for a study that is gone (deleted).

        ``POST /tools/bulk-content`` (Orthanc 1.9.5+) with ``Level`` Study (the studies'
        ``IsStable``, MainDicomTags and PatientMainDicomTags, as ``GET /studies/{id}``)
        and ``Level`` Series (their series, each with ``ParentStudy`` and its Modality, as
        ``GET /studies/{id}/series``). Orthanc leaves unknown ids out of its answer and
        does not keep the request's order; the answer is matched by ``ID``.
        """
        ids = list(dict.fromkeys(orthanc_ids))
        if not ids:
            return {}
        docs = self._bulk(ids, "Study")
        rows = self._bulk(ids, "Series")
        out: dict[str, StudyInfo | None] = dict.fromkeys(ids)
        try:
            series: dict[str, list[Any]] = {}
            for row in rows:
                series.setdefault(str(row["ParentStudy"]), []).append(row)
            for doc in docs:
                sid = str(doc["ID"])
                if sid in out and doc.get("Type", "Study") == "Study":
                    out[sid] = _study_info(doc, series.get(sid, []), self.base_url)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PACSError("Orthanc's bulk study lookup lacks ID/ParentStudy",
                            url=self.base_url) from exc
        return out

    def _bulk(self, ids: list[str], level: str) -> list[Any]:
        resp = self._request("POST", "/tools/bulk-content", f"the bulk {level.lower()} lookup",
                             json={"Resources": ids, "Level": level})
        try:
            rows = resp.json()
        except ValueError as exc:
            raise PACSError(f"Orthanc answered the bulk {level.lower()} lookup with a body that "
                            "is not JSON", url=self.base_url) from exc
        if not isinstance(rows, list):
            raise PACSError(f"Orthanc's bulk {level.lower()} lookup is not a JSON list",
                            url=self.base_url)
        return rows

    def retrieve_study(self, study_uid: str) -> list[StudyInstance]:
        """Every instance of a study by WADO-RS, as stored (``transfer-syntax=*``: no transcoding).

        Raises
        ------
        PACSError
            When the study is unknown (HTTP 404) or the answer is not a complete
            ``multipart/related`` message of DICOM instances.
        """
        resp = self._request("GET", f"/dicom-web/studies/{study_uid}", "a WADO-RS retrieve",
                             headers={"Accept": _WADO_ACCEPT})
        parts = split_multipart(resp.content, boundary_of(resp.headers.get("content-type", "")))
        return instances_from_parts(parts)

    def store_status(self, data: bytes) -> str:
        """``POST /instances`` one Part 10 instance; ``"Success"`` or ``"AlreadyStored"``.

        Raises
        ------
        PACSError
            When Orthanc refuses it (HTTP 400 "Bad file format" for what is not DICOM).
        """
        resp = self._request("POST", "/instances", "storing an instance", content=data,
                             headers={"Content-Type": "application/dicom"})
        try:
            status = str(resp.json()["Status"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PACSError("Orthanc's answer to a store lacks Status", url=self.base_url) from exc
        if status not in ("Success", "AlreadyStored"):
            raise PACSError(f"Orthanc stored the instance with status {status!r}, expected "
                            "Success or AlreadyStored", url=self.base_url)
        return status

    def store(self, data: bytes) -> None:
        """Store one instance; storing one already there is success (idempotent)."""
        self.store_status(data)


def _study_info(doc: Any, rows: Any, url: str) -> StudyInfo:
    """Return a study's :class:`StudyInfo` from its Orthanc document and its series'."""
    try:
        tags, patient = doc["MainDicomTags"], doc.get("PatientMainDicomTags") or {}
        modalities = tuple(sorted({str(s["MainDicomTags"].get("Modality", ""))
                                   for s in rows} - {""}))
        ref = StudyRef(study_uid=str(tags["StudyInstanceUID"]), source_id=str(doc["ID"]),
                       patient_key=str(patient.get("PatientID", "")), modalities=modalities,
                       accession=str(tags.get("AccessionNumber") or "") or None)
        return StudyInfo(ref, bool(doc.get("IsStable", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PACSError("Orthanc's study lookup lacks MainDicomTags/StudyInstanceUID or "
                        "the series' Modality", url=url) from exc


def _orthanc_error(resp: httpx.Response) -> str:
    """Orthanc's error name (an enum such as "Bad file format"; never its Details)."""
    try:
        name = resp.json().get("OrthancError")
    except (ValueError, AttributeError):
        return ""
    return f" ({name})" if isinstance(name, str) and name else ""


class OrthancSource:
    """The imaging runtime's :class:`~vigil.runtime.study_contracts.StudySource` on Orthanc.

    Parameters
    ----------
    client : OrthancClient
    modalities : sequence of str
        Image modalities the model scores (e.g. ``("CR", "DX")``); a study without
        any of them (an SR-only study, a CT) is not reported.
    """

    name = "orthanc"

    def __init__(self, client: OrthancClient, *, modalities: Sequence[str]) -> None:
        if not modalities:
            raise ConfigError("OrthancSource needs at least one image modality (e.g. CR, DX)",
                              key="modalities")
        self.client = client
        self.modalities = frozenset(m.upper() for m in modalities)
        self.skipped: dict[str, int] = {"gone": 0, "other_modality": 0}

    def __repr__(self) -> str:
        return f"OrthancSource(modalities={sorted(self.modalities)!r})"

    def close(self) -> None:
        """Close the PACS connection."""
        self.client.close()

    def latest_cursor(self) -> str:
        """Return a cursor at the feed's end; start from it to score only studies yet to come."""
        return str(self.client.latest_seq())

    def poll(self, cursor: str | None, *, limit: int) -> StudyPage:
        """Stable studies after ``cursor``, at most ``limit``; see the module notes.

        A cursor beyond Orthanc's newest ``Seq`` means Orthanc's database was reset or
        replaced: the feed is read again from 0 with a warning (the runtime's store
        keeps studies it already scored from being scored twice; skipping would lose
        every study the new database holds).
        """
        if limit < 1:
            raise ConfigError(f"poll limit must be at least 1, got {limit}", key="limit")
        try:
            since = int(cursor) if cursor is not None else 0
        except ValueError:
            raise ConfigError("an Orthanc cursor is a change Seq (an integer), got "
                              f"{cursor!r}", key="cursor") from None
        studies: list[StudyRef] = []
        seen: set[str] = set()
        while True:
            page = self.client.changes(since, _CHUNK)
            if page.last < since:
                log.warning("the stored PACS cursor %d is beyond Orthanc's newest change %d: "
                            "its database was reset or replaced; reading its feed from 0",
                            since, page.last)
                since = 0
                continue
            new = [c.resource_id for c in page.changes if c.change_type == "NewStudy"]
            infos: dict[str, StudyInfo | None] = {}
            for i, change in enumerate(page.changes):
                if change.change_type == "NewStudy":
                    if change.resource_id not in infos:  # the next ones, in one lookup
                        at = new.index(change.resource_id)
                        infos.update(self.client.studies(
                            new[at:at + max(limit - len(studies), 1)]))
                    info = infos[change.resource_id]
                    if info is not None and not info.stable:
                        return StudyPage(tuple(studies), str(since), done=True)
                    self._keep(info, studies, seen)
                since = change.seq
                if len(studies) >= limit:
                    last = i == len(page.changes) - 1
                    return StudyPage(tuple(studies), str(since), done=page.done and last)
            if page.done or not page.changes:
                return StudyPage(tuple(studies), str(since), done=True)

    def _keep(self, info: StudyInfo | None, studies: list[StudyRef], seen: set[str]) -> None:
        if info is None:
            self.skipped["gone"] += 1
        elif not self.modalities.intersection(info.ref.modalities):
            self.skipped["other_modality"] += 1
        elif info.ref.source_id not in seen:
            seen.add(info.ref.source_id)
            studies.append(info.ref)

    def fetch(self, study: StudyRef) -> list[StudyInstance]:
        """Every instance of ``study`` as stored in Orthanc (WADO-RS)."""
        return self.client.retrieve_study(study.study_uid)
