"""Handing a page's study scores to the imaging sinks, and reading back which writes failed.

A :class:`~vigil.runtime.study_contracts.StudySink` has ``write``; it may also have
``begin_page`` and ``end_page``, which the imaging cycle calls around each page
(:mod:`vigil.runtime.imaging_cycle`):

- the FHIR NDJSON write-back holds a page's lines and makes them durable in
  ``end_page`` (one append per file); if that raises, every study of the page failed;
- the DICOM SR write-back may store in the background and wait for the page's stores
  in ``end_page``, which returns ``{StudyInstanceUID: error type}`` for the ones that
  failed: only those studies failed.

A failed write is one line naming the sink and the error type (never the message: a
library's message may quote a UID); the cycle records the study ``retry``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vigil.runtime.study_contracts import StudyScore, StudySink

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from vigil.dicom_adapter.light_dataset import HeaderView

__all__ = ["begin_page", "end_page", "write_all"]

log = logging.getLogger("vigil.runtime.imaging_cycle")


def begin_page(sinks: Sequence[StudySink]) -> None:
    """Call every sink's ``begin_page`` (those that have one)."""
    for sink in sinks:
        begin = getattr(sink, "begin_page", None)
        if begin is not None:
            begin()


def write_all(sinks: Sequence[StudySink], score: StudyScore,
              sources: Sequence[Dataset | HeaderView]) -> str | None:
    """Hand a score to every sink; the first failure (one line, no identifier) or None."""
    if not score.sop_instance_uids:
        return None  # nothing scored: no report to write
    failed = None
    for sink in sinks:
        try:
            sink.write(score, sources)
        except Exception as exc:  # noqa: BLE001 - a sink failure marks the study for retry
            failed = failed or f"sink {sink.name!r} failed: {type(exc).__name__}"
            log.warning("imaging sink %r failed (%s); the study is retried at the next poll",
                        sink.name, type(exc).__name__)
    return failed


def end_page(sinks: Sequence[StudySink]) -> tuple[str | None, dict[str, str]]:
    """Call every sink's ``end_page``; what failed for the whole page, and for single studies.

    Returns
    -------
    every : str or None
        The first failure of a sink whose ``end_page`` raised (the page's studies all
        failed), or None.
    some : dict of str to str
        The failure of each study a sink's ``end_page`` named, by StudyInstanceUID.
    """
    every: str | None = None
    some: dict[str, str] = {}
    for sink in sinks:
        end = getattr(sink, "end_page", None)
        if end is None:
            continue
        try:
            failed = end() or {}
        except Exception as exc:  # noqa: BLE001 - as a failed write: retried
            every = every or f"sink {sink.name!r} failed: {type(exc).__name__}"
            log.warning("imaging sink %r failed at the end of a page (%s); the page's "
                        "studies are retried at the next poll", sink.name, type(exc).__name__)
            continue
        for uid, kind in failed.items():
            some.setdefault(uid, f"sink {sink.name!r} failed: {kind}")
        if failed:
            log.warning("imaging sink %r failed for %d studies of a page (%s); they are "
                        "retried at the next poll", sink.name, len(failed),
                        ", ".join(sorted(set(failed.values()))))
    return every, some
