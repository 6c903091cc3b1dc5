"""Durable writes to local files: appends that are all or nothing, torn tails, atomic replaces.

Every file the runtime appends to (the NDJSON write-back, its quarantine file) goes
through :func:`append_durably`: the bytes are written with ``O_APPEND`` and synced
(``fsync``) before it returns, and a failed write (a full disk, an I/O error) is cut
back to the file's previous length before the error propagates, so the caller can
treat "returned" as "on disk" and "raised" as "nothing written". A process killed
in the middle of a write can still leave a *torn tail* (a last line without its
newline); :func:`split_torn_tail` finds it when the file is opened again, and the next
append starts on a new line, so a torn tail never runs into a good line.
:func:`replace_durably` rewrites a whole file (temporary file, ``fsync``,
``os.replace``, directory ``fsync``): a reader sees the old or the new content, never
a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["append_durably", "replace_durably", "split_torn_tail"]


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and sync it; on failure leave the file as it was.

    If the file does not end with a newline (a torn tail), a newline is written first.

    Parameters
    ----------
    path : Path
        Created (with its directory entry synced) when missing.
    data : bytes

    Raises
    ------
    OSError
        When the write or the sync fails (e.g. ``ENOSPC``); the bytes written before
        the failure are truncated away first.
    """
    path = Path(path)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.fstat(fd).st_size
        if before and os.pread(fd, 1, before - 1) != b"\n":
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError:
                pass  # split_torn_tail finds what is left when the file is opened again
            raise
    finally:
        os.close(fd)
    if created:
        _sync_dir(path.parent)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace the content of ``path`` atomically and durably.

    Raises
    ------
    OSError
        When the temporary file cannot be written; ``path`` is then unchanged.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def split_torn_tail(data: bytes) -> tuple[bytes, bytes]:
    r"""Split the content of a line file into its complete lines and a torn last line.

    >>> split_torn_tail(b'{"a": 1}\n{"b"')
    (b'{"a": 1}\n', b'{"b"')
    """
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]
