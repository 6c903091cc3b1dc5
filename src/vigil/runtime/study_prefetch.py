"""Pages of a study source with their studies' instances, fetched one page ahead.

The imaging cycle (:mod:`vigil.runtime.imaging_cycle`) reads a source page by page:
poll (Orthanc's change feed and study lookups), fetch each study (WADO-RS), then decode,
score, write back and commit the page. Fetching is waiting on the PACS, the rest is the
runtime's own work; done one after the other, the PACS idles while the runtime works
and the runtime idles while the PACS answers. :class:`PrefetchedPages` overlaps them:
one worker thread polls the *next* page (from the current page's cursor, which is not
stored yet) and fetches its studies while the current page is processed. Socket I/O
releases the GIL and the PACS runs in its own process, so the two proceed together. (The
worker and the loop share the Orthanc client: an ``httpx.Client`` "can be shared between
threads", its documentation says; its connection pool is locked.)

What does not change (the cycle's contract):

- the worker only reads from the source; it never touches the state store or a
  sink, so a crash or a stop at any point leaves exactly the state the sequential
  cycle would (work fetched ahead and not committed is discarded; the next run polls
  from the stored cursor again);
- at most one page ahead: the worker polls page k+1 only once the cycle has taken
  page k (and said it wants more), and fetches a study only while the instances it
  holds (fetched, not yet taken) are under ``max_bytes``, so it holds at most that
  plus one study (always at least one study, whatever its size): a page of films or
  large studies does not pile up in memory;
- errors: a poll or fetch that fails in the worker (after the client's own retries
  and backoff, unchanged) is raised to the cycle at the point where the sequential
  cycle would have made that call: a failed poll when the cycle asks for that page,
  a failed fetch when it asks for that study;
- :meth:`PrefetchedPages.close` asks the worker to stop after its current request
  and waits for it, so no request outlives the run (the loop may close the PACS
  connection next).

:class:`SequentialPages` has the same interface without a thread (``imaging.prefetch
= false``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from vigil.runtime.study_contracts import StudyInstance, StudyPage, StudyRef, StudySource

__all__ = ["PageReader", "PrefetchedPages", "SequentialPages", "open_pages"]

DEFAULT_MAX_BYTES = 256 * 2**20
"""Fetched instance bytes held ahead of the cycle (``imaging.prefetch_mb``)."""


class PageReader(Protocol):
    """What the imaging cycle reads the source through (a context manager)."""

    def next_page(self, *, more: bool) -> StudyPage:
        """Return the next page; ``more``: whether the cycle may ask for the one after it."""
        ...

    def fetch(self, ref: StudyRef) -> list[StudyInstance]:
        """Return the instances of ``ref``, a study of the last page returned, in page order."""
        ...

    def close(self) -> None:
        """Discard what was fetched ahead; no request of this reader runs after it returns."""
        ...

    def __enter__(self) -> PageReader: ...

    def __exit__(self, *exc: object) -> None: ...


class SequentialPages:
    """Poll and fetch on the caller's thread, when asked (no prefetch).

    Parameters
    ----------
    source : StudySource
    cursor : str or None
        Where the first page starts.
    limit : int
        Studies per page.
    """

    def __init__(self, source: StudySource, cursor: str | None, *, limit: int) -> None:
        self.source, self.cursor, self.limit = source, cursor, limit

    def next_page(self, *, more: bool) -> StudyPage:
        """Poll the page after the current cursor."""
        page = self.source.poll(self.cursor, limit=self.limit)
        self.cursor = page.cursor
        return page

    def fetch(self, ref: StudyRef) -> list[StudyInstance]:
        """Fetch ``ref`` from the source."""
        return self.source.fetch(ref)

    def close(self) -> None:
        """Nothing is held."""

    def __enter__(self) -> SequentialPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, eq=False)
class _Fetched:
    ref: StudyRef
    instances: list[StudyInstance]
    size: int


@dataclass(frozen=True, eq=False)
class _Failed:
    error: BaseException


_Item = StudyPage | _Fetched | _Failed


class PrefetchedPages:
    """Poll and fetch in one worker thread, one page ahead of the caller (module notes).

    Parameters
    ----------
    source : StudySource
        Read from the worker thread only while this reader is open (the caller makes
        no other call to it meanwhile).
    cursor : str or None
        Where the first page starts (the stored cursor).
    limit : int
        Studies per page.
    max_bytes : int, optional
        The worker fetches the next study only while the instance bytes it holds
        (fetched, not yet taken) are below this (it may hold one study more).
    """

    def __init__(self, source: StudySource, cursor: str | None, *, limit: int,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.source, self.limit, self.max_bytes = source, limit, max_bytes
        self._start = cursor
        self._items: deque[_Item] = deque()
        self._held = 0
        self._granted = 0
        self._cancelled = False
        self._finished = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PrefetchedPages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_page(self, *, more: bool) -> StudyPage:
        """Return the next page (the first call starts the worker).

        ``more``: the caller may ask for the page after this one, so the worker polls
        it as soon as this page's studies are fetched. The page's studies are then
        taken, in order, with :meth:`fetch`.

        Raises
        ------
        Exception
            What the source raised polling this page.
        """
        if self._thread is None:
            self._granted = 1
            self._thread = threading.Thread(target=self._work, name="vigil-pacs-prefetch",
                                            daemon=True)
            self._thread.start()
        item = self._take()
        if not isinstance(item, StudyPage):
            raise RuntimeError("the prefetch worker returned a study where a page was expected")
        if more and item.studies and not item.done:
            with self._cond:
                self._granted += 1
                self._cond.notify_all()
        return item

    def fetch(self, ref: StudyRef) -> list[StudyInstance]:
        """Return the instances of ``ref``, the next study of the current page.

        Raises
        ------
        Exception
            What the source raised fetching this study.
        """
        item = self._take()
        if not isinstance(item, _Fetched) or item.ref is not ref:
            raise RuntimeError("the prefetch worker fetched studies out of the page's order")
        return item.instances

    def close(self) -> None:
        """Stop the worker after its current request, wait for it, drop what it fetched."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._items.clear()
        self._held = 0

    def _take(self) -> _Item:
        with self._cond:
            while not self._items:
                if self._finished:
                    raise RuntimeError("the prefetch worker ended before the page's studies")
                self._cond.wait()
            item = self._items.popleft()
            if isinstance(item, _Fetched):
                self._held -= item.size
                self._cond.notify_all()
        if isinstance(item, _Failed):
            raise item.error
        return item

    def _put(self, item: _Item) -> bool:
        """Queue ``item`` for the caller; False if cancelled."""
        with self._cond:
            if self._cancelled:
                return False
            self._items.append(item)
            self._held += item.size if isinstance(item, _Fetched) else 0
            self._cond.notify_all()
            return True

    def _room(self) -> bool:
        """Wait until the bytes held are under budget (or none are held); False if cancelled."""
        with self._cond:
            while not self._cancelled and self._held and self._held >= self.max_bytes:
                self._cond.wait()
            return not self._cancelled

    def _wait_granted(self) -> bool:
        with self._cond:
            while not self._cancelled and self._granted == 0:
                self._cond.wait()
            if self._cancelled:
                return False
            self._granted -= 1
            return True

    def _work(self) -> None:
        cursor = self._start
        try:
            while self._wait_granted():
                page = self.source.poll(cursor, limit=self.limit)
                if not self._put(page):
                    return
                for ref in page.studies:
                    if not self._room():
                        return
                    instances = self.source.fetch(ref)
                    size = sum(len(i.data) for i in instances) or 1
                    if not self._put(_Fetched(ref, instances, size)):
                        return
                if page.done or not page.studies:
                    return
                cursor = page.cursor
        except BaseException as exc:  # noqa: BLE001 - handed to the cycle, raised there
            self._put(_Failed(exc))
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()


def open_pages(source: StudySource, cursor: str | None, *, limit: int, prefetch: bool,
               max_bytes: int = DEFAULT_MAX_BYTES) -> PageReader:
    """Return the reader the imaging cycle uses: prefetching (default) or sequential."""
    if prefetch:
        return PrefetchedPages(source, cursor, limit=limit, max_bytes=max_bytes)
    return SequentialPages(source, cursor, limit=limit)

