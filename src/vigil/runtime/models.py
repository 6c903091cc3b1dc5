"""Installed models: verify and install a package, give it a role, load what is live.

A site runs one **active** model (scored, stored, written back and alerted on)
and optionally one **shadow** model (scored and stored only, to be compared
before a promotion). Installing copies the package into the models directory
after checking every file hash, the signature when a public key is configured,
the feature schema, and that onnxruntime loads it and returns probabilities
for a row of the right width. A calibration record installed with a package
must have been made for that exact model.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, ModelArtifactError, VigilError
from vigil.core.package import MANIFEST, SIGNATURE, ModelPackage, read_package
from vigil.features.builder import FEATURE_SCHEMA
from vigil.runtime.scoring import Scorer
from vigil.runtime.store import ModelRow, StateStore

__all__ = [
    "CALIBRATION_FILE",
    "ROLES",
    "Calibration",
    "LiveModel",
    "LiveModels",
    "install_model",
    "live_model",
    "load_live_models",
    "model_summary",
    "promote_model",
    "verify_package",
]

CALIBRATION_FILE = "calibration.json"
ROLES = ("active", "shadow", "installed", "retired")
"""Roles of an installed model; ``retired`` is what a replaced active or shadow model gets."""


class Calibration(Protocol):
    """A site calibration record (:mod:`vigil.calibration.record`)."""

    threshold: float

    def transform(self, p: NDArray[np.floating]) -> NDArray[np.float64]:
        """Calibrated probability."""
        ...


@dataclass(frozen=True, eq=False)
class LiveModel:
    """A model loaded for scoring.

    Attributes
    ----------
    row : ModelRow
        Its registry entry.
    scorer : Scorer
        The onnxruntime session.
    calibration : Calibration or None
        The site calibration; None means raw model probabilities (flagged).
    """

    row: ModelRow
    scorer: Scorer
    calibration: Calibration | None

    @property
    def key(self) -> str:
        """``name@version``."""
        return self.row.key

    @property
    def threshold(self) -> float:
        """The alert threshold: the calibration record's, else the package's."""
        if self.calibration is not None:
            return float(self.calibration.threshold)
        return float(self.scorer.package.manifest.threshold)

    def probabilities(self, features: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[
        np.float64
    ]]:
        """Raw and calibrated probabilities, each of shape (n,)."""
        raw = self.scorer.predict_proba(features)
        if self.calibration is None:
            return raw, raw
        return raw, np.asarray(self.calibration.transform(raw), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class LiveModels:
    """The active model and the optional shadow model."""

    active: LiveModel | None
    shadow: LiveModel | None

    @property
    def signature(self) -> tuple[tuple[str, str, str | None], ...]:
        """What identifies the loaded set (to notice a promotion)."""
        return tuple(
            (m.key, m.row.role, m.row.calibration)
            for m in (self.active, self.shadow)
            if m is not None
        )


def _load_calibration(path: Path, package: ModelPackage) -> Calibration:
    from vigil.calibration.record import load_record

    record: Calibration = load_record(path, package=package)
    return record


def verify_package(
    path: str | Path, *, public_key: Path | None = None, threads: int = 1
) -> tuple[ModelPackage, Scorer]:
    """Check a package as :func:`install_model` does, without installing it.

    Raises
    ------
    ModelArtifactError
        Naming what failed: a hash, the signature, the feature schema, or inference.
    """
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


def install_model(
    store: StateStore,
    source: str | Path,
    *,
    models_dir: Path,
    public_key: Path | None = None,
    calibration: Path | None = None,
    role: str | None = None,
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
        When set, the package must carry a valid signature.
    calibration : Path or None, optional
        A calibration record made for this model.
    role : str or None, optional
        ``active``, ``shadow`` or ``installed``; by default ``active`` when no model
        is active yet, else ``installed``.

    Returns
    -------
    ModelRow

    Raises
    ------
    ModelArtifactError
        If the package or calibration record fails a check.
    ConfigError
        For an unknown role.
    """
    if role is not None and role not in ROLES[:3]:
        raise ConfigError(f"expected role active, shadow or installed, got {role!r}", key="role")
    package, _ = verify_package(source, public_key=public_key)
    if calibration is not None:
        _load_calibration(calibration, package)
    m = package.manifest
    target = Path(models_dir) / f"{_safe(m.name)}-{_safe(m.version)}"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in [MANIFEST, *m.files]:
        shutil.copy2(package.path / name, tmp / name)
    if (package.path / SIGNATURE).is_file():
        shutil.copy2(package.path / SIGNATURE, tmp / SIGNATURE)
    if calibration is not None:
        shutil.copy2(calibration, tmp / CALIBRATION_FILE)
    installed, _ = verify_package(tmp, public_key=public_key)
    if calibration is not None:
        _load_calibration(tmp / CALIBRATION_FILE, installed)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    if role is None:
        role = "installed" if any(r.role == "active" for r in store.models()) else "active"
    row = ModelRow(
        name=m.name,
        version=m.version,
        path=str(target.resolve()),
        model_sha256=m.model_sha256,
        calibration=str((target / CALIBRATION_FILE).resolve()) if calibration is not None else None,
        role="installed",
        installed=time.time(),
    )
    store.put_model(row)
    if role != "installed":
        store.set_role(m.name, m.version, role)
    return next(r for r in store.models() if (r.name, r.version) == (m.name, m.version))


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


def load_live_models(
    store: StateStore, *, public_key: Path | None = None, threads: int = 1
) -> LiveModels:
    """Load the active and shadow models (verifying them again) from the registry."""
    live: dict[str, LiveModel] = {}
    for row in store.models():
        if row.role not in ("active", "shadow"):
            continue
        package, scorer = verify_package(row.path, public_key=public_key, threads=threads)
        record = _load_calibration(Path(row.calibration), package) if row.calibration else None
        live[row.role] = LiveModel(row=row, scorer=scorer, calibration=record)
    return LiveModels(active=live.get("active"), shadow=live.get("shadow"))


def live_model(
    path: str | Path,
    *,
    calibration: Path | None = None,
    public_key: Path | None = None,
    threads: int = 1,
) -> LiveModel:
    """Load a verified package for scoring without installing it (replay, demo)."""
    package, scorer = verify_package(path, public_key=public_key, threads=threads)
    record = _load_calibration(calibration, package) if calibration is not None else None
    m = package.manifest
    row = ModelRow(
        name=m.name, version=m.version, path=str(package.path), model_sha256=m.model_sha256,
        calibration=str(calibration) if calibration is not None else None, role="active",
        installed=time.time(),
    )
    return LiveModel(row=row, scorer=scorer, calibration=record)


def model_summary(row: ModelRow) -> dict[str, Any]:
    """Return a registry entry as a JSON-ready dict."""
    return {
        "name": row.name,
        "version": row.version,
        "role": row.role,
        "calibrated": row.calibration is not None,
        "model_sha256": row.model_sha256,
        "path": row.path,
        "installed": row.installed,
    }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)
