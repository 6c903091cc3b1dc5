"""Keep the service's resident memory near what it uses (glibc's allocator).

A cycle allocates and frees a lot: a first fetch decodes every page of 72 hours
of history, keeps a few objects of each (ids, values) and drops the rest. glibc's
``malloc`` keeps freed memory for reuse instead of returning it to the system, and
gives each thread that allocates its own arena (up to eight per core), so the
REST source's fetch threads leave several partly used heaps behind. Two standard
glibc controls bound that, both no-ops where glibc is not the C library:

- :func:`limit_arenas` caps the arenas (``mallopt(M_ARENA_MAX, 2)``, what the
  ``MALLOC_ARENA_MAX=2`` environment variable does), called before the service
  starts its threads;
- :func:`release` returns the free memory at the top of each heap to the system
  (``malloc_trim(0)``), called after every cycle, so the next cycle starts from
  what the service holds (the observation window, the models), not from the last
  cycle's peak.

Measured on the 1,000-patient benchmark against the FHIR test server
(``bench/cycle.py``; docs/runtime.md, "Benchmark").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

__all__ = ["ARENAS", "limit_arenas", "release"]

ARENAS = 2
"""Arenas :func:`limit_arenas` allows (the main one and one shared by the threads)."""
_M_ARENA_MAX = -8  # from glibc's malloc.h


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl (Alpine) has neither function: nothing to tune there
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; returns whether it did (False off glibc).

    Call it before threads start: an arena already made is kept.
    """
    if arenas < 1:
        raise ValueError(f"expected at least 1 arena, got {arenas}")
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release() -> bool:
    """Return free heap memory to the system; returns whether any was (False off glibc)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
