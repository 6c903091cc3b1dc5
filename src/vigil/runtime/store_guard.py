"""What guards a state store at start: one writer, a sound file, one-line errors.

- :class:`WriterLock`: an exclusive ``flock`` on ``<store>.cycles.lock``, taken by
  every process that runs cycles on the store (``vigil serve``, ``vigil replay --db``),
  or on ``<store>.models.lock``, taken by ``vigil model install`` and ``promote``. The
  operating system releases it when the process ends, however it ends (``kill -9``
  included), so it never goes stale the way a PID file does; the lock file's
  presence means nothing. A second runner (or a second install) on the same store
  refuses to start. The two locks are apart on purpose: a model is installed and
  promoted while the service runs (it loads the new one at its next cycle), each
  change being one SQLite transaction.
- :func:`check_integrity`: ``PRAGMA quick_check`` when the store opens. It reads
  every page and checks the b-trees and their records (``integrity_check`` also
  matches every index against its table, which grows as N log N on a large store;
  ``quick_check`` is linear and catches the torn or overwritten pages that matter here).
- :func:`store_errors`: SQLite and file-system errors while opening become one
  :class:`~vigil.core.errors.ConfigError` naming the file and what to do.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vigil.core.errors import ConfigError

__all__ = ["LOCKS", "WriterLock", "check_integrity", "store_errors"]

LOCKS = {"cycles": "serve or replay", "models": "model install or promote"}
"""The writer locks of a store, and who takes each."""


class WriterLock:
    """An exclusive lock on a store file, held until :meth:`release` or the process ends.

    Parameters
    ----------
    path : str
        The store's database file; the lock is on ``<path>.<kind>.lock`` beside it.
    kind : {"cycles", "models"}
        Which of :data:`LOCKS`.

    Raises
    ------
    ConfigError
        If another process holds the lock.
    """

    def __init__(self, path: str, *, kind: str) -> None:
        if kind not in LOCKS:
            raise ValueError(f"expected a lock kind in {sorted(LOCKS)}, got {kind!r}")
        self.path = Path(f"{path}.{kind}.lock")
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"the state store {path} is in use by another vigil process ({LOCKS[kind]}); "
                "wait for it or stop it first, or point store.url at another database",
                key="store.url",
            ) from None

    def __repr__(self) -> str:
        return f"WriterLock(path={str(self.path)!r}, held={self._fd is not None})"

    def release(self) -> None:
        """Release the lock (closing its descriptor); safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def check_integrity(conn: sqlite3.Connection, path: str) -> None:
    """Run ``PRAGMA quick_check``; raise if the database is damaged.

    Raises
    ------
    ConfigError
        Quoting SQLite's first finding.
    """
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        raise ConfigError(
            f"the state store {path} is damaged (quick_check: {rows[0][:200]}; "
            f"{len(rows)} finding(s)); restore it from a backup or point store.url at a new "
            "file (the runtime refetches from the FHIR server)",
            key="store.url",
        )


@contextmanager
def store_errors(path: str) -> Iterator[None]:
    """Turn SQLite and OS errors raised while opening ``path`` into one ConfigError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise ConfigError(
            f"cannot use the state store {path}: {exc} (expected a readable and writable "
            "SQLite file from vigil); check its permissions and disk, restore it from a "
            "backup, or point store.url at a new file",
            key="store.url",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot use the state store {path}: {exc.strerror or exc}; check the path and "
            "its permissions, or point store.url elsewhere",
            key="store.url",
        ) from exc
