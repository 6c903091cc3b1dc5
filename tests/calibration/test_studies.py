"""Site calibration of the imaging model: studies as the unit, properties, record binding, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.calibration import make_calibrator, parse_policy
from vigil.calibration.record import load_record
from vigil.calibration.studies import calibrate_studies, study_scores
from vigil.cli.main import app
from vigil.core.errors import ConfigError, DataError, ModelArtifactError
from vigil.core.package import read_package
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH, load_medmnist
from vigil.dicom_adapter.sites import write_sites

MODELS = Path(__file__).resolve().parents[2] / "models"
runner = CliRunner()


def test_study_scores_group_instances_in_time_order():
    uids = ["1.9", "1.2", "1.9", "1.5", "1.2"]
    times = ["20260102120000", "20260101120000", "20260102120000", "20260101080000",
             "20260101120000"]
    p = np.array([0.2, 0.6, 0.9, 0.1, 0.3])
    y = np.array([0.0, np.nan, 1.0, np.nan, 1.0])
    studies, order = study_scores(uids, times, p, y)
    # study 1.5 has no label and is left out; 1.2 (Jan 1 noon) precedes 1.9 (Jan 2)
    assert order == ["1.2", "1.9"]
    assert studies.probability.tolist() == [0.6, 0.9]  # highest instance
    assert studies.labels.tolist() == [1, 1]  # any positive instance
    assert studies.patient_ids == ("0", "1") and studies.starts.tolist() == [0, 1, 2]


def test_study_scores_errors():
    with pytest.raises(DataError, match="one study UID, time, probability and label per image"):
        study_scores(["1"], ["", ""], np.array([0.5]), np.array([1.0]))
    with pytest.raises(DataError, match="labelled studies"):
        study_scores(["1"], [""], np.array([0.5]), np.array([np.nan]))
    with pytest.raises(DataError, match="StudyInstanceUID on every image"):
        study_scores([""], [""], np.array([0.5]), np.array([1.0]))


def synthetic(n: int, seed: int) -> tuple:
    """Miscalibrated but informative study scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    p = 1.0 / (1.0 + np.exp(-(2.5 * y - 1.0 + rng.normal(0, 1.2, n))))
    uids = [f"1.2.{i}" for i in range(n)]
    times = [f"2026{i:010d}" for i in range(n)]
    return study_scores(uids, times, p ** 0.5, y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibration_never_worse_on_the_fit_studies(method, seed):
    studies, _ = synthetic(1200, seed)
    y, p = studies.labels.astype(float), studies.probability
    cal = make_calibrator(method).fit(p, y).transform(p)
    if method == "isotonic":  # least squares among monotone maps, identity included
        assert np.mean((cal - y) ** 2) <= np.mean((p - y) ** 2) + 1e-12
    else:  # maximum likelihood over logit a + b logit p, identity included
        def nll(q):
            q = np.clip(q, 1e-7, 1 - 1e-7)
            return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
        assert nll(cal) <= nll(p) + 1e-9


@pytest.mark.parametrize("policy", ["sensitivity=0.85", "ppv=0.8"])
def test_policy_holds_on_the_fit_studies(policy):
    studies, uids = synthetic(400, 7)
    result = calibrate_studies(studies, uids, method="logistic", policy=parse_policy(policy),
                               model_threshold=0.5, n_boot=50)
    fit_cal = result.calibrator.transform(result.fit.probability)
    flagged = fit_cal >= result.threshold
    y = result.fit.labels > 0
    target = result.policy.target
    achieved = flagged[y].mean() if policy.startswith("sens") else y[flagged].mean()
    assert achieved >= target and result.fit_achieved == pytest.approx(achieved)
    record = result.to_record(site="s", model=_ref())
    assert record.data_window["unit"] == "study"
    assert record.data_window["fit"]["studies"] == 200 == record.data_window["report"]["studies"]
    assert "1.2." not in json.dumps(record.data_window)  # no study UID written


def _ref():
    from vigil.calibration.record import ModelRef

    return ModelRef.of(read_package(MODELS / "imaging-federated"))


@pytest.mark.parametrize("policy", ["utility", "alerts-per-patient-day=2",
                                    "patient-sensitivity=0.8"])
def test_hourly_policies_are_refused_for_studies(policy):
    studies, uids = synthetic(100, 0)
    with pytest.raises(ConfigError, match="sensitivity=S or ppv=P for an imaging model"):
        calibrate_studies(studies, uids, method="logistic", policy=parse_policy(policy),
                          model_threshold=0.5)


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory) -> Path:
    test = load_medmnist(MEDMNIST_SAMPLE_PATH, "test")
    out = tmp_path_factory.mktemp("sites")
    written = write_sites(test.images, test.labels, out, split="test")
    return written[1].folder  # site-b: about half positives


def test_cli_calibrates_the_imaging_model_and_binds_the_record(site_folder, tmp_path):
    out = tmp_path / "calibration.json"
    result = runner.invoke(app, ["calibrate", "--model", str(MODELS / "imaging-federated"),
                                 "--images", str(site_folder), "--policy", "sensitivity=0.8",
                                 "--method", "in-the-large", "--site", "site-b",
                                 "--bootstrap", "50", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["unit"] == "study" and summary["images"] > 0
    imaging = read_package(MODELS / "imaging-federated")
    record = load_record(out, package=imaging)
    assert record.site == "site-b" and record.model.onnx_sha256 == imaging.manifest.model_sha256
    sepsis = read_package(MODELS / "sepsis-federated")
    with pytest.raises(ModelArtifactError, match="made for model imaging-federated"):
        load_record(out, package=sepsis)


def test_a_sepsis_record_does_not_apply_to_the_imaging_model(tmp_path):
    from vigil.calibration.record import ModelRef, write_record

    studies, uids = synthetic(200, 1)
    result = calibrate_studies(studies, uids, method="in-the-large",
                               policy=parse_policy("sensitivity=0.8"), model_threshold=0.5,
                               n_boot=0)
    sepsis = read_package(MODELS / "sepsis-federated")
    out = write_record(result.to_record(site="s", model=ModelRef.of(sepsis)), tmp_path / "r.json")
    assert load_record(out, package=sepsis).site == "s"
    with pytest.raises(ModelArtifactError, match="made for model sepsis-federated"):
        load_record(out, package=read_package(MODELS / "imaging-federated"))


@pytest.mark.parametrize(("extra", "message"), [
    ([], "expected --images DIR"),
    (["--images", str(MEDMNIST_SAMPLE_PATH)], "expected --images a folder"),
    (["--images", ".", "--hospital", "A"], "expected neither --scores"),
])
def test_cli_bad_imaging_input_exits_2(extra, message, tmp_path):
    result = runner.invoke(app, ["calibrate", "--model", str(MODELS / "imaging-federated"),
                                 "--policy", "sensitivity=0.8", "--out",
                                 str(tmp_path / "c.json"), *extra])
    assert result.exit_code == 2 and message in result.output


def test_cli_images_with_a_sepsis_model_exits_2(site_folder, tmp_path):
    result = runner.invoke(app, ["calibrate", "--model", str(MODELS / "sepsis-federated"),
                                 "--images", str(site_folder), "--policy", "sensitivity=0.8",
                                 "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 2 and "expected an imaging model package" in result.output
