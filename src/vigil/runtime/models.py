"""Installed models: verify and install a package, give it a role, load what is live.

A site runs one **active** model (scored, stored, written back and alerted on)
and optionally one **shadow** model (scored and stored only, to be compared
before a promotion). Installing copies the package into the models directory
after checking every file hash, the signature against the configured public
key (``public_key=None`` is the explicit opt-out, logged as a warning), the
feature schema, and that onnxruntime loads it and returns probabilities for a
row of the right width.

A calibration record installed with a package must have been made for that
exact model. It is stored content-addressed, as ``calibration-SHA256.json``,
so the registry (in the state store) holds its hash: a record changed in the
models directory is refused at the next cycle (:func:`check_records`), and a
re-installed record changes the registry entry, so a running service loads it
at its next cycle. With a site key (``models.calibration_key``), the record
also carries an HMAC-SHA256 under that key (``calibration-SHA256.json.hmac``),
so that whoever can write both the models directory and the state store still
cannot forge one. Re-installing an installed package (same name, version and
``model.onnx``) keeps its role; the same name and version with other bytes is
refused. Verifying, installing and promoting live in
:mod:`vigil.runtime.model_install` (re-exported here); this module loads what is live.

Roles are per task (``sepsis`` or ``imaging``, from the manifest): a site runs one
active (and one shadow) sepsis model and, beside them, one active (and one shadow)
imaging model; installing or promoting one never touches the other task's roles.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from vigil.runtime.model_install import (
    ROLES,
    TASKS,
    UNSIGNED_WARNING,
    install_model,
    load_calibration,
    promote_model,
    task_of,
    verify_package,
)
from vigil.runtime.record_integrity import check_installed_record
from vigil.runtime.scoring import Scorer
from vigil.runtime.store import ModelRow, StateStore

__all__ = [
    "ROLES",
    "TASKS",
    "Calibration",
    "LiveModel",
    "LiveModels",
    "check_records",
    "install_model",
    "live_model",
    "load_live_models",
    "model_summary",
    "promote_model",
    "task_of",
    "verify_package",
]

log = logging.getLogger(__name__)


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


def check_records(models: LiveModels, *, calibration_key: Path | None = None) -> None:
    """Check that the live models' installed calibration records are unchanged (every cycle).

    Raises
    ------
    ModelArtifactError
        If a record's bytes differ from the SHA-256 its registry entry names, or
        (with ``calibration_key``) its HMAC does not verify.
    """
    for m in (models.active, models.shadow):
        if m is not None and m.row.calibration is not None:
            check_installed_record(Path(m.row.calibration), calibration_key=calibration_key)


def load_live_models(
    store: StateStore,
    *,
    public_key: Path | None = None,
    threads: int = 1,
    calibration_key: Path | None = None,
    task: str = "sepsis",
    name: str | None = None,
) -> LiveModels:
    """Load the active and shadow models of a task (verifying them again) from the registry.

    ``name`` keeps only the models of that package name. ``public_key=None`` is the
    unsigned opt-out (logged as a warning); installed calibration records are checked
    as :func:`check_records` does.
    """
    live: dict[str, LiveModel] = {}
    for row in store.models():
        if row.role not in ("active", "shadow") or row.task != task or name not in (None,
                                                                                    row.name):
            continue
        if public_key is None:
            log.warning(UNSIGNED_WARNING, row.key)
        package, scorer = verify_package(row.path, public_key=public_key, threads=threads)
        record = None
        if row.calibration:
            check_installed_record(Path(row.calibration), calibration_key=calibration_key)
            record = load_calibration(Path(row.calibration), package)
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
    record = load_calibration(calibration, package) if calibration is not None else None
    m = package.manifest
    row = ModelRow(
        name=m.name, version=m.version, path=str(package.path), model_sha256=m.model_sha256,
        calibration=str(calibration) if calibration is not None else None, role="active",
        installed=time.time(), task=task_of(m.task),
    )
    return LiveModel(row=row, scorer=scorer, calibration=record)


def model_summary(row: ModelRow) -> dict[str, Any]:
    """Return a registry entry as a JSON-ready dict."""
    return {
        "name": row.name,
        "version": row.version,
        "task": row.task,
        "role": row.role,
        "calibrated": row.calibration is not None,
        "model_sha256": row.model_sha256,
        "path": row.path,
        "installed": row.installed,
    }
