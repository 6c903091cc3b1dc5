"""A :class:`~vigil.runtime.study_contracts.StudySource` over a drop folder of DICOM files.

Every ``*.dcm`` below the folder is one instance; files are grouped into studies by
StudyInstanceUID. A file *arrives* at the later of its modification and status-change
times (``mv`` into the folder changes the latter, so a moved old file is new here).
The cursor is the ``(arrival ns, relative path)`` of the last file a page covered: a
durable, totally ordered watermark stored by the runtime. Only files that arrived at
least ``stable_seconds`` ago are reported, so a study still being copied is not scored
half-way; when more of its files arrive later it is reported again (the runtime then
scores it again, :mod:`vigil.runtime.imaging_cycle`).

A file that cannot be read as DICOM (or lacks StudyInstanceUID) is skipped by the
source, counted in :attr:`FolderStudySource.quarantined` with its reason, and left where
it is; the cursor moves past it. Nothing about a file (its name may embed a patient
identifier) is logged.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vigil.core.errors import DataError
from vigil.runtime.study_contracts import StudyInstance, StudyPage, StudyRef

__all__ = ["FolderStudySource", "parse_cursor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _File:
    arrived: int
    rel: str
    study_uid: str
    sop_uid: str
    series_uid: str
    patient_key: str
    modality: str
    accession: str | None


def parse_cursor(cursor: str | None) -> tuple[int, str]:
    """``(arrival ns, relative path)`` of a stored cursor (None: before every file).

    Raises
    ------
    DataError
        If the cursor is not ``NANOSECONDS:PATH``.
    """
    if cursor is None:
        return (-1, "")
    head, sep, rel = cursor.partition(":")
    if not sep or not head.lstrip("-").isdigit():
        raise DataError(f"expected a folder cursor NANOSECONDS:PATH, got {len(cursor)} "
                        "characters of something else; reset the imaging cursor")
    return (int(head), rel)


class FolderStudySource:
    """Studies of the DICOM files dropped below ``folder``.

    Parameters
    ----------
    folder : Path
        The drop folder (must exist).
    stable_seconds : float, optional
        A file is reported once it arrived at least this long ago.
    clock : callable, optional
        Seconds since the epoch (tests pass their own).
    """

    name = "folder"

    def __init__(self, folder: Path, *, stable_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"expected imaging.folder to be a directory, found "
                            f"{'a file' if self.folder.exists() else 'nothing'} there",
                            source=str(self.folder))
        self.stable_seconds = float(stable_seconds)
        self._clock = clock
        self._seen: dict[str, tuple[int, _File | None]] = {}
        self._by_study: dict[str, list[_File]] = {}
        self.quarantined: Counter[str] = Counter()
        """Reason → files the source could not read (skipped, left in place)."""

    def _scan(self) -> list[_File]:
        """Every readable file, sorted by (arrival, path); headers read once per version."""
        if not self.folder.is_dir():
            raise DataError("expected the imaging drop folder to exist, it is gone (unmounted "
                            "or removed)", source=str(self.folder))
        out: list[_File] = []
        present: set[str] = set()
        for path in self.folder.rglob("*.dcm"):
            try:
                st = path.stat()
            except OSError:  # removed while scanning
                continue
            rel = path.relative_to(self.folder).as_posix()
            arrived = max(st.st_mtime_ns, st.st_ctime_ns)
            present.add(rel)
            known = self._seen.get(rel)
            if known is None or known[0] != arrived:
                known = (arrived, self._header(path, rel, arrived))
                self._seen[rel] = known
            if known[1] is not None:
                out.append(known[1])
        for gone in set(self._seen) - present:
            del self._seen[gone]
        out.sort(key=lambda f: (f.arrived, f.rel))
        self._by_study = {}
        for f in out:
            self._by_study.setdefault(f.study_uid, []).append(f)
        return out

    def _header(self, path: Path, rel: str, arrived: int) -> _File | None:
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any reader failure is a quarantine reason
            reason = f"expected a DICOM Part 10 file, could not read it ({type(exc).__name__})"
            self.quarantined[reason] += 1
            return None
        study = str(ds.get("StudyInstanceUID", "") or "")
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if not study or not sop:
            self.quarantined["expected StudyInstanceUID and SOPInstanceUID, one is missing"] += 1
            return None
        accession = str(ds.get("AccessionNumber", "") or "") or None
        return _File(arrived, rel, study, sop, str(ds.get("SeriesInstanceUID", "") or ""),
                     str(ds.get("PatientID", "") or ""), str(ds.get("Modality", "") or ""),
                     accession)

    def poll(self, cursor: str | None, *, limit: int) -> StudyPage:
        """Studies with files that arrived after ``cursor`` and are stable, at most ``limit``."""
        after = parse_cursor(cursor)
        cutoff = int((self._clock() - self.stable_seconds) * 1e9)
        files = self._scan()
        new = [f for f in files if (f.arrived, f.rel) > after and f.arrived <= cutoff]
        chosen: dict[str, None] = {}
        last = after
        done = True
        for f in new:
            if f.study_uid not in chosen and len(chosen) >= limit:
                done = False
                break
            chosen.setdefault(f.study_uid)
            last = (f.arrived, f.rel)
        studies = tuple(self._ref(uid, self._by_study[uid]) for uid in chosen)
        return StudyPage(studies=studies, cursor=f"{last[0]}:{last[1]}" if last != (-1, "")
                         else cursor, done=done)

    @staticmethod
    def _ref(study_uid: str, files: list[_File]) -> StudyRef:
        first = files[0]
        return StudyRef(study_uid=study_uid, source_id=study_uid, patient_key=first.patient_key,
                        modalities=tuple(sorted({f.modality for f in files if f.modality})),
                        accession=first.accession)

    def fetch(self, study: StudyRef) -> list[StudyInstance]:
        """Return the bytes of every file of ``study`` as of the last scan (stable or not yet).

        A study not seen by the last :meth:`poll` (a retry after a restart) rescans.
        """
        if study.study_uid not in self._by_study:
            self._scan()
        files = self._by_study.get(study.study_uid, [])
        out = []
        for f in files:
            try:
                data = (self.folder / f.rel).read_bytes()
            except OSError:  # removed since the scan
                continue
            out.append(StudyInstance(sop_instance_uid=f.sop_uid, series_uid=f.series_uid,
                                     data=data))
        return out
