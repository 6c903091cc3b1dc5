"""A site's boosting on its own disk between tree levels: binned rows and running state.

Flower starts a fresh ClientApp process for every message, so without a cache
each tree level re-reads the prepared site (``site.npz``, every feature row as
float32), bins it again with the shared edges, and carries the running state
(each row's score, node, gradient and hessian) through the SuperNode's
``context.state``, serialized twice per message. :class:`TreeCache` keeps both
in the site's directory (``SITE_DIR/tree-cache/``, never sent):

- the binned training rows, feature-major (``<key>.columns.npy``, uint8, shape
  ``(n_features, n_rows)``, memory-mapped when read) and their labels
  (``<key>.y.npy``), where ``key`` is a SHA-256 of the bin edges and of the
  prepared site's identity (size and modification time of ``site.npz``, and
  ``site.json``): other edges or other data give another key, so a stale
  binning is never read, it is recomputed;
- the running state of the run after ``n`` levels answered
  (``state-<run>-<n>.npz``, :meth:`BoostingSite.state` plus a stamp: the key,
  a nonce drawn at ``begin`` and ``n``). The run's ``context.state`` holds the
  same stamp; a level reads only the file whose stamp equals it, and refuses
  (``ValueError``, the coordinator then leaves the site out) if there is none.
  As with the state kept in ``context.state``, a ClientApp that dies after
  writing ``n + 1`` but before Flower saved the context leaves ``n`` in the
  context, and the retried level reads file ``n``, which is still there (the
  two newest are kept).

Every file is written whole to a temporary name and renamed
(:func:`vigil.core.files.replace_durably`), so a crash leaves either the old or
the new file. Only a plain :class:`BoostingSite` is cached; a site whose
boosting carries more state (DP noise, :mod:`vigil.federation.tree_privacy`)
keeps the uncached path.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.files import replace_durably
from vigil.federation.boosting import BoostingSite

__all__ = ["CACHE_DIR", "Stamp", "TreeCache", "data_key"]

CACHE_DIR = "tree-cache"
"""The cache's directory inside the prepared site's directory."""
_KEEP = 2  # the newest state files kept per run (see the module docstring)


def data_key(site_dir: str | Path, edges: Sequence[NDArray[np.float32]]) -> str:
    """Return the key of a binning: SHA-256 of the bin edges and the prepared site's identity.

    Parameters
    ----------
    site_dir : str or Path
        The prepared site (``site.npz``, ``site.json``;
        :mod:`vigil.federation.flower.sitedata`).
    edges : sequence of ndarray of float32
        Per feature, the shared bin edges.

    Returns
    -------
    str
        64 hex digits.
    """
    from vigil.federation.flower.sitedata import SITE_FILE, SITE_INFO

    digest = hashlib.sha256()
    stat = (Path(site_dir) / SITE_FILE).stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns};".encode())
    digest.update((Path(site_dir) / SITE_INFO).read_bytes())
    for e in edges:
        a = np.ascontiguousarray(e, dtype=np.float32)
        digest.update(f";{a.size};".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Stamp:
    """Which state file belongs to the run's current step.

    Attributes
    ----------
    key : str
        The binning's :func:`data_key`.
    nonce : str
        Drawn at ``begin``: a state file of an earlier ``begin`` never matches.
    answered : int
        Levels answered since ``begin``.
    """

    key: str
    nonce: str
    answered: int

    def to_dict(self) -> dict[str, str | int]:
        """Return the stamp as ``context.state`` config values."""
        return {"key": self.key, "nonce": self.nonce, "answered": self.answered}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Stamp:
        """Read a stamp back from :meth:`to_dict`'s values."""
        return cls(str(values["key"]), str(values["nonce"]), int(values["answered"]))


def _npy(array: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class TreeCache:
    """A site's tree cache for one run (see the module docstring).

    Parameters
    ----------
    site_dir : str or Path
        The prepared site's directory.
    run : str
        Flower's run id.
    """

    def __init__(self, site_dir: str | Path, run: str) -> None:
        self.site_dir = Path(site_dir)
        self.run = "".join(c for c in str(run) if c.isalnum()) or "run"
        self.dir = self.site_dir / CACHE_DIR

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.columns.npy", self.dir / f"{key}.y.npy"

    def store_binning(self, key: str, binned: NDArray[np.uint8], y: NDArray[np.floating]) -> None:
        """Write the binned training rows (shape (n_rows, n_features)) and labels under ``key``.

        Other binnings in the cache are removed (one per site at a time).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        columns_path, y_path = self._paths(key)
        replace_durably(y_path, _npy(np.ascontiguousarray(y, dtype=np.float64)))
        replace_durably(columns_path, _npy(np.ascontiguousarray(np.asarray(binned).T)))
        for old in self.dir.glob("*.npy"):
            if not old.name.startswith(key):
                old.unlink(missing_ok=True)

    def binning(self, key: str) -> tuple[NDArray[np.uint8], NDArray[np.float64]] | None:
        """Return the cached binned rows (shape (n_rows, n_features), mmap) and labels.

        Returns
        -------
        tuple or None
            None when nothing is cached under ``key`` (then bin again).
        """
        columns_path, y_path = self._paths(key)
        try:
            columns = np.load(columns_path, mmap_mode="r", allow_pickle=False)
            y = np.load(y_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if columns.ndim != 2 or y.shape != (columns.shape[1],):
            return None
        return columns.T, y

    def boosting(self, name: str, key: str) -> BoostingSite | None:
        """Return a :class:`BoostingSite` on the cached binning (unit row weights), or None."""
        cached = self.binning(key)
        if cached is None:
            return None
        binned, y = cached
        return BoostingSite(name, binned, y, np.ones_like(y))

    def _state_path(self, answered: int) -> Path:
        return self.dir / f"state-{self.run}-{answered}.npz"

    def begin(self, key: str) -> Stamp:
        """Start the run's state afresh: a new nonce, no level answered, older files removed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob(f"state-{self.run}-*.npz"):
            old.unlink(missing_ok=True)
        return Stamp(key, secrets.token_hex(8), 0)

    def save_state(self, stamp: Stamp, state: Mapping[str, NDArray[Any]]) -> None:
        """Write the running state after ``stamp.answered`` levels; keep the two newest."""
        buffer = io.BytesIO()
        tag = np.frombuffer(f"{stamp.key}:{stamp.nonce}:{stamp.answered}".encode(), dtype=np.uint8)
        np.savez(buffer, **{f"s.{k}": np.asarray(v) for k, v in state.items()}, stamp=tag)
        replace_durably(self._state_path(stamp.answered), buffer.getvalue())
        for old in self.dir.glob(f"state-{self.run}-*.npz"):
            n = old.name[len(f"state-{self.run}-"):-len(".npz")]
            if n.isdigit() and int(n) <= stamp.answered - _KEEP:
                old.unlink(missing_ok=True)

    def load_state(self, stamp: Stamp) -> dict[str, NDArray[Any]]:
        """Read the running state ``stamp`` names.

        Raises
        ------
        ValueError
            If there is no such file, or its stamp is not ``stamp`` (another
            ``begin``, other data or edges).
        """
        path = self._state_path(stamp.answered)
        expected = f"{stamp.key}:{stamp.nonce}:{stamp.answered}"
        try:
            with np.load(path, allow_pickle=False) as z:
                found = bytes(z["stamp"]).decode()
                arrays = {k[2:]: z[k] for k in z.files if k.startswith("s.")}
        except (OSError, ValueError, KeyError):
            raise ValueError(f"expected the site's tree state after {stamp.answered} levels in "
                             f"{CACHE_DIR}/, found none") from None
        if found != expected:
            raise ValueError(f"expected the site's tree state after {stamp.answered} levels of "
                             "this run, found another run's or other data's")
        return arrays

    def clear(self) -> None:
        """Remove the run's state files (its binning stays for the next run on the same edges)."""
        for old in self.dir.glob(f"state-{self.run}-*.npz"):
            old.unlink(missing_ok=True)

    def size(self) -> int:
        """Bytes the cache holds on disk."""
        return sum(p.stat().st_size for p in self.dir.glob("*") if p.is_file()) if (
            self.dir.exists()) else 0

