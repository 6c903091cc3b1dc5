"""Returning the heap to the system between cycles (glibc's malloc controls)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vigil.runtime import heap

STATUS = Path("/proc/self/status")


def _rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", STATUS.read_text()).group(1)) / 1024


def test_rt_heap_rejects_no_arena() -> None:
    with pytest.raises(ValueError, match="at least 1 arena, got 0"):
        heap.limit_arenas(0)


@pytest.mark.skipif(heap._glibc() is None or not STATUS.is_file(), reason="needs glibc and /proc")
def test_rt_heap_release_returns_freed_memory_to_the_system() -> None:
    # 100 MB of 2 kB buffers (from malloc's heap, not mmap), then one kept above them: freeing
    # the buffers leaves the heap's pages resident until malloc_trim gives them back.
    buffers = [bytearray(2000) for _ in range(50_000)]
    for b in buffers:
        b[::512] = b"x" * len(b[::512])  # touch every page
    top = bytearray(2000)
    del buffers
    held = _rss_mb()
    assert heap.release() is True
    freed = held - _rss_mb()
    assert freed > 50, f"expected release() to return > 50 MB, returned {freed:.0f} MB"
    assert heap.limit_arenas() is True and len(top) == 2000
