"""Calibration records: JSON round trip, application, refusal of another model."""

import json

import numpy as np
import pytest

from vigil.calibration import (
    CalibrationRecord,
    LogisticCalibration,
    ModelRef,
    load_record,
    write_record,
)
from vigil.calibration._logistic import sigmoid
from vigil.core.errors import ModelArtifactError
from vigil.core.package import write_package
from vigil.features import FEATURE_SCHEMA


def package(path, *, version="1", onnx=b"\x08\x07fake-model"):
    return write_package(path, onnx_model=onnx, model_card="card",
                         manifest={"name": "sepsis", "version": version, "threshold": 0.1,
                                   "feature_schema": FEATURE_SCHEMA.to_dict()})


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    z = rng.normal(-3, 1.2, 3000)
    y = (rng.random(z.size) < sigmoid(z)).astype(int)
    return LogisticCalibration().fit(sigmoid(1 + 1.5 * z), y)


def record_for(pkg, cal, **kw):
    return CalibrationRecord(site="B", model=ModelRef.of(pkg), method=cal.method,
                             calibrator=cal.to_dict(), policy={"key": "sensitivity", "target": 0.8},
                             threshold=0.02, **kw)


def test_round_trip_and_transform(tmp_path, fitted):
    pkg = package(tmp_path / "pkg")
    path = write_record(record_for(pkg, fitted, data_window={"fit": {"patients": 10}}),
                        tmp_path / "cal" / "calibration.json")
    record = load_record(path, package=pkg)
    assert record.threshold == 0.02 and record.site == "B"
    assert record.model.onnx_sha256 == pkg.manifest.model_sha256
    p = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(record.transform(p), fitted.transform(p))
    body = json.loads(path.read_text())
    assert set(body) >= {"site", "model", "method", "calibrator", "policy", "threshold",
                         "metrics", "data_window", "created", "format"}
    assert body["calibrator"]["state"] == {"intercept_": fitted.intercept_, "slope_": fitted.slope_}


@pytest.mark.parametrize("change", ["version", "onnx"])
def test_refuses_a_record_made_for_another_model(tmp_path, fitted, change):
    old = package(tmp_path / "old")
    path = write_record(record_for(old, fitted), tmp_path / "calibration.json")
    new = package(tmp_path / "new", **({"version": "2"} if change == "version"
                                       else {"onnx": b"\x08\x07other-model"}))
    with pytest.raises(ModelArtifactError, match=r"made for model sepsis 1 \(onnx sha256 "
                                                 r"[0-9a-f]{12}\) but the model package is sepsis "
                                                 r"[12] \(onnx sha256 [0-9a-f]{12}\); run `vigil "
                                                 r"calibrate`") as err:
        load_record(path, package=new)
    assert err.value.path == str(path)
    load_record(path)  # without a package to check, it loads


def test_missing_and_malformed_records(tmp_path, fitted):
    with pytest.raises(ModelArtifactError, match="expected a calibration record"):
        load_record(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelArtifactError, match="not a valid calibration record"):
        load_record(bad)
    pkg = package(tmp_path / "pkg")
    body = json.loads(record_for(pkg, fitted).to_json())
    body["calibrator"]["method"] = "quantum"
    bad.write_text(json.dumps(body))
    with pytest.raises(ModelArtifactError, match="calibrator is invalid: unknown calibration"):
        load_record(bad)
    body = json.loads(record_for(pkg, fitted).to_json())
    body["format"] = "vigil-calibration-record/99"
    bad.write_text(json.dumps(body))
    with pytest.raises(ModelArtifactError, match="format 'vigil-calibration-record/1'"):
        load_record(bad)
