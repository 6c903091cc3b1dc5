"""The calibration record (``calibration.json``): one per site and model version.

It holds what the runtime needs to turn the shared model's probability into
the site's (the fitted recalibration map and the threshold) and what an
auditor needs to trust it (TRIPOD+AI item 12f; ``research/clinical-runtime.md``
section 2.5): site, model name/version/ONNX SHA-256, method and parameters,
threshold policy, metrics before and after, data window, creation time.

A record made for another model (name, version or ONNX bytes) is refused, and
so is one whose threshold is not in (0, 1) or whose calibrator holds a number
that is not finite (JSON ``NaN``/``Infinity`` included).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
)

from vigil.calibration._base import Calibrator
from vigil.calibration.methods import calibrator_from_dict
from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.package import ModelPackage

__all__ = ["RECORD_FORMAT", "CalibrationRecord", "ModelRef", "load_record", "write_record"]

RECORD_FORMAT = "vigil-calibration-record/1"


class ModelRef(BaseModel):
    """The model a record was made for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    onnx_sha256: str

    @classmethod
    def of(cls, package: ModelPackage) -> ModelRef:
        """Return the reference of a model package."""
        m = package.manifest
        return cls(name=m.name, version=m.version, onnx_sha256=m.model_sha256)

    def __str__(self) -> str:
        return f"{self.name} {self.version} (onnx sha256 {self.onnx_sha256[:12]})"


class CalibrationRecord(BaseModel):
    """A site's calibration of one model version.

    Attributes
    ----------
    site : str
    model : ModelRef
    method : str
        ``in-the-large``, ``logistic``, ``beta`` or ``isotonic``.
    calibrator : dict
        The fitted map (``Calibrator.to_dict()``).
    policy : dict
        The threshold policy (``ThresholdPolicy.to_dict()``).
    threshold : float
        On the calibrated probability.
    alert_policy : dict
        ``suppression_hours`` and ``hysteresis`` the threshold was chosen with.
    achieved : dict
        What the threshold achieved on the later (report) patients, with intervals, and
        (``on_fit``) on the earlier patients it was chosen on.
    metrics : dict
        ``before`` / ``after`` calibration and operating metrics on the report patients.
    data_window : dict
        Which data the record was fitted and reported on (counts and a hash; no identifiers).
    created : str
        ISO 8601 UTC time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = RECORD_FORMAT
    site: str
    model: ModelRef
    method: str
    calibrator: dict[str, Any]
    policy: dict[str, Any]
    threshold: float = Field(gt=0.0, lt=1.0, allow_inf_nan=False)
    alert_policy: dict[str, Any] = Field(default_factory=dict)
    achieved: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_window: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    _map: Calibrator | None = PrivateAttr(default=None)

    @field_validator("calibrator")
    @classmethod
    def _finite(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not _all_finite(value):
            raise ValueError("expected finite numbers in the calibrator; found NaN or infinity")
        return value

    def calibration_map(self) -> Calibrator:
        """Return the fitted calibrator (rebuilt from ``calibrator`` once)."""
        if self._map is None:
            self._map = calibrator_from_dict(self.calibrator)
        return self._map

    def transform(self, probability: NDArray[np.floating]) -> NDArray[np.float64]:
        """Calibrated probabilities, shape (n,) from model probabilities of shape (n,)."""
        return self.calibration_map().transform(probability)

    def check_model(self, package: ModelPackage, *, path: str | None = None) -> None:
        """Refuse a package other than the one the record was made for.

        Raises
        ------
        ModelArtifactError
            Naming both models.
        """
        actual = ModelRef.of(package)
        if actual != self.model:
            raise ModelArtifactError(
                f"the calibration record was made for model {self.model} but the model package is "
                f"{actual}; run `vigil calibrate` for this model version",
                path=path,
            )

    def to_json(self) -> str:
        """Return the record as indented JSON text."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"

    def __repr__(self) -> str:
        return (f"CalibrationRecord(site={self.site!r}, model={str(self.model)!r}, "
                f"method={self.method!r}, threshold={self.threshold:.4g})")


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_finite(v) for v in value)
    return True


def write_record(record: CalibrationRecord, path: str | Path) -> Path:
    """Write a record as JSON; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(record.to_json())
    return out


def load_record(path: str | Path, *, package: ModelPackage | None = None) -> CalibrationRecord:
    """Read and check a calibration record.

    Parameters
    ----------
    path : str or Path
        ``calibration.json``.
    package : ModelPackage or None, optional
        The model it will be applied to; a record made for another model is refused.

    Returns
    -------
    CalibrationRecord
        With its calibrator already rebuilt.

    Raises
    ------
    ModelArtifactError
        If the file is missing or malformed, or was made for another model.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelArtifactError(
            "expected a calibration record (from `vigil calibrate`); none found", path=str(file)
        )
    try:
        record = CalibrationRecord.model_validate(json.loads(file.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ModelArtifactError(f"not a valid calibration record: {exc}", path=str(file)) from exc
    if record.format != RECORD_FORMAT:
        raise ModelArtifactError(
            f"expected calibration record format {RECORD_FORMAT!r}, got {record.format!r}",
            path=str(file),
        )
    try:
        record.calibration_map()
    except ConfigError as exc:
        raise ModelArtifactError(
            f"the record's calibrator is invalid: {exc}", path=str(file)
        ) from exc
    if package is not None:
        record.check_model(package, path=str(file))
    return record
