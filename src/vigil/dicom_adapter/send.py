"""Send a folder of DICOM files to a PACS (``vigil imaging send``): stored, already there, refused.

Every regular file below the folder is read; one that is not a DICOM Part 10 file (no
``DICM`` prefix at byte 128, PS3.10 §7.1: a ``labels.csv``, a README) is counted as
``not_dicom`` and not sent. Each DICOM file is stored with
:meth:`vigil.dicom_adapter.orthanc.OrthancClient.store_status`: ``stored`` (new),
``already_stored`` (the PACS keeps its first copy: sending twice is harmless) or
``refused`` with the PACS's reason (HTTP 4xx; counted, listed, the rest still sent).
An unreachable PACS or refused credentials stop the run (:class:`PACSError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vigil.core.errors import DataError, PACSError

__all__ = ["SendReport", "is_part10", "send_folder"]

_PREFIX_AT = 128


class _Store(Protocol):
    def store_status(self, data: bytes) -> str: ...


@dataclass
class SendReport:
    """Counts of one send; ``refused`` lists ``(path relative to the folder, reason)``."""

    stored: int = 0
    already_stored: int = 0
    not_dicom: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> int:
        """DICOM files tried."""
        return self.stored + self.already_stored + len(self.refused)

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready summary."""
        return {"files": self.files, "stored": self.stored,
                "already_stored": self.already_stored, "refused": len(self.refused),
                "not_dicom": self.not_dicom,
                "refusals": [{"file": f, "reason": r} for f, r in self.refused]}


def is_part10(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM Part 10 file (128-byte preamble + ``DICM``)."""
    return data[_PREFIX_AT:_PREFIX_AT + 4] == b"DICM"


def send_folder(client: _Store, folder: Path) -> SendReport:
    """Store every DICOM file below ``folder`` (sorted by path) and count the outcomes.

    Raises
    ------
    DataError
        When ``folder`` is not a directory, or holds no DICOM Part 10 file.
    PACSError
        When the PACS cannot be reached or refuses the credentials.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"expected a folder of DICOM files, got {str(folder)!r} "
                        f"({'a file' if folder.exists() else 'missing'})", source=str(folder))
    report = SendReport()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if not is_part10(data):
            report.not_dicom += 1
            continue
        try:
            status = client.store_status(data)
        except PACSError as exc:
            if exc.status is None or exc.status == 401 or exc.status >= 500:
                raise
            report.refused.append((str(path.relative_to(folder)), str(exc)))
            continue
        if status == "AlreadyStored":
            report.already_stored += 1
        else:
            report.stored += 1
    if report.files == 0:
        raise DataError(f"expected DICOM Part 10 files below {str(folder)!r}, found none "
                        f"({report.not_dicom} other file(s))", source=str(folder))
    return report
