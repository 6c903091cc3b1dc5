"""Helpers of the tests that need a real PACS: a private Orthanc, studies to send, feed walks.

The ``orthanc`` fixture (``tests/conftest.py``, module scope) starts
:class:`vigil.dicom_adapter.orthanc_local.LocalOrthanc` (its own network namespace,
storage and generated credentials; ``StableAge`` 1 s), skips with the reason when
Orthanc is not installed (``make setup`` installs it), and on teardown stops it and
asserts that no process of it is left. Imported as ``from orthanc_support import ...``
from ``tests/dicom_adapter``; other test folders add this folder to ``sys.path``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigil.dicom_adapter.orthanc import OrthancClient, OrthancSource
from vigil.dicom_adapter.orthanc_local import LocalOrthanc, local_orthanc_missing
from vigil.runtime.study_contracts import StudyRef

__all__ = ["alive", "client_for", "private_orthanc", "source_for", "walk", "walk_until",
           "write_studies"]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.contextmanager
def private_orthanc(workdir: Path, *, stable_age: int = 1) -> Iterator[LocalOrthanc]:
    """A private Orthanc for a test or module: skip if not installed; no process left after."""
    missing = local_orthanc_missing()
    if missing:
        pytest.skip(missing)
    server = LocalOrthanc(workdir, stable_age=stable_age).start()
    seen: set[int] = set(server.pids)
    try:
        yield server
    finally:
        seen.update(server.pids)
        server.stop()
        left = sorted(p for p in seen if alive(p))
        assert not left, f"the private Orthanc left processes behind: {left}"


def client_for(server: LocalOrthanc, **kw: object) -> OrthancClient:
    """A client of ``server`` with its credentials (``kw`` overrides, e.g. ``password``)."""
    args: dict[str, object] = {"username": server.username, "password": server.password,
                               "timeout": 10.0}
    args.update(kw)
    return OrthancClient(server.url, **args)  # type: ignore[arg-type]


def source_for(server: LocalOrthanc) -> OrthancSource:
    """An :class:`OrthancSource` for CR / DX studies on ``server``."""
    return OrthancSource(client_for(server), modalities=("CR", "DX"))


def walk(source: OrthancSource, cursor: str | None, *, limit: int) -> tuple[list[StudyRef], str]:
    """Poll page by page until the source says done; the studies and the final cursor."""
    out: list[StudyRef] = []
    while True:
        page = source.poll(cursor, limit=limit)
        assert len(page.studies) <= limit
        out.extend(page.studies)
        cursor = page.cursor
        if page.done:
            assert cursor is not None
            return out, cursor


def walk_until(source: OrthancSource, cursor: str | None, n: int, *, limit: int = 5,
               timeout: float = 20.0) -> tuple[list[StudyRef], str]:
    """Walk repeatedly (studies turn stable after StableAge) until ``n`` studies came."""
    out: list[StudyRef] = []
    deadline = time.monotonic() + timeout
    while True:
        got, cursor = walk(source, cursor, limit=limit)
        out.extend(got)
        if len(out) >= n or time.monotonic() > deadline:
            return out, cursor
        time.sleep(0.3)


def write_studies(folder: Path, n: int, *, tag: str) -> list[Path]:
    """``n`` one-image CR studies (the bundled sample's test images through the scanner sites).

    ``tag`` makes the UIDs (a different tag, different studies); every site's storage
    (8-bit, 12-bit RLE, 16-bit and 12-bit JPEG-LS) comes up once ``n`` >= 8 or so.
    """
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.sites import write_sites

    images = load_medmnist("sample", "test")
    write_sites(images.images[:n], images.labels[:n], folder, split=tag)
    return sorted(folder.rglob("*.dcm"))
