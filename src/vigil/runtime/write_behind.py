"""Writes handed to one worker thread, in order, and waited for at the end of a page.

A sink that stores each study's result on the PACS (the DICOM SR, POST /instances)
spends a request per study waiting for the PACS. :class:`WriteBehind` lets the imaging
cycle go on with the next study (rendering its SR, the next page's decoding) while
the PACS stores the previous one: the sink :meth:`~WriteBehind.submit` s the bytes
and, before the page's record is committed, :meth:`~WriteBehind.drain` waits for every
write of the page and returns which studies failed. The write itself (and its client's
retries and backoff) is unchanged; only the thread it runs on is.

Crash safety is the page's, as before: nothing is recorded before the drain, so a
crash with writes in flight replays the page, and the writes are idempotent (a PACS
keeps the first copy of a SOP Instance UID).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

__all__ = ["WriteBehind"]


class WriteBehind:
    """One worker thread running ``write`` on submitted payloads, in submission order.

    Parameters
    ----------
    write : callable of bytes
        Sends one payload (e.g. ``OrthancClient.store``); raises on failure.
    name : str
        The worker thread's name (no identifier).
    """

    def __init__(self, write: Callable[[bytes], object], *, name: str) -> None:
        self.write = write
        self.name = name
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._failures: dict[str, BaseException] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WriteBehind(name={self.name!r})"

    def submit(self, key: str, data: bytes) -> None:
        """Queue ``data`` for writing; ``key`` names it in :meth:`drain`'s failures."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((key, data))

    def drain(self) -> dict[str, BaseException]:
        """Wait until every submitted write is done; return the failed ones' errors by key.

        The first failure of a key is kept; failures are forgotten once returned.
        """
        self._queue.join()
        with self._lock:
            failures, self._failures = self._failures, {}
        return failures

    def close(self) -> None:
        """Finish the queued writes, then stop the worker (their failures are dropped)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None
        with self._lock:
            self._failures = {}

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                key, data = item
                try:
                    self.write(data)
                except BaseException as exc:  # noqa: BLE001 - reported by drain
                    with self._lock:
                        self._failures.setdefault(key, exc)
            finally:
                self._queue.task_done()
