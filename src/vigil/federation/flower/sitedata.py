"""A hospital's prepared site: its feature rows built once, kept beside its SuperNode.

Flower starts a fresh ClientApp process for every message. Building the
features of a hospital's table takes seconds to minutes, so ``vigil federation
site`` builds the :class:`~vigil.federation.site.Site` once
(:meth:`Site.from_table`) and stores its arrays in ``SITE_DIR/site.npz``; each
ClientApp process reads them back with :func:`load_site`. The file holds the
site's own rows and never leaves the site.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vigil.core.errors import ConfigError, DataError
from vigil.core.files import replace_durably
from vigil.federation.site import Site, SiteData

__all__ = ["SITE_DIR_KEY", "SITE_FILE", "SITE_INFO", "load_site", "prepare_site", "site_name",
           "store_site"]

SITE_DIR_KEY = "site-dir"
"""The SuperNode's ``--node-config`` key naming the prepared site's directory."""
SITE_FILE = "site.npz"
SITE_INFO = "site.json"
_PARTS = ("train", "valid")


def prepare_site(
    name: str, data: str | Path, site_dir: str | Path, *, scheme: str | None = None
) -> Path:
    """Build a site from a PhysioNet parquet table and store it in ``site_dir``.

    Parameters
    ----------
    name : str
        The site's name in the federation.
    data : str or Path
        The hospital's table (``load_physionet``); its *test* patients are
        left out, as by :meth:`Site.from_table`.
    site_dir : str or Path
    scheme : str or None, optional
        Keep only the patients that :func:`vigil.data.partition` with this
        scheme gives to site ``name`` (demos: one table split into hospitals).

    Returns
    -------
    Path
        The written ``site.npz``.

    Raises
    ------
    ConfigError
        If ``scheme`` has no site called ``name``.
    """
    from vigil.data import load_physionet, partition  # pandas: not for a ClientApp

    table = load_physionet(data)
    if scheme is not None:
        parts = partition(table, scheme)
        if name not in parts:
            raise ConfigError(f"--partition {scheme} has sites {sorted(parts)}, not {name!r}",
                              key="name")
        table = table.select(parts[name])
    site = Site.from_table(name, table)
    out = Path(site_dir)
    arrays: dict[str, Any] = {"histograms": site.histograms, "missing": site.missing}
    for part in _PARTS:
        rows: SiteData = getattr(site, part)
        arrays |= {f"{part}_X": rows.X, f"{part}_y": rows.y, f"{part}_starts": rows.starts}
    info = {"name": name, "prepared": time.time(), "train_rows": site.train.n_rows,
            "valid_rows": site.valid.n_rows}
    return store_site(out, arrays, info)


def store_site(site_dir: Path, arrays: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write a prepared site's ``site.npz`` and then its ``site.json``, each atomically.

    Parameters
    ----------
    site_dir : Path
        Created if missing.
    arrays : dict of str to ndarray
    info : dict
        JSON-ready; ``name`` is the site's name (:func:`site_name`).

    Returns
    -------
    Path
        The written ``site.npz``.
    """
    site_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    replace_durably(site_dir / SITE_FILE, buffer.getvalue())
    replace_durably(site_dir / SITE_INFO, (json.dumps(info, indent=1) + "\n").encode())
    return site_dir / SITE_FILE


def site_name(site_dir: str | Path) -> str:
    """Return the name a prepared site was given.

    Raises
    ------
    ConfigError
        If ``site_dir`` holds no prepared site.
    """
    path = Path(site_dir) / SITE_INFO
    try:
        return str(json.loads(path.read_text())["name"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"expected a prepared site in {site_dir} ({SITE_INFO}); run "
            "`vigil federation site --data P --name NAME` there first",
            key="site_dir",
        ) from None


def load_site(site_dir: str | Path, **options: Any) -> Site:
    """Read a prepared site back.

    Parameters
    ----------
    site_dir : str or Path
    **options
        :class:`Site` fields ``model``, ``keep_norm_local``, ``dp``.

    Returns
    -------
    Site

    Raises
    ------
    ConfigError
        If ``site_dir`` holds no prepared site.
    DataError
        If its arrays are incomplete.
    """
    name = site_name(site_dir)
    path = Path(site_dir) / SITE_FILE
    try:
        with np.load(path) as z:
            parts = {
                p: SiteData(X=z[f"{p}_X"], y=z[f"{p}_y"], starts=z[f"{p}_starts"]) for p in _PARTS
            }
            histograms, missing = z["histograms"], z["missing"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"expected the arrays of a prepared site: {exc}; prepare it again",
                        source=str(path)) from None
    return Site(name, parts["train"], parts["valid"], histograms, missing, **options)
