"""DICOMweb message parts: ``multipart/related`` bodies (WADO-RS) → DICOM Part 10 instances.

Pure functions (bytes in, bytes out) used by :class:`vigil.dicom_adapter.orthanc.OrthancClient`.
A WADO-RS *Retrieve Study* answer (DICOM PS3.18 §10.4, "Retrieve Transaction") is a
``multipart/related; type="application/dicom"`` body: one part per instance, each the
instance's Part 10 file (PS3.10 §7). The multipart syntax is RFC 2046 §5.1.1: parts are
separated by ``CRLF "--" boundary`` lines (the CRLF before a delimiter belongs to the
delimiter), the last delimiter is followed by ``"--"``, and a part is its header lines,
an empty line, then its content.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from vigil.core.errors import PACSError
from vigil.dicom_adapter.light import light_uids
from vigil.runtime.study_contracts import StudyInstance

__all__ = ["MultipartPart", "boundary_of", "instances_from_parts", "split_multipart"]


@dataclass(frozen=True)
class MultipartPart:
    """One body part: its header fields (names lower-cased) and its content bytes."""

    headers: dict[str, str]
    content: bytes

    def __repr__(self) -> str:
        return f"MultipartPart(headers={self.headers!r}, bytes={len(self.content)})"


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    kind, *rest = content_type.split(";")
    params: dict[str, str] = {}
    for item in rest:
        name, sep, value = item.strip().partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def boundary_of(content_type: str) -> str:
    """Return the ``boundary`` parameter of a ``multipart/related`` Content-Type (RFC 2046 §5.1.1).

    Raises
    ------
    PACSError
        When the media type is not multipart or has no boundary.
    """
    kind, params = _params(content_type)
    if not kind.startswith("multipart/") or not params.get("boundary"):
        raise PACSError(f"expected a multipart/related answer with a boundary, got "
                        f"{kind or 'no Content-Type'!r}")
    return params["boundary"]


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def split_multipart(body: bytes, boundary: str) -> list[MultipartPart]:
    """Split a multipart body into its parts (preamble and epilogue dropped).

    Parameters
    ----------
    body : bytes
        The HTTP message body.
    boundary : str
        From :func:`boundary_of`.

    Returns
    -------
    list of MultipartPart
        In message order.

    Raises
    ------
    PACSError
        When the body has no opening delimiter or ends before the closing one
        (a truncated answer).
    """
    delim = b"--" + boundary.encode("latin-1")
    if body.startswith(delim):
        pos = len(delim)
    else:
        at = body.find(b"\r\n" + delim)
        if at < 0:
            raise PACSError("the multipart answer has no part delimiter: expected "
                            "multipart/related parts, got something else")
        pos = at + 2 + len(delim)
    parts: list[MultipartPart] = []
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)  # transport padding (RFC 2046) until CRLF
        nxt = body.find(b"\r\n" + delim, eol)
        if eol < 0 or nxt < 0:
            raise PACSError(f"the multipart answer ends after {len(parts)} complete part(s) "
                            "without its closing delimiter (truncated)")
        part = body[eol + 2:nxt]
        if part.startswith(b"\r\n"):
            head, content = b"", part[2:]
        else:
            head, sep, content = part.partition(b"\r\n\r\n")
            if not sep:
                head, content = part, b""
        parts.append(MultipartPart(_headers(head), content))
        pos = nxt + 2 + len(delim)


_UIDS = ("SOPInstanceUID", "SeriesInstanceUID")


def _uids(content: bytes, i: int) -> tuple[str, str]:
    """Read the part's SOP Instance and Series UIDs with pydicom (what the light reader leaves)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True,
                             specific_tags=list(_UIDS))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise PACSError(f"part {i + 1} of the WADO-RS answer is not a DICOM Part 10 "
                        f"instance ({type(exc).__name__})") from exc
    sop, series = (str(ds.get(k, "") or "") for k in _UIDS)
    return sop, series


def instances_from_parts(parts: list[MultipartPart]) -> list[StudyInstance]:
    """Each part as a :class:`StudyInstance` (UIDs read from its header, bytes kept as sent).

    The UIDs of a common-case instance come from :func:`~vigil.dicom_adapter.light.light_uids`
    (no pydicom), of any other from pydicom.

    Raises
    ------
    PACSError
        When a part is not a DICOM Part 10 instance with SOP Instance and Series UIDs
        (the message says which part, by position).
    """
    out: list[StudyInstance] = []
    for i, part in enumerate(parts):
        kind, _ = _params(part.headers.get("content-type", "application/dicom"))
        if kind != "application/dicom":
            raise PACSError(f"part {i + 1} of the WADO-RS answer is {kind!r}, expected "
                            "application/dicom")
        sop, series = light_uids(part.content) or _uids(part.content, i)
        if not sop or not series:
            raise PACSError(f"part {i + 1} of the WADO-RS answer lacks SOPInstanceUID or "
                            "SeriesInstanceUID")
        out.append(StudyInstance(sop_instance_uid=sop, series_uid=series, data=part.content))
    return out
