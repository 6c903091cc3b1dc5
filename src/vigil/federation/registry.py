"""The coordinator's registry of released model versions, and a site's pull from it.

A registry is a directory (served as static files, e.g. over HTTPS, for the
sites to pull from)::

    REGISTRY/index.json      every release, oldest first (see :class:`Release`)
    REGISTRY/VERSION/        the model package of that version, unchanged

Each release records the package's manifest hash, its validation metrics, the
sites and rows it was trained on, and its difference from the previous
release: metric and threshold changes, sites added or removed, and how far
the weights moved (relative L2 distance of the ONNX initializers, when the
architecture is the same). The registry never edits a package: the signature
made at export covers it as it was released.

:func:`fetch_release` is what a site runs (no torch, no onnx): it reads the
index from a directory or an ``http(s)://`` URL, copies the chosen version's
files into a local directory and verifies every hash and, given the
coordinator's public key, the signature, before anything is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.package import (
    MANIFEST,
    SIGNATURE,
    ModelPackage,
    check_file_name,
    file_sha256,
    read_package,
)
from vigil.federation.release_privacy import cumulative_privacy, run_privacy

__all__ = [
    "INDEX",
    "REGISTRY_FORMAT",
    "Registry",
    "Release",
    "fetch_release",
    "next_version",
    "read_index",
]

INDEX = "index.json"
REGISTRY_FORMAT = "vigil-registry/1"
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_METRICS = ("auroc", "utility", "loss", "threshold", "n_rows")


@dataclass(frozen=True)
class Release:
    """One released version.

    Attributes
    ----------
    name, version : str
    created : float
        Unix time of the release.
    manifest_sha256, model_sha256 : str
    signed : bool
    metrics : dict
        Pooled validation metrics of the manifest (AUROC, utility, loss,
        threshold, rows).
    training : dict
        Strategy, rounds, method, rows per site, and ``privacy``: each site's
        (ε, δ) in this run, the sites that refused it (privacy budget) and
        every site's cumulative charge over the releases so far
        (:mod:`vigil.federation.release_privacy`).
    diff : dict or None
        Difference from the previous release (None for the first).
    """

    name: str
    version: str
    created: float
    manifest_sha256: str
    model_sha256: str
    signed: bool
    metrics: dict[str, Any]
    training: dict[str, Any]
    diff: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``index.json``."""
        return asdict(self)


def next_version(previous: str | None) -> str:
    """Return the version after ``previous``: ``1.0.0`` first, then the next minor.

    Examples
    --------
    >>> next_version(None), next_version("1.4.0"), next_version("2.0.3")
    ('1.0.0', '1.5.0', '2.1.0')
    """
    if previous is None:
        return "1.0.0"
    match = _VERSION.match(previous)
    if match is None:
        raise ConfigError(f"expected a MAJOR.MINOR.PATCH version, got {previous!r}", key="version")
    return f"{match[1]}.{int(match[2]) + 1}.0"


def _summary(package: ModelPackage) -> tuple[dict[str, Any], dict[str, Any]]:
    m = package.manifest
    # sepsis manifests hold the pooled metrics at the top of `validation`, imaging ones
    # under `pooled`; a site's training rows are `train_rows` or `train_images`
    pooled = m.validation.get("pooled", m.validation)
    metrics = {k: pooled.get(k) for k in _METRICS}
    sites = m.training.get("sites") or {}
    training = {
        "method": m.training.get("method"),
        "strategy": (m.training.get("strategy") or {}).get("name"),
        "rounds": m.training.get("rounds"),
        "sites": {name: (s or {}).get("train_rows", (s or {}).get("train_images"))
                  for name, s in sorted(sites.items())},
        "privacy": run_privacy(package),
    }
    return metrics, training


def _change(before: Any, after: Any) -> dict[str, Any]:
    numeric = isinstance(before, int | float) and isinstance(after, int | float)
    return {"before": before, "after": after, "change": after - before if numeric else None}


def _initializers(package: ModelPackage) -> dict[str, Any] | None:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # a site without onnx: the weight distance is left out
        return None
    graph = onnx.load(str(package.model_path)).graph
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _weights_diff(old: ModelPackage, new: ModelPackage) -> dict[str, Any] | None:
    import numpy as np

    a, b = _initializers(old), _initializers(new)
    if a is None or b is None:
        return None
    if sorted(a) != sorted(b) or any(a[k].shape != b[k].shape for k in a):
        return {"comparable": False}
    delta = np.concatenate([(b[k].astype(np.float64) - a[k]).ravel() for k in sorted(a)])
    base = np.concatenate([a[k].astype(np.float64).ravel() for k in sorted(a)])
    norm = float(np.linalg.norm(base))
    moved = float(np.linalg.norm(delta))
    return {"comparable": True, "relative_l2": moved / norm if norm else None,
            "max_abs": float(np.max(np.abs(delta))) if delta.size else 0.0}


def _diff(old: ModelPackage, new: ModelPackage, old_release: Release) -> dict[str, Any]:
    metrics, training = _summary(new)
    before, after = old_release.training["sites"], training["sites"]
    return {
        "previous": old_release.version,
        "metrics": {k: _change(old_release.metrics.get(k), metrics[k]) for k in _METRICS},
        "sites": {
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "rows": {s: _change(before.get(s), after.get(s))
                     for s in sorted(set(before) | set(after))},
        },
        "strategy": _change(old_release.training.get("strategy"), training["strategy"]),
        "feature_schema_changed": old.manifest.schema_sha256 != new.manifest.schema_sha256,
        "weights": _weights_diff(old, new),
    }


def read_index(source: str | Path, *, client: Any = None) -> dict[str, Any]:
    """Read a registry's ``index.json`` from a directory or an ``http(s)://`` base URL.

    Raises
    ------
    ModelArtifactError
        If it cannot be read or is not a registry index.
    """
    try:
        body = json.loads(_read(source, INDEX, client=client))
    except ValueError as exc:
        raise ModelArtifactError(f"expected a registry index (JSON): {exc}",
                                 path=f"{source}/{INDEX}") from None
    if not isinstance(body, dict) or body.get("format") != REGISTRY_FORMAT:
        raise ModelArtifactError(f"expected a {REGISTRY_FORMAT} index", path=f"{source}/{INDEX}")
    return body


def _read(source: str | Path, name: str, *, client: Any = None) -> bytes:
    text = str(source)
    if text.startswith(("http://", "https://")):
        import httpx

        url = f"{text.rstrip('/')}/{name}"
        try:
            if client is not None:
                response = client.get(url)
            else:
                response = httpx.get(url, timeout=60.0, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ModelArtifactError(f"could not fetch from the registry: {exc}",
                                     path=url) from None
        return response.content
    path = Path(source) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(f"could not read from the registry: {exc}",
                                 path=str(path)) from None


class Registry:
    """The coordinator's registry directory.

    Parameters
    ----------
    path : str or Path
        Created on the first release.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r}, n_releases={len(self.releases())})"

    def releases(self) -> list[Release]:
        """Return every release, oldest first (none for a new registry)."""
        if not (self.path / INDEX).is_file():
            return []
        return [Release(**r) for r in read_index(self.path)["releases"]]

    def latest(self) -> Release | None:
        """Return the newest release, or None."""
        releases = self.releases()
        return releases[-1] if releases else None

    def next_version(self) -> str:
        """Return the version the next release gets."""
        latest = self.latest()
        return next_version(None if latest is None else latest.version)

    def staging(self, version: str) -> Path:
        """Return an empty directory to export a package into before :meth:`add`."""
        path = self.path / ".staging" / version
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, package_dir: str | Path, *, public_key: str | Path | None = None) -> Release:
        """Release a package: verify it, move it into the registry, record it in the index.

        Parameters
        ----------
        package_dir : str or Path
            A model package whose version is not released yet (it is moved).
        public_key : str or Path or None, optional
            When given, the package must carry a valid signature by it.

        Returns
        -------
        Release

        Raises
        ------
        ModelArtifactError
            If the package does not verify.
        ConfigError
            If its version or name clashes with the registry.
        """
        package = read_package(package_dir, public_key=public_key)
        m = package.manifest
        releases = self.releases()
        if releases and releases[0].name != m.name:
            raise ConfigError(f"expected model {releases[0].name!r} in this registry, got "
                              f"{m.name!r}", key="name")
        if any(r.version == m.version for r in releases) or (self.path / m.version).exists():
            raise ConfigError(f"version {m.version} is already released; pick another",
                              key="version")
        previous = releases[-1] if releases else None
        diff = None
        if previous is not None:
            diff = _diff(read_package(self.path / previous.version), package, previous)
        metrics, training = _summary(package)
        training["privacy"]["cumulative"] = cumulative_privacy(
            None if previous is None else previous.training.get("privacy"), training["privacy"])
        release = Release(
            name=m.name, version=m.version, created=time.time(),
            manifest_sha256=file_sha256(package.path / MANIFEST), model_sha256=m.model_sha256,
            signed=(package.path / SIGNATURE).is_file(), metrics=metrics, training=training,
            diff=diff,
        )
        self.path.mkdir(parents=True, exist_ok=True)
        shutil.move(str(package.path), str(self.path / m.version))
        index = {"format": REGISTRY_FORMAT, "name": m.name,
                 "releases": [r.to_dict() for r in [*releases, release]]}
        tmp = self.path / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=1, default=_plain) + "\n")
        tmp.replace(self.path / INDEX)
        return release


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def fetch_release(
    source: str | Path,
    dest_dir: str | Path,
    *,
    version: str | None = None,
    public_key: str | Path | None = None,
    client: Any = None,
) -> tuple[Release, ModelPackage]:
    """Copy a released package from a registry and verify it.

    Parameters
    ----------
    source : str or Path
        The registry directory or its ``http(s)://`` base URL.
    dest_dir : str or Path
        Receives ``NAME-VERSION/``.
    version : str or None, optional
        Default: the newest release.
    public_key : str or Path or None, optional
        The coordinator's Ed25519 public key; when given the signature must verify.
    client : httpx.Client or None, optional
        For URLs (TLS settings, tests).

    Returns
    -------
    (Release, ModelPackage)

    Raises
    ------
    ModelArtifactError
        If the registry is unreadable, the version unknown, or the copy fails a check.
    """
    index = read_index(source, client=client)
    releases = [Release(**r) for r in index.get("releases", [])]
    if not releases:
        raise ModelArtifactError("the registry has no release yet", path=str(source))
    chosen = releases[-1] if version is None else next(
        (r for r in releases if r.version == version), None)
    if chosen is None:
        raise ModelArtifactError(
            f"no release {version!r} in the registry (has {[r.version for r in releases]})",
            path=str(source),
        )
    # the index is not signed: its name and version must not lead outside dest_dir
    check_file_name(chosen.version, path=str(source))
    target = Path(dest_dir) / check_file_name(f"{chosen.name}-{chosen.version}", path=str(source))
    tmp = target.with_name(target.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    manifest = _read(source, f"{chosen.version}/{MANIFEST}", client=client)
    (tmp / MANIFEST).write_bytes(manifest)
    try:
        files = list(json.loads(manifest)["files"])
    except (ValueError, KeyError, TypeError):
        raise ModelArtifactError("expected a package manifest listing its files",
                                 path=f"{source}/{chosen.version}/{MANIFEST}") from None
    for name in files:
        check_file_name(name, path=str(source))
    if chosen.signed:
        files.append(SIGNATURE)
    for name in files:
        (tmp / name).write_bytes(_read(source, f"{chosen.version}/{name}", client=client))
    read_package(tmp, public_key=public_key)
    if file_sha256(tmp / MANIFEST) != chosen.manifest_sha256:
        raise ModelArtifactError("the manifest differs from the one the registry released",
                                 path=str(tmp / MANIFEST))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return chosen, read_package(target, public_key=public_key)
