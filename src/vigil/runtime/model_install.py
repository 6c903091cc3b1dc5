"""Installing a model package: verify it, copy it into the models directory, give it a role.

Installing copies the package into the models directory after checking every
file hash, the signature against the configured public key (``public_key=None``
is the explicit opt-out, logged as a warning), the feature schema, and that
onnxruntime loads it and returns probabilities for a row of the right width (an
imaging package: for a batch of images of its input size).

A calibration record installed with a package must have been made for that
exact model; it is stored content-addressed (``calibration-SHA256.json``, with
``.hmac`` under a site key, :mod:`vigil.runtime.record_integrity`) and the
registry holds its path. Re-installing an installed package (same name, version
and ``model.onnx``) keeps its role; the same name and version with other bytes
is refused. Roles are per task; what is live is loaded by
:mod:`vigil.runtime.models`, which re-exports these functions.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vigil.core.errors import ConfigError, ModelArtifactError, VigilError
from vigil.core.package import MANIFEST, SIGNATURE, ModelPackage, read_package
from vigil.features.builder import FEATURE_SCHEMA
from vigil.runtime.record_integrity import (
    install_record,
    installed_record_name,
)
from vigil.runtime.scoring import Scorer
from vigil.runtime.store import ModelRow, StateStore

if TYPE_CHECKING:
    from vigil.runtime.models import Calibration

__all__ = [
    "ROLES",
    "TASKS",
    "UNSIGNED_WARNING",
    "install_model",
    "load_calibration",
    "promote_model",
    "task_of",
    "verify_package",
]

log = logging.getLogger(__name__)

UNSIGNED_WARNING = (
    "signature verification is OFF (models.allow_unsigned = true): %s is checked for "
    "integrity only, so anyone who can write a package can make this site run it"
)
"""The warning logged (``%s``: the package) whenever a package is taken without a public key."""
ROLES = ("active", "shadow", "installed", "retired")
"""Roles of an installed model; ``retired`` is what a replaced active or shadow model gets."""
TASKS = ("sepsis", "imaging")
"""The registry's tasks; roles are held per task."""


def task_of(manifest_task: str) -> str:
    """Return the registry task of a manifest's ``task`` (``imaging``, else ``sepsis``)."""
    return "imaging" if manifest_task == "imaging" else "sepsis"


def _declared_task(path: str | Path) -> str:
    """Return the task a manifest declares (read before verification, to pick the checks)."""
    try:
        return task_of(str(json.loads((Path(path) / MANIFEST).read_text()).get("task", "")))
    except (OSError, ValueError, AttributeError):
        return "sepsis"  # read_package then names what is wrong


def load_calibration(path: Path, package: ModelPackage) -> Calibration:
    """Load a calibration record, checked to have been made for ``package``.

    Raises
    ------
    ModelArtifactError
        If the record is unreadable or was made for another model.
    """
    from vigil.calibration.record import load_record

    record: Calibration = load_record(path, package=package)
    return record


def verify_package(
    path: str | Path, *, public_key: Path | None = None, threads: int = 1
) -> tuple[ModelPackage, Scorer]:
    """Check a package as :func:`install_model` does, without installing it.

    A sepsis package must implement this vigil's feature schema and score a feature
    row; an imaging package (manifest task ``imaging``) must score a batch of model
    inputs of its ``feature_schema.size`` (:class:`~vigil.runtime.images.ImageScorer`).

    Raises
    ------
    ModelArtifactError
        Naming what failed: a hash, the signature, the feature schema, or inference.
    """
    if _declared_task(path) == "imaging":
        return _verify_imaging(path, public_key=public_key, threads=threads)
    package = read_package(
        path, public_key=public_key, expected_schema_sha256=FEATURE_SCHEMA.sha256
    )
    names = package.manifest.feature_schema.get("names", [])
    if list(names) != list(FEATURE_SCHEMA.names):
        raise ModelArtifactError(
            f"the manifest lists {len(names)} feature names but the schema has "
            f"{len(FEATURE_SCHEMA)}; the package is inconsistent, rebuild it",
            path=str(Path(path) / MANIFEST),
        )
    scorer = Scorer(package, threads=threads)
    try:
        scorer.predict_proba(np.zeros((2, len(FEATURE_SCHEMA)), dtype=np.float32))
    except VigilError as exc:
        raise ModelArtifactError(
            f"the model does not score a feature row: {exc}", path=str(package.model_path)
        ) from exc
    except Exception as exc:  # onnxruntime raises untyped errors on wrong names or shapes
        raise ModelArtifactError(
            f"onnxruntime could not run the model on a ({2}, {len(FEATURE_SCHEMA)}) float32 "
            f"input named {package.manifest.input_name!r}: {exc}",
            path=str(package.model_path),
        ) from exc
    return package, scorer


def _verify_imaging(
    path: str | Path, *, public_key: Path | None, threads: int
) -> tuple[ModelPackage, Scorer]:
    from vigil.runtime.images import ImageScorer

    package = read_package(path, public_key=public_key)
    scorer = ImageScorer(package, threads=threads)
    shape = (scorer.size, scorer.size) if scorer.channels == 1 else (
        scorer.channels, scorer.size, scorer.size)
    try:
        scorer.predict_images(np.zeros((2, *shape), dtype=np.float32))
    except VigilError as exc:
        raise ModelArtifactError(f"the model does not score an image: {exc}",
                                 path=str(package.model_path)) from exc
    except Exception as exc:  # onnxruntime raises untyped errors on wrong names or shapes
        raise ModelArtifactError(
            f"onnxruntime could not run the model on a (2, {scorer.channels}, {scorer.size}, "
            f"{scorer.size}) "
            f"float32 input named {package.manifest.input_name!r}: {exc}",
            path=str(package.model_path)) from exc
    return package, scorer


def install_model(
    store: StateStore,
    source: str | Path,
    *,
    models_dir: Path,
    public_key: Path | None = None,
    calibration: Path | None = None,
    role: str | None = None,
    calibration_key: Path | None = None,
) -> ModelRow:
    """Verify a package and install it into ``models_dir``.

    Parameters
    ----------
    store : StateStore
        Where the registry lives.
    source : str or Path
        The package directory.
    models_dir : Path
        Installed packages go to ``models_dir/NAME-VERSION``.
    public_key : Path or None, optional
        The package must carry a valid signature under it; None accepts unsigned
        packages (the ``models.allow_unsigned`` opt-out; logged as a warning).
    calibration : Path or None, optional
        A calibration record made for this model. On a re-install without one,
        the installed record is kept (one installed before records were
        content-addressed, ``calibration.json``, is moved to its hashed name).
    role : str or None, optional
        ``active``, ``shadow`` or ``installed``; by default the model's current role
        when it is already installed, else ``active`` when no model is active yet,
        else ``installed``.
    calibration_key : Path or None, optional
        The site's HMAC key file; the installed record is authenticated with it.

    Returns
    -------
    ModelRow

    Raises
    ------
    ModelArtifactError
        If the package or calibration record fails a check, or another model is
        installed under the same name and version.
    ConfigError
        For an unknown role.
    """
    if role is not None and role not in ROLES[:3]:
        raise ConfigError(f"expected role active, shadow or installed, got {role!r}", key="role")
    if public_key is None:
        log.warning(UNSIGNED_WARNING, Path(source).name)
    package, _ = verify_package(source, public_key=public_key)
    if calibration is not None:
        load_calibration(calibration, package)
    m = package.manifest
    existing = next((r for r in store.models() if (r.name, r.version) == (m.name, m.version)),
                    None)
    if existing is not None and existing.model_sha256 != m.model_sha256:
        raise ModelArtifactError(
            f"{m.name} {m.version} is already installed with another model.onnx (sha256 "
            f"{existing.model_sha256[:12]}, this one {m.model_sha256[:12]}); give the new "
            "model a new version", path=str(Path(source) / MANIFEST),
        )
    target = Path(models_dir) / f"{_safe(m.name)}-{_safe(m.version)}"
    record = Path(existing.calibration) if existing and existing.calibration else None
    data = calibration.read_bytes() if calibration is not None else _legacy_record(record)
    if data is not None:
        record = target / installed_record_name(data)
    if existing is None or not _intact(target, package, public_key):
        _copy_package(package, target, public_key=public_key, keep=record)
    if data is not None and record is not None:
        install_record(record, data, calibration_key=calibration_key)
        load_calibration(record, read_package(target))
    task = task_of(m.task)
    if role is None:
        role = existing.role if existing is not None else (
            "installed" if any(r.role == "active" and r.task == task for r in store.models())
            else "active")
    row = ModelRow(
        name=m.name,
        version=m.version,
        path=str(target.resolve()),
        model_sha256=m.model_sha256,
        calibration=str(record.resolve()) if record is not None else None,
        role=existing.role if existing is not None else "installed",
        installed=existing.installed if existing is not None else time.time(),
        task=task,
    )
    store.put_model(row)
    if role != row.role:
        store.set_role(m.name, m.version, role)
    for stale in target.glob("calibration*.json*"):
        if record is None or stale.name not in (record.name, record.name + ".hmac"):
            stale.unlink()
    return next(r for r in store.models() if (r.name, r.version) == (m.name, m.version))


def _legacy_record(record: Path | None) -> bytes | None:
    """Return a record installed before records were content-addressed, else None."""
    if record is None or not record.is_file():
        return None
    data = record.read_bytes()
    return data if record.name != installed_record_name(data) else None


def _intact(target: Path, package: ModelPackage, public_key: Path | None) -> bool:
    """Whether ``target`` already holds this package, unchanged."""
    try:
        read_package(target, public_key=public_key)
        return (target / MANIFEST).read_bytes() == (package.path / MANIFEST).read_bytes()
    except (ModelArtifactError, OSError):
        return False


def _copy_package(
    package: ModelPackage, target: Path, *, public_key: Path | None, keep: Path | None
) -> None:
    """Copy a verified package to ``target`` through a temporary directory."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in [MANIFEST, *package.manifest.files]:
        shutil.copyfile(package.path / name, tmp / name)
    if (package.path / SIGNATURE).is_file():
        shutil.copyfile(package.path / SIGNATURE, tmp / SIGNATURE)
    if keep is not None:
        for name in (keep.name, keep.name + ".hmac"):
            if (target / name).is_file():
                shutil.copyfile(target / name, tmp / name)
    verify_package(tmp, public_key=public_key)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def promote_model(
    store: StateStore, version: str, *, name: str | None = None, role: str = "active"
) -> ModelRow:
    """Make an installed model the active (or shadow) one; the previous holder retires.

    Raises
    ------
    ConfigError
        If no installed model matches, or several do and no name was given.
    """
    if role not in ("active", "shadow"):
        raise ConfigError(f"expected role active or shadow, got {role!r}", key="role")
    matches = [r for r in store.models() if r.version == version and name in (None, r.name)]
    if not matches:
        known = ", ".join(r.key for r in store.models()) or "none"
        raise ConfigError(
            f"no installed model has version {version!r} (installed: {known}); "
            "install it first with `vigil model install`",
            key="version",
        )
    if len(matches) > 1:
        raise ConfigError(
            f"{len(matches)} installed models have version {version!r}; pass --name", key="name"
        )
    row = matches[0]
    store.set_role(row.name, row.version, role)
    return next(r for r in store.models() if (r.name, r.version) == (row.name, row.version))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
