"""The Bulk Data NDJSON source (the embedded default) and a ``$export`` client.

:class:`NDJSONSource` reads a directory of NDJSON files, one resource per line:

- the embedded layout ``Patient.ndjson``, ``Encounter.ndjson``, ``Location.ndjson``,
  ``Observation.ndjson`` (what ``vigil fhir synth`` writes); or
- what a Bulk Data ``$export`` produces: a ``manifest.json`` (``output[].type`` and
  ``url``; the file is the last path segment of the url, in the same directory),
  possibly several files per type (``Observation.1.ndjson``, ``2.Observation.ndjson``).

Without a manifest, a file's type is the resource type named in its file name.

``observations(since, until)`` returns the Observations whose time key lies in
``(since, until]``: the key is ``meta.lastUpdated``, else the effective time (a
line with neither is returned only when ``since`` is None). The files are indexed
once by that key (and again when they change); each call maps only its window,
so counters are those of the window. The watermark is ``until`` (or the latest key
seen when ``until`` is None). A key is never later than its file's modification
time (a far-future stamp is read when its line is written, and cannot push the
watermark ahead of real time), and a line appended since the previous index is
keyed at its arrival (after the previous modification time) when its own time is
older, so values written late are read by the next call. Within one process this
is a byte-offset watermark per file; across a restart it is the source's
:meth:`NDJSONSource.cursor` (per file: inode, the size read up to, modification
time), which the cycle stores with its watermark and hands back through
:meth:`NDJSONSource.resume`, so a line appended while vigil was stopped is keyed at
its arrival too.

Malformed lines of the Patient, Encounter and Location files (not JSON, a
byte-order mark, not an object, another resource type) are quarantined with
their file and line number (:func:`read_resources`), like Observation lines.

:func:`bulk_export` runs the asynchronous ``$export`` pattern against a server
(kick-off with ``Prefer: respond-async`` -> 202 + ``Content-Location`` -> poll,
honouring ``Retry-After`` -> manifest -> download) and writes such a directory.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from vigil.core.errors import DataError, FHIRError, FHIRTransportError
from vigil.fhir_adapter.census import build_census
from vigil.fhir_adapter.fast import effective_time, parse_ndjson, parse_stamp
from vigil.fhir_adapter.http import FHIRHttp
from vigil.fhir_adapter.mapping import MappingOptions
from vigil.fhir_adapter.protocols import Capabilities
from vigil.fhir_adapter.records import (
    NO_TIME,
    Census,
    IngestResult,
    Quarantine,
    Stay,
    from_micros,
    to_micros,
)
from vigil.fhir_adapter.rest import search_instant

log = logging.getLogger(__name__)

__all__ = ["NDJSONSource", "bulk_export", "ndjson_census", "ndjson_files", "read_resources"]

_TYPES = ("Patient", "Encounter", "Location", "Observation")


def ndjson_files(directory: Path) -> dict[str, list[Path]]:
    """List the NDJSON files of a directory by resource type (manifest first, else file names).

    Raises
    ------
    DataError
        If the manifest names a file that is not there.
    """
    out: dict[str, list[Path]] = {t: [] for t in _TYPES}
    manifest = directory / "manifest.json"
    if manifest.is_file():
        doc = orjson.loads(manifest.read_bytes())
        for item in doc.get("output") or ():
            rtype, url = item.get("type"), str(item.get("url") or "")
            path = directory / url.rstrip("/").rsplit("/", 1)[-1]
            if not path.is_file():
                raise DataError(f"the manifest lists {url!r} but {path.name} is missing; "
                                "download the export again", source=str(directory))
            if rtype in out:
                out[rtype].append(path)
        return out
    for path in sorted(directory.glob("*.ndjson")):
        named = [t for t in re.split(r"[._-]", path.stem) if t in out]
        if len(named) == 1:
            out[named[0]].append(path)
    return out


_BOM = b"\xef\xbb\xbf"


def read_resources(paths: Iterable[Path], resource_type: str
                   ) -> tuple[list[dict[str, Any]], list[Quarantine]]:
    """Decode the lines of NDJSON files of one resource type; quarantine the lines that are not.

    A line that is not JSON (truncated, or starting with a byte-order mark), not a
    JSON object, or another resource type is quarantined with its file, line number
    and reason (never its content), and the other lines are read.

    Returns
    -------
    resources : list of dict
    quarantine : list of Quarantine
    """
    out: list[dict[str, Any]] = []
    bad: list[Quarantine] = []
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {number} of {path.name}"
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                why = ("starts with a byte-order mark (NDJSON is UTF-8 without one)"
                       if line.startswith(_BOM) else "not JSON (truncated?)")
                bad.append(Quarantine(resource_type, "", f"malformed NDJSON {where}: {why}"))
                continue
            if not isinstance(doc, dict):
                bad.append(Quarantine(resource_type, "",
                                      f"malformed NDJSON {where}: not a JSON object"))
                continue
            if doc.get("resourceType") != resource_type:
                rid = doc.get("id")
                bad.append(Quarantine(
                    resource_type, rid if isinstance(rid, str) else "",
                    f"{where}: expected a {resource_type}, got "
                    f"{str(doc.get('resourceType'))[:40]!r}"))
                continue
            out.append(doc)
    return out, bad


def ndjson_census(files: Mapping[str, Sequence[Path]], *, icu_locations: Sequence[str] = (),
                  unit_by_location: Mapping[str, str] | None = None) -> Census:
    """Build the census from the Encounter, Patient and Location files of :func:`ndjson_files`.

    Malformed lines are quarantined (:func:`read_resources`) with the census's own
    quarantine (:func:`~vigil.fhir_adapter.census.build_census`).
    """
    read, bad = {}, []
    for t in ("Encounter", "Patient", "Location"):
        read[t], rejected = read_resources(files.get(t, ()), t)
        bad.extend(rejected)
    census = build_census(read["Encounter"], read["Patient"], read["Location"],
                          icu_locations=icu_locations, unit_by_location=unit_by_location)
    return Census(stays=census.stays, quarantine=(*bad, *census.quarantine))


def _key(line: bytes) -> int:
    try:
        d = orjson.loads(line)
        stamp = (d.get("meta") or {}).get("lastUpdated")
        key = parse_stamp(stamp) if isinstance(stamp, str) else effective_time(d)
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return NO_TIME
    return key if isinstance(key, int) else NO_TIME


_BLOCK = 1 << 24
"""Bytes of a file scanned for line breaks at a time."""
_RELEASE_EVERY = 4096
"""Lines read from a mapped file between two releases of its pages."""


def _line_bounds(data: bytes | mmap.mmap) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return the start and end byte offsets of the lines of ``data``, each of shape (n,)."""
    breaks = [np.zeros(0, np.int64)]
    for off in range(0, len(data), _BLOCK):
        block = np.frombuffer(data, dtype=np.uint8, count=min(_BLOCK, len(data) - off),
                              offset=off)
        breaks.append(np.flatnonzero(block == 0x0A).astype(np.int64) + off)
        del block
        _release(data)
    at = np.concatenate(breaks)
    return np.concatenate([[0], at + 1]), np.concatenate([at, [len(data)]])


def _release(data: bytes | mmap.mmap) -> None:
    """Drop the pages of a mapped file from this process (the OS cache keeps them)."""
    if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        data.madvise(mmap.MADV_DONTNEED)


def _slices(maps: Sequence[bytes | mmap.mmap], files: Iterable[int], starts: Iterable[int],
            ends: Iterable[int]) -> Iterator[bytes]:
    """Yield ``maps[f][s:e]`` for each line, keeping few pages of the mapped files resident."""
    for i, (f, s, e) in enumerate(zip(files, starts, ends, strict=True)):
        if i % _RELEASE_EVERY == _RELEASE_EVERY - 1:
            for data in maps:
                _release(data)
        yield maps[f][s:e]


_Stamp = tuple[tuple[str, int, int, int], ...]
"""Per file: path, size, ``st_mtime_ns`` and inode (an index is rebuilt when they change)."""


@dataclass(frozen=True, eq=False)
class _Index:
    """Where each Observation line is, sorted by its time key; the lines stay in the files.

    ``keys``, ``file``, ``start``, ``end`` have shape (n_lines,): time key, index
    into ``paths``, and the line's byte offsets in that file.

    A line's key is its own time (``meta.lastUpdated``, else the effective time),
    but never later than its file's modification time (a far-future stamp cannot
    hold the watermark ahead of real time), and a line appended to a file since
    the previous index is keyed no earlier than its arrival (just after the
    previous modification time), so a value written late with an old time is
    still read. Lines kept from the previous index keep their keys.
    """

    stamp: _Stamp
    paths: tuple[Path, ...]
    keys: NDArray[np.int64]
    file: NDArray[np.int32]
    start: NDArray[np.int64]
    end: NDArray[np.int64]

    @classmethod
    def build(cls, paths: Sequence[Path], stamp: _Stamp, previous: _Index | None = None, *,
              resumed: Mapping[str, tuple[int, int, int]] | None = None) -> _Index:
        """Index ``paths`` (``resumed``: a previous process's inode, size and time per path).

        With ``resumed`` and no ``previous``, the lines past a file's recorded size are new.
        """
        keys, file, start, end = [], [], [], []
        before = _previous_files(previous) or {
            path: (inode, size, written, None, None)
            for path, (inode, size, written) in (resumed or {}).items()}
        for i, (path, (_, size, mtime_ns, inode)) in enumerate(zip(paths, stamp, strict=True)):
            written = mtime_ns // 1000
            with _mapped(path) as data:
                lo, hi = _line_bounds(data)
                key, used = [], []
                for j, line in enumerate(_slices((data,), [0] * len(lo), lo.tolist(),
                                                 hi.tolist())):
                    if line.strip():
                        used.append(j)
                        key.append(_key(line))
            k = np.array(key, dtype=np.int64)
            k[k > written] = written
            old = before.get(str(path))
            if old is not None and old[0] == inode and old[1] <= size:
                old_size, old_written, old_starts, old_keys = old[1:]
                starts = lo[used]
                kept = starts < old_size
                if old_starts is not None:  # the same process: earlier lines keep their keys
                    at = np.searchsorted(old_starts, starts[kept])
                    ok = (at < len(old_starts)) & (
                        old_starts[np.minimum(at, len(old_starts) - 1)] == starts[kept])
                    k_kept = k[kept]
                    k_kept[ok] = old_keys[at[ok]]
                    k[kept] = k_kept
                new = ~kept
                k[new] = np.maximum(k[new], min(old_written + 1, written))
            keys.append(k)
            file.append(np.full(len(used), i, dtype=np.int32))
            start.append(lo[used])
            end.append(hi[used])
        order = np.argsort(np.concatenate([np.zeros(0, np.int64), *keys]), kind="stable")

        def cat(parts: list[NDArray[Any]], dtype: type) -> NDArray[Any]:
            return np.concatenate([np.zeros(0, dtype), *parts]).astype(dtype)[order]

        return cls(stamp=stamp, paths=tuple(paths), keys=cat(keys, np.int64),
                   file=cat(file, np.int32), start=cat(start, np.int64), end=cat(end, np.int64))

    def lines(self, lo: int, hi: int) -> Iterator[bytes]:
        """Yield the lines at sorted positions ``lo:hi``, read from the files."""
        used = set(np.unique(self.file[lo:hi]).tolist())
        with ExitStack() as stack:
            maps = [stack.enter_context(_mapped(p)) if i in used else b""
                    for i, p in enumerate(self.paths)]
            yield from _slices(maps, self.file[lo:hi].tolist(), self.start[lo:hi].tolist(),
                               self.end[lo:hi].tolist())


def _previous_files(index: _Index | None) -> dict[
        str, tuple[int, int, int, NDArray[np.int64] | None, NDArray[np.int64] | None]]:
    """Per path of an index: inode, size, modification time (us), line starts and keys (sorted)."""
    if index is None:
        return {}
    out = {}
    for i, (path, size, mtime_ns, inode) in enumerate(index.stamp):
        mine = index.file == i
        order = np.argsort(index.start[mine], kind="stable")
        out[path] = (inode, size, mtime_ns // 1000, index.start[mine][order],
                     index.keys[mine][order])
    return out


@contextmanager
def _mapped(path: Path) -> Iterator[bytes | mmap.mmap]:
    """Map a file read-only (its pages belong to the OS cache and go on exit)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


class NDJSONSource:
    """Census and observations from a directory of FHIR NDJSON files.

    Parameters
    ----------
    directory : Path
    icu_locations : sequence of str, optional
        Location ids of the ICUs; empty to recognise them by ``Location.type``.
    unit_by_location : mapping of str to str, optional
        Location id -> ``"MICU"``/``"SICU"``.
    accept_preliminary : bool, optional
    understood_modifiers : iterable of str, optional
        Modifier extension URLs to ignore (default none; :mod:`vigil.fhir_adapter.elements`).
    """

    def __init__(self, directory: Path, *, icu_locations: Sequence[str] = (),
                 unit_by_location: Mapping[str, str] | None = None,
                 accept_preliminary: bool = False,
                 understood_modifiers: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"expected a directory of FHIR NDJSON files at {self.directory}, "
                            "found none; write one with `vigil fhir synth`",
                            source=str(self.directory))
        self._icu = tuple(icu_locations)
        self._units = dict(unit_by_location or {})
        self._options = MappingOptions(accept_preliminary=accept_preliminary,
                                       understood_modifiers=frozenset(understood_modifiers))
        self._index: _Index | None = None
        self._resumed: dict[str, tuple[int, int, int]] | None = None
        self._cursor: str | None = None
        self.name = str(self.directory)
        """Key of this source's watermark (its directory)."""

    def __repr__(self) -> str:
        return f"NDJSONSource(directory={str(self.directory)!r})"

    def __enter__(self) -> NDJSONSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the index."""
        self._index = None

    def check(self) -> Capabilities:
        """Check the directory holds Encounter and Observation files.

        Raises
        ------
        FHIRError
            If one of them is missing.
        """
        files = ndjson_files(self.directory)
        missing = [t for t in ("Encounter", "Observation") if not files[t]]
        if missing:
            raise FHIRError(f"no {' or '.join(missing)} NDJSON in {self.directory}; expected "
                            "Encounter.ndjson and Observation.ndjson or a Bulk Data manifest")
        return Capabilities(fhir_version="ndjson", software=str(self.directory),
                            can_write_risk=True)

    def census(self, *, at: datetime | None = None) -> Census:
        """Return the in-progress ICU stays (with ``at``: only those admitted by then)."""
        census = ndjson_census(ndjson_files(self.directory), icu_locations=self._icu,
                               unit_by_location=self._units)
        if at is None:
            return census
        keep: tuple[Stay, ...] = tuple(s for s in census.stays if s.icu_admission <= at)
        return Census(stays=keep, quarantine=census.quarantine)

    def _indexed(self) -> _Index:
        paths = ndjson_files(self.directory)["Observation"]
        stats = [p.stat() for p in paths]
        stamp = tuple((str(p), st.st_size, st.st_mtime_ns, st.st_ino)
                      for p, st in zip(paths, stats, strict=True))
        if self._index is None or self._index.stamp != stamp:
            previous, self._index = self._index, None
            self._index = _Index.build(paths, stamp, previous, resumed=self._resumed)
            self._resumed = None
        return self._index

    def cursor(self) -> str | None:
        """Where the last :meth:`observations` call read up to, per file (JSON), or None.

        For each Observation file: its inode, the byte offset of its first line not yet
        returned (its size when every line was), and its modification time in us. The
        cycle stores it with the watermark, in the same transaction.
        """
        return self._cursor

    def resume(self, cursor: str) -> None:
        """Continue from a :meth:`cursor` of an earlier process (before the first call).

        Lines past a file's recorded offset are keyed at their arrival, as lines appended
        within one process are; a cursor that cannot be read is ignored with a warning
        (the lines' own times are the keys then, as without one).
        """
        try:
            raw = json.loads(cursor)
            self._resumed = {str(p): (int(v[0]), int(v[1]), int(v[2])) for p, v in raw.items()}
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            log.warning("the stored NDJSON cursor cannot be read; reading by the lines' own "
                        "times")
            self._resumed = None

    def observations(self, since: datetime | None, until: datetime | None = None, *,
                     patients: Sequence[str] | None = None) -> IngestResult:
        """Observations with a time key in ``(since, until]``, mapped (see the module docstring)."""
        index = self._indexed()
        lo = 0 if since is None else int(np.searchsorted(index.keys, to_micros(since), "right"))
        hi = (len(index.keys) if until is None
              else int(np.searchsorted(index.keys, to_micros(until), "right")))
        result = parse_ndjson(index.lines(lo, hi), options=self._options)
        if patients is not None:
            wanted = set(patients)
            batch = result.observations
            keep = np.fromiter((p in wanted for p in batch.patient), dtype=bool, count=len(batch))
            result = IngestResult(observations=batch.take(keep), quarantine=result.quarantine,
                                  counts=result.counts)
        self._cursor = _cursor(index, hi)
        if until is not None:
            watermark: datetime | None = until
        elif hi > lo and index.keys[hi - 1] != NO_TIME:
            watermark = from_micros(int(index.keys[hi - 1]))
        else:
            watermark = since
        return IngestResult(observations=result.observations, quarantine=result.quarantine,
                            counts=result.counts, watermark=watermark)


def _cursor(index: _Index, returned: int) -> str:
    """Per file: inode, offset of its first line past the first ``returned``, time (us).

    The lines are counted in key order (as :meth:`_Index.lines` returns them); JSON.
    """
    out = {}
    for i, (path, size, mtime_ns, inode) in enumerate(index.stamp):
        waiting = index.start[returned:][index.file[returned:] == i]
        out[path] = [inode, int(waiting.min()) if len(waiting) else size, mtime_ns // 1000]
    return json.dumps(out, sort_keys=True)


def _inside(http: FHIRHttp, url: str) -> None:
    if not url.startswith(http.base_url + "/"):
        raise FHIRTransportError("an export URL points outside the FHIR base URL; refusing to send "
                                 "credentials there", url=url.split("?", 1)[0])


def bulk_export(http: FHIRHttp, out: Path, *, types: Sequence[str] = _TYPES,
                since: datetime | None = None, group: str | None = None,
                max_polls: int = 600, sleep: Callable[[float], None] = time.sleep
                ) -> dict[str, Any]:
    """Run ``$export`` and write its NDJSON files and manifest into ``out``.

    Parameters
    ----------
    http : FHIRHttp
    out : Path
        Directory for ``manifest.json`` and the files (created if needed).
    types : sequence of str, optional
        ``_type``.
    since : datetime, optional
        ``_since``; use the manifest's ``transactionTime`` of the previous export.
    group : str, optional
        Export ``Group/{group}/$export`` instead of the system-level ``$export``.
    max_polls : int, optional
        Give up after this many status polls.
    sleep : callable, optional

    Returns
    -------
    dict
        The manifest as written (``url`` values are the local file names).

    Raises
    ------
    FHIRTransportError
        If the server refuses the export, fails it, or does not finish in time.
    """
    path = f"Group/{group}/$export" if group else "$export"
    params = [("_type", ",".join(types)), ("_outputFormat", "application/fhir+ndjson")]
    if since is not None:
        params.append(("_since", search_instant(since)))
    resp = http.request("GET", path, params=params, headers={"Prefer": "respond-async"})
    status_url = resp.headers.get("Content-Location")
    if resp.status_code != 202 or not status_url:
        raise FHIRTransportError(
            f"$export kick-off answered HTTP {resp.status_code}, expected 202 with "
            "Content-Location", url=http.url(path), status=resp.status_code)
    _inside(http, status_url)
    for _ in range(max_polls):
        resp = http.request("GET", status_url, headers={"Accept": "application/json"})
        if resp.status_code == 202:
            after = resp.headers.get("Retry-After", "1")
            sleep(min(http.settings.max_backoff_s, float(after) if after.isdigit() else 1.0))
            continue
        if resp.status_code != 200:
            raise FHIRTransportError(f"$export status answered HTTP {resp.status_code}",
                                     url=status_url.split("?", 1)[0], status=resp.status_code)
        manifest = orjson.loads(resp.content)
        break
    else:
        raise FHIRTransportError(f"$export did not finish after {max_polls} polls",
                                 url=status_url.split("?", 1)[0])
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for item in manifest.get("output") or ():
        rtype = str(item.get("type"))
        _inside(http, str(item.get("url")))
        written[rtype] = written.get(rtype, 0) + 1
        name = f"{rtype}.ndjson" if written[rtype] == 1 else f"{rtype}.{written[rtype]}.ndjson"
        data = http.request("GET", str(item["url"]), headers={"Accept": "application/fhir+ndjson"})
        if data.status_code != 200:
            raise FHIRTransportError(f"downloading an export file answered HTTP {data.status_code}",
                                     url=str(item["url"]).split("?", 1)[0], status=data.status_code)
        (out / name).write_bytes(data.content)
        item["url"] = name
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest
