"""Imaging runtime test support: the shipped imaging package, DICOM studies, a recording sink.

Imported by the imaging runtime tests (``from img_support import ...``); not a test module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom

from vigil.core.package import read_package, write_package
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.sites import write_sites

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "imaging-federated"
"""The imaging package vigil ships (FedAvg SmallCNN), signed with the release key."""
SHIPPED_MODEL = "imaging-federated@" + json.loads(
    (SHIPPED / "manifest.json").read_text())["version"]
"""The shipped package's ``name@version`` (the store's model key)."""
SHIPPED_KEY = SHIPPED / "public_key.pem"
"""The key the shipped imaging package verifies with (models/README.md)."""
FAR_FUTURE = 4_102_444_800.0
"""A clock after every file's arrival (2100-01-01), so that every study is stable."""


def shadow_package(path: Path, *, version: str = "shadow-1", threshold: float = 0.5) -> Path:
    """The shipped model re-packaged unsigned under another version (a shadow candidate)."""
    shipped = read_package(SHIPPED, public_key=SHIPPED_KEY)
    m = shipped.manifest
    write_package(path, onnx_model=shipped.model_path.read_bytes(), manifest={
        "name": m.name, "version": version, "task": "imaging", "threshold": threshold,
        "feature_schema": m.feature_schema, "input_name": m.input_name,
        "output_name": m.output_name}, model_card="# shadow\n")
    return path


def write_studies(root: Path, n: int = 12, *, seed: int = 0) -> list[Path]:
    """``n`` sample test images as DICOM files (one study each) below ``root``; their paths."""
    test = load_medmnist("sample", "test")
    sites = write_sites(test.images[:n], test.labels[:n], root, split="test", seed=seed)
    return sorted(p for s in sites for p in s.folder.glob("*.dcm"))


def add_instance(file: Path, out: Path, *, sop_uid: str, **changes: object) -> Path:
    """A copy of ``file`` in the same study under another SOPInstanceUID (and other changes)."""
    ds = pydicom.dcmread(file)
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    for key, value in changes.items():
        setattr(ds, key, value)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


class RecordingSink:
    """A StudySink keeping the last write of each (study, model), like an idempotent PUT."""

    name = "recording"

    def __init__(self, *, fail: bool = False, crash_after: int | None = None) -> None:
        self.written: dict[tuple[str, str], dict] = {}
        self.writes = 0
        self.fail = fail
        self.crash_after = crash_after

    def write(self, score, sources) -> None:
        if self.fail:
            raise ConnectionError("the FHIR server is down")
        self.writes += 1
        self.written[(score.study.study_uid, score.model)] = json.loads(json.dumps({
            "instances": list(score.sop_instance_uids),
            "probability": np.round(score.probability, 12).tolist(),
            "study_probability": score.study_probability, "positive": score.positive,
            "threshold": score.threshold, "role": score.role,
            "sources": sorted(str(ds.SOPInstanceUID) for ds in sources)}))
        if self.crash_after is not None and self.writes >= self.crash_after:
            raise KeyboardInterrupt("killed between the sink write and the record")
